//! Filesystem change notification for the file-based sources (bundle files and directories,
//! SVID PEM files).
//!
//! Owns one helper that turns `notify` events in a set of directories into unit messages on a
//! channel. Only events that can change what a reader would read are passed on: creation,
//! removal, data and name changes, a writer closing its file, and the rescan a full event queue
//! asks for. Opens, reads and metadata changes are dropped, so the callers' own reads never wake
//! them up (they would otherwise re-read an unchanged file forever). It must never read the
//! watched files or decide anything about them: callers poll and compare content themselves, and
//! fall back to polling alone when watching fails.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::EventKind;

/// Whether an event of this kind can change the content of a file or of a directory listing.
pub fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
    }
}

/// Watch `dirs` non-recursively (in-place writes, renames and symlink swaps all show up in the
/// directory), sending a unit on `tx` for each content-changing event (coalesced by the
/// channel's capacity). `None` when nothing could be watched: callers rely on their digest
/// polling then.
pub fn watch_dirs(
    dirs: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    watch_dirs_where(dirs, |_| true, tx)
}

/// [`watch_dirs`], passing on only events about a path `relevant` accepts (or about no path in
/// particular, such as a rescan): a bundle in a directory shared with a busy log file is not
/// woken up by every log line.
pub fn watch_dirs_where(
    dirs: &[PathBuf],
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let wanted = match &res {
                Ok(event) => {
                    changes_content(&event.kind)
                        && (event.paths.is_empty() || event.paths.iter().any(|p| relevant(p)))
                }
                // The watcher itself failed (queue overflow, a watch removed): look.
                Err(_) => true,
            };
            if wanted {
                let _ = tx.try_send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("file watcher unavailable, relying on polling: {e}");
                return None;
            }
        };
    let mut watching = false;
    for dir in dirs {
        match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watching = true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch, relying on polling: {e}")
            }
        }
    }
    watching.then_some(watcher)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    /// Events received within `wait`.
    async fn drain(rx: &mut tokio::sync::mpsc::Receiver<()>, wait: Duration) -> usize {
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(())) = tokio::time::timeout_at(deadline, rx.recv()).await {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn reads_are_not_changes_but_writes_and_renames_are() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.yaml");
        let other = dir.path().join("decisions.jsonl");
        std::fs::write(&file, "a: 1\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let wanted = file.clone();
        let _w = watch_dirs_where(&[dir.path().to_path_buf()], move |p| p == wanted, tx)
            .expect("inotify works here");
        drain(&mut rx, Duration::from_millis(100)).await;

        for _ in 0..20 {
            std::fs::read(&file).unwrap();
        }
        std::fs::write(&other, "{}\n").unwrap();
        assert_eq!(
            drain(&mut rx, Duration::from_millis(300)).await,
            0,
            "reading the file, or writing an unrelated one, is no change to it"
        );

        std::fs::write(&file, "a: 2\n").unwrap();
        assert!(
            drain(&mut rx, Duration::from_millis(300)).await > 0,
            "in-place write"
        );
        let staged = dir.path().join("bundle.yaml.tmp");
        std::fs::write(&staged, "a: 3\n").unwrap();
        drain(&mut rx, Duration::from_millis(100)).await;
        std::fs::rename(&staged, &file).unwrap();
        assert!(
            drain(&mut rx, Duration::from_millis(300)).await > 0,
            "rename into place"
        );
    }
}
