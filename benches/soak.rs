//! Soak: Envoy + `wardgate serve` left alone under steady load for many minutes, to show that
//! nothing grows and nothing is misjudged while bundles swap and SVIDs rotate.
//!
//! One Envoy (the shipped `deploy/envoy/envoy-sidecar.yaml`, `--concurrency 1`, access log to
//! `/dev/null`) fronts an echo upstream as the workload `lab`, with ext_authz over a Unix socket
//! to the `wardgate serve` binary this bench was built with, holding a 10,000-rule generated
//! bundle plus the five callers' rules from a file (polled every second), decision log on (to a
//! file). A closed-loop HTTP/2 load generator presents the callers' X.509 SVIDs over mTLS
//! (`CONNS` x `INFLIGHT`, default 4 x 4, so the machine is not saturated). Seven requests in
//! eight must be allowed (200); the eighth must be denied (403): a DELETE no rule allows, or a
//! GET under `/admin` that a deny rule refuses. Meanwhile:
//!
//! * every 30 s the bundle file is replaced: a higher revision, alternating between two contents
//!   (one has an extra rule that matches none of the load), and every 4th time an invalid bundle,
//!   which must be refused (`wardgate_reload_attempts_total{result="invalid"}` grows,
//!   `wardgate_reload_consecutive_failures` > 0), leave `/v1/bundle`'s revision where it was and
//!   change no decision; a valid one must be in force (per `/v1/bundle`) within 15 s;
//! * every 2 minutes the callers' client SVIDs are re-issued (new keys and certificates from
//!   the same CAs) and every connection is re-established with them. Envoy's own SVID is not
//!   rotated: the shipped template names its files inline (no SDS), so Envoy would not re-read
//!   them; wardgate listens on a Unix socket and has no SVID of its own here;
//! * every 5 s `/metrics`, `/readyz` and `/v1/bundle` are scraped; `/readyz` must answer 200.
//!
//! Every 30 s a sample: wardgate's RSS (`VmRSS`), open descriptors (`/proc/PID/fd`), threads,
//! CPU seconds per 10,000 checks over the interval, p50/p99 latency over the interval, reloads.
//! The samples go to `<out>.csv`, a summary to `<out>.txt`, a plot (RSS, descriptors, p99) to
//! `<out>.svg`; `<out>` is `$SOAK_OUT` (default `benches/results/soak`). The run fails on any
//! failed or misjudged request, on a refused bundle not reported, on a valid bundle not taken,
//! on RSS growth after warm-up (median of the last quarter of the samples over the median of
//! the first quarter) beyond 10% + 4 MiB, or on descriptor growth beyond 8.
//!
//! `scripts/soak.sh [MINUTES]` runs it (`--bench`, release build, `$SOAK_MINUTES`, default 30).
//! Without `--bench` (the `cargo test --all-targets` smoke run) a few seconds with 200 rules,
//! quicker swaps (one invalid) and one rotation, results in a temporary directory. Envoy comes
//! from `scripts/install-test-deps.sh`; when it is missing the run fails under `CI=true` and is
//! skipped loudly otherwise. Numbers from a shared 2-core machine are noisy.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

#[path = "../tests/support/mod.rs"]
mod e2e;
#[path = "support/load.rs"]
mod load;
mod support;

use e2e::pki::{Lifetime, Pki};
use e2e::process::{free_port, ChildGuard, Envoy, EnvoySettings};
use e2e::upstream::EchoUpstream;

type BoxError = e2e::BoxError;

const DESTINATION: &str = "lab";
const CALLERS: [&str; 5] = ["ehr", "imaging", "pharmacy", "billing", "scheduling"];
/// RSS may grow this much (fraction, and fixed KiB) from the first to the last quarter.
const RSS_TOLERANCE: (f64, u64) = (0.10, 4 * 1024);
/// Open descriptors may grow this much from the first to the last quarter.
const FD_TOLERANCE: u64 = 8;

/// The schedule of one run.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    rules: usize,
    duration: Duration,
    warmup: Duration,
    swap_every: Duration,
    invalid_every: u64,
    rotate_every: Duration,
    scrape_every: Duration,
    sample_every: Duration,
    poll: &'static str,
    conns: usize,
    inflight: usize,
    out: PathBuf,
}

/// What every task shares.
struct Shared {
    done: AtomicBool,
    /// Bumped at each SVID rotation: connections of an older generation close and reconnect.
    generation: AtomicU64,
    connectors: RwLock<Vec<TlsConnector>>,
    /// Latencies since the latest sample, microseconds.
    interval: Mutex<Histogram<u64>>,
    allowed: AtomicU64,
    denied: AtomicU64,
    reconnects: AtomicU64,
    /// Every failure, in words (misjudged answer, transport error, bundle not taken, ...).
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
    scrapes: AtomicU64,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failure_count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 50 {
            eprintln!("soak failure: {what}");
            f.push(what);
        }
    }
}

/// One row of the CSV.
#[derive(Debug, Clone, Default)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    checks: u64,
    rps: f64,
    cpu_s_per_10k: f64,
    p50_us: u64,
    p99_us: u64,
    reload_ok: f64,
    reload_invalid: f64,
    swaps: u64,
    invalid_swaps: u64,
    rotations: u64,
    failures: u64,
}

fn main() {
    let full = load::full_run();
    let Some(envoy_binary) = e2e::process::require_envoy("benches/soak") else {
        println!("soak: skipped (no Envoy)");
        return;
    };
    let minutes = load::env_usize("SOAK_MINUTES", 30) as u64;
    let plan = if full {
        let duration = Duration::from_secs(minutes * 60);
        Plan {
            full,
            rules: 10_000,
            duration,
            warmup: (duration / 5).min(Duration::from_secs(120)),
            swap_every: Duration::from_secs(30),
            invalid_every: 4,
            rotate_every: Duration::from_secs(120),
            scrape_every: Duration::from_secs(5),
            sample_every: Duration::from_secs(30),
            poll: "1s",
            conns: load::env_usize("CONNS", 4),
            inflight: load::env_usize("INFLIGHT", 4),
            out: PathBuf::from(
                std::env::var("SOAK_OUT").unwrap_or_else(|_| "benches/results/soak".to_owned()),
            ),
        }
    } else {
        Plan {
            full,
            rules: 200,
            duration: Duration::from_secs(6),
            warmup: Duration::from_secs(1),
            swap_every: Duration::from_millis(1500),
            invalid_every: 2,
            rotate_every: Duration::from_secs(3),
            scrape_every: Duration::from_millis(500),
            sample_every: Duration::from_millis(500),
            poll: "200ms",
            conns: 2,
            inflight: 2,
            out: std::env::temp_dir().join(format!("wardgate-soak-smoke-{}", std::process::id())),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(&envoy_binary, &plan)) {
        Ok(true) => println!("soak: PASS"),
        Ok(false) => {
            eprintln!("soak: FAIL (see {}.txt)", plan.out.display());
            std::process::exit(1);
        }
        Err(e) => panic!("soak: {e}"),
    }
    if !full {
        for ext in ["csv", "txt", "svg"] {
            let _ = std::fs::remove_file(plan.out.with_extension(ext));
        }
    }
}

/// A bundle of `revision`: the generated rules, the callers' rules, and for `alt` one more rule
/// no request of the load matches; `invalid` adds a rule with an unknown action.
fn bundle_text(base: &str, revision: u64, alt: bool, invalid: bool) -> String {
    let mut b = base.replacen("revision: 1\n", &format!("revision: {revision}\n"), 1);
    if alt {
        b.push_str("  - name: soak-alternate\n    from: [\"spiffe://hospital.example/ns/admin/sa/nobody\"]\n    to: [\"spiffe://hospital.example/ns/clinical/sa/lab\"]\n    methods: [GET]\n    paths: [\"/soak/alternate\"]\n");
    }
    if invalid {
        b.push_str("  - name: soak-invalid\n    action: maybe\n    from: [clinical]\n");
    }
    b
}

/// Replace `path` atomically (write beside, rename), so a poll never reads half a file.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn run(envoy_binary: &Path, plan: &Plan) -> Result<bool, BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("wardgate-soak-")
        .tempdir()?;
    let mut pki = Pki::generate(&dir.path().join("pki"))?;
    let destination = pki.svid(DESTINATION)?.clone();
    let upstream = EchoUpstream::start().await?;

    let mut base = support::bundle(plan.rules);
    for (k, caller) in CALLERS.iter().enumerate() {
        base.push_str(&format!(
            "  - name: {caller}-to-lab\n    from: [\"{}\"]\n    to: [\"{}\"]\n    methods: [GET, POST]\n    paths: [\"/api/v1/res-{k}/**\", \"/api/v1/res-{k}\"]\n",
            pki.svid(caller)?.spiffe_id,
            destination.spiffe_id
        ));
    }
    let bundle_path = dir.path().join("bundle.yaml");
    replace_file(&bundle_path, &bundle_text(&base, 1, false, false))?;
    let decision_log = dir.path().join("decisions.jsonl");
    let socket = dir.path().join("wardgate.sock");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
    command
        .arg("serve")
        .arg("--bundle")
        .arg(&bundle_path)
        .args(["--listen", &format!("unix:{}", socket.display())])
        .args(["--admin", &admin.to_string(), "--poll-interval", plan.poll])
        .arg("--decision-log")
        .arg(&decision_log)
        .env("WARDGATE_LOG", "warn");
    let mut wardgate = ChildGuard::spawn("wardgate", command, dir.path())?;
    let pid = wardgate.pid().ok_or("wardgate has no pid")?;
    wait_ready(admin, &wardgate).await?;

    let settings = EnvoySettings {
        svid_cert: destination.cert_path.clone(),
        svid_key: destination.key_path.clone(),
        trust_bundle_dir: pki.trust_bundle_dir.clone(),
        wardgate_socket: socket.clone(),
        app: upstream.addr,
    };
    let envoy =
        Envoy::start_logging_to(envoy_binary, &settings, dir.path(), Path::new("/dev/null"))
            .await?;

    let roots = {
        let mut r = RootCertStore::empty();
        for root in pki.trusted_roots() {
            r.add(root)?;
        }
        r
    };
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        generation: AtomicU64::new(0),
        connectors: RwLock::new(connectors(&pki, &roots)?),
        interval: Mutex::new(load::histogram()),
        allowed: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        failure_count: AtomicU64::new(0),
        scrapes: AtomicU64::new(0),
    });
    println!(
        "soak: {} min, {} rules, {} x {} mTLS HTTP/2 streams through Envoy, swap every {:?} (every {}th invalid), SVID rotation every {:?}, scrape every {:?}, sample every {:?}, {} cores shared",
        plan.duration.as_secs_f64() / 60.0,
        plan.rules,
        plan.conns,
        plan.inflight,
        plan.swap_every,
        plan.invalid_every,
        plan.rotate_every,
        plan.scrape_every,
        plan.sample_every,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let server_name = rustls::pki_types::ServerName::try_from(destination.dns_name.clone())?;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..plan.conns {
        tasks.spawn(connection(
            c,
            plan.inflight,
            envoy.listen,
            server_name.clone(),
            Arc::clone(&shared),
        ));
    }
    tasks.spawn(scraper(admin, plan.scrape_every, Arc::clone(&shared)));

    // The schedule: swaps, rotations and samples, in this task.
    let start = Instant::now();
    let mut next_swap = plan.swap_every;
    let mut next_rotation = plan.rotate_every;
    let mut next_sample = plan.sample_every;
    let (mut swaps, mut invalid_swaps, mut rotations) = (0u64, 0u64, 0u64);
    let mut revision = 1u64;
    let mut refusals_reported = 0u64;
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_cpu = cpu_seconds(pid).unwrap_or(0.0);
    let mut last_sample = Instant::now();
    let mut last_reloads = (0.0, 0.0);
    *shared.interval.lock().unwrap_or_else(|e| e.into_inner()) = load::histogram();
    while start.elapsed() < plan.duration {
        if let Some(status) = wardgate.exited() {
            shared.fail(format!("wardgate exited: {status}"));
            break;
        }
        let now = start.elapsed();
        if now >= next_swap {
            next_swap += plan.swap_every;
            swaps += 1;
            if swaps % plan.invalid_every == 0 {
                invalid_swaps += 1;
                if refused_and_reported(&bundle_path, &base, revision, admin, &shared).await? {
                    refusals_reported += 1;
                }
            } else {
                revision += 1;
                let text = bundle_text(&base, revision, revision % 2 == 0, false);
                replace_file(&bundle_path, &text)?;
                if !in_force(admin, revision, Duration::from_secs(15)).await {
                    shared.fail(format!(
                        "bundle revision {revision} not in force within 15 s"
                    ));
                }
            }
        }
        if now >= next_rotation {
            next_rotation += plan.rotate_every;
            rotations += 1;
            for caller in CALLERS {
                let id = pki.svid(caller)?.spiffe_id.clone();
                let old = pki.svid(caller)?.cert_der.clone();
                let domain = id
                    .strip_prefix("spiffe://")
                    .and_then(|r| r.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                if pki.issue(&domain, caller, &id, Lifetime::DAY)?.cert_der == old {
                    shared.fail(format!("rotation {rotations}: {caller} got the same SVID"));
                }
            }
            *shared.connectors.write().unwrap_or_else(|e| e.into_inner()) =
                connectors(&pki, &roots)?;
            shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        if now >= next_sample {
            next_sample += plan.sample_every;
            let h = std::mem::replace(
                &mut *shared.interval.lock().unwrap_or_else(|e| e.into_inner()),
                load::histogram(),
            );
            let elapsed = last_sample.elapsed().as_secs_f64();
            last_sample = Instant::now();
            let cpu = cpu_seconds(pid).unwrap_or(last_cpu);
            let (ok, invalid) = reload_counts(admin).await.unwrap_or(last_reloads);
            last_reloads = (ok, invalid);
            let s = Sample {
                t_s: now.as_secs_f64(),
                rss_kib: support::proc_status_field(&pid.to_string(), "VmRSS:"),
                fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
                threads: support::proc_status_field(&pid.to_string(), "Threads:"),
                checks: h.len(),
                rps: h.len() as f64 / elapsed.max(1e-9),
                cpu_s_per_10k: (cpu - last_cpu) / (h.len().max(1) as f64) * 10_000.0,
                p50_us: h.value_at_quantile(0.50),
                p99_us: h.value_at_quantile(0.99),
                reload_ok: ok,
                reload_invalid: invalid,
                swaps,
                invalid_swaps,
                rotations,
                failures: shared.failure_count.load(Ordering::Relaxed),
            };
            last_cpu = cpu;
            println!(
                "  t={:>6.0}s rss {:>7} KiB fds {:>3} threads {:>2} {:>6.0} req/s cpu {:.3} s/10k p50 {:>5} us p99 {:>6} us reloads ok {} invalid {} failures {}",
                s.t_s, s.rss_kib, s.fds, s.threads, s.rps, s.cpu_s_per_10k, s.p50_us, s.p99_us,
                s.reload_ok, s.reload_invalid, s.failures
            );
            samples.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.done.store(true, Ordering::SeqCst);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.fail(format!("task: {e}")),
            Err(e) => shared.fail(format!("task panicked: {e}")),
        }
    }
    let log_bytes = std::fs::metadata(&decision_log).map_or(0, |m| m.len());
    let verdict = judge(
        plan,
        &samples,
        &shared,
        (swaps, invalid_swaps, refusals_reported, rotations),
        log_bytes,
    );
    write_results(plan, &samples, &verdict)?;
    print!("{}", verdict.text);
    drop(envoy);
    wardgate.terminate(Duration::from_secs(5));
    drop(upstream);
    Ok(verdict.pass)
}

/// Offer an invalid bundle (one revision up) and check it is refused, reported and changes
/// nothing in force. Returns whether the refusal was reported in the metrics.
async fn refused_and_reported(
    bundle_path: &Path,
    base: &str,
    revision: u64,
    admin: SocketAddr,
    shared: &Shared,
) -> Result<bool, BoxError> {
    let before = reload_counts(admin).await?.1;
    replace_file(bundle_path, &bundle_text(base, revision + 1, false, true))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((m, _)) = e2e::metrics::scrape(admin).await {
            let invalid = m
                .get("wardgate_reload_attempts_total", &[("result", "invalid")])
                .unwrap_or(0.0);
            let in_a_row = m
                .get("wardgate_reload_consecutive_failures", &[])
                .unwrap_or(0.0);
            if invalid > before && in_a_row >= 1.0 {
                if current_revision(admin).await != Some(revision) {
                    shared.fail(format!(
                        "invalid bundle (revision {}) changed the revision in force",
                        revision + 1
                    ));
                }
                return Ok(true);
            }
        }
        if Instant::now() > deadline {
            shared.fail(format!(
                "invalid bundle (revision {}) not reported as refused within 15 s",
                revision + 1
            ));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wardgate_reload_attempts_total` for `ok` and `invalid`.
async fn reload_counts(admin: SocketAddr) -> Result<(f64, f64), BoxError> {
    let (m, _) = e2e::metrics::scrape(admin).await?;
    let get = |r: &str| {
        m.get("wardgate_reload_attempts_total", &[("result", r)])
            .unwrap_or(0.0)
    };
    Ok((get("ok"), get("invalid")))
}

/// The revision `/v1/bundle` reports.
async fn current_revision(admin: SocketAddr) -> Option<u64> {
    let (status, body) = e2e::client::plain_get(admin, "/v1/bundle").await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("revision")
        .or_else(|| v.get("info").and_then(|i| i.get("revision")))
        .and_then(serde_json::Value::as_u64)
}

/// Whether `revision` is in force within `within`.
async fn in_force(admin: SocketAddr, revision: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if current_revision(admin).await == Some(revision) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_ready(admin: SocketAddr, child: &ChildGuard) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = e2e::client::plain_get(admin, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("wardgate not ready within 120 s\n{}", child.log_tail(4000)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics`, `/readyz` and `/v1/bundle`, every `every`, until done.
async fn scraper(admin: SocketAddr, every: Duration, shared: Arc<Shared>) -> Result<(), BoxError> {
    while !shared.done.load(Ordering::Relaxed) {
        if let Err(e) = e2e::metrics::scrape(admin).await {
            shared.fail(format!("/metrics: {e}"));
        }
        match e2e::client::plain_get(admin, "/readyz").await {
            Ok((200, _)) => {}
            Ok((status, body)) => shared.fail(format!("/readyz answered {status}: {body}")),
            Err(e) => shared.fail(format!("/readyz: {e}")),
        }
        match e2e::client::plain_get(admin, "/v1/bundle").await {
            Ok((200, _)) => {}
            Ok((status, body)) => shared.fail(format!("/v1/bundle answered {status}: {body}")),
            Err(e) => shared.fail(format!("/v1/bundle: {e}")),
        }
        shared.scrapes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// One TLS client config per caller, with its current SVID.
fn connectors(pki: &Pki, roots: &RootCertStore) -> Result<Vec<TlsConnector>, BoxError> {
    let mut out = Vec::new();
    for caller in CALLERS {
        let svid = pki.svid(caller)?;
        out.push(load::h2_mtls_connector(
            roots,
            svid.cert_der.clone(),
            svid.private_key(),
        )?);
    }
    Ok(out)
}

/// Connection `c`: as caller `c % 5`, `inflight` streams; reconnects with the current SVID at
/// every rotation, and after a transport failure (which is recorded).
async fn connection(
    c: usize,
    inflight: usize,
    listen: SocketAddr,
    server_name: rustls::pki_types::ServerName<'static>,
    shared: Arc<Shared>,
) -> Result<(), BoxError> {
    let k = c % CALLERS.len();
    let authority = format!("{}:{}", server_name.to_str(), listen.port());
    let mut n = c as u64 * 1_000_003;
    while !shared.done.load(Ordering::Relaxed) {
        let generation = shared.generation.load(Ordering::SeqCst);
        let connector = shared.connectors.read().unwrap_or_else(|e| e.into_inner())[k].clone();
        let sender = match connect(&connector, listen, &server_name).await {
            Ok(s) => s,
            Err(e) => {
                shared.fail(format!("connect as {}: {e}", CALLERS[k]));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut streams = tokio::task::JoinSet::new();
        for t in 0..inflight {
            let (sender, shared, authority) =
                (sender.clone(), Arc::clone(&shared), authority.clone());
            let first = n + t as u64;
            streams.spawn(async move {
                let mut n = first;
                let mut sender = sender;
                while !shared.done.load(Ordering::Relaxed)
                    && shared.generation.load(Ordering::SeqCst) == generation
                {
                    n += inflight as u64;
                    if let Err(e) = one_request(&mut sender, &authority, k, n, &shared).await {
                        shared.fail(format!("request as {}: {e}", CALLERS[k]));
                        return;
                    }
                }
            });
        }
        while streams.join_next().await.is_some() {}
        n += 1_000_000;
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connect(
    connector: &TlsConnector,
    listen: SocketAddr,
    server_name: &rustls::pki_types::ServerName<'static>,
) -> Result<Sender, BoxError> {
    let tcp = tokio::net::TcpStream::connect(listen).await?;
    tcp.set_nodelay(true)?;
    let tls = connector.connect(server_name.clone(), tcp).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Request `n` as caller `k`: seven in eight must be allowed, the eighth denied.
async fn one_request(
    sender: &mut Sender,
    authority: &str,
    k: usize,
    n: u64,
    shared: &Shared,
) -> Result<(), BoxError> {
    let (method, path, expected) = match n % 16 {
        7 => ("DELETE", format!("/api/v1/res-{k}/items/{}", n % 1000), 403),
        15 => ("GET", format!("/admin/console/{}", n % 1000), 403),
        m if m % 4 == 0 => ("POST", format!("/api/v1/res-{k}/items/{}", n % 1000), 200),
        _ => ("GET", format!("/api/v1/res-{k}/items/{}", n % 1000), 200),
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"))
        .header("accept", "application/json")
        .header("user-agent", "soak/1.0 (wardgate bench)")
        .body(Empty::<Bytes>::new())?;
    let start = Instant::now();
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    let us = start.elapsed().as_micros() as u64;
    if status != expected {
        shared.fail(format!(
            "misjudged: {method} {path} as {} answered {status}, expected {expected}",
            CALLERS[k]
        ));
    } else if expected == 200 {
        shared.allowed.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.denied.fetch_add(1, Ordering::Relaxed);
    }
    let mut h = shared.interval.lock().unwrap_or_else(|e| e.into_inner());
    h.record(us.max(1))?;
    Ok(())
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    Some(ticks as f64 / hz)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

struct Verdict {
    pass: bool,
    text: String,
}

/// The checks at the end, and the summary.
fn judge(
    plan: &Plan,
    samples: &[Sample],
    shared: &Shared,
    (swaps, invalid_swaps, refusals_reported, rotations): (u64, u64, u64, u64),
    log_bytes: u64,
) -> Verdict {
    let mut t = String::new();
    let mut pass = true;
    let allowed = shared.allowed.load(Ordering::Relaxed);
    let denied = shared.denied.load(Ordering::Relaxed);
    let failures = shared.failure_count.load(Ordering::Relaxed);
    let _ = writeln!(
        t,
        "wardgate soak: {:.1} min, {} rules, {} x {} streams through Envoy (mTLS HTTP/2), decision log to a file, {} cores shared with other work (figures are noisy)",
        plan.duration.as_secs_f64() / 60.0,
        plan.rules,
        plan.conns,
        plan.inflight,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        t,
        "requests: {allowed} allowed (200) and {denied} denied (403) as expected; {failures} failed or misjudged"
    );
    let _ = writeln!(
        t,
        "bundle swaps: {swaps} ({invalid_swaps} invalid, {refusals_reported} of them reported refused); SVID rotations: {rotations}; reconnects: {}; admin scrapes: {}; decision log: {:.1} MiB",
        shared.reconnects.load(Ordering::Relaxed),
        shared.scrapes.load(Ordering::Relaxed),
        log_bytes as f64 / 1048576.0
    );
    let mut check = |ok: bool, what: String| {
        let _ = writeln!(t, "[{}] {what}", if ok { "ok" } else { "FAIL" });
        pass &= ok;
    };
    check(failures == 0, format!("no failed or misjudged request, no failed admin scrape, every valid bundle in force ({failures} failures)"));
    check(
        refusals_reported == invalid_swaps && (invalid_swaps > 0 || !plan.full),
        format!("every refused bundle reported in wardgate_reload_attempts_total{{result=\"invalid\"}} and wardgate_reload_consecutive_failures ({refusals_reported}/{invalid_swaps})"),
    );
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= plan.warmup.as_secs_f64())
        .collect();
    let q = steady.len() / 4;
    if q >= 1 {
        let first = &steady[..q];
        let last = &steady[steady.len() - q..];
        let rss_a = median(first.iter().map(|s| s.rss_kib).collect());
        let rss_b = median(last.iter().map(|s| s.rss_kib).collect());
        let limit = (rss_a as f64 * (1.0 + RSS_TOLERANCE.0)) as u64 + RSS_TOLERANCE.1;
        check(
            rss_b <= limit,
            format!(
                "RSS after warm-up: median {rss_a} KiB (first quarter) -> {rss_b} KiB (last quarter), limit {limit} KiB (+10% + 4 MiB)"
            ),
        );
        let fd_a = median(first.iter().map(|s| s.fds).collect());
        let fd_b = median(last.iter().map(|s| s.fds).collect());
        check(
            fd_b <= fd_a + FD_TOLERANCE,
            format!(
                "open descriptors: median {fd_a} -> {fd_b}, limit {} (+{FD_TOLERANCE})",
                fd_a + FD_TOLERANCE
            ),
        );
        let th_a = median(first.iter().map(|s| s.threads).collect());
        let th_b = median(last.iter().map(|s| s.threads).collect());
        let p99_a = median(first.iter().map(|s| s.p99_us).collect());
        let p99_b = median(last.iter().map(|s| s.p99_us).collect());
        let _ = writeln!(
            t,
            "threads: {th_a} -> {th_b}; p99 (median of interval p99s): {p99_a} us -> {p99_b} us (reported, no limit)"
        );
    } else {
        let _ = writeln!(t, "too few samples after warm-up for the growth checks");
        pass &= !plan.full;
    }
    if !steady.is_empty() {
        let med = |f: &dyn Fn(&Sample) -> f64| {
            let mut v: Vec<f64> = steady.iter().map(|s| f(s)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let _ = writeln!(
            t,
            "after warm-up ({} samples), medians: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {:.3} CPU s per 10k checks, RSS {:.1} MiB, {:.0} fds, {:.0} threads",
            steady.len(),
            med(&|s| s.rps),
            med(&|s| s.p50_us as f64),
            med(&|s| s.p99_us as f64),
            med(&|s| s.cpu_s_per_10k),
            med(&|s| s.rss_kib as f64) / 1024.0,
            med(&|s| s.fds as f64),
            med(&|s| s.threads as f64),
        );
    }
    for f in shared
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .take(10)
    {
        let _ = writeln!(t, "  failure: {f}");
    }
    let _ = writeln!(t, "verdict: {}", if pass { "PASS" } else { "FAIL" });
    Verdict { pass, text: t }
}

fn write_results(plan: &Plan, samples: &[Sample], verdict: &Verdict) -> Result<(), BoxError> {
    if let Some(parent) = plan.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut csv = String::from("t_s,rss_kib,fds,threads,checks,rps,cpu_s_per_10k,p50_us,p99_us,reload_ok,reload_invalid,swaps,invalid_swaps,rotations,failures\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.0},{},{},{},{},{:.0},{:.4},{},{},{},{},{},{},{},{}",
            s.t_s,
            s.rss_kib,
            s.fds,
            s.threads,
            s.checks,
            s.rps,
            s.cpu_s_per_10k,
            s.p50_us,
            s.p99_us,
            s.reload_ok,
            s.reload_invalid,
            s.swaps,
            s.invalid_swaps,
            s.rotations,
            s.failures
        );
    }
    std::fs::write(plan.out.with_extension("csv"), csv)?;
    std::fs::write(plan.out.with_extension("txt"), &verdict.text)?;
    std::fs::write(plan.out.with_extension("svg"), svg(plan, samples))?;
    Ok(())
}

/// One plot panel: its title and the value it draws from a sample.
type Panel = (&'static str, fn(&Sample) -> f64);

/// Three panels over time: RSS (MiB), open descriptors, p99 (us).
fn svg(plan: &Plan, samples: &[Sample]) -> String {
    let (w, ph, left, top) = (760.0, 150.0, 70.0, 30.0);
    let panels: [Panel; 3] = [
        ("wardgate RSS (MiB)", |s| s.rss_kib as f64 / 1024.0),
        ("wardgate open file descriptors", |s| s.fds as f64),
        ("p99 latency through Envoy per 30 s interval (us)", |s| {
            s.p99_us as f64
        }),
    ];
    let t_max = plan.duration.as_secs_f64().max(1.0);
    let height = top + panels.len() as f64 * (ph + 50.0) + 10.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">wardgate soak, {:.0} min, {} rules (shared machine: noisy)</text>\n",
        plan.duration.as_secs_f64() / 60.0,
        plan.rules
    );
    for (i, (title, f)) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (ph + 50.0) + 20.0;
        let vals: Vec<f64> = samples.iter().map(f).collect();
        let max = vals.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1;
        let pw = w - left - 20.0;
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{}\" font-size=\"13\">{title}</text><rect x=\"{left}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{max:.0}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">0</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.0} min</text>",
            y0 - 5.0,
            left - 5.0,
            y0 + 10.0,
            left - 5.0,
            y0 + ph,
            left + pw,
            y0 + ph + 14.0,
            t_max / 60.0
        );
        if plan.warmup.as_secs_f64() > 0.0 {
            let x = left + pw * plan.warmup.as_secs_f64() / t_max;
            let _ = writeln!(out, "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ccc\" stroke-dasharray=\"4\"/>", y0 + ph);
        }
        let points: Vec<String> = samples
            .iter()
            .zip(&vals)
            .map(|(s, v)| {
                format!(
                    "{:.1},{:.1}",
                    left + pw * s.t_s / t_max,
                    y0 + ph - ph * v / max
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#2b7bb9\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    out.push_str("</svg>\n");
    out
}
