//! `platform auth generate-key DIR` and `platform auth hash-secret`.

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;

use super::{keys, secrets};
use crate::config::Argon2Settings;

/// Writes a new signing key into `dir` and prints its path.
pub fn generate_key(dir: &Path) -> anyhow::Result<()> {
    let path = keys::generate(dir)?;
    println!("{}", path.display());
    Ok(())
}

/// Reads a secret from stdin (never from the command line, where `ps` shows it) and prints
/// its Argon2id PHC hash. One trailing line break is not part of the secret.
pub fn hash_secret(settings: &Argon2Settings) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("failed to read the secret from stdin")?;
    let secret = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(&input);
    anyhow::ensure!(!secret.is_empty(), "the secret read from stdin is empty");
    let phc = secrets::hash(settings, secret)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{phc}").context("failed to write the hash")?;
    Ok(())
}
