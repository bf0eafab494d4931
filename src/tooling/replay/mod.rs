//! `wardgate replay BUNDLE --log DECISIONS.jsonl`: re-decide recorded decisions with a candidate
//! bundle and report every decision that would change, grouped by rule and segment pair.
//!
//! One pass over the log, one line at a time: `read` turns a line into a record (or a reason to
//! skip it), `decide` ([`decide::Replayer::replay`], the one per-record step) re-decides it with
//! `Policy::decide` as the server would, [`Tally`] groups what changed, and `gate` turns the
//! counts into the exit code (nothing or too little read: exit 3; too many undetermined, with
//! `--max-undetermined`: exit 6). Memory does not grow with the log: only the groups and their
//! first examples are kept. This module must never write to the log, guess a missing value, or
//! pass a log it could not read.

mod decide;
mod gate;
mod read;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;

use serde::Serialize;

use super::{load, Exit};
use crate::decision_log::DecisionRecord;
use crate::policy::Verdict;
use decide::decided_by;
pub(crate) use decide::{Outcome, Replayer, Segments};
use gate::{Counts, Limit, Percent};
use read::{Line, LogReader};

/// `wardgate replay` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The candidate bundle (file or directory).
    bundle: PathBuf,
    /// Decision log: one JSON `DecisionRecord` per line.
    #[arg(long, value_name = "FILE.jsonl")]
    log: PathBuf,
    /// The bundle that made the logged decisions; narrows what unlogged data could have been.
    #[arg(long, value_name = "BUNDLE")]
    baseline: Option<PathBuf>,
    /// Example requests shown per group.
    #[arg(long, value_name = "N", default_value_t = 3)]
    examples: usize,
    /// Refuse the log (exit 3) when less than this share of its non-blank lines are decision
    /// records. A log of which nothing was read is always refused.
    #[arg(long, value_name = "P%", default_value = gate::DEFAULT_MIN_READABLE, value_parser = gate::parse_percent)]
    min_readable: Percent,
    /// Fail (exit 6) when more than N records, or P% of the records read, are undetermined
    /// (depend on request data the log does not carry). Default: not gated.
    #[arg(long, value_name = "N|P%", value_parser = gate::parse_limit)]
    max_undetermined: Option<Limit>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Skipped lines shown with their reason (warnings and summary); the rest are counted.
const SKIPS_SHOWN: usize = 5;

/// How the records of a group change. Declared in the order of their names, so groups sort as
/// they always have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// Allowed before, denied now.
    Revoked,
    /// Denied before, allowed now.
    Granted,
    /// Depends on request data the log does not carry.
    Undetermined,
}

impl Change {
    /// `allow -> deny`, `deny -> allow` or `undetermined`: the one spelling of text and JSON.
    fn as_str(self) -> &'static str {
        match self {
            Change::Revoked => "allow -> deny",
            Change::Granted => "deny -> allow",
            Change::Undetermined => "undetermined",
        }
    }
}

impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A group of changed or undetermined records.
#[derive(Debug, Serialize)]
struct Group {
    change: Change,
    from_segment: String,
    to_segment: String,
    /// What decided before (rule or reason).
    before: String,
    /// What decides now, or what the outcome depends on.
    after: String,
    count: usize,
    examples: Vec<Example>,
}

#[derive(Debug, Serialize)]
struct Example {
    line: usize,
    method: String,
    path: String,
    from: Option<String>,
    to: Option<String>,
    time: String,
}

/// A skipped line and why.
#[derive(Debug, Serialize)]
struct Skip {
    line: usize,
    reason: String,
}

/// Everything one pass over the log counted, and the groups of changes.
#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    unchanged: usize,
    not_reproduced: usize,
    /// The first [`SKIPS_SHOWN`] skipped lines.
    skips: Vec<Skip>,
    groups: BTreeMap<(Change, String, String, String, String), Group>,
}

impl Tally {
    fn skip(&mut self, line: usize, reason: String) {
        if self.skips.len() < SKIPS_SHOWN {
            self.skips.push(Skip { line, reason });
        }
    }

    fn skipped(&self) -> usize {
        self.counts.lines - self.counts.read
    }

    /// Count one replayed record.
    fn add(
        &mut self,
        line: usize,
        rec: &DecisionRecord,
        outcome: Outcome,
        segs: Option<Segments>,
        examples: usize,
    ) {
        let (change, after) = match outcome {
            Outcome::Unchanged => {
                self.unchanged += 1;
                return;
            }
            Outcome::NotReproduced => {
                self.not_reproduced += 1;
                return;
            }
            Outcome::Changed(v, reason, rule) => {
                let change = if v == Verdict::Allow {
                    self.counts.grants += 1;
                    Change::Granted
                } else {
                    self.counts.revocations += 1;
                    Change::Revoked
                };
                (change, decided_by(reason, rule.as_deref()))
            }
            Outcome::Undetermined(on, outcomes) => {
                self.counts.undetermined += 1;
                let after = if outcomes.is_empty() {
                    format!("depends on {}", on.join(", "))
                } else {
                    format!("depends on {}: {}", on.join(", "), outcomes.join(" or "))
                };
                (Change::Undetermined, after)
            }
        };
        let (s, d) = segs.unwrap_or(("-".into(), None));
        let from_seg = rec.source_segment.clone().unwrap_or(s);
        let to_seg = rec
            .destination_segment
            .clone()
            .or(d)
            .unwrap_or_else(|| "-".to_string());
        let before = decided_by(rec.reason, rec.rule.as_deref());
        let key = (
            change,
            before.clone(),
            after.clone(),
            from_seg.clone(),
            to_seg.clone(),
        );
        let g = self.groups.entry(key).or_insert_with(|| Group {
            change,
            from_segment: from_seg,
            to_segment: to_seg,
            before,
            after,
            count: 0,
            examples: Vec::new(),
        });
        g.count += 1;
        if g.examples.len() < examples {
            g.examples.push(Example {
                line,
                method: rec.method.clone(),
                path: rec.path.clone(),
                from: rec.source.clone(),
                to: rec.destination.clone(),
                time: rec.time.clone(),
            });
        }
    }
}

/// Run `wardgate replay`.
pub(crate) fn run(args: ReplayArgs) -> Exit {
    let candidate = match load(&args.bundle) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let baseline = match &args.baseline {
        None => None,
        Some(b) => match load(b) {
            Ok(p) => Some(p),
            Err(code) => return code,
        },
    };
    let log = args.log.display().to_string();
    let file = match std::fs::File::open(&args.log) {
        Ok(f) => f,
        Err(e) => {
            tell!("error: cannot read {log}: {e}");
            return Exit::Input;
        }
    };
    let replayer = Replayer::new(&candidate, baseline.as_ref());
    let mut tally = Tally::default();
    let mut reader = LogReader::new(BufReader::with_capacity(64 * 1024, file));
    loop {
        let (n, line) = match reader.next_line() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                tell!(
                    "error: cannot read {log} after line {}: {e}",
                    tally.counts.lines
                );
                return Exit::Input;
            }
        };
        tally.counts.lines += 1;
        let rec = match line {
            Line::Record(r) => r,
            Line::Skipped(why) => {
                tally.skip(n, why);
                continue;
            }
        };
        match replayer.replay(&rec) {
            Ok((outcome, segs)) => {
                tally.counts.read += 1;
                tally.add(n, &rec, outcome, segs, args.examples);
            }
            Err(why) => tally.skip(n, why),
        }
    }
    for s in &tally.skips {
        tell!("warning: skipped {log}:{}: {}", s.line, s.reason);
    }
    if tally.skipped() > tally.skips.len() {
        tell!(
            "warning: {} more line(s) of {log} skipped",
            tally.skipped() - tally.skips.len()
        );
    }
    let mut verdict = gate::verdict(&tally.counts, args.min_readable, args.max_undetermined);
    let envoy = |s: &Skip| s.reason.starts_with("an Envoy access log line");
    if tally.counts.read == 0 && tally.skips.first().is_some_and(envoy) {
        verdict.result.push_str(
            ": this is an Envoy access log; replay reads the decision log `wardgate serve --decision-log` writes",
        );
    }
    if verdict.exit == Exit::Input {
        tell!("error: {log}: {}", verdict.result);
    }
    if args.json {
        say!(
            "{}",
            json(&args, &replayer, baseline.is_some(), &tally, &verdict)
        );
    } else {
        text(&args, &replayer, baseline.is_some(), &tally, &verdict);
    }
    verdict.exit
}

fn json(
    args: &ReplayArgs,
    replayer: &Replayer<'_>,
    has_baseline: bool,
    t: &Tally,
    verdict: &gate::Verdict,
) -> serde_json::Value {
    let c = &t.counts;
    let decided = t.unchanged + c.grants + c.revocations;
    serde_json::json!({
        "bundle": args.bundle.display().to_string(),
        "revision": replayer.candidate().revision(),
        "log": args.log.display().to_string(),
        "baseline": has_baseline,
        "lines": c.lines,
        "read": c.read,
        "skipped": t.skipped(),
        "skipped_lines": t.skips,
        "replayed": c.read,
        "decided": decided,
        "unchanged": t.unchanged,
        "changed": c.grants + c.revocations,
        "newly_allowed": c.grants,
        "newly_denied": c.revocations,
        "undetermined": c.undetermined,
        "not_reproduced_by_baseline": t.not_reproduced,
        "unreadable": t.skipped(),
        "min_readable": args.min_readable.to_string(),
        "max_undetermined": args.max_undetermined.map(|l| l.to_string()),
        "groups": t.groups.values().collect::<Vec<_>>(),
        "result": verdict.result,
        "exit": verdict.exit.code(),
    })
}

fn text(
    args: &ReplayArgs,
    replayer: &Replayer<'_>,
    has_baseline: bool,
    t: &Tally,
    verdict: &gate::Verdict,
) {
    let c = &t.counts;
    say!(
        "replay {} decision(s) from {} against {} (revision {})\n",
        c.read,
        args.log.display(),
        args.bundle.display(),
        replayer.candidate().revision()
    );
    say!(
        "  read           {} of {} line(s)  ({} skipped)",
        c.read,
        c.lines,
        t.skipped()
    );
    for s in &t.skips {
        say!("      line {}: {}", s.line, s.reason);
    }
    if t.skipped() > t.skips.len() {
        say!("      ... {} more", t.skipped() - t.skips.len());
    }
    let changed = c.grants + c.revocations;
    say!("  decided        {}", t.unchanged + changed);
    say!("    unchanged    {}", t.unchanged);
    say!(
        "    changed      {changed}  ({} deny -> allow, {} allow -> deny)",
        c.grants,
        c.revocations
    );
    say!(
        "  undetermined   {}  (would depend on request data the log does not carry)",
        c.undetermined
    );
    if has_baseline {
        say!(
            "  not reproduced {}  (the baseline bundle decides these differently from the log)",
            t.not_reproduced
        );
    }
    for kind in [Change::Granted, Change::Revoked, Change::Undetermined] {
        let list: Vec<&Group> = t.groups.values().filter(|g| g.change == kind).collect();
        if list.is_empty() {
            continue;
        }
        let n: usize = list.iter().map(|g| g.count).sum();
        say!("\n{} ({n})", kind.as_str());
        for g in list {
            say!(
                "\n  {} -> {}   {}   =>   {}   {} request(s)",
                g.from_segment,
                g.to_segment,
                g.before,
                g.after,
                g.count
            );
            for e in &g.examples {
                say!(
                    "      line {}: {} {} from {} to {} at {}",
                    e.line,
                    e.method,
                    e.path,
                    e.from.as_deref().unwrap_or("-"),
                    e.to.as_deref().unwrap_or("-"),
                    e.time
                );
            }
        }
    }
    say!(
        "\nresult: {} (exit {})",
        verdict.result,
        verdict.exit.code()
    );
}
