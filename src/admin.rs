//! The admin HTTP listener: what SREs and Prometheus ask a running wardgate.
//!
//! | path         | answer |
//! |--------------|--------|
//! | `/metrics`   | every metric in the Prometheus text format |
//! | `/healthz`   | `200 ok` while the process serves HTTP at all (liveness) |
//! | `/readyz`    | `200 ready` once a valid bundle is in force, else `503` (readiness); both name audit mode |
//! | `/v1/bundle` | the bundle in force as JSON: revision, digest, source, loaded at, counts |
//! | `/v1/rules`  | every rule with its file, line, hit count and last-hit time, as JSON |
//!
//! Plain HTTP/1.1 (hyper), GET and HEAD only, loopback by default. Every cost a client can
//! impose is bounded: at most [`MAX_CONNECTIONS`] open connections (a newcomer beyond them
//! drops the oldest, see [`ConnectionSlots`]), request headers of at most
//! [`MAX_HEADER_BYTES`] (`431` beyond) read within [`HEADER_READ_TIMEOUT`], and repeated
//! warnings throttled ([`Throttle`]). Answers are rendered on the blocking thread pool, so a
//! scrape of a large bundle's metrics never holds up the runtime's workers. Nothing here decides a
//! request or changes state; it reads the [`Telemetry`] and the [`PolicyHandle`], and binds
//! through [`crate::listen`] like the gRPC server. It must never serve on an address the
//! operator did not give, never hold up shutdown for longer than [`SHUTDOWN_GRACE`], and never
//! put request data into a label or a response.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::extauthz::Mode;
use crate::listen::{ConnectionSlots, ListenAddr, ListenAddrError, ListenError, Listener};
use crate::policy::PolicyHandle;
use crate::telemetry::throttle::Throttle;
use crate::telemetry::{BundleInfo, RuleUsage, Telemetry};

/// Default admin address: loopback, next to Envoy's customary admin port 9901.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9902";

/// How long open admin connections may take to finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for a request's headers on an admin connection (also how long an idle
/// keep-alive connection stays open): 5 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Open admin connections at once: 64. Probes and a Prometheus scrape need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Largest request head (request line and headers) read: 8 KiB; beyond it the answer is `431`.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Largest read buffer of a connection (hyper's minimum, twice the head limit): 16 KiB.
const MAX_READ_BUFFER: usize = 16 * 1024;

/// `--admin`: where the admin listener serves, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// No admin listener.
    Off,
    /// Listen here (`host:port` or `unix:/path`).
    Listen(ListenAddr),
}

impl FromStr for AdminAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(AdminAddr::Off);
        }
        s.parse().map(AdminAddr::Listen)
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddr::Off => f.write_str("off"),
            AdminAddr::Listen(addr) => addr.fmt(f),
        }
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics, bundle facts and rule hits.
    pub telemetry: Arc<Telemetry>,
    /// The policy in force (readiness).
    pub policy: PolicyHandle,
    /// Whether decisions are enforced; `/readyz` says so when they are not.
    pub mode: Mode,
}

/// Bind the admin listener `addr` and serve it on a task until `shutdown` completes: `None`
/// when `addr` is [`AdminAddr::Off`]. Fails (before anything serves) when it cannot bind.
pub async fn start(
    addr: &AdminAddr,
    telemetry: &Arc<Telemetry>,
    policy: &PolicyHandle,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>, ListenError> {
    let AdminAddr::Listen(addr) = addr else {
        tracing::info!("admin listener off (--admin off)");
        return Ok(None);
    };
    let listener = AdminListener::bind(addr).await?;
    let state = AdminState {
        telemetry: Arc::clone(telemetry),
        policy: Arc::clone(policy),
        mode,
    };
    Ok(Some(tokio::spawn(listener.serve(state, shutdown))))
}

/// A bound admin listener; bind first so that a bad address fails start-up, then [`serve`].
///
/// [`serve`]: AdminListener::serve
pub struct AdminListener {
    inner: Listener,
    addr: ListenAddr,
}

impl fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminListener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AdminListener {
    /// Bind `addr` (a Unix socket gets mode 0660, and a stale socket file is replaced).
    pub async fn bind(addr: &ListenAddr) -> Result<AdminListener, ListenError> {
        let inner = Listener::bind(addr, 0o660).await?;
        let addr = inner.local_addr(addr);
        Ok(AdminListener { inner, addr })
    }

    /// The address actually bound (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Serve until `shutdown` completes; then stop accepting, give open connections
    /// [`SHUTDOWN_GRACE`] to finish their current request, and return. At most
    /// [`MAX_CONNECTIONS`] connections are open at once: a newcomer beyond them drops the
    /// oldest (see [`ConnectionSlots`]).
    pub async fn serve(self, state: AdminState, shutdown: impl Future<Output = ()>) {
        let state = Arc::new(state);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut slots = ConnectionSlots::new(MAX_CONNECTIONS);
        let (dropped_warning, accept_warning) = (Throttle::default(), Throttle::default());
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(admin = %self.addr, "serving admin endpoints (/metrics /healthz /readyz /v1/bundle /v1/rules)");
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = accept(&self.inner) => accepted,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: the oldest connection gives its
                    // back; with none to drop, back off instead of spinning.
                    let freed = slots.drop_oldest();
                    if let Some(suppressed) = accept_warning.admit() {
                        tracing::warn!(%error, dropped_a_connection = freed, suppressed, "admin listener cannot accept");
                    }
                    let pause = if freed { 5 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            };
            let (state, stop) = (Arc::clone(&state), stop_rx.clone());
            let dropped = slots.admit(|slot| {
                connections.spawn(async move {
                    let _slot = slot;
                    match stream {
                        Accepted::Tcp(stream) => {
                            let _ = stream.set_nodelay(true);
                            connection(stream, state, stop).await;
                        }
                        Accepted::Unix(stream) => connection(stream, state, stop).await,
                    }
                })
            });
            if dropped {
                if let Some(suppressed) = dropped_warning.admit() {
                    tracing::warn!(
                        max_connections = MAX_CONNECTIONS,
                        suppressed,
                        "too many admin connections: dropped the oldest"
                    );
                }
            }
        }
        self.inner.remove_socket_file();
        drop(self);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        tracing::info!("admin listener stopped");
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener) => listener.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(listener, _) => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

async fn connection<I>(io: I, state: Arc<AdminState>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = Arc::clone(&state);
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        async move {
            // Rendering `/metrics` or `/v1/rules` of a large bundle takes milliseconds: off the
            // runtime's worker threads (by default one), so a scrape never holds up a Check.
            let rendered = tokio::task::spawn_blocking(move || route(&state, &method, &path)).await;
            Ok::<_, Infallible>(rendered.unwrap_or_else(|_| {
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "internal error\n",
                )
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(status, "application/json", body)
        }
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode JSON: {error}\n"),
        ),
    }
}

/// `/v1/bundle` body.
#[derive(Serialize)]
struct BundleBody {
    #[serde(flatten)]
    info: BundleInfo,
}

/// `/v1/rules` body.
#[derive(Serialize)]
struct RulesBody {
    revision: u64,
    digest: String,
    /// Hit counts count from here (process start).
    counting_since: String,
    rules: Vec<RuleUsage>,
}

fn no_bundle() -> Reply {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": "no valid bundle in force"}),
    )
}

/// Answer one admin request.
fn route(state: &AdminState, method: &Method, path: &str) -> Reply {
    let mut response = route_get(state, path);
    match *method {
        Method::GET => {}
        Method::HEAD => *response.body_mut() = Full::new(Bytes::new()),
        _ => {
            response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
    }
    response
}

fn route_get(state: &AdminState, path: &str) -> Reply {
    let ready = state.policy.load().is_some();
    match path {
        "/metrics" => match state.telemetry.render_metrics(ready) {
            Ok(text) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            Err(error) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode metrics: {error}\n"),
            ),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => {
            let (status, text) = if ready {
                (StatusCode::OK, "ready")
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no valid bundle in force",
                )
            };
            let body = match state.mode {
                Mode::Enforce => format!("{text}\n"),
                Mode::Audit => format!(
                    "{text} in AUDIT MODE (serve --audit): every request is allowed; \
                     decisions are logged, not enforced\n"
                ),
            };
            reply(status, "text/plain; charset=utf-8", body)
        }
        "/v1/bundle" => match state.telemetry.bundle() {
            Some(info) if ready => json(StatusCode::OK, &BundleBody { info }),
            _ => no_bundle(),
        },
        "/v1/rules" => match state.telemetry.rules() {
            Some((info, rules)) if ready => json(
                StatusCode::OK,
                &RulesBody {
                    revision: info.revision,
                    digest: info.digest,
                    counting_since: state.telemetry.started().to_string(),
                    rules,
                },
            ),
            _ => no_bundle(),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try /metrics /healthz /readyz /v1/bundle /v1/rules\n",
        ),
    }
}
