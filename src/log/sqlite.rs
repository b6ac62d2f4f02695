//! The durable log: an embedded SQLite database in WAL mode
//! (`<data-dir>/messages.db`). See `docs/storage.md` for why SQLite, what a
//! stored batch survives, and how operators inspect it.
//!
//! - One row per message, keyed by its commit sequence number.
//! - [`SqliteLog::append`] stores a batch in one `BEGIN IMMEDIATE … COMMIT`
//!   transaction with `synchronous = FULL`: the commit returns after the WAL
//!   is fsynced, so one fsync covers the whole batch (group commit).
//! - A lock file (`<data-dir>/LOCK`) keeps a second server off the same data.
//! - [`Maintenance`] runs retention (by count and age) on its own connection
//!   and thread, in small transactions, so the writer is never held long.

use super::{Cause, Log, LogError, StorageHealth};
use crate::consistency::{Entry, Micros, Seq};
use rusqlite::{Connection, TransactionBehavior, params};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// The database file inside the data directory.
pub const DB_FILE: &str = "messages.db";
/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// `PRAGMA application_id` of our databases ("DyCn"), so a foreign SQLite
/// file in the data directory is refused instead of written into.
const APPLICATION_ID: i32 = 0x4479_436e;
/// `PRAGMA user_version`: the schema version this code writes.
const SCHEMA_VERSION: i32 = 1;
/// How long a write waits for a lock another connection holds (retention,
/// or an operator's tool) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY,  -- commit sequence number, gap-free
    commit_time INTEGER NOT NULL,     -- microseconds since the Unix epoch
    thread      TEXT    NOT NULL,     -- thread id ('' = main room)
    sender      TEXT    NOT NULL,     -- public display name
    contents    TEXT    NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value ANY
) STRICT;
";

fn open_err(path: &Path, e: impl Into<Cause>) -> LogError {
    LogError::Open {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn write_err(path: &Path, e: impl Into<Cause>) -> LogError {
    LogError::Write {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn read_err(path: &Path, e: impl Into<Cause>) -> LogError {
    LogError::Read {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Opens a connection with the pragmas every connection of ours uses.
fn connect(path: &Path, synchronous: &str) -> Result<Connection, Cause> {
    let setup = || -> rusqlite::Result<(Connection, String)> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        Ok((conn, mode))
    };
    let (conn, mode) = setup()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Cause::Refused(format!("journal_mode is {mode}, not wal")));
    }
    Ok(conn)
}

/// The durable, embedded message log.
pub struct SqliteLog {
    /// The database file, for error messages and reopening.
    path: PathBuf,
    /// The writer's connection; `None` after a failure until
    /// [`Log::recover`] opens a fresh one.
    conn: Option<Connection>,
    /// Held (locked) for the log's lifetime: a second server on the same
    /// data directory fails at start instead of interleaving writes.
    _lock: File,
}

impl SqliteLog {
    /// Opens (creating if needed) the log in `dir`. Fails with a clear
    /// message if the directory cannot be created or locked, or the file is
    /// not a usable database of ours.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(open_err(&lock_path, e));
            }
        }
        let path = dir.join(DB_FILE);
        let mut conn = connect(&path, "FULL").map_err(|e| open_err(&path, e))?;
        init_schema(&mut conn).map_err(|e| open_err(&path, e))?;
        Ok(SqliteLog {
            path,
            conn: Some(conn),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&mut self) -> Result<&mut Connection, LogError> {
        self.conn
            .as_mut()
            .ok_or_else(|| write_err(&self.path, Cause::Closed))
    }

    fn try_append(conn: &mut Connection, entries: &[Arc<Entry>]) -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (seq, commit_time, thread, sender, contents)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.seq as i64,
                    e.commit_time.0,
                    &*e.thread,
                    &*e.sender,
                    e.contents
                ])?;
            }
        }
        tx.commit()
    }
}

/// Creates the tables on a new database; refuses foreign or newer files.
fn init_schema(conn: &mut Connection) -> Result<(), Cause> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let app: i32 = tx.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if app != APPLICATION_ID && (app != 0 || tables > 0) {
        return Err(Cause::Refused(format!(
            "not a dyconit-chat database (application_id {app:#x}, {tables} tables)"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Cause::Refused(format!(
            "schema version {version} is newer than this server's {SCHEMA_VERSION}"
        )));
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(tx.commit()?)
}

fn head_of(conn: &Connection) -> rusqlite::Result<Seq> {
    let head: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    Ok(head as Seq)
}

impl Log for SqliteLog {
    fn append(&mut self, entries: &[Arc<Entry>]) -> Result<(), LogError> {
        let path = self.path.clone();
        let conn = self.conn()?;
        Self::try_append(conn, entries).map_err(|e| {
            // Whatever state the connection is in, the next use reopens it
            // (see `recover`).
            self.conn = None;
            write_err(&path, e)
        })
    }

    fn head(&mut self) -> Result<Seq, LogError> {
        let path = self.path.clone();
        head_of(self.conn()?).map_err(|e| read_err(&path, e))
    }

    fn recent(&mut self, n: usize) -> Result<Vec<Entry>, LogError> {
        let path = self.path.clone();
        let conn = self.conn()?;
        let read = || -> rusqlite::Result<Vec<Entry>> {
            let mut st = conn.prepare(
                "SELECT seq, commit_time, thread, sender, contents FROM
                   (SELECT * FROM messages ORDER BY seq DESC LIMIT ?1)
                 ORDER BY seq",
            )?;
            let rows = st.query_map([n as i64], row_entry)?;
            rows.collect()
        };
        read().map_err(|e| read_err(&path, e))
    }

    fn recover(&mut self, durable: Seq) -> Result<(), LogError> {
        self.conn = None;
        let path = self.path.clone();
        let probe = || -> Result<Connection, LogError> {
            let mut conn = connect(&path, "FULL").map_err(|e| write_err(&path, e))?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| write_err(&path, e))?;
            let write = || -> rusqlite::Result<Seq> {
                tx.execute("DELETE FROM messages WHERE seq > ?1", [durable as i64])?;
                // A real write, so a full disk or read-only file shows here.
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('probes', 1)
                     ON CONFLICT (key) DO UPDATE SET value = value + 1",
                    [],
                )?;
                head_of(&tx)
            };
            let head = write().map_err(|e| write_err(&path, e))?;
            if head != durable {
                return Err(LogError::Lost {
                    path: path.clone(),
                    head,
                    durable,
                });
            }
            tx.commit().map_err(|e| write_err(&path, e))?;
            Ok(conn)
        };
        self.conn = Some(probe()?);
        Ok(())
    }
}

/// What retention keeps. `None` keeps everything on that axis. The newest
/// message is always kept, so the sequence continues after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many most recent messages.
    pub messages: Option<u64>,
    /// Delete messages whose commit time is older than this.
    pub age: Option<Duration>,
}

impl Retention {
    pub fn is_enabled(&self) -> bool {
        self.messages.is_some() || self.age.is_some()
    }
}

/// Rows deleted per retention transaction: small, so the writer waits at
/// most a few milliseconds for the lock.
const RETENTION_CHUNK: i64 = 2000;

/// One retention pass: deletes what `policy` no longer keeps, in chunks of
/// `RETENTION_CHUNK` rows, each its own short transaction. Commit times
/// grow with seq, so both rules delete a prefix of the log. Returns the
/// number of rows deleted.
pub fn retention_pass(conn: &Connection, policy: Retention, now: Micros) -> rusqlite::Result<u64> {
    let mut deleted = 0;
    loop {
        let (min, head): (i64, i64) = conn.query_row(
            "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if head == 0 {
            return Ok(deleted);
        }
        // Never the newest message: it carries the head across a restart.
        let mut upto = (min + RETENTION_CHUNK - 1).min(head - 1);
        let by_count = policy.messages.map_or(0, |keep| {
            head.saturating_sub(keep.min(i64::MAX as u64) as i64)
        });
        let by_age = match policy.age {
            Some(age) => {
                let cutoff = now.minus(age).0;
                conn.query_row(
                    "SELECT max(seq) FROM
                       (SELECT seq, commit_time FROM messages ORDER BY seq LIMIT ?1)
                     WHERE commit_time < ?2",
                    params![RETENTION_CHUNK, cutoff],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .unwrap_or(0)
            }
            None => 0,
        };
        upto = upto.min(by_count.max(by_age));
        if upto < min {
            return Ok(deleted);
        }
        let n = conn.execute("DELETE FROM messages WHERE seq <= ?1", [upto])?;
        deleted += n as u64;
        // Let a waiting writer take the lock before the next chunk.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The background retention thread: its own connection, a pass every
/// `interval`, stopped by dropping (or sending on) the handle's channel.
pub struct Maintenance {
    /// Dropping this stops the thread.
    stop: Option<mpsc::Sender<()>>,
    /// Joined on stop.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maintenance {
    /// Starts retention on the database in `dir` (which [`SqliteLog::open`]
    /// has prepared). Does nothing if `policy` keeps everything.
    pub fn start(
        dir: &Path,
        policy: Retention,
        interval: Duration,
        health: Arc<StorageHealth>,
    ) -> Maintenance {
        if !policy.is_enabled() {
            return Maintenance {
                stop: None,
                thread: None,
            };
        }
        let path = dir.join(DB_FILE);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("log-retention".into())
            .spawn(move || retention_loop(&path, policy, interval, &health, stopped))
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the retention thread; retention is off");
        }
        Maintenance {
            stop: Some(stop),
            thread,
        }
    }

    /// Stops the thread and waits for it (at most one chunk).
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn retention_loop(
    path: &Path,
    policy: Retention,
    interval: Duration,
    health: &StorageHealth,
    stopped: mpsc::Receiver<()>,
) {
    let mut conn: Option<Connection> = None;
    let mut failing = false;
    loop {
        let mut pass = || -> Result<u64, Cause> {
            if conn.is_none() {
                // Retention needs no fsync of its own: a deletion lost in a
                // crash is simply redone, and the writer's next commit syncs
                // the WAL past it anyway.
                conn = Some(connect(path, "NORMAL")?);
            }
            let c = conn.as_ref().expect("just opened");
            Ok(retention_pass(c, policy, crate::clock::wall_micros())?)
        };
        match pass() {
            Ok(n) => {
                if n > 0 {
                    health
                        .retention_deleted_total
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(deleted = n, "retention pass");
                }
                if failing {
                    tracing::info!(path = %path.display(), "retention works again");
                }
                failing = false;
            }
            Err(e) => {
                conn = None;
                let msg = format!("retention on {}: {e}", path.display());
                health.record_maintenance_error(&msg);
                if !failing {
                    tracing::warn!(error = %msg, "retention pass failed; retrying");
                }
                failing = true;
            }
        }
        match stopped.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

/// Reads every stored message directly from the database file (read-only,
/// beside a running server: WAL readers do not block the writer). For tests
/// and tools; oldest first.
pub fn read_all(path: &Path) -> rusqlite::Result<Vec<Entry>> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mut st = conn
        .prepare("SELECT seq, commit_time, thread, sender, contents FROM messages ORDER BY seq")?;
    let rows = st.query_map([], row_entry)?;
    rows.collect()
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get::<_, i64>(0)? as Seq,
        commit_time: Micros(r.get(1)?),
        thread: r.get::<_, String>(2)?.into(),
        sender: r.get::<_, String>(3)?.into(),
        contents: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: Seq, at: i64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            thread: "t".into(),
            contents: format!("m{seq}"),
            sender: "s".into(),
            commit_time: Micros(at),
        })
    }

    fn entries(seqs: std::ops::RangeInclusive<Seq>) -> Vec<Arc<Entry>> {
        seqs.map(|s| entry(s, 1_000 + s as i64)).collect()
    }

    #[test]
    fn every_commit_is_fsynced_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteLog::open(dir.path()).unwrap();
        let conn = log.conn().unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!((sync, mode.as_str()), (2, "wal"), "synchronous=FULL, WAL");
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_recover_truncates_to_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteLog::open(dir.path()).unwrap();
        log.append(&entries(1..=3)).unwrap();
        assert_eq!(log.head().unwrap(), 3);
        // A batch whose last row clashes fails as a whole.
        let mut bad = entries(4..=5);
        bad.push(entry(3, 0));
        assert!(log.append(&bad).is_err());
        log.recover(3).unwrap();
        assert_eq!(log.head().unwrap(), 3, "nothing of the failed batch stored");
        // Rows above the durable position (a commit reported failed that
        // reached the disk anyway) are removed by recover.
        log.append(&entries(4..=6)).unwrap();
        log.recover(4).unwrap();
        assert_eq!(log.head().unwrap(), 4);
        let recent: Vec<Seq> = log.recent(2).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(recent, [3, 4]);
        // A log that lost rows below the durable position is an error.
        let err = log.recover(9).unwrap_err().to_string();
        assert!(err.contains("ends at seq 4"), "{err}");
    }

    #[test]
    fn a_reopened_log_has_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SqliteLog::open(dir.path()).unwrap();
            log.append(&entries(1..=50)).unwrap();
        }
        let mut log = SqliteLog::open(dir.path()).unwrap();
        assert_eq!(log.head().unwrap(), 50);
        let recent = log.recent(3).unwrap();
        assert_eq!(recent[2], *entry(50, 1_050));
        assert_eq!(read_all(&dir.path().join(DB_FILE)).unwrap().len(), 50);
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE other (x)").unwrap();
        drop(c);
        let err = SqliteLog::open(dir.path()).err().unwrap();
        assert!(
            matches!(
                &err,
                LogError::Open {
                    source: Cause::Refused(_),
                    ..
                }
            ),
            "{err:?}"
        );
        let report = err.report();
        assert!(report.contains("not a dyconit-chat database"), "{report}");
    }

    #[test]
    fn a_second_log_on_the_same_directory_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteLog::open(dir.path()).unwrap();
        let err = SqliteLog::open(dir.path()).err().unwrap();
        assert!(matches!(err, LogError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn retention_deletes_a_prefix_in_chunks_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteLog::open(dir.path()).unwrap();
        log.append(&entries(1..=5000)).unwrap();
        let conn = connect(&dir.path().join(DB_FILE), "NORMAL").unwrap();
        let keep = Retention {
            messages: Some(10),
            age: None,
        };
        assert_eq!(retention_pass(&conn, keep, Micros(0)).unwrap(), 4990);
        assert_eq!(log.recent(100).unwrap().first().unwrap().seq, 4991);
        // By age: commit times are 1000 + seq; everything older than the
        // cutoff goes, but never the newest message.
        let by_age = Retention {
            messages: None,
            age: Some(Duration::from_micros(1)),
        };
        assert_eq!(retention_pass(&conn, by_age, Micros(10_000)).unwrap(), 9);
        let left: Vec<Seq> = log.recent(100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(left, [5000]);
        assert_eq!(retention_pass(&conn, by_age, Micros(10_000)).unwrap(), 0);
    }
}
