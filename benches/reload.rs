//! What a reload costs: time from `reload()` to the new policy in force for a 10,000-rule bundle
//! (read, parse, validate, compile, swap), and what a swap does to concurrent decisions
//! (decision latency percentiles on another thread while swapping, against the same thread
//! without swaps, in one run).
//!
//! `cargo bench --bench reload`; without `--bench` (as `cargo test` runs it) it does a short
//! smoke run with a small bundle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use wardgate::policy::Request;
use wardgate::reload::{BundleSource, NoObserver, ReloadConfig, Reloader};

mod support;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Decide on another thread for `secs`, returning sorted latencies in ns.
fn decide_loop(
    handle: Arc<ArcSwapOption<wardgate::policy::Policy>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let (src, dst, method, path) = support::hit(7);
        let mut req = Request::new(method, &path);
        req.source = Some(&src);
        req.destination = Some(&dst);
        let mut lat = Vec::with_capacity(1 << 20);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let guard = handle.load();
            let allowed = guard.as_ref().map(|p| p.decide(&req).is_allow());
            drop(guard);
            lat.push(t.elapsed().as_nanos() as u64);
            assert_eq!(
                allowed,
                Some(true),
                "every decision during swaps is the right one"
            );
        }
        lat.sort_unstable();
        lat
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rules = if full { 10_000 } else { 200 };
    let rounds = if full { 20 } else { 3 };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let base = support::bundle(rules);
    std::fs::write(&file, &base).expect("write");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let handle: Arc<ArcSwapOption<wardgate::policy::Policy>> = Arc::new(ArcSwapOption::empty());
    // The bench writes each version completely before calling reload(): it measures read,
    // verify, compile and swap. A running file source also waits its settle interval (1 s by
    // default, docs/performance.md) before taking new bytes; that wait is not measured here.
    let mut config = ReloadConfig::new(BundleSource::Path(file.clone()));
    config.settle = Duration::ZERO;
    let mut reloader = Reloader::new(config, Arc::clone(&handle), Arc::new(NoObserver), "bundle");
    rt.block_on(reloader.reload(true));
    assert!(handle.load().is_some());

    // Baseline: decisions with no swaps.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = decide_loop(Arc::clone(&handle), Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(if full { 2000 } else { 100 }));
    stop.store(true, Ordering::Relaxed);
    let quiet = worker.join().expect("worker");

    // Swaps while deciding.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = decide_loop(Arc::clone(&handle), Arc::clone(&stop));
    let mut reload_ms = Vec::new();
    for round in 0..rounds {
        std::fs::write(
            &file,
            base.replacen("revision: 1\n", &format!("revision: {}\n", round + 2), 1),
        )
        .expect("write");
        let t = Instant::now();
        let outcome = rt.block_on(reloader.reload(false));
        reload_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(outcome.as_str(), "ok");
    }
    stop.store(true, Ordering::Relaxed);
    let busy = worker.join().expect("worker");
    reload_ms.sort_by(f64::total_cmp);

    println!("reload of a {rules}-rule bundle (read + parse + validate + compile + swap), {rounds} rounds:");
    println!(
        "  median {:.1} ms, max {:.1} ms",
        reload_ms[reload_ms.len() / 2],
        reload_ms[reload_ms.len() - 1]
    );
    println!("decide on another thread (ns):        p50    p99  p99.9    max   decisions");
    for (name, lat) in [("  without swaps", &quiet), ("  during swaps ", &busy)] {
        println!(
            "{name}                    {:>6} {:>6} {:>6} {:>6} {:>10}",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            percentile(lat, 0.999),
            lat.last().copied().unwrap_or(0),
            lat.len()
        );
    }
    println!(
        "  ratio during/without: p50 {:.2}x, p99 {:.2}x",
        percentile(&busy, 0.5) as f64 / percentile(&quiet, 0.5).max(1) as f64,
        percentile(&busy, 0.99) as f64 / percentile(&quiet, 0.99).max(1) as f64
    );
}
