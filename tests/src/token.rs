//! A token service for a registry set up for bearer auth: it checks Basic
//! credentials and hands out JWTs (RS256, signed with `openssl`) granting
//! what each requested scope asks; it records every scope asked for.
//!
//! The registry is Debian's own and checks these tokens itself; this is
//! the auth server a deployment would run beside it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::registry::openssl;

/// A running token service (its thread lives as long as the test).
pub struct TokenService {
    /// The realm URL registries send clients to.
    pub realm: String,
    /// The signing certificate registries trust.
    pub cert: PathBuf,
    /// Every request's scopes, one entry per token handed out.
    pub requests: Arc<Mutex<Vec<Vec<String>>>>,
    _dir: tempfile::TempDir,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64; `url` for JWT segments (URL alphabet, no padding).
fn base64(bytes: &[u8], url: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let c = ALPHABET[((n >> (18 - 6 * i)) & 63) as usize];
            out.push(match (url, c) {
                (true, b'+') => '-',
                (true, b'/') => '_',
                (_, c) => c as char,
            });
        }
        if !url {
            out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A JWT for `claims`, signed with `dir/token.key`, its certificate in `x5c`.
fn sign(dir: &Path, claims: &serde_json::Value) -> String {
    let pem = std::fs::read_to_string(dir.join("token.pem")).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der]});
    let input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("token.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{input}.{}", base64(&out.stdout, true))
}

impl TokenService {
    /// Starts a service that accepts `user:password` (`creds`).
    pub fn start(creds: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=berth test tokens",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
            ],
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let expected = format!("Basic {}", base64(creds.as_bytes(), false));
        let user = creds.split(':').next().unwrap().to_owned();
        let (seen, key_dir) = (requests.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or_default();
                let mut authorized = false;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap_or(("", ""));
                    if name.eq_ignore_ascii_case("authorization") && value.trim() == expected {
                        authorized = true;
                    }
                }
                let target = line.split(' ').nth(1).unwrap_or("");
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let scopes: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
                    .collect();
                let response = if authorized {
                    seen.lock().unwrap().push(scopes.clone());
                    let access: Vec<serde_json::Value> = scopes
                        .iter()
                        .filter_map(|s| {
                            let mut parts = s.splitn(3, ':');
                            let (kind, name, actions) =
                                (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({
                                "type": kind, "name": name,
                                "actions": actions.split(',').collect::<Vec<_>>()
                            }))
                        })
                        .collect();
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let claims = serde_json::json!({
                        "iss": "berth-test-issuer", "sub": user, "aud": "berth-test",
                        "exp": now + 600, "nbf": now - 60, "iat": now,
                        "jti": format!("{now}-{}", seen.lock().unwrap().len()),
                        "access": access
                    });
                    let body = serde_json::json!({"token": sign(&key_dir, &claims)}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        TokenService {
            realm,
            cert: dir.path().join("token.pem"),
            requests,
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_alphabets() {
        assert_eq!(base64(b"foobar", false), "Zm9vYmFy");
        assert_eq!(base64(b"fo", false), "Zm8=");
        assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull%2Cpush"),
            "repository:a/b:pull,push"
        );
    }
}
