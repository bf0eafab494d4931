//! The gRPC face of wardgate: Envoy's `envoy.service.auth.v3.Authorization` service, the
//! `grpc.health.v1` health service beside it, the Unix-socket and TCP listeners, and graceful
//! shutdown.
//!
//! This module owns the translation between Envoy's `CheckRequest`/`CheckResponse` and the
//! policy engine's [`Request`]/[`Decision`]: it borrows every field from the `CheckRequest`
//! (no string copies on the way in), takes the request time once, calls [`Policy::decide`]
//! while holding one `arc-swap` guard, and renders the decision as an OK response with
//! `x-wardgate-rule` (removing every client-sent `x-wardgate-*` header) or as an HTTP 403 with
//! `x-wardgate-reason` and a JSON body naming the reason only. Both carry dynamic metadata for
//! Envoy's access log.
//!
//! It must never decide anything itself beyond failing closed on a request it cannot read, never
//! answer a Check with a gRPC error (that would leave the outcome to Envoy's
//! `failure_mode_allow`), never panic or unwrap on anything that came over the network, never
//! block or await while holding the policy guard, and never put a rule name in a denial a
//! client can see.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::protobuf::{value::Kind, NullValue, Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::decision_log::loggable_path;
use crate::identity;
use crate::policy::{
    CertificateFacts, Decision, PeerCertificate, Policy, PolicyHandle, Reason, Request, Verdict,
};
use crate::telemetry::{CheckEvent, Telemetry};

/// Header added to the upstream request on allow, naming the rule that allowed it.
pub const RULE_HEADER: &str = "x-wardgate-rule";
/// Header added to the upstream request when a break-glass entry allowed it (value `true`).
pub const BREAK_GLASS_HEADER: &str = "x-wardgate-break-glass";
/// Header on a denial, naming the reason (`Reason::as_str`).
pub const REASON_HEADER: &str = "x-wardgate-reason";
/// wardgate's own header namespace: client-sent headers with this prefix never reach upstream.
pub const HEADER_PREFIX: &str = "x-wardgate-";

/// Where the gRPC server listens: `unix:/path/to.sock` or `host:port`.
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

/// Settings of the gRPC server that do not come from the bundle.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Destination principal to use when Envoy sends none in
    /// `attributes.destination.principal` (deployments where Envoy's own certificate carries no
    /// URI SAN). Envoy's value wins when present.
    pub destination_principal: Option<String>,
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
    /// Where every decided Check is recorded (metrics, decision log); `None` records nothing.
    pub telemetry: Option<Arc<Telemetry>>,
    /// With `Some`, a forwarded peer certificate must also be signed by a CA in the trust
    /// bundle of the trust domain of the principal's SPIFFE ID (`serve --verify-chain`); a
    /// certificate that is not is denied `bad_certificate`. Envoy checks the chain against all
    /// the CAs it trusts at once; this adds the SPIFFE rule that an SVID is verified against its
    /// own trust domain, so one federated CA cannot mint another domain's identities.
    pub verify_chain: Option<crate::trust::TrustHandle>,
    /// A shadow bundle evaluated beside the enforced one on every check (`serve
    /// --shadow-bundle`); disagreements are counted and logged, responses never change.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            destination_principal: None,
            unix_socket_mode: 0o660,
            drain_timeout: Duration::from_secs(15),
            health_poll_interval: Duration::from_millis(250),
            telemetry: None,
            verify_chain: None,
            shadow: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
    /// The gRPC transport failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `Authorization` service: answers Envoy's Checks from the policy in force.
///
/// Cheap to clone (two `Arc`s). Construct it in-process to drive decisions without a socket,
/// through [`Authorization::check`] or [`AuthzService::respond`].
#[derive(Clone)]
pub struct AuthzService {
    policy: PolicyHandle,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for AuthzService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = self.policy.load();
        f.debug_struct("AuthzService")
            .field("policy_revision", &guard.as_ref().map(|p| p.revision()))
            .field("config", &self.config)
            .finish()
    }
}

impl AuthzService {
    /// A service reading decisions from `policy`.
    pub fn new(policy: PolicyHandle, config: ServerConfig) -> Self {
        AuthzService {
            policy,
            config: Arc::new(config),
        }
    }

    /// With chain verification on: why the forwarded certificate (`der`) does not chain to the
    /// bundle of its principal's trust domain (`None` when it does, or when verification is off).
    fn chain_problem(&self, principal: Option<&str>, der: &[u8]) -> Option<String> {
        let trust = self.config.verify_chain.as_ref()?;
        // An invalid principal is denied `unauthenticated` before the certificate matters.
        let (trust_domain, _) = principal.and_then(identity::spiffe_id_parts)?;
        trust
            .load()
            .verify_leaf(trust_domain, der)
            .err()
            .map(|e| format!("does not chain to its trust domain's bundle: {e}"))
    }

    /// Decide one Check and render Envoy's answer. Synchronous and infallible: whatever the
    /// request holds, the answer is an allow or a denial with a reason.
    pub fn respond(&self, check: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        let guard = self.policy.load();
        let policy: Option<&Policy> = guard.as_deref();

        let attributes = check.attributes.as_ref();
        let source = attributes.and_then(|a| a.source.as_ref());
        let request = attributes.and_then(|a| a.request.as_ref());
        let http = request.and_then(|r| r.http.as_ref());
        let source_principal = source
            .map(|p| p.principal.as_str())
            .filter(|p| !p.is_empty());
        let destination_principal = attributes
            .and_then(|a| a.destination.as_ref())
            .map(|p| p.principal.as_str())
            .filter(|p| !p.is_empty())
            .or(self.config.destination_principal.as_deref());

        // The instant the check is judged at: Envoy's request time, else now.
        let time = request
            .and_then(|r| r.time.as_ref())
            .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
            .unwrap_or_else(jiff::Timestamp::now);

        // Storage for the parsed peer certificate; `PeerCertificate` borrows from it.
        let mut forwarded: Option<Rc<Result<ForwardedCert, identity::CertError>>> = None;
        let mut unreadable: Option<String> = None;
        let mut break_glass_reason = None;

        let decision = match (policy, http) {
            (None, _) => Decision::NO_POLICY,
            (Some(_), None) => Decision {
                verdict: Verdict::Deny,
                // Envoy always sends the HTTP attributes for an HTTP filter; without them the
                // call cannot be judged. Say why as precisely as the request allows.
                reason: if source_principal.is_none() {
                    Reason::Unauthenticated
                } else {
                    Reason::BadPath
                },
                rule: None,
                source_segment: None,
                destination_segment: None,
            },
            (Some(policy), Some(http)) => {
                let certificate = source.map(|p| p.certificate.as_str()).unwrap_or_default();
                let peer_certificate = if certificate.is_empty() {
                    PeerCertificate::NotForwarded
                } else {
                    match &**forwarded.insert(cached_certificate(certificate)) {
                        Ok(cert) => match self.chain_problem(source_principal, &cert.der) {
                            None => PeerCertificate::Parsed(&cert.facts),
                            Some(problem) => {
                                PeerCertificate::Unreadable(unreadable.insert(problem))
                            }
                        },
                        Err(error) => PeerCertificate::Unreadable(
                            unreadable.insert(format!("unreadable: {error}")),
                        ),
                    }
                };
                let request = Request {
                    source: source_principal,
                    destination: destination_principal,
                    method: &http.method,
                    path: &http.path,
                    host: &http.host,
                    headers: &http.headers,
                    time,
                    peer_certificate,
                };
                let decision = policy.decide(&request);
                if let Some(shadow) = &self.config.shadow {
                    shadow.compare(&request, &decision);
                }
                if decision.reason == Reason::BreakGlass {
                    break_glass_reason = stated_break_glass_reason(policy, &http.headers);
                    log_break_glass(&request, &decision, break_glass_reason);
                }
                decision
            }
        };
        let elapsed = started.elapsed();
        let revision = policy.map(Policy::revision);

        tracing::debug!(
            decision = decision.verdict.as_str(),
            reason = decision.reason.as_str(),
            rule = decision.rule,
            source = source_principal,
            destination = destination_principal,
            "check"
        );

        if let Some(telemetry) = &self.config.telemetry {
            telemetry.record_check(&CheckEvent {
                decision: &decision,
                revision,
                elapsed,
                time,
                // Only the decision log reads it: no header lookup when it is off.
                request_id: http
                    .filter(|_| telemetry.decision_log_enabled())
                    .and_then(request_id),
                source: source_principal,
                destination: destination_principal,
                method: http.map_or("", |h| h.method.as_str()),
                path: http.map_or("", |h| h.path.as_str()),
                host: http.map_or("", |h| h.host.as_str()),
                break_glass_reason,
            });
        }

        let headers = http.map(|h| &h.headers);
        render(&decision, revision, elapsed, headers)
    }
}

/// How many parsed forwarded certificates each thread remembers.
const CERT_CACHE_ENTRIES: usize = 512;

/// A forwarded certificate, decoded once: its DER (for chain verification) and the facts
/// `decide` judges.
#[derive(Debug)]
struct ForwardedCert {
    der: Vec<u8>,
    facts: CertificateFacts,
}

/// Decoded forwarded certificates, per thread (no lock shared between checks), keyed by a hash
/// of the URL-encoded PEM's length and last 96 bytes (its signature, unique per certificate)
/// and confirmed by comparing the whole text. A hit costs a short hash, one `memcmp` and a
/// reference-count increment instead of percent-decoding, base64 and X.509 parsing, which cost
/// far more than the decision itself. Only decoding is cached: it is a pure function of the
/// text. Validity, SAN and lifetime are judged by `decide` on every check, and chain
/// verification (which depends on trust bundles that rotate) runs on every check too.
type CertCache = HashMap<u64, Vec<(Box<str>, Rc<Result<ForwardedCert, identity::CertError>>)>>;

thread_local! {
    static CERT_CACHE: std::cell::RefCell<(CertCache, usize)> =
        std::cell::RefCell::new((HashMap::new(), 0));
}

fn cert_cache_key(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let bytes = text.as_bytes();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.len().hash(&mut h);
    bytes[bytes.len().saturating_sub(96)..].hash(&mut h);
    h.finish()
}

/// Decode a forwarded certificate, remembered per thread.
fn cached_certificate(text: &str) -> Rc<Result<ForwardedCert, identity::CertError>> {
    let key = cert_cache_key(text);
    let hit = CERT_CACHE.with(|c| {
        c.borrow()
            .0
            .get(&key)
            .and_then(|list| list.iter().find(|(t, _)| &**t == text))
            .map(|(_, r)| Rc::clone(r))
    });
    if let Some(r) = hit {
        return r;
    }
    let decoded = Rc::new(identity::certificate_der(text).and_then(|der| {
        let facts = identity::facts_from_der(&der)?;
        Ok(ForwardedCert { der, facts })
    }));
    CERT_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.1 >= CERT_CACHE_ENTRIES {
            // Full: start over rather than track recency; a sidecar sees few distinct callers.
            c.0.clear();
            c.1 = 0;
        }
        c.0.entry(key)
            .or_default()
            .push((text.into(), Rc::clone(&decoded)));
        c.1 += 1;
    });
    decoded
}

/// Longest request id taken into the decision log.
const MAX_REQUEST_ID: usize = 128;

/// The request id for the decision log: Envoy's `x-request-id` (what its access log shows)
/// when it looks like one (at most 128 bytes of `[A-Za-z0-9._-]`, as UUIDs and trace ids are),
/// else Envoy's stream id. Anything else a client could put there is not logged.
fn request_id(http: &HttpRequest) -> Option<&str> {
    let looks_like_an_id = |v: &&str| {
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    http.headers
        .get("x-request-id")
        .map(String::as_str)
        .filter(looks_like_an_id)
        .or_else(|| Some(http.id.as_str()).filter(looks_like_an_id))
}

/// The break-glass reason the caller stated (the only header value wardgate ever logs).
fn stated_break_glass_reason<'h>(
    policy: &Policy,
    headers: &'h HashMap<String, String>,
) -> Option<&'h str> {
    // The bundle compiler stores the header name in lower case, as Envoy sends header names.
    policy
        .break_glass_header()
        .and_then(|name| headers.get(name))
        .map(String::as_str)
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.respond(request.get_ref())))
    }
}

/// A break-glass allow is rare and audited: log it at warning level with the stated reason
/// (the only header value wardgate ever logs).
fn log_break_glass(request: &Request<'_>, decision: &Decision<'_>, stated: Option<&str>) {
    let stated = stated.unwrap_or_default();
    let path = loggable_path(request.path);
    tracing::warn!(
        rule = decision.rule,
        source = request.source,
        destination = request.destination,
        method = request.method,
        path,
        break_glass_reason = stated,
        "break-glass allow"
    );
}

/// Render a decision as Envoy's `CheckResponse`.
fn render(
    decision: &Decision<'_>,
    revision: Option<u64>,
    elapsed: Duration,
    client_headers: Option<&HashMap<String, String>>,
) -> CheckResponse {
    let mut response = CheckResponse::new();
    let metadata = metadata(decision, revision, elapsed);
    response.set_dynamic_metadata(Some(metadata));

    match decision.verdict {
        Verdict::Allow => {
            response.status = Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                message: String::new(),
                details: Vec::new(),
            });
            let mut ok = OkHttpResponseBuilder::new();
            let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let mut set_by_us: [Option<&str>; 2] = [None, None];
            if let Some(rule) = decision.rule {
                ok.add_header(RULE_HEADER, rule, overwrite, false);
                set_by_us[0] = Some(RULE_HEADER);
            }
            if decision.reason == Reason::BreakGlass {
                ok.add_header(
                    BREAK_GLASS_HEADER,
                    decision.rule.unwrap_or("true"),
                    overwrite,
                    false,
                );
                set_by_us[1] = Some(BREAK_GLASS_HEADER);
            }
            // Every client-sent header in our namespace goes, except those we overwrite above:
            // Envoy applies `headers_to_remove` after `headers` (verified with Envoy 1.40 in
            // tests/envoy_e2e.rs), so listing ours as well would remove our own value.
            let mut forged: Vec<&String> = client_headers
                .into_iter()
                .flat_map(HashMap::keys)
                .filter(|name| is_wardgate_header(name))
                .filter(|name| {
                    !set_by_us
                        .iter()
                        .flatten()
                        .any(|ours| name.eq_ignore_ascii_case(ours))
                })
                .collect();
            forged.sort_unstable();
            for name in forged {
                ok.remove_header(name.as_str());
            }
            response.set_http_response(ok);
        }
        Verdict::Deny => {
            response.status = Some(rpc::Status {
                code: tonic::Code::PermissionDenied as i32,
                message: String::new(),
                details: Vec::new(),
            });
            let reason = decision.reason.as_str();
            let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(HttpStatusCode::Forbidden);
            denied.add_header(REASON_HEADER, reason, overwrite, false);
            denied.add_header("content-type", "application/json", overwrite, false);
            // Reason names are fixed snake_case identifiers: nothing to escape.
            denied.set_body(format!("{{\"reason\":\"{reason}\"}}"));
            response.set_http_response(denied);
        }
    }
    response
}

/// Whether `name` is in wardgate's header namespace (case-insensitive).
fn is_wardgate_header(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name.as_bytes()[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX.as_bytes())
}

/// The dynamic metadata Envoy attaches to the request (namespace
/// `envoy.filters.http.ext_authz`), for access logs and later filters.
fn metadata(decision: &Decision<'_>, revision: Option<u64>, elapsed: Duration) -> Struct {
    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }
    fn optional(s: Option<&str>) -> Value {
        s.map_or(
            Value {
                kind: Some(Kind::NullValue(NullValue::NullValue as i32)),
            },
            string,
        )
    }
    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    let mut fields = HashMap::with_capacity(7);
    fields.insert("decision".to_owned(), string(decision.verdict.as_str()));
    fields.insert("reason".to_owned(), string(decision.reason.as_str()));
    fields.insert("rule".to_owned(), optional(decision.rule));
    fields.insert(
        "source_segment".to_owned(),
        optional(decision.source_segment),
    );
    fields.insert(
        "destination_segment".to_owned(),
        optional(decision.destination_segment),
    );
    // Revisions are small integers in practice; f64 holds every integer below 2^53 exactly.
    #[allow(clippy::cast_precision_loss)]
    let revision = revision.map_or(
        Value {
            kind: Some(Kind::NullValue(NullValue::NullValue as i32)),
        },
        |r| number(r as f64),
    );
    fields.insert("bundle_revision".to_owned(), revision);
    fields.insert(
        "evaluation_us".to_owned(),
        number(elapsed.as_secs_f64() * 1e6),
    );
    Struct { fields }
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
    match &addr {
        ListenAddr::Unix(path) => {
            let listener = bind_unix(&addr, path, config.unix_socket_mode)?;
            tracing::info!(listen = %addr, "serving ext_authz");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = serve_incoming(incoming, policy, config, shutdown).await;
            if let Err(error) = std::fs::remove_file(path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot remove socket file");
                }
            }
            served
        }
        ListenAddr::Tcp(socket_addr) => {
            let listener = tokio::net::TcpListener::bind(socket_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!(listen = %addr, "serving ext_authz");
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            serve_incoming(incoming, policy, config, shutdown).await
        }
    }
}

/// Like [`run`], on TCP with mutual TLS: every connection is handshaken with `tls` (see
/// [`crate::tls::server_config`]: wardgate's current SVID, callers verified against their
/// trust domain's bundle and an allow-list) before gRPC sees it. A refused caller gets a TLS
/// alert and a warning line in the log, never a Check answer.
pub async fn run_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    policy: PolicyHandle,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: ListenAddr::Tcp(addr),
            source,
        })?;
    tracing::info!(listen = %addr, "serving ext_authz over mTLS");
    serve_incoming(
        crate::tls::incoming(listener, tls),
        policy,
        config,
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
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let serving = policy.load().is_some();
    set_health(&reporter, serving).await;
    let health_task = tokio::spawn(follow_policy(
        reporter,
        Arc::clone(&policy),
        config.health_poll_interval,
        serving,
    ));
    let authz = AuthorizationServer::new(AuthzService::new(policy, config));
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Envoy keeps a few long-lived HTTP/2 connections and multiplexes Checks over them;
        // keepalive pings find a dead peer without waiting for TCP timeouts.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .accept_http1(false)
        .add_service(health_service)
        .add_service(authz);
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

/// Bind a Unix socket at `path`: refuse to steal it from a live server, remove a stale socket
/// file, never remove anything that is not a socket, then set the permission bits.
pub(crate) fn bind_unix(
    addr: &ListenAddr,
    path: &Path,
    mode: u32,
) -> Result<tokio::net::UnixListener, ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ServerError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServerError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
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
        .set_service_status(
            <AuthorizationServer<AuthzService> as NamedService>::NAME,
            status,
        )
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use arc_swap::ArcSwapOption;
    use envoy_types::ext_authz::v3::pb::{DeniedHttpResponse, HttpResponse, OkHttpResponse};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    const POLICY: &str = r#"
version: 1
revision: 7
trust_domains: [hospital.example, partner-lab.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
  vendor:
    members: ["spiffe://partner-lab.example/**"]
rules:
  - name: vendor-never-reaches-clinical
    action: deny
    from: [vendor]
    to: [clinical]
  - name: ehr-reads-lab-results
    from: ["spiffe://hospital.example/ns/clinical/sa/ehr"]
    to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
    methods: [GET]
    paths: ["/results/**"]
"#;

    const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
    const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
    const VENDOR: &str = "spiffe://partner-lab.example/ns/vendor/sa/reflab";

    fn service() -> AuthzService {
        let policy = Policy::from_yaml_str("test.yaml", POLICY).unwrap();
        let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
        AuthzService::new(handle, ServerConfig::default())
    }

    fn check(source: &str, destination: &str, method: &str, path: &str) -> CheckRequest {
        check_with_headers(source, destination, method, path, &[])
    }

    fn check_with_headers(
        source: &str,
        destination: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: source.to_owned(),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    principal: destination.to_owned(),
                    ..Default::default()
                }),
                request: Some(AttrRequest {
                    time: None,
                    http: Some(HttpRequest {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        host: "lab.clinical.svc".to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    fn ok_response(response: &CheckResponse) -> &OkHttpResponse {
        match response.http_response.as_ref() {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("expected an OK response, got {other:?}"),
        }
    }

    fn denied_response(response: &CheckResponse) -> &DeniedHttpResponse {
        match response.http_response.as_ref() {
            Some(HttpResponse::DeniedResponse(denied)) => denied,
            other => panic!("expected a denied response, got {other:?}"),
        }
    }

    fn header<'r>(
        headers: &'r [envoy_types::ext_authz::v3::pb::HeaderValueOption],
        name: &str,
    ) -> Option<&'r str> {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    }

    fn meta<'m>(response: &'m CheckResponse, key: &str) -> &'m Kind {
        response
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .and_then(|v| v.kind.as_ref())
            .unwrap_or_else(|| panic!("metadata has no {key}"))
    }

    fn status_code(response: &CheckResponse) -> i32 {
        response.status.as_ref().map_or(-1, |s| s.code)
    }

    #[test]
    fn allow_adds_rule_header_and_overwrites() {
        let response = service().respond(&check(EHR, LAB, "GET", "/results/42?full=1"));
        assert_eq!(status_code(&response), 0);
        let ok = ok_response(&response);
        assert_eq!(
            header(&ok.headers, RULE_HEADER),
            Some("ehr-reads-lab-results")
        );
        let added = ok
            .headers
            .iter()
            .find(|h| h.header.as_ref().is_some_and(|h| h.key == RULE_HEADER));
        assert_eq!(
            added.map(|h| h.append_action),
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
        );
        assert!(ok.headers_to_remove.is_empty());
    }

    #[test]
    fn allow_removes_forged_wardgate_headers() {
        let request = check_with_headers(
            EHR,
            LAB,
            "GET",
            "/results/42",
            &[
                ("x-wardgate-rule", "admin-everything"),
                ("x-wardgate-break-glass", "true"),
                ("x-wardgate-anything", "1"),
                ("x-purpose-of-use", "TREAT"),
            ],
        );
        let response = service().respond(&request);
        let ok = ok_response(&response);
        // The forged rule header is overwritten, never listed for removal (that could remove
        // our own value); the others are removed; unrelated headers are left alone.
        assert_eq!(
            header(&ok.headers, RULE_HEADER),
            Some("ehr-reads-lab-results")
        );
        assert_eq!(
            ok.headers_to_remove,
            vec![
                "x-wardgate-anything".to_owned(),
                "x-wardgate-break-glass".to_owned()
            ]
        );
    }

    #[test]
    fn deny_has_reason_header_and_json_body_without_rule() {
        let response = service().respond(&check(VENDOR, LAB, "GET", "/results/42"));
        assert_eq!(status_code(&response), tonic::Code::PermissionDenied as i32);
        let denied = denied_response(&response);
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
        assert_eq!(header(&denied.headers, REASON_HEADER), Some("rule"));
        assert_eq!(
            header(&denied.headers, "content-type"),
            Some("application/json")
        );
        assert_eq!(denied.body, r#"{"reason":"rule"}"#);
        assert!(!denied.body.contains("vendor-never-reaches-clinical"));
        assert!(header(&denied.headers, RULE_HEADER).is_none());
        // The rule is in the metadata for Envoy's access log, not in what the client sees.
        assert_eq!(
            meta(&response, "rule"),
            &Kind::StringValue("vendor-never-reaches-clinical".into())
        );
    }

    #[test]
    fn default_deny_and_bad_path() {
        let service = service();
        let response = service.respond(&check(EHR, LAB, "GET", "/admin"));
        assert_eq!(
            denied_response(&response).body,
            r#"{"reason":"default_deny"}"#
        );
        let response = service.respond(&check(EHR, LAB, "GET", "/results%2F..%2Fadmin"));
        assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);
        // A dot-segment is refused rather than resolved: an upstream may read it differently.
        let response = service.respond(&check(EHR, LAB, "GET", "/results/../admin"));
        assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);
    }

    #[test]
    fn metadata_names_decision_segments_revision_and_time() {
        let response = service().respond(&check(EHR, LAB, "GET", "/results/1"));
        assert_eq!(
            meta(&response, "decision"),
            &Kind::StringValue("allow".into())
        );
        assert_eq!(meta(&response, "reason"), &Kind::StringValue("rule".into()));
        assert_eq!(
            meta(&response, "rule"),
            &Kind::StringValue("ehr-reads-lab-results".into())
        );
        assert_eq!(
            meta(&response, "source_segment"),
            &Kind::StringValue("clinical".into())
        );
        assert_eq!(
            meta(&response, "destination_segment"),
            &Kind::StringValue("clinical".into())
        );
        assert_eq!(meta(&response, "bundle_revision"), &Kind::NumberValue(7.0));
        assert!(matches!(meta(&response, "evaluation_us"), Kind::NumberValue(us) if *us >= 0.0));
    }

    #[test]
    fn no_policy_denies() {
        let service = AuthzService::new(Arc::new(ArcSwapOption::empty()), ServerConfig::default());
        let response = service.respond(&check(EHR, LAB, "GET", "/results/1"));
        assert_eq!(denied_response(&response).body, r#"{"reason":"no_policy"}"#);
        assert!(matches!(
            meta(&response, "bundle_revision"),
            Kind::NullValue(_)
        ));
    }

    #[test]
    fn malformed_requests_deny_never_error() {
        let service = service();
        let empty = service.respond(&CheckRequest::default());
        assert_eq!(
            denied_response(&empty).body,
            r#"{"reason":"unauthenticated"}"#
        );

        let mut no_http = check(EHR, LAB, "GET", "/results/1");
        if let Some(request) = no_http.attributes.as_mut().and_then(|a| a.request.as_mut()) {
            request.http = None;
        }
        let response = service.respond(&no_http);
        assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);

        let response = service.respond(&check("", LAB, "GET", "/results/1"));
        assert_eq!(
            denied_response(&response).body,
            r#"{"reason":"unauthenticated"}"#
        );
    }

    #[test]
    fn pinned_destination_applies_only_when_envoy_sends_none() {
        let policy = Policy::from_yaml_str("test.yaml", POLICY).unwrap();
        let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
        let service = AuthzService::new(
            handle,
            ServerConfig {
                destination_principal: Some(LAB.to_owned()),
                ..ServerConfig::default()
            },
        );
        let response = service.respond(&check(EHR, "", "GET", "/results/1"));
        assert_eq!(status_code(&response), 0);
        let response = service.respond(&check(
            EHR,
            "spiffe://hospital.example/ns/clinical/sa/imaging",
            "GET",
            "/results/1",
        ));
        assert_eq!(
            denied_response(&response).body,
            r#"{"reason":"default_deny"}"#
        );
    }

    #[test]
    fn unreadable_forwarded_certificate_is_refused() {
        let mut request = check(EHR, LAB, "GET", "/results/1");
        if let Some(source) = request.attributes.as_mut().and_then(|a| a.source.as_mut()) {
            source.certificate = "-----BEGIN%20CERTIFICATE-----%0Agarbage".to_owned();
        }
        let response = service().respond(&request);
        assert_eq!(
            denied_response(&response).body,
            r#"{"reason":"bad_certificate"}"#
        );
    }

    #[tokio::test]
    async fn grpc_entry_point_never_errors() {
        let response = service()
            .check(tonic::Request::new(CheckRequest::default()))
            .await;
        assert!(response.is_ok());
    }

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

    #[test]
    fn wardgate_header_prefix_is_case_insensitive() {
        assert!(is_wardgate_header("x-wardgate-rule"));
        assert!(is_wardgate_header("X-Wardgate-Rule"));
        assert!(!is_wardgate_header("x-wardgate"));
        assert!(!is_wardgate_header("x-ward"));
    }

    mod listener {
        use super::*;
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
                matches!(second, Err(ServerError::SocketInUse { .. })),
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
                matches!(result, Err(ServerError::NotASocket { .. })),
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
}

#[cfg(test)]
mod cert_cache_tests {
    use super::*;

    fn url_encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn pem(id: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("uri"))];
        let key = rcgen::KeyPair::generate().expect("key");
        url_encode(&p.self_signed(&key).expect("cert").pem())
    }

    fn facts(text: &str) -> Result<CertificateFacts, identity::CertError> {
        match &*cached_certificate(text) {
            Ok(cert) => {
                assert_eq!(identity::certificate_der(text).as_ref(), Ok(&cert.der));
                Ok(cert.facts.clone())
            }
            Err(e) => Err(e.clone()),
        }
    }

    #[test]
    fn cached_parse_is_the_parse() {
        let a = pem("spiffe://td/a");
        let b = pem("spiffe://td/b");
        for _ in 0..2 {
            assert_eq!(facts(&a), identity::certificate_facts(&a));
            assert_eq!(facts(&b), identity::certificate_facts(&b));
        }
        assert_eq!(
            facts(&a).expect("parsed").uri_sans,
            vec!["spiffe://td/a".to_string()]
        );
        // Same length and same tail, different text: the whole text decides.
        let mut forged = a.clone();
        forged.replace_range(40..41, if &a[40..41] == "A" { "B" } else { "A" });
        assert_eq!(cert_cache_key(&forged), cert_cache_key(&a));
        assert_eq!(facts(&forged), identity::certificate_facts(&forged));
        assert_ne!(facts(&forged), facts(&a));
        assert!(facts("garbage").is_err());
    }
}
