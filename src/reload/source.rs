//! Where bundles come from: a file, a directory, an HTTP(S) URL, or an OCI registry (fetched in
//! [`super::oci`]), as raw bytes with whatever signature material sits beside them.
//!
//! This module reads and downloads, with size limits and timeouts, and it is the one place that
//! knows how a source is shown: [`BundleSource`]'s `Display` (and every name it hands on, in
//! messages, to the compiler or to the cache) drops an HTTP URL's user-info, query and fragment,
//! so a password or a presigned `X-Amz-Signature` never reaches a log line or a file name. It
//! reads regular files only (a FIFO or a device would block or never end). It never parses
//! YAML, verifies signatures or touches the policy in force.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::signature::{MANIFEST, SIG_SUFFIX};

/// Where `serve` reads its bundle from.
///
/// `Display` and `Debug` show an HTTP URL without its user-info, query and fragment (see
/// [`redact_url`]); only the request itself uses the full URL.
#[derive(Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A YAML file or a directory of YAML files.
    Path(PathBuf),
    /// An `http://` or `https://` URL of one YAML file (signature at the URL's path +
    /// `.minisig`, same query).
    Http(String),
    /// An `oci://registry/repository:tag` (or `@sha256:…`) reference to a bundle artifact;
    /// `oci+http://` for a registry without TLS (tests). See [`super::oci`].
    Oci(String),
}

/// `url` as it may be shown or stored: scheme, host, port and path; user-info (`user:password@`),
/// query (`?X-Amz-Signature=...`) and fragment are dropped. Text that is not `scheme://...` is
/// returned as is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    format!("{}://{host}{}", &url[..scheme_end], &tail[..path_end])
}

impl fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            BundleSource::Http(u) => f.debug_tuple("Http").field(&redact_url(u)).finish(),
            BundleSource::Oci(u) => f.debug_tuple("Oci").field(&redact_url(u)).finish(),
        }
    }
}

impl FromStr for BundleSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            s.parse::<hyper::Uri>()
                .map_err(|e| format!("`{}` is not a valid URL: {e}", redact_url(s)))?;
            Ok(BundleSource::Http(s.to_string()))
        } else if super::oci::is_oci(s) {
            super::oci::OciSource::parse(s)?;
            Ok(BundleSource::Oci(s.to_string()))
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
            BundleSource::Http(u) | BundleSource::Oci(u) => f.write_str(&redact_url(u)),
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
    /// HTTP entity tag, for the next conditional request; for an OCI source, the manifest
    /// digest.
    pub(crate) etag: Option<String>,
    /// Files and directories: the newest change time (ctime) of everything read, or the time of
    /// reading if something changed while it was read. `None` for HTTP.
    pub(crate) changed: Option<SystemTime>,
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
    /// What the source served is not a bundle of the kind it should hold (an OCI artifact
    /// with unknown layers, say).
    #[error("{0}")]
    Invalid(String),
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
            FetchError::Invalid(_) => super::Outcome::Invalid,
            FetchError::Failed(_) => super::Outcome::FetchError,
        }
    }
}

/// Whether a directory entry is a bundle file (`*.yaml` / `*.yml` / `*.json`, not hidden).
pub(crate) fn is_bundle_file(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
}

/// What a path that is not a regular file is, for the refusal.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, meta: &std::fs::Metadata) -> FetchError {
    FetchError::Failed(format!(
        "{} is {}: bundles, signatures and manifests are read from regular files only",
        path.display(),
        kind_of(meta)
    ))
}

/// When an inode last changed (its content, its name, its permissions): its ctime, which no
/// program can set back.
fn changed_at(meta: &std::fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let secs = u64::try_from(meta.ctime()).unwrap_or(0);
    let nanos = u32::try_from(meta.ctime_nsec())
        .unwrap_or(0)
        .min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Fold what `before` and `after` reading something say into `newest`: its change time, or now
/// if it changed while it was read.
fn note_change(
    newest: &mut Option<SystemTime>,
    before: &std::fs::Metadata,
    after: &std::fs::Metadata,
) {
    let t = if changed_at(before) != changed_at(after) || before.len() != after.len() {
        SystemTime::now()
    } else {
        changed_at(after)
    };
    *newest = Some(newest.map_or(t, |n| n.max(t)));
}

/// Read the regular file at `path`, at most `budget` bytes (what was read is taken from it),
/// noting its change time in `newest`. The type is checked before opening (a FIFO would block
/// the open) and again on the opened file, and the read stops one byte past the budget whatever
/// the metadata said, so neither a device nor a file growing while it is read can flood the
/// reader.
fn read_regular(
    path: &Path,
    budget: &mut u64,
    newest: &mut Option<SystemTime>,
) -> Result<Vec<u8>, FetchError> {
    let cannot =
        |e: std::io::Error| FetchError::Failed(format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    let over = || {
        FetchError::TooLarge(format!(
            "{} would take the bundle over its size limit",
            path.display()
        ))
    };
    if meta.len() > *budget {
        return Err(over());
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let opened = file.metadata().map_err(cannot)?;
    if !opened.is_file() {
        return Err(not_regular(path, &opened));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len().min(*budget)).unwrap_or(0));
    (&file)
        .take(budget.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > *budget {
        return Err(over());
    }
    *budget -= bytes.len() as u64;
    note_change(newest, &opened, &file.metadata().map_err(cannot)?);
    Ok(bytes)
}

/// Signatures and manifests are small; this bounds what one may cost.
const SIDE_FILE_LIMIT: u64 = 1024 * 1024;

/// A regular file that may be absent (a signature, a manifest).
fn read_optional(
    path: &Path,
    newest: &mut Option<SystemTime>,
) -> Result<Option<Vec<u8>>, FetchError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => read_regular(path, &mut SIDE_FILE_LIMIT.clone(), newest).map(Some),
    }
}

/// Read a file or directory bundle (blocking: call from a blocking task). Only regular files
/// are read; a `*.yaml` entry of a directory that is anything else (a FIFO, a device, a
/// sub-directory) refuses the bundle, and a dangling symlink is skipped (a ConfigMap update
/// leaves one for a moment).
pub(crate) fn fetch_path(path: &Path, max_bytes: u64) -> Result<Fetched, FetchError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut budget = max_bytes;
    let mut newest = None;
    let mut out = Fetched::default();
    if meta.is_dir() {
        out.is_dir = true;
        let entries = std::fs::read_dir(path)
            .map_err(|e| FetchError::Failed(format!("cannot list {}: {e}", path.display())))?;
        let mut names = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_bundle_file(&name) {
                continue;
            }
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => names.push(name),
                Ok(m) => return Err(not_regular(&entry.path(), &m)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(FetchError::Failed(format!(
                        "cannot read {}: {e}",
                        entry.path().display()
                    )))
                }
            }
        }
        names.sort();
        if names.is_empty() {
            return Err(FetchError::Failed(format!(
                "{} holds no *.yaml, *.yml or *.json files",
                path.display()
            )));
        }
        for name in names {
            let p = path.join(&name);
            out.files.push((
                p.display().to_string(),
                read_regular(&p, &mut budget, &mut newest)?,
            ));
            out.base_names.push(name);
        }
        if let Some(m) = read_optional(&path.join(MANIFEST), &mut newest)? {
            let sig = read_optional(&path.join(format!("{MANIFEST}{SIG_SUFFIX}")), &mut newest)?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            out.manifest = Some((m, sig));
        }
        // Entries added, removed or renamed change the directory itself.
        let after = std::fs::metadata(path)
            .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?;
        note_change(&mut newest, &meta, &after);
    } else {
        let bytes = read_regular(path, &mut budget, &mut newest)?;
        out.files.push((path.display().to_string(), bytes));
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.base_names.push(base);
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(SIG_SUFFIX);
        let sig_path = PathBuf::from(sig_path);
        if let Some(sig) = read_optional(&sig_path, &mut newest)? {
            out.signature = Some((
                sig_path.display().to_string(),
                String::from_utf8_lossy(&sig).into_owned(),
            ));
        }
    }
    out.changed = newest;
    Ok(out)
}

/// Watch a file or directory bundle's directory (for a file: its parent, so symlink swaps are seen), for
/// content changes of the bundle's own files only.
pub(crate) fn watch(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    if path.is_dir() {
        let root = path.to_path_buf();
        let relevant = move |p: &Path| {
            p == root
                || p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    is_bundle_file(n)
                        || n.starts_with("..")
                        || n == MANIFEST
                        || n == format!("{MANIFEST}{SIG_SUFFIX}")
                })
        };
        return crate::watch::watch_dirs_where(&[path.to_path_buf()], relevant, tx);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    if let Some(base) = path.file_name() {
        names.push(base.to_owned());
        let mut sig = base.to_owned();
        sig.push(SIG_SUFFIX);
        names.push(sig);
    }
    // A symlink into the same directory (`bundle.yaml -> current/bundle.yaml`): its first
    // component changes when a release is swapped in.
    if let Ok(target) = std::fs::read_link(path) {
        if let Some(std::path::Component::Normal(first)) = target.components().next() {
            names.push(first.to_owned());
        }
    }
    let relevant = move |p: &Path| {
        p.file_name().is_some_and(|n| {
            names.iter().any(|want| want == n) || n.to_string_lossy().starts_with("..")
        })
    };
    crate::watch::watch_dirs_where(&[dir], relevant, tx)
}

/// The URL of a bundle's detached signature: `.minisig` appended to the path, the query (a
/// token, say) kept.
fn signature_url(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_end = url[scheme_end..]
        .find(['?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    format!("{}{SIG_SUFFIX}{}", &url[..path_end], &url[path_end..])
}

/// The name an HTTP bundle is cached under: `http-` and the first 16 hex digits of the SHA-256
/// of the full URL (credentials and query included, so two sources never share a name, and
/// nothing of the URL can be read back from it).
pub(crate) fn cache_name(url: &str) -> String {
    cache_name_with("http", url)
}

/// `<kind>-` and the first 16 hex digits of the SHA-256 of `source` (in full), `.yaml`.
pub(crate) fn cache_name_with(kind: &str, source: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(source.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{kind}-{hex}.yaml")
}

/// `%XX` escapes decoded (anything malformed kept as it is).
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The URL to request, without user-info, and the `Authorization: Basic` value the user-info
/// stands for (`user:password`, percent-decoded, as curl reads it). Credentials travel in a
/// header marked sensitive, never in the request URI, which the HTTP client logs at debug level.
pub(crate) fn split_credentials(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let request = format!("{}{host}{}", &url[..scheme_end], &rest[authority_end..]);
    let mut credentials = percent_decode(userinfo);
    if !userinfo.contains(':') {
        credentials.push(b':');
    }
    (
        request,
        Some(format!("Basic {}", super::base64::encode(&credentials))),
    )
}

/// An HTTP(S) client for one bundle URL.
#[derive(Clone)]
pub(crate) struct HttpFetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// The URL requested: the source's, without user-info (query kept).
    url: String,
    /// `Authorization` header from the URL's user-info.
    authorization: Option<hyper::header::HeaderValue>,
    /// Name of the cached copy (from the full URL).
    cache_name: String,
    timeout: Duration,
    max_bytes: u64,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    pub(crate) fn new(url: &str, timeout: Duration, max_bytes: u64) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let (request_url, authorization) = split_credentials(url);
        let authorization = authorization
            .and_then(|v| hyper::header::HeaderValue::from_str(&v).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        HttpFetcher {
            client,
            url: request_url,
            authorization,
            cache_name: cache_name(url),
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
        out.files.push((redact_url(&self.url), body));
        out.base_names.push(self.cache_name.clone());
        out.etag = new_etag;
        if want_signature {
            let sig_url = signature_url(&self.url);
            match self.get(&sig_url, None).await {
                Ok((sig, _)) => {
                    out.signature = Some((
                        redact_url(&sig_url),
                        String::from_utf8_lossy(&sig).into_owned(),
                    ));
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
                "GET {}: no complete answer within {:?}",
                redact_url(url),
                self.timeout
            ))),
        }
    }

    /// One GET. The body is read frame by frame through a [`Limited`] wrapper: a body over
    /// `max_bytes` is refused as soon as the limit is crossed, never buffered whole.
    async fn get_inner(
        &self,
        full_url: &str,
        etag: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let url = redact_url(full_url);
        let mut req = hyper::Request::get(full_url).header(
            "user-agent",
            concat!("wardgate/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(tag) = etag {
            req = req.header("if-none-match", tag);
        }
        if let Some(auth) = &self.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.clone());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_query_or_fragment() {
        let url = "https://deploy:hunter2@bundles.example:8443/fleet/hospital.yaml?X-Amz-Signature=abc123&X-Amz-Credential=AKIA#frag";
        let shown = redact_url(url);
        assert_eq!(shown, "https://bundles.example:8443/fleet/hospital.yaml");
        let source: BundleSource = url.parse().unwrap();
        assert_eq!(source.to_string(), shown);
        let debug = format!("{source:?}");
        for secret in ["hunter2", "deploy", "abc123", "AKIA", "frag"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(redact_url("http://h.example"), "http://h.example");
        assert_eq!(redact_url("http://u@[::1]:80?q"), "http://[::1]:80");
        assert_eq!(
            redact_url("/etc/wardgate/bundle.yaml"),
            "/etc/wardgate/bundle.yaml"
        );
        let err = "https://u:hunter2@h.example/b yaml?sig=abc123"
            .parse::<BundleSource>()
            .unwrap_err();
        assert!(!err.contains("hunter2") && !err.contains("abc123"), "{err}");
    }

    #[test]
    fn user_info_becomes_a_basic_authorization_header() {
        assert_eq!(
            split_credentials("https://deploy:p%40ss@h.example:8443/b.yaml?t=1"),
            (
                "https://h.example:8443/b.yaml?t=1".to_string(),
                Some(format!(
                    "Basic {}",
                    crate::reload::base64::encode(b"deploy:p@ss")
                ))
            )
        );
        assert_eq!(
            split_credentials("https://token@h.example/b.yaml").1,
            Some(format!(
                "Basic {}",
                crate::reload::base64::encode(b"token:")
            ))
        );
        assert_eq!(
            split_credentials("https://h.example/b.yaml?u=a@b"),
            ("https://h.example/b.yaml?u=a@b".to_string(), None)
        );
        assert_eq!(percent_decode("a%2"), b"a%2");
    }

    #[test]
    fn the_signature_url_keeps_the_query_and_the_cache_name_reveals_nothing() {
        assert_eq!(
            signature_url("https://h.example/b/hospital.yaml?token=t0k"),
            "https://h.example/b/hospital.yaml.minisig?token=t0k"
        );
        assert_eq!(
            signature_url("http://h.example/hospital.yaml"),
            "http://h.example/hospital.yaml.minisig"
        );
        let a = cache_name("https://h.example/hospital.yaml?X-Amz-Signature=one");
        let b = cache_name("https://h.example/hospital.yaml?X-Amz-Signature=two");
        assert_ne!(a, b, "the full URL decides the name");
        for name in [&a, &b] {
            assert!(is_bundle_file(name), "{name}");
            assert!(
                name.starts_with("http-") && !name.contains("Amz") && !name.contains("h.example")
            );
        }
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // A character device that never ends: refused by type, without reading.
        let err = fetch_path(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(
            matches!(&err, FetchError::Failed(m) if m.contains("/dev/zero is a character device")),
            "{err:?}"
        );
        // A FIFO nobody writes to: refused at once instead of blocking the open.
        let fifo = dir.path().join("bundle.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = fetch_path(&fifo, 1024).unwrap_err();
        assert!(
            matches!(&err, FetchError::Failed(m) if m.contains("is a FIFO (named pipe)") && m.contains("bundle.yaml")),
            "{err:?}"
        );
        // ... also as a directory entry.
        std::fs::write(dir.path().join("00-base.yaml"), "version: 1\n").unwrap();
        let err = fetch_path(dir.path(), 1024).unwrap_err();
        assert!(
            matches!(&err, FetchError::Failed(m) if m.contains("bundle.yaml is a FIFO")),
            "{err:?}"
        );
        // ... and as a signature beside a file bundle.
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, "version: 1\n").unwrap();
        let sig = dir.path().join("bundle.yaml.minisig");
        assert!(std::process::Command::new("mkfifo")
            .arg(&sig)
            .status()
            .unwrap()
            .success());
        let err = fetch_path(&fifo, 1024).unwrap_err();
        assert!(
            matches!(&err, FetchError::Failed(m) if m.contains("bundle.yaml.minisig is a FIFO")),
            "{err:?}"
        );
    }

    #[test]
    fn the_size_limit_holds_whatever_the_metadata_says() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.yaml");
        std::fs::write(&file, "x".repeat(100)).unwrap();
        let mut budget = 99;
        assert!(matches!(
            read_regular(&file, &mut budget, &mut None),
            Err(FetchError::TooLarge(_))
        ));
        let mut budget = 100;
        let mut changed = None;
        assert_eq!(
            read_regular(&file, &mut budget, &mut changed)
                .unwrap()
                .len(),
            100
        );
        let age = SystemTime::now().duration_since(changed.unwrap()).unwrap();
        assert!(age < Duration::from_secs(5), "just written: {age:?}");
        assert_eq!(budget, 0);
    }
}
