//! The crash-loop breaker, which needs a process to die mid-compile: the mark a dying process
//! leaves behind is written here directly (the one thing a test cannot do for real in-process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn bundle(revision: u64) -> String {
    format!(
        "version: 1\nrevision: {revision}\ntrust_domains: [td.example]\nsegments:\n  a:\n    members: [\"spiffe://td.example/a/**\"]\nrules:\n  - name: base\n    from: [a]\n    paths: [\"/base\"]\n"
    )
}

fn reloader(file: &Path, cache: &Path, handle: &PolicyHandle) -> Reloader {
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.to_path_buf()));
    cfg.cache_dir = Some(cache.to_path_buf());
    cfg.settle = Duration::ZERO;
    Reloader::new(cfg, Arc::clone(handle), Arc::new(NoObserver), "bundle")
}

fn revision(h: &PolicyHandle) -> Option<u64> {
    h.load().as_ref().map(|p| p.revision())
}

/// Leave the mark of `crashes` processes that died compiling the bytes now in `file`.
fn died_compiling(file: &Path, cache: &Path, crashes: u32) {
    let fetched = source::fetch_path(file, 1 << 20).unwrap();
    std::mem::forget(cache::JudgingMark::set(cache, &digest_of(&fetched), crashes).unwrap());
}

#[tokio::test]
async fn bytes_that_killed_two_processes_are_skipped_at_start_until_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(1)).unwrap();
    let first: PolicyHandle = Arc::default();
    assert_eq!(
        reloader(&file, &cache, &first).initial_load().await,
        Outcome::Swapped
    );

    std::fs::write(&file, bundle(2)).unwrap();
    died_compiling(&file, &cache, cache::CRASH_LIMIT);
    let h: PolicyHandle = Arc::default();
    let mut r = reloader(&file, &cache, &h);
    assert_eq!(
        r.initial_load().await,
        Outcome::TooLarge,
        "not compiled a third time"
    );
    assert_eq!(revision(&h), Some(1), "the cached bundle serves meanwhile");
    assert_eq!(
        r.reload(false).await,
        Outcome::TooLarge,
        "nor at the next poll"
    );
    assert_eq!(revision(&h), Some(1));

    // SIGHUP asks for them again; they compile this time and the mark is gone.
    assert_eq!(r.reload(true).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(2));
    assert_eq!(cache::unfinished_judgement(&cache), None);
}

#[tokio::test]
async fn one_crash_is_given_another_chance() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(3)).unwrap();
    died_compiling(&file, &cache, cache::CRASH_LIMIT - 1);
    let h: PolicyHandle = Arc::default();
    assert_eq!(
        reloader(&file, &cache, &h).initial_load().await,
        Outcome::Swapped
    );
    assert_eq!(revision(&h), Some(3));
    assert_eq!(cache::unfinished_judgement(&cache), None);

    // Other bytes are never held against a mark left for different ones.
    std::fs::write(&file, bundle(4)).unwrap();
    let stale = source::fetch_path(&file, 1 << 20).unwrap();
    std::fs::write(&file, bundle(5)).unwrap();
    std::mem::forget(cache::JudgingMark::set(&cache, &digest_of(&stale), 9).unwrap());
    let h: PolicyHandle = Arc::default();
    assert_eq!(
        reloader(&file, &cache, &h).initial_load().await,
        Outcome::Swapped
    );
    assert_eq!(revision(&h), Some(5));
}
