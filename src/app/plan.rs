//! What `serve` will run, checked before anything starts: [`ServePlan`], and [`PlanError`] for
//! every way the flags can fail to make one.
//!
//! A plan is plain data: the bundle source with its reload settings (trusted keys already read),
//! the shadow source, wardgate's own identity source with the mTLS listener (and who may use gRPC
//! reflection on it), the mode (enforce or audit), the admin, decision-log and span-export
//! settings. Building one reads only the files a flag names (trusted keys, the log key) and
//! the Workload API endpoint variable; it must never bind, spawn or start anything, so a plan
//! that fails leaves nothing behind. `cli` turns flags into a plan; [`super::serve`] runs it.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::admin::AdminAddr;
use crate::extauthz::Mode;
use crate::listen::ListenAddr;
use crate::reload::ReloadConfig;
use crate::svid::SourceConfig;
use crate::telemetry::{DecisionLogTarget, Redaction};
use crate::tls::AllowList;
use crate::tracing_otel::{EndpointError, OtlpConfig};

/// The example bundle compiled into the binary; `serve` enforces it when no `--bundle` is given.
pub const EMBEDDED_BUNDLE: &str = include_str!("../../deploy/bundles/hospital.yaml");

/// Name the embedded bundle is reported under (logs, metrics, `/v1/bundle`).
pub const EMBEDDED_BUNDLE_NAME: &str = "<embedded>/hospital.yaml";

/// Everything `serve` needs, checked.
#[derive(Debug)]
pub struct ServePlan {
    /// Where the gRPC server listens in plain text; with [`OwnIdentity::mtls`] the mTLS listener
    /// takes its place on the same TCP address.
    pub listen: ListenAddr,
    /// The bundle enforced.
    pub bundle: BundlePlan,
    /// A candidate bundle evaluated beside the enforced one, never enforced.
    pub shadow: Option<ReloadConfig>,
    /// wardgate's own SVID and trust bundles, when configured.
    pub identity: Option<OwnIdentity>,
    /// Destination SPIFFE ID used when Envoy sends none (already checked to be one).
    pub destination_principal: Option<String>,
    /// The admin HTTP listener, or off.
    pub admin: AdminAddr,
    /// The decision log.
    pub decision_log: DecisionLogPlan,
    /// Enforce the decisions, or only audit them (`--audit`: every answer is allow).
    pub mode: Mode,
    /// OpenTelemetry span export (`--otlp-endpoint`), or off.
    pub tracing: Option<OtlpConfig>,
}

impl ServePlan {
    /// The smallest plan: the embedded bundle on `listen`, no shadow, no identity, no admin
    /// listener, no decision log. Fields are public to change from there.
    pub fn new(listen: ListenAddr) -> ServePlan {
        ServePlan {
            listen,
            bundle: BundlePlan::Embedded,
            shadow: None,
            identity: None,
            destination_principal: None,
            admin: AdminAddr::Off,
            decision_log: DecisionLogPlan {
                target: DecisionLogTarget::Off,
                queue: 8192,
                sample_allows: 1.0,
                redaction: Redaction::default(),
            },
            mode: Mode::Enforce,
            tracing: None,
        }
    }
}

/// Which bundle is enforced.
#[derive(Debug)]
pub enum BundlePlan {
    /// [`EMBEDDED_BUNDLE`], compiled once and never reloaded.
    Embedded,
    /// A file, directory or URL, followed by a reloader.
    Source(ReloadConfig),
}

/// wardgate's own identity: where its SVID and trust bundles come from, and what uses them.
#[derive(Debug)]
pub struct OwnIdentity {
    /// The Workload API or PEM files.
    pub source: SourceConfig,
    /// Serve gRPC over mutual TLS instead of plain text.
    pub mtls: Option<MtlsListener>,
    /// Verify each forwarded peer certificate against its own trust domain's bundle.
    pub verify_chain: bool,
}

/// The mTLS listener: where, and which callers it admits.
#[derive(Debug)]
pub struct MtlsListener {
    /// TCP address (the `--listen` address).
    pub addr: SocketAddr,
    /// SPIFFE ID patterns of admitted callers.
    pub allow: AllowList,
    /// SPIFFE IDs (exact, each admitted by `allow`) that may use gRPC reflection on this
    /// listener; empty: reflection is off here.
    pub reflection_allow: Vec<String>,
}

/// The decision log's settings.
#[derive(Debug, Clone)]
pub struct DecisionLogPlan {
    /// `stdout`, `off` or a file.
    pub target: DecisionLogTarget,
    /// Queue capacity; entries beyond it are dropped and counted.
    pub queue: usize,
    /// Fraction of allow decisions logged (denials always are).
    pub sample_allows: f64,
    /// How paths are written and the request-id hash key (`--decision-log-paths`,
    /// `--decision-log-key`, already read).
    pub redaction: Redaction,
}

/// Why the `serve` flags do not make a plan. Each message names the flag to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// `--destination-principal` is not a SPIFFE ID.
    #[error("--destination-principal `{value}` is not a valid SPIFFE ID: {source}")]
    DestinationPrincipal {
        /// The value given.
        value: String,
        /// Why it is not one.
        source: crate::identity::IdError,
    },
    /// A `--trusted-key` file cannot be read.
    #[error("--trusted-key {}: {source}", path.display())]
    TrustedKeyUnreadable {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// A `--trusted-key` file is not a minisign public key.
    #[error("--trusted-key {}: {why}", path.display())]
    TrustedKeyInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `--tls` with a Unix socket.
    #[error("--tls needs a TCP --listen address (host:port), not {listen}")]
    TlsNeedsTcp {
        /// The `--listen` value.
        listen: ListenAddr,
    },
    /// `--tls` admitting nobody.
    #[error("--tls needs at least one --allow-caller PATTERN: with none, every caller is refused")]
    TlsWithoutAllowCaller,
    /// `--allow-caller` without `--tls`.
    #[error("--allow-caller only applies with --tls")]
    AllowCallerWithoutTls,
    /// An `--allow-caller` pattern that does not parse.
    #[error("--allow-caller: {0}")]
    AllowCaller(String),
    /// File flags with `--svid-source workload-api`.
    #[error(
        "--svid-cert, --svid-key and --trust-bundle are for --svid-source files; \
         with the Workload API the SVID and bundles come from the agent"
    )]
    FileFlagsWithWorkloadApi,
    /// The Workload API without an endpoint.
    #[error("--svid-source workload-api needs --spiffe-endpoint-socket or ${env}")]
    NoEndpoint {
        /// The environment variable consulted.
        env: &'static str,
    },
    /// An endpoint that is not `unix://` or `tcp://`.
    #[error("--spiffe-endpoint-socket: {0}")]
    Endpoint(crate::svid::SvidError),
    /// `--svid-cert` without `--svid-key` or the reverse.
    #[error("--svid-source files needs both --svid-cert and --svid-key")]
    CertWithoutKey,
    /// `--tls` with file sources but no bundle to verify callers against.
    #[error(
        "--tls with --svid-source files needs at least one --trust-bundle TD=PEMFILE \
         to verify callers against"
    )]
    TlsWithoutTrustBundle,
    /// A flag that only makes sense when decisions are enforced, given with `--audit`.
    #[error("{flag} cannot be combined with --audit: {why}")]
    NotWithAudit {
        /// The flag.
        flag: &'static str,
        /// Why it only makes sense when enforcing.
        why: &'static str,
    },
    /// `--reflection-allow` without `--tls`.
    #[error(
        "--reflection-allow only applies with --tls: on a Unix socket or plain TCP listener \
         gRPC reflection is always served"
    )]
    ReflectionAllowWithoutTls,
    /// A `--reflection-allow` value that is not a SPIFFE ID.
    #[error("--reflection-allow `{value}` is not a valid SPIFFE ID: {source}")]
    ReflectionAllow {
        /// The value given.
        value: String,
        /// Why it is not one.
        source: crate::identity::IdError,
    },
    /// A `--reflection-allow` ID that no `--allow-caller` pattern admits to the listener.
    #[error(
        "--reflection-allow {id}: no --allow-caller pattern admits this caller, so it could \
         never reach reflection"
    )]
    ReflectionAllowNotAdmitted {
        /// The SPIFFE ID.
        id: String,
    },
    /// A `--decision-log-key` file that cannot be used.
    #[error("--decision-log-key {}: {source}", path.display())]
    DecisionLogKey {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        source: crate::telemetry::KeyError,
    },
    /// `--verify-chain` with no trust bundles to verify against.
    #[error(
        "--verify-chain needs trust bundles: give --trust-bundle TD=PEMFILE or a Workload API source"
    )]
    VerifyChainWithoutBundles,
    /// `--otlp-endpoint` is not `http://host:port`.
    #[error("--otlp-endpoint `{value}`: {why}")]
    OtlpEndpoint {
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: EndpointError,
    },
}
