//! The mTLS face of the gRPC listener: a rustls server configuration that presents wardgate's
//! current SVID and admits only callers whose own SVID chains to the trust bundle of their
//! trust domain and whose SPIFFE ID is on an allowlist, and the TCP accept loop that runs the
//! handshakes before tonic sees a connection.
//!
//! This module owns:
//! * [`SvidResolver`]: reads the [`Identity`]'s SVID on every handshake (one `arc-swap`
//!   load), so a rotated SVID is presented from the next handshake on, without a restart and
//!   without touching established connections;
//! * [`CallerVerifier`]: requires a client certificate; takes its one URI SAN as the caller's
//!   SPIFFE ID; verifies the chain (validity, clientAuth usage, signatures) against the CAs of
//!   *that ID's* trust domain only (SPIFFE Workload API §4.6: a partner CA cannot vouch for a
//!   hospital ID), from the same bundles as forwarded-chain verification; then matches the ID
//!   against the [`AllowList`] (bundle pattern syntax: `spiffe://td/ns/*/sa/envoy`,
//!   `spiffe://td/**`);
//! * [`incoming`]: accepts TCP connections, runs each handshake on its own task within
//!   [`HandshakeLimits`], and hands only completed handshakes to tonic, as [`TlsConn`] with the
//!   caller's SPIFFE ID in its connect info. A refused handshake gets a TLS alert, never a gRPC
//!   answer, let alone a decision.
//!
//! Handshakes are bounded so that nobody who can open TCP connections can hold a real caller
//! back: each has [`HANDSHAKE_TIMEOUT`] (3 s) from `accept` to a verified caller, and at most
//! [`MAX_PENDING_HANDSHAKES`] (512) are in progress; a connection beyond them drops the oldest
//! handshake instead of waiting ([`ConnectionSlots`]), so idle connections only recycle slots
//! among themselves while Envoy's handshake, which takes milliseconds, goes through at once.
//! When `accept` fails (out of file descriptors), the oldest handshake is dropped to free one.
//! Refusals, timeouts and drops are debug lines each, and warnings at most once per kind per
//! 10 s (refusals of callers: five) ([`Throttle`]), each counting the ones left out
//! (`suppressed=N`).
//!
//! Session resumption is off (no session cache, no tickets): every connection is a full
//! handshake, so every caller is verified against the bundles and allowlist in force and every
//! connection sees the SVID in force. Envoy holds a few long-lived HTTP/2 connections, so this
//! costs nothing measurable.
//!
//! It must never answer a Check itself, never accept a caller whose chain or ID was not
//! checked, and never block a handshake on anything but in-memory reads.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::identity;
use crate::listen::ConnectionSlots;
use crate::policy::Pattern;
use crate::svid::Identity;
use crate::telemetry::throttle::{Throttle, WARNING_INTERVAL};
use crate::trust::TrustBundles;

/// How long a TLS handshake may take, from `accept` to a verified caller, before the
/// connection is closed: 3 s. Envoy completes its handshake in milliseconds (and gives up on a
/// Check after 0.5 s by default); the slack covers a loaded node, not an idle connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Handshakes in progress at once: 512. A connection beyond them drops the oldest handshake.
/// A pending handshake holds a file descriptor and a few KiB of buffers.
pub const MAX_PENDING_HANDSHAKES: usize = 512;

/// The SPIFFE IDs allowed to call, as patterns in the bundle syntax.
#[derive(Debug, Clone)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

impl AllowList {
    /// Parse SPIFFE ID patterns (`spiffe://td/path`, `*` for one segment, `**` last). An
    /// empty list is an error: it would refuse everybody.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<AllowList, String> {
        if patterns.is_empty() {
            return Err("no caller is allowed: give at least one --allow-caller PATTERN".into());
        }
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                Pattern::parse_spiffe(p).map_err(|e| format!("allow-list pattern `{p}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { patterns })
    }

    /// Whether the SPIFFE ID with this trust domain and path (`""` or `/a/b`) is allowed.
    pub fn allows(&self, trust_domain: &str, path: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| p.matches_id(trust_domain, path))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Presents the SVID in force; see the module documentation.
#[derive(Debug)]
pub struct SvidResolver {
    identity: Arc<Identity>,
    no_svid: Throttle,
}

impl SvidResolver {
    /// A resolver reading `identity`.
    pub fn new(identity: Arc<Identity>) -> SvidResolver {
        SvidResolver {
            identity,
            no_svid: Throttle::default(),
        }
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // `None` aborts the handshake: no SVID yet, or withdrawn.
        let svid = self.identity.svid();
        if svid.is_none() {
            if let Some(suppressed) = self.no_svid.admit() {
                tracing::warn!(
                    suppressed,
                    "no SVID of wardgate's own in force (yet): refusing the handshake"
                );
            }
        }
        svid.map(|svid| Arc::clone(svid.certified_key()))
    }
}

/// Why a caller was refused (the message the log line shows).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn refuse(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
        message,
    )))))
}

/// Per-trust-domain chain verifiers, built for one version of the bundles.
struct VerifierCache {
    bundles: Arc<TrustBundles>,
    by_domain: HashMap<String, Arc<dyn ClientCertVerifier>>,
}

/// Checks callers' certificates; see the module documentation.
pub struct CallerVerifier {
    identity: Arc<Identity>,
    allow: AllowList,
    provider: Arc<CryptoProvider>,
    cache: ArcSwapOption<VerifierCache>,
}

impl fmt::Debug for CallerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerVerifier")
            .field("allow", &self.allow.to_string())
            .finish_non_exhaustive()
    }
}

impl CallerVerifier {
    /// A verifier against `identity`'s trust bundles admitting the IDs `allow` matches.
    pub fn new(identity: Arc<Identity>, allow: AllowList) -> CallerVerifier {
        CallerVerifier {
            identity,
            allow,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cache: ArcSwapOption::empty(),
        }
    }

    /// The chain verifier of `trust_domain` for the bundles in force (rebuilt once per bundle
    /// change, on the first handshake that needs it).
    fn verifier_for(&self, trust_domain: &str) -> Option<Arc<dyn ClientCertVerifier>> {
        let bundles = self.identity.trust().load_full();
        let cached = self.cache.load();
        if let Some(cache) = cached
            .as_ref()
            .filter(|c| Arc::ptr_eq(&c.bundles, &bundles))
        {
            return cache.by_domain.get(trust_domain).cloned();
        }
        let mut by_domain = HashMap::new();
        for domain in bundles.domains() {
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(
                bundles
                    .cas(domain)
                    .iter()
                    .map(|der| CertificateDer::from(der.as_slice())),
            );
            if roots.is_empty() {
                continue;
            }
            match WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&self.provider),
            )
            .build()
            {
                Ok(verifier) => {
                    by_domain.insert(domain.to_owned(), verifier);
                }
                Err(error) => {
                    tracing::warn!(trust_domain = domain, %error, "cannot use this trust bundle for callers");
                }
            }
        }
        let found = by_domain.get(trust_domain).cloned();
        self.cache
            .store(Some(Arc::new(VerifierCache { bundles, by_domain })));
        found
    }
}

/// The one SPIFFE ID of a caller's leaf certificate, as (whole ID, trust domain, path).
fn caller_id(end_entity: &CertificateDer<'_>) -> Result<(String, String, String), String> {
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(*uri);
                }
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "certificate has {} URI SANs; an X.509-SVID has exactly one",
            uris.len()
        ));
    };
    let id = identity::parse_spiffe_id(uri).map_err(|e| format!("URI SAN `{uri}`: {e}"))?;
    Ok((
        (*uri).to_owned(),
        id.trust_domain_name().to_owned(),
        id.path().to_owned(),
    ))
}

impl ClientCertVerifier for CallerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Bundles change at run time; callers present their one SVID regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (id, trust_domain, path) = caller_id(end_entity).map_err(refuse)?;
        let verifier = self.verifier_for(&trust_domain).ok_or_else(|| {
            refuse(format!(
                "caller {id}: no trust bundle for trust domain `{trust_domain}`"
            ))
        })?;
        verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                refuse(format!(
                    "caller {id}: certificate does not verify against the trust bundle of `{trust_domain}`: {e}"
                ))
            })?;
        if !self.allow.allows(&trust_domain, &path) {
            return Err(refuse(format!(
                "caller {id} is not on the allow-list ({})",
                self.allow
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration of the mTLS listener: TLS 1.3 and 1.2 (ring), ALPN `h2` only,
/// [`SvidResolver`], [`CallerVerifier`], no session resumption.
pub fn server_config(
    identity: Arc<Identity>,
    allow: AllowList,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(CallerVerifier::new(Arc::clone(&identity), allow)))
        .with_cert_resolver(Arc::new(SvidResolver::new(identity)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// What tonic learns about an mTLS connection (a request extension).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The caller's address.
    pub remote_addr: Option<SocketAddr>,
    /// The caller's SPIFFE ID (verified and allow-listed).
    pub peer_id: Option<String>,
}

/// One accepted, verified mTLS connection.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsConn {
    /// The caller.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

/// Whether a failed handshake ended on the caller's side: a TLS alert from it, or the
/// connection closed before the handshake finished.
fn caller_gave_up(error: &io::Error) -> bool {
    let alert = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
    alert
        || matches!(
            error.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
}

/// The bounds on the mTLS listener's handshakes; see [`HANDSHAKE_TIMEOUT`] and
/// [`MAX_PENDING_HANDSHAKES`] for the defaults and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// How long one handshake may take, from `accept` to a verified caller.
    pub timeout: Duration,
    /// Handshakes in progress at once; a newcomer beyond them drops the oldest.
    pub max_pending: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: HANDSHAKE_TIMEOUT,
            max_pending: MAX_PENDING_HANDSHAKES,
        }
    }
}

/// Refusals of callers written per [`WARNING_INTERVAL`]: a few, since distinct misconfigured
/// callers are what an operator looks for; the other kinds get one line.
const REFUSALS_PER_INTERVAL: u32 = 5;

/// The listener's warnings a caller can repeat at will, one [`Throttle`] per kind.
#[derive(Debug)]
struct Warnings {
    refused: Throttle,
    abandoned: Throttle,
    timed_out: Throttle,
    dropped: Throttle,
    accept_failed: Throttle,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            refused: Throttle::new(WARNING_INTERVAL, REFUSALS_PER_INTERVAL),
            abandoned: Throttle::default(),
            timed_out: Throttle::default(),
            dropped: Throttle::default(),
            accept_failed: Throttle::default(),
        }
    }
}

/// Accept connections on `listener`, handshake each with `config` on its own task within
/// `limits`, and yield the verified ones. Refusals are logged (throttled), never yielded.
/// Dropping the stream stops accepting and closes the listener.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: HandshakeLimits,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let warnings = Arc::new(Warnings::default());
    tokio::spawn(async move {
        let mut pending = ConnectionSlots::new(limits.max_pending);
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: the oldest handshake gives its
                    // back; with none to drop, back off instead of spinning.
                    let freed = pending.drop_oldest();
                    if let Some(suppressed) = warnings.accept_failed.admit() {
                        tracing::warn!(%error, dropped_a_handshake = freed, suppressed, "mTLS listener cannot accept a connection");
                    }
                    let pause = if freed { 5 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, task_warnings) =
                (acceptor.clone(), tx.clone(), Arc::clone(&warnings));
            let dropped = pending.admit(|slot| {
                let task = handshake(acceptor, tcp, peer, limits.timeout, task_warnings);
                tokio::spawn(async move {
                    let admitted = task.await;
                    // The handshake is over: the connection is tonic's, no longer pending.
                    drop(slot);
                    if let Some(conn) = admitted {
                        let _ = tx.send(Ok(conn)).await;
                    }
                })
                .abort_handle()
            });
            if dropped {
                if let Some(suppressed) = warnings.dropped.admit() {
                    tracing::warn!(
                        max_pending = limits.max_pending,
                        suppressed,
                        "too many mTLS handshakes in progress: dropped the oldest"
                    );
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One handshake within `timeout`: the verified connection, or `None` after a (throttled)
/// warning.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    warnings: Arc<Warnings>,
) -> Option<TlsConn> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let peer_id = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| caller_id(leaf).ok())
                .map(|(id, _, _)| id);
            tracing::debug!(peer = %peer, caller = peer_id.as_deref(), "mTLS caller admitted");
            Some(TlsConn {
                stream,
                info: TlsConnectInfo {
                    remote_addr: Some(peer),
                    peer_id,
                },
            })
        }
        Ok(Err(error)) if caller_gave_up(&error) => {
            // The caller refused us (bad or unexpected server certificate, no common
            // protocol) or went away: worth knowing, but no refusal of ours.
            tracing::debug!(peer = %peer, %error, "mTLS handshake abandoned by the caller");
            if let Some(suppressed) = warnings.abandoned.admit() {
                tracing::warn!(peer = %peer, %error, suppressed, "mTLS handshake abandoned by the caller");
            }
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(peer = %peer, %error, "mTLS caller refused");
            if let Some(suppressed) = warnings.refused.admit() {
                tracing::warn!(peer = %peer, %error, suppressed, "mTLS caller refused");
            }
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, ?timeout, "mTLS handshake timed out");
            if let Some(suppressed) = warnings.timed_out.admit() {
                tracing::warn!(peer = %peer, ?timeout, suppressed, "mTLS handshake timed out");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::svid::test_pki::TestCa;
    use crate::svid::{NoSvidObserver, Svid};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

    fn identity_with(bundles: &[(&str, &TestCa)]) -> Arc<Identity> {
        let identity = Identity::new(Arc::default(), Arc::new(NoSvidObserver));
        let mut b = TrustBundles::new();
        for (domain, ca) in bundles {
            b.set(domain, vec![ca.der.clone()]);
        }
        identity.publish_bundles(b);
        identity
    }

    fn verify(verifier: &CallerVerifier, der: &[u8]) -> Result<(), String> {
        verifier
            .verify_client_cert(&CertificateDer::from(der), &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn allow_list_uses_bundle_pattern_syntax() {
        let allow = AllowList::parse(&["spiffe://hospital.example/ns/*/sa/lab"]).unwrap();
        assert!(allow.allows("hospital.example", "/ns/clinical/sa/lab"));
        assert!(!allow.allows("hospital.example", "/ns/clinical/sa/ehr"));
        assert!(!allow.allows("partner-lab.example", "/ns/clinical/sa/lab"));
        assert!(AllowList::parse::<&str>(&[]).is_err());
        assert!(AllowList::parse(&["spiffe://hospital.example/cl*"]).is_err());
        assert!(AllowList::parse(&["https://hospital.example/x"]).is_err());
    }

    #[test]
    fn callers_chain_to_their_own_trust_domain_and_must_be_allow_listed() {
        let hospital = TestCa::new("hospital CA");
        let partner = TestCa::new("partner CA");
        let identity = identity_with(&[
            ("hospital.example", &hospital),
            ("partner-lab.example", &partner),
        ]);
        let verifier = CallerVerifier::new(
            Arc::clone(&identity),
            AllowList::parse(&[LAB, "spiffe://partner-lab.example/**"]).unwrap(),
        );

        let lab = hospital.leaf(&[LAB], 3600);
        assert_eq!(verify(&verifier, &lab.cert_der), Ok(()));

        let ehr = hospital.leaf(&["spiffe://hospital.example/ns/clinical/sa/ehr"], 3600);
        let refused = verify(&verifier, &ehr.cert_der).unwrap_err();
        assert!(refused.contains("not on the allow-list"), "{refused}");

        // Partner's CA minting the allow-listed hospital ID: refused, though the CA is trusted.
        let forged = partner.leaf(&[LAB], 3600);
        let refused = verify(&verifier, &forged.cert_der).unwrap_err();
        assert!(
            refused.contains("does not verify against the trust bundle of `hospital.example`"),
            "{refused}"
        );
        assert!(verify(
            &verifier,
            &partner
                .leaf(&["spiffe://partner-lab.example/x"], 3600)
                .cert_der
        )
        .is_ok());

        let rogue = TestCa::new("rogue CA");
        assert!(verify(&verifier, &rogue.leaf(&[LAB], 3600).cert_der).is_err());
        assert!(verify(&verifier, &hospital.leaf(&[LAB], -10).cert_der).is_err());
        assert!(verify(&verifier, &hospital.leaf(&[LAB, LAB], 3600).cert_der).is_err());
        let unknown = verify(
            &verifier,
            &hospital.leaf(&["spiffe://other.example/x"], 3600).cert_der,
        )
        .unwrap_err();
        assert!(unknown.contains("no trust bundle"), "{unknown}");

        // A bundle change takes effect at the next handshake: drop hospital's CA.
        let mut only_partner = TrustBundles::new();
        only_partner.set("partner-lab.example", vec![partner.der.clone()]);
        identity.publish_bundles(only_partner);
        assert!(verify(&verifier, &lab.cert_der).is_err());
    }

    #[test]
    fn resolver_presents_the_svid_in_force() {
        let ca = TestCa::new("hospital CA");
        let identity = identity_with(&[("hospital.example", &ca)]);
        let resolver = SvidResolver::new(Arc::clone(&identity));
        assert!(identity.svid().is_none());
        for _ in 0..2 {
            let leaf = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
            identity.publish_svid(
                Svid::new(
                    vec![CertificateDer::from(leaf.cert_der.clone())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
                )
                .unwrap(),
            );
            let svid = identity.svid().unwrap();
            assert_eq!(
                svid.certified_key().cert[0].as_ref(),
                leaf.cert_der.as_slice()
            );
        }
        let _ = resolver;
        assert!(server_config(identity, AllowList::parse(&[LAB]).unwrap()).is_ok());
    }

    /// The client side of a test handshake accepts wardgate's certificate unchecked (a test
    /// double: the SVID has no DNS name to verify); wardgate's side is the real one.
    #[derive(Debug)]
    struct AnyServer(Arc<CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn svid_of(leaf: &crate::svid::test_pki::TestLeaf) -> Svid {
        Svid::new(
            vec![CertificateDer::from(leaf.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_cannot_hold_a_real_handshake_back() {
        use tokio::io::AsyncReadExt;
        use tokio_stream::StreamExt;

        let ca = TestCa::new("hospital CA");
        let identity = identity_with(&[("hospital.example", &ca)]);
        identity.publish_svid(svid_of(
            &ca.leaf(&["spiffe://hospital.example/wardgate"], 3600),
        ));
        let config = server_config(identity, AllowList::parse(&[LAB]).unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Four slots, and a time limit that alone would hold each idle connection for a minute.
        let limits = HandshakeLimits {
            timeout: Duration::from_secs(60),
            max_pending: 4,
        };
        let mut verified = Box::pin(incoming(listener, config, limits));

        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The six oldest were dropped for the newer ones: closed at once, not after a minute.
        for tcp in idle.iter_mut().take(6) {
            let mut buf = [0u8; 8];
            let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        }

        // A real caller, with all four slots taken by idle connections, is through at once.
        let lab = ca.leaf(&[LAB], 3600);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(
                vec![CertificateDer::from(lab.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(lab.key_der.clone())),
            )
            .unwrap();
        let started = std::time::Instant::now();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("wardgate.test").unwrap();
        let _tls = connector.connect(name, tcp).await.unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), verified.next())
            .await
            .expect("a verified connection")
            .expect("stream open")
            .expect("no error");
        let took = started.elapsed();
        assert_eq!(conn.info().peer_id.as_deref(), Some(LAB));
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
}
