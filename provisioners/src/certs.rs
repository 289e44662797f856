//! A machine's TLS certificates, in docker-machine's layout under
//! `<machine dir>/certs/`: a CA of its own (`ca.pem`, `ca-key.pem`), the
//! server certificate the host's agent presents on port 2376
//! (`server.pem`, `server-key.pem`, naming the host's addresses), and the
//! client certificate the docker CLI presents (`cert.pem`, `key.pem`) —
//! the directory `DOCKER_CERT_PATH` points at. Keys are ECDSA P-256;
//! private keys are written owner-only, every file atomically.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long the certificates are valid: long, as docker-machine's are;
/// `berth regenerate-certs` makes new ones.
const VALID_DAYS: i64 = 3 * 365;

/// What went wrong making certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Generating or signing failed.
    #[error("cannot make the {what}: {reason}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The files of a machine's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    dir: PathBuf,
}

impl CertPaths {
    /// The certificates in `machine_dir/certs`.
    pub fn new(machine_dir: &Path) -> Self {
        CertPaths {
            dir: machine_dir.join("certs"),
        }
    }

    /// The directory (`DOCKER_CERT_PATH`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// The server's certificate.
    pub fn server(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The client's certificate.
    pub fn client(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The client's key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> CertError {
    move |e| CertError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    crate::write_atomic(path, text.as_bytes(), private).map_err(|source| CertError::Io {
        action: "write",
        path: path.display().to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        action: "read",
        path: path.display().to_string(),
        source,
    })
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A little in the past: the host's clock may be behind this one's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

/// The CA's parameters: the same every time, so a new certificate can be
/// signed with the kept key alone.
fn ca_params(machine: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::new()).map_err(generate("CA certificate"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "berth");
    name.push(DnType::CommonName, format!("berth CA for {machine}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Makes a new CA for `machine`, replacing any.
pub fn make_ca(paths: &CertPaths, machine: &str) -> Result<(), CertError> {
    let key = KeyPair::generate().map_err(generate("CA key"))?;
    let mut params = ca_params(machine)?;
    validity(&mut params);
    let cert = params
        .self_signed(&key)
        .map_err(generate("CA certificate"))?;
    write(&paths.ca_key(), &key.serialize_pem(), true)?;
    write(&paths.ca(), &cert.pem(), false)
}

/// Makes the server certificate for a host reached as `names` (addresses
/// and DNS names) and the client certificate, both signed by the CA,
/// replacing any.
pub fn make_leaves(paths: &CertPaths, machine: &str, names: &[String]) -> Result<(), CertError> {
    let ca_key = KeyPair::from_pem(&read(&paths.ca_key())?).map_err(generate("CA key"))?;
    let issuer = Issuer::new(ca_params(machine)?, ca_key);

    let server_key = KeyPair::generate().map_err(generate("server key"))?;
    let mut server = CertificateParams::new(Vec::new()).map_err(generate("server certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, machine);
    server.distinguished_name = dn;
    for name in names {
        server.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(generate("server certificate"))?,
            ),
        });
    }
    server.subject_alt_names.push(SanType::DnsName(
        "localhost"
            .try_into()
            .map_err(generate("server certificate"))?,
    ));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut server);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(generate("server certificate"))?;

    let client_key = KeyPair::generate().map_err(generate("client key"))?;
    let mut client = CertificateParams::new(Vec::new()).map_err(generate("client certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "berth");
    dn.push(DnType::CommonName, "berth client");
    client.distinguished_name = dn;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut client);
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(generate("client certificate"))?;

    write(&paths.server_key(), &server_key.serialize_pem(), true)?;
    write(&paths.server(), &server_cert.pem(), false)?;
    write(&paths.client_key(), &client_key.serialize_pem(), true)?;
    write(&paths.client(), &client_cert.pem(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_server_and_client_certificates() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        make_ca(&paths, "dev").unwrap();
        make_leaves(&paths, "dev", &["192.0.2.7".into(), "box.example".into()]).unwrap();
        for p in [paths.ca(), paths.server(), paths.client()] {
            assert!(
                read(&p).unwrap().starts_with("-----BEGIN CERTIFICATE-----"),
                "{p:?}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(paths.client_key())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The server certificate verifies against the CA for its names.
        let ca = rustls_pki_types::CertificateDer::from(pem_der(&read(&paths.ca()).unwrap()));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let server =
            rustls_pki_types::CertificateDer::from(pem_der(&read(&paths.server()).unwrap()));
        let name = rustls_pki_types::ServerName::try_from("192.0.2.7").unwrap();
        verifier
            .verify_server_cert(&server, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .unwrap();
        let other = rustls_pki_types::ServerName::try_from("192.0.2.8").unwrap();
        assert!(verifier
            .verify_server_cert(&server, &[], &other, &[], rustls_pki_types::UnixTime::now())
            .is_err());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
