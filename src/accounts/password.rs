//! Password hashes: Argon2id (RFC 9106) by the `argon2` crate, stored as PHC strings, so a hash
//! carries its own parameters and a change of `auth.argon2_*` applies to new hashes while old
//! ones still verify.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The longest password accepted, in bytes: Argon2 takes any length, but hashing a megabyte per
/// attempt is work an attacker should not be able to ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Hashes and checks passwords with one set of parameters.
pub(crate) struct Hasher {
    argon2: Argon2<'static>,
    /// A hash of nothing anyone knows: a sign-in for a name with no account is checked against
    /// it, so it takes as long as one with a wrong password.
    decoy: String,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// Argon2id with `memory_kib` KiB, `iterations` passes and one lane.
    pub(crate) fn new(memory_kib: u32, iterations: u32) -> Result<Hasher, String> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut hasher = Hasher {
            argon2,
            decoy: String::new(),
        };
        let mut secret = [0u8; 16];
        argon2::password_hash::rand_core::RngCore::fill_bytes(&mut OsRng, &mut secret);
        hasher.decoy = hasher.hash(&format!("{secret:x?}"))?;
        Ok(hasher)
    }

    /// The PHC string of `password`, with a fresh random salt.
    pub(crate) fn hash(&self, password: &str) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }

    /// Whether `password` matches `stored` (a PHC string); `None` checks against the decoy and
    /// is always false. A stored hash that does not parse never matches.
    pub(crate) fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        // An account without a password (a token's subject) costs the same as none at all.
        let (phc, real) = match stored {
            Some(s) if !s.is_empty() => (s, true),
            _ => (self.decoy.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let ok = self
            .argon2
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = Hasher::new(64, 1).expect("params");
        let stored = h.hash("correct horse").expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert!(!stored.contains("correct horse"));
        assert!(h.verify("correct horse", Some(&stored)));
        assert!(!h.verify("correct horsE", Some(&stored)));
        assert!(!h.verify("correct horse", None), "the decoy never matches");
        assert!(!h.verify("x", Some("not a hash")));
        assert_ne!(stored, h.hash("correct horse").expect("hash"), "salted");
        let other = Hasher::new(128, 2).expect("params");
        assert!(
            other.verify("correct horse", Some(&stored)),
            "a hash carries its parameters"
        );
    }
}
