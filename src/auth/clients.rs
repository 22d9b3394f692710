//! OAuth clients from a JSON file, read again whenever it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Deserialize;
use slog::{Logger, info, warn};

use super::keys::POLL_EVERY;
use super::secrets;

/// One entry of the clients file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    client_id: String,
    secret_hash: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// A registered client: its secret's Argon2id hash and the scopes it may be granted.
pub struct Client {
    pub secret_hash: Arc<str>,
    pub scopes: Vec<String>,
}

pub type ClientMap = HashMap<String, Arc<Client>>;

/// Parses the file's JSON: a list of clients, each id once, each hash an Argon2 PHC string.
/// Errors never quote a hash.
pub fn parse(json: &[u8]) -> anyhow::Result<ClientMap> {
    let entries: Vec<Entry> = serde_json::from_slice(json)
        .map_err(|e| anyhow::anyhow!("not a JSON list of clients (line {})", e.line()))?;
    let mut clients = ClientMap::new();
    for entry in entries {
        anyhow::ensure!(!entry.client_id.is_empty(), "a client_id is empty");
        anyhow::ensure!(
            secrets::is_valid_hash(&entry.secret_hash),
            "the secret_hash of client {:?} is not an Argon2 PHC string",
            entry.client_id
        );
        let client = Client {
            secret_hash: entry.secret_hash.into(),
            scopes: entry.scopes,
        };
        anyhow::ensure!(
            clients
                .insert(entry.client_id.clone(), Arc::new(client))
                .is_none(),
            "client {:?} is listed twice",
            entry.client_id
        );
    }
    Ok(clients)
}

fn load(path: &Path) -> anyhow::Result<ClientMap> {
    let json = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    parse(&json)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The current clients, shared by every worker and replaced whole when the file changes.
/// A file that fails to parse leaves the last good list in place.
#[derive(Clone, Default)]
pub struct Clients(Arc<RwLock<Arc<ClientMap>>>);

impl Clients {
    /// Loads `path` now (no file: no clients) and returns the watcher to spawn.
    pub fn start(path: Option<PathBuf>, log: Logger) -> (Self, impl Future<Output = ()>) {
        let clients = Self::default();
        let watched = clients.clone();
        let reload = move |path: &Path| match load(path) {
            Ok(map) => {
                info!(log, "clients loaded"; "clients" => map.len());
                if let Ok(mut current) = watched.0.write() {
                    *current = Arc::new(map);
                }
            }
            Err(e) => warn!(log, "clients file not loaded"; "error" => format!("{e:#}")),
        };
        let mut seen = None;
        if let Some(path) = &path {
            seen = stamp(path);
            reload(path);
        }
        let watch = async move {
            let Some(path) = path else { return };
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let now = stamp(&path);
                if now != seen {
                    seen = now;
                    reload(&path);
                }
            }
        };
        (clients, watch)
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        let map = self.0.read().ok()?;
        map.get(client_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_a_list_of_clients_with_argon2_hashes() {
        let phc =
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$k8Y1BHS/uqXkwN1X4ChHBdkD3fgw5m0PrKh2PaeQDSE";
        let ok = format!(r#"[{{"client_id":"a","secret_hash":"{phc}","scopes":["x"]}}]"#);
        let clients = parse(ok.as_bytes()).expect("parsed");
        assert_eq!(clients["a"].scopes, ["x"]);
        let twice = format!(
            r#"[{{"client_id":"a","secret_hash":"{phc}"}},{{"client_id":"a","secret_hash":"{phc}"}}]"#
        );
        assert!(parse(twice.as_bytes()).is_err());
        let plain = r#"[{"client_id":"a","secret_hash":"hunter2"}]"#;
        let Err(err) = parse(plain.as_bytes()) else {
            panic!("a plain secret is not a hash");
        };
        assert!(!format!("{err:#}").contains("hunter2"));
        assert!(parse(b"{}").is_err());
    }
}
