//! Bundles written in place, not atomically: the running reloader must never enforce what it
//! read between two writes, and must end up enforcing the complete bundle.

use std::io::Write;

use super::*;

/// Rule sets seen under revision 2 that lack the `extra` rule the complete bundle has.
fn truncated(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|(rev, names)| *rev == 2 && !names.iter().any(|n| n == "extra"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_in_two_writes_is_never_enforced_half_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1, false)).expect("write");
    let h = handle();
    // The default settle interval, and a poll much shorter than the pause between the writes.
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.clone()));
    cfg.poll_interval = Duration::from_millis(100);
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    let witness = Witness::start(&h);
    let (stop, task) = follow(r);

    // The prefix is itself a valid bundle (revision 2 without its last rule): exactly what a
    // reader between the two writes would see.
    let complete = bundle(2, true);
    let prefix = bundle(2, false);
    assert!(complete.starts_with(&prefix));
    {
        let mut out = std::fs::File::create(&file).expect("truncate in place");
        out.write_all(prefix.as_bytes()).expect("first write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        out.write_all(&complete.as_bytes()[prefix.len()..])
            .expect("second write");
    }
    let done = wait_until(Duration::from_secs(10), || {
        revision(&h) == Some(2) && rule_names(&h).iter().any(|n| n == "extra")
    })
    .await;
    let _ = stop.send(());
    task.await.expect("reloader stops");
    let seen = witness.stop().await;
    assert!(
        done,
        "the complete bundle is not in force 10 s after the last write"
    );
    assert!(
        truncated(&seen).is_empty(),
        "the half-written bundle was enforced: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_copied_file_by_file_ends_with_the_new_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = |rev: u64| {
        format!("version: 1\nrevision: {rev}\ntrust_domains: [td.example]\nsegments:\n  a:\n    members: [\"spiffe://td.example/a/**\"]\n")
    };
    let rules = |extra: bool| {
        let mut y = "rules:\n  - name: base\n    from: [a]\n    paths: [\"/base\"]\n".to_string();
        if extra {
            y.push_str("  - name: extra\n    from: [a]\n    paths: [\"/extra\"]\n");
        }
        y
    };
    std::fs::write(dir.path().join("00-base.yaml"), base(1)).expect("write");
    std::fs::write(dir.path().join("10-rules.yaml"), rules(false)).expect("write");
    let h = handle();
    let mut cfg = ReloadConfig::new(BundleSource::Path(dir.path().to_path_buf()));
    cfg.poll_interval = Duration::from_millis(100);
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    let witness = Witness::start(&h);
    let (stop, task) = follow(r);

    // `cp new/* bundle.d/`, slowly: the file carrying the new revision lands first.
    std::fs::write(dir.path().join("00-base.yaml"), base(2)).expect("copy first file");
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::write(dir.path().join("10-rules.yaml"), rules(true)).expect("copy second file");

    let done = wait_until(Duration::from_secs(10), || {
        revision(&h) == Some(2) && rule_names(&h).iter().any(|n| n == "extra")
    })
    .await;
    let _ = stop.send(());
    task.await.expect("reloader stops");
    let seen = witness.stop().await;
    assert!(done, "the new rules are not in force: {seen:?}");
    assert!(
        truncated(&seen).is_empty(),
        "the new revision was enforced with the old rules: {seen:?}"
    );
}

#[tokio::test]
async fn the_rest_of_a_write_soon_after_a_swap_is_taken_later_it_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1, false)).expect("write");
    let h = handle();
    // A writer that pauses longer than any settle interval: the prefix gets in.
    let mut r = file_reloader_with(&file, &h, TrustedKeys::none(), |c| {
        c.settle = Duration::ZERO;
        c.rewrite_grace = Duration::from_millis(800);
    });
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    std::fs::write(&file, bundle(2, false)).expect("prefix");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    std::fs::write(&file, bundle(2, true)).expect("the rest");
    assert_eq!(
        r.reload(false).await,
        Outcome::Swapped,
        "same revision, other content, within the grace: the rest of the write"
    );
    assert!(rule_names(&h).iter().any(|n| n == "extra"));

    // After the grace (counted from when revision 2 first went in), an equal revision with other
    // content is refused again, and stays refused.
    tokio::time::sleep(Duration::from_millis(900)).await;
    std::fs::write(&file, bundle(2, false)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert!(rule_names(&h).iter().any(|n| n == "extra"));
}

#[tokio::test]
async fn signed_bundles_get_no_rewrite_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let sig = dir.path().join("bundle.yaml.minisig");
    let (kp, keys) = keypair();
    let h = handle();
    let mut r = file_reloader(&file, &h, keys);
    std::fs::write(&file, bundle(2, false)).expect("write");
    std::fs::write(&sig, sign(&kp, bundle(2, false).as_bytes())).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    // A truncated signed bundle fails its signature; a second signed bundle with the same
    // revision is a release mistake, refused even a moment later.
    std::fs::write(&file, bundle(2, true)).expect("write");
    std::fs::write(&sig, sign(&kp, bundle(2, true).as_bytes())).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert!(!rule_names(&h).iter().any(|n| n == "extra"));
}
