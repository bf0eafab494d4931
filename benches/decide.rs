//! `Policy::decide` latency as the bundle grows, and what compiling a bundle costs.
//!
//! Run with `cargo bench --bench decide`. Criterion measures each case; at the end the bench
//! prints ratios against the 100-rule case measured in the same run (absolute times drift on a
//! shared machine, ratios much less).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use wardgate::policy::{Policy, Request};

mod support;

/// Counts live heap bytes, so the memory report can tell the policy's own size from allocator
/// slack (freed parse garbage the C allocator keeps resident).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Allocations made so far (never decremented): what a step costs in `malloc` calls.
static ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Bytes allocated so far (never decremented): what a step churns through the allocator.
static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Blocks live now: each costs the C allocator a header and rounding beyond its bytes.
static BLOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        BLOCKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        BLOCKS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn allocations() -> usize {
    ALLOCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What `step` left on the heap and what it cost, with its result.
struct Counted {
    /// Live bytes added, MiB.
    mib: f64,
    /// Live blocks added.
    blocks: isize,
    /// Allocations made (including those freed again).
    allocs: usize,
    /// Bytes those allocations asked for (reallocations count their new size).
    allocated: usize,
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} MiB in {} blocks ({} allocations made)",
            self.mib, self.blocks, self.allocs
        )
    }
}

fn counted<T>(step: impl FnOnce() -> T) -> (T, Counted) {
    let blocks = || BLOCKS.load(std::sync::atomic::Ordering::Relaxed) as isize;
    let (live, live_blocks, allocs) = (live_bytes(), blocks(), allocations());
    let allocated = ALLOCATED.load(std::sync::atomic::Ordering::Relaxed);
    let out = step();
    let mib = live_bytes().wrapping_sub(live) as isize as f64 / 1048576.0;
    let counted = Counted {
        mib,
        blocks: blocks() - live_blocks,
        allocs: allocations() - allocs,
        allocated: ALLOCATED.load(std::sync::atomic::Ordering::Relaxed) - allocated,
    };
    (out, counted)
}

const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];

fn main() {
    // Profiling hooks for callgrind: `WARDGATE_PROFILE=decide:10000` decides the hit-late
    // request of a 10,000-rule bundle 200,000 times; `compile:10000` compiles it once;
    // `compile-time:N` (best of five), `memory:N` (resident memory holding the policy, before and
    // after the trim `serve` does) and `validate:N` (one compile: time and peak RSS, counted
    // from after the text is generated) report; `serve-memory:N` adds what `serve` builds
    // beside the policy (see `serve_memory`); `log-view:N`, what the decision log's view of the
    // policy holds (see `log_view_memory`). `compile-json`, `compile-time-json` and
    // `validate-json` do the same as their namesakes with the bundle written as JSON.
    if let Ok(spec) = std::env::var("WARDGATE_PROFILE") {
        profile(&spec);
        return;
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut compile_ms = BTreeMap::new();
    let mut group = c.benchmark_group("decide");
    for &n in &SIZES {
        let yaml = support::bundle(n);
        let start = Instant::now();
        let policy = Policy::from_yaml_str("bench.yaml", &yaml).expect("generated bundle is valid");
        compile_ms.insert(n, start.elapsed().as_secs_f64() * 1e3);
        let rules = n - 2;
        let cases = [
            ("hit-early", support::hit(0)),
            ("hit-late", support::hit(rules - 1)),
            ("miss", support::miss(rules / 2)),
        ];
        for (name, (src, dst, method, path)) in &cases {
            let mut req = Request::new(method, path);
            req.source = Some(src);
            req.destination = Some(dst);
            let expect_allow = *name != "miss";
            assert_eq!(
                policy.decide(&req).is_allow(),
                expect_allow,
                "{name} at {n}"
            );
            group.bench_with_input(BenchmarkId::new(*name, n), &req, |b, req| {
                b.iter(|| black_box(policy.decide(black_box(req))).is_allow())
            });
        }
    }
    group.finish();
    c.final_summary();

    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` smoke run: nothing was measured
    }
    println!("\ncompile time (one run each): ");
    for (n, ms) in &compile_ms {
        println!("  {n:>7} rules: {ms:9.1} ms");
    }
    print_ratios();
}

/// Read criterion's median estimates back and print each size relative to 100 rules.
fn print_ratios() {
    // Where criterion wrote its estimates: $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion
    // (scripts/bench.sh builds benches in their own target dir), else target/criterion.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| manifest.join(t).join("criterion"))
        })
        .unwrap_or_else(|| manifest.join("target/criterion"))
        .join("decide");
    println!("\ndecide median, and ratio to the 100-rule bundle in this run:");
    for case in ["hit-early", "hit-late", "miss"] {
        let median = |n: usize| -> Option<f64> {
            let text = std::fs::read_to_string(
                root.join(case)
                    .join(n.to_string())
                    .join("new/estimates.json"),
            )
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["median"]["point_estimate"].as_f64()
        };
        let Some(base) = median(SIZES[0]) else {
            println!("  {case}: no estimates found (run without --test)");
            continue;
        };
        let row: Vec<String> = SIZES
            .iter()
            .filter_map(|&n| median(n).map(|m| format!("{n}: {m:.0} ns ({:.2}x)", m / base)))
            .collect();
        println!("  {case:<9} {}", row.join("  "));
    }
}

fn profile(spec: &str) {
    let (what, n) = spec.split_once(':').unwrap_or((spec, "10000"));
    let n: usize = n.parse().expect("size");
    // `compile-json`, `compile-time-json`, `validate-json`: the same bundle written as JSON.
    if let Some(what) = what.strip_suffix("-json") {
        profile_json(what, n);
        return;
    }
    if what == "memory" {
        // Resident memory of this process holding one compiled bundle of `n` rules (the YAML
        // text dropped), against the same process before it was built.
        let before = support::rss_kib();
        let live_before = live_bytes();
        let policy = {
            let yaml = support::bundle(n);
            Policy::from_yaml_str("bench.yaml", &yaml).expect("valid")
        };
        let untrimmed = support::rss_kib();
        // What `wardgate serve` does after every compile (src/reload/mod.rs, src/main.rs).
        wardgate::reload::set_memory_release(|| {
            // SAFETY: returns glibc's free heap pages to the kernel; touches no memory in use.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        wardgate::reload::release_freed_memory();
        let after = support::rss_kib();
        println!(
            "memory {n} rules: rss {:.1} MiB (+{:.1} MiB), policy heap {:.1} MiB, peak rss {:.1} MiB, rss before trim {:.1} MiB",
            after as f64 / 1024.0,
            (after - before) as f64 / 1024.0,
            (live_bytes() - live_before) as f64 / 1048576.0,
            support::hwm_kib() as f64 / 1024.0,
            untrimmed as f64 / 1024.0,
        );
        black_box(&policy);
        return;
    }
    if what == "serve-memory" {
        serve_memory(n);
        return;
    }
    if what == "log-view" {
        log_view_memory(n);
        return;
    }
    if what == "validate" {
        validate(n, &BundleText::yaml(n));
        return;
    }
    let yaml = BundleText::yaml(n);
    let policy = yaml.compile();
    if what == "compile-time" {
        compile_time(n, &yaml);
    }
    if what == "decide" {
        let (src, dst, method, path) = support::hit(n - 3);
        let mut req = Request::new(method, &path);
        req.source = Some(&src);
        req.destination = Some(&dst);
        let mut allowed = 0;
        for _ in 0..200_000 {
            allowed += usize::from(black_box(policy.decide(black_box(&req))).is_allow());
        }
        println!("{allowed}");
    }
}

/// The compile hooks for the bundle written as JSON: `compile` (once, for callgrind),
/// `compile-time`, `validate`.
fn profile_json(what: &str, n: usize) {
    let json = BundleText::json(n);
    match what {
        "compile" => {
            black_box(json.compile());
        }
        "compile-time" => compile_time(n, &json),
        "validate" => validate(n, &json),
        other => panic!("unknown profile {other}-json"),
    }
}

/// The generated bundle of a hook in one encoding: its file name (which picks the reader), its
/// text, and how the report line names it.
struct BundleText {
    file: &'static str,
    text: String,
    encoding: &'static str,
    /// After "N rules" in the report line: empty for YAML, as the first reports were written.
    tag: &'static str,
}

impl BundleText {
    fn yaml(n: usize) -> BundleText {
        BundleText {
            file: "bench.yaml",
            text: support::bundle(n),
            encoding: "YAML",
            tag: "",
        }
    }

    fn json(n: usize) -> BundleText {
        BundleText {
            file: "bench.json",
            text: support::bundle_json(n),
            encoding: "JSON",
            tag: " (JSON)",
        }
    }

    fn compile(&self) -> Policy {
        Policy::from_yaml_str(self.file, &self.text).expect("valid")
    }
}

/// Compile time of `bundle`, best of five.
fn compile_time(n: usize, bundle: &BundleText) {
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            black_box(bundle.compile());
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min);
    println!(
        "compile {n} rules{}: best of 5 {best:.1} ms ({} bytes of {})",
        bundle.tag,
        bundle.text.len(),
        bundle.encoding
    );
}

/// What `wardgate validate` costs on `bundle`: one compile of the text, its wall time and the
/// process's peak resident memory from then on (text included, as when read).
fn validate(n: usize, bundle: &BundleText) {
    support::reset_hwm();
    let start = Instant::now();
    let policy = bundle.compile();
    let s = start.elapsed().as_secs_f64();
    println!(
        "validate {n} rules{}: {s:.2} s, peak rss {:.1} MiB ({} bytes of {})",
        bundle.tag,
        support::hwm_kib() as f64 / 1024.0,
        bundle.text.len(),
        bundle.encoding
    );
    black_box(&policy);
}

/// What `wardgate serve` (decision log off) holds for a bundle of `n` rules, counted by the
/// allocator step by step: the compiled policy, the telemetry's per-rule state built when the
/// bundle is swapped in, what checks hitting 1,000 distinct rules and two scrapes leave behind;
/// then resident memory after the trim `serve` does.
fn serve_memory(n: usize) {
    use wardgate::telemetry::{CheckEvent, Telemetry, TelemetryConfig};
    let before = support::rss_kib();
    let (policy, compiled) = counted(|| {
        let yaml = support::bundle(n);
        std::sync::Arc::new(Policy::from_yaml_str("bench.yaml", &yaml).expect("valid"))
    });
    let telemetry = Telemetry::new(TelemetryConfig::default()).expect("telemetry");
    let ((), swapped) = counted(|| telemetry.bundle_swapped(&policy, "bench.yaml", Duration::ZERO));
    let ((), loaded) = counted(|| {
        for i in 0..1_000.min(n - 2) {
            let (src, dst, method, path) = support::hit(i * (n - 2) / 1_000.min(n - 2));
            let mut request = Request::new(method, &path);
            request.source = Some(&src);
            request.destination = Some(&dst);
            let decision = policy.decide(&request);
            assert!(decision.is_allow());
            telemetry.record_check(&CheckEvent {
                request: &request,
                decision: &decision,
                policy: Some(&policy),
                revision: Some(policy.revision()),
                elapsed: Duration::from_micros(1),
                request_id: None,
                break_glass_reason: None,
                enforced: true,
            });
        }
    });
    // The trim `serve` does once ready, then three scrapes as Prometheus makes them (the first
    // counted), resident memory before and after them, and after a second trim.
    wardgate::reload::set_memory_release(|| {
        // SAFETY: returns glibc's free heap pages to the kernel; touches no memory in use.
        unsafe {
            libc::malloc_trim(0);
        }
    });
    wardgate::reload::release_freed_memory();
    let after = support::rss_kib();
    let (text, scraped) = counted(|| telemetry.render_metrics(true).expect("metrics"));
    let scrape_bytes = text.len();
    drop(text);
    for _ in 0..2 {
        drop(black_box(telemetry.render_metrics(true).expect("metrics")));
    }
    let scraped_rss = support::rss_kib();
    wardgate::reload::release_freed_memory();
    let retrimmed = support::rss_kib();
    println!(
        "serve-memory {n} rules: rss {:.1} MiB (+{:.1} MiB), {:.1} MiB after three scrapes, \
         {:.1} MiB after another trim; policy {compiled}; telemetry at swap {swapped}; 1000 \
         rules hit {loaded}; scrape of {scrape_bytes} bytes: {} allocations, {:.2} MiB allocated",
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0,
        scraped_rss as f64 / 1024.0,
        retrimmed as f64 / 1024.0,
        scraped.allocs,
        scraped.allocated as f64 / 1048576.0,
    );
    black_box((&policy, &telemetry));
}

/// What the decision log's view of a policy (which hosts, methods and path segments a record
/// may show) holds for a bundle of `n` rules. The log writer builds it for the first record
/// decided by a policy; counted as the live heap the first record of the `n`-rule policy adds,
/// after records of a one-rule policy have warmed the writer (its buffers, a view of that
/// policy, which the new view replaces).
fn log_view_memory(n: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use wardgate::telemetry::{
        CheckEvent, DecisionLogConfig, Redaction, Telemetry, TelemetryConfig,
    };

    /// Counts the bytes the writer hands over, so the bench knows a record was written.
    struct Sink(Arc<AtomicUsize>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(buf.len(), Ordering::SeqCst);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let written = Arc::new(AtomicUsize::new(0));
    let telemetry = Telemetry::new(TelemetryConfig {
        decision_log: Some(DecisionLogConfig {
            sink: Box::new(Sink(Arc::clone(&written))),
            description: "bench".into(),
            queue: 16,
            sample_allows: 1.0,
            redaction: Redaction::default(),
        }),
    })
    .expect("telemetry");
    let compile = |rules: usize| {
        Arc::new(Policy::from_yaml_str("bench.yaml", &support::bundle(rules)).expect("valid"))
    };
    // One allowed check by `policy`, recorded; returns once the writer has written it.
    let record = |policy: &Arc<Policy>| {
        let (src, dst, method, path) = support::hit(0);
        let mut request = Request::new(method, &path);
        request.source = Some(&src);
        request.destination = Some(&dst);
        request.host = "svc-1.clinical.svc.cluster.local:8443";
        let decision = policy.decide(&request);
        assert!(decision.is_allow());
        let before = written.load(Ordering::SeqCst);
        telemetry.record_check(&CheckEvent {
            request: &request,
            decision: &decision,
            policy: Some(policy),
            revision: Some(policy.revision()),
            elapsed: Duration::from_micros(1),
            request_id: None,
            break_glass_reason: None,
            enforced: true,
        });
        let start = Instant::now();
        while written.load(Ordering::SeqCst) == before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "record not written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let small = compile(3);
    let big = compile(n);
    record(&small);
    record(&small);
    let ((), view) = counted(|| record(&big));
    // The same policy again: the view is kept, so this shows what a record alone leaves.
    let ((), again) = counted(|| record(&big));
    println!("log-view {n} rules: view {view}; next record {again}");
    black_box((&small, &big, &telemetry));
}
