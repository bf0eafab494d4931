//! Pieces the load benches share: the do-nothing allow-all Authorization server, a closed-loop
//! latency summary, and the `--bench` / smoke switch.
#![allow(dead_code)] // reason: each load bench uses a different part of this module

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::pb::google::rpc;
use hdrhistogram::Histogram;

/// True when run as `cargo bench` (full measurement), false for the `cargo test` smoke run.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The limit for any ext_authz server: answers every Check with OK and nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

/// An experiment, not a peer: answers every Check with a copy of one fixed response (e.g. a
/// wardgate allow with its headers and metadata), to tell what the answer's size costs from
/// what deciding costs.
#[derive(Debug, Clone)]
pub struct Fixed(pub std::sync::Arc<CheckResponse>);

#[tonic::async_trait]
impl Authorization for Fixed {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new((*self.0).clone()))
    }
}

/// Serve [`Fixed`] on a Unix socket until `shutdown` resolves.
pub async fn serve_fixed_unix(
    answer: Fixed,
    path: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind fixed socket");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(answer))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .expect("fixed-answer server");
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..rpc::Status::default()
            }),
            ..CheckResponse::default()
        }))
    }
}

/// Where a bench server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A TCP listener already bound (port known before serving).
    Tcp(std::net::SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// Serve [`AllowAll`] (tonic defaults, TCP_NODELAY on) until `shutdown` resolves.
pub async fn serve_allow_all(listen: Listen, shutdown: impl Future<Output = ()> + Send + 'static) {
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(AllowAll));
    match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .expect("bind allow-all TCP");
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .expect("allow-all server");
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).expect("bind allow-all socket");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .expect("allow-all server");
        }
    }
}

/// A free loopback TCP address (bound and released; fine on a quiet loopback).
pub fn free_tcp_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr")
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// What one closed-loop run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Completed requests in the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
}

impl Summary {
    /// From a merged histogram and the window length.
    pub fn new(h: &Histogram<u64>, elapsed: Duration) -> Summary {
        Summary {
            requests: h.len(),
            elapsed,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        }
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// As a JSON object.
    pub fn json(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "requests": self.requests, "rps": self.rps(),
            "p50_us": self.p50_us, "p99_us": self.p99_us, "p999_us": self.p999_us,
        })
    }
}

/// `$NAME` as a number, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TLS client for HTTP/2 through Envoy that presents `cert` (a caller's SVID) and trusts
/// `roots`.
pub fn h2_mtls_connector(
    roots: &rustls::RootCertStore,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<tokio_rustls::TlsConnector, Box<dyn std::error::Error + Send + Sync>> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}
