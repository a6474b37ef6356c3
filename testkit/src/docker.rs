//! A private Docker engine per test: `dockerd` on a temporary socket, data root and exec root,
//! torn down when dropped. Test images are built `FROM scratch` from static binaries (no
//! registry is reachable), tagged by content hash so each engine builds each image once.
//!
//! Prerequisites: `dockerd` (Debian's `docker.io`), root, and for the busybox image Debian's
//! `busybox-static`. Where they are missing a test says so loudly and returns; with `CI=true`
//! a missing prerequisite fails the test instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A running private `dockerd`.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Fail in CI, skip loudly elsewhere. Returns `None` so callers can `let .. else { return }`.
pub fn missing_prerequisite<T>(what: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("missing test prerequisite (CI=true makes this a failure): {what}");
    }
    eprintln!(
        "\n!!!!!!!!!! SKIPPED: missing test prerequisite: {what}\n\
         !!!!!!!!!! install it (see .ci/run) to run this test\n"
    );
    None
}

pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Dockerd {
    /// Start a private engine, or explain why not (see [`missing_prerequisite`]).
    pub async fn start() -> Option<Dockerd> {
        if which("dockerd").is_none() {
            return missing_prerequisite("dockerd not found (Debian package docker.io)");
        }
        if which("docker").is_none() {
            return missing_prerequisite("docker CLI not found (Debian package docker.io)");
        }
        if !is_root() {
            return missing_prerequisite("a private dockerd needs root");
        }
        let dir = tempfile::Builder::new()
            .prefix("sc-dockerd-")
            .tempdir_in("/tmp")
            .expect("temp dir for dockerd");
        let mut d = Dockerd { dir, child: None };
        d.spawn().await;
        Some(d)
    }

    /// `unix://...` for `DOCKER_HOST` / the agent's engine endpoint.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// Directory private to this engine, for mount roots and fixtures.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let root = self.dir.path();
        std::fs::write(root.join("daemon.json"), "{}").expect("daemon.json");
        let log = std::fs::File::create(root.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.endpoint())
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
                panic!("private dockerd did not come up within 30 s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the engine (SIGTERM, wait). Containers stop with it.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || terminate(child)).await;
        }
    }

    /// Stop and start again on the same socket and data root.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Run the docker CLI against this engine; stdout on success, stderr on failure.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .env("DOCKER_HOST", self.endpoint())
            .args(args)
            .output()
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Build a `FROM scratch` image holding `binary` at `/bin/<name>` (plus any extra files),
    /// tagged `spark-test/<name>:<content hash>`; reused if this engine already has it.
    pub fn image_from_binary(&self, name: &str, binary: &Path, entrypoint: &[&str]) -> String {
        let bytes = std::fs::read(binary)
            .unwrap_or_else(|e| panic!("read test binary {}: {e}", binary.display()));
        let dockerfile = format!(
            "FROM scratch\nCOPY {name} /bin/{name}\nENTRYPOINT {}\n",
            serde_json::to_string(entrypoint).expect("entrypoint json")
        );
        let mut h = Sha256::new();
        h.update(&bytes);
        h.update(dockerfile.as_bytes());
        let tag = format!("spark-test/{name}:{}", &hex::encode(h.finalize())[..16]);
        if self.docker(&["image", "inspect", &tag]).is_ok() {
            return tag;
        }
        let ctx = tempfile::tempdir().expect("build context");
        std::fs::write(ctx.path().join(name), &bytes).expect("copy binary");
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        let mut perms = std::fs::metadata(ctx.path().join(name))
            .expect("meta")
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(ctx.path().join(name), perms).expect("chmod");
        let ctx_path = ctx.path().display().to_string();
        self.docker(&["build", "-q", "-t", &tag, &ctx_path])
            .unwrap_or_else(|e| panic!("docker build {tag}: {e}"));
        tag
    }

    /// A busybox image (`/bin/busybox`, entrypoint busybox) for generic containers.
    pub fn busybox_image(&self) -> Option<String> {
        let Some(bin) = which("busybox").filter(|p| is_static(p)) else {
            return missing_prerequisite("a static busybox (Debian package busybox-static)");
        };
        Some(self.image_from_binary("busybox", &bin, &["/bin/busybox"]))
    }

    /// The fake-upstreams image (`/bin/spark-fake`), built statically once per run.
    pub fn fake_image(&self) -> String {
        let bin = static_fake_binary();
        self.image_from_binary("spark-fake", bin, &["/bin/spark-fake"])
    }
}

/// SIGTERM, wait up to 20 s, then SIGKILL.
fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn is_static(p: &Path) -> bool {
    // A static ELF has no PT_INTERP; `file`-free check: look for the loader path string.
    std::fs::read(p)
        .map(|b| {
            !b.windows(b"ld-linux".len())
                .take(64 * 1024)
                .any(|w| w == b"ld-linux")
        })
        .unwrap_or(false)
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Remove every container first so the engine's mounts go away with it.
        let _ = Command::new("sh")
            .arg("-c")
            .arg("docker ps -aq | xargs -r docker rm -f")
            .env("DOCKER_HOST", self.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        // Overlay mounts may linger briefly; unmount anything left under the data root.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o '{}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

/// Build `spark-fake` as a static binary (once per test process; cargo caches across runs).
pub fn static_fake_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("target/static");
        let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_TARGET_DIR")
            .args([
                "build",
                "--quiet",
                "-p",
                "spark-fakes",
                "--bin",
                "spark-fake",
                "--target",
                &triple,
                "--target-dir",
            ])
            .arg(&target_dir)
            .status()
            .expect("run cargo to build the static spark-fake");
        assert!(status.success(), "building the static spark-fake failed");
        target_dir.join(triple).join("debug/spark-fake")
    })
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
