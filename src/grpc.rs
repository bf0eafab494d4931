//! The gRPC server: tonic serving the ext_authz [`AuthzService`], `grpc.health.v1` and gRPC
//! reflection on a Unix socket, on TCP, or on TCP with mutual TLS, until shutdown, then
//! draining.
//!
//! This module owns the transport around the adapter: the HTTP/2 settings Envoy's long-lived
//! connections want (keepalive pings, no HTTP/1), health that follows the policy (SERVING while
//! a policy is in force, NOT_SERVING otherwise, for the whole server and for
//! `envoy.service.auth.v3.Authorization`), and the drain: on shutdown stop accepting, let
//! in-flight Checks finish within [`ServerConfig::drain_timeout`], remove the socket file; and
//! gRPC reflection (v1 and v1alpha, for grpcurl and the like) describing Authorization and
//! Health: always on a Unix socket or plain TCP, on the mTLS listener only for the callers in
//! [`ServerConfig::reflection_allow`].
//! [`ServerConfig`] holds those settings and carries the adapter's own ([`AuthzConfig`]) to
//! it; binding is [`crate::listen`]'s. It must never answer a Check itself (every answer is
//! [`AuthzService::respond`]'s), never serve on an address the operator did not give, and
//! never wait for stragglers longer than the drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::extauthz::{AuthzConfig, AuthzService, CheckServer};
use crate::listen::{self, ListenAddr, ListenError, Listener};
use crate::policy::PolicyHandle;
use crate::tls::TlsConnectInfo;

/// The Authorization service's protobuf descriptors with every file they import, compiled by
/// build.rs from the vendored protos in `proto/envoy-api`.
const AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/authz_descriptor.bin"));

/// Settings of the gRPC server that do not come from the bundle.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// What every Check needs beyond the policy (pinned destination, telemetry, chain
    /// verification, shadow bundle), handed to the [`AuthzService`].
    pub authz: AuthzConfig,
    /// Permission bits of the Unix socket file. Default `0o660`: Envoy connects as the same user
    /// or as a member of the socket's group (the usual shared-group arrangement in one pod);
    /// nobody else may ask for decisions or probe the policy. The bits are set right after
    /// `bind`, which creates the file under the process umask; keep the socket in a directory
    /// only wardgate and Envoy can enter (a shared `emptyDir` in Kubernetes) to close that
    /// window.
    pub unix_socket_mode: u32,
    /// After the shutdown signal, how long to wait for in-flight Checks and open connections to
    /// finish before giving up on them.
    pub drain_timeout: Duration,
    /// How often the health service re-reads whether a policy is in force.
    pub health_poll_interval: Duration,
    /// SPIFFE IDs that may use gRPC reflection on the mTLS listener ([`run_tls`]); empty: it
    /// is not served there. Unix socket and plain TCP listeners ([`run`]) always serve it.
    pub reflection_allow: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            authz: AuthzConfig::default(),
            unix_socket_mode: 0o660,
            drain_timeout: Duration::from_secs(15),
            health_poll_interval: Duration::from_millis(250),
            reflection_allow: Vec::new(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The gRPC transport failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service cannot read its descriptors (a defect of the build).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Who may use gRPC reflection on one listener.
#[derive(Debug, Clone)]
enum Reflection {
    /// Not served.
    Off,
    /// Every caller that can connect (a Unix socket or plain TCP: the same callers as Check).
    Open,
    /// Only mTLS callers with one of these SPIFFE IDs; others get PERMISSION_DENIED.
    Only(Arc<[String]>),
}

/// Serve `Authorization` and `grpc.health.v1` on `addr` until `shutdown` completes, then stop
/// accepting, let in-flight Checks finish (bounded by [`ServerConfig::drain_timeout`]) and
/// return. A Unix socket file is removed on the way out.
///
/// Health: the overall service (`""`) and `envoy.service.auth.v3.Authorization` report SERVING
/// while a policy is in force and NOT_SERVING otherwise, re-read every
/// [`ServerConfig::health_poll_interval`].
pub async fn run(
    addr: ListenAddr,
    policy: PolicyHandle,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = Listener::bind(&addr, config.unix_socket_mode).await?;
    tracing::info!(listen = %addr, "serving ext_authz");
    match listener {
        Listener::Unix(listener, path) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = serve_incoming(incoming, policy, config, Reflection::Open, shutdown).await;
            listen::remove_socket_file(&path);
            served
        }
        Listener::Tcp(listener) => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            serve_incoming(incoming, policy, config, Reflection::Open, shutdown).await
        }
    }
}

/// Like [`run`], on TCP with mutual TLS: every connection is handshaken with `tls` (see
/// [`crate::tls::server_config`]: wardgate's current SVID, callers verified against their
/// trust domain's bundle and an allow-list) before gRPC sees it, within the default
/// [`crate::tls::HandshakeLimits`]. A refused caller gets a TLS alert and a (throttled) warning
/// line in the log, never a Check answer.
pub async fn run_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    policy: PolicyHandle,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = listen::bind_tcp(addr).await?;
    tracing::info!(listen = %addr, "serving ext_authz over mTLS");
    let reflection = if config.reflection_allow.is_empty() {
        tracing::info!("gRPC reflection off on the mTLS listener (no --reflection-allow)");
        Reflection::Off
    } else {
        tracing::info!(allow = ?config.reflection_allow, "gRPC reflection on the mTLS listener for these callers only");
        Reflection::Only(config.reflection_allow.iter().cloned().collect())
    };
    serve_incoming(
        crate::tls::incoming(listener, tls, crate::tls::HandshakeLimits::default()),
        policy,
        config,
        reflection,
        shutdown,
    )
    .await
}

/// Serve `Authorization` and `grpc.health.v1` on the connections `incoming` yields, with the
/// health, keepalive and drain behaviour of [`run`].
async fn serve_incoming<I, IO, IE>(
    incoming: I,
    policy: PolicyHandle,
    config: ServerConfig,
    reflection: Reflection,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain_timeout = config.drain_timeout;
    // Built before anything is spawned: a descriptor set that does not read fails here.
    let reflection_services = reflection_services(reflection)?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let serving = policy.load().is_some();
    set_health(&reporter, serving).await;
    let health_task = tokio::spawn(follow_policy(
        reporter,
        Arc::clone(&policy),
        config.health_poll_interval,
        serving,
    ));
    // Not the generated server: this one answers an undecodable CheckRequest with a denial.
    let authz = CheckServer::new(AuthzService::new(policy, config.authz));
    let mut router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Envoy keeps a few long-lived HTTP/2 connections and multiplexes Checks over them;
        // keepalive pings find a dead peer without waiting for TCP timeouts.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .accept_http1(false)
        .add_service(health_service)
        .add_service(authz);
    if let Some((v1, v1alpha)) = reflection_services {
        router = router.add_service(v1).add_service(v1alpha);
    }
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections, draining in-flight checks");
        let _ = drain_tx.send(());
    };
    let drain_deadline = async move {
        if drain_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain_timeout).await;
    };
    let result = tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, signal) => served,
        () = drain_deadline => {
            tracing::warn!(?drain_timeout, "drain timeout: closing remaining connections");
            Ok(())
        }
    };
    health_task.abort();
    result.map_err(ServerError::from)
}

/// The reflection services (v1, and v1alpha for older clients such as grpcio's), each behind
/// the caller check of `reflection`; `None` when it is off.
#[allow(clippy::type_complexity)] // the builder's services are unnameable `impl` types
fn reflection_services(
    reflection: Reflection,
) -> Result<
    Option<(
        tonic::service::interceptor::InterceptedService<
            tonic_reflection::server::v1::ServerReflectionServer<
                impl tonic_reflection::server::v1::ServerReflection,
            >,
            impl tonic::service::Interceptor + Clone,
        >,
        tonic::service::interceptor::InterceptedService<
            tonic_reflection::server::v1alpha::ServerReflectionServer<
                impl tonic_reflection::server::v1alpha::ServerReflection,
            >,
            impl tonic::service::Interceptor + Clone,
        >,
    )>,
    tonic_reflection::server::Error,
> {
    let only = match reflection {
        Reflection::Off => return Ok(None),
        Reflection::Open => None,
        Reflection::Only(ids) => Some(ids),
    };
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(AUTHZ_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let gate = move |request: tonic::Request<()>| {
        let Some(allowed) = &only else {
            return Ok(request);
        };
        let caller = request
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|info| info.peer_id.as_deref());
        match caller {
            Some(id) if allowed.iter().any(|a| a == id) => Ok(request),
            _ => Err(tonic::Status::permission_denied(
                "gRPC reflection is not allowed for this caller (serve --reflection-allow)",
            )),
        }
    };
    Ok(Some((
        tonic::service::interceptor::InterceptedService::new(builder().build_v1()?, gate.clone()),
        tonic::service::interceptor::InterceptedService::new(builder().build_v1alpha()?, gate),
    )))
}

/// Keep the health status in step with whether a policy is in force.
async fn follow_policy(
    reporter: HealthReporter,
    policy: PolicyHandle,
    interval: Duration,
    mut serving: bool,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = policy.load().is_some();
        if now != serving {
            serving = now;
            set_health(&reporter, serving).await;
        }
    }
}

async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(<CheckServer as NamedService>::NAME, status)
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::extauthz::tests::{check, denied_response, status_code, EHR, LAB, POLICY, VENDOR};
    use crate::policy::Policy;
    use arc_swap::ArcSwapOption;
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use tonic::transport::{Channel, Endpoint, Uri};
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    async fn unix_channel(path: &Path) -> Channel {
        let path = path.to_owned();
        Endpoint::try_from("http://wardgate.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }

    async fn health(channel: Channel, service: &str) -> Status {
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap();
        Status::try_from(response.get_ref().status).unwrap()
    }

    fn fast_config() -> ServerConfig {
        ServerConfig {
            health_poll_interval: Duration::from_millis(10),
            drain_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        }
    }

    #[tokio::test]
    async fn unix_socket_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wardgate.sock");
        // A stale socket left by a crashed server is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());

        let handle: PolicyHandle = Arc::new(ArcSwapOption::empty());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            ListenAddr::Unix(path.clone()),
            Arc::clone(&handle),
            fast_config(),
            async move {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // A second server must not steal a live socket.
        let second = run(
            ListenAddr::Unix(path.clone()),
            Arc::new(ArcSwapOption::empty()),
            fast_config(),
            std::future::ready(()),
        )
        .await;
        assert!(
            matches!(
                second,
                Err(ServerError::Listen(ListenError::SocketInUse { .. }))
            ),
            "{second:?}"
        );

        // No policy: NOT_SERVING, and Checks are denied with no_policy.
        let channel = unix_channel(&path).await;
        assert_eq!(health(channel.clone(), "").await, Status::NotServing);
        let authz = "envoy.service.auth.v3.Authorization";
        assert_eq!(health(channel.clone(), authz).await, Status::NotServing);
        let mut client = AuthorizationClient::new(channel.clone());
        let request = check(EHR, LAB, "GET", "/results/1");
        let response = client.check(request.clone()).await.unwrap().into_inner();
        assert_eq!(denied_response(&response).body, r#"{"reason":"no_policy"}"#);

        // A policy arrives: SERVING, and the same Check is allowed.
        handle.store(Some(Arc::new(
            Policy::from_yaml_str("t.yaml", POLICY).unwrap(),
        )));
        let deadline = Instant::now() + Duration::from_secs(10);
        while health(channel.clone(), authz).await != Status::Serving {
            assert!(
                Instant::now() < deadline,
                "health did not follow the policy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health(channel.clone(), "").await, Status::Serving);
        let response = client.check(request).await.unwrap().into_inner();
        assert_eq!(status_code(&response), 0);
        drop(client);
        drop(channel);

        // Shutdown: run returns and the socket file is gone.
        stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not stop")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn never_removes_what_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important.txt");
        std::fs::write(&path, "keep me").unwrap();
        let result = run(
            ListenAddr::Unix(path.clone()),
            Arc::new(ArcSwapOption::empty()),
            fast_config(),
            std::future::ready(()),
        )
        .await;
        assert!(
            matches!(
                result,
                Err(ServerError::Listen(ListenError::NotASocket { .. }))
            ),
            "{result:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn tcp_listener_serves_checks() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(
            Policy::from_yaml_str("t.yaml", POLICY).unwrap(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(
            ListenAddr::Tcp(addr),
            handle,
            fast_config(),
            async move {
                let _ = stopped.await;
            },
        ));
        let endpoint = Endpoint::try_from(format!("http://{addr}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) => {
                    assert!(Instant::now() < deadline, "server did not come up");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let response = AuthorizationClient::new(channel)
            .check(check(VENDOR, LAB, "GET", "/results/1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied_response(&response).body, r#"{"reason":"rule"}"#);
        stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server did not stop")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}
