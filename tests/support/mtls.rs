//! wardgate's mTLS listener from the outside: `wardgate serve --tls` as a child process, gRPC
//! callers that handshake with a chosen SVID (or none) and record which server certificate
//! each handshake saw, and [`MtlsSidecar`], which puts a real Envoy configured with
//! `deploy/envoy/envoy-sidecar-mtls.yaml` in front of it.
//!
//! Owns TCP+TLS gRPC channels (rustls, ring) and the processes and files of these tests. It
//! must never reach anything but loopback and its own temporary directory, and never leave a
//! child process running once the value that started it is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::pki::{Lifetime, Pki, Svid};
use super::process::{free_port, render_template, ChildGuard, Envoy};
use super::upstream::EchoUpstream;
use super::BoxError;

/// wardgate's own SPIFFE ID in these tests.
pub const WARDGATE_ID: &str = "spiffe://hospital.example/ns/wardgate/sa/wardgate";
/// The DNS SAN the test PKI gives wardgate's SVID (callers verify the server by it).
pub const WARDGATE_DNS: &str = "wardgate.wardgate.svc";

/// A caller of wardgate's mTLS listener.
#[derive(Clone)]
pub struct Caller {
    addr: SocketAddr,
    connector: TlsConnector,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// One connection: a gRPC client over it, and the serial of the certificate the server
/// presented in its handshake.
#[derive(Debug)]
pub struct Connection {
    /// Authorization over this one connection.
    pub client: AuthorizationClient<Channel>,
    /// The server leaf's serial number (lower-case hex, no separators).
    pub server_serial: String,
}

impl Caller {
    /// A caller of `addr` presenting `svid` (or no certificate), trusting `roots` for the
    /// server's certificate (verified for [`WARDGATE_DNS`]), speaking TLS 1.3 with ALPN h2.
    pub fn new(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        svid: Option<&Svid>,
    ) -> Result<Caller, BoxError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone())?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(store);
        let mut config = match svid {
            Some(svid) => {
                builder.with_client_auth_cert(vec![svid.cert_der.clone()], svid.private_key())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection a full handshake, so each one shows the server's current SVID.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Caller {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Handshake and open a gRPC channel over that one connection. With TLS 1.3 the server
    /// judges the client certificate after the client considers the handshake done, so a
    /// refusal shows up on the first call, not here.
    pub async fn connect(&self) -> Result<Connection, BoxError> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(WARDGATE_DNS)?;
        let tls = tokio::time::timeout(Duration::from_secs(10), self.connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out")??;
        let server_serial = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| serial_of(leaf.as_ref()))
            .unwrap_or_default();
        let slot: Arc<Mutex<Option<TlsStream<TcpStream>>>> = Arc::new(Mutex::new(Some(tls)));
        let channel = Endpoint::try_from("http://wardgate.invalid")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let stream = slot.lock().ok().and_then(|mut s| s.take());
                async move {
                    stream.map(TokioIo::new).ok_or_else(|| {
                        // The one connection is gone: for a refused caller, closed by the
                        // server's TLS alert right after the client's side of the handshake.
                        std::io::Error::new(
                            std::io::ErrorKind::NotConnected,
                            "connection closed by the server",
                        )
                    })
                }
            }))
            .await?;
        Ok(Connection {
            client: AuthorizationClient::new(channel),
            server_serial,
        })
    }

    /// Connect and send one Check: the answer, or the error that took its place.
    pub async fn check_once(&self) -> Result<CheckResponse, BoxError> {
        let mut connection = self.connect().await?;
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            connection.client.check(check_request()),
        )
        .await
        .map_err(|_| "Check timed out")??;
        Ok(response.into_inner())
    }
}

/// The serial number of a DER certificate, lower-case hex without separators.
pub fn serial_of(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.raw_serial_as_string().replace(':', ""))
        .unwrap_or_default()
}

/// A Check that the shipped bundle allows: ehr reads a lab result.
pub fn check_request() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://hospital.example/ns/clinical/sa/ehr".into(),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: "spiffe://hospital.example/ns/clinical/sa/lab".into(),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/results/42".into(),
                    host: "lab.clinical.svc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Whether a CheckResponse is an allow (gRPC status code OK inside the response).
pub fn is_allow(response: &CheckResponse) -> bool {
    response.status.as_ref().map_or(-1, |s| s.code) == 0
}

/// Issue (or re-issue, with a new key and serial) wardgate's own SVID from hospital's CA.
pub fn issue_wardgate_svid(pki: &mut Pki, name: &str) -> Result<Svid, BoxError> {
    Ok(pki
        .issue("hospital.example", name, WARDGATE_ID, Lifetime::DAY)?
        .clone())
}

/// A running `wardgate serve --tls` (listening on a free loopback port).
#[derive(Debug)]
pub struct TlsWardgate {
    /// The process.
    pub child: ChildGuard,
    /// The mTLS gRPC listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

impl TlsWardgate {
    /// Start `wardgate serve --bundle <bundle> --listen 127.0.0.1:<free> --admin
    /// 127.0.0.1:<free> --tls <args>` and wait until its admin listener answers.
    pub async fn start(
        bundle: &Path,
        log_dir: &Path,
        args: &[String],
    ) -> Result<TlsWardgate, BoxError> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
        command
            .arg("serve")
            .arg("--bundle")
            .arg(bundle)
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--decision-log", "off", "--tls"])
            .args(args)
            .env(
                "WARDGATE_LOG",
                std::env::var("WARDGATE_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut wardgate = TlsWardgate {
            child: ChildGuard::spawn("wardgate", command, log_dir)?,
            listen,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = wardgate.child.exited() {
                return Err(format!(
                    "wardgate exited during start-up with {status}\n{}",
                    wardgate.child.log_tail(4000)
                )
                .into());
            }
            if let Ok((200, _)) = super::client::plain_get(admin, "/healthz").await {
                return Ok(wardgate);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "wardgate's admin listener did not answer within 30 s\n{}",
                    wardgate.child.log_tail(4000)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `caller` gets an allow through the mTLS listener (wardgate has its SVID and a
    /// policy); returns the serial wardgate presented.
    pub async fn wait_until_serving(&mut self, caller: &Caller) -> Result<String, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.exited() {
                return Err(format!("wardgate exited with {status}\n{}", self.log()).into());
            }
            if let Ok(mut connection) = caller.connect().await {
                if let Ok(response) = connection.client.check(check_request()).await {
                    if is_allow(response.get_ref()) {
                        return Ok(connection.server_serial);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(
                    format!("wardgate not serving over mTLS within 30 s\n{}", self.log()).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String, BoxError> {
        let (status, body) = super::client::plain_get(self.admin, "/metrics").await?;
        if status != 200 {
            return Err(format!("/metrics answered {status}").into());
        }
        Ok(body)
    }

    /// Everything wardgate logged so far (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.child.stderr_path).unwrap_or_default()
    }
}

/// The value of an unlabelled sample in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The shipped mTLS sidecar config template.
pub fn envoy_mtls_template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/envoy-sidecar-mtls.yaml")
}

/// Envoy (shipped `envoy-sidecar-mtls.yaml`) in front of the `lab` workload, reaching
/// `wardgate serve --tls` (files backend) over TCP+mTLS with lab's SVID. Fields drop in order:
/// Envoy, then wardgate, then the rest.
#[derive(Debug)]
pub struct MtlsSidecar {
    /// The Envoy.
    pub envoy: Envoy,
    /// The authorizer.
    pub wardgate: TlsWardgate,
    /// The workload.
    pub upstream: EchoUpstream,
    /// Every certificate.
    pub pki: Pki,
    /// wardgate's SVID.
    pub wardgate_svid: Svid,
    /// Everything on disk. Removed last.
    pub dir: tempfile::TempDir,
}

impl MtlsSidecar {
    /// Generate the PKI, start the upstream, wardgate (`--allow-caller` each of
    /// `allow_callers`) and Envoy, and wait until all are ready.
    pub async fn start(
        envoy_binary: &Path,
        allow_callers: &[&str],
    ) -> Result<MtlsSidecar, BoxError> {
        let dir = tempfile::Builder::new()
            .prefix("wardgate-mtls-")
            .tempdir()?;
        let mut pki = Pki::generate(&dir.path().join("pki"))?;
        let wardgate_svid = issue_wardgate_svid(&mut pki, "wardgate")?;
        let destination = pki.svid("lab")?.clone();
        let upstream = EchoUpstream::start().await?;

        // wardgate verifies callers against each trust domain's own CA.
        let mut args = vec![
            "--svid-source".to_owned(),
            "files".to_owned(),
            "--svid-cert".to_owned(),
            wardgate_svid.cert_path.display().to_string(),
            "--svid-key".to_owned(),
            wardgate_svid.key_path.display().to_string(),
        ];
        for domain in super::pki::TRUSTED_DOMAINS {
            args.push("--trust-bundle".to_owned());
            args.push(format!(
                "{domain}={}",
                pki.dir.join(format!("ca-{domain}.pem")).display()
            ));
        }
        for pattern in allow_callers {
            args.push("--allow-caller".to_owned());
            args.push((*pattern).to_owned());
        }
        let mut wardgate = TlsWardgate::start(&super::shipped_bundle(), dir.path(), &args).await?;
        let caller = Caller::new(wardgate.listen, &pki.trusted_roots(), Some(&destination))?;
        if allow_callers
            .iter()
            .any(|p| *p == destination.spiffe_id || p.ends_with("/**"))
        {
            wardgate.wait_until_serving(&caller).await?;
        }

        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let access_log = dir.path().join("envoy-access.log");
        let path_str = |p: &Path| p.display().to_string();
        let vars: BTreeMap<&str, String> = BTreeMap::from([
            ("ENVOY_ADMIN_PORT", admin.port().to_string()),
            ("ENVOY_LISTEN_ADDRESS", listen.ip().to_string()),
            ("ENVOY_LISTEN_PORT", listen.port().to_string()),
            ("SVID_CERT", path_str(&destination.cert_path)),
            ("SVID_KEY", path_str(&destination.key_path)),
            ("TRUST_BUNDLE_DIR", path_str(&pki.trust_bundle_dir)),
            ("WARDGATE_ADDRESS", wardgate.listen.ip().to_string()),
            ("WARDGATE_PORT", wardgate.listen.port().to_string()),
            ("WARDGATE_SPIFFE_ID", WARDGATE_ID.to_owned()),
            (
                "WARDGATE_TRUST_BUNDLE",
                path_str(&pki.dir.join("ca-hospital.example.pem")),
            ),
            ("APP_ADDRESS", upstream.addr.ip().to_string()),
            ("APP_PORT", upstream.addr.port().to_string()),
            ("ACCESS_LOG_PATH", path_str(&access_log)),
        ]);
        let template = fs::read_to_string(envoy_mtls_template_path())?;
        let config = render_template(&template, &vars)?;
        let config_path = dir.path().join("envoy-mtls.yaml");
        fs::write(&config_path, config)?;

        let base_id = std::process::id() % 1_000_000 + 2_000_000;
        let mut command = Command::new(envoy_binary);
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level"])
            // `WARDGATE_ENVOY_LOG_LEVEL=debug` when a handshake with wardgate needs explaining.
            .arg(std::env::var("WARDGATE_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .args(["--base-id", &base_id.to_string()])
            .args(["--file-flush-interval-msec", "100"]);
        let envoy = Envoy {
            child: ChildGuard::spawn("envoy", command, dir.path())?,
            listen,
            admin,
            config_path,
            access_log,
        };
        let envoy = envoy.wait_ready("Envoy").await?;
        Ok(MtlsSidecar {
            envoy,
            wardgate,
            upstream,
            pki,
            wardgate_svid,
            dir,
        })
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
