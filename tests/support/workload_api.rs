//! A SPIFFE Workload API test double: a gRPC server on a Unix socket speaking the X.509-SVID
//! profile of `proto/workload.proto` as a SPIRE agent does, so that the `spiffe` crate (and
//! so wardgate) accepts it exactly as it accepts SPIRE; like a SPIRE agent it also serves
//! Envoy's SDS on the same socket, from the same state ([`super::sds`]).
//!
//! Owns the hand-written protobuf messages ([`pb`], checked against `proto/workload.proto` by
//! a test), the server (`FetchX509SVID` and `FetchX509Bundles`, both server-streaming: the
//! current state at once, then a complete new response on every change; the
//! `workload.spiffe.io: true` metadata is required, as the SPIFFE Workload Endpoint
//! specification says, and a call without it gets INVALID_ARGUMENT; no SVID for the caller
//! gets PERMISSION_DENIED), rotation ([`WorkloadApiDouble::set`]), an abrupt stop that drops
//! every connection (an agent restart), and a raw client for checking the double itself. It
//! must never listen anywhere but the socket path it is given, and never outlive its value.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Uri};

use super::pki::{Ca, Svid};
use super::BoxError;

/// The Workload API metadata key every call must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The messages of `proto/workload.proto`, written by hand with `prost` derives (no `protoc`
/// needed to build). Field numbers and types are the specification's.
pub mod pb {
    use std::collections::HashMap;

    /// `X509SVIDRequest`: no parameters.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509svidRequest {}

    /// `X509SVIDResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509svidResponse {
        /// `repeated X509SVID svids = 1`: the first is the default SVID.
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509svid>,
        /// `repeated bytes crl = 2`.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        /// `map<string, bytes> federated_bundles = 3`, keyed by trust domain SPIFFE ID.
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: HashMap<String, Vec<u8>>,
    }

    /// `X509SVID`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509svid {
        /// `string spiffe_id = 1`.
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        /// `bytes x509_svid = 2`: DER chain, leaf first.
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        /// `bytes x509_svid_key = 3`: PKCS#8 DER.
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        /// `bytes bundle = 4`: DER CAs of the SVID's trust domain.
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        /// `string hint = 5`.
        #[prost(string, tag = "5")]
        pub hint: String,
    }

    /// `X509BundlesRequest`: no parameters.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509BundlesRequest {}

    /// `X509BundlesResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509BundlesResponse {
        /// `repeated bytes crl = 1`.
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub crl: Vec<Vec<u8>>,
        /// `map<string, bytes> bundles = 2`, keyed by trust domain SPIFFE ID.
        #[prost(map = "string, bytes", tag = "2")]
        pub bundles: HashMap<String, Vec<u8>>,
    }
}

/// The service's full name (the `.proto` declares no package).
pub const SERVICE: &str = "SpiffeWorkloadAPI";

/// Everything the double serves; each change is pushed to every open stream.
#[derive(Debug, Clone, Default)]
pub struct WorkloadState {
    /// The caller's SVIDs (empty: PERMISSION_DENIED, as SPIRE answers an unknown workload).
    pub svids: Vec<pb::X509svid>,
    /// Foreign trust domains' bundles, keyed by trust domain SPIFFE ID.
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

impl WorkloadState {
    /// One SVID issued by `ca` (whose certificate is its trust domain's bundle), plus the
    /// federated bundles of `federated` (trust domain name, CA).
    pub fn new(svid: &Svid, ca: &Ca, federated: &[(&str, &Ca)]) -> WorkloadState {
        WorkloadState {
            svids: vec![entry(svid, ca)],
            federated_bundles: federated
                .iter()
                .map(|(domain, ca)| (format!("spiffe://{domain}"), ca.cert_der.to_vec()))
                .collect(),
        }
    }

    /// The same state with `svid` (from `ca`) as the one SVID.
    pub fn with_svid(&self, svid: &Svid, ca: &Ca) -> WorkloadState {
        WorkloadState {
            svids: vec![entry(svid, ca)],
            federated_bundles: self.federated_bundles.clone(),
        }
    }

    fn svid_response(&self) -> Result<pb::X509svidResponse, tonic::Status> {
        if self.svids.is_empty() {
            return Err(tonic::Status::permission_denied("no identity issued"));
        }
        Ok(pb::X509svidResponse {
            svids: self.svids.clone(),
            crl: Vec::new(),
            federated_bundles: self.federated_bundles.clone(),
        })
    }

    fn bundles_response(&self) -> Result<pb::X509BundlesResponse, tonic::Status> {
        let first = self
            .svids
            .first()
            .ok_or_else(|| tonic::Status::permission_denied("no identity issued"))?;
        let own = first
            .spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let mut bundles = self.federated_bundles.clone();
        bundles.insert(format!("spiffe://{own}"), first.bundle.clone());
        Ok(pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles,
        })
    }
}

/// The `X509SVID` entry for an SVID issued by `ca`.
pub fn entry(svid: &Svid, ca: &Ca) -> pb::X509svid {
    pb::X509svid {
        spiffe_id: svid.spiffe_id.clone(),
        x509_svid: svid.cert_der.to_vec(),
        x509_svid_key: svid.key_pkcs8.clone(),
        bundle: ca.cert_der.to_vec(),
        hint: String::new(),
    }
}

/// What a call looked like, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `FetchX509SVID` or `FetchX509Bundles`.
    pub method: &'static str,
    /// Whether it carried `workload.spiffe.io: true`.
    pub security_header: bool,
}

struct Inner {
    state: tokio::sync::watch::Sender<WorkloadState>,
    /// Raised by `stop`: every open stream ends with UNAVAILABLE.
    stopping: tokio::sync::watch::Sender<bool>,
    calls: Mutex<Vec<Call>>,
    /// Every request to the SDS service on the same socket ([`super::sds`]).
    sds_requests: super::sds::SdsLog,
}

/// A running double; see the module documentation. Dropping it stops it abruptly.
pub struct WorkloadApiDouble {
    /// The socket path.
    pub socket: PathBuf,
    inner: Arc<Inner>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkloadApiDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiDouble")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl WorkloadApiDouble {
    /// Listen on `socket` (a stale socket file is replaced) and serve `state`.
    pub async fn start(socket: &Path, state: WorkloadState) -> Result<WorkloadApiDouble, BoxError> {
        if socket.exists() {
            std::fs::remove_file(socket)?;
        }
        let listener = tokio::net::UnixListener::bind(socket)?;
        let (tx, _) = tokio::sync::watch::channel(state);
        let (stopping, _) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            state: tx,
            stopping,
            calls: Mutex::new(Vec::new()),
            sds_requests: Arc::default(),
        });
        let service = WorkloadApiService {
            inner: Arc::clone(&inner),
        };
        // A SPIRE agent serves Envoy's SDS on the Workload API socket too.
        let sds = super::sds::SecretDiscoveryServiceServer::new(super::sds::Sds::new(
            inner.state.subscribe(),
            inner.stopping.subscribe(),
            Arc::clone(&inner.sds_requests),
        ));
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(sds)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.await;
                })
                .await;
        });
        Ok(WorkloadApiDouble {
            socket: socket.to_owned(),
            inner,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// The endpoint URI, as `SPIFFE_ENDPOINT_SOCKET` would name it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Replace the state; every open stream receives a complete new response.
    pub fn set(&self, state: WorkloadState) {
        self.inner.state.send_replace(state);
    }

    /// The state in force.
    pub fn state(&self) -> WorkloadState {
        self.inner.state.borrow().clone()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Every SDS request so far (Envoy's secret names, acknowledged versions, errors).
    pub fn sds_requests(&self) -> Vec<super::sds::SdsRequest> {
        self.inner
            .sds_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Stop, as a restarting agent does: every open stream ends with UNAVAILABLE, the
    /// listener closes, connections are closed, and the socket file is removed.
    pub async fn stop(mut self) {
        self.inner.stopping.send_replace(true);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for WorkloadApiDouble {
    fn drop(&mut self) {
        self.inner.stopping.send_replace(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[derive(Clone)]
struct WorkloadApiService {
    inner: Arc<Inner>,
}

impl NamedService for WorkloadApiService {
    const NAME: &'static str = SERVICE;
}

type ResponseStream<T> = tokio_stream::wrappers::ReceiverStream<Result<T, tonic::Status>>;

impl Inner {
    /// Record the call and check the security header.
    fn admit<T>(
        &self,
        method: &'static str,
        request: &tonic::Request<T>,
    ) -> Result<(), tonic::Status> {
        let security_header = request
            .metadata()
            .get(SECURITY_HEADER)
            .is_some_and(|v| v == "true");
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call {
                method,
                security_header,
            });
        }
        if security_header {
            Ok(())
        } else {
            // SPIRE's answer to a call without the header.
            Err(tonic::Status::invalid_argument(
                "security header missing from request",
            ))
        }
    }

    /// A stream of `render(state)`: now, then on every change, until the client goes away
    /// or an error ends it.
    fn follow<T: Send + 'static>(
        &self,
        render: fn(&WorkloadState) -> Result<T, tonic::Status>,
    ) -> ResponseStream<T> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut state = self.state.subscribe();
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            loop {
                let item = render(&state.borrow_and_update());
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(tonic::Status::unavailable("agent shutting down"))).await;
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

impl<B> Service<http::Request<B>> for WorkloadApiService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        match request.uri().path() {
            "/SpiffeWorkloadAPI/FetchX509SVID" => Box::pin(async move {
                let method = tower::service_fn(move |req: tonic::Request<pb::X509svidRequest>| {
                    let inner = Arc::clone(&inner);
                    async move {
                        inner.admit("FetchX509SVID", &req)?;
                        Ok::<_, tonic::Status>(tonic::Response::new(
                            inner.follow(WorkloadState::svid_response),
                        ))
                    }
                });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(method, request).await)
            }),
            "/SpiffeWorkloadAPI/FetchX509Bundles" => Box::pin(async move {
                let method =
                    tower::service_fn(move |req: tonic::Request<pb::X509BundlesRequest>| {
                        let inner = Arc::clone(&inner);
                        async move {
                            inner.admit("FetchX509Bundles", &req)?;
                            Ok::<_, tonic::Status>(tonic::Response::new(
                                inner.follow(WorkloadState::bundles_response),
                            ))
                        }
                    });
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(method, request).await)
            }),
            // The JWT profile and anything else: UNIMPLEMENTED, as for any unknown method.
            _ => Box::pin(async move {
                Ok(tonic::Status::unimplemented("not served by the test double").into_http())
            }),
        }
    }
}

/// A channel to the double's socket (no interceptor: callers add metadata themselves).
async fn channel(socket: &Path) -> Result<Channel, BoxError> {
    let path = socket.to_owned();
    Ok(Endpoint::try_from("http://workload-api.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?)
}

/// Call `FetchX509SVID` directly (with or without the security header) and return the first
/// response, to check the double's own protocol behaviour.
pub async fn fetch_x509_svid_raw(
    socket: &Path,
    security_header: bool,
) -> Result<pb::X509svidResponse, tonic::Status> {
    let channel = channel(socket)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    if security_header {
        request.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    let path = http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
    let mut stream = grpc
        .server_streaming(request, path, tonic_prost::ProstCodec::default())
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("stream ended without a response"))
}
