//! End-to-end load through the real Envoy: what ext_authz costs, and what wardgate costs on top.
//!
//! One Envoy (`--concurrency 1`, the shipped `deploy/envoy/envoy-sidecar.yaml` rendered with
//! fresh ports, access log to `/dev/null`) fronts an echo upstream as the workload `lab`. A Rust
//! HTTP/2 load generator (hyper + rustls) presents the real X.509 SVIDs of several workloads
//! (ehr, imaging, pharmacy, billing, scheduling) over mTLS, `CONNS` connections x `INFLIGHT`
//! streams, closed loop, and every answer must be 200. Variants, each with a freshly started
//! Envoy, alternating over rounds:
//!
//! * `envoy`: no ext_authz filter (the limit of the hop);
//! * `envoy+rbac`: Envoy's native RBAC filter allowing the five callers' rules (principal,
//!   methods, path prefixes): the in-proxy peer;
//! * `envoy+allow-all tcp`: ext_authz to the do-nothing allow-all tonic server (in this process,
//!   on its own one-thread runtime) over loopback TCP: the limit for any ext_authz server;
//! * `envoy+wardgate uds` / `envoy+wardgate tcp`: ext_authz to the `wardgate serve` binary (its
//!   defaults: multi-thread runtime, metrics, decision log to its stdout file) holding a
//!   10,000-rule generated bundle plus the five callers' rules.
//!
//! The shipped template's gRPC health checks are removed in every variant (the allow-all server
//! has no health service), so all variants configure Envoy alike. For the authorizer the bench
//! reads its CPU time over the measured window (utime + stime of wardgate's `/proc/<pid>/stat`,
//! or of the allow-all runtime's threads in `/proc/self/task`) and reports CPU seconds per
//! 10,000 checks. `$WARDGATE_SERVE_ARGS` adds `wardgate serve` arguments. After the last round
//! the bench reads the resident memory of the UDS `wardgate serve` (a sidecar idle after load),
//! then again after three scrapes of its `/metrics`.
//!
//! The machine has 2 cores shared by Envoy, the upstream, the authorizer and the load generator;
//! absolute figures are those of that box, the ratios within one run are what to compare.
//!
//! `cargo bench --bench envoy_load`: 2 rounds of 4 s per variant. Without `--bench` (the
//! `cargo test --all-targets` smoke run) one short round with little concurrency. Envoy comes
//! from `scripts/install-test-deps.sh`; when it is missing the run fails under `CI=true` and is
//! skipped loudly otherwise. The last line is a JSON summary (`BENCH_JSON {...}`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

use e2e::pki::Pki;
use e2e::process::{free_port, render_template, ChildGuard, Envoy};
use e2e::upstream::EchoUpstream;
use load::{Listen, Summary};

type BoxError = e2e::BoxError;

/// Generated rules in wardgate's bundle (`--bench`); the smoke run uses `SMOKE_RULES` so a
/// debug wardgate starts quickly.
const RULES: usize = 10_000;
const SMOKE_RULES: usize = 200;
const DESTINATION: &str = "lab";
const CALLERS: [&str; 5] = ["ehr", "imaging", "pharmacy", "billing", "scheduling"];

struct Settings {
    conns: usize,
    inflight: usize,
    rounds: usize,
    warmup: Duration,
    window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    Alone,
    Rbac,
    AllowAllTcp,
    WardgateUds,
    WardgateTcp,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Alone,
        Variant::Rbac,
        Variant::AllowAllTcp,
        Variant::WardgateUds,
        Variant::WardgateTcp,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Alone => "envoy",
            Variant::Rbac => "envoy+rbac",
            Variant::AllowAllTcp => "envoy+allow-all tcp",
            Variant::WardgateUds => "envoy+wardgate uds",
            Variant::WardgateTcp => "envoy+wardgate tcp",
        }
    }
}

fn main() {
    let full = load::full_run();
    let Some(envoy_binary) = e2e::process::require_envoy("benches/envoy_load") else {
        println!(
            "BENCH_JSON {}",
            serde_json::json!({"bench": "envoy_load", "skipped": true})
        );
        return;
    };
    let s = if full {
        Settings {
            conns: load::env_usize("CONNS", 10),
            inflight: load::env_usize("INFLIGHT", 8),
            rounds: load::env_usize("ROUNDS", 2),
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(load::env_usize("SECONDS", 4) as u64),
        }
    } else {
        Settings {
            conns: 5,
            inflight: 2,
            rounds: 1,
            warmup: Duration::from_millis(100),
            window: Duration::from_millis(300),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The allow-all server gets its own one-thread runtime, like a separate small process.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("allow-all")
        .enable_all()
        .build()
        .expect("server runtime");
    let result = rt.block_on(run(&envoy_binary, &s, &server_rt, full));
    if let Err(e) = result {
        panic!("envoy_load: {e}");
    }
}

async fn run(
    envoy_binary: &Path,
    s: &Settings,
    server_rt: &tokio::runtime::Runtime,
    full: bool,
) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("wardgate-envoy-load-")
        .tempdir()?;
    let pki = Pki::generate(&dir.path().join("pki"))?;
    let destination = pki.svid(DESTINATION)?.clone();
    let upstream = EchoUpstream::start().await?;

    // The bundle: the generated 10,000 rules, then the five callers' rules (so they are found
    // late in rule order, the harder case for a linear engine).
    let bundle_path = dir.path().join("bundle.yaml");
    let rules = if full { RULES } else { SMOKE_RULES };
    let mut bundle = support::bundle(rules);
    for (k, caller) in CALLERS.iter().enumerate() {
        bundle.push_str(&format!(
            "  - name: {caller}-to-lab\n    from: [\"{}\"]\n    to: [\"{}\"]\n    methods: [GET, POST]\n    paths: [\"/api/v1/res-{k}/**\", \"/api/v1/res-{k}\"]\n",
            pki.svid(caller)?.spiffe_id,
            destination.spiffe_id
        ));
    }
    std::fs::write(&bundle_path, &bundle)?;

    // Authorizers.
    let allow_addr = load::free_tcp_addr();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx = stop_rx.clone();
    let allow_task = server_rt.spawn(load::serve_allow_all(Listen::Tcp(allow_addr), async move {
        let _ = rx.wait_for(|v| *v).await;
    }));
    let ward_socket = dir.path().join("wardgate.sock");
    let (ward_uds, ward_uds_admin) = start_wardgate(
        &bundle_path,
        &format!("unix:{}", ward_socket.display()),
        dir.path(),
        "wardgate-uds",
    )?;
    let ward_tcp_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let (ward_tcp, _) = start_wardgate(
        &bundle_path,
        &ward_tcp_addr.to_string(),
        dir.path(),
        "wardgate-tcp",
    )?;
    wait_grpc(&GrpcTarget::Unix(ward_socket.clone()), &ward_uds).await?;
    wait_grpc(&GrpcTarget::Tcp(ward_tcp_addr), &ward_tcp).await?;
    wait_grpc(&GrpcTarget::Tcp(allow_addr), &ward_tcp).await?;

    // Clients: one TLS config per caller.
    let mut roots = RootCertStore::empty();
    for root in pki.trusted_roots() {
        roots.add(root)?;
    }
    let mut connectors = Vec::new();
    for caller in CALLERS {
        let svid = pki.svid(caller)?;
        connectors.push(load::h2_mtls_connector(
            &roots,
            svid.cert_der.clone(),
            svid.private_key(),
        )?);
    }

    let template = std::fs::read_to_string(e2e::process::envoy_template_path())?;
    println!("wardgate serve extra arguments: {:?}", extra_serve_args());
    println!(
        "Envoy end-to-end load: {} mTLS HTTP/2 connections ({} workloads) x {} streams, {} round(s) of {:?} per variant, Envoy --concurrency 1, {} cores shared by everything",
        s.conns,
        CALLERS.len(),
        s.inflight,
        s.rounds,
        s.window,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut merged: HashMap<Variant, (Histogram<u64>, Duration)> = HashMap::new();
    let mut authz_cpu: HashMap<Variant, (f64, u64)> = HashMap::new();
    for round in 0..s.rounds {
        for variant in Variant::ALL {
            let config = envoy_config(
                &template,
                variant,
                &ward_socket,
                ward_tcp_addr,
                allow_addr,
                &pki,
            )?;
            let envoy = start_envoy(
                envoy_binary,
                &config,
                &destination,
                &pki,
                upstream.addr,
                dir.path(),
                variant,
            )
            .await?;
            let pid = |p: Option<u32>| p.map(Cpu::Process);
            let pid = match variant {
                Variant::WardgateUds => pid(ward_uds.pid()),
                Variant::WardgateTcp => pid(ward_tcp.pid()),
                Variant::AllowAllTcp => Some(Cpu::Threads("allow-all")),
                _ => None,
            };
            let (h, elapsed, cpu) =
                drive(&envoy, &destination.dns_name, &connectors, s, pid).await?;
            let one = Summary::new(&h, elapsed);
            println!(
                "  round {round} {:<20} {:>8.0} req/s  p50 {:>6} us  p99 {:>6} us",
                variant.name(),
                one.rps(),
                one.p50_us,
                one.p99_us
            );
            let e = merged
                .entry(variant)
                .or_insert_with(|| (load::histogram(), Duration::ZERO));
            e.0.add(&h)?;
            e.1 += elapsed;
            if let Some(cpu) = cpu {
                let c = authz_cpu.entry(variant).or_insert((0.0, 0));
                c.0 += cpu;
                c.1 += h.len();
            }
            drop(envoy);
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), allow_task).await;
    let idle_rss = tokio::task::block_in_place(|| idle_rss_mib(&ward_uds, ward_uds_admin));
    drop((ward_uds, ward_tcp));

    println!(
        "\n{:<20} {:>9} {:>8} {:>8} {:>9} {:>16}",
        "variant", "req/s", "p50 us", "p99 us", "p99.9 us", "authz cpu s/10k"
    );
    let mut rows = Vec::new();
    let sum: BTreeMap<&str, Summary> = Variant::ALL
        .iter()
        .map(|v| (v.name(), Summary::new(&merged[v].0, merged[v].1)))
        .collect();
    for v in Variant::ALL {
        let x = &sum[v.name()];
        let cpu = authz_cpu
            .get(&v)
            .map(|(s, n)| s / (*n).max(1) as f64 * 10_000.0);
        println!(
            "{:<20} {:>9.0} {:>8} {:>8} {:>9} {:>16}",
            v.name(),
            x.rps(),
            x.p50_us,
            x.p99_us,
            x.p999_us,
            cpu.map_or("-".to_owned(), |c| format!("{c:.3}"))
        );
        let mut j = x.json(v.name());
        j["authz_cpu_s_per_10k"] = cpu.into();
        rows.push(j);
    }
    let allow = sum["envoy+allow-all tcp"].rps();
    let uds = sum["envoy+wardgate uds"].rps() / allow;
    let tcp = sum["envoy+wardgate tcp"].rps() / allow;
    println!(
        "wardgate uds / allow-all tcp throughput: {uds:.3}x (target >= 0.95); wardgate tcp / allow-all tcp: {tcp:.3}x; envoy+allow-all / envoy alone: {:.3}x; envoy+rbac / envoy alone: {:.3}x",
        allow / sum["envoy"].rps(),
        sum["envoy+rbac"].rps() / sum["envoy"].rps(),
    );
    if let Some((idle, scraped)) = idle_rss {
        println!(
            "wardgate serve (uds, {rules} rules, its defaults) resident after the load: {idle:.1} MiB idle, {scraped:.1} MiB after three /metrics scrapes"
        );
    }
    if !full {
        println!("(smoke run: debug build, short; figures are not measurements; use --bench)");
    }
    println!(
        "BENCH_JSON {}",
        serde_json::json!({
            "bench": "envoy_load", "full": full, "rules": rules,
            "conns": s.conns, "inflight": s.inflight, "variants": rows,
            "wardgate_serve_args": extra_serve_args(),
            "ratios": {"wardgate_uds_vs_allow_tcp": uds, "wardgate_tcp_vs_allow_tcp": tcp},
            "wardgate_idle_rss_mib": idle_rss.map(|r| r.0),
            "wardgate_scraped_rss_mib": idle_rss.map(|r| r.1),
        })
    );
    drop(upstream);
    Ok(())
}

/// Extra `wardgate serve` arguments from `$WARDGATE_SERVE_ARGS` (whitespace-separated), e.g.
/// `--decision-log off` to see what the decision log costs.
fn extra_serve_args() -> Vec<String> {
    std::env::var("WARDGATE_SERVE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Resident memory (MiB) of the `wardgate serve` process `child` after the load: after a second
/// of rest, and after three scrapes of its `/metrics` on `admin` (as Prometheus would) and
/// another second. `None` if it cannot be read.
fn idle_rss_mib(child: &ChildGuard, admin: SocketAddr) -> Option<(f64, f64)> {
    use std::io::{Read, Write};
    let pid = child.pid()?.to_string();
    let rss = || support::proc_status_field(&pid, "VmRSS:") as f64 / 1024.0;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss();
    for _ in 0..3 {
        let mut stream = std::net::TcpStream::connect(admin).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: wardgate\r\n\r\n")
            .ok()?;
        let mut page = Vec::new();
        stream.read_to_end(&mut page).ok()?;
    }
    std::thread::sleep(Duration::from_secs(1));
    Some((idle, rss()))
}

/// `wardgate serve` (the binary this bench was built with) on `listen`, admin on a free port
/// (returned).
fn start_wardgate(
    bundle: &Path,
    listen: &str,
    dir: &Path,
    name: &str,
) -> Result<(ChildGuard, SocketAddr), BoxError> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
    command
        .arg("serve")
        .arg("--bundle")
        .arg(bundle)
        .args(["--listen", listen, "--admin", &admin.to_string()])
        .args(extra_serve_args())
        .env("WARDGATE_LOG", "warn");
    Ok((ChildGuard::spawn(name, command, dir)?, admin))
}

enum GrpcTarget {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

/// Wait until a gRPC server answers a Check (any answer).
async fn wait_grpc(target: &GrpcTarget, child: &ChildGuard) -> Result<(), BoxError> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let channel = match target {
            GrpcTarget::Tcp(addr) => {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await
                    .map_err(BoxError::from)
            }
            GrpcTarget::Unix(path) => e2e::grpc::connect(path).await,
        };
        if let Ok(channel) = channel {
            let mut client = AuthorizationClient::new(channel);
            if client
                .check(envoy_types::ext_authz::v3::pb::CheckRequest::default())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "authorizer not answering within 60 s\n{}",
                child.log_tail(4000)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shipped template, adapted to `variant` (still with its `${...}` placeholders).
fn envoy_config(
    template: &str,
    variant: Variant,
    ward_socket: &Path,
    ward_tcp: SocketAddr,
    allow_tcp: SocketAddr,
    pki: &Pki,
) -> Result<String, BoxError> {
    // No gRPC health checks in any variant (the allow-all server has no health service).
    let mut t = cut(template, "    health_checks:\n", "  - name: local_app\n")?;
    let ext_authz = "          - name: envoy.filters.http.ext_authz\n";
    let router = "          - name: envoy.filters.http.router\n";
    let pipe = format!("pipe: {{ path: \"{}\" }}", "${WARDGATE_SOCKET}");
    match variant {
        Variant::Alone => t = cut(&t, ext_authz, router)?,
        Variant::Rbac => {
            t = cut(&t, ext_authz, router)?;
            t = t.replacen(router, &format!("{}{router}", rbac_filter(pki)?), 1);
        }
        Variant::WardgateUds => {
            t = t.replace("${WARDGATE_SOCKET}", &ward_socket.display().to_string());
        }
        Variant::WardgateTcp | Variant::AllowAllTcp => {
            let addr = if variant == Variant::WardgateTcp {
                ward_tcp
            } else {
                allow_tcp
            };
            if !t.contains(&pipe) {
                return Err("template has no wardgate pipe address to replace".into());
            }
            t = t.replace(
                &pipe,
                &format!(
                    "socket_address: {{ address: {}, port_value: {} }}",
                    addr.ip(),
                    addr.port()
                ),
            );
        }
    }
    // Unused placeholders still need a value for the renderer.
    Ok(t.replace("${WARDGATE_SOCKET}", &ward_socket.display().to_string()))
}

/// `text` without the part from `start` (inclusive) to `end` (exclusive).
fn cut(text: &str, start: &str, end: &str) -> Result<String, BoxError> {
    let a = text
        .find(start)
        .ok_or_else(|| format!("template lacks {start:?}"))?;
    let b = a + text[a..]
        .find(end)
        .ok_or_else(|| format!("template lacks {end:?} after {start:?}"))?;
    Ok(format!("{}{}", &text[..a], &text[b..]))
}

/// Envoy's native RBAC filter equivalent to the five callers' bundle rules.
fn rbac_filter(pki: &Pki) -> Result<String, BoxError> {
    let mut f = String::from(
        "          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
",
    );
    for (k, caller) in CALLERS.iter().enumerate() {
        let id = &pki.svid(caller)?.spiffe_id;
        f.push_str(&format!(
            "                  \"{caller}-to-lab\":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - header: {{ name: \":method\", string_match: {{ exact: GET }} }}
                            - header: {{ name: \":method\", string_match: {{ exact: POST }} }}
                        - or_rules:
                            rules:
                            - url_path: {{ path: {{ prefix: \"/api/v1/res-{k}/\" }} }}
                            - url_path: {{ path: {{ exact: \"/api/v1/res-{k}\" }} }}
                    principals:
                    - authenticated: {{ principal_name: {{ exact: \"{id}\" }} }}
"
        ));
    }
    Ok(f)
}

#[allow(clippy::too_many_arguments)] // reason: one call site, each piece is distinct
async fn start_envoy(
    binary: &Path,
    template: &str,
    destination: &e2e::pki::Svid,
    pki: &Pki,
    app: SocketAddr,
    dir: &Path,
    variant: Variant,
) -> Result<Envoy, BoxError> {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let p = |p: &Path| p.display().to_string();
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("ENVOY_ADMIN_PORT", admin.port().to_string()),
        ("ENVOY_LISTEN_ADDRESS", listen.ip().to_string()),
        ("ENVOY_LISTEN_PORT", listen.port().to_string()),
        ("SVID_CERT", p(&destination.cert_path)),
        ("SVID_KEY", p(&destination.key_path)),
        ("TRUST_BUNDLE_DIR", p(&pki.trust_bundle_dir)),
        ("APP_ADDRESS", app.ip().to_string()),
        ("APP_PORT", app.port().to_string()),
        ("ACCESS_LOG_PATH", "/dev/null".to_owned()),
    ]);
    let config = render_template(template, &vars)?;
    let tag = variant.name().replace([' ', '+'], "-");
    let config_path = dir.join(format!("envoy-{tag}.yaml"));
    std::fs::write(&config_path, config)?;
    let base_id = std::process::id() % 1_000_000 + 2_000;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&config_path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .args(["--base-id", &base_id.to_string()]);
    let envoy = Envoy {
        child: ChildGuard::spawn(&format!("envoy-{tag}"), command, dir)?,
        listen,
        admin,
        config_path,
        access_log: "/dev/null".into(),
    };
    envoy.wait_ready(&format!("Envoy ({tag})")).await
}

/// Whose CPU time to read: the authorizer's.
#[derive(Debug, Clone, Copy)]
enum Cpu {
    /// A child process (`wardgate serve`).
    Process(u32),
    /// The threads of this process with this name (the in-process allow-all server's runtime).
    Threads(&'static str),
}

impl Cpu {
    /// utime + stime so far, seconds.
    fn seconds(self) -> Option<f64> {
        match self {
            Cpu::Process(pid) => stat_seconds(&format!("/proc/{pid}/stat")),
            Cpu::Threads(name) => {
                let mut total = 0.0;
                for task in std::fs::read_dir("/proc/self/task").ok()? {
                    let task = task.ok()?.path();
                    let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                    if comm.trim_end() == name {
                        total += stat_seconds(&task.join("stat").display().to_string())?;
                    }
                }
                Some(total)
            }
        }
    }
}

/// utime + stime from a `/proc/.../stat` file, seconds.
fn stat_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The closed loop through `envoy`: returns the window's latencies, its length and, with
/// `pid`, that process's CPU seconds over the window.
async fn drive(
    envoy: &Envoy,
    server_name: &str,
    connectors: &[TlsConnector],
    s: &Settings,
    pid: Option<Cpu>,
) -> Result<(Histogram<u64>, Duration, Option<f64>), BoxError> {
    let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let authority = format!("{}:{}", server_name.to_str(), envoy.listen.port());
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..s.conns {
        let k = c % connectors.len();
        let tcp = tokio::net::TcpStream::connect(envoy.listen).await?;
        tcp.set_nodelay(true)?;
        let tls = connectors[k].connect(server_name.clone(), tcp).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for t in 0..s.inflight {
            let mut sender = sender.clone();
            let (measuring, done) = (Arc::clone(&measuring), Arc::clone(&done));
            let authority = authority.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = load::histogram();
                let mut n = t;
                while !done.load(Ordering::Relaxed) {
                    n += 1;
                    let uri = format!("https://{authority}/api/v1/res-{k}/items/{}", n % 1000);
                    let request = hyper::Request::builder()
                        .method(if n % 4 == 0 { "POST" } else { "GET" })
                        .uri(uri)
                        .header("accept", "application/json")
                        .header("user-agent", "envoy-load/1.0 (wardgate bench)")
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let start = Instant::now();
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    let us = start.elapsed().as_micros() as u64;
                    if status != 200 {
                        return Err::<Histogram<u64>, BoxError>(
                            format!("answer {status}, expected 200").into(),
                        );
                    }
                    if measuring.load(Ordering::Relaxed) {
                        h.record(us.max(1))?;
                    }
                }
                Ok(h)
            }));
        }
    }
    tokio::time::sleep(s.warmup).await;
    let cpu_start = pid.and_then(Cpu::seconds);
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(s.window).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu_end = pid.and_then(Cpu::seconds);
    done.store(true, Ordering::Relaxed);
    let mut h = load::histogram();
    for t in tasks {
        h.add(&t.await??)?;
    }
    let cpu = cpu_start.zip(cpu_end).map(|(a, b)| b - a);
    Ok((h, elapsed, cpu))
}
