//! The agent's identity on disk: what `join` writes and `run` reads.
//!
//! Layout of the state directory:
//! - `key.pem`: the agent's private key (mode 0600; made here, never sent anywhere);
//! - `cert.pem`: the client certificate the controller signed;
//! - `ca.pem`: the controller's CA certificate (pinned at enrollment);
//! - `identity.json`: node id, node name and the gateway addresses to dial.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityFile {
    pub node_id: String,
    pub node_name: String,
    pub gateways: Vec<String>,
}

/// Everything the agent needs to open the link.
#[derive(Clone)]
pub struct Identity {
    pub node_id: String,
    pub node_name: String,
    pub gateways: Vec<String>,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("node_name", &self.node_name)
            .field("gateways", &self.gateways)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {message}; run `spark-agent join` again with a new token")]
    Damaged { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const IDENTITY: &str = "identity.json";

impl Identity {
    /// Load the identity, or `None` if this state directory has never been enrolled.
    pub fn load(dir: &Path) -> Result<Option<Identity>, StateError> {
        let id_path = dir.join(IDENTITY);
        if !id_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| -> Result<String, StateError> {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(io_err(&p))
        };
        let file: IdentityFile =
            serde_json::from_str(&read(IDENTITY)?).map_err(|e| StateError::Damaged {
                path: id_path.clone(),
                message: e.to_string(),
            })?;
        Ok(Some(Identity {
            node_id: file.node_id,
            node_name: file.node_name,
            gateways: file.gateways,
            key_pem: read("key.pem")?,
            cert_pem: read("cert.pem")?,
            ca_pem: read("ca.pem")?,
        }))
    }

    /// Write every file; the key with mode 0600. Files are replaced atomically so a crash never
    /// leaves half an identity.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_atomic(dir, "key.pem", self.key_pem.as_bytes(), 0o600)?;
        write_atomic(dir, "cert.pem", self.cert_pem.as_bytes(), 0o644)?;
        write_atomic(dir, "ca.pem", self.ca_pem.as_bytes(), 0o644)?;
        self.save_identity_file(dir)
    }

    /// Rewrite only `identity.json` (after a rename).
    pub fn save_identity_file(&self, dir: &Path) -> Result<(), StateError> {
        let file = IdentityFile {
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            gateways: self.gateways.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        write_atomic(dir, IDENTITY, &json, 0o644)
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dest).map_err(io_err(&dest))
}
