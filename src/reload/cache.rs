//! Everything a reloader keeps in its `--cache-dir`, and nothing else:
//!
//! - `current/`: the last bundle swapped in from the source, with its signature material, so a
//!   sidecar can start while the source is down;
//! - `highest-revision`: the highest revision ever enforced, so rollback protection survives a
//!   restart (a lower revision is refused at start as it is while running);
//! - `judging`: the digest of the source bytes being compiled right now and how many processes
//!   started compiling them. It is removed when the judgement ends (also when it is cancelled);
//!   if it is still there at start, the previous process died while compiling those bytes, and
//!   bytes that killed [`CRASH_LIMIT`] processes are not compiled again until they change (or
//!   SIGHUP asks), which breaks a crash loop.
//!
//! Every file is written aside and renamed into place. This module never judges a bundle and
//! never decides what is in force; I/O errors are returned for the caller to log.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::signature::{MANIFEST, SIG_SUFFIX};
use super::source::{is_bundle_file, Fetched};

/// Processes that may die compiling the same bytes before those bytes are skipped.
pub(crate) const CRASH_LIMIT: u32 = 2;

const CURRENT: &str = "current";
const HIGHEST: &str = "highest-revision";
const JUDGING: &str = "judging";

/// Write `bytes` to `path` atomically: a temporary file beside it, flushed to disk, renamed over.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Replace `dir/current` with this bundle's files and signatures (write aside, then rename).
pub(crate) fn store_bundle(dir: &Path, f: &Fetched) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let next = dir.join(format!(".next-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next)?;
    for (base, (_, bytes)) in f.base_names.iter().zip(&f.files) {
        let base = if is_bundle_file(base) {
            base.clone()
        } else {
            format!("{base}.yaml")
        };
        std::fs::write(next.join(&base), bytes)?;
        if let Some((_, sig)) = &f.signature {
            std::fs::write(next.join(format!("{base}{SIG_SUFFIX}")), sig)?;
        }
    }
    if let Some((manifest, sig)) = &f.manifest {
        std::fs::write(next.join(MANIFEST), manifest)?;
        if let Some(sig) = sig {
            std::fs::write(next.join(format!("{MANIFEST}{SIG_SUFFIX}")), sig)?;
        }
    }
    let current = dir.join(CURRENT);
    let old = dir.join(format!(".old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    if current.exists() {
        std::fs::rename(&current, &old)?;
    }
    std::fs::rename(&next, &current)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The cached bundle to read: `dir/current` as a directory bundle, or its one YAML file when it
/// holds a single file without a manifest (a cached file or HTTP bundle). `None` when nothing
/// is cached.
pub(crate) fn stored_bundle(dir: &Path) -> Option<PathBuf> {
    let cached = dir.join(CURRENT);
    let entries = std::fs::read_dir(&cached).ok()?;
    let yaml: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_bundle_file)
        })
        .collect();
    match yaml.as_slice() {
        [] => None,
        [one] if !cached.join(MANIFEST).exists() => Some(one.clone()),
        _ => Some(cached),
    }
}

/// Where the highest enforced revision is kept (named in refusals).
pub(crate) fn highest_revision_path(dir: &Path) -> PathBuf {
    dir.join(HIGHEST)
}

/// The highest revision ever enforced from this cache directory; `Ok(None)` when none is
/// recorded.
pub(crate) fn highest_revision(dir: &Path) -> Result<Option<u64>, String> {
    let path = highest_revision_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|_| {
            format!(
                "{}: expected one revision number, found {:?}",
                path.display(),
                text.chars().take(40).collect::<String>()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Record `revision` as the highest ever enforced.
pub(crate) fn record_highest_revision(dir: &Path, revision: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomically(
        &highest_revision_path(dir),
        format!("{revision}\n").as_bytes(),
    )
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes the previous process was compiling when it died, and how many processes died on
/// them; `None` when no judgement was left unfinished (or the marker is unreadable).
pub(crate) fn unfinished_judgement(dir: &Path) -> Option<([u8; 32], u32)> {
    let text = std::fs::read_to_string(dir.join(JUDGING)).ok()?;
    let (digest, count) = text.trim().split_once(' ')?;
    let count = count.parse::<u32>().ok()?;
    let mut out = [0u8; 32];
    if digest.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digest.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((out, count))
}

/// Marks a judgement in progress; removes the mark when dropped (the judgement ended, or was
/// cancelled at shutdown). Only a process that dies leaves the mark behind.
#[derive(Debug)]
pub(crate) struct JudgingMark {
    path: PathBuf,
}

impl JudgingMark {
    /// Mark `digest` as being judged for the `attempt`-th time.
    pub(crate) fn set(dir: &Path, digest: &[u8; 32], attempt: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JUDGING);
        write_atomically(&path, format!("{} {attempt}\n", hex(digest)).as_bytes())?;
        Ok(JudgingMark { path })
    }
}

impl Drop for JudgingMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn highest_revision_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(highest_revision(dir.path()), Ok(None));
        record_highest_revision(dir.path(), 5).unwrap();
        assert_eq!(highest_revision(dir.path()), Ok(Some(5)));
        record_highest_revision(dir.path(), 7).unwrap();
        assert_eq!(highest_revision(dir.path()), Ok(Some(7)));
        std::fs::write(highest_revision_path(dir.path()), "seven").unwrap();
        let err = highest_revision(dir.path()).unwrap_err();
        assert!(
            err.contains("highest-revision") && err.contains("seven"),
            "{err}"
        );
        // Nothing but the recorded file is left behind by the atomic writes.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![HIGHEST.to_string()]);
    }

    #[test]
    fn judging_mark_is_left_only_by_a_process_that_never_finished() {
        let dir = tempfile::tempdir().unwrap();
        let digest = [0xab; 32];
        {
            let _mark = JudgingMark::set(dir.path(), &digest, 1).unwrap();
            assert_eq!(unfinished_judgement(dir.path()), Some((digest, 1)));
        }
        assert_eq!(
            unfinished_judgement(dir.path()),
            None,
            "removed when dropped"
        );
        // A process that dies does not drop its mark.
        std::mem::forget(JudgingMark::set(dir.path(), &digest, 2).unwrap());
        assert_eq!(unfinished_judgement(dir.path()), Some((digest, 2)));
    }
}
