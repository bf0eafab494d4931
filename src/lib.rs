//! wardgate: an Envoy external-authorization sidecar that enforces SPIFFE identity-based
//! segmentation at request time.
//!
//! Envoy terminates mTLS with SPIFFE X.509 SVIDs and asks wardgate, over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), whether the caller may make this call.
//! wardgate answers from a compiled rule bundle ([`policy::Policy`]) that places workloads in
//! segments (zones) and says which segment may reach which, with which methods and paths.
//!
//! # Design overview
//!
//! * A bundle is parsed, validated and compiled once into an immutable [`policy::Policy`].
//!   Compilation builds indexes keyed by source and destination, so the per-request check
//!   touches only the rules that can apply to that pair of identities.
//! * [`policy::Policy::decide`] is pure and synchronous. The gRPC server, every CLI verb and the
//!   benches call the same function, so what `wardgate check` prints is what the server does.
//! * Everything fails closed: no policy, a malformed request, an unparseable identity or an
//!   ambiguous path is a denial with a named reason, never an error left to Envoy.
//!
//! # Layout
//!
//! * [`policy`]: bundle model, validation, compilation and `decide`. Pure: no async, no I/O.
//! * [`normalize`]: raw `:path` to the one unambiguous form rules are matched against.
//! * [`identity`]: SPIFFE ID syntax and the facts read from a forwarded peer certificate.
//! * [`reload`]: bundle sources (file, directory, HTTP), signatures, hot swap, last known good.
//! * [`trust`]: per-trust-domain CA bundles and verification of forwarded leaf certificates.
//! * [`svid`]: wardgate's own identity: its X.509 SVID and the trust bundles, from the SPIFFE
//!   Workload API (`spiffe` crate's `X509Source`) or from PEM files (spiffe-helper style),
//!   followed through rotation.
//! * [`tls`]: the mTLS listener's rustls configuration (current SVID on every handshake, callers
//!   verified against their trust domain's bundle and an allow-list of SPIFFE ID patterns) and
//!   its accept loop.
//! * [`shadow`]: a candidate bundle evaluated beside the enforced one; disagreements counted.
//! * [`extauthz`]: the Envoy adapter: `CheckRequest` to [`policy::Request`], decide, shadow,
//!   record, and [`policy::Decision`] to `CheckResponse`.
//! * [`grpc`]: the tonic server around the adapter: gRPC health following the policy, drain.
//! * [`listen`]: listen addresses and binding (Unix-socket rules), shared by gRPC and admin.
//! * [`decision_log`]: the JSON decision-log record shared by the writer and `replay`.
//! * [`telemetry`]: Prometheus metrics and the decision-log writer (bounded queue, own thread).
//! * [`tracing_otel`]: OpenTelemetry spans per check (joined to the caller's trace) and per
//!   bundle reload, exported over OTLP behind a bounded queue.
//! * [`admin`]: the admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/v1/bundle`,
//!   `/v1/rules`.
//! * `tooling`: the platform-team verbs `test`, `analyze`, `diff`, `replay` and `learn`: policy
//!   unit tests, exact who-can-reach / segment-matrix / findings analysis of the compiled rules,
//!   semantic bundle diffs, decision-log replay against a candidate bundle, and a bundle proposed
//!   from decision logs.
//! * [`app`]: `serve` wired: the checked [`app::ServePlan`] and [`app::serve`], which starts
//!   every task in order and drains them on shutdown.
//! * `fuzzing`: hidden entry points for the fuzz targets in `fuzz/` (see `fuzz/README.md`).
//! * [`cli`]: the `wardgate` command line: parse, dispatch, print, one table of exit codes.
#![forbid(unsafe_code)]
#![deny(
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::dbg_macro
)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod decision_log;
pub mod extauthz;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod identity;
pub mod listen;
pub mod policy;
pub mod reload;
pub mod shadow;
pub mod svid;
pub mod telemetry;
pub mod tls;
pub(crate) mod tooling;
pub mod tracing_otel;
pub mod trust;
pub mod watch;
