//! Where recipes come from, merged: bundled < operator files (`<data-dir>/recipes/`) < the
//! database (added through the API, or inferred recipes the operator confirmed). Later sources
//! replace earlier ones with the same key. Knob overrides are stored per key.
//!
//! Reads are cheap (files are re-read on every call so an operator's edit shows at once; the
//! directory holds a handful of small files).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::App;
use crate::db::DbError;
use crate::recipes::{self, Knobs, Recipe};

/// Where a recipe came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Shipped with the controller.
    Bundled,
    /// A YAML file in `<data-dir>/recipes/`.
    File,
    /// Added through `POST /api/models`.
    Api,
    /// Inferred from a model's config.json and confirmed by the operator.
    Confirmed,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Bundled => "bundled",
            Source::File => "file",
            Source::Api => "api",
            Source::Confirmed => "confirmed",
        }
    }

    fn parse(s: &str) -> Source {
        match s {
            "confirmed" => Source::Confirmed,
            _ => Source::Api,
        }
    }
}

/// A recipe and its origin.
#[derive(Debug, Clone)]
pub struct Entry {
    pub recipe: Recipe,
    pub source: Source,
}

/// Every recipe, merged by key (sorted by key), and warnings about files that did not load.
pub fn all(app: &App) -> (Vec<Entry>, Vec<String>) {
    let mut by_key: std::collections::BTreeMap<String, Entry> = Default::default();
    for recipe in recipes::bundled() {
        by_key.insert(
            recipe.key.clone(),
            Entry {
                recipe,
                source: Source::Bundled,
            },
        );
    }
    let (files, mut warnings) = recipes::load_dir(&app.config.data_dir.join("recipes"));
    for recipe in files {
        by_key.insert(
            recipe.key.clone(),
            Entry {
                recipe,
                source: Source::File,
            },
        );
    }
    match stored(app) {
        Ok(rows) => {
            for (recipe, source) in rows {
                by_key.insert(recipe.key.clone(), Entry { recipe, source });
            }
        }
        Err(e) => warnings.push(format!("stored recipes could not be read: {e}")),
    }
    (by_key.into_values().collect(), warnings)
}

/// One recipe by key.
pub fn get(app: &App, key: &str) -> Option<Entry> {
    all(app).0.into_iter().find(|e| e.recipe.key == key)
}

fn stored(app: &App) -> Result<Vec<(Recipe, Source)>, DbError> {
    let rows: Vec<(String, String, String)> = app.db.with(|c| {
        let mut st = c.prepare("SELECT key, body, source FROM recipes ORDER BY key")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, body, source)| match serde_json::from_str(&body) {
            Ok(r) => Some((r, Source::parse(&source))),
            Err(e) => {
                tracing::warn!(%key, error = %e, "stored recipe no longer parses; ignored");
                None
            }
        })
        .collect())
}

/// Whether the database holds a recipe with this key.
pub fn stored_exists(app: &App, key: &str) -> Result<bool, DbError> {
    app.db.with(|c| {
        c.query_row("SELECT 1 FROM recipes WHERE key = ?1", [key], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
    })
}

/// Store (insert or replace) a recipe in the database.
pub fn put(app: &App, recipe: &Recipe, source: Source) -> Result<(), DbError> {
    let body = serde_json::to_string(recipe).unwrap_or_default();
    let now = crate::now_ms();
    app.db.with(|c| {
        c.execute(
            "INSERT INTO recipes(key, body, source, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(key) DO UPDATE SET body = excluded.body, source = excluded.source, updated_at = excluded.updated_at",
            params![recipe.key, body, source.as_str(), now],
        )
        .map(|_| ())
    })
}

/// Remove a stored recipe; whether there was one.
pub fn remove(app: &App, key: &str) -> Result<bool, DbError> {
    app.db.with(|c| {
        c.execute("DELETE FROM recipes WHERE key = ?1", [key])
            .map(|n| n > 0)
    })
}

/// The knob overrides for a model (none set when never saved).
pub fn knobs(app: &App, key: &str) -> Knobs {
    let body: Option<String> = app
        .db
        .with(|c| {
            c.query_row("SELECT body FROM knobs WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
        .ok()
        .flatten();
    body.and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default()
}

/// Save the knob overrides for a model.
pub fn set_knobs(app: &App, key: &str, knobs: &Knobs) -> Result<(), DbError> {
    let body = serde_json::to_string(knobs).unwrap_or_default();
    app.db.with(|c| {
        c.execute(
            "INSERT INTO knobs(key, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![key, body, crate::now_ms()],
        )
        .map(|_| ())
    })
}
