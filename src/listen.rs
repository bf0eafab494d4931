//! Where wardgate listens: the `unix:/path` / `host:port` address syntax ([`ListenAddr`]) and the
//! binding of such an address ([`Listener`]), shared by the gRPC server ([`crate::grpc`]) and
//! the admin listener ([`crate::admin`]), and the cap on the connections a listener works on at
//! once ([`ConnectionSlots`], shared by the mTLS handshakes and the admin listener).
//!
//! This module owns the rules for a Unix socket file: never steal a socket another live server
//! accepts on, replace a stale one left by a crashed process, never remove anything that is not
//! a socket, set the permission bits right after `bind`, and remove the file again on the way
//! out; and the rule that a full listener makes room by dropping its oldest connection rather
//! than by refusing newcomers. It must never serve, accept or read a connection (that is the
//! job of the server that owns the listener), and never bind an address the operator did not
//! give.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::task::AbortHandle;

/// Where a listener listens: `unix:/path/to.sock` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix domain socket at this path (recommended beside Envoy in one pod).
    Unix(PathBuf),
    /// A TCP address (loopback unless the listener is protected otherwise).
    Tcp(SocketAddr),
}

/// Why a listen address did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ListenAddrError {
    /// `unix:` with nothing after it.
    #[error("`unix:` needs a socket path, as in unix:/run/wardgate/wardgate.sock")]
    EmptyUnixPath,
    /// Neither `unix:PATH` nor `IP:PORT` / `localhost:PORT`.
    #[error("`{0}` is neither unix:PATH nor IP:PORT (or localhost:PORT)")]
    Invalid(String),
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenAddrError::EmptyUnixPath);
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
            }
        }
        Err(ListenAddrError::Invalid(s.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process is accepting connections on the Unix socket.
    #[error("{path}: another server is already listening on this socket")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits where the socket should go; it is never removed.
    #[error("{path}: exists and is not a socket; refusing to remove it")]
    NotASocket {
        /// The offending path.
        path: PathBuf,
    },
    /// Removing a stale socket file failed.
    #[error("{path}: cannot remove stale socket: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: ListenAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// Setting the socket file's permissions failed.
    #[error("{path}: cannot set socket permissions: {source}")]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// A bound listener. A Unix socket's file belongs to it: call [`Listener::remove_socket_file`]
/// (or [`remove_socket_file`]) once serving has stopped.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix socket listener and the path of its socket file.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Bind `addr`; a Unix socket gets the permission bits `unix_mode` (see [`bind_unix`]).
    pub async fn bind(addr: &ListenAddr, unix_mode: u32) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Tcp(socket_addr) => bind_tcp(*socket_addr).await.map(Listener::Tcp),
            ListenAddr::Unix(path) => {
                bind_unix(path, unix_mode).map(|listener| Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The address actually bound: the real port when `:0` was asked for, the socket path of a
    /// Unix socket. `asked` is returned when the system cannot tell.
    pub fn local_addr(&self, asked: &ListenAddr) -> ListenAddr {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map(ListenAddr::Tcp)
                .unwrap_or_else(|_| asked.clone()),
            Listener::Unix(_, path) => ListenAddr::Unix(path.clone()),
        }
    }

    /// Remove the socket file of a Unix listener (nothing for TCP).
    pub fn remove_socket_file(&self) {
        if let Listener::Unix(_, path) = self {
            remove_socket_file(path);
        }
    }
}

/// Bind a TCP listener on `addr`.
pub async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind {
            addr: ListenAddr::Tcp(addr),
            source,
        })
}

/// Bind a Unix socket at `path`: refuse to steal it from a live server, remove a stale socket
/// file, never remove anything that is not a socket, then set the permission bits to `mode`.
///
/// The bits are set right after `bind`, which creates the file under the process umask; keep
/// the socket in a directory only wardgate and its clients can enter to close that window.
pub fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ListenError::Bind {
        addr: ListenAddr::Unix(path.to_owned()),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ListenError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Remove the socket file at `path` after serving; a file already gone is fine, any other
/// failure is a warning (the next start replaces a stale socket anyway).
pub fn remove_socket_file(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "cannot remove socket file");
        }
    }
}

/// The connections one listener works on at once (handshakes in progress, open admin
/// connections), oldest first, with a fixed capacity.
///
/// A listener that stopped accepting at its cap would let anybody who opens that many idle
/// connections lock everybody else out until they time out. Instead, a newcomer always gets a
/// slot: when all are taken, the oldest connection is dropped (its task aborted, its socket
/// closed). An idle flood then only recycles slots among its own connections, and a real
/// caller, whose handshake or request takes milliseconds, is only dropped if `capacity` newer
/// connections arrive within those milliseconds. Dropping the oldest also frees a file
/// descriptor when `accept` fails for lack of them ([`ConnectionSlots::drop_oldest`]).
#[derive(Debug)]
pub struct ConnectionSlots {
    capacity: usize,
    held: VecDeque<(AbortHandle, Arc<AtomicBool>)>,
}

/// Held by a connection's task while it counts against its listener's cap; dropping it (or the
/// task ending) gives the slot back.
#[derive(Debug)]
pub struct Slot(Arc<AtomicBool>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl ConnectionSlots {
    /// Room for `capacity` connections (at least one).
    pub fn new(capacity: usize) -> ConnectionSlots {
        ConnectionSlots {
            capacity: capacity.max(1),
            held: VecDeque::new(),
        }
    }

    /// Start a connection's task with `spawn`, which receives the [`Slot`] to hold and returns
    /// the task's abort handle. Returns whether the oldest connection was dropped for it.
    pub fn admit(&mut self, spawn: impl FnOnce(Slot) -> AbortHandle) -> bool {
        self.forget_finished();
        let dropped = self.held.len() >= self.capacity && self.drop_oldest();
        let released = Arc::new(AtomicBool::new(false));
        let handle = spawn(Slot(Arc::clone(&released)));
        self.held.push_back((handle, released));
        dropped
    }

    /// Drop the oldest connection still held; `false` when there is none.
    pub fn drop_oldest(&mut self) -> bool {
        self.forget_finished();
        match self.held.pop_front() {
            Some((handle, _)) => {
                handle.abort();
                true
            }
            None => false,
        }
    }

    /// How many connections hold a slot.
    pub fn len(&mut self) -> usize {
        self.held.retain(|entry| !gone(entry));
        self.held.len()
    }

    /// Whether no connection holds a slot.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Forget connections that ended or gave their slot back: from the front always (cheap),
    /// everywhere when the slots look full.
    fn forget_finished(&mut self) {
        while self.held.front().is_some_and(gone) {
            self.held.pop_front();
        }
        if self.held.len() >= self.capacity {
            self.held.retain(|entry| !gone(entry));
        }
    }
}

/// Whether a held connection no longer counts.
fn gone((handle, released): &(AbortHandle, Arc<AtomicBool>)) -> bool {
    handle.is_finished() || released.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn listen_addr_round_trips() {
        let unix: ListenAddr = "unix:/run/wardgate/wardgate.sock".parse().unwrap();
        assert_eq!(unix, ListenAddr::Unix("/run/wardgate/wardgate.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/wardgate/wardgate.sock");
        let tcp: ListenAddr = "127.0.0.1:9191".parse().unwrap();
        assert_eq!(tcp.to_string(), "127.0.0.1:9191");
        let v6: ListenAddr = "[::1]:9191".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:9191");
        let local: ListenAddr = "localhost:9191".parse().unwrap();
        assert_eq!(local.to_string(), "127.0.0.1:9191");
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("nonsense".parse::<ListenAddr>().is_err());
        assert!("example.com:80".parse::<ListenAddr>().is_err());
    }

    /// A task that holds `slot` (or gives it back at once) and never ends by itself.
    fn idle(
        slot: Slot,
        give_back: bool,
        joins: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> AbortHandle {
        let task = tokio::spawn(async move {
            let held = (!give_back).then_some(slot);
            std::future::pending::<()>().await;
            drop(held);
        });
        let handle = task.abort_handle();
        joins.push(task);
        handle
    }

    #[tokio::test]
    async fn a_full_listener_drops_its_oldest_connection() {
        let mut joins = Vec::new();
        let mut slots = ConnectionSlots::new(2);
        assert!(!slots.drop_oldest(), "nothing to drop");
        assert!(!slots.admit(|s| idle(s, false, &mut joins)));
        assert!(!slots.admit(|s| idle(s, false, &mut joins)));
        assert_eq!(slots.len(), 2);
        // The third newcomer gets a slot: the first connection is dropped for it.
        assert!(slots.admit(|s| idle(s, false, &mut joins)));
        assert_eq!(slots.len(), 2);
        let first = joins.remove(0);
        assert!(first.await.unwrap_err().is_cancelled());
        assert!(joins.iter().all(|j| !j.is_finished()));

        // A connection that gave its slot back no longer counts and is never dropped.
        let mut slots = ConnectionSlots::new(1);
        let mut released = Vec::new();
        assert!(!slots.admit(|s| idle(s, true, &mut released)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(slots.is_empty());
        assert!(!slots.admit(|s| idle(s, false, &mut released)));
        tokio::task::yield_now().await;
        assert!(released.iter().all(|j| !j.is_finished()));
        for join in joins.iter().chain(&released) {
            join.abort();
        }
    }
}
