//! gRPC Check load: wardgate against the do-nothing allow-all server, in one run.
//!
//! A closed-loop load generator: `CONNS` HTTP/2 connections (one tonic channel each), `INFLIGHT`
//! tasks per connection, each sending its next Check as soon as the last one is answered. The
//! Checks are realistic: SPIFFE principals of generated workloads, API paths, the headers Envoy
//! forwards (request id, user agent, accept, content type, forwarded-for), one in eight a
//! request no rule allows. Latency goes into an HdrHistogram (µs).
//!
//! Targets, all served from this process on their own runtime (`SERVER_THREADS` worker threads,
//! default 1) while the load generator runs on another (`CLIENT_THREADS`, default 1):
//!
//! * `allow-all`: a tonic Authorization server written here that answers OK to everything;
//! * `wardgate`: `wardgate::grpc::run` (the real server: health service, HTTP/2 settings,
//!   `AuthzService`) holding a 10,000-rule generated bundle;
//!
//! each over TCP (loopback) and over a Unix socket. Rounds alternate the targets so drift on the
//! shared machine hits all of them alike; the figures are summed over rounds. wardgate's answers
//! are checked against the expected allow/deny of every request.
//!
//! The machine has 2 cores: the load generator and the server share them, so the absolute
//! throughput is that of a 2-core box doing both jobs; the ratios are what to compare.
//!
//! `cargo bench --bench grpc_load`: 3 rounds of 3 s per target. Without `--bench` (the
//! `cargo test --all-targets` smoke run) one short round with little concurrency. The last
//! line is a JSON summary (`BENCH_JSON {...}`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use hdrhistogram::Histogram;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wardgate::extauthz::{AuthzConfig, AuthzService};
use wardgate::grpc::{self, ServerConfig};
use wardgate::listen::ListenAddr;
use wardgate::policy::Policy;
use wardgate::policy::PolicyHandle;

#[path = "support/load.rs"]
mod load;
mod support;

use load::{Listen, Summary};

const RULES: usize = 10_000;

struct Settings {
    conns: usize,
    inflight: usize,
    rounds: usize,
    warmup: Duration,
    window: Duration,
    server_threads: usize,
    client_threads: usize,
}

fn main() {
    let full = load::full_run();
    let s = if full {
        Settings {
            conns: load::env_usize("CONNS", 4),
            inflight: load::env_usize("INFLIGHT", 16),
            rounds: load::env_usize("ROUNDS", 3),
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(load::env_usize("SECONDS", 3) as u64),
            server_threads: load::env_usize("SERVER_THREADS", 1),
            client_threads: load::env_usize("CLIENT_THREADS", 1),
        }
    } else {
        Settings {
            conns: 2,
            inflight: 4,
            rounds: 1,
            warmup: Duration::from_millis(100),
            window: Duration::from_millis(300),
            server_threads: 1,
            client_threads: 1,
        }
    };

    let policy = Policy::from_yaml_str("bench.yaml", &support::bundle(RULES))
        .expect("generated bundle is valid");
    let policy: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
    let checks = Arc::new(check_requests(RULES));
    let service = AuthzService::new(Arc::clone(&policy), AuthzConfig::default());
    let expect_allow: Arc<Vec<bool>> = Arc::new(
        checks
            .iter()
            .map(|c| service.respond(c).status.is_some_and(|s| s.code == 0))
            .collect(),
    );
    assert!(expect_allow.iter().any(|a| *a) && expect_allow.iter().any(|a| !*a));

    let dir = tempfile::Builder::new()
        .prefix("wardgate-grpc-load-")
        .tempdir()
        .expect("tempdir");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .thread_name("load")
        .enable_all()
        .build()
        .expect("client runtime");

    // Start the four servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let allow_tcp = load::free_tcp_addr();
    let allow_uds = dir.path().join("allow.sock");
    let ward_tcp = load::free_tcp_addr();
    let ward_uds = dir.path().join("wardgate.sock");
    let mut servers = Vec::new();
    servers.push(server_rt.spawn(load::serve_allow_all(Listen::Tcp(allow_tcp), stopped())));
    servers.push(server_rt.spawn(load::serve_allow_all(
        Listen::Unix(allow_uds.clone()),
        stopped(),
    )));
    for addr in [
        ListenAddr::Tcp(ward_tcp),
        ListenAddr::Unix(ward_uds.clone()),
    ] {
        let fut = grpc::run(
            addr,
            Arc::clone(&policy),
            ServerConfig::default(),
            stopped(),
        );
        servers.push(server_rt.spawn(async move {
            fut.await.expect("wardgate server");
        }));
    }

    let mut targets: Vec<(&str, Target)> = vec![
        ("allow-all tcp", Target::Tcp(allow_tcp)),
        ("wardgate tcp", Target::Tcp(ward_tcp)),
        ("allow-all uds", Target::Unix(allow_uds)),
        ("wardgate uds", Target::Unix(ward_uds)),
    ];
    // `FIXED_ANSWER=1`: also a server that answers every Check with a copy of wardgate's answer
    // to an allowed request (headers, metadata): what the answer's size costs, without deciding.
    if std::env::var("FIXED_ANSWER").is_ok_and(|v| v == "1") {
        let i = expect_allow
            .iter()
            .position(|a| *a)
            .expect("an allowed check");
        let answer = load::Fixed(Arc::new(service.respond(&checks[i])));
        let path = dir.path().join("fixed.sock");
        servers.push(server_rt.spawn(load::serve_fixed_unix(answer, path.clone(), stopped())));
        targets.push(("fixed-answer uds", Target::Unix(path)));
    }
    println!(
        "gRPC Check load: {} connections x {} in flight, {} round(s) of {:?} per target; server runtime {} thread(s), load generator {} thread(s), {} cores shared by both",
        s.conns,
        s.inflight,
        s.rounds,
        s.window,
        s.server_threads,
        s.client_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut merged: HashMap<&str, (Histogram<u64>, Duration)> = HashMap::new();
    client_rt.block_on(async {
        for round in 0..s.rounds {
            for (name, target) in &targets {
                let check_answers = name.starts_with("wardgate");
                let (h, elapsed) = run_load(
                    target,
                    &s,
                    Arc::clone(&checks),
                    check_answers.then(|| Arc::clone(&expect_allow)),
                )
                .await;
                let one = Summary::new(&h, elapsed);
                println!(
                    "  round {round} {name:<17} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us",
                    one.rps(),
                    one.p50_us,
                    one.p99_us
                );
                let entry = merged
                    .entry(name)
                    .or_insert_with(|| (load::histogram(), Duration::ZERO));
                entry.0.add(&h).expect("merge histograms");
                entry.1 += elapsed;
            }
        }
    });
    let _ = stop_tx.send(true);
    server_rt.block_on(async {
        for s in servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
    });

    let sum: HashMap<&str, Summary> = merged
        .iter()
        .map(|(k, (h, e))| (*k, Summary::new(h, *e)))
        .collect();
    println!(
        "\n{:<17} {:>10} {:>8} {:>8} {:>8}",
        "target", "req/s", "p50 us", "p99 us", "p99.9 us"
    );
    for (name, _) in &targets {
        let x = &sum[*name];
        println!(
            "{name:<17} {:>10.0} {:>8} {:>8} {:>8}",
            x.rps(),
            x.p50_us,
            x.p99_us,
            x.p999_us
        );
    }
    let mut ratios = serde_json::Map::new();
    for transport in ["tcp", "uds"] {
        let a = &sum[format!("allow-all {transport}").as_str()];
        let w = &sum[format!("wardgate {transport}").as_str()];
        let tput = w.rps() / a.rps();
        let p99 = w.p99_us as f64 / a.p99_us.max(1) as f64;
        println!(
            "wardgate / allow-all over {transport}: throughput {tput:.3}x (target >= 0.95), p99 {p99:.3}x (target <= 1.10)"
        );
        ratios.insert(format!("throughput_{transport}"), tput.into());
        ratios.insert(format!("p99_{transport}"), p99.into());
    }
    if !full {
        println!("(smoke run: debug build, short; figures are not measurements; use --bench)");
    }
    let rows: Vec<_> = targets.iter().map(|(n, _)| sum[n].json(n)).collect();
    println!(
        "BENCH_JSON {}",
        serde_json::json!({
            "bench": "grpc_load", "full": full, "rules": RULES,
            "conns": s.conns, "inflight": s.inflight,
            "server_threads": s.server_threads, "client_threads": s.client_threads,
            "targets": rows, "ratios": ratios,
        })
    );
}

enum Target {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

async fn connect(target: &Target) -> Channel {
    // Servers start on another runtime: retry briefly until they listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = match target {
            Target::Tcp(addr) => {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("uri")
                    .tcp_nodelay(true)
                    .connect()
                    .await
            }
            Target::Unix(path) => {
                let path = path.clone();
                Endpoint::from_static("http://wardgate.invalid")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            }
        };
        match attempt {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One closed-loop run against `target`: warm-up, then the measured window. Returns the
/// latencies of the window and its length.
async fn run_load(
    target: &Target,
    s: &Settings,
    checks: Arc<Vec<CheckRequest>>,
    expect_allow: Option<Arc<Vec<bool>>>,
) -> (Histogram<u64>, Duration) {
    let mut channels = Vec::new();
    for _ in 0..s.conns {
        channels.push(connect(target).await);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        for t in 0..s.inflight {
            let mut client = AuthorizationClient::new(channel.clone());
            let checks = Arc::clone(&checks);
            let expect = expect_allow.clone();
            let (measuring, done) = (Arc::clone(&measuring), Arc::clone(&done));
            let mut next = (c * s.inflight + t) * 7;
            tasks.push(tokio::spawn(async move {
                let mut h = load::histogram();
                while !done.load(Ordering::Relaxed) {
                    let i = next % checks.len();
                    next += 1;
                    let start = Instant::now();
                    let reply = client
                        .check(checks[i].clone())
                        .await
                        .expect("Check answered");
                    let us = start.elapsed().as_micros() as u64;
                    if let Some(expect) = &expect {
                        let allowed = reply.get_ref().status.as_ref().is_some_and(|s| s.code == 0);
                        assert_eq!(allowed, expect[i], "wardgate answer for check {i}");
                    }
                    if measuring.load(Ordering::Relaxed) {
                        h.record(us.max(1)).expect("in histogram range");
                    }
                }
                h
            }));
        }
    }
    tokio::time::sleep(s.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(s.window).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut h = load::histogram();
    for t in tasks {
        h.add(t.await.expect("load task")).expect("merge");
    }
    (h, elapsed)
}

/// Realistic Checks: one per generated workload pair, mostly allowed API calls, one in eight a
/// path no rule lists.
fn check_requests(rules: usize) -> Vec<CheckRequest> {
    (0..256)
        .map(|k| {
            let i = (k * 7919) % (rules - 2);
            let (src, dst, method, path) = if k % 8 == 7 {
                support::miss(i)
            } else {
                support::hit(i)
            };
            check(&src, &dst, method, &path, k)
        })
        .collect()
}

fn check(src: &str, dst: &str, method: &str, path: &str, k: usize) -> CheckRequest {
    let headers = [
        (":authority", "svc.clinical.svc.cluster.local"),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "grpc-load/1.0 (wardgate bench)"),
        ("x-forwarded-proto", "https"),
        (
            "x-forwarded-client-cert",
            "By=spiffe://hospital.example/ns/clinical/sa/svc",
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .chain(std::iter::once((
        "x-request-id".to_owned(),
        format!("0f8fad5b-d9cb-469f-a165-{k:012x}"),
    )))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: src.to_owned(),
                ..Peer::default()
            }),
            destination: Some(Peer {
                principal: dst.to_owned(),
                ..Peer::default()
            }),
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_795_000_000,
                    nanos: 0,
                }),
                http: Some(HttpRequest {
                    id: format!("{}", 1_000_000 + k),
                    method: method.into(),
                    path: path.into(),
                    host: "svc.clinical.svc.cluster.local".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    headers,
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}
