//! gRPC clients over wardgate's Unix socket: the health service and Authorization itself.
//!
//! Owns connecting tonic channels to a Unix socket. It must never talk to anything but the
//! socket path it is given.

use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::BoxError;

/// A channel to the gRPC server on the Unix socket at `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, BoxError> {
    let path = socket.to_owned();
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::try_from("http://wardgate.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// Ask `grpc.health.v1.Health/Check` for `service` (`""` is the whole server).
pub async fn health(socket: &Path, service: &str) -> Result<ServingStatus, BoxError> {
    let mut client = HealthClient::new(connect(socket).await?);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.get_ref().status).unwrap_or(ServingStatus::Unknown))
}

/// An Authorization client on the Unix socket at `socket` (to send Checks without Envoy).
pub async fn authorization(socket: &Path) -> Result<AuthorizationClient<Channel>, BoxError> {
    Ok(AuthorizationClient::new(connect(socket).await?))
}
