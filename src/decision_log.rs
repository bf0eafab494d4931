//! The decision-log record: one JSON object per decision (DESIGN §6).
//!
//! This module owns only the format, shared by the writer (telemetry) and the readers
//! (`wardgate replay`). It never carries header values or bodies: patient data travels in them.
//! The one exception is the break-glass reason, which exists to be audited.

use serde::{Deserialize, Serialize};

/// One logged decision. Field names are a stable interface for log pipelines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the check was judged (RFC 3339, UTC).
    pub time: String,
    /// Envoy's `x-request-id` (or the CheckRequest's request id), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Source principal as Envoy reported it.
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
    /// HTTP method.
    pub method: String,
    /// Path without query or fragment (as sent, before normalisation).
    pub path: String,
    /// Host / :authority.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Reason name (see `policy::Reason::as_str`).
    pub reason: String,
    /// Deciding rule or break-glass entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Revision of the bundle that decided (absent with `no_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
    /// The break-glass reason, only on break-glass allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
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
            decision: "deny".into(),
            reason: "default_deny".into(),
            rule: None,
            revision: Some(3),
            latency_us: 4,
            break_glass_reason: None,
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert!(
            !text.contains("request_id") && !text.contains("host"),
            "{text}"
        );
        let back: DecisionRecord = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }
}
