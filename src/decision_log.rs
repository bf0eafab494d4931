//! The decision-log record: one JSON object per decision (fields listed in README.md).
//!
//! This module owns only the format, shared by the writer (telemetry) and the readers
//! (`wardgate replay`). It never carries header values or bodies: patient data travels in them.
//! The one exception is the break-glass reason, which exists to be audited. The decision and
//! its reason are the policy's own enums, written with their `as_str` names.
//!
//! A log must be safe to ship to any log pipeline: it holds no patient identifier unless an
//! operator asked for it. What a client controls is never written verbatim: the path is
//! redacted ([`REDACTED`] stands for every segment the bundle does not name, see
//! [`PathForm`]), a request id is kept only in the shape Envoy generates (a UUID), a host or
//! method only when the bundle names it, and every field has a length cap ([`MAX_LINE_BYTES`]
//! bounds a whole line). The writer (telemetry) applies these rules; readers (`replay`,
//! `learn`) treat [`REDACTED`] as an unknown value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{Reason, Verdict};

/// What the log writes in place of a value it may not show: a path segment, a host, a method,
/// a principal. It cannot be a DNS name or an HTTP method, and a logged path that carries it
/// says so in [`DecisionRecord::path_form`].
pub const REDACTED: &str = crate::policy::REDACTION_MARKER;

/// Longest logged path, in bytes; a longer one is cut at a segment boundary and marked
/// [`PathForm::Truncated`].
pub const MAX_PATH: usize = 2048;

/// Longest logged principal: the longest SPIFFE ID. A longer one is logged as [`REDACTED`].
pub const MAX_PRINCIPAL: usize = 2048;

/// Longest logged host (the longest DNS name); a host is logged only when the bundle names it.
pub const MAX_HOST: usize = 253;

/// Longest logged method; a method is logged only when it is a standard one or a rule names it.
pub const MAX_METHOD: usize = 32;

/// Longest logged break-glass reason (the longest a bundle accepts).
pub const MAX_BREAK_GLASS_REASON: usize = crate::policy::MAX_BREAK_GLASS_REASON;

/// Upper bound of one log line, whatever a client sends: the caps above plus the fields that
/// come from the bundle (rule and segment names) and fixed-size fields.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// How the `path` of a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PathForm {
    /// The path as sent, query and fragment cut off (records without `path_form` are this).
    #[default]
    Full,
    /// The normalised path with every segment the bundle does not name replaced by
    /// [`REDACTED`] (`/patients/{}/notes`).
    Redacted,
    /// A prefix of the path (full or redacted): it was longer than [`MAX_PATH`].
    Truncated,
    /// No path at all (`--decision-log-paths off`): `path` is empty.
    Off,
}

impl PathForm {
    /// Every form.
    pub const ALL: [PathForm; 4] = [
        PathForm::Full,
        PathForm::Redacted,
        PathForm::Truncated,
        PathForm::Off,
    ];

    /// The one spelling of logs, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PathForm::Full => "full",
            PathForm::Redacted => "redacted",
            PathForm::Truncated => "truncated",
            PathForm::Off => "off",
        }
    }
}

impl fmt::Display for PathForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PathForm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PathForm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        PathForm::ALL
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a path form: expected full, redacted, truncated or off"
                ))
            })
    }
}

/// Whether `id` has the shape Envoy generates for `x-request-id`: a UUID, 8-4-4-4-12
/// hexadecimal digits. Such an id carries no client data worth hiding and joins Envoy's
/// access log as is; any other id is logged as a keyed hash.
pub fn is_envoy_request_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether a logged value is the redaction marker.
pub fn is_redacted(value: &str) -> bool {
    value == REDACTED
}

/// One logged decision. Field names are a stable interface for log pipelines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the check was judged (RFC 3339, UTC).
    pub time: String,
    /// Envoy's `x-request-id` (or the CheckRequest's request id), when present: as sent when it
    /// is a UUID ([`is_envoy_request_id`]), else `hmac-` and 32 hex digits of a keyed hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Source principal as Envoy reported it ([`REDACTED`] when longer than [`MAX_PRINCIPAL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Source segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_segment: Option<String>,
    /// Destination principal (reported or pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Destination segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_segment: Option<String>,
    /// HTTP method ([`REDACTED`] unless standard or named by a rule).
    pub method: String,
    /// The path, never the query or fragment, in the form [`DecisionRecord::path_form`] says.
    pub path: String,
    /// Host / :authority without port, when the bundle names it (a rule's host or a service
    /// name); else [`REDACTED`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `allow` or `deny`.
    pub decision: Verdict,
    /// Why (written as [`Reason::as_str`]).
    pub reason: Reason,
    /// Deciding rule or break-glass entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Revision of the bundle that decided (absent with `no_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
    /// The break-glass reason, only on break-glass allows (at most
    /// [`MAX_BREAK_GLASS_REASON`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    /// `false` when the decision was not enforced: `serve --audit` told Envoy to allow whatever
    /// `decision` says. Absent (meaning `true`) when Envoy was told the decision.
    #[serde(default = "enforced_by_default", skip_serializing_if = "is_true")]
    pub enforced: bool,
    /// How `path` was written; absent in logs written before paths were redacted (then the
    /// path is [`PathForm::Full`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_form: Option<PathForm>,
    /// Whether the request carried the bundle's break-glass header at all (absent when the
    /// bundle has none, or in older logs), so that replay need not guess it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_header: Option<bool>,
}

fn enforced_by_default() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
fn is_true(b: &bool) -> bool {
    *b
}

impl DecisionRecord {
    /// The form of `path`, [`PathForm::Full`] for records that do not say.
    pub fn path_form(&self) -> PathForm {
        self.path_form.unwrap_or_default()
    }
}

/// The path as logged: the raw path with query and fragment cut off.
pub fn loggable_path(raw: &str) -> &str {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    &raw[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_never_reaches_the_log() {
        assert_eq!(loggable_path("/patients/7?name=Jane%20Doe"), "/patients/7");
        assert_eq!(loggable_path("/a#frag"), "/a");
        assert_eq!(loggable_path("/a"), "/a");
    }

    #[test]
    fn round_trips_and_omits_empty_fields() {
        let r = DecisionRecord {
            time: "2026-11-23T10:00:00Z".into(),
            request_id: None,
            source: Some("spiffe://td/a".into()),
            source_segment: None,
            destination: None,
            destination_segment: None,
            method: "GET".into(),
            path: "/x".into(),
            host: String::new(),
            decision: Verdict::Deny,
            reason: Reason::DefaultDeny,
            rule: None,
            revision: Some(3),
            latency_us: 4,
            break_glass_reason: None,
            enforced: true,
            path_form: None,
            break_glass_header: None,
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert!(
            !text.contains("request_id") && !text.contains("host"),
            "{text}"
        );
        let back: DecisionRecord = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }

    /// The line format log pipelines parse, field by field and in order.
    #[test]
    fn writes_the_stable_line_format() {
        let r = DecisionRecord {
            time: "2026-11-23T10:00:00Z".into(),
            request_id: Some("r-1".into()),
            source: Some("spiffe://td/a".into()),
            source_segment: Some("clinical".into()),
            destination: Some("spiffe://td/b".into()),
            destination_segment: Some("lab".into()),
            method: "POST".into(),
            path: "/x".into(),
            host: "b.td".into(),
            decision: Verdict::Allow,
            reason: Reason::BreakGlass,
            rule: Some("er-override".into()),
            revision: Some(7),
            latency_us: 12,
            break_glass_reason: Some("patient crashing".into()),
            enforced: true,
            path_form: None,
            break_glass_header: None,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("serialize"),
            concat!(
                r#"{"time":"2026-11-23T10:00:00Z","request_id":"r-1","source":"spiffe://td/a","#,
                r#""source_segment":"clinical","destination":"spiffe://td/b","#,
                r#""destination_segment":"lab","method":"POST","path":"/x","host":"b.td","#,
                r#""decision":"allow","reason":"break_glass","rule":"er-override","revision":7,"#,
                r#""latency_us":12,"break_glass_reason":"patient crashing"}"#
            )
        );
    }

    /// New fields come after the stable ones and read back by their names.
    #[test]
    fn redaction_fields_are_additive() {
        let line = concat!(
            r#"{"time":"t","method":"GET","path":"/patients/{}/notes","decision":"allow","#,
            r#""reason":"rule","latency_us":1,"path_form":"redacted","break_glass_header":false}"#
        );
        let r: DecisionRecord = serde_json::from_str(line).expect("parse");
        assert_eq!(r.path_form(), PathForm::Redacted);
        assert_eq!(r.break_glass_header, Some(false));
        assert_eq!(serde_json::to_string(&r).expect("serialize"), line);
        let old = r#"{"time":"t","method":"GET","path":"/p/1","decision":"deny","reason":"rule","latency_us":1}"#;
        let r: DecisionRecord = serde_json::from_str(old).expect("parse");
        assert_eq!(r.path_form(), PathForm::Full, "older logs hold full paths");
        for form in PathForm::ALL {
            let text = serde_json::to_string(&form).expect("serialize");
            assert_eq!(
                serde_json::from_str::<PathForm>(&text).expect("parse"),
                form
            );
        }
        let err = serde_json::from_str::<PathForm>(r#""partial""#).expect_err("unknown form");
        assert!(
            err.to_string().contains("`partial` is not a path form"),
            "{err}"
        );
    }

    #[test]
    fn only_uuid_shaped_request_ids_are_envoys() {
        assert!(is_envoy_request_id("4c3e9a4b-1f2d-4e5a-9b8c-0d1e2f3a4b5c"));
        assert!(!is_envoy_request_id("MRN-123-DOB-19700101-JaneDoe"));
        assert!(!is_envoy_request_id("4c3e9a4b-1f2d-4e5a-9b8c-0d1e2f3a4b5"));
        assert!(!is_envoy_request_id("4c3e9a4b1f2d-4e5a-9b8c-0d1e2f3a4b5c-"));
        assert!(!is_envoy_request_id("JANEDOE1-1f2d-4e5a-9b8c-0d1e2f3a4b5c"));
    }

    #[test]
    fn only_an_unenforced_decision_says_so() {
        let line = r#"{"time":"t","method":"GET","path":"/","decision":"deny","reason":"rule","latency_us":1}"#;
        let mut r: DecisionRecord = serde_json::from_str(line).expect("parse");
        assert!(r.enforced, "a line without the field was enforced");
        assert_eq!(serde_json::to_string(&r).expect("serialize"), line);
        r.enforced = false;
        let audited = serde_json::to_string(&r).expect("serialize");
        assert!(
            audited.ends_with(r#""latency_us":1,"enforced":false}"#),
            "{audited}"
        );
        assert_eq!(
            serde_json::from_str::<DecisionRecord>(&audited).expect("parse"),
            r
        );
    }

    #[test]
    fn every_verdict_and_reason_reads_back_by_its_name() {
        for v in Verdict::ALL {
            let text = serde_json::to_string(&v).expect("serialize");
            assert_eq!(text, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<Verdict>(&text).expect("parse"), v);
        }
        for r in Reason::ALL {
            let text = serde_json::to_string(&r).expect("serialize");
            assert_eq!(text, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&text).expect("parse"), r);
        }
        let line = r#"{"time":"t","method":"GET","path":"/","decision":"maybe","reason":"rule","latency_us":1}"#;
        let err = serde_json::from_str::<DecisionRecord>(line)
            .expect_err("an unknown decision is refused")
            .to_string();
        assert!(err.contains("`maybe` is not a decision"), "{err}");
        let line = line
            .replace("maybe", "deny")
            .replace(r#""rule""#, r#""Rule""#);
        let err = serde_json::from_str::<DecisionRecord>(&line)
            .expect_err("reasons are case-sensitive")
            .to_string();
        assert!(err.contains("`Rule` is not a reason"), "{err}");
    }
}
