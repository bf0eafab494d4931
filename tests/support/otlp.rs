//! A real OTLP/gRPC trace receiver for tests: `otlp_receiver.py` beside this file, grpcio serving
//! the `TraceService` of PyPI's `opentelemetry-proto`, writing each span it receives as a JSON
//! line that [`OtlpReceiver::spans`] reads back.
//!
//! Owns starting and stopping that process and waiting for spans. It must never listen on
//! anything but loopback, and never leave the process running once the receiver is dropped.
//! Needs python3 with grpcio and opentelemetry-proto (`scripts/install-test-deps.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::ChildGuard;
use super::BoxError;

/// The receiver script.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py")
}

/// Whether python3 can run the receiver; when not, skip loudly, or panic under `CI=true`.
pub fn require_receiver(test: &str) -> bool {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc",
        ])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    let help =
        "python3 cannot import grpc and opentelemetry-proto: run scripts/install-test-deps.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help} (CI=true: a missing test dependency fails the build)");
    }
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!! SKIPPED {test}: {help}\n{bar}\n");
    false
}

/// A running receiver.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// The process.
    pub child: ChildGuard,
    /// Its loopback port.
    pub port: u16,
    /// The JSON-lines file it appends spans to.
    pub spans_path: PathBuf,
}

impl OtlpReceiver {
    /// Start on `port` (0: any free port), writing spans to `<dir>/spans.jsonl` (appending, so
    /// a receiver restarted on the same port and directory keeps the earlier spans), and wait
    /// until it listens.
    pub async fn start(dir: &Path, port: u16) -> Result<OtlpReceiver, BoxError> {
        let spans_path = dir.join("spans.jsonl");
        let mut command = Command::new("python3");
        command.arg(script()).arg(port.to_string()).arg(&spans_path);
        let mut child = ChildGuard::spawn("otlp-receiver", command, dir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::fs::read_to_string(&child.stdout_path).unwrap_or_default();
            if let Some(port) = out
                .lines()
                .find_map(|l| l.strip_prefix("listening "))
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                return Ok(OtlpReceiver {
                    child,
                    port,
                    spans_path,
                });
            }
            if child.exited().is_some() || Instant::now() > deadline {
                return Err(
                    format!("OTLP receiver did not start\n{}", child.log_tail(3000)).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        read_spans(&self.spans_path)
    }

    /// Wait up to `timeout` for a span `matches` accepts; the error lists what did arrive.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, BoxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if let Some(span) = spans.iter().find(|s| matches(s)) {
                return Ok(span.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no span {what} within {timeout:?}; received {}:\n{}",
                    spans.len(),
                    spans
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the receiver (SIGTERM, then SIGKILL): the port stops answering.
    pub fn stop(&mut self) {
        self.child.terminate(Duration::from_secs(2));
    }
}

/// The spans in a receiver's JSON-lines file (a line being written is skipped).
pub fn read_spans(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
