//! The server's TLS for `wss://`: rustls with its `ring` provider (it builds with just a C
//! compiler; the default aws-lc-rs provider needs cmake and nasm), TLS 1.2 and 1.3 with rustls'
//! default, modern cipher suites. The certificate can be swapped at run time
//! ([`TlsReloader::reload`], on SIGHUP) without touching established connections; a bad new
//! certificate leaves the old in place.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsConfig};
use crate::connection::TlsSlot;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
    // Only regular files: opening a FIFO (or a device) could block until someone writes to it.
    let regular = |path: &str| match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err("not a regular file".to_string()),
        Err(e) => Err(e.to_string()),
    };
    regular(&cfg.cert).map_err(cert_error)?;
    regular(&cfg.key).map_err(key_error)?;
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

/// Re-reads the TLS certificate and key of a running server (SIGHUP) into its [`TlsSlot`].
#[derive(Debug, Clone)]
pub struct TlsReloader {
    files: TlsConfig,
    slot: TlsSlot,
}

impl TlsReloader {
    pub(crate) fn new(files: TlsConfig, slot: TlsSlot) -> TlsReloader {
        TlsReloader { files, slot }
    }

    /// Loads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.slot.replace(load_server_config(&self.files)?);
        Ok(())
    }

    /// [`TlsReloader::reload`] on a blocking thread, given at most `limit`: a file on a slow
    /// network mount never holds up the chat.
    pub async fn reload_off_runtime(&self, limit: std::time::Duration) -> Result<(), ConfigError> {
        let reloader = self.clone();
        let timed_out = || ConfigError::File {
            key: "tls.cert",
            path: self.files.cert.clone(),
            reason: format!("reading the certificate and key took over {limit:?}"),
        };
        match tokio::time::timeout(
            limit,
            tokio::task::spawn_blocking(move || reloader.reload()),
        )
        .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(timed_out()),
        }
    }
}
