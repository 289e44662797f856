//! The Docker API over TCP with mutual TLS, as dockerd's `--tlsverify`:
//! the server shows its certificate, and only clients whose certificate
//! the given CA signed are served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files the TLS endpoint is set up from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signs client certificates.
    pub ca: PathBuf,
    /// The server's certificate (chain).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A server config that requires a client certificate signed by the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("use {} as a CA: {e}", files.ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verification: {e}"))?;
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("read the key {}: {e}", files.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the server certificate and key: {e}"))?;
    Ok(Arc::new(config))
}
