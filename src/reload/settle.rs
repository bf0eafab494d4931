//! Reading a file or directory bundle only once it has settled.
//!
//! A bundle rewritten in place (`curl > bundle.yaml`, an editor that truncates then writes, a
//! directory copied file by file) can be read between two writes: the prefix may be valid YAML
//! with the trailing rules cut off. So new bytes are taken only when two reads the settle
//! interval apart ([`crate::reload::ReloadConfig::settle`], 1 s by default) give the same
//! content and the same change times (a file truncated and rewritten between them may read the
//! same, empty, both times); bytes that keep changing for [`MAX_ROUNDS`] intervals are not taken at all (a fetch
//! error, tried again at the next poll). Bytes already judged once need no second read, so an
//! idle source costs one read per poll. Nor do bytes whose files (and directory) last changed,
//! by their ctime, longer ago than the interval plus [`TIMESTAMP_MARGIN`], and did not change
//! while read: they have been quiet for longer than a second read would show, so a bundle
//! written minutes before `serve` starts is taken at once. (ctime cannot be set back by a
//! program; a network filesystem whose clock lags behind could make a file look older than it
//! is, one more reason to write bundles atomically.)
//!
//! This module reads and compares; it never judges, logs or swaps anything.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::source::{fetch_path, FetchError, Fetched};

/// Settle rounds before giving up on a bundle that keeps changing.
pub(crate) const MAX_ROUNDS: u32 = 10;

/// Added to the settle interval before change times alone vouch for a bundle: some filesystems
/// keep them in whole seconds (FAT in two), truncated.
pub(crate) const TIMESTAMP_MARGIN: Duration = Duration::from_secs(2);

/// Whether everything in `f` has been unchanged for longer than `interval` (plus the margin).
fn quiet_for(f: &Fetched, interval: Duration) -> bool {
    f.changed
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|quiet| quiet >= interval + TIMESTAMP_MARGIN)
}

/// SHA-256 over everything that makes up one bundle version: every file's name and bytes, the
/// signature and the manifest.
pub(crate) fn digest_of(f: &Fetched) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, bytes) in &f.files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    if let Some((_, sig)) = &f.signature {
        h.update(b"sig");
        h.update(sig.as_bytes());
    }
    if let Some((m, sig)) = &f.manifest {
        h.update(b"manifest");
        h.update(m);
        h.update(sig.as_deref().unwrap_or("").as_bytes());
    }
    h.finalize().into()
}

/// Read a file or directory bundle once, on a blocking thread.
pub(crate) async fn read_path(path: PathBuf, max_bytes: u64) -> Result<Fetched, FetchError> {
    match tokio::task::spawn_blocking(move || fetch_path(&path, max_bytes)).await {
        Ok(r) => r,
        Err(e) => Err(FetchError::Failed(format!("reader task failed: {e}"))),
    }
}

/// Starting from `first` (just read from `path`), read again every `interval` until two reads
/// in a row agree, and return the last one. A zero interval, or files quiet for long enough,
/// take `first` as it is.
pub(crate) async fn settled(
    path: &std::path::Path,
    max_bytes: u64,
    interval: Duration,
    first: Fetched,
) -> Result<Fetched, FetchError> {
    if interval.is_zero() || quiet_for(&first, interval) {
        return Ok(first);
    }
    let mut previous = (digest_of(&first), first.changed);
    for _ in 0..MAX_ROUNDS {
        tokio::time::sleep(interval).await;
        let next = read_path(path.to_path_buf(), max_bytes).await?;
        let seen = (digest_of(&next), next.changed);
        if seen == previous {
            return Ok(next);
        }
        previous = seen;
    }
    Err(FetchError::Failed(format!(
        "{} kept changing for {:?} (read every {interval:?}): not taken until it holds still; \
         write bundles aside and rename them into place",
        path.display(),
        interval * MAX_ROUNDS
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_long_quiet_file_needs_no_second_read_a_fresh_one_does() {
        // The shipped bundle has not changed since the checkout, long before this test runs.
        let shipped =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml");
        let first = read_path(shipped.clone(), 1 << 20).await.unwrap();
        let started = Instant::now();
        settled(&shipped, 1 << 20, Duration::from_millis(500), first)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );

        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("bundle.yaml");
        std::fs::write(&fresh, "version: 1\n").unwrap();
        let first = read_path(fresh.clone(), 1 << 20).await.unwrap();
        let started = Instant::now();
        settled(&fresh, 1 << 20, Duration::from_millis(500), first)
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_file_that_never_holds_still_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.yaml");
        std::fs::write(&file, "0").unwrap();
        let writer_path = file.clone();
        let writer = tokio::spawn(async move {
            for i in 1..200 {
                std::fs::write(&writer_path, i.to_string()).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let first = read_path(file.clone(), 1 << 20).await.unwrap();
        let err = settled(&file, 1 << 20, Duration::from_millis(50), first)
            .await
            .unwrap_err();
        writer.abort();
        assert!(
            matches!(&err, FetchError::Failed(m) if m.contains("kept changing") && m.contains("rename")),
            "{err:?}"
        );
    }
}
