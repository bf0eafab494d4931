//! The upstream app behind Envoy in tests: a tiny HTTP/1.1 server that answers every request
//! with a JSON echo of the method, the path and the headers it received, and counts requests.
//!
//! Owns the echo server's listener and tasks. It must never listen anywhere but 127.0.0.1 and
//! never make a decision: whatever reaches it is what Envoy let through.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::BoxError;

#[derive(Debug, Default)]
struct Seen {
    hits: AtomicU64,
    requests: Mutex<Vec<Value>>,
}

/// The running echo server; stops accepting when dropped.
#[derive(Debug)]
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> Result<EchoUpstream, BoxError> {
        EchoUpstream::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on `addr`, which must be a loopback address.
    pub async fn start_at(addr: SocketAddr) -> Result<EchoUpstream, BoxError> {
        if !addr.ip().is_loopback() {
            return Err(format!("the echo upstream listens on loopback only, not {addr}").into());
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&seen)));
        Ok(EchoUpstream { addr, seen, task })
    }

    /// How many requests reached it so far.
    pub fn hits(&self) -> u64 {
        self.seen.hits.load(Ordering::SeqCst)
    }

    /// Every request's echo so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.seen
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let seen = Arc::clone(&seen);
                async move { Ok::<_, Infallible>(echo(&request, &seen)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn echo(request: &Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = json!({
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map_or("", |p| p.as_str()),
        "headers": headers,
    });
    if let Ok(mut requests) = seen.requests.lock() {
        requests.push(body.clone());
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
