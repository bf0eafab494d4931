//! Bundles from an OCI registry, against a real one: Debian's `docker-registry` (the CNCF
//! distribution server), started by each test on a loopback port with its storage in a temporary
//! directory (`scripts/install-test-deps.sh` installs it). Bundles are pushed as wardgate
//! artifacts (`wardgate::reload::oci::push`, what `wardgate push` runs); the registry's own access
//! log counts the requests wardgate makes.
//!
//! Covered: a signed bundle served from `oci+http://` decides checks; a moved tag is followed; a
//! tag moved to a lower revision and a wrong signature are refused and counted while the bundle
//! in force keeps deciding; a registry that goes away costs fetch errors, not the bundle, and is
//! followed again when it is back; an unchanged tag costs exactly one HEAD per poll and a digest
//! reference none; rollback protection and the cache hold across restarts; credentials in the
//! reference never show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use support::metrics::scrape;
use support::process::{free_port, ChildGuard, WaitFor, Wardgate};
use wardgate::policy::PolicyHandle;
use wardgate::reload::oci::push;
use wardgate::reload::{BundleSource, NoObserver, Outcome, ReloadConfig, Reloader, TrustedKeys};

const REPO: &str = "wardgate/bundle";

/// The registry binary, or `None` (test skipped loudly; a failure under `CI=true`).
fn require_registry(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("WARDGATE_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
    if path.is_file() {
        return Some(path);
    }
    let help = format!(
        "no {} (Debian package docker-registry; run scripts/install-test-deps.sh or set \
         WARDGATE_DOCKER_REGISTRY)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help}");
    }
    eprintln!("\n!! SKIPPED {test}: {help}\n");
    None
}

/// A `docker-registry serve` on a loopback port, storage and logs in `dir`.
struct Registry {
    binary: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<ChildGuard>,
    /// Access logs of every run so far (one per start).
    logs: Vec<PathBuf>,
}

impl Registry {
    async fn start(binary: PathBuf, dir: &Path) -> Registry {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let mut r = Registry {
            binary,
            dir: dir.to_owned(),
            addr,
            child: None,
            logs: Vec::new(),
        };
        r.resume().await;
        r
    }

    /// Start (again) on the same port and storage.
    async fn resume(&mut self) {
        let config = self.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n  secret: wardgate-test\n",
                self.dir.join("storage").display(),
                self.addr
            ),
        )
        .unwrap();
        let mut command = Command::new(&self.binary);
        command.arg("serve").arg(&config);
        let name = format!("registry-{}", self.logs.len());
        let child = ChildGuard::spawn(&name, command, &self.dir).unwrap();
        self.logs.push(child.stdout_path.clone());
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while support::client::plain_get(self.addr, "/v2/")
            .await
            .map(|r| r.0)
            .ok()
            != Some(200)
        {
            assert!(
                Instant::now() < deadline,
                "registry did not start\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(5));
        }
    }

    fn tail(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(2000))
            .unwrap_or_default()
    }

    /// Every access-log line so far.
    fn access_log(&self) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("HTTP/1.1\""))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `oci+http://[userinfo@]addr/REPO:tag`.
    fn reference(&self, userinfo: &str, tag: &str) -> String {
        format!("oci+http://{userinfo}{}/{REPO}:{tag}", self.addr)
    }

    /// Push `yaml` (signed by `signer` when given) to `tag`.
    async fn push(&self, tag: &str, yaml: &str, signer: Option<&minisign::KeyPair>) {
        let signature = signer.map(|kp| sign(kp, yaml.as_bytes()).into_bytes());
        push(
            &self.reference("", tag),
            "bundle.yaml",
            yaml.as_bytes().to_vec(),
            signature,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("push: {e}\n{}", self.tail()));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Revision `n` allows members of segment `a` on `/r<n>` only.
fn bundle(n: u64) -> String {
    format!(
        "version: 1\nrevision: {n}\ntrust_domains: [td.example]\nsegments:\n  a:\n    members: [\"spiffe://td.example/a/**\"]\nrules:\n  - name: rev{n}\n    from: [a]\n    paths: [\"/r{n}\"]\n"
    )
}

fn keypair() -> (minisign::KeyPair, String) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let public = kp.pk.to_base64();
    (kp, public)
}

fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
    minisign::sign(Some(&kp.pk), &kp.sk, std::io::Cursor::new(data), None, None)
        .unwrap()
        .into_string()
}

fn check_request(path: &str) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://td.example/a/caller".to_owned(),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "svc.example".into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

/// Whether wardgate allows GET `path` from segment `a`.
async fn allowed(socket: &Path, path: &str) -> bool {
    let mut client = support::grpc::authorization(socket).await.unwrap();
    let response = client
        .check(check_request(path))
        .await
        .unwrap()
        .into_inner();
    response.status.as_ref().map(|s| s.code) == Some(0)
}

/// The revision in force: the one whose path is allowed (revisions 1..=9 probed).
async fn decided_by(socket: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for n in 1..=9 {
        if allowed(socket, &format!("/r{n}")).await {
            out.push(n);
        }
    }
    out
}

async fn wait_for_revision(w: &Wardgate, want: u64, registry: &Registry) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = decided_by(&w.socket).await;
        if seen == [want] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "revision {want} not in force after 30 s (decided by {seen:?})\n{}\n{}",
            w.child.log_tail(4000),
            registry.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wardgate_reload_attempts_total{result}` as scraped now.
async fn attempts(admin: SocketAddr, result: &str) -> f64 {
    let (scraped, _) = scrape(admin).await.unwrap();
    scraped
        .get("wardgate_reload_attempts_total", &[("result", result)])
        .unwrap_or(0.0)
}

async fn wait_for_attempts(w: &Wardgate, result: &str, at_least: f64) {
    let admin = w.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts(admin, result).await < at_least {
        assert!(
            Instant::now() < deadline,
            "no {result} attempt counted within 30 s\n{}",
            w.child.log_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_a_signed_tag_and_refuses_rollback_bad_signatures_and_keeps_it_through_outages(
) {
    let Some(binary) = require_registry("oci_registry::serve_follows_a_signed_tag") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(binary, dir.path()).await;
    let (kp, public) = keypair();
    let (stranger, _) = keypair();
    let key_file = dir.path().join("bundle.pub");
    std::fs::write(&key_file, &public).unwrap();
    registry.push("prod", &bundle(1), Some(&kp)).await;

    // The source carries credentials: they must never show.
    let source = registry.reference("deploy:hunter2@", "prod");
    let socket = dir.path().join("wardgate.sock");
    let cache = dir.path().join("cache");
    let w = Wardgate::launch(
        Path::new(&source),
        &socket,
        dir.path(),
        &[
            "--poll-interval",
            "200ms",
            "--trusted-key",
            key_file.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        WaitFor::Serving,
    )
    .await
    .unwrap();
    let admin = w.admin.unwrap();
    assert_eq!(decided_by(&socket).await, [1], "the pulled bundle decides");
    let (status, body) = support::client::plain_get(admin, "/v1/bundle")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["revision"], 1);
    assert_eq!(
        info["source"],
        format!("oci+http://{}/{REPO}:prod", registry.addr)
    );

    // The tag moves to a new revision, pushed with `wardgate push` (bundle and signature
    // beside it): swapped in.
    let file = dir.path().join("bundle.yaml");
    std::fs::write(&file, bundle(2)).unwrap();
    std::fs::write(
        dir.path().join("bundle.yaml.minisig"),
        sign(&kp, bundle(2).as_bytes()),
    )
    .unwrap();
    let pushed = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .arg("push")
        .arg(&file)
        .arg(registry.reference("", "prod"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&pushed.stdout).into_owned()
        + &String::from_utf8_lossy(&pushed.stderr);
    assert!(pushed.status.success(), "{said}");
    assert!(said.contains("with its signature"), "{said}");
    wait_for_revision(&w, 2, &registry).await;

    // The tag moves to a lower revision: refused as a rollback, revision 2 keeps deciding.
    registry.push("prod", &bundle(1), Some(&kp)).await;
    wait_for_attempts(&w, "rollback", 1.0).await;
    assert_eq!(decided_by(&socket).await, [2]);

    // A higher revision signed by a key that is not trusted: refused, counted, 2 stays.
    registry.push("prod", &bundle(3), Some(&stranger)).await;
    wait_for_attempts(&w, "signature", 1.0).await;
    assert_eq!(decided_by(&socket).await, [2]);
    // ... and it keeps being refused while it is offered (not turned into `unchanged`).
    let refused = attempts(admin, "signature").await;
    wait_for_attempts(&w, "signature", refused + 1.0).await;
    assert_eq!(decided_by(&socket).await, [2]);

    // Signed properly: swapped in.
    registry.push("prod", &bundle(3), Some(&kp)).await;
    wait_for_revision(&w, 3, &registry).await;

    // The registry goes away: fetch errors are counted, revision 3 keeps deciding.
    let errors = attempts(admin, "fetch_error").await;
    registry.stop();
    wait_for_attempts(&w, "fetch_error", errors + 2.0).await;
    assert_eq!(decided_by(&socket).await, [3]);
    // It comes back with a new revision: followed again.
    registry.resume().await;
    registry.push("prod", &bundle(4), Some(&kp)).await;
    wait_for_revision(&w, 4, &registry).await;

    let (_, metrics) = scrape(admin).await.unwrap();
    let (_, bundle_info) = support::client::plain_get(admin, "/v1/bundle")
        .await
        .unwrap();
    let log = w.child.log_tail(usize::MAX);
    for (what, text) in [
        ("metrics", &metrics),
        ("/v1/bundle", &bundle_info),
        ("log", &log),
    ] {
        assert!(
            !text.contains("hunter2"),
            "{what} shows the password:\n{text}"
        );
    }
    assert!(
        log.contains("is lower than 2") && log.contains("not a trusted key"),
        "the refusals say why:\n{log}"
    );
}

fn oci_reloader(
    source: &str,
    h: &PolicyHandle,
    keys: TrustedKeys,
    cache: Option<&Path>,
) -> Reloader {
    let mut cfg = ReloadConfig::new(source.parse::<BundleSource>().unwrap());
    cfg.trusted_keys = keys;
    cfg.cache_dir = cache.map(Path::to_path_buf);
    Reloader::new(cfg, Arc::clone(h), Arc::new(NoObserver), "bundle")
}

fn revision(h: &PolicyHandle) -> Option<u64> {
    h.load().as_ref().map(|p| p.revision())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_tag_costs_one_head_per_poll_and_a_digest_none() {
    let Some(binary) = require_registry("oci_registry::an_unchanged_tag_costs_one_head_per_poll")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(binary, dir.path()).await;
    let (kp, public) = keypair();
    let mut keys = TrustedKeys::none();
    keys.add(&public).unwrap();
    registry.push("prod", &bundle(1), Some(&kp)).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed = registry.access_log().len();
    let h: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let mut r = oci_reloader(&registry.reference("", "prod"), &h, keys, None);
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(1));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = registry.access_log();
    eprintln!(
        "the first load (HEAD, then the pull through oci-client):\n{}",
        first.get(pushed..).unwrap_or_default().join("\n")
    );
    let before = first.len();
    for poll in 0..20 {
        assert_eq!(r.reload(false).await, Outcome::Unchanged, "poll {poll}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = registry.access_log();
    let polls = log.get(before..).unwrap_or_default();
    eprintln!(
        "registry access log for 20 polls of an unchanged tag ({} requests):\n{}",
        polls.len(),
        polls.join("\n")
    );
    assert_eq!(
        polls.len(),
        20,
        "one request per poll:\n{}",
        polls.join("\n")
    );
    let head = format!("\"HEAD /v2/{REPO}/manifests/prod HTTP/1.1\" 200 ");
    assert!(
        polls.iter().all(|l| l.contains(&head)),
        "every one a HEAD of the manifest:\n{}",
        polls.join("\n")
    );

    // A digest reference cannot change: after the first pull, polls cost nothing.
    let digest = log
        .iter()
        .find_map(|l| {
            l.split("/manifests/")
                .nth(1)
                .filter(|rest| rest.starts_with("sha256:"))
                .and_then(|rest| rest.split_whitespace().next())
        })
        .map(str::to_string)
        .expect("the first pull fetched the manifest by digest");
    let h2: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let pinned = format!("oci+http://{}/{REPO}@{digest}", registry.addr);
    let mut r2 = oci_reloader(&pinned, &h2, TrustedKeys::none(), None);
    assert_eq!(r2.initial_load().await, Outcome::Swapped);
    assert_eq!(revision(&h2), Some(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = registry.access_log().len();
    for _ in 0..20 {
        assert_eq!(r2.reload(false).await, Outcome::Unchanged);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        registry.access_log().len(),
        before,
        "a digest reference is not polled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_protection_and_the_cache_hold_across_restarts() {
    let Some(binary) = require_registry("oci_registry::rollback_protection_and_the_cache") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(binary, dir.path()).await;
    let cache = dir.path().join("cache");
    let (kp, public) = keypair();
    let keys = || {
        let mut k = TrustedKeys::none();
        k.add(&public).unwrap();
        k
    };
    let source = registry.reference("", "prod");
    registry.push("prod", &bundle(2), Some(&kp)).await;
    let h: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let mut r = oci_reloader(&source, &h, keys(), Some(&cache));
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    drop(r);

    // Restarted while the tag points at a lower revision: refused, the cached 2 is served.
    registry.push("prod", &bundle(1), Some(&kp)).await;
    let h: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let mut r = oci_reloader(&source, &h, keys(), Some(&cache));
    assert_eq!(r.initial_load().await, Outcome::Rollback);
    assert_eq!(
        revision(&h),
        Some(2),
        "the cached bundle, not the lower revision"
    );
    assert_eq!(r.reload(false).await, Outcome::Rollback, "still refused");
    drop(r);

    // Restarted while the registry is down: the cached bundle.
    registry.stop();
    let h: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let mut r = oci_reloader(&source, &h, keys(), Some(&cache));
    assert_eq!(r.initial_load().await, Outcome::FetchError);
    assert_eq!(revision(&h), Some(2));
    assert_eq!(r.reload(false).await, Outcome::FetchError);

    // Back, with an artifact pushed under a generic media type: refused as invalid, naming it.
    registry.resume().await;
    push_generic(registry.addr, "prod").await;
    assert_eq!(r.reload(false).await, Outcome::Invalid);
    assert_eq!(revision(&h), Some(2));
}

/// Push `version: 1` as a generic image layer (what `oras push REF bundle.yaml` without a media
/// type does), through the OCI client crate directly.
async fn push_generic(addr: SocketAddr, tag: &str) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: oci_client::Reference = format!("{addr}/{REPO}:{tag}").parse().unwrap();
    let layers = [ImageLayer::new(
        b"version: 1\n".to_vec(),
        "application/vnd.oci.image.layer.v1.tar".to_string(),
        None,
    )];
    let config = Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.empty.v1+json".to_string(),
        None,
    );
    client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
}

#[test]
fn push_says_what_went_wrong_with_the_exit_code_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("bundle.yaml");
    std::fs::write(&good, bundle(1)).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nrevision: 1\nnot_a_key: true\n").unwrap();
    let closed = free_port().unwrap();
    let run = |file: &Path, reference: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_wardgate"))
            .arg("push")
            .arg(file)
            .arg(reference)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let target = format!("oci+http://u:hunter2@127.0.0.1:{closed}/{REPO}:prod");
    let (code, err) = run(&bad, &target);
    assert_eq!(code, Some(3), "invalid bundle: {err}");
    assert!(err.contains("not_a_key"), "{err}");
    let (code, err) = run(&good, "https://registry.example/b:prod");
    assert_eq!(code, Some(2), "not an oci reference: {err}");
    let (code, err) = run(&good, &format!("oci+http://127.0.0.1:{closed}/{REPO}"));
    assert_eq!(code, Some(2), "no tag: {err}");
    let (code, err) = run(&good, &target);
    assert_eq!(code, Some(1), "registry unreachable: {err}");
    assert!(
        err.contains(&format!("127.0.0.1:{closed}")) && !err.contains("hunter2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_pushed_with_oras_is_pulled_and_verified() {
    let Some(binary) = require_registry("oci_registry::an_artifact_pushed_with_oras") else {
        return;
    };
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_oras = Command::new(&python)
        .args(["-c", "import oras.provider"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_oras {
        let help = "no ORAS Python client (pip install oras==0.2.43; scripts/install-test-deps.sh)";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("oci_registry::an_artifact_pushed_with_oras: {help}");
        }
        eprintln!("\n!! SKIPPED oci_registry::an_artifact_pushed_with_oras: {help}\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(binary, dir.path()).await;
    let (kp, public) = keypair();
    let mut keys = TrustedKeys::none();
    keys.add(&public).unwrap();
    std::fs::write(dir.path().join("bundle.yaml"), bundle(7)).unwrap();
    std::fs::write(
        dir.path().join("bundle.yaml.minisig"),
        sign(&kp, bundle(7).as_bytes()),
    )
    .unwrap();
    // What the README's `oras push` command does, through ORAS's Python client.
    let script = format!(
        "import oras.provider\n\
         r = oras.provider.Registry(hostname='{addr}', insecure=True)\n\
         r.push(target='{addr}/{REPO}:prod', files=[\
         'bundle.yaml:application/vnd.wardgate.bundle.v1+yaml', \
         'bundle.yaml.minisig:application/vnd.wardgate.bundle.signature.v1'])\n",
        addr = registry.addr
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras push: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let h: PolicyHandle = Arc::new(ArcSwapOption::empty());
    let mut r = oci_reloader(&registry.reference("", "prod"), &h, keys, None);
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    assert_eq!(revision(&h), Some(7));
}
