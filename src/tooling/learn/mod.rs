//! `wardgate learn --log DECISIONS.jsonl... [--base BUNDLE] [-o BUNDLE] [--tests FILE]`: propose a
//! least-privilege bundle from logged decisions, with a tests file that pins it and a report of
//! what was generalised, left out as too rare, denied, and never seen.
//!
//! The steps have one module each: `observe` reads and classifies log lines, `generalise` turns
//! one conversation's paths into patterns, `propose` makes segments and rules, `emit` writes the
//! bundle and the tests, `report` describes the result. This module parses the flags and runs
//! the steps. The proposal is compiled before anything is written: a bundle that does not compile
//! is an internal error, never output. Whether it is right is proven by the existing verbs
//! (`validate`, `test`, `replay`, `diff`, `analyze --findings`), never re-implemented here. Nothing
//! here may grant what was not observed beyond the generalisations the thresholds allow, or
//! weaken what the base bundle denies.

mod emit;
mod generalise;
mod observe;
mod propose;
mod report;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use super::exit::Exit;
use super::load;
use crate::policy::Policy;

/// `wardgate learn` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct LearnArgs {
    /// Decision logs, one JSON decision per line (as `serve --decision-log` writes them); several
    /// may follow one --log, and --log may be repeated.
    #[arg(long = "log", value_name = "DECISIONS.jsonl", required = true, num_args = 1..)]
    logs: Vec<PathBuf>,
    /// The bundle in force: its segments, deny rules and break-glass entries are kept unchanged,
    /// nothing it refuses is learned, and conditions of its allow rules that let the observed
    /// traffic through are kept. Without it, segments are proposed from trust domains and
    /// `ns/NAME` segments of the SPIFFE IDs.
    #[arg(long, value_name = "BUNDLE")]
    base: Option<PathBuf>,
    /// Where to write the proposed bundle (default: stdout, with the report on stderr).
    #[arg(short = 'o', long = "output", value_name = "BUNDLE")]
    output: Option<PathBuf>,
    /// Also write policy tests (`wardgate test` format): one observed request per learned rule,
    /// one per kind of observed denial.
    #[arg(long, value_name = "FILE")]
    tests: Option<PathBuf>,
    /// Fewest observations of a request family (conversation, method, generalised path) and of
    /// a conversation for it to be proposed; rarer ones are left out and listed.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    min_count: u64,
    /// Fewest different identifier-looking values (digits, UUIDs, hex, codes with digits) at one
    /// path position for it to become `*`. The redaction marker `{}` always does.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(2..))]
    id_min_distinct: u64,
    /// Most different literal values kept at one path position; beyond it the position becomes
    /// `*` whatever the values look like.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_literals: u64,
    /// Fewest different depths at which paths end below a prefix whose every further position is
    /// `*` for that prefix to become `prefix/**`.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(2..))]
    deep_min_depths: u64,
    /// Segment whose inbound grants from outside are listed for review (default: clinical, when
    /// the proposal has it); repeatable.
    #[arg(long, value_name = "SEGMENT")]
    sensitive: Vec<String>,
    /// Learn only from allowed requests: requests denied because no rule allowed them
    /// (`default_deny`) are then observed denials. Use it for logs of an enforcing sidecar, where
    /// such requests were refused; without it they are learned (audit mode, shadow runs).
    #[arg(long)]
    allowed_only: bool,
    /// Revision of the proposal (default: the base's plus one, or 1).
    #[arg(long, value_name = "N")]
    revision: Option<u64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Say something on the report's stream: stdout when the bundle goes to a file, else stderr.
fn report_out(to_stdout: bool, text: &str) {
    if to_stdout {
        say_raw!("{text}");
    } else {
        eprint!("{text}");
    }
}

/// Run `wardgate learn`.
pub(crate) fn run(args: LearnArgs) -> Exit {
    let base = match &args.base {
        None => None,
        Some(b) => match load(b) {
            Ok(p) => Some(p),
            Err(code) => return code,
        },
    };
    let obs = match observe::read(&args.logs, base.as_ref(), args.allowed_only) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Input;
        }
    };
    const SHOWN: usize = 20;
    for u in obs.unreadable.iter().take(SHOWN) {
        eprintln!("warning: skipped {u}");
    }
    if obs.unreadable.len() > SHOWN {
        eprintln!(
            "warning: skipped {} more unreadable line(s)",
            obs.unreadable.len() - SHOWN
        );
    }
    if obs.records == 0 {
        eprintln!("error: no decision could be read from the logs");
        return Exit::Input;
    }
    let thresholds = generalise::Thresholds {
        id_min_distinct: usize_of(args.id_min_distinct),
        max_literals: usize_of(args.max_literals),
        deep_min_depths: usize_of(args.deep_min_depths),
    };
    let settings = propose::Settings {
        min_count: usize_of(args.min_count),
        thresholds,
        sensitive: args.sensitive.clone(),
        revision: args.revision,
    };
    let proposal = match propose::propose(&obs, base.as_ref(), &settings) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Input;
        }
    };
    if proposal.trust_domains.is_empty() {
        eprintln!(
            "error: nothing to learn: no request in the logs was allowed (or denied only by \
             default) between two SPIFFE IDs, and no --base gives trust domains"
        );
        return Exit::Input;
    }
    let bundle_name = args
        .output
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<learned>".to_string());
    let base_name = args.base.as_ref().map(|p| p.display().to_string());
    let text = emit::bundle(&proposal, &obs, base.as_ref().zip(base_name.as_deref()));
    // The proposal must compile; a failure here is a bug in learn, never the user's problem.
    if let Err(errors) = Policy::from_yaml_str(&bundle_name, &text) {
        for d in errors.iter() {
            eprintln!("internal error: {d}");
        }
        eprintln!("internal error: the proposed bundle does not compile; please report this log");
        return Exit::Input;
    }
    let (tests_text, summary) = emit::tests(&proposal, &obs, base.as_ref(), &bundle_name);
    if let Some(path) = &args.output {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return Exit::Input;
        }
    } else {
        say_raw!("{text}");
    }
    if let Some(path) = &args.tests {
        if let Err(e) = std::fs::write(path, &tests_text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return Exit::Input;
        }
    }
    let cx = report::Context {
        base: base
            .as_ref()
            .zip(base_name.clone())
            .map(|(b, n)| (n, b.revision())),
        output: args.output.as_ref().map(|p| p.display().to_string()),
        tests: args.tests.as_ref().map(|p| p.display().to_string()),
        id_min_distinct: thresholds.id_min_distinct,
        max_literals: thresholds.max_literals,
        deep_min_depths: thresholds.deep_min_depths,
        summary: &summary,
    };
    let to_stdout = args.output.is_some();
    if args.json {
        let v = report::json(&obs, &proposal, &cx);
        report_out(to_stdout, &format!("{v}\n"));
    } else {
        report_out(to_stdout, &report::text(&obs, &proposal, &cx));
    }
    Exit::Ok
}
