//! Reading a file or directory bundle only once it has settled.
//!
//! A bundle rewritten in place (`curl > bundle.yaml`, an editor that truncates then writes, a
//! directory copied file by file) can be read between two writes: the prefix may be valid YAML
//! with the trailing rules cut off. So new bytes are taken only when two reads the settle
//! interval apart ([`crate::reload::ReloadConfig::settle`], 1 s by default) give the same
//! content; bytes that keep changing for [`MAX_ROUNDS`] intervals are not taken at all (a fetch
//! error, tried again at the next poll). Bytes already judged once need no second read, so an
//! idle source costs one read per poll.
//!
//! This module reads and compares; it never judges, logs or swaps anything.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::source::{fetch_path, FetchError, Fetched};

/// Settle rounds before giving up on a bundle that keeps changing.
pub(crate) const MAX_ROUNDS: u32 = 10;

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
/// in a row agree, and return the last one. A zero interval takes `first` as it is.
pub(crate) async fn settled(
    path: &std::path::Path,
    max_bytes: u64,
    interval: Duration,
    first: Fetched,
) -> Result<Fetched, FetchError> {
    if interval.is_zero() {
        return Ok(first);
    }
    let mut previous = digest_of(&first);
    for _ in 0..MAX_ROUNDS {
        tokio::time::sleep(interval).await;
        let next = read_path(path.to_path_buf(), max_bytes).await?;
        let digest = digest_of(&next);
        if digest == previous {
            return Ok(next);
        }
        previous = digest;
    }
    Err(FetchError::Failed(format!(
        "{} kept changing for {:?} (read every {interval:?}): not taken until it holds still; \
         write bundles aside and rename them into place",
        path.display(),
        interval * MAX_ROUNDS
    )))
}
