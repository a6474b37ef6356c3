//! The controller's durable state: one SQLite file in the data directory.
//!
//! Tables: `nodes`, `join_tokens` (secrets stored as SHA-256 only), `events` (the event and audit
//! log), `meta` (small settings such as the advertised gateway addresses); and for models and
//! swaps (migration 3), owned by their modules: `recipes` and `knobs` (`menu`), `swap_jobs` and
//! `swap_events` (`swap`), `swap_lock` (`lock`, token stored as SHA-256 only), `webhooks` and
//! `webhook_deliveries` (`webhooks`), `schedules` (`schedules`). Schema changes are
//! numbered migrations tracked by `PRAGMA user_version`.
//!
//! Calls are short and synchronous behind one mutex; nothing here holds the lock across an await.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::now_ms;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    cert_not_after INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    first_seen INTEGER,
    last_seen INTEGER,
    agent_version TEXT NOT NULL,
    protocol TEXT,
    revoked_at INTEGER
);
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    node_id TEXT,
    actor TEXT,
    message TEXT NOT NULL
);
CREATE INDEX events_at ON events(at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN macs TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
CREATE TABLE recipes (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE knobs (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE swap_jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    actor TEXT NOT NULL,
    plan TEXT NOT NULL,
    error TEXT,
    log_tail TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    ready_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX swap_jobs_created ON swap_jobs(created_at);
CREATE TABLE swap_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE swap_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    reason TEXT,
    token_sha256 TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    model TEXT NOT NULL,
    owner TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"#,
    // 4: services (kind, node/port or URL, container, health path) and API keys (hashes only).
    r#"
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    endpoints TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER
);
"#,
    // 5: the event log grows a subject ("node:<id>", "service:<name>", "swap:<key>") for
    // grouping and querying; the audit log of control actions.
    r#"
ALTER TABLE events ADD COLUMN subject TEXT;
CREATE INDEX events_subject ON events(subject, at);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at);
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the database {path} was written by a newer Spark Control (schema {found}, this build knows {known}); upgrade spark-control"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
}

pub struct Db {
    conn: Mutex<Connection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub cert_fingerprint: String,
    pub cert_not_after: i64,
    pub hostname: String,
    pub enrolled_at: i64,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub agent_version: String,
    pub protocol: Option<String>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub node_id: Option<String>,
    pub actor: Option<String>,
    pub message: String,
    pub subject: Option<String>,
}

/// How many events the log keeps.
pub const EVENTS_KEPT: i64 = 100_000;

/// A filter over the event log.
#[derive(Debug, Default)]
pub struct EventQuery<'a> {
    pub limit: u32,
    pub node_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub since: Option<i64>,
}

/// Why a join token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error(
        "join token not recognised by this controller (was it created here, and copied whole?)"
    )]
    Unknown,
    #[error("join token already used at {0}; create a new one with `spark-control token create`")]
    Used(String),
    #[error("join token expired at {0}; create a new one with `spark-control token create`")]
    Expired(String),
}

const NODE_COLUMNS: &str = "id, name, cert_fingerprint, cert_not_after, hostname, enrolled_at, first_seen, last_seen, agent_version, protocol, revoked_at";

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        id: r.get(0)?,
        name: r.get(1)?,
        cert_fingerprint: r.get(2)?,
        cert_not_after: r.get(3)?,
        hostname: r.get(4)?,
        enrolled_at: r.get(5)?,
        first_seen: r.get(6)?,
        last_seen: r.get(7)?,
        agent_version: r.get(8)?,
        protocol: r.get(9)?,
        revoked_at: r.get(10)?,
    })
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(DbError::TooNew {
                path: path.display().to_string(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    /// Run `f` on the connection (short, synchronous work only). Feature modules keep their own
    /// SQL next to their logic and call this.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }

    // ---- meta ----

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, DbError> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    // ---- join tokens ----

    pub fn insert_token(
        &self,
        id: &str,
        secret_sha256: &str,
        expires_at: i64,
    ) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO join_tokens(id, secret_sha256, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, secret_sha256, now_ms(), expires_at],
            )
            .map(|_| ())
        })
    }

    /// Check a token and mark it used, atomically: of two agents racing with one token, one wins.
    /// `Ok(Err(_))` is a refusal with its reason.
    pub fn consume_token(
        &self,
        id: &str,
        secret: &str,
        used_by: &str,
    ) -> Result<Result<(), TokenRejection>, DbError> {
        let secret_hash = spark_common::sha256_hex(secret.as_bytes());
        let now = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            let row: Option<(String, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT secret_sha256, expires_at, used_at FROM join_tokens WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let verdict = match row {
                None => Err(TokenRejection::Unknown),
                Some((stored, _, _))
                    if !bool::from(subtle::ConstantTimeEq::ct_eq(
                        stored.as_bytes(),
                        secret_hash.as_bytes(),
                    )) =>
                {
                    Err(TokenRejection::Unknown)
                }
                Some((_, _, Some(used))) => Err(TokenRejection::Used(crate::rfc3339(used))),
                Some((_, expires, None)) if expires <= now => {
                    Err(TokenRejection::Expired(crate::rfc3339(expires)))
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE join_tokens SET used_at = ?2, used_by = ?3 WHERE id = ?1 AND used_at IS NULL",
                        params![id, now, used_by],
                    )?;
                    Ok(())
                }
            };
            tx.commit()?;
            Ok(verdict)
        })
    }

    // ---- nodes ----

    pub fn insert_node(&self, node: &NodeRow) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO nodes({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    node.id,
                    node.name,
                    node.cert_fingerprint,
                    node.cert_not_after,
                    node.hostname,
                    node.enrolled_at,
                    node.first_seen,
                    node.last_seen,
                    node.agent_version,
                    node.protocol,
                    node.revoked_at
                ],
            )
            .map(|_| ())
        })
    }

    pub fn nodes(&self, include_revoked: bool) -> Result<Vec<NodeRow>, DbError> {
        self.with(|c| {
            let sql = format!(
                "SELECT {NODE_COLUMNS} FROM nodes {} ORDER BY enrolled_at, id",
                if include_revoked {
                    ""
                } else {
                    "WHERE revoked_at IS NULL"
                }
            );
            let mut stmt = c.prepare(&sql)?;
            stmt.query_map([], node_from_row)?.collect()
        })
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRow>, DbError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [id],
                node_from_row,
            )
            .optional()
        })
    }

    pub fn node_by_fingerprint(&self, fingerprint: &str) -> Result<Option<NodeRow>, DbError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE cert_fingerprint = ?1"),
                [fingerprint],
                node_from_row,
            )
            .optional()
        })
    }

    /// Whether a live (not revoked) node other than `except` already has `name`.
    pub fn name_taken(&self, name: &str, except: Option<&str>) -> Result<bool, DbError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM nodes WHERE name = ?1 AND revoked_at IS NULL AND id != ?2",
                params![name, except.unwrap_or("")],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
    }

    pub fn rename_node(&self, id: &str, name: &str) -> Result<bool, DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET name = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, name],
            )
            .map(|n| n > 0)
        })
    }

    pub fn revoke_node(&self, id: &str) -> Result<bool, DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now_ms()],
            )
            .map(|n| n > 0)
        })
    }

    /// Record that a node connected: versions, first and last seen.
    pub fn node_connected(
        &self,
        id: &str,
        agent_version: &str,
        protocol: &str,
    ) -> Result<(), DbError> {
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET agent_version = ?2, protocol = ?3, last_seen = ?4, first_seen = COALESCE(first_seen, ?4) WHERE id = ?1",
                params![id, agent_version, protocol, now],
            )
            .map(|_| ())
        })
    }

    /// Remember a node's MAC addresses (for Wake-on-LAN while it is off).
    pub fn set_node_macs(&self, id: &str, macs: &[String]) -> Result<(), DbError> {
        let json = serde_json::to_string(macs).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET macs = ?1 WHERE id = ?2",
                params![json, id],
            )
            .map(|_| ())
        })
    }

    /// The MAC addresses last seen on a node.
    pub fn node_macs(&self, id: &str) -> Result<Vec<String>, DbError> {
        let json: Option<String> = self.with(|c| {
            c.query_row("SELECT macs FROM nodes WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    pub fn touch_node(&self, id: &str, at: i64) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE nodes SET last_seen = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map(|_| ())
        })
    }

    // ---- events ----

    /// Record an event; one about a node has the subject `node:<id>`.
    pub fn add_event(
        &self,
        kind: &str,
        node_id: Option<&str>,
        actor: Option<&str>,
        message: &str,
    ) -> Result<(), DbError> {
        let subject = node_id.map(|n| format!("node:{n}"));
        self.add_subject_event(kind, subject.as_deref(), node_id, actor, message)
    }

    /// Record an event about a subject (`service:<name>`, `swap:<key>`, …). The log is
    /// bounded: past [`EVENTS_KEPT`] rows the oldest go.
    pub fn add_subject_event(
        &self,
        kind: &str,
        subject: Option<&str>,
        node_id: Option<&str>,
        actor: Option<&str>,
        message: &str,
    ) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO events(at, kind, node_id, actor, message, subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![now_ms(), kind, node_id, actor, message, subject],
            )?;
            let id = c.last_insert_rowid();
            if id % 256 == 0 {
                c.execute("DELETE FROM events WHERE id <= ?1", [id - EVENTS_KEPT])?;
            }
            Ok(())
        })
    }

    /// Newest first, filtered by node, subject, kind and time (unix ms, inclusive).
    pub fn events(&self, limit: u32, node_id: Option<&str>) -> Result<Vec<EventRow>, DbError> {
        self.query_events(&EventQuery {
            limit,
            node_id,
            ..Default::default()
        })
    }

    pub fn query_events(&self, q: &EventQuery<'_>) -> Result<Vec<EventRow>, DbError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, kind, node_id, actor, message, subject FROM events
                 WHERE (?2 IS NULL OR node_id = ?2) AND (?3 IS NULL OR subject = ?3)
                   AND (?4 IS NULL OR at >= ?4) AND (?5 IS NULL OR kind = ?5)
                 ORDER BY id DESC LIMIT ?1",
            )?;
            stmt.query_map(
                params![q.limit, q.node_id, q.subject, q.since, q.kind],
                |r| {
                    Ok(EventRow {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        node_id: r.get(3)?,
                        actor: r.get(4)?,
                        message: r.get(5)?,
                        subject: r.get(6)?,
                    })
                },
            )?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let hash = spark_common::sha256_hex(b"secret-secret");
        db.insert_token("tok1", &hash, now_ms() + 60_000).unwrap();
        db.insert_token("tok2", &hash, now_ms() - 1).unwrap();
        assert_eq!(
            db.consume_token("tok1", "wrong", "x").unwrap(),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(
            db.consume_token("nope", "secret-secret", "x").unwrap(),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(
            db.consume_token("tok1", "secret-secret", "x").unwrap(),
            Ok(())
        );
        assert!(matches!(
            db.consume_token("tok1", "secret-secret", "x").unwrap(),
            Err(TokenRejection::Used(_))
        ));
        assert!(matches!(
            db.consume_token("tok2", "secret-secret", "x").unwrap(),
            Err(TokenRejection::Expired(_))
        ));
        // Only the hash is stored.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            assert!(!raw.windows(13).any(|w| w == b"secret-secret"));
        }
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Db::open(&path).unwrap().set_meta("k", "v").unwrap();
        assert_eq!(
            Db::open(&path).unwrap().meta("k").unwrap().as_deref(),
            Some("v")
        );
    }
}
