//! Reload under load, through the real Envoy: while several workloads call the lab
//! continuously, the bundle file is swapped at least 100 times between two revisions that decide
//! one route differently, with invalid bundles in between. Every response must be exactly what
//! one of the two valid revisions decides for that request, and no request may fail with a 5xx
//! or a connection error.
//!
//! Needs Envoy (see tests/envoy_e2e.rs): skipped loudly without it, except under `CI=true`.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::{Protocol, RawRequest};
use support::{Sidecar, SidecarOptions};

/// Revision `rev` of the shipped bundle; odd revisions drop GET from `ehr-reads-lab-results`
/// (so `GET /results/..` by ehr flips between allow and default_deny), even ones keep it.
fn variant(shipped: &str, rev: u64) -> String {
    let mut text = shipped.replacen("revision: 1\n", &format!("revision: {rev}\n"), 1);
    if rev % 2 == 1 {
        text = text.replacen(
            "    methods: [GET, HEAD]\n    paths: [\"/results\", \"/results/**\"]",
            "    methods: [HEAD]\n    paths: [\"/results\", \"/results/**\"]",
            1,
        );
    }
    text
}

/// Write atomically, the way deployment tools do (write aside, rename over).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write bundle");
    std::fs::rename(&tmp, path).expect("rename bundle");
}

/// The statuses a request may get under either valid revision.
struct Probe {
    caller: &'static str,
    method: &'static str,
    path: &'static str,
    allowed: &'static [u16],
}

const PROBES: &[Probe] = &[
    // The route the two revisions disagree on.
    Probe {
        caller: "ehr",
        method: "GET",
        path: "/results/42",
        allowed: &[200, 403],
    },
    // Routes both revisions decide the same way.
    Probe {
        caller: "ehr",
        method: "POST",
        path: "/orders",
        allowed: &[200],
    },
    Probe {
        caller: "pharmacy",
        method: "GET",
        path: "/results/42",
        allowed: &[403],
    },
    Probe {
        caller: "reflab",
        method: "GET",
        path: "/results/42",
        allowed: &[403],
    },
    Probe {
        caller: "imaging",
        method: "GET",
        path: "/healthz",
        allowed: &[200],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_swaps_under_load_never_misjudge_or_fail() {
    let Some(envoy) =
        support::process::require_envoy("hundred_swaps_under_load_never_misjudge_or_fail")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle.yaml");
    let shipped = std::fs::read_to_string(support::shipped_bundle()).expect("shipped bundle");
    replace(&bundle, &variant(&shipped, 2));
    let mut options = SidecarOptions::shipped("lab");
    options.bundle = bundle.clone();
    options.wardgate_args = vec!["--poll-interval".into(), "50ms".into()];
    let sidecar = Arc::new(
        Sidecar::start(&envoy, &options)
            .await
            .expect("start wardgate + Envoy"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (i, probe) in PROBES.iter().enumerate() {
        let sidecar = Arc::clone(&sidecar);
        let stop = Arc::clone(&stop);
        let checked = Arc::clone(&checked);
        let protocol = if i % 2 == 0 {
            Protocol::Http1
        } else {
            Protocol::Http2
        };
        workers.push(tokio::spawn(async move {
            let client = sidecar.client(Some(probe.caller), protocol).map_err(|e| e.to_string())?;
            let request = RawRequest::new(probe.method, probe.path);
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .send(&request)
                    .await
                    .map_err(|e| format!("{} {} {}: connection error: {e}", probe.caller, probe.method, probe.path))?;
                checked.fetch_add(1, Ordering::Relaxed);
                if !probe.allowed.contains(&reply.status) {
                    return Err(format!(
                        "{} {} {}: status {} (reason {:?}) is not what either revision decides ({:?})",
                        probe.caller,
                        probe.method,
                        probe.path,
                        reply.status,
                        reply.header("x-wardgate-reason"),
                        probe.allowed
                    ));
                }
                if reply.status == 403 && reply.header("x-wardgate-reason").is_none() {
                    return Err(format!("{} {}: a 403 not from wardgate", probe.caller, probe.path));
                }
            }
            Ok::<(), String>(())
        }));
    }

    // The canary: ehr GET /results/42 is 200 under even revisions and 403 under odd ones.
    let canary = sidecar
        .client(Some("ehr"), Protocol::Http1)
        .expect("client");
    let probe = RawRequest::new("GET", "/results/42");
    let started = Instant::now();
    let mut swaps = 0u64;
    let mut slowest = Duration::ZERO;
    for rev in 3..=102u64 {
        if rev % 10 == 0 {
            // An invalid bundle (and an unsigned-garbage one) in between: refused, nothing changes.
            replace(&bundle, "version: 1\nrevision: 999\nrules: [\n");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let t = Instant::now();
        replace(&bundle, &variant(&shipped, rev));
        let want = if rev % 2 == 0 { 200 } else { 403 };
        loop {
            let status = canary.send(&probe).await.expect("canary request").status;
            if status == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "revision {rev} not in force within 5 s\n{}",
                sidecar.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(t.elapsed());
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("worker panicked: {e}")),
        }
    }
    let total = checked.load(Ordering::Relaxed);
    eprintln!(
        "{swaps} swaps in {:?} (slowest file change -> in force: {slowest:?}); {total} requests checked during the swaps",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        sidecar.logs()
    );
    assert!(swaps >= 100);
    assert!(total > 0);
}
