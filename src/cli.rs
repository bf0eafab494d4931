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
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::identity;
use crate::policy::{CertificateFacts, PeerCertificate, Policy, Request, Trace};
use crate::reload::{BundleSource, ReloadConfig, ReloadObserver, Reloader};
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
    /// Run policy unit tests (YAML cases) against a bundle; exit 1 if any case fails.
    Test(crate::tooling::TestArgs),
    /// Who can reach what, the segment matrix, and findings, computed exactly from the rules.
    Analyze(crate::tooling::AnalyzeArgs),
    /// What a bundle change grants and revokes; exit 0 none, 1 only revocations, 2 new grants.
    Diff(crate::tooling::DiffArgs),
    /// Re-decide logged decisions with a candidate bundle and report what would change.
    Replay(crate::tooling::ReplayArgs),
    /// Propose a least-privilege bundle (and its tests) from logged decisions.
    Learn(crate::tooling::learn::LearnArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Bundle file, directory or http(s):// URL (default: the example bundle embedded in the
    /// binary, never reloaded).
    #[arg(long, value_name = "SOURCE")]
    bundle: Option<BundleSource>,
    /// gRPC listen address: `unix:/path/to.sock` or `host:port`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9191")]
    listen: ListenAddr,
    /// Destination SPIFFE ID to use when Envoy does not send `destination.principal`.
    #[arg(long, value_name = "SPIFFE_ID")]
    destination_principal: Option<String>,
    /// Log format for operational logs.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How often to re-read the bundle (file digest poll; HTTP poll, jittered ±20%).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Minisign public key (a `.pub` file) bundles must be signed with; repeatable. With none,
    /// signatures are not checked.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// Accept a bundle whose revision equals the one in force but whose content differs
    /// (a lower revision is never accepted).
    #[arg(long)]
    allow_equal_revision: bool,
    /// Keep the last good bundle here, and start from it when the source is unavailable.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Largest bundle accepted, in bytes (all files of a directory together, or the HTTP body).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_bundle_bytes: u64,
    /// Timeout of each HTTP request for the bundle.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    http_timeout: Duration,
    /// Admin HTTP listener (/metrics, /healthz, /readyz, /v1/bundle, /v1/rules):
    /// `host:port`, `unix:/path/to.sock` or `off`.
    #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_ADDR)]
    admin: crate::admin::AdminAddr,
    /// Decision log, one JSON object per line: `stdout`, `off`, or a file to append to.
    #[arg(long, value_name = "stdout|off|FILE", default_value = "stdout")]
    decision_log: crate::telemetry::DecisionLogTarget,
    /// Decision-log queue capacity; entries beyond it are dropped and counted, never waited for.
    #[arg(long, value_name = "N", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..))]
    decision_log_queue: u32,
    /// Fraction of allow decisions written to the decision log (0 to 1); denials always are.
    #[arg(long, value_name = "F", default_value_t = 1.0,
          value_parser = crate::telemetry::parse_sample_rate)]
    decision_log_sample_allows: f64,
    /// Serve gRPC over mutual TLS on the `host:port` of --listen: present wardgate's own SVID
    /// and admit only callers whose SVID verifies against their trust domain's bundle and whose
    /// SPIFFE ID matches an --allow-caller pattern.
    #[arg(long)]
    tls: bool,
    /// Where wardgate's own SVID and the trust bundles come from. Default with --tls: `files`
    /// when --svid-cert is given, else `workload-api`; without --tls: `files` when
    /// --trust-bundle is given (bundles only), else none.
    #[arg(long, value_enum, value_name = "workload-api|files")]
    svid_source: Option<SvidSourceKind>,
    /// SPIFFE Workload API endpoint, `unix:///path/to/agent.sock` or `tcp://IP:PORT`
    /// (default: $SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, value_name = "URI")]
    spiffe_endpoint_socket: Option<String>,
    /// wardgate's SVID certificate chain, PEM, leaf first (files; spiffe-helper's `svid.pem`).
    #[arg(long, value_name = "FILE")]
    svid_cert: Option<PathBuf>,
    /// The SVID's private key, PEM (files; spiffe-helper's `svid_key.pem`).
    #[arg(long, value_name = "FILE")]
    svid_key: Option<PathBuf>,
    /// CA bundle (PEM) of a trust domain, e.g. `hospital.example=/run/spiffe/svid_bundle.pem`
    /// (files); repeatable.
    #[arg(long = "trust-bundle", value_name = "TD=PEMFILE", value_parser = parse_trust_bundle)]
    trust_bundles: Vec<(String, PathBuf)>,
    /// SPIFFE ID pattern of a caller the mTLS listener admits (bundle pattern syntax, e.g.
    /// `spiffe://hospital.example/ns/*/sa/envoy`); repeatable, at least one with --tls.
    #[arg(long = "allow-caller", value_name = "PATTERN")]
    allow_callers: Vec<String>,
    /// A candidate bundle evaluated beside the enforced one on every check (same sources, reload
    /// and signature flags); disagreements are counted in
    /// `wardgate_shadow_disagreements_total` and logged. Responses follow the enforced bundle.
    #[arg(long, value_name = "SOURCE")]
    shadow_bundle: Option<BundleSource>,
    /// Also verify each forwarded peer certificate against the trust bundle of its principal's
    /// own trust domain (from --trust-bundle or the Workload API); one that does not chain is
    /// denied `bad_certificate`. Envoy verifies against all trusted CAs at once; this stops a
    /// federated CA from minting another trust domain's identities.
    #[arg(long)]
    verify_chain: bool,
}

/// `--svid-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SvidSourceKind {
    /// The SPIFFE Workload API (SPIRE agent or compatible).
    WorkloadApi,
    /// PEM files on disk (spiffe-helper, cert-manager csi-driver-spiffe, a Secret).
    Files,
}

fn parse_trust_bundle(s: &str) -> Result<(String, PathBuf), String> {
    let (domain, file) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not TRUST_DOMAIN=PEMFILE"))?;
    spiffe::TrustDomain::new(domain)
        .ok()
        .filter(|td| td.as_str() == domain)
        .ok_or_else(|| {
            format!("`{domain}` is not a trust domain name (such as hospital.example)")
        })?;
    if file.is_empty() {
        return Err(format!("`{s}` names no file"));
    }
    Ok((domain.to_owned(), PathBuf::from(file)))
}

/// wardgate's own identity as the flags configure it.
struct OwnIdentity {
    source: crate::svid::SourceConfig,
    /// With --tls: where to listen, and who may call.
    tls: Option<(std::net::SocketAddr, crate::tls::AllowList)>,
}

/// Check the identity and mTLS flags together; `None` when no identity source is configured.
fn own_identity_config(args: &ServeArgs) -> Result<Option<OwnIdentity>, String> {
    use crate::svid::{files, workload_api, SourceConfig};
    let kind = match args.svid_source {
        Some(kind) => Some(kind),
        None if args.tls && args.svid_cert.is_some() => Some(SvidSourceKind::Files),
        None if args.tls => Some(SvidSourceKind::WorkloadApi),
        None if !args.trust_bundles.is_empty() || args.svid_cert.is_some() => {
            Some(SvidSourceKind::Files)
        }
        None => None,
    };
    let tls = if args.tls {
        let ListenAddr::Tcp(addr) = args.listen else {
            return Err(format!(
                "--tls needs a TCP --listen address (host:port), not {}",
                args.listen
            ));
        };
        Some((addr, crate::tls::AllowList::parse(&args.allow_callers)?))
    } else {
        if !args.allow_callers.is_empty() {
            return Err("--allow-caller only applies with --tls".into());
        }
        None
    };
    let source = match kind {
        None => return Ok(None),
        Some(SvidSourceKind::WorkloadApi) => {
            if args.svid_cert.is_some() || args.svid_key.is_some() || !args.trust_bundles.is_empty()
            {
                return Err(
                    "--svid-cert, --svid-key and --trust-bundle are for --svid-source files; \
                            with the Workload API the SVID and bundles come from the agent"
                        .into(),
                );
            }
            let endpoint = match &args.spiffe_endpoint_socket {
                Some(endpoint) => endpoint.clone(),
                None => std::env::var(workload_api::ENDPOINT_ENV).map_err(|_| {
                    format!(
                        "--svid-source workload-api needs --spiffe-endpoint-socket or ${}",
                        workload_api::ENDPOINT_ENV
                    )
                })?,
            };
            let config = workload_api::Config::new(endpoint);
            config.validate().map_err(|e| e.to_string())?;
            SourceConfig::WorkloadApi(config)
        }
        Some(SvidSourceKind::Files) => {
            let svid = match (&args.svid_cert, &args.svid_key) {
                (Some(cert), Some(key)) => Some(files::SvidFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (None, None) if !args.tls => None,
                _ => return Err("--svid-source files needs both --svid-cert and --svid-key".into()),
            };
            if args.tls && args.trust_bundles.is_empty() {
                return Err(
                    "--tls with --svid-source files needs at least one --trust-bundle TD=PEMFILE \
                     to verify callers against"
                        .into(),
                );
            }
            SourceConfig::Files(files::Config::new(svid, args.trust_bundles.clone()))
        }
    };
    Ok(Some(OwnIdentity { source, tls }))
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
    /// source and covering the evaluation instant (see `CertificateFacts::simulated`).
    #[arg(long, value_name = "DURATION")]
    cert_lifetime: Option<jiff::SignedDuration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 5s or 1m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("`{s}` must not be negative"))
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
        Command::Test(args) => crate::tooling::testing::run(args),
        Command::Analyze(args) => crate::tooling::run_analyze(args),
        Command::Diff(args) => crate::tooling::diff::run(args),
        Command::Replay(args) => crate::tooling::replay::run(args),
        Command::Learn(args) => crate::tooling::learn::run(args),
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
    let facts = args
        .cert_lifetime
        .map(|life| CertificateFacts::simulated(&args.from, time, life));
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
    let reload = match reload_config(&args) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match own_identity_config(&args) {
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
        // --trust-bundle alone starts a bundles-only file source, so no source means no bundles.
        Ok(None) if args.verify_chain => {
            tracing::error!("--verify-chain needs trust bundles: give --trust-bundle TD=PEMFILE or a Workload API source");
            return ExitCode::from(2);
        }
        Ok(_) => {}
    }
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
    runtime.block_on(run_serve(args, reload))
}

/// The reload settings from the flags; `None` for the embedded bundle.
fn reload_config(args: &ServeArgs) -> Result<Option<ReloadConfig>, String> {
    let Some(source) = &args.bundle else {
        return Ok(None);
    };
    reload_config_for(args, source).map(Some)
}

/// Reload settings for one source (the enforced bundle or the shadow bundle).
fn reload_config_for(args: &ServeArgs, source: &BundleSource) -> Result<ReloadConfig, String> {
    let mut cfg = ReloadConfig::new(source.clone());
    cfg.poll_interval = args.poll_interval.max(Duration::from_millis(50));
    cfg.allow_equal_revision = args.allow_equal_revision;
    cfg.cache_dir = args.cache_dir.clone();
    cfg.max_bytes = args.max_bundle_bytes;
    cfg.http_timeout = args.http_timeout;
    for key in &args.trusted_keys {
        let text = std::fs::read_to_string(key)
            .map_err(|e| format!("--trusted-key {}: {e}", key.display()))?;
        cfg.trusted_keys
            .add(&text)
            .map_err(|e| format!("--trusted-key {}: {e}", key.display()))?;
    }
    Ok(cfg)
}

/// Waits until the shared stop flag is raised.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run_serve(args: ServeArgs, reload: Option<ReloadConfig>) -> ExitCode {
    let handle: crate::policy::PolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
    // One shutdown signal, fanned out to every task; each finishes its work before exiting.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // The first log line says which bundle this process enforces.
    match &reload {
        None => tracing::info!(
            listen = %args.listen,
            "no --bundle given: serving the example bundle embedded in the binary (deploy/bundles/hospital.yaml)"
        ),
        Some(cfg) => tracing::info!(source = %cfg.source, listen = %args.listen, "loading bundle"),
    }
    // Metrics and the decision log; the admin listener is up (not ready) before the first load.
    let telemetry = match crate::telemetry::Telemetry::from_flags(
        &args.decision_log,
        args.decision_log_queue as usize,
        args.decision_log_sample_allows,
    ) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            tracing::error!("--decision-log {}: {e}", args.decision_log);
            return ExitCode::from(2);
        }
    };
    match crate::admin::start(&args.admin, &telemetry, &handle, stopped(stop_rx.clone())).await {
        Ok(admin) => tasks.extend(admin),
        Err(e) => {
            tracing::error!("--admin {}: {e}", args.admin);
            return ExitCode::from(2);
        }
    }
    let observer: Arc<dyn ReloadObserver> = telemetry.clone();
    match reload {
        None => match Policy::from_yaml_str(EMBEDDED_BUNDLE_NAME, EMBEDDED_BUNDLE) {
            Ok(p) => {
                tracing::info!(
                    source = EMBEDDED_BUNDLE_NAME,
                    revision = p.revision(),
                    digest = p.digest(),
                    rules = p.rule_count(),
                    "bundle swapped in"
                );
                observer.swapped(&p, EMBEDDED_BUNDLE_NAME, Duration::ZERO);
                handle.store(Some(Arc::new(p)));
            }
            Err(errors) => tracing::error!("embedded bundle refused: {errors}"),
        },
        Some(cfg) => {
            let source = cfg.source.to_string();
            let mut reloader =
                Reloader::new(cfg, Arc::clone(&handle), Arc::clone(&observer), "bundle");
            reloader.initial_load().await;
            if handle.load().is_none() {
                tracing::error!(source = %source, "no valid bundle: every check is denied with no_policy until one loads");
            }
            tasks.push(tokio::spawn(reloader.run(stopped(stop_rx.clone()))));
        }
    }
    let mut shadow = None;
    if let Some(source) = &args.shadow_bundle {
        let mut cfg = match reload_config_for(&args, source) {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!("--shadow-bundle: {e}");
                return ExitCode::from(2);
            }
        };
        // The shadow keeps its own last-good copy, never the enforced bundle's.
        cfg.cache_dir = cfg.cache_dir.map(|d| d.join("shadow"));
        let evaluator = match crate::shadow::Shadow::new(
            Arc::new(arc_swap::ArcSwapOption::empty()),
            Some(telemetry.registry()),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("shadow bundle metrics: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(source = %source, "loading shadow bundle (evaluated, never enforced)");
        let shadow_observer: Arc<dyn ReloadObserver> = evaluator.clone();
        let mut reloader = Reloader::new(
            cfg,
            Arc::clone(evaluator.handle()),
            shadow_observer,
            "shadow bundle",
        );
        reloader.initial_load().await;
        tasks.push(tokio::spawn(reloader.run(stopped(stop_rx.clone()))));
        shadow = Some(evaluator);
    }
    // The trust bundles shared by the mTLS listener and forwarded-chain verification, kept
    // current by wardgate's identity source (src/svid) when one is configured.
    let trust: crate::trust::TrustHandle = Arc::default();
    let mut tls = None;
    match own_identity_config(&args) {
        Ok(None) => {}
        Ok(Some(own)) => {
            let identity = crate::svid::Identity::new(
                Arc::clone(&trust),
                crate::svid::metrics::SvidMetrics::for_telemetry(&telemetry),
            );
            let source = match crate::svid::start(own.source, Arc::clone(&identity)) {
                Ok(source) => source,
                Err(e) => {
                    tracing::error!("wardgate's own identity: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing::info!(source = source.kind(), "following wardgate's own identity");
            tasks.push(tokio::spawn(source.run(Box::pin(stopped(stop_rx.clone())))));
            if let Some((addr, allow)) = own.tls {
                tracing::info!(listen = %addr, allow = %allow, "mTLS listener: callers admitted");
                match crate::tls::server_config(identity, allow) {
                    Ok(config) => tls = Some((addr, config)),
                    Err(e) => {
                        tracing::error!("mTLS listener: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    }
    let config = ServerConfig {
        destination_principal: args.destination_principal,
        telemetry: Some(Arc::clone(&telemetry)),
        verify_chain: args.verify_chain.then(|| Arc::clone(&trust)),
        shadow,
        ..ServerConfig::default()
    };
    let mut server = match tls {
        Some((addr, tls)) => tokio::spawn(server::run_tls(
            addr,
            tls,
            handle,
            config,
            stopped(stop_rx.clone()),
        )),
        None => tokio::spawn(server::run(
            args.listen,
            handle,
            config,
            stopped(stop_rx.clone()),
        )),
    };
    let result = tokio::select! {
        r = &mut server => r,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            server.await
        }
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    telemetry
        .close_decision_log(crate::telemetry::DECISION_LOG_FLUSH_TIMEOUT)
        .await;
    match result {
        Ok(Ok(())) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tracing::error!("server failed: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!("server task failed: {e}");
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

#[cfg(test)]
mod own_identity_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["wardgate", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Serve(args) => args,
            _ => unreachable!(),
        }
    }

    fn check(args: &[&str]) -> Result<Option<OwnIdentity>, String> {
        own_identity_config(&serve_args(args))
    }

    #[test]
    fn identity_and_mtls_flags_are_checked_together() {
        assert!(check(&[]).unwrap().is_none());
        let tls = [
            "--listen",
            "127.0.0.1:9191",
            "--tls",
            "--spiffe-endpoint-socket",
            "unix:///run/spire/agent.sock",
            "--allow-caller",
            "spiffe://hospital.example/ns/*/sa/*",
        ];
        let own = check(&tls).unwrap().unwrap();
        assert!(matches!(
            own.source,
            crate::svid::SourceConfig::WorkloadApi(_)
        ));
        assert!(own.tls.is_some());

        let err = |args: &[&str]| check(args).err().unwrap_or_default();
        assert!(err(&["--tls", "--listen", "unix:/tmp/w.sock"]).contains("TCP"));
        assert!(err(&tls[..5]).contains("--allow-caller"));
        assert!(err(&["--allow-caller", "spiffe://td/x"]).contains("only applies with --tls"));
        assert!(err(&[
            "--listen",
            "127.0.0.1:9191",
            "--tls",
            "--allow-caller",
            "spiffe://td/x",
            "--spiffe-endpoint-socket",
            "/no/scheme.sock"
        ])
        .contains("endpoint"));
        assert!(err(&[
            "--svid-source",
            "workload-api",
            "--spiffe-endpoint-socket",
            "unix:///a.sock",
            "--svid-cert",
            "c.pem"
        ])
        .contains("--svid-source files"));
        assert!(err(&[
            "--listen",
            "127.0.0.1:9191",
            "--tls",
            "--allow-caller",
            "spiffe://td/x",
            "--svid-cert",
            "c.pem"
        ])
        .contains("--svid-key"));
        assert!(err(&[
            "--listen",
            "127.0.0.1:9191",
            "--tls",
            "--allow-caller",
            "spiffe://td/x",
            "--svid-cert",
            "c.pem",
            "--svid-key",
            "k.pem"
        ])
        .contains("--trust-bundle"));

        // Bundles alone (for forwarded-chain verification), no listener change.
        let own = check(&["--trust-bundle", "hospital.example=/run/spiffe/ca.pem"])
            .unwrap()
            .unwrap();
        assert!(own.tls.is_none());
        match own.source {
            crate::svid::SourceConfig::Files(files) => {
                assert!(files.svid.is_none());
                assert_eq!(files.bundles.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["wardgate", "serve", "--trust-bundle", "NotATd=/x"]).is_err());
        assert!(Cli::try_parse_from(["wardgate", "serve", "--trust-bundle", "td"]).is_err());
    }
}
