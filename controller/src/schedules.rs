//! Schedule registry (F14): external schedulers (cron jobs, n8n, ...) register the recurring
//! swaps they run, so the dashboard can show what will take the GPU and when. Spark Control does
//! not run them: it is the control plane, not a job runner.
//!
//! Invariants: a stored schedule always has a cron expression croner accepts (5 fields, or 6 with
//! seconds first, or an @-shortcut) that fires at least once more; times are UTC; `next_run` is
//! computed at every read, never stored.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use croner::Cron;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Actor, ApiError, JsonBody};
use crate::db::{Db, DbError};
use crate::{App, now_ms, rfc3339};

const MAX_NAME_CHARS: usize = 64;
const MAX_FIELD_CHARS: usize = 128;
const MAX_DESCRIPTION_CHARS: usize = 1000;
const MAX_CRON_CHARS: usize = 200;
const SHORTCUTS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/schedules", post(upsert_route).get(list_route))
        .route("/schedules/{name}", get(get_route).delete(delete_route))
}

// ---------- validation ----------

/// Validate a cron expression; returns it normalized (single spaces) and parsed.
pub fn parse_cron(text: &str) -> Result<(String, Cron), String> {
    const FIELDS: &str = "5 fields (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\" for 03:00 UTC every day) or 6 with seconds first";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("cron is empty; give {FIELDS}"));
    }
    if text.chars().count() > MAX_CRON_CHARS {
        return Err(format!(
            "cron is longer than {MAX_CRON_CHARS} characters; give {FIELDS}"
        ));
    }
    let normalized = if text.starts_with('@') {
        if !SHORTCUTS.iter().any(|s| s.eq_ignore_ascii_case(text)) {
            return Err(format!(
                "cron {text:?} is not a known shortcut; use one of {} or {FIELDS}",
                SHORTCUTS.join(", ")
            ));
        }
        text.to_ascii_lowercase()
    } else {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 && fields.len() != 6 {
            return Err(format!(
                "cron {text:?} has {} field{}; it needs {FIELDS}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ));
        }
        fields.join(" ")
    };
    // croner is a third-party parser: whatever the input, a panic must not escape.
    let parsed = std::panic::catch_unwind(|| Cron::from_str(&normalized))
        .map_err(|_| format!("cron {normalized:?} could not be parsed"))?
        .map_err(|e| format!("cron {normalized:?} is not valid: {e}"))?;
    if next_run(&parsed).is_none() {
        return Err(format!(
            "cron {normalized:?} never fires (no matching time in the future, e.g. February 30)"
        ));
    }
    Ok((normalized, parsed))
}

/// The next time `cron` fires after now (UTC), as unix ms.
fn next_run(cron: &Cron) -> Option<i64> {
    let now = chrono::Utc::now();
    std::panic::catch_unwind(|| cron.find_next_occurrence(&now, false))
        .ok()?
        .ok()
        .map(|t| t.timestamp_millis())
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::bad_request(format!(
            "name {name:?} {why}: expected 1-{MAX_NAME_CHARS} characters of letters, digits, '.', '_', '-' or spaces, starting with a letter or digit (e.g. \"nightly-eval\")"
        )))
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("is empty"),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return bad("does not start with a letter or digit");
        }
        Some(_) => {}
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return bad("is too long");
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || ".-_ ".contains(*c))) {
        return bad(&format!("contains {c:?}"));
    }
    if name.ends_with(' ') {
        return bad("ends with a space");
    }
    Ok(())
}

fn validate_text(field: &str, value: &str, max: usize, required: bool) -> Result<String, ApiError> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    let n = value.chars().count();
    if n > max {
        return Err(ApiError::bad_request(format!(
            "{field} is {n} characters long; at most {max} are allowed"
        )));
    }
    let multiline = field == "description";
    if value
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_string())
}

// ---------- storage ----------

#[derive(Debug, Clone)]
struct ScheduleRow {
    name: String,
    cron: String,
    model: String,
    owner: String,
    description: String,
    created_at: i64,
    updated_at: i64,
}

fn view(row: &ScheduleRow) -> Value {
    let next = parse_cron(&row.cron)
        .ok()
        .and_then(|(_, c)| next_run(&c))
        .map(rfc3339);
    json!({
        "name": row.name,
        "cron": row.cron,
        "timezone": "UTC",
        "model": row.model,
        "owner": row.owner,
        "description": row.description,
        "next_run": next,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    })
}

fn rows(db: &Db, name: Option<&str>) -> Result<Vec<ScheduleRow>, DbError> {
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT name, cron, model, owner, description, created_at, updated_at FROM schedules
             WHERE (?1 IS NULL OR name = ?1) ORDER BY name",
        )?;
        stmt.query_map(params![name], |r| {
            Ok(ScheduleRow {
                name: r.get(0)?,
                cron: r.get(1)?,
                model: r.get(2)?,
                owner: r.get(3)?,
                description: r.get(4)?,
                created_at: r.get(5)?,
                updated_at: r.get(6)?,
            })
        })?
        .collect()
    })
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no schedule named {name:?}; GET /api/schedules lists them"),
    )
}

// ---------- routes ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    name: String,
    cron: String,
    model: String,
    owner: String,
    #[serde(default)]
    description: Option<String>,
}

async fn upsert_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<UpsertBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    validate_name(&body.name)?;
    let (cron, _) = parse_cron(&body.cron).map_err(ApiError::bad_request)?;
    let model = validate_text("model", &body.model, MAX_FIELD_CHARS, true)?;
    let owner = validate_text("owner", &body.owner, MAX_FIELD_CHARS, true)?;
    let description = validate_text(
        "description",
        body.description.as_deref().unwrap_or(""),
        MAX_DESCRIPTION_CHARS,
        false,
    )?;
    let now = now_ms();
    let name = body.name;
    let (row, created) = app.db.with(|c| {
        let tx = c.transaction()?;
        let created_at: Option<i64> = tx
            .query_row(
                "SELECT created_at FROM schedules WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()?;
        let row = ScheduleRow {
            name: name.clone(),
            cron,
            model,
            owner,
            description,
            created_at: created_at.unwrap_or(now),
            updated_at: now,
        };
        tx.execute(
            "INSERT INTO schedules(name, cron, model, owner, description, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO UPDATE SET cron = excluded.cron, model = excluded.model,
                 owner = excluded.owner, description = excluded.description,
                 updated_at = excluded.updated_at",
            params![
                row.name,
                row.cron,
                row.model,
                row.owner,
                row.description,
                row.created_at,
                row.updated_at
            ],
        )?;
        tx.commit()?;
        Ok((row, created_at.is_none()))
    })?;
    let (kind, verb) = if created {
        ("schedule_created", "registered")
    } else {
        ("schedule_updated", "updated")
    };
    let _ = app.db.add_event(
        kind,
        None,
        Some(&actor.0),
        &format!(
            "schedule '{}' {verb}: {} (UTC) swaps to '{}', owner '{}'",
            row.name, row.cron, row.model, row.owner
        ),
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&row))))
}

pub(crate) async fn list_route(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let out: Vec<Value> = rows(&app.db, None)?.iter().map(view).collect();
    Ok(Json(json!(out)))
}

async fn get_route(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    rows(&app.db, Some(&name))?
        .first()
        .map(|r| Json(view(r)))
        .ok_or_else(|| not_found(&name))
}

async fn delete_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = app
        .db
        .with(|c| c.execute("DELETE FROM schedules WHERE name = ?1", [&name]))?;
    if n == 0 {
        return Err(not_found(&name));
    }
    let _ = app.db.add_event(
        "schedule_deleted",
        None,
        Some(&actor.0),
        &format!("schedule '{name}' deleted"),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cron_validation() {
        assert_eq!(parse_cron(" 0  3 * * * ").unwrap().0, "0 3 * * *");
        assert!(parse_cron("*/30 0 3 * * MON-FRI").is_ok());
        assert_eq!(parse_cron("@Daily").unwrap().0, "@daily");
        let e = parse_cron("0 3 * *").err().unwrap();
        assert!(e.contains("has 4 fields") && e.contains("5 fields"), "{e}");
        assert!(parse_cron("").err().unwrap().contains("empty"));
        assert!(
            parse_cron("0 0 1 1 * 2030")
                .err()
                .unwrap()
                .contains("not valid")
        );
        let e = parse_cron("61 * * * *").err().unwrap();
        assert!(e.contains("not valid"), "{e}");
        assert!(parse_cron("@reboot").err().unwrap().contains("shortcut"));
        assert!(
            parse_cron("0 0 30 2 *")
                .err()
                .unwrap()
                .contains("never fires")
        );
        for junk in [
            "* * * * * * * *",
            "a b c d e",
            "*/0 * * * *",
            "0-100/5 * * * *",
            "L L L L L",
            "# # # # #",
            "5#9 * * * *",
            "0 0 0 0 0",
        ] {
            assert!(parse_cron(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "nightly-eval", "Team A.backup_2", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", " a", "-a", "a/b", "a ", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
