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

/// Loads the certificate chain and key named by `tls.cert`/`tls.key` into a server configuration,
/// with what the server certificate says about itself (if it parses as X.509). Errors name the
/// key and file: missing, unreadable, not PEM, or a key that does not match.
pub fn load_server_config(
    cfg: &TlsConfig,
) -> Result<(Arc<rustls::ServerConfig>, Option<CertificateFacts>), ConfigError> {
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
    // Read first, so that an unreadable file says so (not "not a PEM private key").
    let cert_pem =
        std::fs::read(&cfg.cert).map_err(|e| cert_error(crate::config::read_error(&e)))?;
    let key_pem = std::fs::read(&cfg.key).map_err(|e| key_error(crate::config::read_error(&e)))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_error(format!("not a PEM private key: {e}")))?;
    let facts = certificate_facts(&certs[0]);
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
    Ok((Arc::new(config), facts))
}

/// What the server certificate (the first in `tls.cert`) says about itself: for the startup
/// warnings and `chatd_tls_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// When it expires (Unix seconds).
    pub not_after: i64,
    /// Whether it is a CA certificate (basicConstraints CA:TRUE), as `openssl req -x509` makes.
    pub is_ca: bool,
    /// Its subjectAltName entries (DNS names and IP addresses); clients check these, not the CN.
    pub names: Vec<String>,
}

/// The facts of a DER certificate, if it parses.
fn certificate_facts(der: &CertificateDer<'_>) -> Option<CertificateFacts> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    16 => <[u8; 16]>::try_from(*ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(CertificateFacts {
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        names,
    })
}

/// What an operator should hear about a certificate at `now` (Unix seconds): a CA certificate
/// used as the server's, no subjectAltName (browsers, chatctl and Python refuse it), expired or
/// expiring within 14 days.
pub fn certificate_warnings(facts: &CertificateFacts, now: i64) -> Vec<String> {
    let mut warnings = Vec::new();
    if facts.is_ca {
        warnings.push(
            "the TLS certificate is a CA certificate (CA:TRUE), as `openssl req -x509` makes: \
             chatctl and browsers refuse it as a server's; `chatd cert --host NAME` makes a \
             CA and a server certificate"
                .to_string(),
        );
    }
    if facts.names.is_empty() {
        warnings.push(
            "the TLS certificate has no subjectAltName: clients check the name they connect to \
             against it (not the CN) and will refuse it; `chatd cert --host NAME` makes one"
                .to_string(),
        );
    }
    let left = facts.not_after - now;
    if left <= 0 {
        warnings.push("the TLS certificate has expired: clients refuse it".to_string());
    } else if left < 14 * 86_400 {
        warnings.push(format!(
            "the TLS certificate expires in {} days: renew it (SIGHUP reloads it)",
            (left + 43_200) / 86_400
        ));
    }
    warnings
}

/// Re-reads the TLS certificate and key of a running server (SIGHUP) into its [`TlsSlot`].
#[derive(Debug, Clone)]
pub struct TlsReloader {
    files: TlsConfig,
    slot: TlsSlot,
    expiry: prometheus::IntGauge,
}

impl TlsReloader {
    pub(crate) fn new(
        files: TlsConfig,
        slot: TlsSlot,
        expiry: prometheus::IntGauge,
    ) -> TlsReloader {
        TlsReloader {
            files,
            slot,
            expiry,
        }
    }

    /// Loads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let (config, facts) = load_server_config(&self.files)?;
        self.slot.replace(config);
        if let Some(facts) = facts {
            self.expiry.set(facts.not_after);
        }
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

/// Copies a certificate chain and its key into `into` for a sandboxed server to read (systemd's
/// `DynamicUser=` service cannot read a root-only key; the credentials drop-in runs this as root
/// before start and on reload). The pair is checked first (a bad pair changes nothing); `into` is
/// created mode 0700 and, like the files (mode 0600), owned by whoever owns its parent (the
/// service's state directory); each file is written beside its final name and renamed over it.
pub fn copy_for_service(
    cert: &std::path::Path,
    key: &std::path::Path,
    into: &std::path::Path,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let check = TlsConfig {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        ..TlsConfig::default()
    };
    load_server_config(&check).map_err(|e| e.to_string())?;
    let parent = into
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let owner = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let (uid, gid) = (owner.uid(), owner.gid());
    let at = |what: &std::path::Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(into).map_err(|e| at(into, e))?;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| at(into, e))?;
    std::os::unix::fs::chown(into, Some(uid), Some(gid)).map_err(|e| at(into, e))?;
    for (from, name) in [(cert, "cert.pem"), (key, "key.pem")] {
        let bytes = std::fs::read(from).map_err(|e| at(from, e))?;
        let target = into.join(name);
        let temp = into.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| at(&temp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| at(&temp, e))?;
        std::os::unix::fs::chown(&temp, Some(uid), Some(gid)).map_err(|e| at(&temp, e))?;
        std::fs::rename(&temp, &target).map_err(|e| at(&target, e))?;
    }
    Ok(())
}
