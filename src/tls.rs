//! TLS for `wss://` with rustls and its `ring` provider (it builds with just a C compiler; the
//! default aws-lc-rs provider needs cmake and nasm). TLS 1.2 and 1.3 with rustls' default,
//! modern cipher suites. The certificate can be swapped at run time ([`TlsState::reload`], on
//! SIGHUP) without touching established connections; a bad new certificate leaves the old in place.
//!
//! Also the client configuration `chatctl` uses.

use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the certificate chain and key named by `tls.cert`/`tls.key` into a server configuration.
/// Errors name the key and file: missing, unreadable, not PEM, or a key that does not match.
pub fn load_server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let cert_error = |reason: String| ConfigError::File {
        key: "tls.cert",
        path: cfg.cert.clone(),
        reason,
    };
    let key_error = |reason: String| ConfigError::File {
        key: "tls.key",
        path: cfg.key.clone(),
        reason,
    };
    std::fs::metadata(&cfg.cert).map_err(|e| cert_error(e.to_string()))?;
    std::fs::metadata(&cfg.key).map_err(|e| key_error(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| key_error(format!("not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cert_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_error(format!(
                "the key does not match the certificate in {}",
                cfg.cert
            )),
            other => cert_error(other.to_string()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server's current TLS configuration, replaceable while running.
#[derive(Debug)]
pub struct TlsState {
    files: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsState {
    /// Loads the configured certificate and key.
    pub fn new(files: &TlsConfig) -> Result<TlsState, ConfigError> {
        Ok(TlsState {
            current: RwLock::new(load_server_config(files)?),
            files: files.clone(),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Re-reads the certificate and key. On error the old ones stay in use.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = load_server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// How `chatctl` verifies servers.
#[derive(Debug, Clone, Default)]
pub enum ClientTrust {
    /// The system's root certificates.
    #[default]
    SystemRoots,
    /// Only this PEM CA bundle (a private CA).
    CaFile(std::path::PathBuf),
    /// No verification at all (testing only).
    Insecure,
}

/// A rustls client configuration for `wss://` URLs.
pub fn client_config(trust: &ClientTrust) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let config = match trust {
        ClientTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        ClientTrust::SystemRoots | ClientTrust::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            match trust {
                ClientTrust::CaFile(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
                    for cert in certs {
                        let cert =
                            cert.map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
                    }
                }
                _ => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err("no trusted root certificates found (use --ca-cert FILE)".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate: `--insecure`, for testing only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
