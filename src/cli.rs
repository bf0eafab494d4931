//! The `wardgate` command line: flag parsing, logging set-up and the verbs (DESIGN §8).
//!
//! Each verb validates its flags, then calls the same library code the server uses: `check`
//! runs [`Policy::decide_traced`], which returns what `decide` returns. Verb names and flags are
//! a stable interface for scripts; add flags freely, rename none.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::identity;
use crate::policy::{CertificateFacts, PeerCertificate, Policy, Request, Trace};
use crate::server::{self, ListenAddr, ServerConfig};

/// The example bundle compiled into the binary; `serve` uses it when no `--bundle` is given.
pub const EMBEDDED_BUNDLE: &str = include_str!("../deploy/bundles/hospital.yaml");

/// Name the embedded bundle is reported under.
pub const EMBEDDED_BUNDLE_NAME: &str = "<embedded>/hospital.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "wardgate",
    version,
    about = "Envoy ext_authz sidecar for SPIFFE identity-based segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz Check calls.
    Serve(ServeArgs),
    /// Validate a bundle; exit 1 listing every problem as FILE:LINE:COL: message.
    Validate {
        /// Bundle file or directory.
        bundle: PathBuf,
    },
    /// Decide one request against a bundle and print the decision with its trace.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Bundle file or directory (default: the example bundle embedded in the binary).
    #[arg(long, value_name = "SOURCE")]
    bundle: Option<PathBuf>,
    /// gRPC listen address: `unix:/path/to.sock` or `host:port`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9191")]
    listen: ListenAddr,
    /// Destination SPIFFE ID to use when Envoy does not send `destination.principal`.
    #[arg(long, value_name = "SPIFFE_ID")]
    destination_principal: Option<String>,
    /// Log format for operational logs.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Bundle file or directory.
    bundle: PathBuf,
    /// Source SPIFFE ID (what Envoy reports as `source.principal`).
    #[arg(long, value_name = "SPIFFE_ID")]
    from: String,
    /// Destination SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    to: Option<String>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Raw request path (query allowed; normalised as the server would).
    #[arg(long, default_value = "/")]
    path: String,
    /// Host / :authority.
    #[arg(long, default_value = "")]
    host: String,
    /// Request header, repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Evaluate at this instant (RFC 3339, e.g. 2026-03-29T02:30:00+01:00); default now.
    #[arg(long, value_name = "RFC3339_INSTANT")]
    at: Option<jiff::Timestamp>,
    /// Simulate a forwarded peer certificate valid for this long (e.g. `24h`), issued to the
    /// source, starting a minute before the evaluation instant.
    #[arg(long, value_name = "DURATION")]
    cert_lifetime: Option<jiff::SignedDuration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty header name"));
    }
    Ok((k.to_ascii_lowercase(), v.to_string()))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Validate { bundle } => validate(&bundle),
        Command::Check(args) => check(args),
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match Policy::from_path(path) {
        Ok(p) => {
            println!(
                "{}: ok: revision {}, {} rule(s), {} segment(s), {}",
                path.display(),
                p.revision(),
                p.rule_count(),
                p.segment_names().count(),
                p.digest()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            for d in errors.iter() {
                let _ = writeln!(err, "{d}");
            }
            let _ = writeln!(err, "{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::from(1)
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let policy = match Policy::from_path(&args.bundle) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let headers: HashMap<String, String> = args.headers.iter().cloned().collect();
    let time = args.at.unwrap_or_else(jiff::Timestamp::now);
    let facts = args.cert_lifetime.map(|life| {
        let not_before = time - jiff::SignedDuration::from_mins(1);
        CertificateFacts {
            uri_sans: vec![args.from.clone()],
            is_ca: false,
            not_before,
            not_after: not_before + life,
        }
    });
    let mut request = Request::new(&args.method, &args.path);
    request.source = Some(&args.from);
    request.destination = args.to.as_deref();
    request.host = &args.host;
    request.headers = &headers;
    request.time = time;
    if let Some(f) = &facts {
        request.peer_certificate = PeerCertificate::Parsed(f);
    }
    let mut trace = Trace::default();
    let d = policy.decide_traced(&request, &mut trace);
    if args.json {
        let out = serde_json::json!({
            "decision": d.verdict.as_str(),
            "reason": d.reason.as_str(),
            "rule": d.rule,
            "source_segment": d.source_segment,
            "destination_segment": d.destination_segment,
            "revision": policy.revision(),
            "at": time.to_string(),
            "trace": trace,
        });
        println!("{out}");
    } else {
        println!("decision: {}", d.verdict.as_str());
        println!("reason:   {}", d.reason);
        println!("rule:     {}", d.rule.unwrap_or("-"));
        println!(
            "segments: {} -> {}",
            d.source_segment.unwrap_or("-"),
            d.destination_segment.unwrap_or("-")
        );
        println!("bundle:   revision {} at {}", policy.revision(), time);
        println!("trace:");
        for step in &trace.steps {
            println!("  {step}");
        }
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    if let Some(d) = &args.destination_principal {
        if let Err(e) = identity::parse_spiffe_id(d) {
            tracing::error!("--destination-principal `{d}` is not a valid SPIFFE ID: {e}");
            return ExitCode::from(2);
        }
    }
    let (policy, source) = match &args.bundle {
        None => {
            tracing::info!(
                listen = %args.listen,
                "no --bundle given: serving the example bundle embedded in the binary (deploy/bundles/hospital.yaml)"
            );
            (
                Policy::from_yaml_str(EMBEDDED_BUNDLE_NAME, EMBEDDED_BUNDLE),
                EMBEDDED_BUNDLE_NAME.to_string(),
            )
        }
        Some(path) => (Policy::from_path(path), path.display().to_string()),
    };
    let handle: server::PolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
    match policy {
        Ok(p) => {
            tracing::info!(
                source = %source,
                revision = p.revision(),
                digest = p.digest(),
                rules = p.rule_count(),
                "bundle loaded"
            );
            handle.store(Some(Arc::new(p)));
        }
        Err(errors) => {
            for d in errors.iter() {
                tracing::error!("bundle refused: {d}");
            }
            tracing::error!(source = %source, "no valid bundle: every check is denied with no_policy");
        }
    }
    let config = ServerConfig {
        destination_principal: args.destination_principal,
        ..ServerConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(server::run(args.listen, handle, config, shutdown_signal()));
    match result {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("server failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining in-flight checks"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining in-flight checks"),
    }
}
