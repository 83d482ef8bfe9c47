//! `chatd cert`: a private certificate authority and a server certificate signed by it, for
//! `wss://` without a public CA (a LAN, a staging host, a test). Clients trust the CA file
//! (`chatctl --ca-cert`, Python's `cafile`, a browser's or the system's trust store); the server
//! uses the certificate and key. A CA already in the directory is reused, so renewing the
//! server certificate keeps every client's trust.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The files `chatd cert` writes, in its output directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (0600): keep it to issue the next certificate with the same CA.
pub const CA_KEY: &str = "ca-key.pem";
/// The server certificate (`tls.cert`).
pub const CERT: &str = "cert.pem";
/// The server's private key (`tls.key`, 0600).
pub const KEY: &str = "key.pem";

/// What was written, for the instructions printed after.
#[derive(Debug)]
pub struct Written {
    /// The directory.
    pub dir: PathBuf,
    /// Whether the CA was made now (false: an existing one was reused).
    pub new_ca: bool,
}

/// Makes (or reuses) the CA in `dir` and a server certificate for `hosts` (DNS names or IP
/// addresses) valid for `days`. Existing `cert.pem`/`key.pem` are replaced only with `force`.
pub fn make(dir: &Path, hosts: &[String], days: u32, force: bool) -> Result<Written, String> {
    if hosts.is_empty() {
        return Err("give at least one --host (a DNS name or an IP address)".into());
    }
    if days == 0 || days > 825 {
        return Err("--days must be 1–825 (what browsers accept for a server certificate)".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cert_path, key_path) = (dir.join(CERT), dir.join(KEY));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(format!(
            "{} or {} exists; --force replaces them",
            cert_path.display(),
            key_path.display()
        ));
    }
    let (ca_cert_path, ca_key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let now = time::OffsetDateTime::now_utc();
    let existing = match (
        std::fs::read_to_string(&ca_cert_path),
        std::fs::read_to_string(&ca_key_path),
    ) {
        (Ok(cert), Ok(key)) => Some((cert, key)),
        _ => None,
    };
    let new_ca = existing.is_none();
    let (ca_pem, ca_key) = match existing {
        Some((cert, key)) => {
            let key = KeyPair::from_pem(&key).map_err(|e| format!("{CA_KEY}: {e}"))?;
            (cert, key)
        }
        None => {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(str_err)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, "chatd private CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            let key = KeyPair::generate().map_err(str_err)?;
            let cert = params.self_signed(&key).map_err(str_err)?;
            (cert.pem(), key)
        }
    };
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(|e| format!("{CA_CERT}: {e}"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(str_err)?;
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|_| format!("{host:?} is not a DNS name or an IP address"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, &hosts[0]);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = KeyPair::generate().map_err(str_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(str_err)?;
    if new_ca {
        write(&ca_cert_path, ca_pem.as_bytes(), 0o644)?;
        write(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    }
    write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(Written {
        dir: dir.to_path_buf(),
        new_ca,
    })
}

fn str_err(e: rcgen::Error) -> String {
    e.to_string()
}

/// Writes a file created with `mode` from the start (a key is never readable by others, not
/// even for a moment), replacing what was there.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    // The umask may have taken bits away from a certificate; give them back exactly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}
