//! The explanation of one decision: which steps ran and why each rule did or did not match.
//!
//! [`super::Policy::decide_traced`] fills a [`Trace`]; `wardgate check` prints it. The server
//! never builds one: the untraced path compiles the tracing away.

use std::fmt;

use serde::Serialize;

/// Why a rule that was looked at did or did not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum RuleOutcome {
    /// Every condition held.
    Matched,
    /// The method is not listed.
    Method,
    /// No path pattern matches.
    Path,
    /// The host is not listed.
    Host,
    /// The request time is outside the schedule (described).
    Schedule(String),
    /// A required header is missing or has another value (its name).
    Header(String),
    /// An earlier rule already decided; this one was not evaluated.
    NotReached,
}

impl fmt::Display for RuleOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOutcome::Matched => f.write_str("matched"),
            RuleOutcome::Method => f.write_str("method not listed"),
            RuleOutcome::Path => f.write_str("no path pattern matches"),
            RuleOutcome::Host => f.write_str("host not listed"),
            RuleOutcome::Schedule(s) => write!(f, "outside schedule ({s})"),
            RuleOutcome::Header(h) => write!(f, "header `{h}` missing or not an allowed value"),
            RuleOutcome::NotReached => f.write_str("not evaluated (an earlier rule decided)"),
        }
    }
}

/// One step of the decision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum TraceStep {
    /// The source identity was accepted.
    Source {
        /// The SPIFFE ID.
        id: String,
        /// Its segment.
        segment: Option<String>,
    },
    /// The source identity was refused.
    SourceRejected {
        /// Why.
        why: String,
    },
    /// The destination identity as understood (absent or unusable: only rules without `to`
    /// apply).
    Destination {
        /// The SPIFFE ID, if usable.
        id: Option<String>,
        /// Its segment.
        segment: Option<String>,
        /// Why it is unusable, if it is.
        note: Option<String>,
    },
    /// The path after normalisation.
    Path {
        /// As sent.
        raw: String,
        /// As matched.
        normalized: String,
    },
    /// The path could not be normalised.
    PathRejected {
        /// Why.
        why: String,
    },
    /// The forwarded certificate check.
    Certificate {
        /// What was found.
        result: String,
    },
    /// A rule that the index selected for this source and destination.
    Rule {
        /// Rule name.
        rule: String,
        /// `allow`, `deny` or `break_glass`.
        kind: &'static str,
        /// What happened.
        #[serde(flatten)]
        outcome: RuleOutcome,
    },
    /// Rules never looked at because their `from`/`to` cannot match these identities.
    NotApplicable {
        /// How many.
        rules: usize,
    },
    /// Break-glass was requested.
    BreakGlass {
        /// What happened to the request.
        result: String,
    },
}

impl fmt::Display for TraceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceStep::Source { id, segment } => {
                write!(
                    f,
                    "source      {id} (segment: {})",
                    segment.as_deref().unwrap_or("none")
                )
            }
            TraceStep::SourceRejected { why } => write!(f, "source      rejected: {why}"),
            TraceStep::Destination { id, segment, note } => {
                write!(
                    f,
                    "destination {} (segment: {})",
                    id.as_deref().unwrap_or("unknown"),
                    segment.as_deref().unwrap_or("none")
                )?;
                if let Some(n) = note {
                    write!(f, ": {n}")?;
                }
                Ok(())
            }
            TraceStep::Path { raw, normalized } => {
                if raw == normalized {
                    write!(f, "path        {normalized}")
                } else {
                    write!(f, "path        {raw} -> {normalized}")
                }
            }
            TraceStep::PathRejected { why } => write!(f, "path        rejected: {why}"),
            TraceStep::Certificate { result } => write!(f, "certificate {result}"),
            TraceStep::Rule {
                rule,
                kind,
                outcome,
            } => write!(f, "rule        {rule} [{kind}]: {outcome}"),
            TraceStep::NotApplicable { rules } => {
                write!(f, "index       {rules} other rule(s) not applicable: their from/to exclude these identities")
            }
            TraceStep::BreakGlass { result } => write!(f, "break-glass {result}"),
        }
    }
}

/// The ordered steps of one decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Trace {
    /// Steps in the order they ran.
    pub steps: Vec<TraceStep>,
}

/// Receives trace steps; the untraced path uses a no-op whose closures are never called.
pub(crate) trait Tracer {
    fn step(&mut self, make: impl FnOnce() -> TraceStep);
}

/// Discards everything; `decide` uses it.
pub(crate) struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: impl FnOnce() -> TraceStep) {}
}

impl Tracer for Trace {
    fn step(&mut self, make: impl FnOnce() -> TraceStep) {
        self.steps.push(make());
    }
}
