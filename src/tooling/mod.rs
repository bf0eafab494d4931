//! Policy tooling for platform teams: `wardgate test`, `analyze`, `diff`, `replay` and `learn`.
//!
//! These verbs answer, from the compiled [`Policy`] the server would run, the questions a
//! platform or security team asks of a bundle: do these requests get the decisions we expect
//! (`test`), who can reach what and which rules are dead weight (`analyze`), what does this
//! change grant or revoke (`diff`), and which recorded decisions would this candidate change
//! (`replay`). `test` and `replay` call `Policy::decide`/`decide_traced` on every request;
//! `analyze` and `diff` compute exact answers from the compiled rules as sets of requests
//! (`space`, `model`) and confirm every example they print with `decide`. Exact answers can cost
//! exponential time and memory on hostile bundles, so `analyze` and `diff` run under a work and
//! memory budget (`budget`) and refuse, naming the rule, rather than run away. `learn` goes the
//! other way: it writes a new bundle (never changing one) from logged decisions, whose proofs are
//! these verbs.
//!
//! This module must never change a policy, never sample requests to make a claim, and never read
//! the policy's indexes: it goes through `policy::view` only.
//!
//! Every verb returns an [`Exit`] (see `exit.rs`: one table of exit codes for all verbs).
//! Output goes through `say!`/`say_raw!` (stdout) and `tell!` (stderr), which stop quietly at a
//! closed pipe (`wardgate analyze ... | head` must not panic), never through `println!`.

/// `println!` that ignores a closed stdout (`wardgate analyze ... | head` must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed stderr (`wardgate replay ... 2>&1 | head`).
macro_rules! tell {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

pub(crate) mod analyze;
pub(crate) mod budget;
pub(crate) mod diff;
pub(crate) mod exit;
pub(crate) mod learn;
pub(crate) mod model;
pub(crate) mod redacted;
pub(crate) mod render;
pub(crate) mod replay;
pub(crate) mod space;
pub(crate) mod testing;
pub(crate) mod timeline;

#[cfg(test)]
mod proptests;

use std::path::{Path, PathBuf};

use crate::policy::Policy;

pub(crate) use diff::DiffArgs;
pub(crate) use exit::Exit;
pub(crate) use replay::ReplayArgs;
pub(crate) use testing::TestArgs;

/// Load and compile a bundle within the default compile budget, printing every problem as
/// `FILE:LINE:COL: message`.
pub(crate) fn load(path: &Path) -> Result<Policy, Exit> {
    load_within(path, crate::policy::CompileLimits::default())
}

/// [`load`] within the compile budget of `--max-compile-work` / `--max-compile-memory`.
pub(crate) fn load_within(
    path: &Path,
    limits: crate::policy::CompileLimits,
) -> Result<Policy, Exit> {
    Policy::from_path_within(path, limits).map_err(|errors| {
        for d in errors.iter() {
            tell!("{d}");
        }
        tell!(
            "{}: invalid bundle ({} error(s))",
            path.display(),
            errors.0.len()
        );
        Exit::Input
    })
}

/// The cost limits of `analyze` and `diff` (see `budget`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct BudgetArgs {
    /// Refuse the analysis once it has done this many units of work (a unit is about one set
    /// test; creating a set costs several). The default takes about a second.
    #[arg(long, value_name = "UNITS", default_value_t = budget::DEFAULT_MAX_WORK)]
    max_analysis_work: u64,
    /// Refuse the analysis once the sets it keeps are estimated to need more than this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = budget::DEFAULT_MAX_MEMORY_MIB)]
    max_analysis_memory: u64,
    /// The compile budget of the bundles analysed.
    #[command(flatten)]
    pub(crate) compile: budget::CompileArgs,
}

impl BudgetArgs {
    pub(crate) fn budget(&self) -> budget::Budget {
        budget::Budget::new(self.max_analysis_work, self.max_analysis_memory)
    }
}

/// Print a budget refusal (`FILE:LINE:COL: analysing rule ... exceeds ...`) and give the
/// "could not run" exit code.
pub(crate) fn refused(r: &budget::Refused) -> Exit {
    tell!("{r}");
    Exit::Input
}

/// Output format of `analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Terminal text.
    Text,
    /// One JSON object.
    Json,
    /// Graphviz DOT (the matrix only).
    Dot,
}

/// `wardgate analyze` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct AnalyzeArgs {
    /// Bundle file or directory.
    bundle: PathBuf,
    /// List every grant that reaches this segment or SPIFFE ID (pattern); repeatable.
    #[arg(long, value_name = "SPIFFE_ID_OR_SEGMENT")]
    who_can_reach: Vec<String>,
    /// The segment-to-segment reachability matrix.
    #[arg(long)]
    matrix: bool,
    /// Findings: shadowed and redundant rules, grants into the sensitive segment, trust-domain
    /// wildcards, unreachable segments, schedules that never match.
    #[arg(long)]
    findings: bool,
    /// Segment whose inbound grants from outside are listed for review (default: clinical);
    /// repeatable.
    #[arg(long, value_name = "SEGMENT")]
    sensitive: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Same as `--format json`.
    #[arg(long)]
    json: bool,
    /// Also write the matrix as an SVG picture to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    #[command(flatten)]
    budget: BudgetArgs,
}

/// Run `wardgate analyze`.
pub(crate) fn run_analyze(args: AnalyzeArgs) -> Exit {
    let policy = match load_within(&args.bundle, args.budget.compile.limits()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let budget = args.budget.budget();
    let time = match timeline::TimeUniverse::new(&[&policy], &budget) {
        Ok(t) => t,
        Err(r) => return refused(&r),
    };
    let m = match model::Model::new(&policy, &time, &budget) {
        Ok(m) => m,
        Err(r) => return refused(&r),
    };
    let an = analyze::Analyzer::new(&m, &time, &budget);
    let format = if args.json { Format::Json } else { args.format };
    let explicit_sensitive = !args.sensitive.is_empty();
    let sensitive = if explicit_sensitive {
        args.sensitive.clone()
    } else {
        vec!["clinical".to_string()]
    };
    for s in &sensitive {
        if explicit_sensitive && !m.segments.iter().any(|x| x.name == s.as_str()) {
            tell!("error: --sensitive {s}: the bundle has no segment `{s}`");
            return Exit::Input;
        }
    }
    let mut targets = Vec::new();
    for t in &args.who_can_reach {
        match an.target(t) {
            Ok(p) => targets.push((t.clone(), p)),
            Err(e) => {
                tell!("error: --who-can-reach: {e}");
                return Exit::Input;
            }
        }
    }
    let nothing_chosen = targets.is_empty() && !args.matrix && !args.findings;
    let want_matrix = args.matrix || nothing_chosen || format == Format::Dot || args.svg.is_some();
    let want_findings = args.findings || (nothing_chosen && args.svg.is_none());
    if format == Format::Dot && (!targets.is_empty() || args.findings) {
        tell!("error: --format dot draws the matrix only");
        return Exit::Usage;
    }
    let answers = || -> Result<_, budget::Refused> {
        let reaches: Vec<analyze::Reach> = targets
            .iter()
            .map(|(label, pats)| an.who_can_reach(label, pats))
            .collect::<Result<_, _>>()?;
        let matrix = match want_matrix || want_findings {
            true => Some(an.matrix()?),
            false => None,
        };
        let findings = match (&matrix, want_findings) {
            (Some(mx), true) => Some(an.findings(mx, &sensitive)?),
            _ => None,
        };
        Ok((reaches, matrix, findings))
    };
    let (reaches, matrix, findings) = match answers() {
        Ok(a) => a,
        Err(r) => return refused(&r),
    };
    if let (Some(file), Some(mx)) = (&args.svg, &matrix) {
        match render::write_matrix_svg(mx, &sensitive, file) {
            Ok(how) => tell!("wrote {} ({how} renderer)", file.display()),
            Err(e) => {
                tell!("error: cannot write {}: {e}", file.display());
                return Exit::Input;
            }
        }
    }
    match format {
        Format::Dot => {
            if let Some(mx) = &matrix {
                say_raw!("{}", render::matrix_dot(mx, &sensitive));
            }
        }
        Format::Json => {
            let mut out = serde_json::json!({
                "bundle": args.bundle.display().to_string(),
                "revision": policy.revision(),
                "rules": m.rules.len(),
                "break_glass": m.break_glass.len(),
                "segments": m.segments.iter().map(|s| s.name).collect::<Vec<_>>(),
                "sensitive": sensitive,
            });
            if !reaches.is_empty() {
                out["who_can_reach"] = serde_json::json!(reaches);
            }
            if want_matrix {
                out["matrix"] = serde_json::json!(matrix);
            }
            if let Some(f) = &findings {
                out["findings"] = serde_json::json!(f);
            }
            say!("{out}");
        }
        Format::Text => {
            say!(
                "{}: revision {}, {} rule(s), {} break-glass entr{}, {} segment(s)",
                args.bundle.display(),
                policy.revision(),
                m.rules.len(),
                m.break_glass.len(),
                if m.break_glass.len() == 1 { "y" } else { "ies" },
                m.segments.len()
            );
            for r in &reaches {
                say!("\n{}", render::reach_text(r).trim_end());
            }
            if let (true, Some(mx)) = (want_matrix, &matrix) {
                say!("\n{}", render::matrix_text(mx).trim_end());
            }
            if let Some(f) = &findings {
                say!("\n{}", render::findings_text(f).trim_end());
            }
        }
    }
    let disagreements = an.disagreements.borrow().clone();
    if !disagreements.is_empty() {
        return report_disagreements(&disagreements);
    }
    // A rule that never decides is probably a mistake; review and info findings are not.
    let never_decides = findings.iter().flatten().any(|f| f.severity == "warning");
    if never_decides {
        Exit::No
    } else {
        Exit::Ok
    }
}

/// Print internal analysis/engine disagreements (never expected): [`Exit::Internal`].
fn report_disagreements(list: &[String]) -> Exit {
    for d in list {
        tell!("internal error: {d}");
    }
    tell!("internal error: the analysis disagrees with the engine; please report this bundle");
    Exit::Internal
}
