//! What a restart remembers from the cache directory: the last good bundle, used whenever the
//! source's own bundle is refused at start, and the highest revision enforced, below which
//! nothing is accepted.

use super::*;

fn cached_reloader(
    source: &Path,
    cache: &Path,
    h: &PolicyHandle,
    tweak: impl FnOnce(&mut ReloadConfig),
) -> Reloader {
    let mut cfg = ReloadConfig::new(BundleSource::Path(source.to_path_buf()));
    cfg.cache_dir = Some(cache.to_path_buf());
    cfg.settle = Duration::from_millis(20);
    tweak(&mut cfg);
    Reloader::new(cfg, Arc::clone(h), Arc::new(NoObserver), "bundle")
}

#[tokio::test]
async fn rollback_protection_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let file = dir.path().join("bundle.yaml");
    let sig = dir.path().join("bundle.yaml.minisig");
    let (kp, keys) = keypair();
    let publish = |rev: u64| {
        std::fs::write(&file, bundle(rev, false)).expect("write");
        std::fs::write(&sig, sign(&kp, bundle(rev, false).as_bytes())).expect("write");
    };
    let key_text = |keys: &mut TrustedKeys| {
        keys.add(&kp.pk.to_base64()).expect("key");
    };

    // A sidecar enforced revision 5 (cached, and recorded as the highest).
    publish(5);
    let first = handle();
    let mut r = cached_reloader(&file, &cache, &first, |c| c.trusted_keys = keys);
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    drop(r);

    // Restarted while the source offers an older, validly signed revision 3: refused, and the
    // cached revision 5 is enforced instead.
    publish(3);
    let second = handle();
    let mut r = cached_reloader(&file, &cache, &second, |c| key_text(&mut c.trusted_keys));
    assert_eq!(r.initial_load().await, Outcome::Rollback);
    assert_eq!(revision(&second), Some(5));
    assert_eq!(
        r.reload(false).await,
        Outcome::Rollback,
        "and while running"
    );
    drop(r);

    // The cache was not overwritten with revision 3: with the source gone, 5 is what starts.
    std::fs::remove_file(&file).expect("remove");
    let third = handle();
    let mut r = cached_reloader(&file, &cache, &third, |c| key_text(&mut c.trusted_keys));
    assert_eq!(r.initial_load().await, Outcome::FetchError);
    assert_eq!(revision(&third), Some(5));

    // Even with the cached bundle gone, revision 3 stays refused: the highest revision is kept
    // on its own.
    std::fs::remove_dir_all(cache.join("current")).expect("remove cached bundle");
    publish(3);
    let fourth = handle();
    let mut r = cached_reloader(&file, &cache, &fourth, |c| key_text(&mut c.trusted_keys));
    assert_eq!(r.initial_load().await, Outcome::Rollback);
    assert_eq!(revision(&fourth), None, "nothing acceptable: fail closed");
    publish(6);
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&fourth), Some(6));
}

#[tokio::test]
async fn a_source_refused_at_start_for_any_reason_falls_back_to_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1, false)).expect("write");
    let h = handle();
    assert_eq!(
        cached_reloader(&file, &cache, &h, |_| {})
            .initial_load()
            .await,
        Outcome::Swapped
    );

    let too_large = format!("{}# {}\n", bundle(2, false), "x".repeat(4096));
    let cases: [(&str, &str, Outcome); 3] = [
        (
            "invalid",
            "version: 1\nrevision: 2\nrules: [\n",
            Outcome::Invalid,
        ),
        ("too large", &too_large, Outcome::TooLarge),
        ("not UTF-8", "revision: 2\n\u{0}", Outcome::Invalid),
    ];
    for (what, text, refusal) in cases {
        let mut bytes = text.as_bytes().to_vec();
        if what == "not UTF-8" {
            bytes.push(0xff);
        }
        std::fs::write(&file, bytes).expect("write");
        let h = handle();
        let mut r = cached_reloader(&file, &cache, &h, |c| c.max_bytes = 2048);
        assert_eq!(r.initial_load().await, refusal, "{what}");
        assert_eq!(revision(&h), Some(1), "{what}: the cached bundle serves");
    }

    // A FIFO in place of the bundle: refused at once (not read, not waited on).
    std::fs::remove_file(&file).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let h = handle();
    let mut r = cached_reloader(&file, &cache, &h, |_| {});
    let outcome = tokio::time::timeout(Duration::from_secs(5), r.initial_load())
        .await
        .expect("a FIFO does not block the reloader");
    assert_eq!(outcome, Outcome::FetchError);
    assert_eq!(revision(&h), Some(1));
}
