//! Filesystem change notification for the file-based sources (bundle files and directories,
//! SVID PEM files).
//!
//! Owns one helper that turns `notify` events in a set of directories into unit messages on a
//! channel. It must never read the watched files or decide anything about them: callers poll
//! and compare content themselves, and fall back to polling alone when watching fails.

use std::path::PathBuf;

/// Watch `dirs` non-recursively (in-place writes, renames and symlink swaps all show up in the
/// directory), sending a unit on `tx` for each event (coalesced by the channel's capacity).
/// `None` when nothing could be watched: callers rely on their digest polling then.
pub fn watch_dirs(
    dirs: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
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
