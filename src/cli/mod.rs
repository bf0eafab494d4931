//! The `wardgate` command line: parse, dispatch, print, exit.
//!
//! Owns the verb and flag definitions, the process-level set-up `serve` needs (operational
//! logging, the async runtime, SIGTERM/SIGINT), and turning every outcome into one of the exit
//! codes of [`Exit`] (the table `wardgate --help` prints; README.md, "Exit codes"). It must
//! never wire the server itself ([`crate::app`] does, from the plan `serve_args` checks) and
//! never decide a request: `check` runs [`crate::policy::Policy::decide_traced`], which returns
//! what the server's `decide` returns. Verb names and flags are a stable interface for scripts:
//! add flags freely, rename none.

mod serve_args;
mod verbs;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::tooling::Exit;
use serve_args::{LogFormat, ServeArgs};
use verbs::CheckArgs;

/// `wardgate --version`: the crate version and the git revision it was built from (`build.rs`:
/// `$WARDGATE_GIT_REV`, else `git rev-parse --short HEAD` with `-dirty` for uncommitted source
/// changes, else `unknown`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("WARDGATE_BUILD_REV"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "wardgate",
    version = VERSION,
    about = "Envoy ext_authz sidecar for SPIFFE identity-based segmentation",
    after_help = Exit::help_table(),
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (serve's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz Check calls.
    Serve(Box<ServeArgs>),
    /// Validate a bundle; exit 3 listing every problem as FILE:LINE:COL: message.
    Validate {
        /// Bundle file or directory.
        bundle: PathBuf,
        /// The compile budget.
        #[command(flatten)]
        compile: crate::tooling::budget::CompileArgs,
    },
    /// Decide one request against a bundle and print the decision with its trace; exit 0 when
    /// allowed, 1 when denied.
    Check(CheckArgs),
    /// Run policy unit tests (YAML cases) against a bundle; exit 1 if any case fails.
    Test(crate::tooling::TestArgs),
    /// Who can reach what, the segment matrix, and findings, computed exactly from the rules;
    /// exit 1 on a rule that never decides.
    Analyze(crate::tooling::AnalyzeArgs),
    /// What a bundle change grants and revokes; exit 0 none, 1 only revocations, 4 new grants.
    Diff(crate::tooling::DiffArgs),
    /// Re-decide logged decisions with a candidate bundle; exit codes as for diff.
    Replay(crate::tooling::ReplayArgs),
    /// Propose a least-privilege bundle (and its tests) from logged decisions.
    Learn(crate::tooling::learn::LearnArgs),
    /// Validate a bundle file and push it (with BUNDLE.minisig if present) to an OCI registry
    /// tag, oci://registry/repository:tag; exit 1 when the registry refuses or is unreachable.
    Push {
        /// Bundle file.
        bundle: PathBuf,
        /// Target, e.g. oci://registry.example/platform/bundle:prod.
        reference: String,
        /// The compile budget of the validation before the push.
        #[command(flatten)]
        compile: crate::tooling::budget::CompileArgs,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout and are not errors; a closed pipe is ignored.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    let exit = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Validate { bundle, compile } => verbs::validate(&bundle, compile.limits()),
        Command::Check(args) => verbs::check(args),
        Command::Test(args) => crate::tooling::testing::run(args),
        Command::Analyze(args) => crate::tooling::run_analyze(args),
        Command::Diff(args) => crate::tooling::diff::run(args),
        Command::Replay(args) => crate::tooling::replay::run(args),
        Command::Learn(args) => crate::tooling::learn::run(args),
        Command::Push {
            bundle,
            reference,
            compile,
        } => verbs::push(&bundle, &reference, compile.limits()),
    };
    exit.into()
}

/// `wardgate serve`: log set-up, the plan, the runtime, and [`crate::app::serve`] until
/// SIGTERM or SIGINT.
fn serve(args: ServeArgs) -> Exit {
    init_logging(args.log_format);
    let workers = args.worker_threads();
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Usage;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return Exit::No;
        }
    };
    let shutdown = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(crate::app::serve(plan, shutdown)) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!("{e}");
            if e.before_serving() {
                Exit::Usage
            } else {
                Exit::No
            }
        }
    }
}

/// Operational logs on standard error, filtered by `$WARDGATE_LOG` (default `info`). Text is
/// coloured only when standard error is a terminal and `$NO_COLOR` is unset, so a file or a
/// pipe never receives escape codes; JSON never has any.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Registers the SIGTERM and SIGINT handlers now, before start-up (a signal that arrives while
/// the first bundle loads drains instead of killing the process by default action), and
/// returns a future that resolves on the first of them. Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = signal(SignalKind::terminate()).and_then(|term| {
        let int = signal(SignalKind::interrupt())?;
        Ok((term, int))
    });
    async move {
        let (mut term, mut int) = match handlers {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining in-flight checks"),
            _ = int.recv() => tracing::info!("SIGINT: draining in-flight checks"),
        }
    }
}
