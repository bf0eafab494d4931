//! The SPIFFE Workload API backend: wardgate's SVID and trust bundles from the local agent
//! (SPIRE or any conforming implementation) through the `spiffe` crate's `X509Source`.
//!
//! This module owns building the `X509Source` (endpoint, reconnect backoff), following its
//! updates (every `FetchX509SVID` response is complete, so each update replaces the SVID and
//! the whole bundle set, federated bundles included), turning the crate's types into an
//! [`Svid`] and [`TrustBundles`], and reporting the connection state. Reconnecting with
//! exponential backoff when the agent goes away is the `X509Source`'s; while it is away the
//! last SVID and bundles stay in force (they are valid until they expire). When the agent
//! withdraws the material (PermissionDenied), the SVID and bundles are withdrawn too, as the
//! specification requires.
//!
//! It must never fetch anything but from the configured endpoint, never log key material, and
//! never put an SVID in force that fails [`Svid::new`]'s checks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::x509_source::{MetricsErrorKind, MetricsRecorder, X509SourceError};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Source};

use super::{BoxFuture, Identity, IdentitySource, Svid, SvidError};
use crate::trust::TrustBundles;

/// The environment variable naming the Workload API endpoint (SPIFFE Workload Endpoint
/// specification).
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// How to reach the Workload API.
#[derive(Debug, Clone)]
pub struct Config {
    /// Endpoint URI: `unix:///path/to/agent.sock` (also `unix:/path`) or `tcp://IP:PORT`.
    pub endpoint: String,
    /// First delay before reconnecting after the agent went away; doubled (with jitter) per
    /// failed attempt up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between reconnection attempts.
    pub max_backoff: Duration,
}

impl Config {
    /// Defaults for `endpoint`: backoff from 200 ms to 10 s.
    pub fn new(endpoint: impl Into<String>) -> Config {
        Config {
            endpoint: endpoint.into(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// Check the endpoint's syntax (`unix:` or `tcp:` URI).
    pub fn validate(&self) -> Result<(), SvidError> {
        spiffe::transport::Endpoint::parse(&self.endpoint)
            .map(|_| ())
            .map_err(|e| {
                SvidError::Config(format!(
                    "Workload API endpoint `{}`: {e} (expected unix:///path/to/agent.sock or tcp://IP:PORT)",
                    self.endpoint
                ))
            })
    }
}

/// Follows the Workload API; see the module documentation.
pub struct WorkloadApiSource {
    config: Config,
    identity: Arc<Identity>,
}

impl fmt::Debug for WorkloadApiSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApiSource")
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl WorkloadApiSource {
    /// A backend for `config` keeping `identity` current (nothing connects until `run`).
    pub fn new(config: Config, identity: Arc<Identity>) -> Result<Self, SvidError> {
        config.validate()?;
        Ok(WorkloadApiSource { config, identity })
    }

    /// Connect (retrying with backoff until the first complete response), then follow every
    /// update until `shutdown`.
    pub async fn follow(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let connection = Arc::new(ConnectionState {
            identity: Arc::clone(&self.identity),
        });
        tracing::info!(endpoint = %self.config.endpoint, "connecting to the SPIFFE Workload API");
        let source = loop {
            let built = tokio::select! {
                () = &mut shutdown => return,
                built = self.build(&connection) => built,
            };
            match built {
                Ok(source) => break source,
                // Only configuration-type errors end an initial sync (an unparseable endpoint is
                // refused in `new`; INVALID_ARGUMENT or UNIMPLEMENTED from the agent). They will
                // not fix themselves quickly; keep trying, slowly, and say so.
                Err(error) => {
                    tracing::error!(endpoint = %self.config.endpoint, %error,
                        "Workload API refused the initial fetch; retrying in {:?}", self.config.max_backoff);
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(self.config.max_backoff) => {}
                    }
                }
            }
        };
        let mut updates = source.updated();
        self.apply(&source);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                changed = updates.changed() => match changed {
                    Ok(_) => self.apply(&source),
                    Err(error) => {
                        // Closed: the source stopped for good (it does not on its own while
                        // the process runs). Keep what is in force; nothing more will come.
                        tracing::error!(%error, "Workload API source closed; the SVID in force is no longer renewed");
                        (&mut shutdown).await;
                        break;
                    }
                },
            }
        }
        if let Err(error) = source.shutdown_configured().await {
            tracing::warn!(%error, "Workload API source did not shut down cleanly");
        }
    }

    async fn build(
        &self,
        connection: &Arc<ConnectionState>,
    ) -> Result<X509Source, X509SourceError> {
        let endpoint: Arc<str> = Arc::from(self.config.endpoint.as_str());
        let observer = Arc::clone(connection);
        // The default factory with one addition: the connection state for metrics.
        let factory = Arc::new(move || {
            let endpoint = Arc::clone(&endpoint);
            let observer = Arc::clone(&observer);
            Box::pin(async move {
                let client = WorkloadApiClient::connect_to(&*endpoint).await;
                observer.set(client.is_ok());
                client
            })
                as Pin<Box<dyn Future<Output = Result<WorkloadApiClient, WorkloadApiError>> + Send>>
        });
        X509Source::builder()
            .client_factory(factory)
            .reconnect_backoff(self.config.min_backoff, self.config.max_backoff)
            .metrics(Arc::clone(connection) as Arc<dyn MetricsRecorder>)
            .shutdown_timeout(Some(Duration::from_secs(5)))
            .build()
            .await
    }

    /// Take the source's current state into the identity.
    fn apply(&self, source: &X509Source) {
        let state = source.state();
        let context = match state.context() {
            Ok(context) => context,
            Err(X509SourceError::Withdrawn(reason)) => {
                tracing::error!(%reason, "the Workload API withdrew wardgate's SVIDs and bundles");
                self.identity.withdraw_svid();
                self.identity.publish_bundles(TrustBundles::new());
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "no Workload API context; keeping the identity in force");
                return;
            }
        };
        let mut bundles = TrustBundles::new();
        for (trust_domain, bundle) in context.bundle_set().iter() {
            bundles.set(
                trust_domain.as_str(),
                bundle
                    .authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect(),
            );
        }
        self.identity.publish_bundles(bundles);

        match state.svid() {
            Ok(svid) => {
                let chain = svid
                    .cert_chain()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    svid.private_key().as_bytes().to_vec(),
                ));
                match Svid::new(chain, key) {
                    Ok(svid) => {
                        self.identity.publish_svid(svid);
                    }
                    Err(error) => tracing::error!(%error,
                        spiffe_id = %svid.spiffe_id(),
                        "Workload API sent an SVID wardgate cannot use; keeping the one in force"),
                }
            }
            Err(error) => tracing::warn!(%error,
                "Workload API update without a usable SVID; keeping the one in force"),
        }
    }
}

impl IdentitySource for WorkloadApiSource {
    fn kind(&self) -> &'static str {
        "workload-api"
    }

    fn run(self: Box<Self>, shutdown: BoxFuture) -> BoxFuture {
        Box::pin(self.follow(shutdown))
    }
}

/// Connection state from the client factory and the source's metrics callbacks.
struct ConnectionState {
    identity: Arc<Identity>,
}

impl ConnectionState {
    fn set(&self, connected: bool) {
        self.identity.observer.workload_api_connected(connected);
    }
}

impl MetricsRecorder for ConnectionState {
    fn record_update(&self) {
        // A new context arrived: the stream is up.
        self.set(true);
    }

    fn record_reconnect(&self) {
        self.set(false);
    }

    fn record_error(&self, kind: MetricsErrorKind) {
        match kind {
            MetricsErrorKind::ClientCreation
            | MetricsErrorKind::StreamConnect
            | MetricsErrorKind::StreamError
            | MetricsErrorKind::StreamEnded
            | MetricsErrorKind::InitialSyncFailed => {
                tracing::debug!(kind = kind.as_str(), "Workload API connection lost");
                self.set(false);
            }
            // Rejected or unusable updates arrive over a working stream.
            _ => tracing::debug!(kind = kind.as_str(), "Workload API update not used"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_syntax_is_checked_up_front() {
        assert!(Config::new("unix:///run/spire/agent.sock")
            .validate()
            .is_ok());
        assert!(Config::new("unix:/run/spire/agent.sock").validate().is_ok());
        assert!(Config::new("tcp://127.0.0.1:8081").validate().is_ok());
        assert!(Config::new("/run/spire/agent.sock").validate().is_err());
        assert!(Config::new("http://127.0.0.1:8081").validate().is_err());
    }
}
