//! Bundles from an OCI registry: `oci://registry/repository:tag` or `@sha256:…` (and
//! `oci+http://` for a plain-HTTP registry, meant for tests).
//!
//! The artifact is one OCI image manifest with one layer of media type [`BUNDLE_MEDIA_TYPE`] (the
//! bundle YAML) and, optionally, one layer of media type [`SIGNATURE_MEDIA_TYPE`] (its detached
//! minisign signature, exactly as `minisign -Sm` writes it). Any other layer is refused, so a
//! bundle pushed with a generic media type is named as such rather than ignored. The config blob
//! is never read.
//!
//! Polling costs one small request: a HEAD of the manifest, whose `Docker-Content-Digest` names
//! the version. Only a digest not seen before is pulled (manifest by digest, then its layers,
//! each checked against its descriptor's digest and size, bounded by the bundle size limit).
//! The last pull is remembered, so a tag that still points at a refused artifact is not pulled
//! again, and a digest reference, which cannot change, costs no request after its first pull.
//! Pulls, pushes and bearer-token registries go through the `oci-client` crate; the poll's HEAD
//! is sent by this module (that crate probes `/v2/` before every request to a registry without
//! bearer tokens, which would double the cost of a poll), and falls back to the crate when the
//! registry asks for a token. Credentials come from the source's user-info
//! (`oci://user:password@registry/…`) and are never shown (see [`super::source::redact_url`]).
//!
//! This module downloads and uploads bytes; it never parses YAML, verifies signatures or touches
//! the policy in force.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::source::{
    cache_name_with, percent_decode, redact_url, split_credentials, FetchError, Fetched,
};

/// Media type of the bundle layer: one bundle YAML file.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.wardgate.bundle.v1+yaml";
/// Media type of the signature layer: the bundle layer's detached minisign signature.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.wardgate.bundle.signature.v1";
/// The artifact type `wardgate push` sets (and `oras push --artifact-type` should).
pub const ARTIFACT_TYPE: &str = "application/vnd.wardgate.bundle.v1";

/// Manifest media types asked for (OCI first; Docker's schema 2 carries the same fields).
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// The empty config blob `{}` (OCI image spec 1.1).
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Signatures are small; a larger signature layer is refused before it is pulled.
const SIGNATURE_LIMIT: u64 = 64 * 1024;

/// An `oci://` or `oci+http://` source, parsed.
#[derive(Clone)]
pub(crate) struct OciSource {
    /// The reference (registry, repository, tag or digest).
    pub(crate) reference: Reference,
    /// `oci+http://`: talk to the registry without TLS.
    pub(crate) plain_http: bool,
    /// From the user-info, percent-decoded.
    auth: RegistryAuth,
    /// `Authorization: Basic` value for the poll's own HEAD.
    basic: Option<String>,
}

impl fmt::Debug for OciSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciSource")
            .field("reference", &self.reference.whole())
            .field("plain_http", &self.plain_http)
            .finish_non_exhaustive()
    }
}

/// Whether `text` names an OCI source (`oci://` or `oci+http://`).
pub(crate) fn is_oci(text: &str) -> bool {
    text.starts_with("oci://") || text.starts_with("oci+http://")
}

impl OciSource {
    /// Parse `oci://[user:password@]registry[:port]/repository(:tag|@sha256:hex)`. The registry
    /// must be named (a host with a dot or a port, or `localhost`) and so must a tag or a digest:
    /// nothing defaults to Docker Hub or to `latest`. Errors never show the credentials.
    pub(crate) fn parse(text: &str) -> Result<OciSource, String> {
        let shown = redact_url(text);
        let (plain_http, rest) = if let Some(rest) = text.strip_prefix("oci+http://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("oci://") {
            (false, rest)
        } else {
            return Err(format!("`{shown}` is not an oci:// reference"));
        };
        let (_, basic) = split_credentials(&format!("http://{rest}"));
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, registry) = match authority.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, authority),
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "`{shown}`: an OCI reference has no query or fragment"
            ));
        }
        if path.len() < 2
            || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        {
            return Err(format!(
                "`{shown}`: name the registry first (`oci://registry.example/repository:tag`)"
            ));
        }
        let reference = Reference::try_from(format!("{registry}{path}"))
            .map_err(|e| format!("`{shown}` is not a valid OCI reference: {e}"))?;
        let last = path.rsplit('/').next().unwrap_or_default();
        if !last.contains([':', '@']) {
            return Err(format!(
                "`{shown}`: name a tag (`:prod`) or a digest (`@sha256:…`); nothing defaults to `latest`"
            ));
        }
        let auth = match userinfo {
            Some(u) => {
                let decoded = String::from_utf8_lossy(&percent_decode(u)).into_owned();
                let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
                RegistryAuth::Basic(user.to_string(), password.to_string())
            }
            None => RegistryAuth::Anonymous,
        };
        Ok(OciSource {
            reference,
            plain_http,
            auth,
            basic,
        })
    }

    fn client(&self, timeout: Duration) -> Result<Client, String> {
        // oci-client builds a reqwest client over rustls without a crypto provider of its own:
        // ring, as for every other TLS connection wardgate makes.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if self.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            user_agent: concat!("wardgate/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| format!("cannot build the OCI client: {e}"))
    }

    /// `https://registry/v2/repository/manifests/tag-or-digest` (or `http://`).
    fn manifest_url(&self) -> String {
        let r = &self.reference;
        let scheme = if self.plain_http { "http" } else { "https" };
        let version = r.digest().or(r.tag()).unwrap_or("latest");
        format!(
            "{scheme}://{}/v2/{}/manifests/{version}",
            r.resolve_registry(),
            r.repository()
        )
    }
}

/// What the last pull of a manifest digest came to.
#[derive(Debug, Clone)]
struct Pulled {
    digest: String,
    result: Result<Fetched, FetchError>,
}

/// Follows one OCI source.
pub(crate) struct OciFetcher {
    source: OciSource,
    /// The source as shown (no credentials).
    shown: String,
    client: Result<Client, String>,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    cache_name: String,
    timeout: Duration,
    max_bytes: u64,
    last: Option<Pulled>,
    /// The registry answered the plain HEAD with 401: from then on the crate polls, with the
    /// bearer token it caches.
    token_auth: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for OciFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciFetcher")
            .field("source", &self.shown)
            .finish_non_exhaustive()
    }
}

impl OciFetcher {
    /// A fetcher for `text` (already checked by [`OciSource::parse`]; a text that does not parse
    /// makes every fetch fail with the reason).
    pub(crate) fn new(text: &str, timeout: Duration, max_bytes: u64) -> Result<Self, String> {
        let source = OciSource::parse(text)?;
        let client = source.client(timeout);
        // The system's trust store, as the crate's pulls use: a registry with a private CA
        // installed there is reached by both.
        let roots = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "no system trust store ({e}); the OCI poll trusts the Mozilla roots"
                );
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            });
        let https = roots.https_or_http().enable_http1().build();
        Ok(OciFetcher {
            client,
            http: HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https),
            shown: redact_url(text),
            cache_name: cache_name_with("oci", text),
            source,
            timeout,
            max_bytes,
            last: None,
            token_auth: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The bundle at the reference, unless its manifest digest is `accepted` (then
    /// [`FetchError::NotModified`]). A digest pulled before is answered from memory, as it was
    /// (bytes or refusal). `force` pulls again whatever the digest.
    pub(crate) async fn fetch(
        &mut self,
        accepted: Option<&str>,
        force: bool,
    ) -> Result<Fetched, FetchError> {
        if force {
            self.last = None;
        }
        let pinned = self.source.reference.digest().map(str::to_string);
        let digest = match (&pinned, &self.last) {
            // A digest reference cannot change: no request once it was pulled.
            (Some(d), Some(last)) if last.digest == *d => d.clone(),
            _ => self.timed("HEAD", self.head()).await?,
        };
        if accepted == Some(digest.as_str()) {
            return Err(FetchError::NotModified);
        }
        if let Some(last) = self.last.as_ref().filter(|l| l.digest == digest) {
            return last.result.clone();
        }
        let result = self.timed("pull", self.pull(&digest)).await;
        // Connection trouble is retried on the next poll; what the registry served is kept.
        let kept = !matches!(&result, Err(FetchError::Failed(_)));
        if kept {
            self.last = Some(Pulled {
                digest,
                result: result.clone(),
            });
        }
        result
    }

    async fn timed<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        match tokio::time::timeout(self.timeout.saturating_mul(4), work).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Failed(format!(
                "{what} {}: no complete answer within {:?}",
                self.shown,
                self.timeout.saturating_mul(4)
            ))),
        }
    }

    /// The manifest digest the reference points at now: one HEAD, or the crate's token dance
    /// when the registry wants a bearer token (or sends no digest header).
    async fn head(&self) -> Result<String, FetchError> {
        use std::sync::atomic::Ordering;
        if self.token_auth.load(Ordering::Relaxed) {
            return self.head_through_client().await;
        }
        let url = self.source.manifest_url();
        let mut req = hyper::Request::head(&url)
            .header("accept", MANIFEST_TYPES.join(", "))
            .header(
                "user-agent",
                concat!("wardgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(basic) = &self.source.basic {
            let mut value = hyper::header::HeaderValue::from_str(basic)
                .map_err(|_| FetchError::Failed(format!("HEAD {}: bad credentials", self.shown)))?;
            value.set_sensitive(true);
            req = req.header(hyper::header::AUTHORIZATION, value);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| FetchError::Failed(format!("HEAD {}: {e}", self.shown)))?;
        let resp = tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| {
                FetchError::Failed(format!(
                    "HEAD {}: no answer within {:?}",
                    self.shown, self.timeout
                ))
            })?
            .map_err(|e| FetchError::Failed(format!("HEAD {}: {}", self.shown, error_chain(&e))))?;
        let status = resp.status();
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match (status.as_u16(), header) {
            (200, Some(digest)) if is_sha256_digest(&digest) => Ok(digest),
            (200, _) => self.head_through_client().await,
            (401, _) => {
                self.token_auth.store(true, Ordering::Relaxed);
                self.head_through_client().await
            }
            (404, _) => Err(FetchError::Failed(format!(
                "HEAD {}: HTTP 404 (no such repository or tag)",
                self.shown
            ))),
            (code, _) => Err(FetchError::Failed(format!(
                "HEAD {}: HTTP {code}",
                self.shown
            ))),
        }
    }

    /// The manifest digest through the crate: HEAD (GET when the registry sends no digest
    /// header), with whatever authentication the registry asks for.
    async fn head_through_client(&self) -> Result<String, FetchError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| FetchError::Failed(e.clone()))?;
        client
            .fetch_manifest_digest(&self.source.reference, &self.source.auth)
            .await
            .map_err(|e| FetchError::Failed(format!("HEAD {}: {e}", self.shown)))
    }

    /// Pull the manifest with `digest` and the layers it lists.
    async fn pull(&self, digest: &str) -> Result<Fetched, FetchError> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| FetchError::Failed(e.clone()))?;
        let r = &self.source.reference;
        let pinned = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            digest.to_string(),
        );
        let (body, _) = client
            .pull_manifest_raw(&pinned, &self.source.auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| FetchError::Failed(format!("GET manifest {}: {e}", self.shown)))?;
        let manifest: OciImageManifest = serde_json::from_slice(&body).map_err(|e| {
            FetchError::Invalid(format!(
                "{}: the manifest {digest} is not an OCI image manifest: {e}",
                self.shown
            ))
        })?;
        let (bundle, signature) = self.layers(&manifest, digest)?;
        let yaml = self
            .pull_layer(client, &pinned, bundle, self.max_bytes)
            .await?;
        let mut out = Fetched::default();
        out.files.push((self.shown.clone(), yaml));
        out.base_names.push(self.cache_name.clone());
        if let Some(sig) = signature {
            let text = self
                .pull_layer(client, &pinned, sig, SIGNATURE_LIMIT)
                .await?;
            out.signature = Some((
                format!("{} (signature layer)", self.shown),
                String::from_utf8_lossy(&text).into_owned(),
            ));
        }
        out.etag = Some(digest.to_string());
        Ok(out)
    }

    /// The bundle layer and the signature layer of `manifest`, checked.
    fn layers<'m>(
        &self,
        manifest: &'m OciImageManifest,
        digest: &str,
    ) -> Result<(&'m OciDescriptor, Option<&'m OciDescriptor>), FetchError> {
        let mut bundle = None;
        let mut signature = None;
        for layer in &manifest.layers {
            let title = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.title"))
                .map_or(String::new(), |t| format!(" `{t}`"));
            let slot = match layer.media_type.as_str() {
                BUNDLE_MEDIA_TYPE => &mut bundle,
                SIGNATURE_MEDIA_TYPE => &mut signature,
                other => {
                    return Err(FetchError::Invalid(format!(
                        "{} ({digest}): layer{title} has media type {other}; a wardgate bundle \
                         artifact holds one layer of {BUNDLE_MEDIA_TYPE} and at most one of \
                         {SIGNATURE_MEDIA_TYPE} (with oras: `oras push REF \
                         bundle.yaml:{BUNDLE_MEDIA_TYPE} bundle.yaml.minisig:{SIGNATURE_MEDIA_TYPE}`)",
                        self.shown
                    )))
                }
            };
            if slot.replace(layer).is_some() {
                return Err(FetchError::Invalid(format!(
                    "{} ({digest}): more than one layer of {}",
                    self.shown, layer.media_type
                )));
            }
        }
        match bundle {
            Some(b) => Ok((b, signature)),
            None => Err(FetchError::Invalid(format!(
                "{} ({digest}): no layer of {BUNDLE_MEDIA_TYPE}",
                self.shown
            ))),
        }
    }

    /// One layer's bytes, at most `limit` of them (judged by the descriptor before the download
    /// and by the bytes during it), checked against the descriptor's SHA-256.
    async fn pull_layer(
        &self,
        client: &Client,
        image: &Reference,
        layer: &OciDescriptor,
        limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        use tokio_stream::StreamExt;
        let over = || {
            FetchError::TooLarge(format!(
                "{}: layer {} ({}) is over the {limit}-byte limit",
                self.shown, layer.digest, layer.media_type
            ))
        };
        let declared = u64::try_from(layer.size).map_err(|_| {
            FetchError::Invalid(format!(
                "{}: layer {} has a negative size",
                self.shown, layer.digest
            ))
        })?;
        if declared > limit {
            return Err(over());
        }
        let Some(want) = layer.digest.strip_prefix("sha256:") else {
            return Err(FetchError::Invalid(format!(
                "{}: layer digest {} is not sha256",
                self.shown, layer.digest
            )));
        };
        let mut stream = client
            .pull_blob_stream(image, layer)
            .await
            .map_err(|e| FetchError::Failed(format!("GET blob {}: {e}", layer.digest)))?;
        let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| FetchError::Failed(format!("GET blob {}: {e}", layer.digest)))?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(over());
            }
            bytes.extend_from_slice(&chunk);
        }
        let got = hex(&Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(want) || bytes.len() as u64 != declared {
            return Err(FetchError::Failed(format!(
                "GET blob {}: the registry sent {} bytes with SHA-256 {got}, not what the manifest lists",
                layer.digest,
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An error and its causes, for connection failures whose top level says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why a push did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The target is not an `oci://` tag reference.
    #[error("{0}")]
    Reference(String),
    /// The registry could not be reached or refused the push.
    #[error("{0}")]
    Registry(String),
}

/// Push `bundle` (and its detached minisign `signature`, if any) to the `oci://` reference
/// `target` as a wardgate bundle artifact; `file_name` becomes the layer's title. Returns the
/// manifest's URL as the registry reports it (without credentials).
pub async fn push(
    target: &str,
    file_name: &str,
    bundle: Vec<u8>,
    signature: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<String, PushError> {
    let source = OciSource::parse(target).map_err(PushError::Reference)?;
    if source.reference.digest().is_some() {
        return Err(PushError::Reference(format!(
            "`{}`: push to a tag; the digest is the registry's to compute",
            redact_url(target)
        )));
    }
    let client = source.client(timeout).map_err(PushError::Registry)?;
    let title = |name: String| {
        Some(BTreeMap::from([(
            "org.opencontainers.image.title".to_string(),
            name,
        )]))
    };
    let mut layers = vec![ImageLayer::new(
        bundle,
        BUNDLE_MEDIA_TYPE.to_string(),
        title(file_name.to_string()),
    )];
    if let Some(sig) = signature {
        layers.push(ImageLayer::new(
            sig,
            SIGNATURE_MEDIA_TYPE.to_string(),
            title(format!("{file_name}.minisig")),
        ));
    }
    let config = Config::new(b"{}".to_vec(), EMPTY_CONFIG_TYPE.to_string(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.artifact_type = Some(ARTIFACT_TYPE.to_string());
    let pushed = tokio::time::timeout(
        timeout.saturating_mul(6),
        client.push(
            &source.reference,
            &layers,
            config,
            &source.auth,
            Some(manifest),
        ),
    )
    .await
    .map_err(|_| PushError::Registry(format!("push to {}: timed out", redact_url(target))))?
    .map_err(|e| PushError::Registry(format!("push to {}: {e}", redact_url(target))))?;
    Ok(redact_url(&pushed.manifest_url))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn references_name_registry_and_version_and_keep_credentials_apart() {
        let s =
            OciSource::parse("oci://deploy:p%40ss@registry.example:5000/team/bundle:prod").unwrap();
        assert_eq!(s.reference.registry(), "registry.example:5000");
        assert_eq!(s.reference.repository(), "team/bundle");
        assert_eq!(s.reference.tag(), Some("prod"));
        assert!(!s.plain_http);
        assert!(
            matches!(&s.auth, RegistryAuth::Basic(u, p) if u == "deploy" && p == "p@ss"),
            "{:?}",
            s.auth
        );
        assert_eq!(
            s.manifest_url(),
            "https://registry.example:5000/v2/team/bundle/manifests/prod"
        );
        let d = format!("oci+http://127.0.0.1:5000/b@sha256:{}", "ab".repeat(32));
        let s = OciSource::parse(&d).unwrap();
        assert!(s.plain_http);
        assert!(matches!(s.auth, RegistryAuth::Anonymous));
        assert!(s
            .manifest_url()
            .starts_with("http://127.0.0.1:5000/v2/b/manifests/sha256:abab"));

        for (bad, why) in [
            ("oci://bundle:prod", "name the registry"),
            ("oci://registry.example/team/bundle", "name a tag"),
            (
                "oci://registry.example/Team/Bundle:prod",
                "not a valid OCI reference",
            ),
            ("oci://u:hunter2@registry.example/b:prod?x=1", "no query"),
        ] {
            let err = OciSource::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
