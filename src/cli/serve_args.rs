//! `serve`'s flags, and their check into a [`ServePlan`].
//!
//! Owns the flag definitions (names, defaults, help) and every rule about how flags combine:
//! [`ServeArgs::plan`] checks them all once, reads what they name that must be read before start
//! (trusted keys), resolves wardgate's own identity exactly once, and returns a plan or the first
//! [`PlanError`]. It must never start anything (no listener, task or runtime): that is
//! [`crate::app::serve`]'s job.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::admin::AdminAddr;
use crate::app::{BundlePlan, DecisionLogPlan, MtlsListener, OwnIdentity, PlanError, ServePlan};
use crate::extauthz::Mode;
use crate::listen::ListenAddr;
use crate::reload::{BundleSource, ReloadConfig};
use crate::svid::{files, workload_api, SourceConfig};
use crate::telemetry::{DecisionLogTarget, PathLogging, Redaction, RequestIdKey};
use crate::tracing_otel::OtlpConfig;

/// `wardgate serve` flags.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
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
    /// Log format for operational logs (standard error; coloured only on a terminal).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
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
    admin: AdminAddr,
    /// Decision log, one JSON object per line: `stdout`, `off`, or a file to append to.
    #[arg(long, value_name = "stdout|off|FILE", default_value = "stdout")]
    decision_log: DecisionLogTarget,
    /// Decision-log queue capacity; entries beyond it are dropped and counted, never waited for.
    #[arg(long, value_name = "N", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..))]
    decision_log_queue: u32,
    /// Fraction of allow decisions written to the decision log (0 to 1); denials always are.
    #[arg(long, value_name = "F", default_value_t = 1.0,
          value_parser = crate::telemetry::parse_sample_rate)]
    decision_log_sample_allows: f64,
    /// How the decision log writes request paths: `redacted` (only the segments the deciding
    /// rule or the bundle's `logging` section names; the query never), `full` (as sent: for a
    /// debugging session, the log may then identify patients) or `off`.
    #[arg(long, value_name = "redacted|full|off", default_value = "redacted")]
    decision_log_paths: PathLogging,
    /// Secret (at least 16 bytes) keying the hash that replaces request ids which are not
    /// Envoy-generated UUIDs; with it, hashes of the access log's ids join the decision log.
    /// Without it a random key is drawn per process.
    #[arg(long, value_name = "FILE")]
    decision_log_key: Option<PathBuf>,
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
    /// Audit mode: decide, count and log every check as usual, but answer Envoy allow every
    /// time; a request the bundle would deny reaches the upstream with
    /// `x-wardgate-audit: would-deny <reason>`. For rolling out a first bundle
    /// (docs/bundle-workflow.md); never for protecting anything. Refused with --shadow-bundle.
    #[arg(long)]
    audit: bool,
    /// SPIFFE ID of a caller that may use gRPC reflection on the --tls listener; repeatable,
    /// each must be admitted by an --allow-caller pattern. Without it reflection is off on the
    /// mTLS listener (it is always on for a Unix socket or plain TCP).
    #[arg(long = "reflection-allow", value_name = "SPIFFE_ID")]
    reflection_allow: Vec<String>,
    /// The compile budget of every bundle loaded (enforced and shadow, first load and reloads).
    #[command(flatten)]
    compile: crate::tooling::budget::CompileArgs,
    /// Export OpenTelemetry trace spans (one per check, joined to the caller's trace, and one
    /// per bundle reload) to this OTLP/gRPC collector, `http://host:port`. Off by default.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Spans waiting for export; beyond it spans are dropped and counted, never waited for.
    #[arg(long, value_name = "N", default_value_t = crate::tracing_otel::DEFAULT_QUEUE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    otlp_queue: u32,
    /// Threads that answer Checks (the async runtime's workers). Default: 2, or 1 on a
    /// one-CPU machine or cgroup; never one per core of a large node, where a sidecar without
    /// a CPU limit would otherwise start dozens. Raise it where one wardgate serves a busy
    /// shared gateway. Bundle compiles, admin answers and the decision-log writer have threads
    /// of their own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
}

/// Runtime workers when `--worker-threads` is not given.
const DEFAULT_WORKER_THREADS: usize = 2;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--svid-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SvidSourceKind {
    /// The SPIFFE Workload API (SPIRE agent or compatible).
    WorkloadApi,
    /// PEM files on disk (spiffe-helper, cert-manager csi-driver-spiffe, a Secret).
    Files,
}

/// A flag value such as `500ms`, `5s` or `1m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 5s or 1m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("`{s}` must not be negative"))
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

impl ServeArgs {
    /// The runtime's worker threads: `--worker-threads`, else [`DEFAULT_WORKER_THREADS`] capped
    /// at the CPUs this process may use (the standard library reads cgroup quotas and affinity).
    pub(crate) fn worker_threads(&self) -> usize {
        match self.worker_threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(DEFAULT_WORKER_THREADS),
        }
    }

    /// Check every flag and how they combine, once, into the plan [`crate::app::serve`] runs.
    pub(crate) fn plan(self) -> Result<ServePlan, PlanError> {
        let mode = self.mode()?;
        if let Some(value) = &self.destination_principal {
            crate::identity::parse_spiffe_id(value).map_err(|source| {
                PlanError::DestinationPrincipal {
                    value: value.clone(),
                    source,
                }
            })?;
        }
        let key_texts = self.trusted_key_texts()?;
        let bundle = match &self.bundle {
            None => BundlePlan::Embedded,
            Some(source) => BundlePlan::Source(self.reload_config(source, &key_texts)?),
        };
        let shadow = match &self.shadow_bundle {
            None => None,
            Some(source) => {
                let mut cfg = self.reload_config(source, &key_texts)?;
                // The shadow keeps its own last-good copy, never the enforced bundle's.
                cfg.cache_dir = cfg.cache_dir.map(|d| d.join("shadow"));
                Some(cfg)
            }
        };
        let identity = self.own_identity()?;
        let key = match &self.decision_log_key {
            None => RequestIdKey::random(),
            Some(path) => {
                RequestIdKey::from_file(path).map_err(|source| PlanError::DecisionLogKey {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let tracing = (self.otlp_endpoint.as_deref())
            .map(|e| OtlpConfig::new(e, self.otlp_queue as usize).map_err(|why| (e, why)))
            .transpose()
            .map_err(|(e, why)| PlanError::OtlpEndpoint {
                value: e.into(),
                why,
            })?;
        Ok(ServePlan {
            listen: self.listen,
            bundle,
            shadow,
            identity,
            destination_principal: self.destination_principal,
            admin: self.admin,
            decision_log: DecisionLogPlan {
                target: self.decision_log,
                queue: self.decision_log_queue as usize,
                sample_allows: self.decision_log_sample_allows,
                redaction: Redaction {
                    paths: self.decision_log_paths,
                    key: std::sync::Arc::new(key),
                },
            },
            mode,
            tracing,
        })
    }

    /// `--audit`, refused with the flags that only make sense when decisions are enforced.
    ///
    /// `--shadow-bundle` is one: a shadow bundle exists to be compared with the bundle whose
    /// answers Envoy follows, and in audit mode Envoy follows none (every answer is allow). To
    /// watch a candidate without enforcing anything, audit the candidate itself.
    fn mode(&self) -> Result<Mode, PlanError> {
        if !self.audit {
            return Ok(Mode::Enforce);
        }
        if self.shadow_bundle.is_some() {
            return Err(PlanError::NotWithAudit {
                flag: "--shadow-bundle",
                why: "a shadow bundle is compared with the answers Envoy enforces, and in audit \
                      mode nothing is enforced; run --audit with the candidate as --bundle instead",
            });
        }
        Ok(Mode::Audit)
    }

    /// Each `--trusted-key` file, read once (the enforced and the shadow bundle share them) and
    /// checked to be a key even when no `--bundle` would use it.
    fn trusted_key_texts(&self) -> Result<Vec<(PathBuf, String)>, PlanError> {
        let mut texts = Vec::new();
        for path in &self.trusted_keys {
            let text = std::fs::read_to_string(path).map_err(|source| {
                PlanError::TrustedKeyUnreadable {
                    path: path.clone(),
                    source,
                }
            })?;
            crate::reload::TrustedKeys::none()
                .add(&text)
                .map_err(|why| PlanError::TrustedKeyInvalid {
                    path: path.clone(),
                    why,
                })?;
            texts.push((path.clone(), text));
        }
        Ok(texts)
    }

    /// Reload settings for one source (the enforced bundle or the shadow bundle).
    fn reload_config(
        &self,
        source: &BundleSource,
        keys: &[(PathBuf, String)],
    ) -> Result<ReloadConfig, PlanError> {
        let mut cfg = ReloadConfig::new(source.clone());
        cfg.poll_interval = self.poll_interval.max(Duration::from_millis(50));
        cfg.allow_equal_revision = self.allow_equal_revision;
        cfg.cache_dir = self.cache_dir.clone();
        cfg.max_bytes = self.max_bundle_bytes;
        cfg.http_timeout = self.http_timeout;
        cfg.compile_limits = self.compile.limits();
        for (path, text) in keys {
            cfg.trusted_keys
                .add(text)
                .map_err(|why| PlanError::TrustedKeyInvalid {
                    path: path.clone(),
                    why,
                })?;
        }
        Ok(cfg)
    }

    /// Each `--reflection-allow` ID, checked to be a SPIFFE ID that `allow` admits.
    fn reflection_allow(&self, allow: &crate::tls::AllowList) -> Result<Vec<String>, PlanError> {
        let mut ids = Vec::with_capacity(self.reflection_allow.len());
        for value in &self.reflection_allow {
            let id = crate::identity::parse_spiffe_id(value).map_err(|source| {
                PlanError::ReflectionAllow {
                    value: value.clone(),
                    source,
                }
            })?;
            if !allow.allows(id.trust_domain_name(), id.path()) {
                return Err(PlanError::ReflectionAllowNotAdmitted { id: value.clone() });
            }
            ids.push(value.clone());
        }
        Ok(ids)
    }

    /// wardgate's own identity from the identity, mTLS and chain flags together; `None` when no
    /// identity source is configured.
    fn own_identity(&self) -> Result<Option<OwnIdentity>, PlanError> {
        let kind = match self.svid_source {
            Some(kind) => Some(kind),
            None if self.tls && self.svid_cert.is_some() => Some(SvidSourceKind::Files),
            None if self.tls => Some(SvidSourceKind::WorkloadApi),
            None if !self.trust_bundles.is_empty() || self.svid_cert.is_some() => {
                Some(SvidSourceKind::Files)
            }
            None => None,
        };
        let mtls = if self.tls {
            let ListenAddr::Tcp(addr) = self.listen else {
                return Err(PlanError::TlsNeedsTcp {
                    listen: self.listen.clone(),
                });
            };
            if self.allow_callers.is_empty() {
                return Err(PlanError::TlsWithoutAllowCaller);
            }
            let allow = crate::tls::AllowList::parse(&self.allow_callers)
                .map_err(PlanError::AllowCaller)?;
            let reflection_allow = self.reflection_allow(&allow)?;
            Some(MtlsListener {
                addr,
                allow,
                reflection_allow,
            })
        } else {
            if !self.allow_callers.is_empty() {
                return Err(PlanError::AllowCallerWithoutTls);
            }
            if !self.reflection_allow.is_empty() {
                return Err(PlanError::ReflectionAllowWithoutTls);
            }
            None
        };
        let source = match kind {
            // --trust-bundle alone starts a bundles-only file source, so no source means no
            // bundles to verify forwarded chains against.
            None if self.verify_chain => return Err(PlanError::VerifyChainWithoutBundles),
            None => return Ok(None),
            Some(SvidSourceKind::WorkloadApi) => {
                if self.svid_cert.is_some()
                    || self.svid_key.is_some()
                    || !self.trust_bundles.is_empty()
                {
                    return Err(PlanError::FileFlagsWithWorkloadApi);
                }
                let endpoint = match &self.spiffe_endpoint_socket {
                    Some(endpoint) => endpoint.clone(),
                    None => std::env::var(workload_api::ENDPOINT_ENV).map_err(|_| {
                        PlanError::NoEndpoint {
                            env: workload_api::ENDPOINT_ENV,
                        }
                    })?,
                };
                let config = workload_api::Config::new(endpoint);
                config.validate().map_err(PlanError::Endpoint)?;
                SourceConfig::WorkloadApi(config)
            }
            Some(SvidSourceKind::Files) => {
                let svid = match (&self.svid_cert, &self.svid_key) {
                    (Some(cert), Some(key)) => Some(files::SvidFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    (None, None) if !self.tls => None,
                    _ => return Err(PlanError::CertWithoutKey),
                };
                if self.tls && self.trust_bundles.is_empty() {
                    return Err(PlanError::TlsWithoutTrustBundle);
                }
                SourceConfig::Files(files::Config::new(svid, self.trust_bundles.clone()))
            }
        };
        Ok(Some(OwnIdentity {
            source,
            mtls,
            verify_chain: self.verify_chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["wardgate", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    fn plan(args: &[&str]) -> Result<ServePlan, PlanError> {
        serve_args(args).plan()
    }

    #[test]
    fn worker_threads_default_to_two_at_most_and_follow_the_flag() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(serve_args(&[]).worker_threads(), cpus.min(2));
        assert_eq!(serve_args(&["--worker-threads", "6"]).worker_threads(), 6);
        let argv = ["wardgate", "serve", "--worker-threads", "0"];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "zero workers is refused"
        );
    }

    fn identity(args: &[&str]) -> Option<OwnIdentity> {
        plan(args).expect("a plan").identity
    }

    const TLS: [&str; 7] = [
        "--listen",
        "127.0.0.1:9191",
        "--tls",
        "--spiffe-endpoint-socket",
        "unix:///run/spire/agent.sock",
        "--allow-caller",
        "spiffe://hospital.example/ns/*/sa/*",
    ];

    #[test]
    fn identity_and_mtls_flags_are_checked_together() {
        assert!(identity(&[]).is_none());
        let own = identity(&TLS).unwrap();
        assert!(matches!(own.source, SourceConfig::WorkloadApi(_)));
        let mtls = own.mtls.expect("mTLS listener");
        assert_eq!(mtls.addr.to_string(), "127.0.0.1:9191");

        let err = |args: &[&str]| plan(args).expect_err("refused");
        assert!(matches!(
            err(&["--tls", "--listen", "unix:/tmp/w.sock"]),
            PlanError::TlsNeedsTcp { .. }
        ));
        assert!(matches!(err(&TLS[..5]), PlanError::TlsWithoutAllowCaller));
        assert!(matches!(
            err(&["--allow-caller", "spiffe://td/x"]),
            PlanError::AllowCallerWithoutTls
        ));
        assert!(matches!(
            err(&[
                &TLS[..3],
                &["--allow-caller", "spiffe://td/x/**/y"],
                &TLS[3..5]
            ]
            .concat()),
            PlanError::AllowCaller(_)
        ));
        assert!(matches!(
            err(&[
                "--listen",
                "127.0.0.1:9191",
                "--tls",
                "--allow-caller",
                "spiffe://td/x",
                "--spiffe-endpoint-socket",
                "/no/scheme.sock"
            ]),
            PlanError::Endpoint(_)
        ));
        assert!(matches!(
            err(&[
                "--svid-source",
                "workload-api",
                "--spiffe-endpoint-socket",
                "unix:///a.sock",
                "--svid-cert",
                "c.pem"
            ]),
            PlanError::FileFlagsWithWorkloadApi
        ));
        let files_tls = [
            "--listen",
            "127.0.0.1:9191",
            "--tls",
            "--allow-caller",
            "spiffe://td/x",
            "--svid-cert",
            "c.pem",
        ];
        assert!(matches!(err(&files_tls), PlanError::CertWithoutKey));
        assert!(matches!(
            err(&[&files_tls[..], &["--svid-key", "k.pem"]].concat()),
            PlanError::TlsWithoutTrustBundle
        ));
        assert!(matches!(
            err(&["--verify-chain"]),
            PlanError::VerifyChainWithoutBundles
        ));

        // Bundles alone (for forwarded-chain verification), no listener change.
        let own = identity(&[
            "--trust-bundle",
            "hospital.example=/run/spiffe/ca.pem",
            "--verify-chain",
        ])
        .unwrap();
        assert!(own.mtls.is_none());
        assert!(own.verify_chain);
        match own.source {
            SourceConfig::Files(files) => {
                assert!(files.svid.is_none());
                assert_eq!(files.bundles.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["wardgate", "serve", "--trust-bundle", "NotATd=/x"]).is_err());
        assert!(Cli::try_parse_from(["wardgate", "serve", "--trust-bundle", "td"]).is_err());
    }

    #[test]
    fn every_refusal_names_the_flag_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("not-a-key.pub");
        std::fs::write(&not_a_key, "hello").unwrap();
        let missing = dir.path().join("missing.pub");
        for (args, flag) in [
            (
                vec!["--destination-principal", "http://x"],
                "--destination-principal",
            ),
            (
                vec!["--trusted-key", missing.to_str().unwrap()],
                "--trusted-key",
            ),
            (
                vec!["--trusted-key", not_a_key.to_str().unwrap()],
                "--trusted-key",
            ),
            (vec!["--tls", "--listen", "unix:/tmp/w.sock"], "--tls"),
            (TLS[..5].to_vec(), "--tls needs at least one --allow-caller"),
            (vec!["--allow-caller", "spiffe://td/x"], "--allow-caller"),
            (vec!["--verify-chain"], "--verify-chain"),
            (
                vec!["--audit", "--shadow-bundle", "/etc/wardgate/candidate.yaml"],
                "--shadow-bundle cannot be combined with --audit",
            ),
            (
                vec![
                    "--reflection-allow",
                    "spiffe://hospital.example/ns/ops/sa/debug",
                ],
                "--reflection-allow only applies with --tls",
            ),
            (
                [
                    &TLS[..],
                    &["--reflection-allow", "spiffe://hospital.example/x/"],
                ]
                .concat(),
                "--reflection-allow `spiffe://hospital.example/x/`",
            ),
            (
                [
                    &TLS[..],
                    &[
                        "--reflection-allow",
                        "spiffe://partner-lab.example/ns/a/sa/b",
                    ],
                ]
                .concat(),
                "--reflection-allow spiffe://partner-lab.example/ns/a/sa/b: no --allow-caller",
            ),
        ] {
            let err = plan(&args).expect_err("refused");
            assert!(err.to_string().starts_with(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn audit_mode_and_reflection_callers_reach_the_plan() {
        assert_eq!(plan(&[]).unwrap().mode, Mode::Enforce);
        // Audit mode alone, and with flags that still make sense without enforcing.
        let audited = plan(&[
            "--audit",
            "--verify-chain",
            "--trust-bundle",
            "td.example=/ca.pem",
        ]);
        assert_eq!(audited.unwrap().mode, Mode::Audit);
        // The shadow bundle is refused with a typed error naming it.
        let err = plan(&["--audit", "--shadow-bundle", "/c.yaml"]).expect_err("refused");
        assert!(
            matches!(
                err,
                PlanError::NotWithAudit {
                    flag: "--shadow-bundle",
                    ..
                }
            ),
            "{err}"
        );

        let id = "spiffe://hospital.example/ns/ops/sa/debug";
        let own = identity(&[&TLS[..], &["--reflection-allow", id]].concat()).unwrap();
        assert_eq!(own.mtls.unwrap().reflection_allow, vec![id.to_owned()]);
        let own = identity(&TLS).unwrap();
        assert!(
            own.mtls.unwrap().reflection_allow.is_empty(),
            "off by default"
        );
    }

    #[test]
    fn the_shadow_bundle_shares_the_flags_but_keeps_its_own_cache() {
        let plan = plan(&[
            "--bundle",
            "/etc/wardgate/bundle.yaml",
            "--shadow-bundle",
            "/etc/wardgate/candidate.yaml",
            "--cache-dir",
            "/var/cache/wardgate",
            "--poll-interval",
            "1ms",
        ])
        .unwrap();
        let BundlePlan::Source(enforced) = plan.bundle else {
            panic!("a bundle source");
        };
        let shadow = plan.shadow.expect("a shadow source");
        assert_eq!(
            enforced.cache_dir.as_deref(),
            Some(std::path::Path::new("/var/cache/wardgate"))
        );
        assert_eq!(
            shadow.cache_dir.as_deref(),
            Some(std::path::Path::new("/var/cache/wardgate/shadow"))
        );
        assert_eq!(enforced.poll_interval, Duration::from_millis(50), "floored");
        assert_eq!(shadow.poll_interval, enforced.poll_interval);
    }

    #[test]
    fn the_otlp_endpoint_is_checked_into_the_plan() {
        assert!(plan(&[]).unwrap().tracing.is_none(), "off by default");
        let on = plan(&[
            "--otlp-endpoint",
            "http://127.0.0.1:4317/",
            "--otlp-queue",
            "64",
        ]);
        let on = on.unwrap().tracing.expect("tracing on");
        assert_eq!(
            (on.endpoint.as_str(), on.queue),
            ("http://127.0.0.1:4317", 64)
        );
        let err = plan(&["--otlp-endpoint", "https://collector:4317"]).unwrap_err();
        assert!(matches!(err, PlanError::OtlpEndpoint { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("--otlp-endpoint `https://collector:4317`: only http:// is supported"),
            "{err}"
        );
    }
}
