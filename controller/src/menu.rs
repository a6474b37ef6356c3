//! The model menu: recipes matched to what is actually on disk on the nodes.
//!
//! `GET /api/models` scans every connected node's model store and lists each recipe with its
//! state per node (weights present, incomplete, absent), whether it is loaded, its knobs and
//! what the GPU memory fraction means in GB on each node. Models on disk that no recipe names
//! appear as `needs_setup` with a recipe inferred from their config.json; the operator confirms
//! it once (`POST /api/models/{key}/confirm`). Recipes whose weights are nowhere are
//! `downloadable`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use spark_common::models::{ModelEntry, ModelTarget};
use spark_common::ops::{Op, OpOutput};

use crate::api::{Actor, ApiError, JsonBody};
use crate::catalog::{self, Source};
use crate::preflight::{self, NodeFacts, ROLE_LLM};
use crate::recipes::{self, Knobs, Recipe};
use crate::{App, boxes};

const GB: f64 = 1e9;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/models", get(menu).post(add))
        .route("/models/{key}", get(one).delete(remove))
        .route("/models/{key}/knobs", put(set_knobs).get(get_knobs))
        .route("/models/{key}/confirm", post(confirm))
}

/// A model on disk that no recipe names, with the nodes holding it.
struct Unmatched {
    entry: ModelEntry,
    nodes: Vec<String>,
}

fn model_ref(e: &ModelEntry) -> &str {
    e.repo_id.as_deref().unwrap_or(&e.path)
}

fn matches(recipe: &Recipe, e: &ModelEntry) -> bool {
    match (&recipe.repo, &recipe.path) {
        (Some(r), _) => e.repo_id.as_deref() == Some(r.as_str()),
        (None, Some(p)) => e.path == *p,
        _ => false,
    }
}

/// Node memory total in bytes (GPU, unified, or host RAM standing in).
fn node_memory(f: &NodeFacts) -> Option<u64> {
    f.telemetry
        .as_ref()
        .map(|t| preflight::memory_facts(t, &[]).total_bytes)
}

/// The loaded model containers: recipe key -> [(node name, container, state)].
fn loaded(app: &App) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let names: HashMap<String, String> = app
        .db
        .nodes(false)
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect();
    for c in crate::swap::model_containers(app) {
        let key = c.info.recipe.clone().unwrap_or_default();
        out.entry(key).or_default().push(json!({
            "node": names.get(&c.node_id).cloned().unwrap_or(c.node_id.clone()),
            "container": c.info.name,
            "state": c.info.state,
            "ready": if c.info.role.as_deref() == Some(ROLE_LLM) { app.swaps.ready(&c.info.name) } else { None },
        }));
    }
    out
}

fn recipe_view(
    app: &App,
    recipe: &Recipe,
    source: Option<Source>,
    facts: &[NodeFacts],
    loaded: &HashMap<String, Vec<Value>>,
) -> Value {
    let knobs = catalog::knobs(app, &recipe.key);
    let fraction = recipes::effective_gpu_memory_utilization(recipe, &knobs);
    let needed = recipes::cluster_nodes(recipe) as usize;
    let mut complete = 0;
    let mut partial = 0;
    let nodes: Vec<Value> = facts
        .iter()
        .map(|f| {
            let w = f.weights(recipe);
            let weights = match (&f.inventory, w) {
                (Err(_), _) => "unknown",
                (Ok(_), Some(w)) if w.complete => {
                    complete += 1;
                    "present"
                }
                (Ok(_), Some(_)) => {
                    partial += 1;
                    "incomplete"
                }
                (Ok(_), None) => "absent",
            };
            let total = node_memory(f);
            json!({
                "node_id": f.node_id,
                "name": f.name,
                "weights": weights,
                "size_bytes": w.map(|w| w.size_bytes),
                "path": w.map(|w| w.path.clone()),
                "scan_error": f.inventory.as_ref().err(),
                "memory_total_gb": total.map(|t| round1(t as f64 / GB)),
                "gpu_memory_gb": total.map(|t| round1(fraction * t as f64 / GB)),
            })
        })
        .collect();
    let is_loaded = loaded.get(&recipe.key);
    let state = if is_loaded.is_some() {
        "loaded"
    } else if complete >= needed {
        "ready"
    } else if partial > 0 {
        "incomplete"
    } else if complete > 0 {
        "partial"
    } else if recipe.repo.is_some() {
        "downloadable"
    } else {
        "missing"
    };
    json!({
        "key": recipe.key,
        "name": recipe.name,
        "state": state,
        "needs_setup": false,
        "source": source,
        "recipe": recipe,
        "knobs": knobs,
        "gpu_memory_utilization": fraction,
        "nodes": nodes,
        "loaded_on": is_loaded.cloned().unwrap_or_default(),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Models on disk that no recipe names, by reference (repo id or path).
fn unmatched(entries: &[catalog::Entry], facts: &[NodeFacts]) -> BTreeMap<String, Unmatched> {
    let mut out: BTreeMap<String, Unmatched> = BTreeMap::new();
    for f in facts {
        let Ok(inv) = &f.inventory else { continue };
        for m in inv.models.iter().filter(|m| m.complete) {
            if entries.iter().any(|e| matches(&e.recipe, m)) {
                continue;
            }
            out.entry(model_ref(m).to_string())
                .or_insert_with(|| Unmatched {
                    entry: m.clone(),
                    nodes: Vec::new(),
                })
                .nodes
                .push(f.node_id.clone());
        }
    }
    out
}

/// Infer a recipe for an unmatched model (reading its full config.json from a node holding it).
async fn infer(app: &App, u: &Unmatched, facts: &[NodeFacts]) -> recipes::Inferred {
    let mut config = Value::Null;
    for node_id in &u.nodes {
        let capable = app
            .registry
            .get(node_id)
            .is_some_and(|l| l.features.iter().any(|f| f == "model-config"));
        if !capable {
            continue;
        }
        let target = match &u.entry.repo_id {
            Some(r) => ModelTarget::Repo(r.clone()),
            None => ModelTarget::Path(u.entry.path.clone()),
        };
        if let Ok(OpOutput::ModelConfig { json, .. }) = boxes::call(
            app,
            node_id,
            Op::ReadModelConfig(target),
            Duration::from_secs(15),
        )
        .await
            && let Ok(v) = serde_json::from_str(&json)
        {
            config = v;
            break;
        }
    }
    if config.is_null()
        && let Some(s) = &u.entry.config
    {
        config = json!({
            "architectures": s.architectures,
            "model_type": s.model_type,
            "torch_dtype": s.dtype,
            "quantization_config": s.quantization.as_ref().map(|q| json!({"quant_method": q})),
        });
    }
    let memory = facts
        .iter()
        .filter(|f| u.nodes.contains(&f.node_id))
        .filter_map(node_memory)
        .min();
    let image = app.config.default_runtime_image.clone();
    recipes::infer(
        model_ref(&u.entry),
        u.entry.repo_id.is_some(),
        &config,
        u.entry.size_bytes,
        memory,
        facts.len(),
        &image,
    )
}

async fn menu(State(app): State<Arc<App>>) -> Json<Value> {
    let (entries, warnings) = catalog::all(&app);
    let facts = preflight::node_facts(&app).await;
    let loaded = loaded(&app);
    let mut models: Vec<Value> = entries
        .iter()
        .map(|e| recipe_view(&app, &e.recipe, Some(e.source), &facts, &loaded))
        .collect();
    for u in unmatched(&entries, &facts).values() {
        let inferred = infer(&app, u, &facts).await;
        let mut v = recipe_view(&app, &inferred.recipe, None, &facts, &loaded);
        v["needs_setup"] = json!(true);
        v["state"] = json!("needs_setup");
        v["inferred_notes"] = json!(inferred.notes);
        v["confirm_url"] = json!(format!("/api/models/{}/confirm", inferred.recipe.key));
        models.push(v);
    }
    let nodes: Vec<Value> = facts
        .iter()
        .map(|f| {
            json!({
                "node_id": f.node_id,
                "name": f.name,
                "memory_total_gb": node_memory(f).map(|t| round1(t as f64 / GB)),
                "scan_error": f.inventory.as_ref().err(),
                "warnings": f.inventory.as_ref().map(|i| i.warnings.clone()).unwrap_or_default(),
            })
        })
        .collect();
    Json(json!({ "models": models, "nodes": nodes, "warnings": warnings }))
}

async fn one(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = catalog::get(&app, &key).ok_or_else(|| not_found(&key))?;
    let facts = preflight::node_facts(&app).await;
    Ok(Json(recipe_view(
        &app,
        &e.recipe,
        Some(e.source),
        &facts,
        &loaded(&app),
    )))
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no recipe '{key}'; GET /api/models lists them"),
    )
}

/// A recipe from a request body: the recipe as JSON, or `{"yaml": "..."}` in either YAML
/// format (ours or spark-vllm-docker's).
fn recipe_from(body: Value) -> Result<Recipe, ApiError> {
    if let Some(yaml) = body.get("yaml") {
        let text = yaml
            .as_str()
            .ok_or_else(|| ApiError::bad_request("\"yaml\" must be a string".into()))?;
        let mut list = recipes::parse_yaml(text, "the request").map_err(ApiError::bad_request)?;
        if list.len() != 1 {
            return Err(ApiError::bad_request(format!(
                "the YAML holds {} recipes; add one at a time",
                list.len()
            )));
        }
        return list
            .pop()
            .ok_or_else(|| ApiError::bad_request("no recipe".into()));
    }
    let recipe: Recipe = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a valid recipe: {e}")))?;
    recipes::validate(&recipe).map_err(ApiError::bad_request)?;
    Ok(recipe)
}

async fn add(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let recipe = recipe_from(body)?;
    if catalog::stored_exists(&app, &recipe.key)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!(
                "a recipe '{}' was already added; DELETE /api/models/{} first to replace it",
                recipe.key, recipe.key
            ),
        ));
    }
    catalog::put(&app, &recipe, Source::Api)?;
    let _ = app.db.add_event(
        "recipe_added",
        None,
        Some(&actor.0),
        &format!("recipe '{}' added", recipe.key),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": recipe.key, "source": Source::Api, "recipe": recipe})),
    ))
}

async fn remove(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(entry) = catalog::get(&app, &key) else {
        return Err(not_found(&key));
    };
    if let Some(active) = app.swaps.active()
        && active.record().key == key
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "swap_in_progress",
            format!("a swap to '{key}' is running; wait for it to end"),
        ));
    }
    match entry.source {
        Source::Api | Source::Confirmed => {
            catalog::remove(&app, &key)?;
            let _ = app.db.add_event(
                "recipe_removed",
                None,
                Some(&actor.0),
                &format!("recipe '{key}' removed"),
            );
            let now = catalog::get(&app, &key).map(|e| e.source);
            Ok(Json(json!({"key": key, "removed": true, "now_from": now})))
        }
        Source::File => Err(ApiError::new(
            StatusCode::CONFLICT,
            "from_file",
            format!(
                "recipe '{key}' comes from a file in {}; remove the file there",
                app.config.data_dir.join("recipes").display()
            ),
        )),
        Source::Bundled => Err(ApiError::new(
            StatusCode::CONFLICT,
            "bundled",
            format!("recipe '{key}' is bundled with Spark Control and cannot be removed"),
        )),
    }
}

async fn get_knobs(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = catalog::get(&app, &key).ok_or_else(|| not_found(&key))?;
    Ok(Json(knobs_view(&app, &e.recipe).await))
}

async fn knobs_view(app: &App, recipe: &Recipe) -> Value {
    let knobs = catalog::knobs(app, &recipe.key);
    let fraction = recipes::effective_gpu_memory_utilization(recipe, &knobs);
    let per_node: Vec<Value> = app
        .db
        .nodes(false)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let t = app.registry.get(&n.id)?.telemetry?;
            let total = preflight::memory_facts(&t, &[]).total_bytes;
            Some(json!({
                "node_id": n.id, "name": n.name,
                "memory_total_gb": round1(total as f64 / GB),
                "gpu_memory_gb": round1(fraction * total as f64 / GB),
            }))
        })
        .collect();
    let role = match recipe.mode {
        recipes::Mode::Solo => recipes::Role::Solo,
        recipes::Mode::Cluster => recipes::Role::Head,
    };
    json!({
        "key": recipe.key,
        "knobs": knobs,
        "gpu_memory_utilization": fraction,
        "nodes": per_node,
        "args": recipes::apply_knobs(&recipe.args, &knobs),
        "argv_preview": recipes::launch_argv(recipe, &knobs, &role, None),
    })
}

async fn set_knobs(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
    JsonBody(knobs): JsonBody<Knobs>,
) -> Result<Json<Value>, ApiError> {
    let e = catalog::get(&app, &key).ok_or_else(|| not_found(&key))?;
    recipes::validate_knobs(&knobs).map_err(ApiError::bad_request)?;
    catalog::set_knobs(&app, &key, &knobs)?;
    let _ = app.db.add_event(
        "knobs_changed",
        None,
        Some(&actor.0),
        &format!(
            "knobs of '{key}' set to {}",
            serde_json::to_string(&knobs).unwrap_or_default()
        ),
    );
    Ok(Json(knobs_view(&app, &e.recipe).await))
}

/// Confirm an inferred recipe, optionally changing fields (a JSON object merged over it).
async fn confirm(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let overrides: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "body must be a JSON object of recipe fields to change (or empty): {e}"
            ))
        })?
    };
    let Value::Object(overrides) = overrides else {
        return Err(ApiError::bad_request(
            "body must be a JSON object of recipe fields to change (or empty)".into(),
        ));
    };
    let (entries, _) = catalog::all(&app);
    if entries.iter().any(|e| e.recipe.key == key) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "has_recipe",
            format!("'{key}' already has a recipe; change it with POST /api/models"),
        ));
    }
    let facts = preflight::node_facts(&app).await;
    let unmatched = unmatched(&entries, &facts);
    let u = unmatched
        .values()
        .find(|u| recipes::key_for(model_ref(&u.entry)) == key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no model on disk needs setup under the key '{key}'; GET /api/models lists them"
                ),
            )
        })?;
    let inferred = infer(&app, u, &facts).await;
    let mut v = serde_json::to_value(&inferred.recipe)
        .map_err(|e| ApiError::bad_request(format!("inferred recipe: {e}")))?;
    if let Value::Object(base) = &mut v {
        for (k, val) in overrides {
            if k == "key" {
                return Err(ApiError::bad_request(
                    "the key of a confirmed recipe is fixed by its model".into(),
                ));
            }
            base.insert(k, val);
        }
    }
    let recipe = recipe_from(v)?;
    catalog::put(&app, &recipe, Source::Confirmed)?;
    let _ = app.db.add_event(
        "recipe_confirmed",
        None,
        Some(&actor.0),
        &format!("recipe '{key}' confirmed for {}", model_ref(&u.entry)),
    );
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"key": key, "source": Source::Confirmed, "recipe": recipe, "notes": inferred.notes}),
        ),
    ))
}
