//! Shared harness for integration tests that run wardgate behind a real Envoy.
//!
//! Owns the pieces every such test needs: a test PKI ([`pki`]), the `wardgate` and Envoy child
//! processes ([`process`]), an echoing upstream app ([`upstream`]), an mTLS client that sends raw
//! paths ([`client`]), gRPC clients over wardgate's socket ([`grpc`]), a Prometheus text parser
//! ([`metrics`]), the rendered Kubernetes manifests ([`kube`]), a SPIFFE Workload API test double
//! ([`workload_api`]), callers of and
//! fixtures for wardgate's mTLS listener ([`mtls`]), and [`Sidecar`], which
//! wires them together the way `deploy/envoy/envoy-sidecar.yaml` describes. It must never reach
//! anything but loopback and its own temporary directory, and never leave a child process
//! running once the value that started it is dropped.
//!
//! Each test binary uses a different subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod client;
pub mod grpc;
pub mod kube;
pub mod metrics;
pub mod mtls;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod sds;
pub mod upstream;
pub mod workload_api;

use std::path::{Path, PathBuf};

use client::{MtlsClient, Protocol};
use pki::{Pki, Svid};
use process::{Envoy, EnvoySettings, Wardgate};
use upstream::EchoUpstream;

/// Errors in test support code: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The example bundle shipped in `deploy/bundles/`.
pub fn shipped_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml")
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Bundle for `wardgate serve --bundle`.
    pub bundle: PathBuf,
    /// Short name (see [`pki::WORKLOADS`]) of the workload Envoy fronts; its SVID is Envoy's
    /// server certificate, so its SPIFFE ID is the destination principal.
    pub destination: String,
    /// Extra `wardgate serve` arguments.
    pub wardgate_args: Vec<String>,
}

impl SidecarOptions {
    /// The shipped bundle, Envoy in front of `destination`.
    pub fn shipped(destination: &str) -> SidecarOptions {
        SidecarOptions {
            bundle: shipped_bundle(),
            destination: destination.to_owned(),
            wardgate_args: Vec::new(),
        }
    }
}

/// One workload's inbound path: caller → Envoy (mTLS, ext_authz) → echo upstream, with
/// wardgate deciding. Fields drop in order: Envoy, then wardgate, then the rest.
#[derive(Debug)]
pub struct Sidecar {
    /// The Envoy in front of the workload.
    pub envoy: Envoy,
    /// The authorizer.
    pub wardgate: Wardgate,
    /// The workload itself.
    pub upstream: EchoUpstream,
    /// Every certificate.
    pub pki: Pki,
    /// The destination workload's SVID (Envoy's server certificate).
    pub destination: Svid,
    /// Everything on disk: PKI, sockets, configs, logs. Removed last.
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// Generate the PKI, start the upstream, wardgate and Envoy, and wait until all are ready.
    pub async fn start(envoy_binary: &Path, options: &SidecarOptions) -> Result<Sidecar, BoxError> {
        let dir = tempfile::Builder::new().prefix("wardgate-e2e-").tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let destination = pki.svid(&options.destination)?.clone();
        let upstream = EchoUpstream::start().await?;

        let socket = dir.path().join("wardgate.sock");
        let args: Vec<&str> = options.wardgate_args.iter().map(String::as_str).collect();
        let wardgate = Wardgate::start(&options.bundle, &socket, dir.path(), &args).await?;

        let settings = EnvoySettings {
            svid_cert: destination.cert_path.clone(),
            svid_key: destination.key_path.clone(),
            trust_bundle_dir: pki.trust_bundle_dir.clone(),
            wardgate_socket: socket,
            app: upstream.addr,
        };
        let envoy = Envoy::start(envoy_binary, &settings, dir.path()).await?;
        Ok(Sidecar {
            envoy,
            wardgate,
            upstream,
            pki,
            destination,
            dir,
        })
    }

    /// A client presenting the SVID named `identity` (`None`: no certificate), trusting the
    /// trusted trust domains' CAs and verifying Envoy by the destination's DNS name.
    pub fn client(
        &self,
        identity: Option<&str>,
        protocol: Protocol,
    ) -> Result<MtlsClient, BoxError> {
        let svid = identity.map(|name| self.pki.svid(name)).transpose()?;
        MtlsClient::new(
            self.envoy.listen,
            &self.destination.dns_name,
            &self.pki.trusted_roots(),
            svid,
            protocol,
        )
    }

    /// The tails of both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            self.wardgate.child.log_tail(3000),
            self.envoy.child.log_tail(3000)
        )
    }
}
