//! Hot reload: fetch, verify, compile and swap in new bundles without a restart.
//!
//! A [`Reloader`] watches one [`BundleSource`]. Every attempt runs the same pipeline: fetch the
//! bytes (file, directory or HTTP with ETag), check signatures when trusted keys are configured,
//! parse and compile on a blocking thread (never on the request path), refuse a lower revision,
//! then swap the compiled [`Policy`] into the shared handle with one `arc-swap` store. A check in
//! flight keeps the policy it loaded; the next check sees the new one.
//!
//! Whatever is refused (fetch error, size, signature, parse or validation error, rollback)
//! leaves the policy in force untouched, is logged once with its reason and is reported to the
//! [`ReloadObserver`]. This module never decides requests and never serves anything.
//!
//! Triggers: file-system events (`notify`) on the bundle's directory, a digest poll (ConfigMap
//! updates are symlink swaps that watchers can miss), SIGHUP, and for HTTP a jittered poll with
//! exponential backoff on errors.

mod signature;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use signature::{SignatureError, TrustedKeys, MANIFEST, SIG_SUFFIX};
pub use source::BundleSource;
use source::{fetch_path, FetchError, Fetched, HttpFetcher};

use crate::policy::Policy;
use crate::policy::PolicyHandle;

/// The result of one reload attempt. [`Outcome::as_str`] gives the fixed metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// A new bundle is in force.
    Swapped,
    /// Nothing changed (same bytes, HTTP 304, or same revision and digest).
    Unchanged,
    /// YAML or validation errors.
    Invalid,
    /// Missing, malformed or wrong signature, or a manifest mismatch.
    Signature,
    /// Lower revision than the one in force (or equal with other content).
    Rollback,
    /// Over the size limit.
    TooLarge,
    /// Could not read or download.
    FetchError,
}

impl Outcome {
    /// Every outcome, for pre-registering metric labels.
    pub const ALL: [Outcome; 7] = [
        Outcome::Swapped,
        Outcome::Unchanged,
        Outcome::Invalid,
        Outcome::Signature,
        Outcome::Rollback,
        Outcome::TooLarge,
        Outcome::FetchError,
    ];

    /// Stable label: `ok`, `unchanged`, `invalid`, `signature`, `rollback`, `too_large`,
    /// `fetch_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Swapped => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
            Outcome::Signature => "signature",
            Outcome::Rollback => "rollback",
            Outcome::TooLarge => "too_large",
            Outcome::FetchError => "fetch_error",
        }
    }

    /// Whether this is a refusal (something was offered and not taken).
    pub fn is_refusal(self) -> bool {
        !matches!(self, Outcome::Swapped | Outcome::Unchanged)
    }
}

/// Told about every attempt and every swap (metrics hook into this).
pub trait ReloadObserver: Send + Sync {
    /// A new bundle is in force.
    fn swapped(&self, _policy: &Policy, _source: &str, _compile_time: Duration) {}
    /// One attempt ended.
    fn attempted(&self, _outcome: Outcome) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl ReloadObserver for NoObserver {}

/// How to reload.
#[derive(Debug)]
pub struct ReloadConfig {
    /// Where the bundle lives.
    pub source: BundleSource,
    /// Poll interval (file digest poll, or HTTP poll before jitter).
    pub poll_interval: Duration,
    /// Keys a bundle must be signed with; empty = signatures not required.
    pub trusted_keys: TrustedKeys,
    /// Accept a bundle with the same revision but different content (never a lower one).
    pub allow_equal_revision: bool,
    /// Where the last good bundle is kept, to start from while the source is down.
    pub cache_dir: Option<PathBuf>,
    /// Largest bundle accepted (all files together, or the HTTP body).
    pub max_bytes: u64,
    /// Timeout of each HTTP request.
    pub http_timeout: Duration,
    /// Longest wait between HTTP retries after errors.
    pub max_backoff: Duration,
}

impl ReloadConfig {
    /// Defaults for a source: 5 s poll, 16 MiB, 10 s HTTP timeout, 5 min max backoff.
    pub fn new(source: BundleSource) -> Self {
        ReloadConfig {
            source,
            poll_interval: Duration::from_secs(5),
            trusted_keys: TrustedKeys::none(),
            allow_equal_revision: false,
            cache_dir: None,
            max_bytes: 16 * 1024 * 1024,
            http_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Follows one bundle source and keeps the handle at its latest valid version.
pub struct Reloader {
    config: ReloadConfig,
    handle: PolicyHandle,
    observer: Arc<dyn ReloadObserver>,
    http: Option<HttpFetcher>,
    etag: Option<String>,
    /// Digest of the last bytes attempted, refused or not: identical bytes are not re-judged
    /// (and not re-logged) until they change or a reload is forced.
    last_attempt: Option<[u8; 32]>,
    /// The policy replaced by the last swap, kept until the next attempt so that its (possibly
    /// large) deallocation happens here, off the request path, rather than in whichever check
    /// drops the last reference.
    retired: Option<Arc<Policy>>,
    label: &'static str,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.config.source)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

fn digest_of(f: &Fetched) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, bytes) in &f.files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    if let Some((_, sig)) = &f.signature {
        h.update(sig.as_bytes());
    }
    if let Some((m, sig)) = &f.manifest {
        h.update(m);
        h.update(sig.as_deref().unwrap_or("").as_bytes());
    }
    h.finalize().into()
}

impl Reloader {
    /// A reloader for `config` that stores into `handle`. `label` names it in logs
    /// (`"bundle"`, or `"shadow bundle"`).
    pub fn new(
        config: ReloadConfig,
        handle: PolicyHandle,
        observer: Arc<dyn ReloadObserver>,
        label: &'static str,
    ) -> Self {
        let http = match &config.source {
            BundleSource::Http(url) => {
                Some(HttpFetcher::new(url, config.http_timeout, config.max_bytes))
            }
            BundleSource::Path(_) => None,
        };
        Reloader {
            config,
            handle,
            observer,
            http,
            etag: None,
            last_attempt: None,
            retired: None,
            label,
        }
    }

    /// One attempt; `force` re-judges identical bytes (SIGHUP).
    pub async fn reload(&mut self, force: bool) -> Outcome {
        if let Some(old) = self.retired.take() {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        let source = self.config.source.to_string();
        let fetched = match &self.config.source {
            BundleSource::Path(p) => read_path(p.clone(), self.config.max_bytes).await,
            BundleSource::Http(_) => match &self.http {
                Some(h) => {
                    let etag = if force { None } else { self.etag.as_deref() };
                    h.fetch(etag, self.config.trusted_keys.required()).await
                }
                None => Err(FetchError::Failed("no HTTP client".into())),
            },
        };
        let outcome = match fetched {
            Err(FetchError::NotModified) => Outcome::Unchanged,
            Err(e) => self.refuse(e.outcome(), &source, &e.to_string()),
            Ok(f) => {
                let digest = digest_of(&f);
                if !force && self.last_attempt == Some(digest) {
                    Outcome::Unchanged
                } else {
                    self.last_attempt = Some(digest);
                    let etag = f.etag.clone();
                    let outcome = self.judge(f, &source, true).await;
                    if outcome == Outcome::Swapped || outcome == Outcome::Unchanged {
                        self.etag = etag;
                    }
                    outcome
                }
            }
        };
        self.observer.attempted(outcome);
        outcome
    }

    fn refuse(&self, outcome: Outcome, source: &str, why: &str) -> Outcome {
        let current = self.handle.load().as_ref().map(|p| p.revision());
        match current {
            Some(rev) => tracing::warn!(
                source,
                outcome = outcome.as_str(),
                "{} refused, revision {rev} stays in force: {why}",
                self.label
            ),
            None => tracing::warn!(
                source,
                outcome = outcome.as_str(),
                "{} refused, no bundle in force (every check is denied with no_policy): {why}",
                self.label
            ),
        }
        outcome
    }

    /// Verify, compile, check revision, swap.
    /// `cache`: keep a copy in the cache directory once swapped in (not when the bundle came
    /// from that cache).
    async fn judge(&mut self, f: Fetched, source: &str, cache: bool) -> Outcome {
        if let Err(e) = self.verify(&f) {
            return self.refuse(Outcome::Signature, source, &e.to_string());
        }
        let files: Result<Vec<(String, String)>, String> = f
            .files
            .iter()
            .map(|(name, bytes)| {
                String::from_utf8(bytes.clone())
                    .map(|t| (name.clone(), t))
                    .map_err(|_| format!("{name}: not valid UTF-8"))
            })
            .collect();
        let files = match files {
            Ok(files) => files,
            Err(e) => return self.refuse(Outcome::Invalid, source, &e),
        };
        let started = Instant::now();
        let compiled = tokio::task::spawn_blocking(move || Policy::from_sources(&files)).await;
        let compile_time = started.elapsed();
        let policy = match compiled {
            Ok(Ok(p)) => p,
            Ok(Err(diags)) => {
                let text = diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return self.refuse(Outcome::Invalid, source, &text);
            }
            Err(e) => {
                return self.refuse(
                    Outcome::Invalid,
                    source,
                    &format!("compiler task failed: {e}"),
                )
            }
        };
        if let Some(current) = self.handle.load_full() {
            if policy.revision() < current.revision() {
                return self.refuse(
                    Outcome::Rollback,
                    source,
                    &format!(
                        "revision {} is lower than {} (rollback protection)",
                        policy.revision(),
                        current.revision()
                    ),
                );
            }
            if policy.revision() == current.revision() {
                if policy.digest() == current.digest() {
                    return Outcome::Unchanged;
                }
                if !self.config.allow_equal_revision {
                    return self.refuse(
                        Outcome::Rollback,
                        source,
                        &format!(
                            "revision {} is already in force with other content ({}); raise the revision (or start with --allow-equal-revision)",
                            policy.revision(),
                            current.digest()
                        ),
                    );
                }
            }
        }
        let policy = Arc::new(policy);
        self.retired = self.handle.swap(Some(Arc::clone(&policy)));
        tracing::info!(
            source,
            revision = policy.revision(),
            digest = policy.digest(),
            rules = policy.rule_count(),
            compile_ms = compile_time.as_secs_f64() * 1e3,
            "{} swapped in",
            self.label
        );
        self.observer.swapped(&policy, source, compile_time);
        if let Some(dir) = self.config.cache_dir.as_ref().filter(|_| cache) {
            if let Err(e) = write_cache(dir, &f) {
                tracing::warn!(cache = %dir.display(), "cannot cache the bundle: {e}");
            }
        }
        Outcome::Swapped
    }

    fn verify(&self, f: &Fetched) -> Result<(), SignatureError> {
        let keys = &self.config.trusted_keys;
        if !keys.required() {
            return Ok(());
        }
        if f.is_dir {
            let Some((manifest, sig)) = &f.manifest else {
                return Err(SignatureError::NoManifest);
            };
            let Some(sig) = sig else {
                return Err(SignatureError::Missing(format!("{MANIFEST}{SIG_SUFFIX}")));
            };
            let files: Vec<(String, Vec<u8>)> = f
                .base_names
                .iter()
                .cloned()
                .zip(f.files.iter().map(|(_, b)| b.clone()))
                .collect();
            keys.verify_manifest(manifest, sig, &files)
        } else {
            let name = f.files.first().map(|(n, _)| n.as_str()).unwrap_or("bundle");
            let Some((sig_name, sig)) = &f.signature else {
                return Err(SignatureError::Missing(format!("{name}{SIG_SUFFIX}")));
            };
            let content = f
                .files
                .first()
                .map(|(_, b)| b.as_slice())
                .unwrap_or_default();
            keys.verify(content, sig_name, sig)
        }
    }

    /// At start: load from the source; if that yields no policy and a cache is configured,
    /// load the cached last good bundle (verified the same way).
    pub async fn initial_load(&mut self) -> Outcome {
        let outcome = self.reload(true).await;
        if self.handle.load().is_some() {
            return outcome;
        }
        let Some(cache) = self.config.cache_dir.clone() else {
            return outcome;
        };
        let cached = cache.join("current");
        if !cached.exists() {
            return outcome;
        }
        let path = match std::fs::read_dir(&cached) {
            Ok(entries) => {
                let files: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                let yaml: Vec<&PathBuf> = files
                    .iter()
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(source::is_bundle_file)
                    })
                    .collect();
                // A single cached file with its own signature is read as a file bundle.
                if yaml.len() == 1 && !cached.join(MANIFEST).exists() {
                    yaml[0].clone()
                } else {
                    cached.clone()
                }
            }
            Err(_) => return outcome,
        };
        let cache_source = path.display().to_string();
        let cached_outcome = match read_path(path, self.config.max_bytes).await {
            Ok(f) => self.judge(f, &cache_source, false).await,
            Err(e) => self.refuse(e.outcome(), &cache_source, &e.to_string()),
        };
        self.observer.attempted(cached_outcome);
        if cached_outcome == Outcome::Swapped {
            tracing::warn!(
                cache = %cache.display(),
                source = %self.config.source,
                "{} source unavailable: serving the cached last good bundle until it answers",
                self.label
            );
        }
        outcome
    }

    /// Follow the source until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (tx, mut fs_events) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = match &self.config.source {
            BundleSource::Path(p) => watch(p, tx),
            BundleSource::Http(_) => None,
        };
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut failures = 0u32;
        loop {
            let delay = self.next_delay(failures);
            let force = tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => false,
                Some(()) = fs_events.recv() => {
                    // Let a burst of events (editor save, ConfigMap swap) settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while fs_events.try_recv().is_ok() {}
                    false
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(source = %self.config.source, "SIGHUP: reloading the {}", self.label);
                    true
                }
            };
            let outcome = self.reload(force).await;
            failures = if outcome == Outcome::FetchError {
                failures.saturating_add(1)
            } else {
                0
            };
        }
    }

    /// Poll interval, doubled per consecutive fetch failure up to the max backoff; HTTP polls
    /// are jittered by ±20% so a fleet does not hit the bundle server in lockstep.
    fn next_delay(&self, failures: u32) -> Duration {
        let base = self.config.poll_interval;
        let backed = base
            .checked_mul(1u32 << failures.min(16))
            .unwrap_or(self.config.max_backoff)
            .min(self.config.max_backoff.max(base));
        match self.config.source {
            BundleSource::Http(_) => backed.mul_f64(0.8 + 0.4 * fastrand::f64()),
            BundleSource::Path(_) => backed,
        }
    }
}

/// Read a file or directory bundle on a blocking thread.
async fn read_path(path: PathBuf, max_bytes: u64) -> Result<Fetched, FetchError> {
    match tokio::task::spawn_blocking(move || fetch_path(&path, max_bytes)).await {
        Ok(r) => r,
        Err(e) => Err(FetchError::Failed(format!("reader task failed: {e}"))),
    }
}

/// Watch the bundle's directory (for a file: its parent, so symlink swaps are seen).
fn watch(path: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    crate::watch::watch_dirs(&[dir], tx)
}

/// Replace `dir/current` with this bundle's files and signatures (write aside, then rename).
fn write_cache(dir: &Path, f: &Fetched) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let next = dir.join(format!(".next-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next)?;
    for (base, (_, bytes)) in f.base_names.iter().zip(&f.files) {
        let base = if source::is_bundle_file(base) {
            base.clone()
        } else {
            format!("{base}.yaml")
        };
        std::fs::write(next.join(&base), bytes)?;
        if let Some((_, sig)) = &f.signature {
            std::fs::write(next.join(format!("{base}{SIG_SUFFIX}")), sig)?;
        }
    }
    if let Some((manifest, sig)) = &f.manifest {
        std::fs::write(next.join(MANIFEST), manifest)?;
        if let Some(sig) = sig {
            std::fs::write(next.join(format!("{MANIFEST}{SIG_SUFFIX}")), sig)?;
        }
    }
    let current = dir.join("current");
    let old = dir.join(format!(".old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    if current.exists() {
        std::fs::rename(&current, &old)?;
    }
    std::fs::rename(&next, &current)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
