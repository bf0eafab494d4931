//! A bundle that stays broken keeps saying so (in the metrics the stale-bundle alert reads),
//! a refused HTTP bundle is not downloaded at every poll, and an idle file source is idle.

use std::sync::atomic::AtomicU64;

use wardgate::telemetry::{Telemetry, TelemetryConfig};

use super::*;

/// The value of an unlabelled metric in the Prometheus text.
fn metric(telemetry: &Telemetry, name: &str) -> f64 {
    let text = telemetry.render_metrics(true).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_bundle_is_refused_at_every_poll_until_other_bytes_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1, false)).expect("write");
    let telemetry = Telemetry::new(TelemetryConfig::default()).expect("metrics register");
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.clone()));
    cfg.settle = Duration::from_millis(20);
    cfg.poll_interval = Duration::from_millis(100);
    let mut r = Reloader::new(cfg, Arc::clone(&handle()), telemetry.clone(), "bundle");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    let last_success = metric(&telemetry, "wardgate_reload_last_success_timestamp_seconds");
    assert!(last_success > 0.0);
    tokio::time::sleep(Duration::from_millis(20)).await;

    std::fs::write(&file, "version: 1\nrules: [\n").expect("write");
    for poll in 1..=3 {
        assert_eq!(
            r.reload(false).await,
            Outcome::Invalid,
            "poll {poll} of the same broken bytes"
        );
        assert_eq!(
            metric(&telemetry, "wardgate_reload_consecutive_failures"),
            f64::from(poll)
        );
    }
    // And while it runs on its own.
    let (stop, task) = follow(r);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = stop.send(());
    task.await.expect("stops");
    let failures = metric(&telemetry, "wardgate_reload_consecutive_failures");
    assert!(
        failures >= 6.0,
        "{failures} failures in a row after 7 more polls"
    );
    assert_eq!(
        metric(&telemetry, "wardgate_reload_last_success_timestamp_seconds"),
        last_success,
        "a refusal is never a success"
    );
}

#[tokio::test]
async fn other_bytes_end_a_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let h = handle();
    let mut r = file_reloader(&file, &h, TrustedKeys::none());
    std::fs::write(&file, bundle(1, false)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    std::fs::write(&file, bundle(0, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    // The bundle in force is offered again: nothing to refuse any more.
    std::fs::write(&file, bundle(1, false)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Unchanged);
    assert_eq!(r.reload(false).await, Outcome::Unchanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http_bundle_backs_off_like_a_fetch_error() {
    let server = BundleServer::default();
    server.set("version: 1\nrules: [\n");
    let (addr, _task) = start_server(&server, None).await;
    let h = handle();
    let recorder = Arc::new(Recorder::default());
    let mut cfg = ReloadConfig::new(BundleSource::Http(format!(
        "http://{addr}/bundles/hospital.yaml"
    )));
    cfg.poll_interval = Duration::from_millis(100);
    cfg.max_backoff = Duration::from_secs(10);
    let mut r = Reloader::new(cfg, Arc::clone(&h), recorder.clone(), "bundle");
    assert_eq!(r.initial_load().await, Outcome::Invalid);
    let (stop, task) = follow(r);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(());
    task.await.expect("stops");
    let requests = server.requests.load(Ordering::SeqCst);
    let outcomes = recorder.outcomes();
    // At a fixed 100 ms poll this would be about 20 downloads; backing off (0.2, 0.4, 0.8 s...,
    // jittered) it is a handful.
    assert!(
        (2..=8).contains(&requests),
        "{requests} downloads in 2 s ({outcomes:?})"
    );
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Invalid),
        "every poll reports the refusal: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_file_source_reads_its_bundle_once_per_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let neighbour = dir.path().join("decisions.jsonl");
    std::fs::write(&file, bundle(1, false)).expect("write");

    // Count every open of the bundle file as the kernel reports it (inotify), independently of
    // the reloader's own watcher.
    let opens = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&opens);
    let target = file.clone();
    let mut counter = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(
                event.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            ) && event.paths.contains(&target)
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .expect("inotify");
    notify::Watcher::watch(
        &mut counter,
        dir.path(),
        notify::RecursiveMode::NonRecursive,
    )
    .expect("watch");

    let h = handle();
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.clone()));
    cfg.poll_interval = Duration::from_secs(1);
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    let (stop, task) = follow(r);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 4 s idle, while a neighbouring file in the same directory is written every 10 ms.
    let before = opens.load(Ordering::SeqCst);
    let idle = std::time::Instant::now();
    while idle.elapsed() < Duration::from_secs(4) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&neighbour)
            .expect("open neighbour");
        std::io::Write::write_all(&mut log, b"{}\n").expect("append");
        drop(log);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reads = opens.load(Ordering::SeqCst) - before;

    // A real change is still noticed promptly (watcher, then the settle interval).
    let changed = std::time::Instant::now();
    std::fs::write(&file, bundle(2, false)).expect("write");
    let picked_up = wait_until(Duration::from_secs(5), || revision(&h) == Some(2)).await;
    let latency = changed.elapsed();
    let _ = stop.send(());
    task.await.expect("stops");
    eprintln!("{reads} reads of an idle bundle in 4 s at a 1 s poll; a change was in force after {latency:?}");
    // One read per poll: about 4. (A SIGHUP another test of this binary sends may add one.)
    assert!(reads >= 3, "the poll itself reads ({reads})");
    assert!(reads <= 7, "{reads} reads in 4 s: the reloader is not idle");
    assert!(picked_up, "the change was not picked up within 5 s");
}
