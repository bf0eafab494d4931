//! The rollout gates of `wardgate replay`: how much of the log must be readable
//! (`--min-readable`), how many undetermined records are tolerated (`--max-undetermined`), and
//! the [`Exit`] a finished replay ends with.
//!
//! Owns the flag values' syntax and the order in which outcomes decide the exit code. It must
//! never let a replay that read nothing, or too little, pass: an unusable log is
//! [`Exit::Input`] whatever else was found.

use std::fmt;

use super::Exit;

/// Default of `--min-readable`: a log of which less than this share of lines are decision
/// records is refused (a truncated last line of a large log passes; a wrong file does not).
pub(crate) const DEFAULT_MIN_READABLE: &str = "99%";

/// A share in percent, 0 to 100: `P%` or `P` (`99`, `99.5%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percent(f64);

impl Percent {
    /// Whether `part` of `whole` is more than this share.
    fn exceeded_by(self, part: usize, whole: usize) -> bool {
        (part as f64) * 100.0 > self.0 * (whole as f64)
    }

    /// Whether `part` of `whole` is less than this share.
    fn missed_by(self, part: usize, whole: usize) -> bool {
        (part as f64) * 100.0 < self.0 * (whole as f64)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Parse `P%` or `P` (0 to 100).
pub(crate) fn parse_percent(s: &str) -> Result<Percent, String> {
    let n = s.strip_suffix('%').unwrap_or(s).trim();
    match n.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(Percent(p)),
        _ => Err(format!("`{s}` is not a percentage from 0% to 100%")),
    }
}

/// `--max-undetermined`: a number of records, or a share of the records read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Limit {
    /// At most this many.
    Count(u64),
    /// At most this share of the records read.
    Share(Percent),
}

impl Limit {
    /// Whether `n` of `read` records is over the limit.
    pub(crate) fn exceeded(self, n: usize, read: usize) -> bool {
        match self {
            Limit::Count(max) => n as u64 > max,
            Limit::Share(p) => p.exceeded_by(n, read),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Share(p) => write!(f, "{p}"),
        }
    }
}

/// Parse `N` or `P%`.
pub(crate) fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.ends_with('%') {
        return parse_percent(s).map(Limit::Share);
    }
    s.trim()
        .parse::<u64>()
        .map(Limit::Count)
        .map_err(|_| format!("`{s}` is neither a number of records (`N`) nor a share (`P%`)"))
}

/// What the replay counted, as far as the gates are concerned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Non-blank lines.
    pub(crate) lines: usize,
    /// Lines that were decision records replay could use.
    pub(crate) read: usize,
    pub(crate) grants: usize,
    pub(crate) revocations: usize,
    pub(crate) undetermined: usize,
}

/// Why a replay ended as it did: the exit and the words of its `result:` line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) exit: Exit,
    pub(crate) result: String,
}

/// The exit of a replay, in order of precedence: an unusable log (nothing, or less than
/// `min_readable` of its lines, read) is [`Exit::Input`]; more undetermined records than
/// `max_undetermined` is [`Exit::Undetermined`], because then the counts below are incomplete;
/// then new grants ([`Exit::NewGrants`]), revocations only ([`Exit::No`]), and [`Exit::Ok`].
pub(crate) fn verdict(
    c: &Counts,
    min_readable: Percent,
    max_undetermined: Option<Limit>,
) -> Verdict {
    let done = |exit: Exit, result: String| Verdict { exit, result };
    if c.lines == 0 {
        return done(
            Exit::Input,
            "log unusable: it holds no lines at all (an empty file?)".to_string(),
        );
    }
    if c.read == 0 {
        return done(
            Exit::Input,
            format!(
                "log unusable: none of its {} line(s) is a decision record",
                c.lines
            ),
        );
    }
    if min_readable.missed_by(c.read, c.lines) {
        return done(
            Exit::Input,
            format!(
                "log unusable: read {} of {} line(s) ({}), below --min-readable {min_readable}",
                c.read,
                c.lines,
                share(c.read, c.lines)
            ),
        );
    }
    let grants = match c.grants {
        0 => String::new(),
        n => format!("; {n} denied request(s) would now be allowed"),
    };
    if let Some(limit) = max_undetermined {
        if limit.exceeded(c.undetermined, c.read) {
            return done(
                Exit::Undetermined,
                format!(
                    "{} of {} decision(s) undetermined ({}), above --max-undetermined {limit}: the log cannot show what this bundle changes{grants}",
                    c.undetermined,
                    c.read,
                    share(c.undetermined, c.read)
                ),
            );
        }
    }
    let open = match (c.undetermined, max_undetermined) {
        (0, _) => String::new(),
        (n, Some(limit)) => format!("; {n} undetermined, within --max-undetermined {limit}"),
        (n, None) => format!("; {n} undetermined, not gated (see --max-undetermined)"),
    };
    // Exits 4 and 1 already fail a gate; the summary counts the undetermined beside them.
    if c.grants > 0 {
        done(
            Exit::NewGrants,
            "some denied requests would now be allowed".to_string(),
        )
    } else if c.revocations > 0 {
        done(Exit::No, "only allow -> deny changes".to_string())
    } else if c.undetermined > 0 {
        // The one pass with undetermined records: said in the result line, never silent.
        done(Exit::Ok, format!("no definite decision changes{open}"))
    } else {
        done(Exit::Ok, "no decision changes".to_string())
    }
}

/// `part` of `whole` in percent, one decimal.
pub(crate) fn share(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "0%".to_string();
    }
    format!("{:.1}%", (part as f64) * 100.0 / (whole as f64))
}
