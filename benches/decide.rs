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

const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];

fn main() {
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
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion/decide");
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
