//! Hot reload: fetch, verify, compile and swap in new bundles without a restart.
//!
//! A [`Reloader`] watches one [`BundleSource`]. Every attempt runs the same pipeline: fetch the
//! bytes (file, directory, HTTP with ETag, or an OCI registry polled by manifest digest), check signatures when trusted keys are configured,
//! parse and compile on a blocking thread (never on the request path), refuse a lower revision,
//! then swap the compiled [`Policy`] into the shared handle with one `arc-swap` store. A check in
//! flight keeps the policy it loaded; the next check sees the new one.
//!
//! File and directory bundles are taken only once they have settled (see [`settle`]), so a
//! bundle rewritten in place is not read half-written; a bundle with the revision in force but
//! other content that arrives within [`ReloadConfig::rewrite_grace`] of that revision going in
//! is taken as the rest of such a write (unsigned bundles only: a truncated signed bundle fails
//! its signature).
//!
//! Whatever is refused (fetch error, size, signature, parse or validation error, rollback)
//! leaves the policy in force untouched, is logged with its reason and is reported to the
//! [`ReloadObserver`]. The same bytes offered again are refused again, without being compiled
//! again: every poll reports the refusal until different bytes arrive, so a bundle that stays
//! broken keeps the failure metrics up. Refused HTTP bundles back off like fetch errors. With a
//! cache directory ([`cache`]), the highest revision ever enforced survives restarts, and a
//! source whose bundle is refused at start for any reason falls back to the cached one. This
//! module never decides requests and never serves anything.
//!
//! Triggers: file-system events (`notify`, content changes of the bundle's own files only) on
//! the bundle's directory, a digest poll (ConfigMap updates are symlink swaps that watchers can
//! miss), SIGHUP, and for HTTP a jittered poll with exponential backoff on errors and refusals.
//! An idle file source costs one read per poll.

mod base64;
mod cache;
pub mod oci;
mod settle;
mod signature;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use settle::{digest_of, read_path, settled};
pub use signature::{SignatureError, TrustedKeys, MANIFEST, SIG_SUFFIX};
pub use source::{redact_url, BundleSource};
use source::{FetchError, Fetched, HttpFetcher};

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
    /// YAML or validation errors, or an OCI artifact that is not a wardgate bundle.
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
    /// One attempt ended. Bytes refused before and offered again are reported again with the
    /// same refusal (never as [`Outcome::Unchanged`]).
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
    /// Where the last good bundle is kept, to start from while the source is down, with the
    /// highest revision ever enforced.
    pub cache_dir: Option<PathBuf>,
    /// Largest bundle accepted (all files together, or the HTTP body).
    pub max_bytes: u64,
    /// Timeout of each HTTP request.
    pub http_timeout: Duration,
    /// Longest wait between HTTP retries after errors.
    pub max_backoff: Duration,
    /// File and directory sources: new bytes are taken only when a second read this long after
    /// the first gives the same content (default 1 s, longer than the pauses of a writer that
    /// rewrites a file in place). Zero takes every read as it is: only for sources that are
    /// always replaced atomically.
    pub settle: Duration,
    /// Unsigned bundles: within this long (default 60 s) of a revision going into force, a
    /// bundle with the same revision and other content replaces it, as the rest of a write that
    /// was caught midway. Later, it is refused like any other equal revision.
    pub rewrite_grace: Duration,
    /// The compile budget a bundle from this source must fit (`--max-compile-work`,
    /// `--max-compile-memory`); one over it is refused like any invalid bundle.
    pub compile_limits: crate::policy::CompileLimits,
}

impl ReloadConfig {
    /// Defaults for a source: 5 s poll, 16 MiB, 10 s HTTP timeout, 5 min max backoff, 1 s
    /// settle interval, 60 s rewrite grace.
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
            settle: Duration::from_secs(1),
            rewrite_grace: Duration::from_secs(60),
            compile_limits: crate::policy::CompileLimits::default(),
        }
    }
}

/// How often a refusal that persists (the same bytes, refused at every poll) is logged again
/// at `warn`; in between, repeats are logged at `debug`.
const REMIND_EVERY: Duration = Duration::from_secs(600);

/// Install wardgate's SIGHUP handler for the rest of the process and return the stream of
/// SIGHUPs. From the first call on, a SIGHUP never terminates the process (Tokio keeps the
/// handler installed even after the stream is dropped). [`Reloader::new`] calls it, so a SIGHUP
/// during the first load is caught; `serve` should call it before any other work, so that a
/// SIGHUP with no bundle source to follow is harmless too. `None` outside a Tokio runtime or
/// when the OS refuses.
pub fn catch_hangup() -> Option<tokio::signal::unix::Signal> {
    tokio::runtime::Handle::try_current().ok()?;
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP (it would stop the process): {e}");
            None
        }
    }
}

/// What the last bytes offered came to.
#[derive(Debug)]
struct LastAttempt {
    digest: [u8; 32],
    outcome: Outcome,
    /// The refusal's reason, repeated in reminders.
    why: String,
    /// When the refusal was last logged at `warn`.
    warned: Instant,
}

/// How freed heap memory goes back to the operating system, installed by the binary.
static MEMORY_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Install `release` as the way to give freed heap memory back to the operating system (the
/// `wardgate` binary installs glibc's `malloc_trim`; this library holds no unsafe code). Only the
/// first call counts.
pub fn set_memory_release(release: fn()) {
    let _ = MEMORY_RELEASE.set(release);
}

/// Give the heap memory freed since the last call back to the operating system, if a way to do
/// so was installed ([`set_memory_release`]).
///
/// Compiling a bundle allocates several times the compiled policy's size (the YAML text, the
/// parse tree, validation scratch) and frees it again; glibc's allocator keeps such freed pages
/// resident unless asked, so a sidecar would keep the peak of its last compile for good
/// (docs/performance.md, "Fleet scale"). Called after every compile and swap.
pub fn release_freed_memory() {
    if let Some(release) = MEMORY_RELEASE.get() {
        release();
    }
}

/// Follows one bundle source and keeps the handle at its latest valid version.
pub struct Reloader {
    config: ReloadConfig,
    handle: PolicyHandle,
    observer: Arc<dyn ReloadObserver>,
    http: Option<HttpFetcher>,
    oci: Option<Result<oci::OciFetcher, String>>,
    /// HTTP: the ETag of the bundle in force; OCI: its manifest digest.
    etag: Option<String>,
    /// The last bytes judged and what they came to: identical bytes are not judged (nor logged)
    /// again, but a refusal is reported again, until they change or a reload is forced.
    last: Option<LastAttempt>,
    /// The reason of the refusal being made (see [`Reloader::refuse`]).
    last_why: String,
    /// The policy replaced by the last swap, kept until the next attempt so that its (possibly
    /// large) deallocation happens here, off the request path, rather than in whichever check drops
    /// the last reference.
    retired: Option<Arc<Policy>>,
    label: &'static str,
    /// SIGHUPs, listened to from construction on.
    hangup: Option<tokio::signal::unix::Signal>,
    /// The highest revision enforced before (recorded in the cache directory; 0 without one).
    floor: u64,
    /// The revision in force and when it first went in (for the rewrite grace).
    revision_since: Option<(u64, Instant)>,
    /// Source bytes on which [`cache::CRASH_LIMIT`] processes died compiling: not compiled again
    /// until they change or SIGHUP asks.
    crashed_on: Option<[u8; 32]>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.config.source)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for `config` that stores into `handle`. `label` names it in logs
    /// (`"bundle"`, or `"shadow bundle"`). Inside a Tokio runtime it starts listening for
    /// SIGHUP at once (see [`catch_hangup`]).
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
            _ => None,
        };
        let oci = match &config.source {
            BundleSource::Oci(text) => Some(oci::OciFetcher::new(
                text,
                config.http_timeout,
                config.max_bytes,
            )),
            _ => None,
        };
        Reloader {
            config,
            handle,
            observer,
            http,
            oci,
            etag: None,
            last: None,
            last_why: String::new(),
            retired: None,
            label,
            hangup: catch_hangup(),
            floor: 0,
            revision_since: None,
            crashed_on: None,
        }
    }

    /// One attempt; `force` re-judges identical bytes, including bytes a crashed process left
    /// behind (SIGHUP).
    pub async fn reload(&mut self, force: bool) -> Outcome {
        if force {
            self.crashed_on = None;
        }
        let outcome = self.attempt(force).await;
        self.observer.attempted(outcome);
        outcome
    }

    /// Fetch, settle, judge; not reported to the observer.
    async fn attempt(&mut self, force: bool) -> Outcome {
        if let Some(old) = self.retired.take() {
            let _ = tokio::task::spawn_blocking(move || {
                drop(old);
                release_freed_memory();
            })
            .await;
        }
        self.last_why.clear();
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
            BundleSource::Oci(_) => match &mut self.oci {
                Some(Ok(o)) => {
                    let accepted = if force { None } else { self.etag.as_deref() };
                    o.fetch(accepted, force).await
                }
                Some(Err(e)) => Err(FetchError::Failed(e.clone())),
                None => Err(FetchError::Failed("no OCI client".into())),
            },
        };
        let mut f = match fetched {
            Ok(f) => f,
            Err(e) => return self.fetch_failed(e, &source),
        };
        let mut digest = digest_of(&f);
        if let Some(repeat) = self.repeat(&digest, force, &source) {
            return repeat;
        }
        let known = self.last.as_ref().is_some_and(|l| l.digest == digest);
        if let (BundleSource::Path(p), false) = (&self.config.source, known) {
            f = match settled(p, self.config.max_bytes, self.config.settle, f).await {
                Ok(f) => f,
                Err(e) => return self.fetch_failed(e, &source),
            };
            digest = digest_of(&f);
            if let Some(repeat) = self.repeat(&digest, force, &source) {
                return repeat;
            }
        }
        let outcome = if self.crashed_on == Some(digest) {
            self.refuse(
                Outcome::TooLarge,
                &source,
                &format!(
                    "the last {} wardgate processes stopped while compiling exactly these bytes \
                     (killed, most likely over a memory limit); they are not compiled again until \
                     the bundle changes or SIGHUP asks",
                    cache::CRASH_LIMIT
                ),
            )
        } else {
            let etag = f.etag.clone();
            let outcome = self.judge(f, &source, Some(digest)).await;
            if !outcome.is_refusal() {
                self.etag = etag;
            }
            outcome
        };
        self.last = Some(LastAttempt {
            digest,
            outcome,
            why: std::mem::take(&mut self.last_why),
            warned: Instant::now(),
        });
        outcome
    }

    /// What a fetch error counts as.
    fn fetch_failed(&mut self, e: FetchError, source: &str) -> Outcome {
        match e.outcome() {
            Outcome::Unchanged => Outcome::Unchanged,
            outcome => self.refuse(outcome, source, &e.to_string()),
        }
    }

    /// The bytes with `digest` were judged last time: their outcome again (a refusal stays a
    /// refusal; what went in is unchanged), without judging or logging them again, unless
    /// `force`.
    fn repeat(&mut self, digest: &[u8; 32], force: bool, source: &str) -> Option<Outcome> {
        let last = self
            .last
            .as_mut()
            .filter(|l| !force && l.digest == *digest)?;
        if !last.outcome.is_refusal() {
            return Some(Outcome::Unchanged);
        }
        if last.warned.elapsed() >= REMIND_EVERY {
            last.warned = Instant::now();
            tracing::warn!(
                source,
                outcome = last.outcome.as_str(),
                "{} still refused (the same bytes are offered): {}",
                self.label,
                last.why
            );
        } else {
            tracing::debug!(
                source,
                outcome = last.outcome.as_str(),
                "{} still refused (the same bytes are offered)",
                self.label
            );
        }
        Some(last.outcome)
    }

    fn refuse(&mut self, outcome: Outcome, source: &str, why: &str) -> Outcome {
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
        self.last_why = why.to_string();
        outcome
    }

    /// Verify, compile, check revision, swap.
    /// `from_source`: the digest of bytes from the source (marked while compiled and cached once
    /// swapped in); `None` for bytes from the cache itself.
    async fn judge(&mut self, f: Fetched, source: &str, from_source: Option<[u8; 32]>) -> Outcome {
        if let Err(e) = signature::verify_fetched(&self.config.trusted_keys, &f) {
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
        let mark = match (&self.config.cache_dir, from_source) {
            (Some(dir), Some(digest)) => self.mark_judging(dir, &digest),
            _ => None,
        };
        let started = Instant::now();
        let limits = self.config.compile_limits;
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled = Policy::from_sources_within(&files, limits);
            let compile_time = started.elapsed();
            drop(files);
            // The parse tree and the text are freed by now; give their pages back (not counted
            // as compile time).
            release_freed_memory();
            (compiled, compile_time)
        })
        .await;
        let (compiled, compile_time) = match compiled {
            Ok((c, t)) => (Ok(c), t),
            Err(e) => (Err(e), started.elapsed()),
        };
        drop(mark);
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
        if let Some(refusal) = self.check_revision(&policy, source) {
            return refusal;
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
        // Observers rebuild their per-rule state on a swap; what that freed goes back too.
        let _ = tokio::task::spawn_blocking(release_freed_memory).await;
        // The rewrite grace covers what the source itself put in force, not the cached copy.
        if from_source.is_some() && self.revision_since.map(|(r, _)| r) != Some(policy.revision()) {
            self.revision_since = Some((policy.revision(), Instant::now()));
        }
        if let Some(dir) = &self.config.cache_dir {
            if from_source.is_some() {
                if let Err(e) = cache::store_bundle(dir, &f) {
                    tracing::warn!(cache = %dir.display(), "cannot cache the bundle: {e}");
                }
            }
            if policy.revision() > self.floor {
                self.floor = policy.revision();
                if let Err(e) = cache::record_highest_revision(dir, self.floor) {
                    tracing::warn!(cache = %dir.display(), "cannot record the highest revision enforced: {e}");
                }
            }
        }
        Outcome::Swapped
    }

    /// Mark `digest` as being compiled, counting the processes that died on it before.
    fn mark_judging(&self, dir: &Path, digest: &[u8; 32]) -> Option<cache::JudgingMark> {
        let attempt = match cache::unfinished_judgement(dir) {
            Some((d, n)) if d == *digest => n.saturating_add(1),
            _ => 1,
        };
        match cache::JudgingMark::set(dir, digest, attempt) {
            Ok(mark) => Some(mark),
            Err(e) => {
                tracing::warn!(cache = %dir.display(), "cannot mark the bundle being compiled: {e}");
                None
            }
        }
    }

    /// Rollback protection: `None` when `policy` may replace the one in force, else the refusal.
    fn check_revision(&mut self, policy: &Policy, source: &str) -> Option<Outcome> {
        let current = self.handle.load_full();
        let in_force = current.as_ref().map_or(0, |p| p.revision());
        if policy.revision() < in_force {
            return Some(self.refuse(
                Outcome::Rollback,
                source,
                &format!(
                    "revision {} is lower than {in_force} (rollback protection)",
                    policy.revision()
                ),
            ));
        }
        if policy.revision() < self.floor {
            let record = self
                .config
                .cache_dir
                .as_deref()
                .map(cache::highest_revision_path)
                .unwrap_or_default();
            return Some(self.refuse(
                Outcome::Rollback,
                source,
                &format!(
                    "revision {} is lower than {}, the highest revision enforced here before \
                     (rollback protection; recorded in {}, remove that file to start a new \
                     revision sequence)",
                    policy.revision(),
                    self.floor,
                    record.display()
                ),
            ));
        }
        let current = current.filter(|c| c.revision() == policy.revision())?;
        if policy.digest() == current.digest() {
            return Some(Outcome::Unchanged);
        }
        if self.config.allow_equal_revision {
            return None;
        }
        let grace = self.config.rewrite_grace;
        let since = self
            .revision_since
            .filter(|(r, _)| *r == policy.revision())
            .map(|(_, t)| t.elapsed());
        match since {
            Some(age) if age <= grace && !self.config.trusted_keys.required() => {
                tracing::warn!(
                    source,
                    revision = policy.revision(),
                    "{} revision {} changed content {:.1} s after it went into force: taken as the \
                     rest of a write that was read midway (write bundles aside and rename them into place)",
                    self.label,
                    policy.revision(),
                    age.as_secs_f64()
                );
                None
            }
            _ => Some(self.refuse(
                Outcome::Rollback,
                source,
                &format!(
                    "revision {} is already in force with other content ({}); raise the revision (or start with --allow-equal-revision)",
                    policy.revision(),
                    current.digest()
                ),
            )),
        }
    }

    /// At start: read what the cache directory remembers (the highest revision enforced, bytes
    /// that crashed earlier processes), load from the source, and if that leaves no policy in
    /// force, whatever the reason (unreachable, refused, over a limit), load the cached last
    /// good bundle (verified and checked the same way).
    pub async fn initial_load(&mut self) -> Outcome {
        if let Some(dir) = self.config.cache_dir.clone() {
            self.recall(&dir);
        }
        let outcome = self.attempt(true).await;
        self.observer.attempted(outcome);
        if self.handle.load().is_some() {
            return outcome;
        }
        let Some(dir) = self.config.cache_dir.clone() else {
            return outcome;
        };
        let Some(path) = cache::stored_bundle(&dir) else {
            return outcome;
        };
        let cache_source = path.display().to_string();
        let cached_outcome = match read_path(path, self.config.max_bytes).await {
            Ok(f) => self.judge(f, &cache_source, None).await,
            Err(e) => self.fetch_failed(e, &cache_source),
        };
        self.observer.attempted(cached_outcome);
        if cached_outcome == Outcome::Swapped {
            tracing::warn!(
                cache = %dir.display(),
                source = %self.config.source,
                "{} source unavailable or refused: serving the cached last good bundle until it offers a valid one",
                self.label
            );
        }
        outcome
    }

    /// Read the highest revision enforced before and the bytes earlier processes died on.
    fn recall(&mut self, dir: &Path) {
        match cache::highest_revision(dir) {
            Ok(Some(rev)) => {
                self.floor = rev;
                tracing::info!(
                    cache = %dir.display(),
                    "{}: revision {rev} was enforced here before; lower revisions are refused",
                    self.label
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(
                "{}: the highest revision enforced before is unreadable, rollback protection starts from the first bundle loaded: {e}",
                self.label
            ),
        }
        if let Some((digest, crashes)) = cache::unfinished_judgement(dir) {
            if crashes >= cache::CRASH_LIMIT {
                self.crashed_on = Some(digest);
            }
            tracing::error!(
                cache = %dir.display(),
                "{}: {crashes} earlier process(es) stopped while compiling a bundle from the source{}",
                self.label,
                if crashes >= cache::CRASH_LIMIT {
                    ": those bytes are not compiled again until they change (or SIGHUP asks)"
                } else {
                    ""
                }
            );
        }
    }

    /// Follow the source until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (tx, mut fs_events) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = match &self.config.source {
            BundleSource::Path(p) => source::watch(p, tx),
            BundleSource::Http(_) | BundleSource::Oci(_) => None,
        };
        let mut hangup = self.hangup.take();
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
            let outcome = tokio::select! {
                _ = &mut shutdown => return,
                outcome = self.reload(force) => outcome,
            };
            failures = if self.backs_off(outcome) {
                failures.saturating_add(1)
            } else {
                0
            };
        }
    }

    /// Whether this outcome lengthens the next wait: fetch errors always; for HTTP and OCI,
    /// every refusal (a server that keeps offering a bad bundle is not asked at every poll).
    fn backs_off(&self, outcome: Outcome) -> bool {
        match self.config.source {
            BundleSource::Http(_) | BundleSource::Oci(_) => outcome.is_refusal(),
            BundleSource::Path(_) => outcome == Outcome::FetchError,
        }
    }

    /// Poll interval, doubled per consecutive failure up to the max backoff; HTTP and OCI polls
    /// are jittered by ±20% so a fleet does not hit the bundle server in lockstep.
    fn next_delay(&self, failures: u32) -> Duration {
        let base = self.config.poll_interval;
        let backed = base
            .checked_mul(1u32 << failures.min(16))
            .unwrap_or(self.config.max_backoff)
            .min(self.config.max_backoff.max(base));
        match self.config.source {
            BundleSource::Http(_) | BundleSource::Oci(_) => {
                backed.mul_f64(0.8 + 0.4 * fastrand::f64())
            }
            BundleSource::Path(_) => backed,
        }
    }
}

#[cfg(test)]
mod tests;
