//! HTTP clients for tests: an mTLS client that presents a workload's SVID (or none) and sends
//! request paths exactly as given, and a plain client for Envoy's admin API.
//!
//! Owns TLS client configuration (rustls with the ring provider) and one-shot HTTP/1.1 or
//! HTTP/2 exchanges over hyper. It must never rewrite, normalise or re-encode a path: the point
//! is to put `/results/../admin`, `//admin` or `%2F` on the wire unmodified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pki::Svid;
use super::BoxError;

/// How long one exchange may take before it counts as a failure.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which HTTP version to speak (negotiated by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the path goes verbatim into the request line.
    Http1,
    /// HTTP/2: the path goes verbatim into `:path`.
    Http2,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (e.g. the server refused our certificate, or we have none).
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange failed (with TLS 1.3 a refused client certificate often shows up here,
    /// as the server's alert arrives after the client considers the handshake done).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a path `http::Uri` refuses, a bad header).
    #[error("request: {0}")]
    Request(String),
    /// No answer within the time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A request to send as is.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Method.
    pub method: String,
    /// Path and query, verbatim.
    pub path: String,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// A request without headers or body.
    pub fn new(method: &str, path: &str) -> RawRequest {
        RawRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
}

impl Reply {
    /// The first value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, BoxError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// An mTLS client for one server, presenting one identity (or none).
#[derive(Clone)]
pub struct MtlsClient {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    protocol: Protocol,
}

impl std::fmt::Debug for MtlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl MtlsClient {
    /// A client for `addr`, verifying the server's certificate for DNS name `server_name`
    /// against `roots`, presenting `identity` (an SVID) or no certificate at all.
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        roots: &[CertificateDer<'static>],
        identity: Option<&Svid>,
        protocol: Protocol,
    ) -> Result<MtlsClient, BoxError> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store);
        let mut config = match identity {
            Some(svid) => {
                builder.with_client_auth_cert(vec![svid.cert_der.clone()], svid.private_key())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        };
        Ok(MtlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
            server_name: ServerName::try_from(server_name.to_owned())?,
            protocol,
        })
    }

    /// Send `request` on a new connection and read the whole reply.
    pub async fn send(&self, request: &RawRequest) -> Result<Reply, ClientError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(request))
            .await
            .unwrap_or(Err(ClientError::Timeout(EXCHANGE_TIMEOUT)))
    }

    async fn exchange(&self, raw: &RawRequest) -> Result<Reply, ClientError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(ClientError::Tls)?;
        let io = TokioIo::new(tls);
        let authority = format!("{}:{}", self.server_name.to_str(), self.addr.port());
        match self.protocol {
            Protocol::Http1 => {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                // Origin form: the request line carries the path exactly as given.
                let uri = Uri::try_from(raw.path.as_str())
                    .map_err(|e| ClientError::Request(format!("path {:?}: {e}", raw.path)))?;
                let request = build(raw, uri, Some(&authority))?;
                read(sender.send_request(request).await?).await
            }
            Protocol::Http2 => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                // Absolute form gives `:scheme` and `:authority`; `:path` is the path as given.
                let uri = Uri::try_from(format!("https://{authority}{}", raw.path))
                    .map_err(|e| ClientError::Request(format!("path {:?}: {e}", raw.path)))?;
                let request = build(raw, uri, None)?;
                read(sender.send_request(request).await?).await
            }
        }
    }
}

fn build(
    raw: &RawRequest,
    uri: Uri,
    host: Option<&str>,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let method = Method::from_bytes(raw.method.as_bytes())
        .map_err(|e| ClientError::Request(format!("method {:?}: {e}", raw.method)))?;
    let mut request = Request::new(Full::new(Bytes::from(raw.body.clone())));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    // A `host` header among the request's own replaces the default one (a client may send any).
    let own_host = raw
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if let Some(host) = host.filter(|_| !own_host) {
        headers.insert(
            HOST,
            HeaderValue::from_str(host).map_err(|e| ClientError::Request(e.to_string()))?,
        );
    }
    for (name, value) in &raw.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ClientError::Request(format!("header {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ClientError::Request(format!("header value {value:?}: {e}")))?;
        headers.append(name, value);
    }
    Ok(request)
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> Result<Reply, ClientError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// GET `path` over plain HTTP/1.1 from `addr` (Envoy's admin API): status and body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    plain_request(addr, Method::GET, path).await
}

/// POST `path` (no body) over plain HTTP/1.1 to `addr`, as Envoy's admin API wants for
/// changes such as `/logging?connection=debug`: status and body.
pub async fn plain_post(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    plain_request(addr, Method::POST, path).await
}

async fn plain_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(u16, String), BoxError> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = Uri::try_from(path)?;
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(&addr.to_string())?);
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr} timed out"))?
}
