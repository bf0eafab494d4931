//! Hot reload through the library API: every refusal leaves the policy in force untouched, a
//! valid newer bundle is swapped in, and the HTTP source behaves against a real local HTTP server
//! (ETag / 304, HTTP 500, timeouts, size limit, a server that goes away and comes back).
//!
//! The hardening of issue 12 is tested in the modules below: bundles rewritten in place
//! (`settle`), refusals that persist and idle sources (`refusals`), restarts (`restart`),
//! secrets in HTTP source URLs and endless bodies (`http`), SIGHUP (`signals`).

#[path = "reload/http.rs"]
mod http;
#[path = "reload/refusals.rs"]
mod refusals;
#[path = "reload/restart.rs"]
mod restart;
#[path = "reload/settle.rs"]
mod settle;
#[path = "reload/signals.rs"]
mod signals;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use wardgate::policy::PolicyHandle;
use wardgate::reload::{BundleSource, NoObserver, Outcome, ReloadConfig, Reloader, TrustedKeys};

fn bundle(revision: u64, extra_rule: bool) -> String {
    let mut y = format!(
        "version: 1\nrevision: {revision}\ntrust_domains: [td.example]\nsegments:\n  a:\n    members: [\"spiffe://td.example/a/**\"]\nrules:\n  - name: base\n    from: [a]\n    paths: [\"/base\"]\n"
    );
    if extra_rule {
        y.push_str("  - name: extra\n    from: [a]\n    paths: [\"/extra\"]\n");
    }
    y
}

fn handle() -> PolicyHandle {
    Arc::new(ArcSwapOption::empty())
}

fn revision(h: &PolicyHandle) -> Option<u64> {
    h.load().as_ref().map(|p| p.revision())
}

fn file_reloader(path: &Path, h: &PolicyHandle, keys: TrustedKeys) -> Reloader {
    file_reloader_with(path, h, keys, |_| {})
}

/// A file reloader; the tests write each version completely before calling `reload()`, so a
/// short settle interval keeps them fast (the default is exercised in `settle`).
fn file_reloader_with(
    path: &Path,
    h: &PolicyHandle,
    keys: TrustedKeys,
    tweak: impl FnOnce(&mut ReloadConfig),
) -> Reloader {
    let mut cfg = ReloadConfig::new(BundleSource::Path(path.to_path_buf()));
    cfg.trusted_keys = keys;
    cfg.settle = Duration::from_millis(20);
    tweak(&mut cfg);
    Reloader::new(cfg, Arc::clone(h), Arc::new(NoObserver), "bundle")
}

fn rule_names(h: &PolicyHandle) -> Vec<String> {
    h.load()
        .as_ref()
        .map(|p| p.rule_names().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Run `r` in the background; the returned sender stops it.
fn follow(
    r: Reloader,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(r.run(async {
        let _ = stop_rx.await;
    }));
    (stop_tx, task)
}

/// Poll `done` every 10 ms for up to `limit`; whether it became true.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A policy as a witness saw it: its revision and rule names.
type Seen = (u64, Vec<String>);

/// Every policy a handle held, as (revision, rule names), sampled every millisecond from its own
/// task: what a check arriving at that moment would have been decided by.
struct Witness {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Witness {
    fn start(h: &PolicyHandle) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, log, halt) = (Arc::clone(h), Arc::clone(&seen), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut last: Option<Arc<wardgate::policy::Policy>> = None;
            while !halt.load(Ordering::SeqCst) {
                let now = h.load_full();
                let changed = match (&last, &now) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    (None, None) => false,
                    _ => true,
                };
                if changed {
                    if let Some(p) = &now {
                        let names = p.rule_names().map(str::to_string).collect();
                        log.lock().expect("lock").push((p.revision(), names));
                    }
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Witness { seen, stop, task }
    }

    async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let seen = self.seen.lock().expect("lock").clone();
        seen
    }
}

/// An observer that records every outcome and the source named at every swap.
#[derive(Default)]
struct Recorder {
    outcomes: Mutex<Vec<Outcome>>,
    sources: Mutex<Vec<String>>,
}

impl wardgate::reload::ReloadObserver for Recorder {
    fn swapped(&self, _policy: &wardgate::policy::Policy, source: &str, _compile_time: Duration) {
        self.sources.lock().expect("lock").push(source.to_string());
    }
    fn attempted(&self, outcome: Outcome) {
        self.outcomes.lock().expect("lock").push(outcome);
    }
}

impl Recorder {
    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("lock").clone()
    }
}

fn keypair() -> (minisign::KeyPair, TrustedKeys) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
    let mut keys = TrustedKeys::none();
    keys.add(&kp.pk.to_base64()).expect("public key");
    (kp, keys)
}

fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
    minisign::sign(Some(&kp.pk), &kp.sk, std::io::Cursor::new(data), None, None)
        .expect("sign")
        .into_string()
}

#[tokio::test]
async fn every_refusal_keeps_the_policy_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let h = handle();
    std::fs::write(&file, bundle(5, false)).expect("write");
    // No rewrite grace: an equal revision with other content is refused at once (within the
    // grace it would be taken as the rest of a write; see `settle`).
    let mut r = file_reloader_with(&file, &h, TrustedKeys::none(), |c| {
        c.rewrite_grace = Duration::ZERO
    });
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(5));

    // Identical bytes: unchanged, nothing re-judged.
    assert_eq!(r.reload(false).await, Outcome::Unchanged);

    // Bad YAML.
    std::fs::write(&file, "version: 1\nrules: [\n").expect("write");
    assert_eq!(r.reload(false).await, Outcome::Invalid);
    assert_eq!(revision(&h), Some(5));

    // Valid YAML, invalid bundle.
    std::fs::write(
        &file,
        bundle(6, false).replace("from: [a]", "from: [nowhere]"),
    )
    .expect("write");
    assert_eq!(r.reload(false).await, Outcome::Invalid);
    assert_eq!(revision(&h), Some(5));

    // Lower revision.
    std::fs::write(&file, bundle(4, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert_eq!(revision(&h), Some(5));

    // Same revision, other content.
    std::fs::write(&file, bundle(5, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Rollback);
    assert_eq!(revision(&h), Some(5));

    // Gone.
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(r.reload(false).await, Outcome::FetchError);
    assert_eq!(revision(&h), Some(5));

    // Too large.
    std::fs::write(
        &file,
        format!("{}# {}\n", bundle(7, false), "x".repeat(20 * 1024 * 1024)),
    )
    .expect("write");
    assert_eq!(r.reload(false).await, Outcome::TooLarge);
    assert_eq!(revision(&h), Some(5));

    // And a good newer one goes in; the policy really changed.
    std::fs::write(&file, bundle(7, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(7));
    let p = h.load_full().expect("policy");
    assert!(p.rule_names().any(|n| n == "extra"));
}

#[tokio::test]
async fn equal_revision_is_accepted_only_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let h = handle();
    std::fs::write(&file, bundle(5, false)).expect("write");
    let mut cfg = ReloadConfig::new(BundleSource::Path(file.clone()));
    cfg.allow_equal_revision = true;
    cfg.settle = Duration::from_millis(20);
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    std::fs::write(&file, bundle(5, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    std::fs::write(&file, bundle(4, false)).expect("write");
    assert_eq!(
        r.reload(false).await,
        Outcome::Rollback,
        "never a lower revision"
    );
}

#[tokio::test]
async fn signed_file_bundles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bundle.yaml");
    let sig = dir.path().join("bundle.yaml.minisig");
    let (kp, keys) = keypair();
    let (other, _) = keypair();
    let h = handle();
    let mut r = file_reloader(&file, &h, keys);

    std::fs::write(&file, bundle(1, false)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Signature, "unsigned");
    assert_eq!(revision(&h), None);

    std::fs::write(&sig, sign(&other, bundle(1, false).as_bytes())).expect("write");
    assert_eq!(
        r.reload(false).await,
        Outcome::Signature,
        "signed by an untrusted key"
    );

    std::fs::write(&sig, sign(&kp, bundle(1, false).as_bytes())).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(1));

    // Tampered after signing.
    std::fs::write(&file, bundle(2, true)).expect("write");
    assert_eq!(r.reload(false).await, Outcome::Signature);
    assert_eq!(revision(&h), Some(1));
}

#[tokio::test]
async fn signed_directory_bundles_catch_tampering() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("tempdir");
    let (kp, keys) = keypair();
    let h = handle();
    let a = "version: 1\nrevision: 3\ntrust_domains: [td.example]\nsegments:\n  a:\n    members: [\"spiffe://td.example/a/**\"]\n";
    let b = "rules:\n  - name: base\n    from: [a]\n";
    std::fs::write(dir.path().join("00-base.yaml"), a).expect("write");
    std::fs::write(dir.path().join("10-rules.yaml"), b).expect("write");
    let manifest = format!(
        "{:x}  00-base.yaml\n{:x}  10-rules.yaml\n",
        Sha256::digest(a.as_bytes()),
        Sha256::digest(b.as_bytes())
    );
    std::fs::write(dir.path().join("bundle.sha256"), &manifest).expect("write");
    let mut r = file_reloader(dir.path(), &h, keys);
    assert_eq!(
        r.reload(false).await,
        Outcome::Signature,
        "manifest not signed"
    );
    std::fs::write(
        dir.path().join("bundle.sha256.minisig"),
        sign(&kp, manifest.as_bytes()),
    )
    .expect("write");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(3));

    std::fs::write(
        dir.path().join("10-rules.yaml"),
        b.replace("base", "sneaky"),
    )
    .expect("write");
    assert_eq!(r.reload(false).await, Outcome::Signature, "tampered file");
    std::fs::write(dir.path().join("10-rules.yaml"), b).expect("write");
    std::fs::write(dir.path().join("20-extra.yaml"), "rules: []\n").expect("write");
    assert_eq!(r.reload(false).await, Outcome::Signature, "unlisted file");
    assert_eq!(revision(&h), Some(3));
}

#[tokio::test]
async fn configmap_symlink_swap_is_picked_up_by_the_running_reloader() {
    // Kubernetes mounts a ConfigMap as `..data -> ..2026_11_23_v1/` plus `bundle.yaml ->
    // ..data/bundle.yaml`, and updates it by writing a new timestamped directory and renaming a
    // new `..data` symlink over the old one.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let v1 = root.join("..2026_11_23_v1");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::write(v1.join("bundle.yaml"), bundle(1, false)).expect("write");
    std::os::unix::fs::symlink("..2026_11_23_v1", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/bundle.yaml", root.join("bundle.yaml")).expect("symlink");

    let h = handle();
    let mut cfg = ReloadConfig::new(BundleSource::Path(root.to_path_buf()));
    cfg.poll_interval = Duration::from_millis(200);
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(r.run(async {
        let _ = stop_rx.await;
    }));

    let v2 = root.join("..2026_11_23_v2");
    std::fs::create_dir(&v2).expect("mkdir");
    std::fs::write(v2.join("bundle.yaml"), bundle(2, true)).expect("write");
    std::os::unix::fs::symlink("..2026_11_23_v2", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("atomic swap");
    std::fs::remove_dir_all(&v1).expect("old version removed");

    let started = std::time::Instant::now();
    while revision(&h) != Some(2) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = started.elapsed();
    let _ = stop_tx.send(());
    task.await.expect("reloader stops");
    assert_eq!(
        revision(&h),
        Some(2),
        "the swap was not picked up within 10 s"
    );
    eprintln!("configmap swap picked up in {latency:?}");
}

/// A tiny bundle server: serves one body with an ETag, answers 304 to a matching
/// If-None-Match, can be told to fail, to stall, and counts requests.
#[derive(Clone, Default)]
struct BundleServer {
    body: Arc<Mutex<Vec<u8>>>,
    sig: Arc<Mutex<Option<String>>>,
    mode: Arc<AtomicUsize>, // 0 normal, 1 HTTP 500, 2 stall
    requests: Arc<AtomicU64>,
    not_modified: Arc<AtomicU64>,
    /// Every request's URI (path and query), in order.
    uris: Arc<Mutex<Vec<String>>>,
    /// Every request's `Authorization` header, if any.
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

impl BundleServer {
    fn set(&self, text: &str) {
        *self.body.lock().expect("lock") = text.as_bytes().to_vec();
    }

    async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.uris.lock().expect("lock").push(req.uri().to_string());
        self.authorizations.lock().expect("lock").push(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        match self.mode.load(Ordering::SeqCst) {
            1 => {
                return Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::from_static(b"boom")))
                    .expect("response")
            }
            2 => tokio::time::sleep(Duration::from_secs(30)).await,
            _ => {}
        }
        if req.uri().path().ends_with(".minisig") {
            return match self.sig.lock().expect("lock").clone() {
                Some(s) => Response::new(Full::new(Bytes::from(s))),
                None => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::new()))
                    .expect("response"),
            };
        }
        let body = self.body.lock().expect("lock").clone();
        let etag = format!("\"{:x}\"", {
            use sha2::{Digest, Sha256};
            Sha256::digest(&body)
        });
        if req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
        {
            self.not_modified.fetch_add(1, Ordering::SeqCst);
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        Response::builder()
            .header("etag", etag)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }
}

async fn start_server(
    server: &BundleServer,
    addr: Option<SocketAddr>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (addr, tokio::spawn(server.clone().serve(listener)))
}

fn http_reloader(
    addr: SocketAddr,
    h: &PolicyHandle,
    tweak: impl FnOnce(&mut ReloadConfig),
) -> Reloader {
    http_reloader_at(addr, "/bundles/hospital.yaml", h, tweak)
}

fn http_reloader_at(
    addr: SocketAddr,
    path: &str,
    h: &PolicyHandle,
    tweak: impl FnOnce(&mut ReloadConfig),
) -> Reloader {
    let mut cfg = ReloadConfig::new(BundleSource::Http(format!("http://{addr}{path}")));
    cfg.http_timeout = Duration::from_millis(500);
    tweak(&mut cfg);
    Reloader::new(cfg, Arc::clone(h), Arc::new(NoObserver), "bundle")
}

#[tokio::test]
async fn http_source_etag_errors_timeouts_and_limits() {
    let server = BundleServer::default();
    server.set(&bundle(1, false));
    let (addr, _task) = start_server(&server, None).await;
    let h = handle();
    let mut r = http_reloader(addr, &h, |c| c.max_bytes = 64 * 1024);

    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(1));
    // Same ETag: the server answers 304.
    assert_eq!(r.reload(false).await, Outcome::Unchanged);
    assert_eq!(server.not_modified.load(Ordering::SeqCst), 1);

    server.mode.store(1, Ordering::SeqCst);
    server.set(&bundle(2, true));
    assert_eq!(r.reload(false).await, Outcome::FetchError, "HTTP 500");
    assert_eq!(revision(&h), Some(1));

    server.mode.store(2, Ordering::SeqCst);
    let started = std::time::Instant::now();
    assert_eq!(r.reload(false).await, Outcome::FetchError, "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout bounds the wait"
    );
    assert_eq!(revision(&h), Some(1));

    server.mode.store(0, Ordering::SeqCst);
    server.set(&format!(
        "{}# {}\n",
        bundle(3, false),
        "x".repeat(100 * 1024)
    ));
    assert_eq!(r.reload(false).await, Outcome::TooLarge);
    assert_eq!(revision(&h), Some(1));

    server.set(&bundle(3, true));
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(3));
}

#[tokio::test]
async fn http_signed_bundles() {
    let server = BundleServer::default();
    let (kp, keys) = keypair();
    server.set(&bundle(1, false));
    let (addr, _task) = start_server(&server, None).await;
    let h = handle();
    let mut r = http_reloader(addr, &h, |c| c.trusted_keys = keys);
    assert_eq!(
        r.reload(false).await,
        Outcome::Signature,
        "no .minisig on the server"
    );
    *server.sig.lock().expect("lock") = Some(sign(&kp, bundle(1, false).as_bytes()));
    assert_eq!(r.reload(true).await, Outcome::Swapped);
    server.set(&bundle(2, false));
    assert_eq!(
        r.reload(false).await,
        Outcome::Signature,
        "signature is for other content"
    );
    assert_eq!(revision(&h), Some(1));
}

#[tokio::test]
async fn bundle_server_goes_away_and_comes_back_and_the_cache_covers_a_cold_start() {
    let cache = tempfile::tempdir().expect("tempdir");
    let server = BundleServer::default();
    server.set(&bundle(1, false));
    let (addr, task) = start_server(&server, None).await;

    let h = handle();
    let mut r = http_reloader(addr, &h, |c| {
        c.cache_dir = Some(cache.path().to_path_buf());
        c.poll_interval = Duration::from_millis(100);
        c.max_backoff = Duration::from_millis(400);
    });
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(r.run(async {
        let _ = stop_rx.await;
    }));

    // The server goes away: the policy stays.
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(revision(&h), Some(1));

    // A sidecar starting now gets the cached bundle although the server is down.
    let cold = handle();
    let mut cold_reloader = http_reloader(addr, &cold, |c| {
        c.cache_dir = Some(cache.path().to_path_buf())
    });
    assert_eq!(cold_reloader.initial_load().await, Outcome::FetchError);
    assert_eq!(revision(&cold), Some(1), "started from the cache");

    // The server comes back (same address) with a new revision: picked up despite backoff.
    server.set(&bundle(2, true));
    let (_, _task2) = start_server(&server, Some(addr)).await;
    let started = std::time::Instant::now();
    while revision(&h) != Some(2) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    running.await.expect("stops");
    assert_eq!(revision(&h), Some(2));
}

fn digest(h: &PolicyHandle) -> Option<String> {
    h.load().as_ref().map(|p| p.digest().to_owned())
}

/// The bundle digest identifies content, not where it sits (README, "Bundle digest"): the same
/// file under another name has the same digest, `sha256:` and what `sha256sum` prints for it;
/// one byte more is another digest.
#[tokio::test]
async fn renaming_a_bundle_file_keeps_its_digest_and_editing_it_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = bundle(1, false);
    let mut digests = Vec::new();
    for (name, content) in [
        ("hospital.yaml", text.clone()),
        ("renamed.yml", text.clone()),
        ("edited.yaml", format!("{text}#")),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).expect("write");
        let h = handle();
        let mut r = file_reloader(&path, &h, TrustedKeys::none());
        assert_eq!(r.reload(false).await, Outcome::Swapped, "{name}");
        digests.push(digest(&h).expect("a policy"));
    }
    let sha256sum = {
        use sha2::{Digest, Sha256};
        format!("sha256:{:x}", Sha256::digest(text.as_bytes()))
    };
    assert_eq!(digests[0], sha256sum);
    assert_eq!(digests[1], digests[0], "renamed");
    assert_ne!(digests[2], digests[0], "one byte added");
}

/// A bundle URL without `.yaml` is cached as `<name>.yaml`. A sidecar that started from that
/// cache while the server was down then gets the same bundle from the server: that is the
/// bundle in force (unchanged), not another bundle claiming its revision, which would be
/// refused as a rollback and counted as a failure until the revision is raised.
#[tokio::test]
async fn a_cold_start_from_the_cache_and_the_source_agree_on_the_bundle() {
    let cache = tempfile::tempdir().expect("tempdir");
    let server = BundleServer::default();
    server.set(&bundle(1, false));
    let (addr, task) = start_server(&server, None).await;
    let h = handle();
    let mut warm = http_reloader_at(addr, "/bundles/latest", &h, |c| {
        c.cache_dir = Some(cache.path().to_path_buf());
    });
    assert_eq!(warm.initial_load().await, Outcome::Swapped);
    task.abort();
    let _ = task.await;

    let cold = handle();
    let mut r = http_reloader_at(addr, "/bundles/latest", &cold, |c| {
        c.cache_dir = Some(cache.path().to_path_buf());
    });
    assert_eq!(r.initial_load().await, Outcome::FetchError);
    assert_eq!(revision(&cold), Some(1), "started from the cache");
    assert_eq!(digest(&cold), digest(&h));

    let (_, _task) = start_server(&server, Some(addr)).await;
    assert_eq!(r.reload(false).await, Outcome::Unchanged);
    assert_eq!(digest(&cold), digest(&h));
}
