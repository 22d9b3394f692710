//! Client secrets: Argon2id PHC hashes, made and verified off the request threads, a bounded
//! number at a time.

use std::sync::Arc;
use std::time::Instant;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use metrics::Histogram;
use tokio::sync::Semaphore;

use crate::config::Argon2Settings;

/// The Argon2id context of `settings`.
pub fn argon2(settings: &Argon2Settings) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(
        settings.argon2_memory_kib,
        settings.argon2_iterations,
        settings.argon2_parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of `secret`, with a random salt.
pub fn hash(settings: &Argon2Settings, secret: &[u8]) -> anyhow::Result<String> {
    let hashed = argon2(settings)?
        .hash_password(secret)
        .map_err(|e| anyhow::anyhow!("failed to hash: {e}"))?;
    Ok(hashed.to_string())
}

/// Whether `phc` is a hash this role can verify (an Argon2 PHC string).
pub fn is_valid_hash(phc: &str) -> bool {
    argon2::PasswordHash::new(phc).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

/// Verifies secrets on the blocking pool, at most `permits` at once (each costs the hash's
/// memory and tens of ms of one core): a flood waits here instead of starving other requests
/// or exhausting memory.
#[derive(Clone)]
pub struct Verifier {
    permits: Arc<Semaphore>,
    /// Verified instead when the client is unknown, so both answers take as long.
    dummy: Arc<str>,
    duration: Histogram,
    settings: Argon2Settings,
}

impl Verifier {
    pub fn new(
        settings: &Argon2Settings,
        permits: usize,
        duration: Histogram,
    ) -> anyhow::Result<Self> {
        let dummy = hash(settings, b"no client has this secret")?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            dummy: dummy.into(),
            duration,
            settings: *settings,
        })
    }

    /// The PHC hash of `secret` (a password at registration), made under the same cap.
    pub async fn hash(&self, secret: String) -> anyhow::Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| anyhow::anyhow!("the hasher is closed"))?;
        let (duration, settings) = (self.duration.clone(), self.settings);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let phc = hash(&settings, secret.as_bytes());
            duration.record(started.elapsed().as_secs_f64());
            phc
        })
        .await
        .map_err(|e| anyhow::anyhow!("the hashing task failed: {e}"))?
    }

    /// Whether `secret` matches `phc` (`None`: the client is unknown; the dummy hash is
    /// verified anyway and the answer is false).
    pub async fn verify(&self, secret: String, phc: Option<Arc<str>>) -> bool {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let duration = self.duration.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let ok = Argon2::default()
                .verify_password(secret.as_bytes(), &*phc)
                .is_ok();
            duration.record(started.elapsed().as_secs_f64());
            ok
        })
        .await;
        known && verified.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Settings = Argon2Settings {
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        argon2_parallelism: 1,
    };

    #[tokio::test]
    async fn a_hash_verifies_its_secret_only_and_an_unknown_client_never() {
        let phc = hash(&CHEAP, b"s3cret").expect("hashed");
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        assert!(is_valid_hash(&phc) && !is_valid_hash("plain"));
        let verifier = Verifier::new(&CHEAP, 2, Histogram::noop()).expect("verifier");
        let phc: Arc<str> = phc.into();
        assert!(verifier.verify("s3cret".into(), Some(phc.clone())).await);
        assert!(!verifier.verify("wrong".into(), Some(phc)).await);
        assert!(
            !verifier
                .verify("no client has this secret".into(), None)
                .await
        );
    }
}
