//! Where bundles come from: a file, a directory, or an HTTP(S) URL, fetched as raw bytes with
//! whatever signature material sits beside them.
//!
//! This module reads and downloads, with size limits and timeouts; it never parses YAML,
//! verifies signatures or touches the policy in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::signature::{MANIFEST, SIG_SUFFIX};

/// Where `serve` reads its bundle from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A YAML file or a directory of YAML files.
    Path(PathBuf),
    /// An `http://` or `https://` URL of one YAML file (signature at URL + `.minisig`).
    Http(String),
}

impl FromStr for BundleSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            s.parse::<hyper::Uri>()
                .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
            Ok(BundleSource::Http(s.to_string()))
        } else if s.is_empty() {
            Err("empty bundle source".to_string())
        } else {
            Ok(BundleSource::Path(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for BundleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleSource::Path(p) => write!(f, "{}", p.display()),
            BundleSource::Http(u) => f.write_str(u),
        }
    }
}

/// The bytes of one bundle version and its signature material.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fetched {
    /// (display name, content) of every bundle file, in merge order.
    pub(crate) files: Vec<(String, Vec<u8>)>,
    /// Base names of `files`, for manifest checks.
    pub(crate) base_names: Vec<String>,
    /// Detached signature of a single-file bundle: (name, text).
    pub(crate) signature: Option<(String, String)>,
    /// Manifest of a directory bundle and its signature text.
    pub(crate) manifest: Option<(Vec<u8>, Option<String>)>,
    /// Whether the bundle is a directory.
    pub(crate) is_dir: bool,
    /// HTTP entity tag, for the next conditional request.
    pub(crate) etag: Option<String>,
}

/// Why nothing new could be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    /// HTTP 304: the server's copy is the one we have.
    #[error("not modified")]
    NotModified,
    /// Over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Anything else: I/O, connection, HTTP status, timeout.
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    /// The reload outcome an attempt that failed with this error ends in.
    pub(crate) fn outcome(&self) -> super::Outcome {
        match self {
            FetchError::NotModified => super::Outcome::Unchanged,
            FetchError::TooLarge(_) => super::Outcome::TooLarge,
            FetchError::Failed(_) => super::Outcome::FetchError,
        }
    }
}

/// Whether a directory entry is a bundle file (`*.yaml` / `*.yml`, not hidden).
pub(crate) fn is_bundle_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn read_limited(path: &Path, budget: &mut u64) -> Result<Vec<u8>, FetchError> {
    let len = std::fs::metadata(path)
        .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len > *budget {
        return Err(FetchError::TooLarge(format!(
            "{} would take the bundle over its size limit",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?;
    *budget = budget.saturating_sub(bytes.len() as u64);
    Ok(bytes)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FetchError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FetchError::Failed(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Read a file or directory bundle (blocking: call from a blocking task).
pub(crate) fn fetch_path(path: &Path, max_bytes: u64) -> Result<Fetched, FetchError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut budget = max_bytes;
    let mut out = Fetched::default();
    if meta.is_dir() {
        out.is_dir = true;
        let entries = std::fs::read_dir(path)
            .map_err(|e| FetchError::Failed(format!("cannot list {}: {e}", path.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_bundle_file(n))
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(FetchError::Failed(format!(
                "{} holds no *.yaml files",
                path.display()
            )));
        }
        for name in names {
            let p = path.join(&name);
            out.files
                .push((p.display().to_string(), read_limited(&p, &mut budget)?));
            out.base_names.push(name);
        }
        if let Some(m) = read_optional(&path.join(MANIFEST))? {
            let sig = read_optional(&path.join(format!("{MANIFEST}{SIG_SUFFIX}")))?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            out.manifest = Some((m, sig));
        }
    } else {
        let bytes = read_limited(path, &mut budget)?;
        out.files.push((path.display().to_string(), bytes));
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.base_names.push(base);
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(SIG_SUFFIX);
        let sig_path = PathBuf::from(sig_path);
        if let Some(sig) = read_optional(&sig_path)? {
            out.signature = Some((
                sig_path.display().to_string(),
                String::from_utf8_lossy(&sig).into_owned(),
            ));
        }
    }
    Ok(out)
}

/// An HTTP(S) client for one bundle URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpFetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: String,
    timeout: Duration,
    max_bytes: u64,
}

impl HttpFetcher {
    pub(crate) fn new(url: &str, timeout: Duration, max_bytes: u64) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        HttpFetcher {
            client,
            url: url.to_string(),
            timeout,
            max_bytes,
        }
    }

    /// GET the bundle (conditionally on `etag`), then its signature when `want_signature`.
    pub(crate) async fn fetch(
        &self,
        etag: Option<&str>,
        want_signature: bool,
    ) -> Result<Fetched, FetchError> {
        let (body, new_etag) = self.get(&self.url, etag).await?;
        let mut out = Fetched::default();
        let base = self
            .url
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("bundle.yaml")
            .to_string();
        out.files.push((self.url.clone(), body));
        out.base_names.push(base);
        out.etag = new_etag;
        if want_signature {
            let sig_url = format!("{}{SIG_SUFFIX}", self.url);
            match self.get(&sig_url, None).await {
                Ok((sig, _)) => {
                    out.signature = Some((sig_url, String::from_utf8_lossy(&sig).into_owned()));
                }
                Err(FetchError::Failed(e)) if e.contains("HTTP 404") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn get(
        &self,
        url: &str,
        etag: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), FetchError> {
        match tokio::time::timeout(self.timeout, self.get_inner(url, etag)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Failed(format!(
                "GET {url}: no complete answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn get_inner(
        &self,
        url: &str,
        etag: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let mut req = hyper::Request::get(url).header(
            "user-agent",
            concat!("wardgate/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(tag) = etag {
            req = req.header("if-none-match", tag);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?;
        let status = resp.status();
        if status == hyper::StatusCode::NOT_MODIFIED {
            return Err(FetchError::NotModified);
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!(
                "GET {url}: HTTP {}",
                status.as_u16()
            )));
        }
        let new_etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let declared = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(FetchError::TooLarge(format!(
                "GET {url}: body of {} bytes is over the {}-byte limit",
                declared.unwrap_or(0),
                self.max_bytes
            )));
        }
        let limit = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(format!(
                        "GET {url}: body over the {}-byte limit",
                        self.max_bytes
                    ))
                } else {
                    FetchError::Failed(format!("GET {url}: {e}"))
                }
            })?
            .to_bytes();
        Ok((body.to_vec(), new_etag))
    }
}
