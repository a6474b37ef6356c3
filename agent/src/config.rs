//! The agent's configuration: plain data, parsed by pure functions.
//!
//! Precedence, lowest first: built-in defaults, the TOML config file, environment variables
//! (`SPARK_AGENT_*`), command-line flags. `spark-agent config` prints the result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::LinkOptions;

/// The config file, every key optional.
///
/// ```toml
/// state_dir = "/var/lib/spark-agent"
/// gateways = ["192.168.1.10:9443"]   # overrides the addresses learned at enrollment
/// telemetry_interval_ms = 1000
/// log_format = "text"                # or "json"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub gateways: Option<Vec<String>>,
    pub telemetry_interval_ms: Option<u64>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Values given on the command line or in the environment (clap merges those two).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub gateways: Vec<String>,
    pub log_format: Option<LogFormat>,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// Empty: use the addresses stored at enrollment.
    pub gateways: Vec<String>,
    pub telemetry_interval_ms: u64,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Parse a config file's text. Pure.
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Read and parse the config file, if one was named.
pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text, path)
}

/// Merge defaults, file and overrides. Pure, given `default_state_dir`.
pub fn resolve(
    file: FileConfig,
    over: Overrides,
    default_state_dir: PathBuf,
) -> Result<AgentConfig, ConfigError> {
    let gateways = if over.gateways.is_empty() {
        file.gateways.unwrap_or_default()
    } else {
        over.gateways
    };
    if let Some(bad) = gateways
        .iter()
        .find(|g| !spark_common::token::is_host_port(g))
    {
        return Err(ConfigError::Invalid(format!(
            "gateway '{bad}' is not host:port (e.g. 192.168.1.10:9443)"
        )));
    }
    let telemetry_interval_ms = file.telemetry_interval_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&telemetry_interval_ms) {
        return Err(ConfigError::Invalid(format!(
            "telemetry_interval_ms must be between 100 and 60000, not {telemetry_interval_ms}"
        )));
    }
    Ok(AgentConfig {
        state_dir: over
            .state_dir
            .or(file.state_dir)
            .unwrap_or(default_state_dir),
        gateways,
        telemetry_interval_ms,
        log_format: over.log_format.or(file.log_format).unwrap_or_default(),
    })
}

/// Where the agent keeps its identity when nothing says otherwise: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/spark-agent`, else `~/.local/state/spark-agent`,
/// else `/var/lib/spark-agent`.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return PathBuf::from(d).join("spark-agent");
    }
    if let Some(h) = env("HOME") {
        return PathBuf::from(h).join(".local/state/spark-agent");
    }
    PathBuf::from("/var/lib/spark-agent")
}

impl AgentConfig {
    pub fn link_options(&self) -> LinkOptions {
        LinkOptions {
            telemetry_interval: Duration::from_millis(self.telemetry_interval_ms),
            ..LinkOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileConfig, ConfigError> {
        parse_file(text, Path::new("agent.toml"))
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let f = file(
            "state_dir = \"/from/file\"\ngateways = [\"10.0.0.1:9443\"]\nlog_format = \"json\"",
        )
        .unwrap();
        let cfg = resolve(f.clone(), Overrides::default(), "/default".into()).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/from/file"));
        assert_eq!(cfg.gateways, vec!["10.0.0.1:9443"]);
        assert_eq!(cfg.log_format, LogFormat::Json);
        let over = Overrides {
            state_dir: Some("/from/flag".into()),
            gateways: vec!["10.0.0.2:9443".into()],
            log_format: Some(LogFormat::Text),
        };
        let cfg = resolve(f, over, "/default".into()).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.gateways, vec!["10.0.0.2:9443"]);
        assert_eq!(cfg.log_format, LogFormat::Text);
        let cfg = resolve(
            FileConfig::default(),
            Overrides::default(),
            "/default".into(),
        )
        .unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/default"));
        assert_eq!(cfg.telemetry_interval_ms, 1000);
    }

    #[test]
    fn bad_files_and_values_say_what_is_wrong() {
        let err = file("stat_dir = \"/x\"").unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("stat_dir"),
            "{err}"
        );
        let err = resolve(
            file("gateways = [\"nope\"]").unwrap(),
            Overrides::default(),
            "/d".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'nope'"), "{err}");
        let err = resolve(
            file("telemetry_interval_ms = 5").unwrap(),
            Overrides::default(),
            "/d".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("telemetry_interval_ms"), "{err}");
    }
}
