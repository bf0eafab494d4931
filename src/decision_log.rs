//! The decision-log record: one JSON object per decision (fields listed in README.md).
//!
//! This module owns only the format, shared by the writer (telemetry) and the readers
//! (`wardgate replay`). It never carries header values or bodies: patient data travels in them.
//! The one exception is the break-glass reason, which exists to be audited. The decision and
//! its reason are the policy's own enums, written with their `as_str` names.

use serde::{Deserialize, Serialize};

use crate::policy::{Reason, Verdict};

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
    /// The break-glass reason, only on break-glass allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    /// `false` when the decision was not enforced: `serve --audit` told Envoy to allow whatever
    /// `decision` says. Absent (meaning `true`) when Envoy was told the decision.
    #[serde(default = "enforced_by_default", skip_serializing_if = "is_true")]
    pub enforced: bool,
}

fn enforced_by_default() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
fn is_true(b: &bool) -> bool {
    *b
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
