//! The EC2 API as AWS speaks it: the Query protocol (form-encoded POST,
//! XML answers) signed with Signature Version 4, credentials from flags,
//! the environment or `~/.aws/credentials`, and the region's endpoint or
//! one given (another region's, a private endpoint, an emulator).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The API version every call names.
const API_VERSION: &str = "2016-11-15";
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to EC2.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// No credentials were found.
    #[error("no AWS credentials: give --amazonec2-access-key and --amazonec2-secret-key, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials")]
    NoCredentials,
    /// The endpoint could not be reached.
    #[error("EC2 {action} at {endpoint}: {reason}")]
    Unreachable {
        /// The call.
        action: String,
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// EC2 said no.
    #[error("EC2 {action}: {code}: {message}{hint}")]
    Api {
        /// The call.
        action: String,
        /// EC2's error code (`AuthFailure`, `InvalidAMIID.NotFound`, …).
        code: String,
        /// Its message.
        message: String,
        /// What the user can do, for the codes that have an answer.
        hint: &'static str,
    },
    /// An answer that does not read.
    #[error("EC2 {action}: unexpected answer: {reason}")]
    Answer {
        /// The call.
        action: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl Ec2Error {
    /// EC2's error code, if EC2 gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What to tell the user for an error code.
fn hint(code: &str) -> &'static str {
    match code {
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException" => {
            " (check the access key and secret key, and the machine's clock)"
        }
        "InstanceLimitExceeded" | "VcpuLimitExceeded" | "InsufficientInstanceCapacity" => {
            " (ask AWS for a higher quota, or try another instance type or region)"
        }
        c if c.starts_with("InvalidAMIID") => " (give an AMI of this region with --amazonec2-ami)",
        "UnauthorizedOperation" => " (the credentials' IAM policy does not allow this call)",
        _ => "",
    }
}

/// AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl Credentials {
    /// The credentials given, else from `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the profile
    /// `AWS_PROFILE` (or `default`) of `~/.aws/credentials`
    /// (`AWS_SHARED_CREDENTIALS_FILE` names another file).
    pub fn resolve(
        access_key: Option<&str>,
        secret_key: Option<&str>,
        session_token: Option<&str>,
    ) -> Result<Self, Ec2Error> {
        if let (Some(a), Some(s)) = (access_key, secret_key) {
            return Ok(Credentials {
                access_key: a.to_owned(),
                secret_key: s.to_owned(),
                session_token: session_token.map(str::to_owned),
            });
        }
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(a), Some(s)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key: a,
                secret_key: s,
                session_token: var("AWS_SESSION_TOKEN"),
            });
        }
        let file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
                Some(Path::new(&home).join(".aws").join("credentials"))
            });
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        file.and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| from_ini(&text, &profile))
            .ok_or(Ec2Error::NoCredentials)
    }
}

/// A profile of a credentials file (INI).
fn from_ini(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        if section == profile {
            if let Some((k, v)) = line.split_once('=') {
                values.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
    }
    Some(Credentials {
        access_key: values.remove("aws_access_key_id")?,
        secret_key: values.remove("aws_secret_access_key")?,
        session_token: values.remove("aws_session_token"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `application/x-www-form-urlencoded`: RFC 3986 unreserved characters
/// kept, a space as `+`, everything else percent-encoded — as the AWS SDKs
/// encode form bodies (and as a server that re-encodes the form it read,
/// to check the signature, gets it back byte for byte).
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b' ' {
            out.push('+');
        } else if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request's SigV4 `Authorization` header, for a POST to `/` of `host`
/// with `body` and the headers the Query protocol sends.
pub fn authorization(
    creds: &Credentials,
    region: &str,
    service: &str,
    host: &str,
    amz_date: &str,
    body: &str,
) -> String {
    let date = &amz_date[..8];
    let mut headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        ),
        ("host", host.to_owned()),
        ("x-amz-date", amz_date.to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "POST\n/\n\n{canonical_headers}\n{signed}\n{}",
        hex(&Sha256::digest(body.as_bytes()))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = hmac(
        format!("AWS4{}", creds.secret_key).as_bytes(),
        date.as_bytes(),
    );
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key
    )
}

/// `YYYYMMDDTHHMMSSZ`, now.
fn amz_date() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// An EC2 client for one region.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    region: String,
    creds: Credentials,
}

/// A parsed answer.
pub struct Answer {
    text: String,
}

impl Answer {
    /// The text of every element named `tag`, in document order.
    pub fn all(&self, tag: &str) -> Vec<String> {
        let Ok(doc) = roxmltree::Document::parse(&self.text) else {
            return Vec::new();
        };
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .filter_map(|n| n.text().map(str::to_owned))
            .collect()
    }

    /// The text of the first element named `tag`.
    pub fn first(&self, tag: &str) -> Option<String> {
        self.all(tag).into_iter().next()
    }

    /// The first `tag` inside the first `parent`.
    pub fn within(&self, parent: &str, tag: &str) -> Option<String> {
        let doc = roxmltree::Document::parse(&self.text).ok()?;
        let p = doc.descendants().find(|n| n.tag_name().name() == parent)?;
        p.descendants()
            .find(|n| n.tag_name().name() == tag)
            .and_then(|n| n.text().map(str::to_owned))
    }
}

impl Client {
    /// A client of `region`, at `endpoint` (else the region's own).
    pub fn new(region: &str, endpoint: Option<&str>, creds: Credentials) -> Result<Self, Ec2Error> {
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| Ec2Error::Unreachable {
                action: "connect".into(),
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            endpoint,
            host,
            region: region.to_owned(),
            creds,
        })
    }

    /// Calls `action` with `params`.
    pub async fn call(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<Answer, Ec2Error> {
        let mut body = format!("Action={}&Version={API_VERSION}", uri_encode(action));
        for (k, v) in params {
            body.push('&');
            body.push_str(&uri_encode(k));
            body.push('=');
            body.push_str(&uri_encode(v));
        }
        let date = amz_date();
        let auth = authorization(&self.creds, &self.region, "ec2", &self.host, &date, &body);
        let mut request = self
            .http
            .post(format!("{}/", self.endpoint))
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .header("X-Amz-Date", &date)
            .header("Authorization", auth);
        if let Some(token) = &self.creds.session_token {
            request = request.header("X-Amz-Security-Token", token);
        }
        let unreachable = |e: reqwest::Error| Ec2Error::Unreachable {
            action: action.to_owned(),
            endpoint: self.endpoint.clone(),
            reason: crate::error_chain(&e),
        };
        let response = request.body(body).send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let answer = Answer { text };
        if !status.is_success()
            || answer.first("Errors").is_some()
            || answer.first("Error").is_some()
        {
            let code = answer
                .within("Error", "Code")
                .unwrap_or_else(|| status.to_string());
            let message = answer.within("Error", "Message").unwrap_or_default();
            return Err(Ec2Error::Api {
                action: action.to_owned(),
                hint: hint(&code),
                code,
                message,
            });
        }
        Ok(answer)
    }
}

/// `(key, value)` pairs for a call.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_v4_matches_aws_reference() {
        // The worked example of AWS's Signature Version 4 documentation
        // (IAM ListUsers), which signs the same headers a Query call does.
        let creds = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let auth = authorization(
            &creds,
            "us-east-1",
            "iam",
            "iam.amazonaws.com",
            "20150830T123600Z",
            "Action=ListUsers&Version=2010-05-08",
        );
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
        ), "{auth}");
        // The derived signing key of that example.
        let key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        let key = hmac(&key, b"us-east-1");
        let key = hmac(&key, b"iam");
        let key = hmac(&key, b"aws4_request");
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn credentials_from_a_profile() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n[other]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        assert_eq!(from_ini(text, "default").unwrap().access_key, "A");
        let other = from_ini(text, "other").unwrap();
        assert_eq!(
            (other.secret_key.as_str(), other.session_token.as_deref()),
            ("T", Some("X"))
        );
        assert!(from_ini(text, "missing").is_none());
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(uri_encode("a b/c+d=e~"), "a+b%2Fc%2Bd%3De~");
    }

    #[test]
    fn errors_carry_code_and_hint() {
        let answer = Answer {
            text: "<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>no such ami</Message></Error></Errors></Response>".into(),
        };
        assert_eq!(
            answer.within("Error", "Code").as_deref(),
            Some("InvalidAMIID.NotFound")
        );
        assert!(hint("InvalidAMIID.NotFound").contains("--amazonec2-ami"));
    }
}
