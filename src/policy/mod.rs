//! The policy engine: bundle model, validation, compilation and [`Policy::decide`].
//!
//! This module owns the meaning of a rule bundle. Raw YAML ([`bundle`]) is validated and
//! compiled (`compile`) once into an immutable [`Policy`] (the plain data in `model`, the rule
//! lookup in `index`) that makes the per-request check cheap; [`Policy::decide`] (`eval`) then
//! applies the decision order described in docs/ARCHITECTURE.md to one [`Request`] and returns
//! a typed [`Decision`] naming its reason, rule and segments.
//!
//! It must never do I/O beyond reading the bundle files it is pointed at, never spawn, lock,
//! read the clock or touch globals: the server, the CLI and the benches all call the same
//! `decide`, and a decision must depend on nothing but the policy and the request.
//!
//! ```
//! use wardgate::policy::{Policy, Request, Verdict};
//!
//! let policy = Policy::from_yaml_str("example.yaml", r#"
//! version: 1
//! revision: 1
//! trust_domains: [hospital.example]
//! segments:
//!   clinical:
//!     members: ["spiffe://hospital.example/ns/clinical/**"]
//! rules:
//!   - name: clinical-reads-lab
//!     from: [clinical]
//!     to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
//!     methods: [GET]
//!     paths: ["/results/**"]
//! "#).unwrap();
//!
//! let mut request = Request::new("GET", "/results/123");
//! request.source = Some("spiffe://hospital.example/ns/clinical/sa/ehr");
//! request.destination = Some("spiffe://hospital.example/ns/clinical/sa/lab");
//! let decision = policy.decide(&request);
//! assert_eq!(decision.verdict, Verdict::Allow);
//! assert_eq!(decision.rule, Some("clinical-reads-lab"));
//!
//! request.path = "/results/../admin";
//! assert_eq!(policy.decide(&request).verdict, Verdict::Deny);
//! ```

mod bundle;
mod compile;
mod digest;
mod error;
mod eval;
mod handle;
mod index;
mod limits;
pub(crate) mod logging;
mod model;
pub mod normalize;
mod overlap;
mod pattern;
pub(crate) mod reference;
mod schedule;
pub mod trace;
pub(crate) mod view;

use std::collections::HashMap;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::identity::CertificateFacts;
pub use compile::{
    FORMAT_VERSION, MAX_HEADER_NAME_LEN, MAX_NAME_LEN, RESERVED_HEADER_NAMES,
    RESERVED_HEADER_PREFIXES,
};
pub use error::{Diagnostic, Diagnostics};
pub use eval::{valid_break_glass_reason, MAX_BREAK_GLASS_REASON};
pub use handle::PolicyHandle;
pub use limits::{CompileLimits, DEFAULT_MAX_COMPILE_MEMORY_MIB, DEFAULT_MAX_COMPILE_WORK};
pub use logging::REDACTION_MARKER;
pub use model::{Action, Policy, RuleInfo};
pub use pattern::{Pattern, PatternError};
pub use trace::{RuleOutcome, Trace, TraceStep};

/// Look up request headers by lower-case name.
///
/// Envoy sends header names in lower case; implementations must answer for lower-case names.
pub trait HeaderLookup {
    /// The value of the header `lowercase_name`, if the request carries it.
    fn header(&self, lowercase_name: &str) -> Option<&str>;
}

impl HeaderLookup for HashMap<String, String> {
    fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.get(lowercase_name).map(String::as_str)
    }
}

/// A request without headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}

/// What Envoy told us about the peer certificate, already parsed by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub enum PeerCertificate<'a> {
    /// Envoy did not forward a certificate (`include_peer_certificate` is off).
    #[default]
    NotForwarded,
    /// A certificate was forwarded but could not be decoded, or (with chain verification on)
    /// does not chain to its trust domain's bundle; the text says why.
    Unreadable(&'a str),
    /// The facts read from the forwarded leaf certificate.
    Parsed(&'a CertificateFacts),
}

/// Whether the carrier of a request sent its HTTP attributes (method, path, host, headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpAttributes {
    /// Sent: `method`, `path`, `host` and `headers` are the request's.
    #[default]
    Present,
    /// Not sent (an ext_authz Check without `attributes.request.http`; Envoy's HTTP filter always
    /// sends them). There is no path to judge: [`Policy::decide`] denies `bad_path` at the path
    /// step, after the source identity step.
    Absent,
}

/// One authorization question, borrowed from whatever carried it (a `CheckRequest`, CLI flags).
///
/// Fields hold raw values as Envoy forwards them; [`Policy::decide`] parses and normalises them
/// itself so every caller gets the same treatment.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// `attributes.source.principal`: the caller's SPIFFE ID, unparsed.
    pub source: Option<&'a str>,
    /// `attributes.destination.principal` (or the server's pinned value), unparsed.
    pub destination: Option<&'a str>,
    /// HTTP method as sent.
    pub method: &'a str,
    /// Raw `:path`, query included.
    pub path: &'a str,
    /// `:authority` / `Host`, port included if sent.
    pub host: &'a str,
    /// Request headers (lower-case names).
    pub headers: &'a dyn HeaderLookup,
    /// The instant the request is judged at, taken once by the caller.
    pub time: jiff::Timestamp,
    /// The forwarded peer certificate, if any.
    pub peer_certificate: PeerCertificate<'a>,
    /// Whether `method`, `path`, `host` and `headers` were sent at all.
    pub http: HttpAttributes,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("source", &self.source)
            .field("destination", &self.destination)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("time", &self.time)
            .field("peer_certificate", &self.peer_certificate)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl<'a> Request<'a> {
    /// A request with the given method and path, no identities, no headers, host empty, judged
    /// at the Unix epoch. Set the other fields directly.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            source: None,
            destination: None,
            method,
            path,
            host: "",
            headers: &NoHeaders,
            time: jiff::Timestamp::UNIX_EPOCH,
            peer_certificate: PeerCertificate::NotForwarded,
            http: HttpAttributes::Present,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The call may proceed.
    Allow,
    /// The call is refused.
    Deny,
}

impl Verdict {
    /// Both verdicts.
    pub const ALL: [Verdict; 2] = [Verdict::Allow, Verdict::Deny];

    /// `"allow"` or `"deny"`: the one spelling of logs, metrics, headers and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        by_name(deserializer, &Verdict::ALL, Verdict::as_str, "decision")
    }
}

/// Why a decision came out the way it did. The names are stable: metrics, logs, the
/// `x-wardgate-reason` header and the CLI all use [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No valid bundle is in force.
    NoPolicy,
    /// The source principal is missing, not a SPIFFE ID, or outside the trust domains.
    Unauthenticated,
    /// The path cannot be normalised unambiguously.
    BadPath,
    /// The forwarded peer certificate does not hold up.
    BadCertificate,
    /// The source's segment caps SVID lifetime and the certificate is missing or too long-lived.
    SvidLifetime,
    /// A rule decided: the first matching deny rule, or the first matching allow rule.
    Rule,
    /// A break-glass entry allowed the call.
    BreakGlass,
    /// Nothing allowed the call.
    DefaultDeny,
}

impl Reason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [Reason; 8] = [
        Reason::NoPolicy,
        Reason::Unauthenticated,
        Reason::BadPath,
        Reason::BadCertificate,
        Reason::SvidLifetime,
        Reason::Rule,
        Reason::BreakGlass,
        Reason::DefaultDeny,
    ];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoPolicy => "no_policy",
            Reason::Unauthenticated => "unauthenticated",
            Reason::BadPath => "bad_path",
            Reason::BadCertificate => "bad_certificate",
            Reason::SvidLifetime => "svid_lifetime",
            Reason::Rule => "rule",
            Reason::BreakGlass => "break_glass",
            Reason::DefaultDeny => "default_deny",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        by_name(deserializer, &Reason::ALL, Reason::as_str, "reason")
    }
}

/// Read one of `all` by its `name` (the same `as_str` spelling it is written with).
fn by_name<'de, D: Deserializer<'de>, T: Copy>(
    deserializer: D,
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
) -> Result<T, D::Error> {
    let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
    all.iter()
        .copied()
        .find(|&v| name(v) == text)
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|&v| name(v)).collect();
            D::Error::custom(format!(
                "`{text}` is not a {what}: expected one of {}",
                known.join(", ")
            ))
        })
}

/// The outcome of [`Policy::decide`]. Names borrow from the policy, so they are bounded by the
/// bundle and safe to use as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The rule (or break-glass entry) that decided, where one did.
    pub rule: Option<&'p str>,
    /// The source's segment, where the source is known and belongs to one.
    pub source_segment: Option<&'p str>,
    /// The destination's segment, where the destination is known and belongs to one.
    pub destination_segment: Option<&'p str>,
}

impl Decision<'static> {
    /// The decision when no bundle is in force.
    pub const NO_POLICY: Decision<'static> = Decision {
        verdict: Verdict::Deny,
        reason: Reason::NoPolicy,
        rule: None,
        source_segment: None,
        destination_segment: None,
    };
}

/// What [`Policy::decide_stated`] returns: the decision and, on a break-glass allow, the reason
/// the caller stated in the bundle's break-glass header (the value `decide` accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided<'p, 'r> {
    /// The decision, as [`Policy::decide`] returns it.
    pub decision: Decision<'p>,
    /// The stated break-glass reason, when `decision` is a break-glass allow; else `None`.
    pub break_glass_reason: Option<&'r str>,
}

impl Decided<'static, 'static> {
    /// The answer when no bundle is in force.
    pub const NO_POLICY: Decided<'static, 'static> = Decided {
        decision: Decision::NO_POLICY,
        break_glass_reason: None,
    };
}

impl Decision<'_> {
    /// Whether the call may proceed.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}
