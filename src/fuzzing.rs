//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay
//! (`tests/fuzz_corpus.rs`): the crate-private pieces a target drives, made reachable and
//! nothing more. Hidden from the documentation; not a stable interface.
//!
//! This module owns only that door. Each function here calls the code the server or a verb
//! runs (the Check adapter's forwarded-certificate cache, `replay`'s reading of one log record,
//! `wardgate test`'s case parser and runner, `analyze` and `diff` under their budget) or a test
//! oracle that already exists (the reference evaluator, the RFC 3986 reading of a path). It must
//! never hold logic of its own, never judge an outcome (the targets do), and never be called on
//! the request path.

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use prost::Message as _;

use crate::decision_log::DecisionRecord;
use crate::extauthz::AuthzService;
use crate::identity::{CertError, CertificateFacts};
use crate::policy::{Policy, Reason, Request, Verdict};
use crate::tooling::{analyze, budget, diff, model, replay, testing, timeline};

/// Decode `bytes` as the gRPC service does (tonic's prost codec) and answer the Check as
/// `Authorization::check` does. `None` when the bytes are not a `CheckRequest` (tonic answers
/// those with a decoding error before the service runs).
pub fn check_request_bytes(service: &AuthzService, bytes: &[u8]) -> Option<CheckResponse> {
    let check = CheckRequest::decode(bytes).ok()?;
    Some(service.respond(&check))
}

/// The forwarded certificate `text` (URL-encoded PEM) decoded through the Check adapter's
/// per-thread cache, as a Check reads it; `None` when it is too long to be decoded at all
/// (`bad_certificate` unread).
pub fn forwarded_certificate(text: &str) -> Option<Result<CertificateFacts, CertError>> {
    crate::extauthz::cached_certificate_facts(text)
}

/// The RFC 3986 oracle of the path normaliser: `Err` says how an upstream's reading of `raw`
/// differs from the path wardgate `decided` on.
pub fn upstream_agrees(raw: &str, decided: &str) -> Result<(), String> {
    crate::policy::normalize::rfc3986::upstream_agrees(raw, decided)
}

/// The reference evaluator's decision (verdict, reason, deciding rule) for `request` under the
/// bundle `sources` (name, YAML text), which must compile.
pub fn reference_decide(
    sources: &[(String, String)],
    request: &Request<'_>,
) -> (Verdict, Reason, Option<String>) {
    let files = crate::policy::reference::parse_files(sources);
    crate::policy::reference::decide(&files, request)
}

/// What `analyze` and `diff` made of a bundle within their budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    /// Finished: the matrix and findings were computed and the bundle diffed against itself.
    /// Any non-empty field is a bug (the analysis disagrees with the engine, or a bundle
    /// differs from itself).
    Finished {
        /// Claims of `analyze` or `diff` that `decide` did not confirm.
        disagreements: Vec<String>,
        /// Grants and revocations `diff` found between the bundle and itself.
        self_changes: usize,
    },
    /// Refused for its cost, as the verbs refuse: the message names the rule and the limit.
    Refused(String),
}

/// Run `analyze` (matrix and findings) and `diff` (the policy against itself) under a budget of
/// `max_work` units and `max_memory_mib` MiB.
pub fn analyze_within(policy: &Policy, max_work: u64, max_memory_mib: u64) -> Analysis {
    let budget = budget::Budget::new(max_work, max_memory_mib);
    let run = || -> Result<Analysis, budget::Refused> {
        let time = timeline::TimeUniverse::new(&[policy], &budget)?;
        let m = model::Model::new(policy, &time, &budget)?;
        let an = analyze::Analyzer::new(&m, &time, &budget);
        let matrix = an.matrix()?;
        an.findings(&matrix, &["clinical".to_string()])?;
        let d = diff::diff(&m, &m, &time, &budget)?;
        let mut disagreements = an.disagreements.borrow().clone();
        disagreements.extend(d.disagreements);
        Ok(Analysis::Finished {
            disagreements,
            self_changes: d.grants.len() + d.revocations.len(),
        })
    };
    run().unwrap_or_else(|refused| Analysis::Refused(refused.to_string()))
}

/// What `replay` made of one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Blank: skipped.
    Blank,
    /// Not a record, or a record `replay` cannot read (reported as unreadable).
    Unreadable,
    /// Same verdict under the candidate.
    Unchanged,
    /// Another verdict under the candidate.
    Changed,
    /// Depends on data the log does not carry.
    Undetermined,
    /// The baseline does not reproduce the logged decision.
    NotReproduced,
}

/// One decision-log line as `wardgate replay` reads it: parsed as a [`DecisionRecord`] and
/// re-decided with `candidate` (and `baseline`, when given).
pub fn replay_line(candidate: &Policy, baseline: Option<&Policy>, line: &str) -> Replayed {
    if line.trim().is_empty() {
        return Replayed::Blank;
    }
    let Ok(record) = serde_json::from_str::<DecisionRecord>(line) else {
        return Replayed::Unreadable;
    };
    match replay::Replayer::new(candidate, baseline).replay(&record) {
        Err(_) => Replayed::Unreadable,
        Ok((replay::Outcome::Unchanged, _)) => Replayed::Unchanged,
        Ok((replay::Outcome::Changed(..), _)) => Replayed::Changed,
        Ok((replay::Outcome::Undetermined(..), _)) => Replayed::Undetermined,
        Ok((replay::Outcome::NotReproduced, _)) => Replayed::NotReproduced,
    }
}

/// A test file's `text` as `wardgate test` reads it (named `file` in messages), every case run
/// against `policy` at `default_at`: whether each case passed, or every problem of the file as
/// `FILE:LINE:COL: message`.
pub fn run_test_file(
    policy: &Policy,
    file: &str,
    text: &str,
    default_at: jiff::Timestamp,
) -> Result<Vec<bool>, Vec<String>> {
    let cases = testing::parse_text(file, text)?;
    Ok(cases
        .iter()
        .map(|case| testing::run_case(policy, case, default_at).ok)
        .collect())
}
