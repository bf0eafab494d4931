//! Envoy's Secret Discovery Service, served by the SPIFFE Workload API test double
//! ([`super::workload_api`]) on the same Unix socket, the way a SPIRE agent serves it: Envoy
//! asks for secrets by name and receives the workload's X.509 SVID and trust bundles as Envoy
//! `Secret`s, and a new response on every rotation.
//!
//! Owns the `StreamSecrets` and `FetchSecrets` behaviour, written after SPIRE's own SDS handler
//! (spiffe/spire `pkg/agent/endpoints/sdsv3/handler.go`, commit ef8527ec9101) with the SPIRE
//! agent's default names: `default` is the workload's first SVID, `ROOTCA` its own trust
//! domain's bundle, `ALL` every bundle (its own and the federated ones), a SPIFFE ID or a trust
//! domain ID names that SVID or bundle; bundles are delivered as Envoy's SPIFFE certificate
//! validator (SPIRE does so for Envoy 1.18 and later). Every response carries a new version and
//! nonce; a request answering the last nonce (an ACK or NACK) gets a response only when the
//! requested names change; an unknown name ends the stream with INVALID_ARGUMENT, as SPIRE
//! answers a workload asking for an identity it was not issued. It must never serve anything
//! but the state the double holds. `DeltaSecrets` is UNIMPLEMENTED, as in SPIRE.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, DataSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, spiffe_cert_validator_config::TrustDomain, CertificateValidationContext, Secret,
    SpiffeCertValidatorConfig, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
pub use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use envoy_types::pb::google::protobuf::Any;
use tonic::{Request, Response, Status, Streaming};

use super::workload_api::WorkloadState;

/// The SPIRE agent's default secret names (agent.conf `sds` block).
pub const DEFAULT_SVID_NAME: &str = "default";
/// See [`DEFAULT_SVID_NAME`].
pub const DEFAULT_BUNDLE_NAME: &str = "ROOTCA";
/// See [`DEFAULT_SVID_NAME`].
pub const DEFAULT_ALL_BUNDLES_NAME: &str = "ALL";

/// One request Envoy sent, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsRequest {
    /// The secret names asked for.
    pub resource_names: Vec<String>,
    /// The version the request acknowledges ("" on the first).
    pub version_info: String,
    /// Envoy's reported error applying the last response (a NACK), if any.
    pub error: Option<String>,
}

/// Every SDS request so far.
pub type SdsLog = Arc<Mutex<Vec<SdsRequest>>>;

/// The service; built by the Workload API double around its state.
pub struct Sds {
    state: tokio::sync::watch::Receiver<WorkloadState>,
    stopping: tokio::sync::watch::Receiver<bool>,
    log: SdsLog,
}

impl Sds {
    /// Serve `state` until `stopping` turns true; record requests in `log`.
    pub fn new(
        state: tokio::sync::watch::Receiver<WorkloadState>,
        stopping: tokio::sync::watch::Receiver<bool>,
        log: SdsLog,
    ) -> Sds {
        Sds {
            state,
            stopping,
            log,
        }
    }

    fn record(&self, request: &DiscoveryRequest) {
        if let Ok(mut log) = self.log.lock() {
            log.push(SdsRequest {
                resource_names: request.resource_names.clone(),
                version_info: request.version_info.clone(),
                error: request.error_detail.as_ref().map(|e| e.message.clone()),
            });
        }
    }
}

/// The secrets `names` asks for (all of them when `names` is empty), or the error SPIRE gives.
fn build(state: &WorkloadState, names: &[String]) -> Result<Vec<Any>, Status> {
    let mut wanted: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let all = wanted.is_empty();
    let mut take = |name: &str| -> bool {
        let found = wanted.contains(&name);
        wanted.retain(|n| *n != name);
        all || found
    };
    let first = state
        .svids
        .first()
        .ok_or_else(|| Status::permission_denied("no identity issued"))?;
    let own_domain = trust_domain_id(&first.spiffe_id);
    let mut bundles: BTreeMap<String, Vec<u8>> = state
        .federated_bundles
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    bundles.insert(own_domain.clone(), first.bundle.clone());

    let mut resources = Vec::new();
    if take(&own_domain) {
        resources.push(validation_secret(&own_domain, &bundles, &[&own_domain])?);
    } else if take(DEFAULT_BUNDLE_NAME) {
        resources.push(validation_secret(
            DEFAULT_BUNDLE_NAME,
            &bundles,
            &[&own_domain],
        )?);
    } else if take(DEFAULT_ALL_BUNDLES_NAME) {
        let every: Vec<&str> = bundles.keys().map(String::as_str).collect();
        resources.push(validation_secret(
            DEFAULT_ALL_BUNDLES_NAME,
            &bundles,
            &every,
        )?);
    }
    for domain in state.federated_bundles.keys() {
        if take(domain) {
            resources.push(validation_secret(domain, &bundles, &[domain])?);
        }
    }
    for (i, svid) in state.svids.iter().enumerate() {
        if take(&svid.spiffe_id) {
            resources.push(tls_secret(&svid.spiffe_id, svid)?);
        } else if i == 0 && take(DEFAULT_SVID_NAME) {
            resources.push(tls_secret(DEFAULT_SVID_NAME, svid)?);
        }
    }
    if !wanted.is_empty() {
        return Err(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities {wanted:?}"
        )));
    }
    Ok(resources)
}

fn trust_domain_id(spiffe_id: &str) -> String {
    let domain = spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    format!("spiffe://{domain}")
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn any<M: prost::Name>(message: &M) -> Result<Any, Status> {
    Ok(Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    })
}

/// A validation context named `name`: Envoy's SPIFFE certificate validator with the bundles of
/// `domains` (trust domain IDs), each PEM-encoded.
fn validation_secret(
    name: &str,
    bundles: &BTreeMap<String, Vec<u8>>,
    domains: &[&str],
) -> Result<Any, Status> {
    let mut trust_domains = Vec::new();
    for domain in domains {
        let der = bundles.get(*domain).ok_or_else(|| {
            Status::not_found(format!("no bundle found for trust domain: {domain:?}"))
        })?;
        trust_domains.push(TrustDomain {
            name: domain.trim_start_matches("spiffe://").to_owned(),
            trust_bundle: inline(pem_certificates(der)?.into_bytes()),
            ..Default::default()
        });
    }
    trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
    let validator = SpiffeCertValidatorConfig {
        trust_domains,
        ..Default::default()
    };
    any(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: "envoy.tls.cert_validator.spiffe".to_owned(),
                    typed_config: Some(any(&validator)?),
                }),
                ..Default::default()
            },
        )),
    })
}

/// A TLS certificate named `name`: the SVID's chain and PKCS#8 key, PEM.
fn tls_secret(name: &str, svid: &super::workload_api::pb::X509svid) -> Result<Any, Status> {
    any(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(pem_certificates(&svid.x509_svid)?.into_bytes()),
            private_key: inline(pem("PRIVATE KEY", &svid.x509_svid_key).into_bytes()),
            ..Default::default()
        })),
    })
}

/// PEM blocks of the concatenated DER certificates in `der`.
fn pem_certificates(der: &[u8]) -> Result<String, Status> {
    let mut out = String::new();
    let mut rest = der;
    while !rest.is_empty() {
        let len = der_length(rest).ok_or_else(|| Status::internal("malformed DER certificate"))?;
        let (cert, tail) = rest.split_at(len);
        out.push_str(&pem("CERTIFICATE", cert));
        rest = tail;
    }
    Ok(out)
}

/// Total length (header included) of the DER element at the start of `der`.
fn der_length(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let bytes = der.get(2..2 + n)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let total = header + len;
    (total <= der.len()).then_some(total)
}

/// One PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn response(
    type_url: &str,
    version: u64,
    state: &WorkloadState,
    names: &[String],
) -> Result<DiscoveryResponse, Status> {
    Ok(DiscoveryResponse {
        version_info: version.to_string(),
        resources: build(state, names)?,
        type_url: type_url.to_owned(),
        nonce: format!("{:08x}", fastrand::u32(..)),
        ..Default::default()
    })
}

type ResponseStream = tokio_stream::wrappers::ReceiverStream<Result<DiscoveryResponse, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream =
        tokio_stream::wrappers::ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ResponseStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("Method is not implemented"))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        self.record(&request);
        let state = self.state.borrow().clone();
        let mut response = response(&request.type_url, 0, &state, &request.resource_names)?;
        response.version_info.clear();
        response.nonce.clear();
        Ok(Response::new(response))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let mut state = self.state.clone();
        let mut stopping = self.stopping.clone();
        let log = Arc::clone(&self.log);
        let recorder = Sds {
            state: self.state.clone(),
            stopping: self.stopping.clone(),
            log,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // The state in force counts as the first update, version 1.
            let mut version: u64 = 1;
            state.borrow_and_update();
            let mut last_nonce = String::new();
            let mut last_names: Option<Vec<String>> = None;
            let mut last_type_url = String::new();
            loop {
                let send = tokio::select! {
                    next = requests.message() => {
                        let request = match next {
                            Ok(Some(request)) => request,
                            Ok(None) | Err(_) => return,
                        };
                        recorder.record(&request);
                        // A reply to an older response than the last is stale: ignore it.
                        if !last_nonce.is_empty() && request.response_nonce != last_nonce {
                            continue;
                        }
                        let changed = last_names.as_ref().is_none_or(|names| {
                            let mut a = names.clone();
                            let mut b = request.resource_names.clone();
                            a.sort();
                            b.sort();
                            a != b
                        });
                        last_names = Some(request.resource_names.clone());
                        last_type_url = request.type_url.clone();
                        changed
                    }
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        version += 1;
                        last_names.is_some()
                    }
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("agent shutting down"))).await;
                        return;
                    }
                };
                if !send {
                    continue;
                }
                let names = last_names.clone().unwrap_or_default();
                let current = state.borrow_and_update().clone();
                match response(&last_type_url, version, &current, &names) {
                    Ok(response) => {
                        last_nonce = response.nonce.clone();
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
