//! TLS for chatctl: how it verifies `wss://` servers (system roots, a private CA, or not at all).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
