//! The model store: weights on this box's disks.
//!
//! Two kinds of places hold models:
//! - the Hugging Face hub cache (`~/.cache/huggingface/hub` by default, see [`default_hf_cache`]),
//!   laid out exactly as `huggingface_hub` lays it out:
//!   `models--org--name/{blobs/<etag>, snapshots/<commit>/<path> -> ../../blobs/<etag>,
//!   refs/<revision>}`, with `blobs/<etag>.incomplete` while a download runs;
//! - configured local roots, whose immediate subdirectories holding a `config.json`, a
//!   `*.safetensors` or a `*.gguf` file are models of their own (fine-tuned, converted, copied).
//!
//! [`ModelStore::scan`] reports both, [`ModelStore::delete`] removes one model (and nothing
//! outside the roots), [`ModelStore::download`] fetches a repository snapshot from a Hugging
//! Face-compatible endpoint into the cache, resumably, the way `huggingface_hub` does.
//!
//! Invariants: file names from the network are validated before they touch the disk; the token
//! goes only into the `Authorization` header of requests to the endpoint and never into an
//! error, a log line or a progress event; scanning never panics on a strange disk, it warns.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use spark_common::models::{
    ModelConfigSummary, ModelEntry, ModelInventory, ModelRevision, ModelSource, ModelTarget,
    cache_dir_name, validate_repo_id, validate_revision,
};
use spark_common::ops::{DownloadRequest, OpError, OpErrorKind, OpOutput, Progress, Secret};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::enroll::error_chain;

/// The public Hugging Face Hub.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// The words every "gated repository / bad token" error carries.
pub const GATED_MESSAGE: &str = "gated or unauthorized: accept the license / check the token";

/// Files fetched at the same time by one download.
const PARALLEL_FILES: usize = 4;
/// At most one progress event per file per this interval (plus a final one).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// `config.json` files larger than this are not read.
const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Scans stop collecting warnings after this many.
const MAX_WARNINGS: usize = 200;
/// Directory depth a scan descends to.
const MAX_DEPTH: usize = 32;
/// Retries of an interrupted file transfer inside one download (each resumes with `Range`).
const DEFAULT_RETRIES: u32 = 3;

/// The Hugging Face hub cache directory, resolved exactly as `huggingface_hub` resolves it
/// (`constants.py`): `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else
/// `$HF_HOME/hub`, where `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface` and
/// `XDG_CACHE_HOME` to `~/.cache`. `~` and `$VAR` / `${VAR}` are expanded as Python's
/// `expanduser` / `expandvars` do. Empty variables count as unset. Pure: `env` looks variables up.
pub fn default_hf_cache(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let home = get("HOME");
    let expand = |v: &str| -> String { expand_vars(&expand_user(v, home.as_deref()), &get) };
    if let Some(v) = get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(expand(&v));
    }
    let hf_home = match get("HF_HOME") {
        Some(v) => v,
        None => {
            let xdg = get("XDG_CACHE_HOME").unwrap_or_else(|| match &home {
                Some(h) => format!("{}/.cache", h.trim_end_matches('/')),
                None => "/.cache".to_string(),
            });
            format!("{}/huggingface", xdg.trim_end_matches('/'))
        }
    };
    PathBuf::from(expand(&hf_home)).join("hub")
}

/// `~` and `~/...` become the home directory (other users' `~name` stay as they are).
fn expand_user(v: &str, home: Option<&str>) -> String {
    match (home, v.strip_prefix('~')) {
        (Some(h), Some("")) => h.to_string(),
        (Some(h), Some(rest)) if rest.starts_with('/') => {
            format!("{}{rest}", h.trim_end_matches('/'))
        }
        _ => v.to_string(),
    }
}

/// `$NAME` and `${NAME}` become the variable's value; unknown variables stay as written.
fn expand_vars(v: &str, get: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(end) => (&b[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match (name.is_empty(), get(name)) {
            (false, Some(val)) => out.push_str(&val),
            _ => out.push_str(&rest[i..i + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// Check a file path from a repository listing before it names anything on disk: relative,
/// `/`-separated, no empty, `.` or `..` component, no backslash, no control character.
pub fn validate_repo_file(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the server listed an unsafe file name {path:?} (absolute, '..', backslash or empty component)"
        ))
    }
}

/// A blob name (ETag): letters, digits, '-' and '_' only.
fn valid_etag(etag: &str) -> bool {
    !etag.is_empty()
        && etag.len() <= 128
        && etag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A commit hash as the Hub sends it (hex; 40 digits on the Hub).
fn valid_commit(commit: &str) -> bool {
    (7..=64).contains(&commit.len()) && commit.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `"abc"` / `W/"abc"` -> `abc`, as `huggingface_hub._normalize_etag` does.
fn normalize_etag(v: &str) -> String {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').to_string()
}

/// The parts of a parsed `config.json` that decide how to run the model. `None` when the JSON
/// is not an object.
pub fn summarize_config(v: &serde_json::Value) -> Option<ModelConfigSummary> {
    let obj = v.as_object()?;
    let text = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
        o.get(k).and_then(|x| x.as_str()).map(str::to_string)
    };
    let nested = obj.get("text_config").and_then(|t| t.as_object());
    let architectures = obj
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let quantization = obj
        .get("quantization_config")
        .and_then(|q| q.as_object())
        .and_then(|q| text(q, "quant_method"));
    let dtype = text(obj, "torch_dtype")
        .or_else(|| text(obj, "dtype"))
        .or_else(|| nested.and_then(|t| text(t, "torch_dtype").or_else(|| text(t, "dtype"))));
    Some(ModelConfigSummary {
        architectures,
        model_type: text(obj, "model_type"),
        quantization,
        dtype,
    })
}

fn mtime_ms(m: &fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Collects scan warnings, capped.
struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, w: String) {
        if self.0.len() < MAX_WARNINGS {
            tracing::debug!(warning = %w, "model scan");
            self.0.push(w);
        } else if self.0.len() == MAX_WARNINGS {
            self.0
                .push("more problems were found; only the first ones are listed".into());
        }
    }
}

/// Bytes of a directory tree, each file (inode) counted once.
#[derive(Default)]
struct Usage {
    bytes: u64,
    files: u32,
    newest_ms: i64,
    incomplete_bytes: u64,
    has_incomplete: bool,
}

/// Walk `dir` without following directory links. With `follow_file_links`, links to files count
/// their target's size (a local model made of links); without, only real files count (what a
/// deletion frees).
fn usage(dir: &Path, follow_file_links: bool, warnings: &mut Warnings) -> Usage {
    let mut u = Usage::default();
    let mut seen = HashSet::new();
    usage_into(dir, follow_file_links, warnings, &mut u, &mut seen, 0);
    u
}

fn usage_into(
    dir: &Path,
    follow: bool,
    warnings: &mut Warnings,
    u: &mut Usage,
    seen: &mut HashSet<(u64, u64)>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        warnings.push(format!("{}: nested too deep, not counted", dir.display()));
        return;
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                warnings.push(format!("cannot read {}: {e}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                warnings.push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        u.newest_ms = u.newest_ms.max(mtime_ms(&meta));
        let ft = meta.file_type();
        let file_meta = if ft.is_dir() {
            usage_into(&path, follow, warnings, u, seen, depth + 1);
            continue;
        } else if ft.is_symlink() {
            if !follow {
                continue;
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(_) => {
                    warnings.push(format!("broken link {}", path.display()));
                    continue;
                }
            }
        } else if ft.is_file() {
            meta
        } else {
            continue;
        };
        if !seen.insert((file_meta.dev(), file_meta.ino())) {
            continue;
        }
        u.bytes += file_meta.len();
        u.files += 1;
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".incomplete"))
        {
            u.incomplete_bytes += file_meta.len();
            u.has_incomplete = true;
        }
    }
}

/// Files of one snapshot, following its links into `blobs/`.
#[derive(Default)]
struct SnapshotFiles {
    files: u32,
    bytes: u64,
    newest_ms: i64,
    broken: u32,
}

fn snapshot_files(dir: &Path, warnings: &mut Warnings, out: &mut SnapshotFiles, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            snapshot_files(&path, warnings, out, depth + 1);
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                out.files += 1;
                out.bytes += m.len();
                out.newest_ms = out.newest_ms.max(mtime_ms(&m)).max(mtime_ms(&meta));
            }
            Ok(_) => {}
            Err(_) => {
                out.broken += 1;
                warnings.push(format!(
                    "broken link {} (its blob is missing)",
                    path.display()
                ));
            }
        }
    }
}

/// `refs/<name>` files (nested, e.g. `refs/pr/1`): (name, commit).
fn read_refs(dir: &Path, prefix: &str, warnings: &mut Warnings, out: &mut Vec<(String, String)>) {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    for entry in rd.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && prefix.split('/').count() < 8 => {
                read_refs(&path, &full, warnings, out);
            }
            Ok(m) if m.is_file() && m.len() <= 1024 => match fs::read_to_string(&path) {
                Ok(s) => out.push((full, s.trim().to_string())),
                Err(e) => warnings.push(format!("cannot read {}: {e}", path.display())),
            },
            _ => {}
        }
    }
}

/// Read and summarize a `config.json`. `Ok(None)` when there is none.
fn read_config(path: &Path) -> Result<Option<ModelConfigSummary>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} is {} bytes, too large for a config.json; not read",
            path.display(),
            meta.len()
        ));
    }
    let text = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    summarize_config(&value)
        .map(Some)
        .ok_or_else(|| format!("{} is not a JSON object", path.display()))
}

/// "org--name" (after `models--`) -> "org/name", as `huggingface_hub` decodes cache folders.
fn repo_id_from_dir(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    if rest.is_empty() {
        return None;
    }
    Some(rest.replace("--", "/"))
}

/// The model store of this box.
#[derive(Debug, Clone)]
pub struct ModelStore {
    hf_cache: PathBuf,
    local_roots: Vec<PathBuf>,
    retries: u32,
}

impl ModelStore {
    pub fn new(hf_cache: PathBuf, local_roots: Vec<PathBuf>) -> ModelStore {
        ModelStore {
            hf_cache,
            local_roots,
            retries: DEFAULT_RETRIES,
        }
    }

    /// How often one download retries an interrupted file transfer (resuming it) before it
    /// fails; 3 by default. With 0 the first interruption fails the download, leaving the
    /// `.incomplete` blob for a later resume.
    pub fn with_download_retries(mut self, retries: u32) -> ModelStore {
        self.retries = retries;
        self
    }

    pub fn hf_cache(&self) -> &Path {
        &self.hf_cache
    }

    pub fn local_roots(&self) -> &[PathBuf] {
        &self.local_roots
    }

    /// Everything on disk. Blocking: call it from `spawn_blocking`.
    pub fn scan(&self) -> ModelInventory {
        let mut warnings = Warnings(Vec::new());
        let mut models = Vec::new();
        self.scan_hf_cache(&mut models, &mut warnings);
        for root in &self.local_roots {
            scan_local_root(root, &mut models, &mut warnings);
        }
        models.sort_by(|a, b| {
            let ka = a.repo_id.as_deref().unwrap_or(&a.path);
            let kb = b.repo_id.as_deref().unwrap_or(&b.path);
            ka.cmp(kb).then_with(|| a.path.cmp(&b.path))
        });
        ModelInventory {
            hf_cache: self.hf_cache.display().to_string(),
            local_roots: self
                .local_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
            models,
            warnings: warnings.0,
        }
    }

    fn scan_hf_cache(&self, models: &mut Vec<ModelEntry>, warnings: &mut Warnings) {
        let rd = match fs::read_dir(&self.hf_cache) {
            Ok(rd) => rd,
            // No cache yet: nothing downloaded on this box, not a problem.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                warnings.push(format!(
                    "cannot read the Hugging Face cache {}: {e}",
                    self.hf_cache.display()
                ));
                return;
            }
        };
        for entry in rd {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    warnings.push(format!("cannot read {}: {e}", self.hf_cache.display()));
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // datasets--, spaces--, .locks, version.txt ... are not models.
            let Some(repo_id) = repo_id_from_dir(&name) else {
                continue;
            };
            let path = entry.path();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => models.push(scan_repo(&path, repo_id, warnings)),
                Ok(_) => {}
                Err(e) => warnings.push(format!("cannot read {}: {e}", path.display())),
            }
        }
    }

    /// Delete one model: a cached repository by id, or a directory strictly inside one of the
    /// roots (local roots or the hub cache) by path. Returns the directory removed and the bytes
    /// freed (each file counted once). Blocking: call it from `spawn_blocking`.
    pub fn delete(&self, target: &ModelTarget) -> Result<(PathBuf, u64), OpError> {
        let (requested, shown) = match target {
            ModelTarget::Repo(id) => {
                validate_repo_id(id).map_err(|m| OpError::new(OpErrorKind::BadRequest, m))?;
                let dir = self.hf_cache.join(cache_dir_name(id));
                match fs::symlink_metadata(&dir) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(OpError::new(
                            OpErrorKind::NotFound,
                            format!(
                                "{id} is not in the Hugging Face cache ({} does not exist)",
                                dir.display()
                            ),
                        ));
                    }
                    _ => {}
                }
                (dir, id.clone())
            }
            ModelTarget::Path(p) => {
                let pb = PathBuf::from(p);
                if p.is_empty() || !pb.is_absolute() {
                    return Err(OpError::new(
                        OpErrorKind::BadRequest,
                        format!("'{p}' is not an absolute path"),
                    ));
                }
                if pb.components().any(|c| c == Component::ParentDir) {
                    return Err(OpError::new(
                        OpErrorKind::Refused,
                        format!(
                            "refusing to delete '{p}': '..' is not allowed; the path must name a directory inside the model roots ({})",
                            self.roots_text()
                        ),
                    ));
                }
                (pb, p.clone())
            }
        };
        let canon = match fs::canonicalize(&requested) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpError::new(
                    OpErrorKind::NotFound,
                    format!("{shown}: {} does not exist", requested.display()),
                ));
            }
            Err(e) => {
                return Err(OpError::new(
                    OpErrorKind::Refused,
                    format!(
                        "refusing to delete {shown}: cannot resolve {}: {e}",
                        requested.display()
                    ),
                ));
            }
        };
        let roots: Vec<PathBuf> = self
            .all_roots()
            .iter()
            .filter_map(|r| fs::canonicalize(r).ok())
            .collect();
        let inside = roots.iter().any(|r| canon.starts_with(r) && canon != *r);
        if !inside {
            let how = if canon == requested {
                "it is outside the model roots".to_string()
            } else {
                format!(
                    "it resolves to {}, outside the model roots (links may not leave them)",
                    canon.display()
                )
            };
            return Err(OpError::new(
                OpErrorKind::Refused,
                format!(
                    "refusing to delete {shown}: {how}; only directories inside {} can be deleted",
                    self.roots_text()
                ),
            ));
        }
        if let Some(r) = roots.iter().find(|r| r.starts_with(&canon)) {
            return Err(OpError::new(
                OpErrorKind::Refused,
                format!(
                    "refusing to delete {shown}: it contains the model root {}",
                    r.display()
                ),
            ));
        }
        match fs::metadata(&canon) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(OpError::new(
                    OpErrorKind::Refused,
                    format!(
                        "refusing to delete {shown}: {} is not a directory",
                        canon.display()
                    ),
                ));
            }
        }
        let mut w = Warnings(Vec::new());
        let freed = usage(&canon, false, &mut w).bytes;
        fs::remove_dir_all(&canon).map_err(|e| {
            OpError::new(
                OpErrorKind::Internal,
                format!("could not delete {}: {e}", canon.display()),
            )
        })?;
        tracing::info!(path = %canon.display(), freed_bytes = freed, "model deleted");
        Ok((canon, freed))
    }

    /// The `config.json` of one model in the store: the newest snapshot holding one for a cached
    /// repository, or the directory itself for a local model (which must be a scanned model, so
    /// nothing outside the roots is read). Returns the file's path and its text. Blocking.
    pub fn config_json(&self, target: &ModelTarget) -> Result<(String, String), OpError> {
        let inventory = self.scan();
        let entry = inventory.models.iter().find(|m| match target {
            ModelTarget::Repo(id) => m.repo_id.as_deref() == Some(id.as_str()),
            ModelTarget::Path(p) => m.path == *p,
        });
        let Some(entry) = entry else {
            let what = match target {
                ModelTarget::Repo(id) => format!("{id} is not in the Hugging Face cache"),
                ModelTarget::Path(p) => {
                    format!("{p} is not a model directory under the model roots")
                }
            };
            return Err(OpError::new(
                OpErrorKind::NotFound,
                format!("{what} ({})", self.roots_text()),
            ));
        };
        let dir = PathBuf::from(&entry.path);
        let candidates: Vec<PathBuf> = match entry.source {
            ModelSource::HfCache => entry
                .revisions
                .iter()
                .map(|r| dir.join("snapshots").join(&r.commit).join("config.json"))
                .collect(),
            ModelSource::LocalDir => vec![dir.join("config.json")],
        };
        for path in candidates {
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() <= MAX_CONFIG_BYTES => {
                    let text = fs::read_to_string(&path).map_err(|e| {
                        OpError::new(
                            OpErrorKind::Internal,
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    return Ok((path.display().to_string(), text));
                }
                Ok(m) if m.is_file() => {
                    return Err(OpError::new(
                        OpErrorKind::Refused,
                        format!(
                            "{} is {} bytes, too large for a config.json",
                            path.display(),
                            m.len()
                        ),
                    ));
                }
                _ => continue,
            }
        }
        Err(OpError::new(
            OpErrorKind::NotFound,
            format!("{} has no config.json", entry.path),
        ))
    }

    fn all_roots(&self) -> Vec<PathBuf> {
        let mut r = self.local_roots.clone();
        r.push(self.hf_cache.clone());
        r
    }

    fn roots_text(&self) -> String {
        self.all_roots()
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Download a repository snapshot into the hub cache, as `huggingface_hub.snapshot_download`
    /// does: list the files at the revision, fetch each blob (4 at a time, resuming `.incomplete`
    /// blobs with `Range`, skipping blobs already present, checking LFS files' sha256), link the
    /// snapshot to the blobs and record the ref. Cancelling stops promptly and leaves the
    /// `.incomplete` blobs for a later resume. Returns [`OpOutput::Downloaded`] with the commit,
    /// the number of files and their total size.
    pub async fn download(
        &self,
        req: &DownloadRequest,
        default_endpoint: &str,
        default_token: Option<&Secret>,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<OpOutput, OpError> {
        let token = req
            .token
            .as_ref()
            .or(default_token)
            .map(|s| s.0.trim().to_string())
            .filter(|t| !t.is_empty());
        let scrub = |s: String| match &token {
            Some(t) if s.contains(t.as_str()) => s.replace(t.as_str(), "***"),
            _ => s,
        };
        let safe_progress = |mut p: Progress| {
            p.status = scrub(p.status);
            p.item = p.item.map(scrub);
            progress(p);
        };
        // Every blob writer holds a clone of `alive`: once the work is over (or dropped by a
        // cancel), waiting for the channel to close means no write to the cache is still pending.
        let (alive, mut all_closed) = mpsc::channel::<()>(1);
        // A repository directory this download creates is removed again if the download fails
        // before any blob data arrived (a gated repo, a typo), so no empty shell shows up in scans.
        let repo_dir = validate_repo_id(&req.repo)
            .ok()
            .map(|()| self.hf_cache.join(cache_dir_name(&req.repo)));
        let new_dir = repo_dir
            .as_ref()
            .is_some_and(|d| fs::symlink_metadata(d).is_err());
        let work = self.download_inner(
            req,
            default_endpoint,
            token.as_deref(),
            &safe_progress,
            &alive,
        );
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(OpError::new(
                OpErrorKind::Cancelled,
                format!("download of {} cancelled; partial files are kept and a new download resumes them", req.repo),
            )),
            r = work => r,
        };
        drop(alive);
        let _ = all_closed.recv().await;
        if result.is_err()
            && let Some(dir) = repo_dir
        {
            tidy_after_failure(&dir, new_dir);
        }
        result.map_err(|mut e| {
            e.message = scrub(std::mem::take(&mut e.message));
            tracing::warn!(repo = %req.repo, kind = ?e.kind, error = %e.message, "model download failed");
            e
        })
    }

    async fn download_inner(
        &self,
        req: &DownloadRequest,
        default_endpoint: &str,
        token: Option<&str>,
        progress: &(dyn Fn(Progress) + Send + Sync),
        alive: &mpsc::Sender<()>,
    ) -> Result<OpOutput, OpError> {
        let repo = req.repo.as_str();
        validate_repo_id(repo).map_err(|m| OpError::new(OpErrorKind::BadRequest, m))?;
        let revision = req.revision.as_deref().unwrap_or("main");
        validate_revision(revision).map_err(|m| OpError::new(OpErrorKind::BadRequest, m))?;
        let endpoint = normalize_endpoint(req.endpoint.as_deref().unwrap_or(default_endpoint))?;
        let hub = Hub::new(endpoint, token, repo)?;

        progress(Progress {
            status: "listing files".into(),
            item: None,
            current_bytes: 0,
            total_bytes: None,
        });
        let info = hub.repo_info(revision).await?;
        let commit = match info.sha {
            Some(c) if valid_commit(&c) => c.to_ascii_lowercase(),
            _ => {
                return Err(OpError::new(
                    OpErrorKind::Upstream,
                    format!(
                        "{} did not give a usable commit hash for {repo}@{revision}",
                        hub.endpoint
                    ),
                ));
            }
        };
        let mut plans = Vec::with_capacity(info.siblings.len());
        let mut names = HashSet::new();
        for s in info.siblings {
            validate_repo_file(&s.rfilename)
                .map_err(|m| OpError::new(OpErrorKind::Upstream, format!("{repo}: {m}")))?;
            if !names.insert(s.rfilename.clone()) {
                continue;
            }
            let (etag, sha256, size) = match s.lfs {
                Some(l) => {
                    let sha = l.sha256.to_ascii_lowercase();
                    (Some(sha.clone()), Some(sha), l.size.or(s.size))
                }
                None => (s.blob_id, None, s.size),
            };
            plans.push(FilePlan {
                path: s.rfilename,
                etag: etag.filter(|e| valid_etag(e)),
                sha256: sha256.filter(|s| is_sha256_hex(s)),
                size,
            });
        }

        let repo_dir = self.hf_cache.join(cache_dir_name(repo));
        for sub in ["blobs", "refs"] {
            fs::create_dir_all(repo_dir.join(sub))
                .map_err(|e| io_error(&repo_dir.join(sub), &e))?;
        }
        let snap = repo_dir.join("snapshots").join(&commit);
        fs::create_dir_all(&snap).map_err(|e| io_error(&snap, &e))?;
        if revision != commit {
            write_ref(&repo_dir, revision, &commit)?;
        }

        let total_files = plans.len();
        let mut files = 0u32;
        let mut bytes = 0u64;
        let mut jobs = futures_util::stream::iter(plans.into_iter().map(|plan| {
            let hub = &hub;
            let repo_dir = &repo_dir;
            let commit = &commit;
            async move {
                self.fetch_file(hub, repo_dir, commit, plan, progress, alive)
                    .await
            }
        }))
        .buffer_unordered(PARALLEL_FILES);
        while let Some(r) = jobs.next().await {
            bytes += r?;
            files += 1;
        }
        drop(jobs);
        tracing::info!(repo, %commit, files = total_files, bytes, "model downloaded");
        progress(Progress {
            status: "done".into(),
            item: None,
            current_bytes: bytes,
            total_bytes: Some(bytes),
        });
        Ok(OpOutput::Downloaded {
            repo: repo.to_string(),
            commit,
            files,
            bytes,
        })
    }

    /// One file: make sure its blob is present and the snapshot links to it. Returns its size.
    async fn fetch_file(
        &self,
        hub: &Hub,
        repo_dir: &Path,
        commit: &str,
        plan: FilePlan,
        progress: &(dyn Fn(Progress) + Send + Sync),
        alive: &mpsc::Sender<()>,
    ) -> Result<u64, OpError> {
        let url = format!(
            "{}/{}/resolve/{commit}/{}",
            hub.endpoint,
            hub.repo,
            encode_path(&plan.path)
        );
        let (etag, sha256, size) = match plan.etag {
            Some(e) => (e, plan.sha256, plan.size),
            None => hub.head_metadata(&url, &plan.path).await?,
        };
        let blob = repo_dir.join("blobs").join(&etag);
        let report = |current: u64, total: Option<u64>| {
            progress(Progress {
                status: "downloading".into(),
                item: Some(plan.path.clone()),
                current_bytes: current,
                total_bytes: total,
            });
        };
        if let Ok(m) = fs::metadata(&blob)
            && m.is_file()
            && size.is_none_or(|s| s == m.len())
        {
            link_snapshot(repo_dir, commit, &plan.path, &etag)?;
            report(m.len(), Some(m.len()));
            return Ok(m.len());
        }
        let incomplete = repo_dir.join("blobs").join(format!("{etag}.incomplete"));
        let guard = Arc::new(InFlight::acquire(&blob).await?);
        // Another download may have finished this blob while we waited for it.
        if let Ok(m) = fs::metadata(&blob)
            && m.is_file()
            && size.is_none_or(|s| s == m.len())
        {
            link_snapshot(repo_dir, commit, &plan.path, &etag)?;
            report(m.len(), Some(m.len()));
            return Ok(m.len());
        }
        let mut writer = BlobWriter::start(
            incomplete.clone(),
            sha256.is_some(),
            guard.clone(),
            alive.clone(),
        )
        .await?;
        let mut attempt = 0u32;
        loop {
            match hub
                .transfer(&url, &plan.path, &mut writer, size, &report)
                .await
            {
                Ok(()) => break,
                Err(Attempt::Retry(e)) if attempt < self.retries => {
                    attempt += 1;
                    // The message is not logged: it may quote the server, which is not trusted with
                    // the token's secrecy; the final error is scrubbed by `download`.
                    tracing::info!(file = %plan.path, attempt, kind = ?e.kind, "retrying an interrupted transfer");
                    tokio::time::sleep(Duration::from_millis(250 << (attempt - 1).min(4))).await;
                }
                Err(Attempt::Retry(e) | Attempt::Fatal(e)) => return Err(e),
            }
        }
        let done = writer.finish().await?;
        if let Some(expected) = size
            && done.len != expected
        {
            return Err(OpError::new(
                OpErrorKind::Upstream,
                format!(
                    "{}: got {} bytes of {}, expected {expected}",
                    hub.endpoint, done.len, plan.path
                ),
            ));
        }
        if let Some(expected) = &sha256 {
            progress(Progress {
                status: "verifying".into(),
                item: Some(plan.path.clone()),
                current_bytes: done.len,
                total_bytes: Some(done.len),
            });
            let got = done.sha256.unwrap_or_default();
            if !got.eq_ignore_ascii_case(expected) {
                let _ = fs::remove_file(&incomplete);
                return Err(OpError::new(
                    OpErrorKind::Upstream,
                    format!(
                        "{} from {} is corrupt: sha256 {got}, expected {expected}; the partial file was deleted, download again",
                        plan.path, hub.endpoint
                    ),
                ));
            }
        }
        fs::rename(&incomplete, &blob).map_err(|e| io_error(&blob, &e))?;
        drop(guard);
        link_snapshot(repo_dir, commit, &plan.path, &etag)?;
        report(done.len, Some(done.len));
        Ok(done.len)
    }
}

fn scan_repo(dir: &Path, repo_id: String, warnings: &mut Warnings) -> ModelEntry {
    let u = usage(dir, false, warnings);
    let mut refs = Vec::new();
    read_refs(&dir.join("refs"), "", warnings, &mut refs);
    let mut revisions: Vec<(ModelRevision, i64)> = Vec::new();
    let mut broken = 0;
    match fs::read_dir(dir.join("snapshots")) {
        Ok(rd) => {
            for entry in rd.flatten() {
                let path = entry.path();
                let Some(commit) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if !meta.is_dir() {
                    continue;
                }
                let mut sf = SnapshotFiles::default();
                snapshot_files(&path, warnings, &mut sf, 0);
                broken += sf.broken;
                let mut names: Vec<String> = refs
                    .iter()
                    .filter(|(_, c)| *c == commit)
                    .map(|(n, _)| n.clone())
                    .collect();
                names.sort();
                revisions.push((
                    ModelRevision {
                        commit,
                        refs: names,
                        files: sf.files,
                        size_bytes: sf.bytes,
                    },
                    sf.newest_ms.max(mtime_ms(&meta)),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warnings.push(format!(
            "cannot read {}: {e}",
            dir.join("snapshots").display()
        )),
    }
    revisions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.commit.cmp(&b.0.commit)));
    let mut config = None;
    for (rev, _) in &revisions {
        match read_config(&dir.join("snapshots").join(&rev.commit).join("config.json")) {
            Ok(Some(c)) => {
                config = Some(c);
                break;
            }
            Ok(None) => {}
            Err(w) => warnings.push(w),
        }
    }
    let complete = !u.has_incomplete && broken == 0 && revisions.iter().any(|(r, _)| r.files > 0);
    ModelEntry {
        source: ModelSource::HfCache,
        repo_id: Some(repo_id),
        path: dir.display().to_string(),
        size_bytes: u.bytes,
        complete,
        incomplete_bytes: u.incomplete_bytes,
        revisions: revisions.into_iter().map(|(r, _)| r).collect(),
        config,
        modified_ms: u.newest_ms,
    }
}

fn is_model_dir(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().to_ascii_lowercase();
        name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".gguf")
    })
}

fn scan_local_root(root: &Path, models: &mut Vec<ModelEntry>, warnings: &mut Warnings) {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            warnings.push(format!(
                "local model root {} does not exist",
                root.display()
            ));
            return;
        }
        Err(e) => {
            warnings.push(format!(
                "cannot read local model root {}: {e}",
                root.display()
            ));
            return;
        }
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        if !is_model_dir(&path) {
            continue;
        }
        let u = usage(&path, true, warnings);
        let config = match read_config(&path.join("config.json")) {
            Ok(c) => c,
            Err(w) => {
                warnings.push(w);
                None
            }
        };
        models.push(ModelEntry {
            source: ModelSource::LocalDir,
            repo_id: None,
            path: path.display().to_string(),
            size_bytes: u.bytes,
            complete: !u.has_incomplete,
            incomplete_bytes: u.incomplete_bytes,
            revisions: Vec::new(),
            config,
            modified_ms: u.newest_ms,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Download machinery

fn io_error(path: &Path, e: &io::Error) -> OpError {
    OpError::new(
        OpErrorKind::Internal,
        format!("cannot write {}: {e}", path.display()),
    )
}

/// After a failed download: drop empty `.incomplete` blobs (nothing to resume), and the
/// repository directory itself if this download created it and no blob data is left.
fn tidy_after_failure(repo_dir: &Path, created: bool) {
    let blobs = repo_dir.join("blobs");
    let Ok(rd) = fs::read_dir(&blobs) else {
        return;
    };
    let mut data_left = false;
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let empty = e.metadata().is_ok_and(|m| m.len() == 0);
        let in_use = name.strip_suffix(".incomplete").is_some_and(|etag| {
            IN_FLIGHT
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&blobs.join(etag))
        });
        if name.ends_with(".incomplete") && empty && !in_use {
            let _ = fs::remove_file(&path);
        } else {
            data_left = true;
        }
    }
    if created && !data_left {
        let _ = fs::remove_dir_all(repo_dir);
    }
}

/// `refs/<revision>` holds the commit (no newline), written atomically.
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), OpError> {
    let path = repo_dir.join("refs").join(revision);
    if fs::read_to_string(&path).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_error(parent, &e))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("ref")
    ));
    fs::write(&tmp, commit).map_err(|e| io_error(&tmp, &e))?;
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, &e))
}

/// `snapshots/<commit>/<path>` -> `../../blobs/<etag>` (one more `../` per directory level),
/// replacing whatever link was there.
fn link_snapshot(repo_dir: &Path, commit: &str, path: &str, etag: &str) -> Result<(), OpError> {
    let pointer = repo_dir.join("snapshots").join(commit).join(path);
    let depth = path.split('/').count() + 1;
    let target = format!("{}blobs/{etag}", "../".repeat(depth));
    if let Some(parent) = pointer.parent() {
        fs::create_dir_all(parent).map_err(|e| io_error(parent, &e))?;
    }
    match fs::symlink_metadata(&pointer) {
        Ok(m) if m.is_dir() => {
            return Err(OpError::new(
                OpErrorKind::Upstream,
                format!("{path} is listed as a file but is a directory in the snapshot"),
            ));
        }
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(&pointer).is_ok_and(|t| t == Path::new(&target)) {
                return Ok(());
            }
            fs::remove_file(&pointer).map_err(|e| io_error(&pointer, &e))?;
        }
        Ok(_) => fs::remove_file(&pointer).map_err(|e| io_error(&pointer, &e))?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&target, &pointer).map_err(|e| io_error(&pointer, &e))
}

/// Percent-encode one path segment (RFC 3986 unreserved characters stay).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a `/`-separated path, keeping the separators (Python's `quote(filename)`).
fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// `https://huggingface.co/` -> `https://huggingface.co`; refuses anything but an http(s) URL
/// without credentials, query or fragment.
fn normalize_endpoint(raw: &str) -> Result<String, OpError> {
    let e = raw.trim().trim_end_matches('/');
    let bad = |why: &str| {
        OpError::new(
            OpErrorKind::BadRequest,
            format!(
                "the Hugging Face endpoint must be an http(s) URL such as {DEFAULT_HF_ENDPOINT}: {why}"
            ),
        )
    };
    let url = reqwest::Url::parse(e).map_err(|err| bad(&err.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("the scheme is not http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL are not allowed (use the token)",
        ));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it needs a host and no query or fragment"));
    }
    Ok(e.to_string())
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    size: Option<u64>,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    sha256: String,
    size: Option<u64>,
}

struct FilePlan {
    path: String,
    /// Blob name: the LFS sha256 or the git blob id; `None` -> ask with `HEAD`.
    etag: Option<String>,
    /// Expected content hash (LFS files).
    sha256: Option<String>,
    size: Option<u64>,
}

/// A failed transfer attempt: worth resuming, or final.
enum Attempt {
    Retry(OpError),
    Fatal(OpError),
}

/// Connection to one endpoint for one repository.
struct Hub {
    client: reqwest::Client,
    /// For `HEAD` without following redirects (the Hub's metadata is on the first answer).
    head_client: reqwest::Client,
    endpoint: String,
    repo: String,
    auth: Option<HeaderValue>,
}

impl Hub {
    fn new(endpoint: String, token: Option<&str>, repo: &str) -> Result<Hub, OpError> {
        crate::install_crypto_provider();
        let auth = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    OpError::new(
                        OpErrorKind::BadRequest,
                        "the Hugging Face token contains characters not allowed in an HTTP header",
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .user_agent(concat!(
                    "spark-agent/",
                    env!("CARGO_PKG_VERSION"),
                    "; hf_hub-compatible"
                ))
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(60))
                .redirect(redirects)
                .build()
                .map_err(|e| {
                    OpError::new(
                        OpErrorKind::Internal,
                        format!(
                            "cannot build an HTTP client: {}",
                            error_chain(&e.without_url())
                        ),
                    )
                })
        };
        Ok(Hub {
            client: build(reqwest::redirect::Policy::limited(10))?,
            head_client: build(reqwest::redirect::Policy::none())?,
            endpoint,
            repo: repo.to_string(),
            auth,
        })
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = &self.auth {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        h
    }

    fn unreachable(&self, e: reqwest::Error) -> OpError {
        let what = if e.is_timeout() {
            "timed out talking to"
        } else {
            "cannot reach"
        };
        OpError::new(
            OpErrorKind::Upstream,
            format!(
                "{what} the Hugging Face endpoint {}: {}",
                self.endpoint,
                error_chain(&e.without_url())
            ),
        )
    }

    /// `GET /api/models/{repo}/revision/{revision}?blobs=true`.
    async fn repo_info(&self, revision: &str) -> Result<RepoInfo, OpError> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            self.repo,
            encode_segment(revision)
        );
        let resp = self
            .client
            .get(&url)
            .headers(self.headers())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = resp.text().await.unwrap_or_default();
            return Err(self.status_error(
                status,
                &headers,
                &body,
                &format!("revision {revision}"),
            ));
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body).map_err(|e| {
            OpError::new(
                OpErrorKind::Upstream,
                format!(
                    "{} answered the file listing of {}@{revision} with something that is not Hub JSON: {e}",
                    self.endpoint, self.repo
                ),
            )
        })
    }

    /// `HEAD` on the resolve URL without following redirects, as `huggingface_hub`
    /// `get_hf_file_metadata` does: (etag, sha256 when LFS, size).
    async fn head_metadata(
        &self,
        url: &str,
        file: &str,
    ) -> Result<(String, Option<String>, Option<u64>), OpError> {
        let resp = self
            .head_client
            .head(url)
            .headers(self.headers())
            .header(header::ACCEPT_ENCODING, "identity")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let h = resp.headers();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.status_error(status, h, "", &format!("file {file}")));
        }
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let linked = get("x-linked-etag").map(|e| normalize_etag(&e));
        let etag = linked
            .clone()
            .or_else(|| get("etag").map(|e| normalize_etag(&e)))
            .filter(|e| valid_etag(e))
            .ok_or_else(|| {
                OpError::new(
                    OpErrorKind::Upstream,
                    format!("{} gave no usable ETag for {file}", self.endpoint),
                )
            })?;
        let size = get("x-linked-size")
            .or_else(|| get("content-length"))
            .and_then(|s| s.parse().ok());
        let sha256 = linked
            .filter(|e| is_sha256_hex(e))
            .map(|e| e.to_ascii_lowercase());
        Ok((etag, sha256, size))
    }

    /// The error for a non-success answer. `what` names the revision or file asked for.
    fn status_error(
        &self,
        status: reqwest::StatusCode,
        headers: &HeaderMap,
        body: &str,
        what: &str,
    ) -> OpError {
        let code = headers
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let server_msg = headers
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| server_message(body));
        let said = if server_msg.is_empty() {
            String::new()
        } else {
            format!(": {server_msg}")
        };
        let (repo, ep, n) = (&self.repo, &self.endpoint, status.as_u16());
        match (n, code) {
            (_, "RepoNotFound") => OpError::new(
                OpErrorKind::NotFound,
                format!(
                    "repository {repo} not found on {ep} (HTTP {n}); check the name, or if it is private or gated, the token"
                ),
            ),
            (404, "RevisionNotFound") => OpError::new(
                OpErrorKind::NotFound,
                format!("{what} not found in {repo} on {ep}{said}"),
            ),
            (404, "EntryNotFound") => OpError::new(
                OpErrorKind::NotFound,
                format!("{what} not found in {repo} on {ep}{said}"),
            ),
            (401 | 403, _) | (_, "GatedRepo") => OpError::new(
                OpErrorKind::Unauthorized,
                format!("{repo}: {GATED_MESSAGE} (HTTP {n} from {ep}{said})"),
            ),
            (404, _) => OpError::new(
                OpErrorKind::NotFound,
                format!("{repo} ({what}) not found on {ep} (HTTP 404){said}"),
            ),
            _ => OpError::new(
                OpErrorKind::Upstream,
                format!("{ep} answered HTTP {n} for {repo} {what}{said}"),
            ),
        }
    }

    /// One attempt at fetching the rest of a blob into `writer`.
    async fn transfer(
        &self,
        url: &str,
        file: &str,
        writer: &mut BlobWriter,
        size: Option<u64>,
        report: &(dyn Fn(u64, Option<u64>) + Sync),
    ) -> Result<(), Attempt> {
        if let Some(s) = size {
            if writer.len > s {
                writer.restart().await.map_err(Attempt::Fatal)?;
            } else if writer.len == s && s > 0 {
                return Ok(());
            }
        }
        let offset = writer.len;
        let mut rb = self.client.get(url).headers(self.headers());
        if offset > 0 {
            rb = rb.header(header::RANGE, format!("bytes={offset}-"));
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Attempt::Retry(self.unreachable(e)))?;
        let status = resp.status();
        match status.as_u16() {
            206 if offset > 0 => {
                let start = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    writer.restart().await.map_err(Attempt::Fatal)?;
                    return Err(Attempt::Retry(OpError::new(
                        OpErrorKind::Upstream,
                        format!(
                            "{} answered a resume of {file} with the wrong range",
                            self.endpoint
                        ),
                    )));
                }
            }
            200 | 206 => {
                if offset > 0 {
                    // The server ignored the range: start again from zero.
                    writer.restart().await.map_err(Attempt::Fatal)?;
                }
            }
            416 if offset > 0 => {
                writer.restart().await.map_err(Attempt::Fatal)?;
                return Err(Attempt::Retry(OpError::new(
                    OpErrorKind::Upstream,
                    format!(
                        "{} refused to resume {file} at byte {offset}",
                        self.endpoint
                    ),
                )));
            }
            _ => {
                let headers = resp.headers().clone();
                let body = resp.text().await.unwrap_or_default();
                let err = self.status_error(status, &headers, &body, &format!("file {file}"));
                return Err(if status.is_server_error() || status.as_u16() == 429 {
                    Attempt::Retry(err)
                } else {
                    Attempt::Fatal(err)
                });
            }
        }
        let total = size.or_else(|| resp.content_length().map(|l| l + writer.len));
        let mut last = Instant::now();
        report(writer.len, total);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Attempt::Retry(OpError::new(
                    OpErrorKind::Upstream,
                    format!(
                        "download of {file} from {} was interrupted after {} bytes: {}",
                        self.endpoint,
                        writer.len,
                        error_chain(&e.without_url())
                    ),
                ))
            })?;
            writer.write(chunk).await.map_err(Attempt::Fatal)?;
            if let Some(s) = size
                && writer.len > s
            {
                return Err(Attempt::Fatal(OpError::new(
                    OpErrorKind::Upstream,
                    format!(
                        "{} sent more than the {s} bytes announced for {file}",
                        self.endpoint
                    ),
                )));
            }
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                report(writer.len, total);
            }
        }
        if let Some(s) = size
            && writer.len < s
        {
            return Err(Attempt::Retry(OpError::new(
                OpErrorKind::Upstream,
                format!(
                    "download of {file} from {} was interrupted: the body ended after {} of {s} bytes",
                    self.endpoint, writer.len
                ),
            )));
        }
        Ok(())
    }
}

/// A short, single-line excerpt of an error body (Hub JSON `{"error": ...}` or text).
fn server_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_string()
}

/// `bytes 100-199/1000` -> 100.
fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, _) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// Blobs being written by this process: one writer per blob.
static IN_FLIGHT: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

struct InFlight(PathBuf);

impl InFlight {
    /// Claim a blob; waits a little for a writer that is just finishing (a cancelled download).
    async fn acquire(blob: &Path) -> Result<InFlight, OpError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut set = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
                if set.insert(blob.to_path_buf()) {
                    return Ok(InFlight(blob.to_path_buf()));
                }
            }
            if Instant::now() >= deadline {
                return Err(OpError::new(
                    OpErrorKind::Conflict,
                    format!("{} is already being downloaded", blob.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut set = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.0);
    }
}

enum WriteCmd {
    Data(Box<dyn AsRef<[u8]> + Send>),
    Restart,
}

/// What a finished writer reports.
struct Written {
    len: u64,
    sha256: Option<String>,
}

/// Appends to `blobs/<etag>.incomplete` on a blocking thread, hashing as it goes. The thread
/// shares the [`InFlight`] claim, so a cancelled download releases the blob only after its last
/// write landed: a resume always sees the true length.
struct BlobWriter {
    tx: Option<mpsc::Sender<WriteCmd>>,
    task: tokio::task::JoinHandle<Result<Written, OpError>>,
    /// Bytes in the file once every queued chunk is written.
    len: u64,
}

impl BlobWriter {
    async fn start(
        path: PathBuf,
        hash: bool,
        guard: Arc<InFlight>,
        alive: mpsc::Sender<()>,
    ) -> Result<BlobWriter, OpError> {
        let (tx, mut rx) = mpsc::channel::<WriteCmd>(16);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<u64, OpError>>();
        let task = tokio::task::spawn_blocking(move || {
            let _claims = (guard, alive);
            let fail = |e: io::Error| io_error(&path, &e);
            let opened = (|| -> io::Result<(fs::File, u64, Option<Sha256>)> {
                let mut file = fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)?;
                let mut hasher = hash.then(Sha256::new);
                let mut len = 0u64;
                // Hash what a previous attempt left, so the check covers the whole blob.
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    len += n as u64;
                    if hasher.is_none() {
                        // Only the length is needed.
                        len = file.metadata()?.len();
                        break;
                    }
                }
                Ok((file, len, hasher))
            })();
            let (mut file, mut len, mut hasher) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(v.1));
                    v
                }
                Err(e) => {
                    let err = fail(e);
                    let _ = ready_tx.send(Err(err.clone()));
                    return Err(err);
                }
            };
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    WriteCmd::Data(chunk) => {
                        let data = (*chunk).as_ref();
                        file.write_all(data).map_err(fail)?;
                        if let Some(h) = hasher.as_mut() {
                            h.update(data);
                        }
                        len += data.len() as u64;
                    }
                    WriteCmd::Restart => {
                        file.set_len(0).map_err(fail)?;
                        len = 0;
                        if hasher.is_some() {
                            hasher = Some(Sha256::new());
                        }
                    }
                }
            }
            file.flush().map_err(fail)?;
            Ok(Written {
                len,
                sha256: hasher.map(|h| hex::encode(h.finalize())),
            })
        });
        let len = match ready_rx.await {
            Ok(r) => r?,
            Err(_) => {
                return Err(OpError::new(
                    OpErrorKind::Internal,
                    "the blob writer stopped before it started",
                ));
            }
        };
        Ok(BlobWriter {
            tx: Some(tx),
            task,
            len,
        })
    }

    async fn send(&mut self, cmd: WriteCmd) -> Result<(), OpError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(cmd).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its error says why.
        self.tx = None;
        match (&mut self.task).await {
            Ok(Err(e)) => Err(e),
            _ => Err(OpError::new(
                OpErrorKind::Internal,
                "the blob writer stopped unexpectedly",
            )),
        }
    }

    async fn write<B: AsRef<[u8]> + Send + 'static>(&mut self, chunk: B) -> Result<(), OpError> {
        let n = chunk.as_ref().len() as u64;
        self.send(WriteCmd::Data(Box::new(chunk))).await?;
        self.len += n;
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), OpError> {
        self.send(WriteCmd::Restart).await?;
        self.len = 0;
        Ok(())
    }

    /// Wait for every write; the file's length and hash.
    async fn finish(mut self) -> Result<Written, OpError> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(OpError::new(
                OpErrorKind::Internal,
                format!("the blob writer failed: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn hf_cache_location_follows_huggingface_hub() {
        let p = |vars: &[(&str, &str)]| default_hf_cache(env_of(vars));
        assert_eq!(
            p(&[("HOME", "/home/u")]),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]),
            PathBuf::from("/xdg/huggingface/hub")
        );
        assert_eq!(
            p(&[
                ("HOME", "/home/u"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HF_HOME", "/hf")
            ]),
            PathBuf::from("/hf/hub")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("HF_HOME", "~/hfh")]),
            PathBuf::from("/home/u/hfh/hub")
        );
        assert_eq!(
            p(&[
                ("HOME", "/home/u"),
                ("HF_HOME", "/hf"),
                ("HF_HUB_CACHE", "/cache")
            ]),
            PathBuf::from("/cache")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]),
            PathBuf::from("/legacy")
        );
        assert_eq!(
            p(&[
                ("HUGGINGFACE_HUB_CACHE", "/legacy"),
                ("HF_HUB_CACHE", "/new")
            ]),
            PathBuf::from("/new")
        );
        assert_eq!(
            p(&[
                ("HOME", "/home/u"),
                ("HF_HUB_CACHE", "~/c"),
                ("HF_HOME", "")
            ]),
            PathBuf::from("/home/u/c")
        );
        assert_eq!(
            p(&[
                ("HOME", "/home/u"),
                ("DATA", "/data"),
                ("HF_HOME", "$DATA/hf")
            ]),
            PathBuf::from("/data/hf/hub")
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("HF_HOME", "${NOPE}/hf")]),
            PathBuf::from("${NOPE}/hf/hub")
        );
        // Empty means unset.
        assert_eq!(
            p(&[
                ("HOME", "/home/u"),
                ("HF_HUB_CACHE", ""),
                ("XDG_CACHE_HOME", "")
            ]),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
    }

    #[test]
    fn repo_file_names_are_checked() {
        for ok in [
            "config.json",
            "a/b/model-00001-of-00002.safetensors",
            "x..y",
            ".gitattributes",
        ] {
            assert!(validate_repo_file(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\\b",
            "a//b",
            "a/./b",
            "a/",
            "a\nb",
            "..",
        ] {
            assert!(validate_repo_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn small_pure_helpers() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
        assert!(valid_etag("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"));
        assert!(!valid_etag("../x") && !valid_etag("") && !valid_etag("a/b"));
        assert!(valid_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!valid_commit("main") && !valid_commit("../../x"));
        assert_eq!(content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(content_range_start("bytes */1000"), None);
        assert_eq!(encode_path("a b/c%d.json"), "a%20b/c%25d.json");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(
            repo_id_from_dir("models--org--name").as_deref(),
            Some("org/name")
        );
        assert_eq!(repo_id_from_dir("models--gpt2").as_deref(), Some("gpt2"));
        assert_eq!(repo_id_from_dir("datasets--a--b"), None);
        assert_eq!(
            normalize_endpoint("https://huggingface.co/")
                .ok()
                .as_deref(),
            Some("https://huggingface.co")
        );
        assert!(normalize_endpoint("ftp://x").is_err());
        assert!(normalize_endpoint("https://user:pw@x").is_err());
        assert!(normalize_endpoint("not a url").is_err());
        assert_eq!(
            server_message("{\"error\":\"Repository not found\"}"),
            "Repository not found"
        );
    }

    #[test]
    fn config_summary() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"architectures":["Qwen3MoeForCausalLM", 3],"model_type":"qwen3_moe",
                "quantization_config":{"quant_method":"fp8"},"torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        let c = summarize_config(&v).unwrap();
        assert_eq!(c.architectures, vec!["Qwen3MoeForCausalLM"]);
        assert_eq!(c.model_type.as_deref(), Some("qwen3_moe"));
        assert_eq!(c.quantization.as_deref(), Some("fp8"));
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"dtype":"float16","text_config":{"torch_dtype":"x"}}"#)
                .unwrap();
        let c = summarize_config(&v).unwrap();
        assert!(c.architectures.is_empty() && c.model_type.is_none() && c.quantization.is_none());
        assert_eq!(c.dtype.as_deref(), Some("float16"));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"text_config":{"dtype":"fp8"}}"#).unwrap();
        assert_eq!(summarize_config(&v).unwrap().dtype.as_deref(), Some("fp8"));
        assert!(summarize_config(&serde_json::json!([1])).is_none());
    }

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn link(repo: &Path, commit: &str, file: &str, blob: &str) {
        let p = repo.join("snapshots").join(commit).join(file);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let depth = file.split('/').count() + 1;
        symlink(format!("{}blobs/{blob}", "../".repeat(depth)), p).unwrap();
    }

    #[test]
    fn scan_hf_cache_and_local_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let c1 = "1111111111111111111111111111111111111111";
        let c2 = "2222222222222222222222222222222222222222";
        // Two revisions sharing a blob, a nested file, refs main and refs/pr/1.
        let r = hub.join("models--org--two");
        write(
            &r.join("blobs/aaa"),
            br#"{"architectures":["LlamaForCausalLM"],"model_type":"llama"}"#,
        );
        write(&r.join("blobs/bbb"), &[0u8; 1000]);
        write(&r.join("blobs/ccc"), &[1u8; 500]);
        link(&r, c1, "config.json", "aaa");
        link(&r, c1, "model.safetensors", "bbb");
        link(&r, c2, "config.json", "aaa");
        link(&r, c2, "model.safetensors", "bbb");
        link(&r, c2, "sub/dir/extra.bin", "ccc");
        write(&r.join("refs/main"), c2.as_bytes());
        write(&r.join("refs/refs/pr/1"), c1.as_bytes());
        let blob_total = 1000 + 500 + fs::metadata(r.join("blobs/aaa")).unwrap().len();
        // An interrupted download with garbage config.
        let p = hub.join("models--org--partial");
        write(&p.join("blobs/ddd"), b"{not json");
        write(&p.join("blobs/eee.incomplete"), &[0u8; 300]);
        link(&p, c1, "config.json", "ddd");
        write(&p.join("refs/main"), c1.as_bytes());
        // Not models.
        write(&hub.join("datasets--org--data/blobs/x"), b"x");
        write(&hub.join("version.txt"), b"1");
        fs::create_dir_all(hub.join(".locks/models--org--two")).unwrap();
        // Local roots: one model dir, one plain dir, one missing root.
        let local = tmp.path().join("local");
        write(
            &local.join("my-ft/config.json"),
            br#"{"model_type":"qwen2","dtype":"bfloat16"}"#,
        );
        write(&local.join("my-ft/model.safetensors"), &[2u8; 2000]);
        write(&local.join("q4/model.Q4_K_M.gguf"), &[3u8; 700]);
        write(&local.join("notes/readme.txt"), b"hello");
        let store = ModelStore::new(hub.clone(), vec![local.clone(), tmp.path().join("missing")]);
        let inv = store.scan();

        let keys: Vec<String> = inv
            .models
            .iter()
            .map(|m| m.repo_id.clone().unwrap_or_else(|| m.path.clone()))
            .collect();
        // Sorted by repo id or path: the local paths ("/...") sort first.
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(keys[2..], ["org/partial", "org/two"]);
        assert!(keys[0] < keys[1]);

        let two = &inv.models[3];
        assert_eq!(two.source, ModelSource::HfCache);
        assert!(two.complete);
        // Every file once: the blobs (shared by both snapshots) and the two 40-byte refs.
        assert_eq!(two.size_bytes, blob_total + 80);
        assert_eq!(two.incomplete_bytes, 0);
        assert_eq!(two.revisions.len(), 2);
        let rev2 = two.revisions.iter().find(|r| r.commit == c2).unwrap();
        assert_eq!(rev2.refs, vec!["main"]);
        assert_eq!(rev2.files, 3);
        assert_eq!(rev2.size_bytes, blob_total);
        let rev1 = two.revisions.iter().find(|r| r.commit == c1).unwrap();
        assert_eq!(rev1.refs, vec!["refs/pr/1"]);
        assert_eq!(rev1.files, 2);
        let cfg = two.config.as_ref().unwrap();
        assert_eq!(cfg.architectures, vec!["LlamaForCausalLM"]);
        assert!(two.modified_ms > 0);

        let partial = &inv.models[2];
        assert!(!partial.complete);
        assert_eq!(partial.incomplete_bytes, 300);
        assert_eq!(partial.size_bytes, 300 + 9 + 40);
        assert!(partial.config.is_none());
        assert!(
            inv.warnings.iter().any(|w| w.contains("not valid JSON")),
            "{:?}",
            inv.warnings
        );
        assert!(
            inv.warnings
                .iter()
                .any(|w| w.contains("missing") && w.contains("does not exist"))
        );

        let ft = inv
            .models
            .iter()
            .find(|m| m.path.ends_with("my-ft"))
            .unwrap();
        assert_eq!(ft.source, ModelSource::LocalDir);
        assert_eq!(ft.repo_id, None);
        assert_eq!(ft.size_bytes, 2000 + 41);
        assert!(ft.complete);
        assert_eq!(
            ft.config.as_ref().unwrap().dtype.as_deref(),
            Some("bfloat16")
        );
        let q4 = inv.models.iter().find(|m| m.path.ends_with("q4")).unwrap();
        assert_eq!(q4.size_bytes, 700);
        assert!(q4.config.is_none());
        assert!(!inv.models.iter().any(|m| m.path.ends_with("notes")));
    }

    #[test]
    fn scan_of_missing_cache_is_empty_and_broken_links_warn() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ModelStore::new(tmp.path().join("nope"), vec![]);
        let inv = store.scan();
        assert!(inv.models.is_empty() && inv.warnings.is_empty());

        let hub = tmp.path().join("hub");
        let r = hub.join("models--gpt2");
        link(
            &r,
            "3333333333333333333333333333333333333333",
            "config.json",
            "gone",
        );
        let inv = ModelStore::new(hub, vec![]).scan();
        assert_eq!(inv.models.len(), 1);
        assert_eq!(inv.models[0].repo_id.as_deref(), Some("gpt2"));
        assert!(!inv.models[0].complete);
        assert!(inv.warnings.iter().any(|w| w.contains("broken link")));
    }

    #[test]
    fn delete_stays_inside_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let local = tmp.path().join("local");
        let outside = tmp.path().join("outside");
        write(&hub.join("models--a--b/blobs/x"), &[0u8; 10]);
        write(&local.join("m/config.json"), b"{}");
        write(&outside.join("keep/config.json"), b"{}");
        symlink(&outside, local.join("escape")).unwrap();
        let store = ModelStore::new(hub.clone(), vec![local.clone()]);

        let err = store.delete(&ModelTarget::Repo("../x".into())).unwrap_err();
        assert_eq!(err.kind, OpErrorKind::BadRequest);
        let err = store
            .delete(&ModelTarget::Repo("a/none".into()))
            .unwrap_err();
        assert_eq!(err.kind, OpErrorKind::NotFound);
        for p in [
            outside.display().to_string(),
            format!("{}/../outside", local.display()),
            local.join("escape").display().to_string(),
            local.display().to_string(),
            hub.display().to_string(),
        ] {
            let err = store.delete(&ModelTarget::Path(p.clone())).unwrap_err();
            assert_eq!(err.kind, OpErrorKind::Refused, "{p}: {}", err.message);
            assert!(
                err.message.contains(&local.display().to_string()),
                "{}",
                err.message
            );
        }
        let err = store
            .delete(&ModelTarget::Path("relative/x".into()))
            .unwrap_err();
        assert_eq!(err.kind, OpErrorKind::BadRequest);
        let err = store
            .delete(&ModelTarget::Path(local.join("nope").display().to_string()))
            .unwrap_err();
        assert_eq!(err.kind, OpErrorKind::NotFound);
        assert!(outside.join("keep/config.json").exists());

        let (removed, freed) = store.delete(&ModelTarget::Repo("a/b".into())).unwrap();
        assert_eq!(freed, 10);
        assert!(!removed.exists());
        let (_, freed) = store
            .delete(&ModelTarget::Path(local.join("m").display().to_string()))
            .unwrap();
        assert_eq!(freed, 2);
    }
}
