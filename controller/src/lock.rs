//! The swap lock (F12): one lock on the GPU, with a holder, a time to live and a secret token.
//!
//! A scheduled job (or a person) takes the lock before it swaps models and releases it after;
//! while it is held, swaps that do not present its token are refused with 423 `locked`
//! ([`check`]). The token is shown once, when the lock is taken, and stored only as its SHA-256.
//!
//! Invariants: at most one row in `swap_lock` (id = 1); a row whose `expires_at` has passed is
//! free — every read deletes it (recording `swap_lock_expired`) before deciding anything, and the
//! webhook worker's tick calls [`sweep_expired`] so expiry is recorded promptly even when nobody
//! asks; acquire/renew/release are single transactions, so two racing holders cannot both win.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Actor, ApiError, JsonBody};
use crate::db::{Db, DbError};
use crate::{App, now_ms, rfc3339};

/// The request header that carries a lock token.
pub const TOKEN_HEADER: &str = "x-spark-lock-token";
/// Longest lock lifetime a request may ask for (one day).
pub const MAX_TTL_SECONDS: i64 = 86_400;
const MAX_HOLDER_CHARS: usize = 128;
const MAX_REASON_CHARS: usize = 500;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/swap/lock",
        post(acquire_route).get(get_route).delete(release_route),
    )
}

/// Whether a swap presenting `token` may proceed now: Ok if the lock is free (or expired) or
/// `token` is the live lock's token; otherwise 423 `locked` naming the holder and the expiry.
/// A database failure refuses too (503): a lock that cannot be read is not known to be free.
pub fn check(app: &App, token: Option<&str>) -> Result<(), ApiError> {
    match check_db(&app.db, token) {
        Ok(()) => Ok(()),
        Err(LockError::Locked(l)) => Err(l.into()),
        Err(LockError::Api(e)) => Err(e),
    }
}

/// The lock token a request presents: the `X-Spark-Lock-Token` header (for use by the swap
/// endpoint and others that honour the lock).
pub fn token_from_headers(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TOKEN_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid").trim())
        .filter(|t| !t.is_empty())
}

/// Delete an expired lock, recording `swap_lock_expired`. Cheap; called periodically.
pub fn sweep_expired(app: &App) {
    if let Ok((_, expired)) = app.db.with(|c| {
        let tx = c.transaction()?;
        let r = load_live(&tx, now_ms())?;
        tx.commit()?;
        Ok(r)
    }) {
        record_expired(&app.db, expired);
    }
}

// ---------- state ----------

/// The lock row.
#[derive(Debug, Clone)]
struct LockRow {
    holder: String,
    reason: Option<String>,
    token_sha256: String,
    acquired_at: i64,
    expires_at: i64,
}

/// Refusal because somebody else holds the lock: 423 `locked`, with the holder and expiry also
/// as fields of the error object (and `Retry-After`).
#[derive(Debug, Clone)]
pub struct Locked {
    pub holder: String,
    /// Unix ms.
    pub expires_at: i64,
}

impl Locked {
    pub fn message(&self) -> String {
        format!(
            "the swap lock is held by '{}' until {} ({} s from now); present its token in the {} header, wait for it to be released, or force-release it with DELETE /api/swap/lock?force=true",
            self.holder,
            rfc3339(self.expires_at),
            seconds_left(self.expires_at, now_ms()),
            "X-Spark-Lock-Token",
        )
    }
}

impl From<Locked> for ApiError {
    fn from(l: Locked) -> Self {
        ApiError::new(StatusCode::LOCKED, "locked", l.message())
            .with_field("holder", l.holder.clone())
            .with_field("expires_at", rfc3339(l.expires_at))
            .with_retry_after(seconds_left(l.expires_at, now_ms()).max(1) as u64)
    }
}

impl IntoResponse for Locked {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// An error of this module: a plain API error or a 423 with its extra fields.
#[derive(Debug)]
pub enum LockError {
    Api(ApiError),
    Locked(Locked),
}

impl From<ApiError> for LockError {
    fn from(e: ApiError) -> Self {
        LockError::Api(e)
    }
}

impl From<DbError> for LockError {
    fn from(e: DbError) -> Self {
        LockError::Api(e.into())
    }
}

impl IntoResponse for LockError {
    fn into_response(self) -> Response {
        match self {
            LockError::Api(e) => e.into_response(),
            LockError::Locked(l) => l.into_response(),
        }
    }
}

fn seconds_left(expires_at: i64, now: i64) -> i64 {
    ((expires_at - now).max(0) + 999) / 1000
}

fn hash_token(token: &str) -> String {
    spark_common::sha256_hex(token.as_bytes())
}

fn token_matches(row: &LockRow, presented: Option<&str>) -> bool {
    presented.is_some_and(|t| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            hash_token(t).as_bytes(),
            row.token_sha256.as_bytes(),
        ))
    })
}

fn new_token() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("sclk_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// The live lock, after deleting an expired one (returned second, for the event log).
fn load_live(c: &Connection, now: i64) -> rusqlite::Result<(Option<LockRow>, Option<LockRow>)> {
    let row = c
        .query_row(
            "SELECT holder, reason, token_sha256, acquired_at, expires_at FROM swap_lock WHERE id = 1",
            [],
            |r| {
                Ok(LockRow {
                    holder: r.get(0)?,
                    reason: r.get(1)?,
                    token_sha256: r.get(2)?,
                    acquired_at: r.get(3)?,
                    expires_at: r.get(4)?,
                })
            },
        )
        .optional()?;
    match row {
        Some(r) if r.expires_at <= now => {
            c.execute("DELETE FROM swap_lock WHERE id = 1", [])?;
            Ok((None, Some(r)))
        }
        live => Ok((live, None)),
    }
}

fn record_expired(db: &Db, expired: Option<LockRow>) {
    if let Some(r) = expired {
        let _ = db.add_event(
            "swap_lock_expired",
            None,
            None,
            &format!(
                "swap lock held by '{}' expired at {} without being released",
                r.holder,
                rfc3339(r.expires_at)
            ),
        );
    }
}

/// The live lock, if any (expiring an old one on the way).
fn current(db: &Db) -> Result<Option<LockRow>, DbError> {
    let (live, expired) = db.with(|c| {
        let tx = c.transaction()?;
        let r = load_live(&tx, now_ms())?;
        tx.commit()?;
        Ok(r)
    })?;
    record_expired(db, expired);
    Ok(live)
}

fn check_db(db: &Db, token: Option<&str>) -> Result<(), LockError> {
    match current(db)? {
        None => Ok(()),
        Some(row) if token_matches(&row, token) => Ok(()),
        Some(row) => Err(LockError::Locked(Locked {
            holder: row.holder,
            expires_at: row.expires_at,
        })),
    }
}

/// A validated acquire request.
struct AcquireRequest {
    holder: String,
    ttl_ms: i64,
    reason: Option<String>,
}

/// The result of an acquire: a new lock or a renewed one, with the token.
struct Granted {
    token: String,
    row: LockRow,
    renewed: bool,
}

fn acquire(
    db: &Db,
    req: AcquireRequest,
    presented: Option<&str>,
    actor: &str,
) -> Result<Granted, LockError> {
    let now = now_ms();
    let (outcome, expired) = db.with(|c| {
        let tx = c.transaction()?;
        let (live, expired) = load_live(&tx, now)?;
        let outcome = match live {
            None => {
                let token = new_token();
                let row = LockRow {
                    holder: req.holder.clone(),
                    reason: req.reason.clone(),
                    token_sha256: hash_token(&token),
                    acquired_at: now,
                    expires_at: now + req.ttl_ms,
                };
                tx.execute(
                    "INSERT INTO swap_lock(id, holder, reason, token_sha256, acquired_at, expires_at) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                    params![row.holder, row.reason, row.token_sha256, row.acquired_at, row.expires_at],
                )?;
                Ok(Granted {
                    token,
                    row,
                    renewed: false,
                })
            }
            Some(mut row) if token_matches(&row, presented) => {
                row.expires_at = now + req.ttl_ms;
                if req.reason.is_some() {
                    row.reason = req.reason.clone();
                }
                tx.execute(
                    "UPDATE swap_lock SET expires_at = ?1, reason = ?2 WHERE id = 1",
                    params![row.expires_at, row.reason],
                )?;
                Ok(Granted {
                    token: presented.unwrap_or_default().to_string(),
                    row,
                    renewed: true,
                })
            }
            Some(row) => Err(Locked {
                holder: row.holder,
                expires_at: row.expires_at,
            }),
        };
        tx.commit()?;
        Ok((outcome, expired))
    })?;
    record_expired(db, expired);
    let granted = outcome.map_err(LockError::Locked)?;
    let row = &granted.row;
    let reason = row
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let (kind, verb) = if granted.renewed {
        ("swap_lock_renewed", "renewed")
    } else {
        ("swap_lock_acquired", "acquired")
    };
    let _ = db.add_event(
        kind,
        None,
        Some(actor),
        &format!(
            "swap lock {verb} by '{}' until {}{reason}",
            row.holder,
            rfc3339(row.expires_at)
        ),
    );
    Ok(granted)
}

/// How a release went.
#[derive(Debug, PartialEq, Eq)]
enum Released {
    WithToken,
    Forced,
}

fn release(
    db: &Db,
    presented: Option<&str>,
    force: bool,
    actor: &str,
) -> Result<Released, LockError> {
    let (outcome, expired) = db.with(|c| {
        let tx = c.transaction()?;
        let (live, expired) = load_live(&tx, now_ms())?;
        let outcome = match live {
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_locked",
                "the swap lock is not held (it may have expired or been released already)",
            )),
            Some(row) if token_matches(&row, presented) => Ok((row, Released::WithToken)),
            Some(row) if force => Ok((row, Released::Forced)),
            Some(row) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "lock_token_mismatch",
                format!(
                    "{} the swap lock held by '{}'; send the token returned when it was taken in the X-Spark-Lock-Token header (or ?token=), or force-release it with ?force=true",
                    if presented.is_some() {
                        "the token presented does not match"
                    } else {
                        "no lock token presented for"
                    },
                    row.holder
                ),
            )),
        };
        if outcome.is_ok() {
            tx.execute("DELETE FROM swap_lock WHERE id = 1", [])?;
        }
        tx.commit()?;
        Ok((outcome, expired))
    })?;
    record_expired(db, expired);
    let (row, how) = outcome?;
    let (kind, message) = match how {
        Released::WithToken => (
            "swap_lock_released",
            format!("swap lock held by '{}' released", row.holder),
        ),
        Released::Forced => (
            "swap_lock_forced",
            format!(
                "swap lock held by '{}' (until {}) force-released",
                row.holder,
                rfc3339(row.expires_at)
            ),
        ),
    };
    let _ = db.add_event(kind, None, Some(actor), &message);
    Ok(how)
}

// ---------- validation ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    holder: String,
    ttl_seconds: i64,
    #[serde(default)]
    reason: Option<String>,
}

fn validate(body: AcquireBody) -> Result<AcquireRequest, ApiError> {
    let holder = body.holder.trim().to_string();
    if holder.is_empty() {
        return Err(ApiError::bad_request(
            "holder must name who takes the lock (e.g. \"nightly-eval\"); it is empty".into(),
        ));
    }
    if holder.chars().count() > MAX_HOLDER_CHARS {
        return Err(ApiError::bad_request(format!(
            "holder is {} characters long; at most {MAX_HOLDER_CHARS} are allowed",
            holder.chars().count()
        )));
    }
    if holder.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "holder must not contain control characters (newlines, tabs, ...)".into(),
        ));
    }
    if !(1..=MAX_TTL_SECONDS).contains(&body.ttl_seconds) {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {MAX_TTL_SECONDS} (one day); got {}",
            body.ttl_seconds
        )));
    }
    let reason = match body.reason.map(|r| r.trim().to_string()) {
        Some(r) if r.is_empty() => None,
        Some(r) if r.chars().count() > MAX_REASON_CHARS => {
            return Err(ApiError::bad_request(format!(
                "reason is {} characters long; at most {MAX_REASON_CHARS} are allowed",
                r.chars().count()
            )));
        }
        Some(r) if r.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            return Err(ApiError::bad_request(
                "reason must not contain control characters other than newlines and tabs".into(),
            ));
        }
        r => r,
    };
    Ok(AcquireRequest {
        holder,
        ttl_ms: body.ttl_seconds * 1000,
        reason,
    })
}

// ---------- routes ----------

fn lock_view(row: &LockRow, token: Option<&str>) -> Value {
    let mut v = json!({
        "holder": row.holder,
        "reason": row.reason,
        "acquired_at": rfc3339(row.acquired_at),
        "expires_at": rfc3339(row.expires_at),
    });
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    v
}

async fn acquire_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AcquireBody>,
) -> Result<(StatusCode, Json<Value>), LockError> {
    let req = validate(body)?;
    let granted = acquire(&app.db, req, token_from_headers(&headers), &actor.0)?;
    let status = if granted.renewed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(lock_view(&granted.row, Some(&granted.token)))))
}

pub(crate) async fn get_route(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(match current(&app.db)? {
        None => json!({"held": false}),
        Some(row) => {
            let mut v = lock_view(&row, None);
            v["held"] = json!(true);
            v["expires_in_seconds"] = json!(seconds_left(row.expires_at, now_ms()));
            v
        }
    }))
}

async fn release_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, LockError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "bad query string ({e}); use ?token=<lock token> or ?force=true"
        ))
    })?;
    if let Some(k) = query.keys().find(|k| *k != "token" && *k != "force") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?}; DELETE /api/swap/lock takes ?token=<lock token> and ?force=true"
        ))
        .into());
    }
    let force = match query.get("force").map(|s| s.trim().to_ascii_lowercase()) {
        None => false,
        Some(f) if f == "true" || f == "1" || f == "yes" => true,
        Some(f) if f == "false" || f == "0" || f == "no" || f.is_empty() => false,
        Some(f) => {
            return Err(
                ApiError::bad_request(format!("force must be true or false; got {f:?}")).into(),
            );
        }
    };
    let token = token_from_headers(&headers).or_else(|| {
        query
            .get("token")
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
    });
    let how = release(&app.db, token, force, &actor.0)?;
    Ok(Json(json!({
        "released": true,
        "forced": how == Released::Forced,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    fn req(holder: &str, ttl_ms: i64) -> AcquireRequest {
        AcquireRequest {
            holder: holder.into(),
            ttl_ms,
            reason: None,
        }
    }

    fn kinds(db: &Db) -> Vec<String> {
        db.events(100, None)
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn check_follows_the_lock() {
        let (_dir, db) = db();
        // Free: anyone may swap, with or without a token.
        assert!(check_db(&db, None).is_ok());
        assert!(check_db(&db, Some("sclk_whatever")).is_ok());

        let g = acquire(&db, req("nightly", 60_000), None, "admin-token").unwrap();
        assert!(g.token.starts_with("sclk_") && g.token.len() == 45);
        assert!(!g.renewed);
        assert!(check_db(&db, Some(&g.token)).is_ok());
        match check_db(&db, None) {
            Err(LockError::Locked(l)) => {
                assert_eq!(l.holder, "nightly");
                assert_eq!(l.expires_at, g.row.expires_at);
                assert!(l.message().contains("nightly"), "{}", l.message());
            }
            other => panic!("expected locked, got {other:?}"),
        }
        assert!(matches!(
            check_db(&db, Some("sclk_wrong")),
            Err(LockError::Locked(_))
        ));
        let api: ApiError = Locked {
            holder: "nightly".into(),
            expires_at: g.row.expires_at,
        }
        .into();
        assert_eq!(api.status, StatusCode::LOCKED);
        assert_eq!(api.code, "locked");

        // Only the hash is stored.
        let stored: String = db
            .with(|c| c.query_row("SELECT token_sha256 FROM swap_lock", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(stored, hash_token(&g.token));
        assert_ne!(stored, g.token);
    }

    #[test]
    fn renew_release_and_expiry() {
        let (_dir, db) = db();
        let g = acquire(&db, req("a", 60_000), None, "x").unwrap();
        // Another holder is refused; a wrong token too.
        assert!(matches!(
            acquire(&db, req("b", 60_000), None, "x"),
            Err(LockError::Locked(_))
        ));
        assert!(matches!(
            acquire(&db, req("b", 60_000), Some("sclk_nope"), "x"),
            Err(LockError::Locked(_))
        ));
        // Renewal keeps the token and the acquisition time.
        let r = acquire(&db, req("a", 120_000), Some(&g.token), "x").unwrap();
        assert!(r.renewed);
        assert_eq!(r.token, g.token);
        assert_eq!(r.row.acquired_at, g.row.acquired_at);
        assert!(r.row.expires_at > g.row.expires_at);
        // Release: wrong token 403, none 403, right token ok, then 404.
        let e = |r: Result<Released, LockError>| match r {
            Err(LockError::Api(e)) => (e.status, e.code),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            e(release(&db, Some("sclk_nope"), false, "x")),
            (StatusCode::FORBIDDEN, "lock_token_mismatch")
        );
        assert_eq!(
            e(release(&db, None, false, "x")),
            (StatusCode::FORBIDDEN, "lock_token_mismatch")
        );
        assert_eq!(
            release(&db, Some(&g.token), false, "x").unwrap(),
            Released::WithToken
        );
        assert_eq!(
            e(release(&db, Some(&g.token), false, "x")),
            (StatusCode::NOT_FOUND, "not_locked")
        );
        // Forced release.
        acquire(&db, req("c", 60_000), None, "x").unwrap();
        assert_eq!(release(&db, None, true, "x").unwrap(), Released::Forced);
        // Expiry: an expired row is free, deleted and recorded once.
        let old = acquire(&db, req("d", 1), None, "x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(check_db(&db, None).is_ok());
        assert!(check_db(&db, Some(&old.token)).is_ok());
        let n: i64 = db
            .with(|c| c.query_row("SELECT COUNT(*) FROM swap_lock", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            kinds(&db),
            [
                "swap_lock_acquired",
                "swap_lock_renewed",
                "swap_lock_released",
                "swap_lock_acquired",
                "swap_lock_forced",
                "swap_lock_acquired",
                "swap_lock_expired"
            ]
        );
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let body = |holder: &str, ttl: i64, reason: Option<&str>| AcquireBody {
            holder: holder.into(),
            ttl_seconds: ttl,
            reason: reason.map(String::from),
        };
        let msg = |b| validate(b).err().unwrap().message;
        assert!(msg(body("", 10, None)).contains("holder"));
        assert!(msg(body("a\nb", 10, None)).contains("control"));
        assert!(msg(body(&"x".repeat(129), 10, None)).contains("128"));
        assert!(msg(body("a", 0, None)).contains("ttl_seconds"));
        assert!(msg(body("a", 86_401, None)).contains("86400"));
        assert!(msg(body("a", 10, Some(&"r".repeat(501)))).contains("500"));
        let ok = validate(body(" a ", 86_400, Some("  "))).unwrap();
        assert_eq!(ok.holder, "a");
        assert_eq!(ok.reason, None);
        assert_eq!(ok.ttl_ms, 86_400_000);
    }
}
