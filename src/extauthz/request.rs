//! Envoy's `CheckRequest` → the policy's [`Request`]: the inbound direction of the adapter.
//!
//! This module owns reading a Check: it borrows every field from the `CheckRequest` (no string
//! copies on the way in), fills in the pinned destination principal when Envoy sends none,
//! takes the request time once, decodes the forwarded peer certificate through the per-thread
//! cache ([`super::certs`], which refuses one over its size limit unread) and, with
//! `--verify-chain`, checks it against its trust domain's bundle, and picks the request id the
//! decision log may carry. It must never decide anything
//! (a field it cannot read becomes an absent or unreadable value that `decide` judges), never
//! read the policy, and never panic or unwrap on anything that came over the network.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

use super::certs::{self, Decoded};
use super::AuthzConfig;
use crate::identity;
use crate::policy::{HttpAttributes, NoHeaders, PeerCertificate, Request};
use crate::trust::TrustHandle;

/// Longest request id taken into the decision log.
const MAX_REQUEST_ID: usize = 128;

/// Storage a translated request borrows its certificate from: the decoded forwarded
/// certificate and, when it does not hold up, why. Lives on the caller's stack for one Check.
#[derive(Debug, Default)]
pub(super) struct CertificateSlot {
    decoded: Option<Decoded>,
    problem: Option<String>,
}

/// One Check, translated: the question for the policy and the HTTP attributes it came from.
#[derive(Debug)]
pub(super) struct Translated<'a> {
    /// The authorization question, borrowed from the `CheckRequest`.
    pub(super) request: Request<'a>,
    /// Envoy's HTTP attributes, when sent: the request id and the client's header names (whose
    /// `x-wardgate-*` forgeries the response removes) come from here.
    pub(super) http: Option<&'a HttpRequest>,
}

impl<'a> Translated<'a> {
    /// The headers the client sent, when Envoy forwarded the HTTP attributes.
    pub(super) fn client_headers(&self) -> Option<&'a HashMap<String, String>> {
        self.http.map(|h| &h.headers)
    }

    /// The request id for the decision log: Envoy's `x-request-id` (what its access log shows)
    /// when it looks like one (at most 128 bytes of `[A-Za-z0-9._-]`, as UUIDs and trace ids
    /// are), else Envoy's stream id. Anything else a client could put there is not logged.
    pub(super) fn request_id(&self) -> Option<&'a str> {
        let looks_like_an_id = |v: &&str| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let http = self.http?;
        http.headers
            .get("x-request-id")
            .map(String::as_str)
            .filter(looks_like_an_id)
            .or_else(|| Some(http.id.as_str()).filter(looks_like_an_id))
    }
}

/// Translate `check` into the policy's question. Whatever it holds, the result is a request
/// `decide` can judge: missing principals are `None`, missing HTTP attributes are
/// [`HttpAttributes::Absent`], a certificate that does not hold up is
/// [`PeerCertificate::Unreadable`].
pub(super) fn translate<'a>(
    check: &'a CheckRequest,
    config: &'a AuthzConfig,
    slot: &'a mut CertificateSlot,
) -> Translated<'a> {
    let attributes = check.attributes.as_ref();
    let source = attributes.and_then(|a| a.source.as_ref());
    let attr_request = attributes.and_then(|a| a.request.as_ref());
    let http = attr_request.and_then(|r| r.http.as_ref());
    let source_principal = source
        .map(|p| p.principal.as_str())
        .filter(|p| !p.is_empty());
    let destination_principal = attributes
        .and_then(|a| a.destination.as_ref())
        .map(|p| p.principal.as_str())
        .filter(|p| !p.is_empty())
        .or(config.destination_principal.as_deref());

    // The instant the check is judged at: Envoy's request time, else now.
    let time = attr_request
        .and_then(|r| r.time.as_ref())
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .unwrap_or_else(jiff::Timestamp::now);

    let certificate = source.map_or("", |p| p.certificate.as_str());
    let peer_certificate = peer_certificate(
        certificate,
        source_principal,
        config.verify_chain.as_ref(),
        slot,
    );
    let request = Request {
        source: source_principal,
        destination: destination_principal,
        method: http.map_or("", |h| h.method.as_str()),
        path: http.map_or("", |h| h.path.as_str()),
        host: http.map_or("", |h| h.host.as_str()),
        headers: match http {
            Some(h) => &h.headers,
            None => &NoHeaders,
        },
        time,
        peer_certificate,
        http: if http.is_some() {
            HttpAttributes::Present
        } else {
            HttpAttributes::Absent
        },
    };
    Translated { request, http }
}

/// The forwarded certificate `text` (URL-encoded PEM, empty when Envoy forwards none) as the
/// policy sees it, decoded into `slot`.
fn peer_certificate<'a>(
    text: &str,
    principal: Option<&str>,
    verify_chain: Option<&TrustHandle>,
    slot: &'a mut CertificateSlot,
) -> PeerCertificate<'a> {
    if text.is_empty() {
        return PeerCertificate::NotForwarded;
    }
    let CertificateSlot { decoded, problem } = slot;
    let fresh = match certs::cached_certificate(text) {
        Ok(fresh) => fresh,
        // Over the size limit: refused unread, and not remembered.
        Err(oversize) => return PeerCertificate::Unreadable(problem.insert(oversize.to_string())),
    };
    match &**decoded.insert(fresh) {
        Ok(cert) => match chain_problem(verify_chain, principal, &cert.der) {
            None => PeerCertificate::Parsed(&cert.facts),
            Some(why) => PeerCertificate::Unreadable(problem.insert(why)),
        },
        Err(error) => PeerCertificate::Unreadable(problem.insert(format!("unreadable: {error}"))),
    }
}

/// With chain verification on: why the forwarded certificate (`der`) does not chain to the
/// bundle of its principal's trust domain (`None` when it does, or when verification is off).
fn chain_problem(
    verify_chain: Option<&TrustHandle>,
    principal: Option<&str>,
    der: &[u8],
) -> Option<String> {
    let trust = verify_chain?;
    // An invalid principal is denied `unauthenticated` before the certificate matters.
    let (trust_domain, _) = principal.and_then(identity::spiffe_id_parts)?;
    trust
        .load()
        .verify_leaf(trust_domain, der)
        .err()
        .map(|e| format!("does not chain to its trust domain's bundle: {e}"))
}
