//! `platform users export` / `import`: streamed JSON-lines backups of the users, in batches.
//!
//! A file is a header line, one user per line (the stored fields, oldest first) and a footer
//! line with the number of users: a file without its footer, or with another count, is
//! truncated. The export walks `users:by_created` page by page as the list API does, so a user
//! present for the whole export appears exactly once; each line is one whole stored record.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use slog::Logger;
use uuid::Uuid;

use super::cursor::Cursor;
use super::reindex::BATCH;
use super::store::{self, BY_CREATED, BY_CREATED_LEX, INDEX, StoreError, UserStore};
use crate::accounts::domain::User;
use crate::accounts::{CREATE, credential_key, to_json};
use crate::config::{ExportArgs, UsersSettings};
use crate::telemetry::metrics::Metrics;

const FORMAT: &str = "platform-users";
const VERSION: u32 = 1;
/// Conflicts listed one by one in the import's log; beyond, only counted.
const MAX_LISTED: usize = 1000;

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    exported_at: String,
    /// The id a resumed export started after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

/// The last line of a complete export.
#[derive(Debug, Serialize, Deserialize)]
struct Footer {
    end: bool,
    users: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_id: Option<String>,
}

/// The `export` command.
pub async fn export(
    settings: &UsersSettings,
    args: &ExportArgs,
    log: &Logger,
) -> anyhow::Result<()> {
    let log = &crate::telemetry::logging::for_service(log, super::SERVICE);
    anyhow::ensure!(
        args.keep.is_none() || args.dir.is_some(),
        "--keep needs --dir (it rotates the exports in that directory)"
    );
    let store = UserStore::new(&settings.redis, &Metrics::new())?;
    let started = std::time::Instant::now();
    let exported_at = crate::timestamp::now();
    let target = match (&args.output, &args.dir) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => {
            let stamp: String = exported_at
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            dir.join(format!("users-{stamp}.jsonl"))
        }
        (None, None) => anyhow::bail!("export needs --output or --dir"),
    };
    let temp = temp_path(&target);
    let result = async {
        let file =
            File::create(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let count = write_users(&store, args.after, &exported_at, &mut out, log).await?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        if let Some(dir) = target.parent() {
            // The rename itself survives a crash once the directory is synced.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        anyhow::Ok(count)
    }
    .await;
    store.close();
    let count = match result {
        Ok(count) => count,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e.context(format!(
                "export failed on {}",
                settings.redis.redacted_url()
            )));
        }
    };
    let removed = match (&args.dir, args.keep) {
        (Some(dir), Some(keep)) => rotate(dir, keep as usize)?,
        _ => Vec::new(),
    };
    slog::info!(log, "export done";
        "users" => count,
        "file" => %target.display(),
        "removed_old_exports" => removed.len(),
        "duration_ms" => started.elapsed().as_millis() as u64);
    Ok(())
}

/// Writes header, users and footer to `out`; the number of users.
async fn write_users(
    store: &UserStore,
    after: Option<Uuid>,
    exported_at: &str,
    out: &mut impl Write,
    log: &Logger,
) -> anyhow::Result<u64> {
    // Users only the seeds' service indexed are indexed first, so they are exported too.
    super::reconcile::until_settled(store, log).await?;
    let mut cursor = match after {
        None => None,
        Some(id) => {
            let mut conn = store.connection().await?;
            let (user, _) = store::read(&mut conn, id).await?.with_context(|| {
                format!("cannot resume after {id}: no such user any more; export from the start")
            })?;
            Some(Cursor {
                score: store::created_score(&user),
                id,
            })
        }
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: exported_at.into(),
        after: after.map(|id| id.to_string()),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n")?;
    let mut count = 0u64;
    let mut last_id = None;
    loop {
        let page = store.page(cursor, BATCH).await?;
        for user in &page.users {
            out.write_all(to_json(user).as_bytes())?;
            out.write_all(b"\n")?;
        }
        count += page.users.len() as u64;
        if let Some(user) = page.users.last() {
            last_id = Some(user.id.clone());
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    serde_json::to_writer(
        &mut *out,
        &Footer {
            end: true,
            users: count,
            last_id,
        },
    )?;
    out.write_all(b"\n")?;
    Ok(count)
}

/// `.users-….jsonl.tmp` beside `target`: never mistaken for an export, replaced by rename.
fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
    target.with_file_name(format!(".{name}.tmp"))
}

/// Deletes all but the newest `keep` `users-*.jsonl` in `dir` (names sort by time), and temp
/// files a crashed export left; the names removed.
fn rotate(dir: &Path, keep: usize) -> anyhow::Result<Vec<String>> {
    let mut exports = Vec::new();
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("users-") && name.ends_with(".jsonl") {
            exports.push(name);
        } else if name.starts_with(".users-") && name.ends_with(".jsonl.tmp") {
            fs::remove_file(dir.join(&name))?;
            removed.push(name);
        }
    }
    exports.sort();
    let excess = exports.len().saturating_sub(keep);
    for name in exports.into_iter().take(excess) {
        fs::remove_file(dir.join(&name))?;
        removed.push(name);
    }
    Ok(removed)
}

/// What an import did. Importing the same file twice writes nothing the second time.
#[derive(Debug, Default)]
struct ImportReport {
    read: u64,
    imported: u64,
    identical: u64,
    email_conflicts: u64,
    id_conflicts: u64,
    invalid: u64,
    /// (id, email, owner) of the first `MAX_LISTED` email conflicts.
    listed: Vec<(String, String, String)>,
    footer: Option<Footer>,
}

impl ImportReport {
    /// Adds a batch's counts (and its listed conflicts, up to `MAX_LISTED`).
    fn add(&mut self, batch: ImportReport) {
        self.imported += batch.imported;
        self.identical += batch.identical;
        self.email_conflicts += batch.email_conflicts;
        self.id_conflicts += batch.id_conflicts;
        let room = MAX_LISTED.saturating_sub(self.listed.len());
        self.listed.extend(batch.listed.into_iter().take(room));
    }
}

/// The `import` command.
pub async fn import(settings: &UsersSettings, file: &Path, log: &Logger) -> anyhow::Result<()> {
    let log = &crate::telemetry::logging::for_service(log, super::SERVICE);
    let input: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let f = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, f))
    };
    let store = UserStore::new(&settings.redis, &Metrics::new())?;
    let started = std::time::Instant::now();
    let result = read_and_import(&store, input).await;
    store.close();
    let report =
        result.with_context(|| format!("import failed on {}", settings.redis.redacted_url()))?;
    slog::info!(log, "import done";
        "users" => report.read,
        "imported" => report.imported,
        "skipped_identical" => report.identical,
        "email_conflicts" => report.email_conflicts,
        "id_conflicts" => report.id_conflicts,
        "invalid_lines" => report.invalid,
        "duration_ms" => started.elapsed().as_millis() as u64);
    for (id, email, owner) in &report.listed {
        slog::warn!(log, "user not imported: its email belongs to another user";
            "id" => id, "email" => email, "owner" => owner);
    }
    match &report.footer {
        None => anyhow::bail!(
            "{} is truncated (no footer line): {} users read and imported as reported; re-export and import again",
            file.display(),
            report.read
        ),
        Some(f) if f.users != report.read => anyhow::bail!(
            "{} is inconsistent: the footer counts {} users, {} were read",
            file.display(),
            f.users,
            report.read
        ),
        Some(_) => Ok(()),
    }
}

async fn read_and_import(
    store: &UserStore,
    input: Box<dyn BufRead>,
) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut lines = input.lines();
    let header: Header = match lines.next() {
        Some(line) => {
            serde_json::from_str(&line?).context("the first line is not an export header")?
        }
        None => anyhow::bail!("the file is empty"),
    };
    anyhow::ensure!(
        header.format == FORMAT && header.version == VERSION,
        "not a {FORMAT} v{VERSION} export: {} v{}",
        header.format,
        header.version
    );
    let mut batch: Vec<User> = Vec::with_capacity(BATCH);
    for line in lines {
        let line = line?;
        if report.footer.is_some() {
            anyhow::bail!("a line follows the footer");
        }
        if let Ok(user) = serde_json::from_str::<User>(&line) {
            report.read += 1;
            if Uuid::try_parse(&user.id).is_err() {
                report.invalid += 1;
                continue;
            }
            batch.push(user);
            if batch.len() == BATCH {
                import_batch(store, &batch, &mut report).await?;
                batch.clear();
            }
        } else if let Ok(footer) = serde_json::from_str::<Footer>(&line) {
            report.footer = Some(footer);
        } else {
            report.invalid += 1;
        }
    }
    import_batch(store, &batch, &mut report).await?;
    confirm_all(store).await?;
    Ok(report)
}

/// Where an import's last write goes (expires within a minute; nothing reads it).
const CONFIRMATION: &str = "users:import:confirmation";

/// One last write, confirmed: a batch that wrote nothing (every user already there, e.g. left
/// unconfirmed by an earlier run) has no `WAIT` of its own, and this one covers everything
/// the master holds, so an import that ends well means its users are on the replicas too.
async fn confirm_all(store: &UserStore) -> Result<(), StoreError> {
    store
        .write("import", |mut conn| async move {
            redis::cmd("SET")
                .arg(CONFIRMATION)
                .arg(uuid::Uuid::new_v4().to_string())
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::from)
        })
        .await
}

/// Imports `batch` as one store write: refused during a failover, and done only once
/// confirmed (`--redis-min-replicas-ack`), like the API's own creates, so an import never
/// reports users imported that a failover can still drop (it fails; a re-run is idempotent).
async fn import_batch(
    store: &UserStore,
    batch: &[User],
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    // Identical users are skipped and ids in use reported (a read); the rest is one write.
    let keys: Vec<String> = batch.iter().map(|u| store::user_key(&u.id)).collect();
    let existing: Vec<Option<Vec<u8>>> = store
        .run("import", |mut conn| async move {
            conn.mget(&keys).await.map_err(StoreError::from)
        })
        .await?;
    let mut counted = ImportReport::default();
    let mut fresh = Vec::new();
    for (user, raw) in batch.iter().zip(existing) {
        let stored = raw.map(|raw| serde_json::from_slice::<User>(&raw));
        match stored {
            None => fresh.push(user),
            Some(Ok(stored)) if stored == *user => counted.identical += 1,
            Some(_) => counted.id_conflicts += 1,
        }
    }
    if !fresh.is_empty() {
        let counts = &mut counted;
        let fresh = &fresh;
        store
            .write("import", |mut conn| async move {
                create_fresh(&mut conn, fresh, counts).await
            })
            .await?;
    }
    // Counted only once the write is confirmed.
    report.add(counted);
    Ok(())
}

/// One pipeline of `create.lua` (the API's own atomic create, with the id and timestamps of
/// the file) for users whose id is free, one MGET of the owners of emails that were taken.
async fn create_fresh(
    conn: &mut crate::redis::Connection,
    fresh: &[&User],
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    pipe.load_script(&CREATE).ignore();
    for user in fresh {
        pipe.invoke_script(
            CREATE
                .key(store::user_key(&user.id))
                .key(store::email_key(&user.email))
                .key(INDEX)
                .key(BY_CREATED)
                .key(credential_key(&user.id))
                .key(BY_CREATED_LEX)
                .arg(&user.id)
                .arg(to_json(user))
                .arg(store::created_score(user))
                .arg("")
                .arg(store::ordered_member(store::created_score(user), &user.id)),
        );
    }
    // Each outcome is the script's table: {'ok'} | {'taken'} | {'exists'} (no idempotency key).
    let outcomes: Vec<Vec<String>> = pipe.query_async(conn).await?;
    let mut taken = Vec::new();
    for (outcome, user) in outcomes.iter().zip(fresh) {
        match outcome.first().map_or("", String::as_str) {
            "ok" => report.imported += 1,
            "taken" => taken.push(*user),
            // Written meanwhile (or twice in the file): not ours to overwrite.
            "exists" => report.id_conflicts += 1,
            other => {
                return Err(StoreError::Unavailable(crate::accounts::unexpected(
                    "create", other,
                )));
            }
        }
    }
    report.email_conflicts += taken.len() as u64;
    if !taken.is_empty() {
        let owners: Vec<Option<String>> = conn
            .mget(
                taken
                    .iter()
                    .map(|u| store::email_key(&u.email))
                    .collect::<Vec<_>>(),
            )
            .await?;
        for (user, owner) in taken.into_iter().zip(owners) {
            if report.listed.len() < MAX_LISTED {
                report.listed.push((
                    user.id.clone(),
                    user.email.clone(),
                    owner.unwrap_or_default(),
                ));
            }
        }
    }
    Ok(())
}
