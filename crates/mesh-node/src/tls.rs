//! Mutual TLS between DCs: a mesh CA, one certificate per DC whose DNS name is the DC id, and the
//! rustls configurations quinn uses. The DC a peer is comes from its verified certificate, never
//! from what it says.

use mesh_core::DcId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// Why TLS material could not be made or used. Nothing was written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Generating a certificate failed.
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material (for example a key that does not match its certificate).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// A development CA and certificates, as PEM text.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

/// Generates a self-signed mesh CA for development.
pub fn generate_ca() -> Result<Pem, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "mesh development CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues DC `dc`'s certificate from the CA: its DNS name is the DC id, usable to serve and to
/// dial (server and client authentication).
pub fn issue(ca: &Pem, dc: &DcId) -> Result<Pem, TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![dc.as_str().to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, dc.as_str());
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.display().to_string(), source })
}

/// Writes `text` to `path` (creating its directory), readable by the owner only when it is a key.
pub fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    let _ = secret;
    Ok(())
}

/// One DC's TLS material, loaded and checked.
#[derive(Debug, Clone)]
pub struct Material {
    /// The mesh CA.
    pub ca: CertificateDer<'static>,
    /// This DC's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// This DC's key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Material {
    /// Reads the CA certificate and the DC's certificate and key from PEM files.
    pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(ca_cert)?, &Pem { cert: read(cert)?, key: read(key)? }, &[ca_cert, cert, key])
    }

    /// Parses PEM text (`paths` name the CA, certificate and key in errors).
    pub fn from_pem(ca: &str, dc: &Pem, paths: &[&Path; 3]) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let pem_err =
            |i: usize, problem: String| TlsError::Pem { path: paths[i].display().to_string(), problem };
        let ca = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| pem_err(0, e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(dc.cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(1, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(1, "no certificate found".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(dc.key.as_bytes()).map_err(|e| pem_err(2, e.to_string()))?;
        Ok(Self { ca, chain, key: Arc::new(key) })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(roots))
    }

    /// The QUIC server configuration: a client certificate from the mesh CA is required.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?)
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// The QUIC client configuration: the peer's certificate must come from the mesh CA and name
    /// the DC dialed; this DC presents its own.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

/// The DC a verified peer certificate names: the first of `candidates` it is valid for (its DNS
/// name). The certificate chain was already verified against the mesh CA by rustls.
pub fn certificate_dc<'a>(
    cert: &CertificateDer<'_>,
    candidates: impl IntoIterator<Item = &'a DcId>,
) -> Option<DcId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    candidates
        .into_iter()
        .find(|dc| {
            ServerName::try_from(dc.as_str())
                .is_ok_and(|name| parsed.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .cloned()
}

/// The DC the peer of `connection` proved it is, from its certificate.
pub fn peer_dc<'a>(
    connection: &quinn::Connection,
    candidates: impl IntoIterator<Item = &'a DcId>,
) -> Option<DcId> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_dc(certs.first()?, candidates)
}
