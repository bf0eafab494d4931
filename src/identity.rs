//! Identity: SPIFFE ID syntax, and the facts read from the peer certificate Envoy
//! forwards in `attributes.source.certificate`.
//!
//! This module owns the answer to "is this string a SPIFFE ID wardgate accepts?" and the
//! decoding of a forwarded leaf certificate into [`CertificateFacts`]. Both are strict: a
//! principal is accepted only in its exact canonical spelling (lowercase scheme and trust
//! domain, no query, fragment, port or userinfo, at most [`MAX_SPIFFE_ID_LEN`] bytes), and a
//! certificate only as exactly one well-formed PEM `CERTIFICATE` block holding exactly one DER
//! certificate. It must never decide anything (the policy compares the facts against the
//! principal, the clock and the bundle), never verify chains or signatures, never do I/O, log
//! or panic on input: callers turn every error into a denial.

use std::fmt;

use spiffe::{SpiffeId, SpiffeIdError};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The longest SPIFFE ID accepted, in bytes, `spiffe://` included (SPIFFE ID spec §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// The facts of a leaf certificate that the decision order looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Every URI subject alternative name, in certificate order.
    pub uri_sans: Vec<String>,
    /// Whether basic constraints mark the certificate as a CA.
    pub is_ca: bool,
    /// Start of the validity period.
    pub not_before: jiff::Timestamp,
    /// End of the validity period.
    pub not_after: jiff::Timestamp,
}

impl CertificateFacts {
    /// A leaf issued to `spiffe_id`, valid for `lifetime` and covering the instant `at` (it
    /// started a minute before `at`, or half its lifetime before when that is shorter). What
    /// `wardgate check --cert-lifetime`, policy tests and replay use to stand for the
    /// certificate Envoy would forward.
    pub fn simulated(spiffe_id: &str, at: jiff::Timestamp, lifetime: jiff::SignedDuration) -> Self {
        let not_before = at - jiff::SignedDuration::from_mins(1).min(lifetime / 2);
        CertificateFacts {
            uri_sans: vec![spiffe_id.to_string()],
            is_ca: false,
            not_before,
            not_after: not_before + lifetime,
        }
    }
}

/// Why a string is not an acceptable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// Longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID is {len} bytes long, more than the maximum of {MAX_SPIFFE_ID_LEN}")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
    },
    /// The scheme is missing or is not exactly `spiffe` (lowercase).
    #[error("SPIFFE ID must start with `spiffe://` (lowercase scheme)")]
    Scheme,
    /// The trust domain is empty (`spiffe:///…`).
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain contains upper-case letters.
    #[error("SPIFFE ID trust domain must be lowercase")]
    TrustDomainNotLowercase,
    /// The authority carries userinfo (`user@`).
    #[error("SPIFFE ID must not contain userinfo (`@`)")]
    Userinfo,
    /// The authority carries a port (`:port`).
    #[error("SPIFFE ID must not contain a port")]
    Port,
    /// A query (`?…`).
    #[error("SPIFFE ID must not contain a query (`?`)")]
    Query,
    /// A fragment (`#…`).
    #[error("SPIFFE ID must not contain a fragment (`#`)")]
    Fragment,
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error("SPIFFE ID trust domain may only contain a-z, 0-9, `.`, `-` and `_`")]
    TrustDomainChar,
    /// The trust domain is longer than the spec allows.
    #[error("SPIFFE ID trust domain is longer than {max} bytes")]
    TrustDomainTooLong {
        /// The limit.
        max: usize,
    },
    /// A path segment has a character outside `[a-zA-Z0-9._-]` (percent-encoding included).
    #[error("SPIFFE ID path segments may only contain a-z, A-Z, 0-9, `.`, `-` and `_`")]
    PathChar,
    /// An empty path segment (`//`).
    #[error("SPIFFE ID path must not contain empty segments (`//`)")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("SPIFFE ID path must not contain `.` or `..` segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("SPIFFE ID path must not end with `/`")]
    TrailingSlash,
    /// The `spiffe` crate rejected the ID for a reason not listed above; its text is kept.
    #[error("invalid SPIFFE ID: {0}")]
    Other(String),
}

impl From<SpiffeIdError> for IdError {
    fn from(e: SpiffeIdError) -> Self {
        match e {
            SpiffeIdError::Empty => IdError::Empty,
            SpiffeIdError::MissingTrustDomain => IdError::MissingTrustDomain,
            SpiffeIdError::WrongScheme => IdError::Scheme,
            SpiffeIdError::BadTrustDomainChar => IdError::TrustDomainChar,
            SpiffeIdError::BadPathSegmentChar => IdError::PathChar,
            SpiffeIdError::EmptySegment => IdError::EmptySegment,
            SpiffeIdError::DotSegment => IdError::DotSegment,
            SpiffeIdError::TrailingSlash => IdError::TrailingSlash,
            SpiffeIdError::TrustDomainTooLong { max } => IdError::TrustDomainTooLong { max },
            other => IdError::Other(other.to_string()),
        }
    }
}

/// Parse and validate a SPIFFE ID per the SPIFFE spec, using the `spiffe` crate's `SpiffeId`
/// (v0.19, default features off).
///
/// The input must already be in canonical form: the returned ID always displays as exactly
/// `s`.
///
/// `SpiffeId::new` checks the trust domain and path character sets, empty, `.` and `..`
/// segments, the trailing `/` and the 255-byte trust-domain limit. The checks marked *ours*
/// below are what it does not do, or does differently:
///
/// * *ours*: at most [`MAX_SPIFFE_ID_LEN`] bytes (the crate applies the limit only when
///   building an ID from segments);
/// * *ours*: the scheme must be lowercase `spiffe` (the crate accepts any case);
/// * *ours*: the trust domain must be lowercase (the crate silently lowercases it, which would
///   let `spiffe://Hospital.example/x` pass as a different string than the one matched);
/// * *ours*, for clearer messages only: query, fragment, port and userinfo get their own
///   errors (the crate rejects them too, as bad characters);
/// * *ours*, belt and braces: the parsed ID's trust domain and path must equal the input's.
///
/// ```
/// use wardgate::identity::{parse_spiffe_id, IdError};
///
/// let id = parse_spiffe_id("spiffe://hospital.example/ns/clinical/sa/ehr").unwrap();
/// assert_eq!(id.trust_domain_name(), "hospital.example");
/// assert_eq!(parse_spiffe_id("SPIFFE://hospital.example/x"), Err(IdError::Scheme));
/// ```
pub fn parse_spiffe_id(s: &str) -> Result<SpiffeId, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(IdError::TooLong { len: s.len() });
    }
    let rest = s.strip_prefix(SCHEME_PREFIX).ok_or(IdError::Scheme)?;
    if s.contains('#') {
        return Err(IdError::Fragment);
    }
    if s.contains('?') {
        return Err(IdError::Query);
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.contains('@') {
        return Err(IdError::Userinfo);
    }
    if authority.contains(':') {
        return Err(IdError::Port);
    }
    // The same limit as `spiffe_id_parts` and bundle validation, whatever the crate's is.
    if authority.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong {
            max: MAX_TRUST_DOMAIN_LEN,
        });
    }
    // Only when upper case is the sole problem: other bad characters are the crate's to report.
    if authority.bytes().any(|b| b.is_ascii_uppercase())
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdError::TrustDomainNotLowercase);
    }

    let id = SpiffeId::new(s)?;
    if id.trust_domain_name() != authority || id.path() != path {
        return Err(IdError::Other(format!(
            "the spiffe crate read {s:?} as {id}, which is not the same string"
        )));
    }
    Ok(id)
}

/// A SPIFFE ID checked without allocating: the trust domain and path of `s`, borrowed.
///
/// Accepts exactly the strings [`parse_spiffe_id`] accepts (a property test in this module
/// compares both on generated strings), and for those returns the same trust domain and path.
/// This is the hot-path check `Policy::decide` runs twice per request; when it says no, callers
/// that need the reason ask [`parse_spiffe_id`], which stays the reference built on the `spiffe`
/// crate.
///
/// ```
/// use wardgate::identity::spiffe_id_parts;
///
/// assert_eq!(
///     spiffe_id_parts("spiffe://hospital.example/ns/clinical/sa/ehr"),
///     Some(("hospital.example", "/ns/clinical/sa/ehr"))
/// );
/// assert_eq!(spiffe_id_parts("spiffe://hospital.example/ns/../x"), None);
/// ```
#[inline]
pub fn spiffe_id_parts(s: &str) -> Option<(&str, &str)> {
    if s.len() > MAX_SPIFFE_ID_LEN {
        return None;
    }
    let rest = s.strip_prefix(SCHEME_PREFIX)?;
    let bytes = rest.as_bytes();
    // Trust domain: non-empty, at most 255 bytes, [a-z0-9._-] only.
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b'/' {
        if !matches!(bytes[i], b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_') {
            return None;
        }
        i += 1;
    }
    if i == 0 || i > MAX_TRUST_DOMAIN_LEN {
        return None;
    }
    let (trust_domain, path) = rest.split_at(i);
    // Path: empty, or `/segment`... with segments non-empty, not `.`/`..`, [a-zA-Z0-9._-].
    let p = path.as_bytes();
    let mut start = 0; // index of the `/` opening the current segment
    let mut j = 0;
    while j < p.len() {
        // p[start] == b'/' here.
        j = start + 1;
        let mut dots = 0usize;
        while j < p.len() && p[j] != b'/' {
            match p[j] {
                b'.' => dots += 1,
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {}
                _ => return None,
            }
            j += 1;
        }
        let len = j - start - 1;
        if len == 0 || (dots == len && len <= 2) {
            return None; // empty segment, trailing `/`, `.` or `..`
        }
        start = j;
    }
    Some((trust_domain, path))
}

/// The longest trust domain accepted, in bytes (the SPIFFE ID specification's limit, and the
/// `spiffe` crate's). The one limit: bundle validation (`policy::Pattern::parse_spiffe`, which
/// reads `trust_domains` and every SPIFFE ID pattern) and the run-time check
/// ([`spiffe_id_parts`], [`parse_spiffe_id`]) both use it, so a trust domain `validate`
/// accepts is one requests can come from.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a forwarded certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Nothing was forwarded (an empty string).
    #[error("forwarded certificate is empty")]
    Empty,
    /// The URL encoding is broken: a `%` not followed by two hex digits.
    #[error("forwarded certificate has invalid URL encoding at byte {offset}")]
    UrlEncoding {
        /// Byte offset of the offending `%` in the encoded input.
        offset: usize,
    },
    /// The decoded text is not a single PEM `CERTIFICATE` block.
    #[error("forwarded certificate is not PEM: {0}")]
    Pem(String),
    /// The PEM block carries another label than `CERTIFICATE`.
    #[error("forwarded PEM block is a {label:?}, not a CERTIFICATE")]
    NotACertificate {
        /// The label found.
        label: String,
    },
    /// Something follows the certificate (a second PEM block, or bytes after the DER).
    #[error("forwarded certificate has trailing data after the {0}")]
    TrailingData(Place),
    /// The DER inside the PEM block is not an X.509 certificate.
    #[error("forwarded certificate is not valid X.509: {0}")]
    X509(String),
    /// An extension wardgate reads (subject alternative name, basic constraints) is malformed
    /// or duplicated.
    #[error("forwarded certificate has a bad {extension} extension: {reason}")]
    Extension {
        /// Which extension.
        extension: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// A validity bound cannot be represented as a timestamp.
    #[error("forwarded certificate's {bound} is out of range")]
    ValidityOutOfRange {
        /// `notBefore` or `notAfter`.
        bound: &'static str,
    },
}

/// Where [`CertError::TrailingData`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Place {
    /// After the PEM block's `-----END …-----` line.
    PemBlock,
    /// Inside the PEM block, after the DER certificate.
    Der,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::PemBlock => "PEM block",
            Place::Der => "DER certificate",
        })
    }
}

/// Decode the certificate Envoy forwards in `attributes.source.certificate` (URL-encoded PEM of
/// the leaf) and read the facts the decision order needs.
///
/// Any percent-encoding is decoded (Envoy encodes at least newline, space, `+`, `/` and `=`);
/// a raw `+` stays a `+`, as base64 needs. The decoded text must be exactly one PEM
/// `CERTIFICATE` block, surrounded by whitespace at most, whose contents are exactly one DER
/// certificate. Nothing is verified: signatures, chains and the clock are the caller's.
pub fn certificate_facts(url_encoded_pem: &str) -> Result<CertificateFacts, CertError> {
    facts_from_der(&certificate_der(url_encoded_pem)?)
}

/// The DER bytes of the certificate Envoy forwards (URL-encoded PEM of the leaf), for
/// signature checks against a trust bundle.
pub fn certificate_der(url_encoded_pem: &str) -> Result<Vec<u8>, CertError> {
    if url_encoded_pem.trim().is_empty() {
        return Err(CertError::Empty);
    }
    pem_contents(&percent_decode(url_encoded_pem)?)
}

/// Decode every `%XX`; every other byte is kept as is.
fn percent_decode(s: &str) -> Result<Vec<u8>, CertError> {
    fn hex(b: Option<&u8>) -> Option<u8> {
        match b? {
            b @ b'0'..=b'9' => Some(b - b'0'),
            b @ b'a'..=b'f' => Some(b - b'a' + 10),
            b @ b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err(CertError::UrlEncoding { offset: i });
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The DER bytes of the one PEM `CERTIFICATE` block that `text` must consist of.
fn pem_contents(text: &[u8]) -> Result<Vec<u8>, CertError> {
    if !text.is_ascii() {
        return Err(CertError::Pem("contains non-ASCII bytes".to_owned()));
    }
    // x509-parser's reader skips anything before the first `-----BEGIN`; wardgate does not.
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    if !text.starts_with(b"-----BEGIN ") {
        return Err(CertError::Pem(
            "does not start with a -----BEGIN line".to_owned(),
        ));
    }
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(text).map_err(|e| CertError::Pem(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(CertError::NotACertificate { label: pem.label });
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(CertError::TrailingData(Place::PemBlock));
    }
    Ok(pem.contents)
}

/// The facts [`certificate_facts`] reads, from the DER of a leaf certificate.
pub fn facts_from_der(der: &[u8]) -> Result<CertificateFacts, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingData(Place::Der));
    }

    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Extension {
            extension: "subject alternative name",
            reason: e.to_string(),
        })?;
    let uri_sans = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CertError::Extension {
            extension: "basic constraints",
            reason: e.to_string(),
        })?
        .is_some_and(|ext| ext.value.ca);

    let validity = cert.validity();
    let not_before = jiff::Timestamp::from_second(validity.not_before.timestamp())
        .map_err(|_| CertError::ValidityOutOfRange { bound: "notBefore" })?;
    let not_after = jiff::Timestamp::from_second(validity.not_after.timestamp())
        .map_err(|_| CertError::ValidityOutOfRange { bound: "notAfter" })?;

    Ok(CertificateFacts {
        uri_sans,
        is_ca,
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_valid(s: &str) {
        match parse_spiffe_id(s) {
            Ok(id) => assert_eq!(id.to_string(), s),
            Err(e) => panic!("{s:?} should be valid, got {e}"),
        }
    }

    fn rejected(s: &str) -> IdError {
        match parse_spiffe_id(s) {
            Ok(id) => panic!("{s:?} should be rejected, parsed as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        assert_valid("spiffe://hospital.example/ns/clinical/sa/ehr");
        assert_valid("spiffe://partner-lab.example/Lab_Results/v1.2");
        assert_valid("spiffe://td_1.example-2/a/b.c/d-e/F_G/...");
        assert_valid("spiffe://t/x");
        assert_valid("spiffe://hospital.example/a..b/.hidden");
    }

    #[test]
    fn trust_domain_only_is_valid() {
        let id = match parse_spiffe_id("spiffe://td") {
            Ok(id) => id,
            Err(e) => panic!("spiffe://td should parse: {e}"),
        };
        assert_eq!(id.trust_domain_name(), "td");
        assert_eq!(id.path(), "");
    }

    #[test]
    fn scheme_must_be_lowercase_spiffe() {
        assert_eq!(rejected("SPIFFE://hospital.example/x"), IdError::Scheme);
        assert_eq!(rejected("Spiffe://hospital.example/x"), IdError::Scheme);
        assert_eq!(rejected("https://hospital.example/x"), IdError::Scheme);
        assert_eq!(rejected("spiffe:/hospital.example/x"), IdError::Scheme);
        assert_eq!(rejected("hospital.example/x"), IdError::Scheme);
        assert_eq!(rejected(" spiffe://hospital.example/x"), IdError::Scheme);
    }

    #[test]
    fn trust_domain_must_be_lowercase() {
        assert_eq!(
            rejected("spiffe://Hospital.example/x"),
            IdError::TrustDomainNotLowercase
        );
        assert_eq!(
            rejected("spiffe://HOSPITAL.EXAMPLE"),
            IdError::TrustDomainNotLowercase
        );
    }

    #[test]
    fn trust_domain_characters() {
        assert_eq!(
            rejected("spiffe://hospital%2Eexample/x"),
            IdError::TrustDomainChar
        );
        assert_eq!(rejected("spiffe://hosp ital/x"), IdError::TrustDomainChar);
        assert_eq!(
            rejected("spiffe://h\u{f6}spital/x"),
            IdError::TrustDomainChar
        );
        assert_eq!(rejected("spiffe:///x"), IdError::MissingTrustDomain);
        assert_eq!(rejected("spiffe://"), IdError::MissingTrustDomain);
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert_eq!(rejected(&long_td), IdError::TrustDomainTooLong { max: 255 });
    }

    #[test]
    fn dot_segments_are_rejected() {
        assert_eq!(rejected("spiffe://td/a/../b"), IdError::DotSegment);
        assert_eq!(rejected("spiffe://td/a/./b"), IdError::DotSegment);
        assert_eq!(rejected("spiffe://td/.."), IdError::DotSegment);
        assert_eq!(rejected("spiffe://td/a/."), IdError::DotSegment);
    }

    #[test]
    fn percent_encoding_is_rejected() {
        assert_eq!(rejected("spiffe://td/a/%2e%2e/b"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/%2e"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/a%2Fb"), IdError::PathChar);
    }

    #[test]
    fn path_characters() {
        assert_eq!(rejected("spiffe://td/a b"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/a~b"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/a*"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/caf\u{e9}"), IdError::PathChar);
        assert_eq!(rejected("spiffe://td/a\\b"), IdError::PathChar);
    }

    #[test]
    fn query_fragment_port_userinfo_are_rejected() {
        assert_eq!(rejected("spiffe://td/x?y=1"), IdError::Query);
        assert_eq!(rejected("spiffe://td?y"), IdError::Query);
        assert_eq!(rejected("spiffe://td/x#f"), IdError::Fragment);
        assert_eq!(rejected("spiffe://td#f"), IdError::Fragment);
        assert_eq!(rejected("spiffe://td:8443/x"), IdError::Port);
        assert_eq!(rejected("spiffe://td:/x"), IdError::Port);
        assert_eq!(rejected("spiffe://user@td/x"), IdError::Userinfo);
        assert_eq!(rejected("spiffe://user:pw@td/x"), IdError::Userinfo);
    }

    #[test]
    fn empty_segments_and_trailing_slash_are_rejected() {
        assert_eq!(rejected("spiffe://td//x"), IdError::EmptySegment);
        assert_eq!(rejected("spiffe://td/a//b"), IdError::EmptySegment);
        assert_eq!(rejected("spiffe://td/x/"), IdError::TrailingSlash);
        assert_eq!(rejected("spiffe://td/"), IdError::TrailingSlash);
    }

    #[test]
    fn length_limit() {
        let prefix = "spiffe://hospital.example/";
        let at_limit = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert_eq!(at_limit.len(), 2048);
        assert_valid(&at_limit);
        let over = format!("{at_limit}b");
        assert_eq!(over.len(), 2049);
        assert_eq!(rejected(&over), IdError::TooLong { len: 2049 });
        // Made of many short segments, too.
        let segmented = format!("spiffe://td{}", "/ab".repeat(700));
        assert_eq!(
            rejected(&segmented),
            IdError::TooLong {
                len: segmented.len()
            }
        );
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(rejected(""), IdError::Empty);
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            IdError::TooLong { len: 2049 }.to_string(),
            "SPIFFE ID is 2049 bytes long, more than the maximum of 2048"
        );
        assert_eq!(
            IdError::Scheme.to_string(),
            "SPIFFE ID must start with `spiffe://` (lowercase scheme)"
        );
    }

    // ----- spiffe_id_parts: exactly as strict as parse_spiffe_id -----

    mod fast_check {
        use super::super::{parse_spiffe_id, spiffe_id_parts};
        use proptest::prelude::*;

        /// What the reference says: the parts of an accepted ID, borrowed back from the input.
        fn reference(s: &str) -> Option<(String, String)> {
            parse_spiffe_id(s)
                .ok()
                .map(|id| (id.trust_domain_name().to_owned(), id.path().to_owned()))
        }

        fn fast(s: &str) -> Option<(String, String)> {
            spiffe_id_parts(s).map(|(td, p)| (td.to_owned(), p.to_owned()))
        }

        /// Pieces that make the interesting cases likely: every character class the grammar
        /// distinguishes, dot segments, empty segments, other schemes and case variants.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(vec![
                    "a", "z", "Z", "A", "0", "9", ".", "-", "_", "/", "//", "/.", "/..", "..",
                    ":", "@", "?", "#", "%", "%2e", " ", "~", "*", "\\", "\u{e9}", "\0", "+",
                    "sa", "ns", "clinical", "hospital.example", ":8443", "user@",
                ])
                .prop_map(str::to_owned),
                1 => "[ -~]{0,4}",
            ]
        }

        fn candidate() -> impl Strategy<Value = String> {
            let prefix = prop::sample::select(vec![
                "spiffe://",
                "spiffe://",
                "spiffe://",
                "SPIFFE://",
                "Spiffe://",
                "spiffe:/",
                "spiffe:",
                "https://",
                "",
                "spiffe://td/",
                "spiffe://TD",
                "spiffe:///",
            ]);
            (prefix, prop::collection::vec(piece(), 0..12))
                .prop_map(|(prefix, pieces)| format!("{prefix}{}", pieces.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn agrees_with_parse_spiffe_id(s in candidate()) {
                prop_assert_eq!(fast(&s), reference(&s), "input {:?}", s);
            }

            #[test]
            fn agrees_on_well_formed_shapes(
                td in "[a-z0-9._-]{1,12}",
                segs in prop::collection::vec("[a-zA-Z0-9._-]{0,6}", 0..6),
            ) {
                let s = format!("spiffe://{td}{}", segs.iter().map(|g| format!("/{g}")).collect::<String>());
                prop_assert_eq!(fast(&s), reference(&s), "input {:?}", s);
            }
        }

        #[test]
        fn agrees_at_the_length_limits() {
            for td_len in [254, 255, 256] {
                let s = format!("spiffe://{}/x", "a".repeat(td_len));
                assert_eq!(fast(&s), reference(&s), "trust domain of {td_len} bytes");
            }
            let prefix = "spiffe://hospital.example/";
            for total in [2047, 2048, 2049] {
                let s = format!("{prefix}{}", "a".repeat(total - prefix.len()));
                assert_eq!(fast(&s), reference(&s), "{total} bytes");
                let dotted = format!(
                    "{prefix}{}",
                    "a/".repeat(total)
                        .get(..total - prefix.len())
                        .unwrap_or_default()
                );
                assert_eq!(
                    fast(&dotted),
                    reference(&dotted),
                    "{total} bytes of segments"
                );
            }
            for s in [
                "",
                "spiffe://",
                "spiffe://td",
                "spiffe://td/",
                "spiffe://td/...",
                "spiffe://td/.a",
                "spiffe://td/a.",
            ] {
                assert_eq!(fast(s), reference(s), "{s:?}");
            }
        }
    }

    // ----- certificate_facts -----

    use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    fn ts(s: &str) -> jiff::Timestamp {
        match s.parse() {
            Ok(t) => t,
            Err(e) => panic!("bad timestamp {s}: {e}"),
        }
    }

    /// A self-signed certificate with the given URI SANs, valid 2026-01-01 to 2026-01-02.
    fn cert_pem(uris: &[&str], ca: bool) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| match (*u).try_into() {
                Ok(ia5) => SanType::URI(ia5),
                Err(e) => panic!("bad URI {u}: {e}"),
            })
            .collect();
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.not_before = date_time_ymd(2026, 1, 1);
        params.not_after = date_time_ymd(2026, 1, 2);
        let key = match KeyPair::generate() {
            Ok(k) => k,
            Err(e) => panic!("key generation: {e}"),
        };
        match params.self_signed(&key) {
            Ok(cert) => cert.pem(),
            Err(e) => panic!("self-signing: {e}"),
        }
    }

    /// Percent-encode everything but unreserved characters.
    fn url_encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len() * 2);
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn facts(encoded: &str) -> CertificateFacts {
        match certificate_facts(encoded) {
            Ok(f) => f,
            Err(e) => panic!("certificate should parse: {e}"),
        }
    }

    #[test]
    fn one_uri_san() {
        let pem = cert_pem(&["spiffe://hospital.example/ns/clinical/sa/ehr"], false);
        let f = facts(&url_encode(&pem));
        assert_eq!(f.uri_sans, ["spiffe://hospital.example/ns/clinical/sa/ehr"]);
        assert!(!f.is_ca);
        assert_eq!(f.not_before, ts("2026-01-01T00:00:00Z"));
        assert_eq!(f.not_after, ts("2026-01-02T00:00:00Z"));
    }

    #[test]
    fn two_uri_sans_in_order() {
        let pem = cert_pem(
            &["spiffe://hospital.example/a", "spiffe://hospital.example/b"],
            false,
        );
        let f = facts(&url_encode(&pem));
        assert_eq!(
            f.uri_sans,
            ["spiffe://hospital.example/a", "spiffe://hospital.example/b"]
        );
    }

    #[test]
    fn no_san() {
        let f = facts(&url_encode(&cert_pem(&[], false)));
        assert!(f.uri_sans.is_empty());
    }

    #[test]
    fn ca_certificate() {
        let pem = cert_pem(&["spiffe://hospital.example"], true);
        let f = facts(&url_encode(&pem));
        assert!(f.is_ca);
        assert_eq!(f.uri_sans, ["spiffe://hospital.example"]);
    }

    #[test]
    fn url_encoding_round_trip() {
        let pem = cert_pem(&["spiffe://hospital.example/x"], false);
        let encoded = url_encode(&pem);
        assert!(!encoded.contains('\n') && !encoded.contains('='));
        assert_eq!(percent_decode(&encoded), Ok(pem.clone().into_bytes()));
        // Lower-case hex decodes the same way.
        let lower_hex: String = pem
            .bytes()
            .map(|b| match b {
                b'\n' => "%0a".to_owned(),
                b'/' => "%2f".to_owned(),
                b'+' => "%2b".to_owned(),
                b'=' => "%3d".to_owned(),
                _ => char::from(b).to_string(),
            })
            .collect();
        assert_eq!(facts(&lower_hex), facts(&encoded));
        // Raw PEM (nothing encoded) and a partially encoded one read the same.
        assert_eq!(facts(&pem), facts(&encoded));
        let partial = pem
            .replace('\n', "%0A")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_eq!(facts(&partial), facts(&encoded));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(certificate_facts(""), Err(CertError::Empty));
        assert!(matches!(
            certificate_facts("not a certificate"),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            certificate_facts("%zz"),
            Err(CertError::UrlEncoding { offset: 0 })
        ));
        assert!(matches!(
            certificate_facts("abc%4"),
            Err(CertError::UrlEncoding { offset: 3 })
        ));
        assert!(matches!(
            certificate_facts("-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----%0A"),
            Err(CertError::X509(_))
        ));
        assert!(matches!(
            certificate_facts("-----BEGIN CERTIFICATE-----%0A!!!!%0A-----END CERTIFICATE-----%0A"),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            certificate_facts("-----BEGIN CERTIFICATE-----%0AAAAA%0A"),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            certificate_facts("%FF%FE"),
            Err(CertError::Pem(_))
        ));
    }

    #[test]
    fn other_pem_labels_are_rejected() {
        let pem = cert_pem(&["spiffe://td/x"], false).replace("CERTIFICATE", "PRIVATE KEY");
        assert_eq!(
            certificate_facts(&url_encode(&pem)),
            Err(CertError::NotACertificate {
                label: "PRIVATE KEY".to_owned()
            })
        );
    }

    #[test]
    fn leading_and_trailing_data_are_rejected() {
        let pem = cert_pem(&["spiffe://td/x"], false);
        let leading = format!("junk\n{pem}");
        assert!(matches!(
            certificate_facts(&leading),
            Err(CertError::Pem(_))
        ));
        let two = format!("{pem}{pem}");
        assert_eq!(
            certificate_facts(&url_encode(&two)),
            Err(CertError::TrailingData(Place::PemBlock))
        );
        let padded = format!("\n{pem}\n\n");
        assert_eq!(facts(&url_encode(&padded)), facts(&pem));
    }
}
