//! SIGHUP is wardgate's "reload now". It must never stop the process: not during the first
//! load, and not before the reloader runs. The signal goes to this whole test process, so a
//! missing handler would kill every test in it (the default action of SIGHUP); other tests'
//! running reloaders merely reload once more.

use super::*;

fn send_sighup_to_self() {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_the_first_load_is_a_reload_not_a_death() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1, false)).expect("write");
    let h = handle();
    let recorder = Arc::new(Recorder::default());
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.clone()));
    // Nothing but the signal can trigger another attempt during this test.
    cfg.poll_interval = Duration::from_secs(3600);
    let mut r = Reloader::new(cfg, Arc::clone(&h), recorder.clone(), "bundle");

    // The first load is under way (settling) when the signal arrives.
    let signal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_sighup_to_self();
    };
    let (outcome, ()) = tokio::join!(r.initial_load(), signal);
    assert_eq!(outcome, Outcome::Swapped);

    // The signal is not lost: the running reloader takes it as a forced reload.
    let (stop, task) = follow(r);
    let reloaded = wait_until(Duration::from_secs(5), || recorder.outcomes().len() >= 2).await;
    let _ = stop.send(());
    task.await.expect("stops");
    assert!(reloaded, "{:?}", recorder.outcomes());
    assert_eq!(
        recorder.outcomes()[1],
        Outcome::Unchanged,
        "the same bundle, judged again"
    );
}

#[tokio::test]
async fn catch_hangup_makes_sighup_harmless_without_any_reloader() {
    // `serve` without a bundle source calls this first thing: the process survives a SIGHUP.
    let mut hangups = wardgate::reload::catch_hangup().expect("a handler inside a runtime");
    send_sighup_to_self();
    tokio::time::timeout(Duration::from_secs(5), hangups.recv())
        .await
        .expect("the SIGHUP arrives")
        .expect("stream open");
}
