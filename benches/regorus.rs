//! wardgate against the general-purpose-engine peer: the same decisions evaluated by `regorus`
//! (the Rust implementation of OPA's Rego) on an equivalent Rego policy generated from the same
//! bundle.
//!
//! For each size the bench generates the bundle (`benches/support::bundle`), translates it rule by
//! rule into Rego (segments become `startswith` tests on the SPIFFE ID, `**` path patterns become
//! `startswith` on the prefix plus `/`, the deny boundaries come first as a `deny` rule that
//! overrides every `permit`), and evaluates one request set with both engines. Every request must
//! get the same answer from both (the bench panics otherwise); then it times each engine on the
//! request set and prints the per-decision time and the ratio.
//!
//! The translation is the straightforward one a policy author would write: one Rego rule per
//! bundle rule. Rego evaluates `permit` by trying its definitions in turn, so regorus is linear
//! in the number of rules; its sizes stop at 10,000 (about 15 ms per decision there) to keep the
//! run short. wardgate's time includes building the `Request`; regorus's includes `set_input` of
//! a pre-built input value and `eval_rule`.
//!
//! `cargo bench --bench regorus` measures 100, 1,000 and 10,000 rules. Without `--bench` (as
//! `cargo test --all-targets` runs it) it does a smoke run at 100 rules: agreement checked, times
//! printed but meaningless in a debug build. The last line of output is a JSON summary
//! (`BENCH_JSON {...}`) that `scripts/bench.sh` collects.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wardgate::policy::{Policy, Request};

mod support;

/// One request: source, destination, method, path.
type Req = (String, String, String, String);

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full { &[100, 1_000, 10_000] } else { &[100] };
    // Time spent measuring each engine at each size (at least one pass over the requests).
    let budget = if full {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(200)
    };
    let mut rows = Vec::new();
    println!("wardgate Policy::decide vs regorus on the same generated bundle and requests");
    for &n in sizes {
        let yaml = support::bundle(n);
        let policy = Policy::from_yaml_str("bench.yaml", &yaml).expect("generated bundle is valid");
        let mut engine = regorus::Engine::new();
        let start = Instant::now();
        // regorus refuses policy files over 1 MiB: the rules go in modules of 2,000 each, all
        // in one package (Rego merges a rule's definitions across a package's modules).
        for (k, module) in rego_policy(n).into_iter().enumerate() {
            engine
                .add_policy(format!("wardgate-{k}.rego"), module)
                .expect("generated Rego parses");
        }
        let rego_load = start.elapsed();
        let requests = requests(n);
        let inputs: Vec<regorus::Value> = requests.iter().map(input).collect();

        // Agreement, request by request.
        let mut allows = 0;
        for (req, input) in requests.iter().zip(&inputs) {
            let ours = decide(&policy, req);
            let theirs = rego_decide(&mut engine, input);
            assert_eq!(
                ours, theirs,
                "wardgate and regorus disagree at {n} rules on {req:?}: wardgate allow={ours}, regorus allow={theirs}"
            );
            allows += usize::from(ours);
        }
        assert!(
            allows > 0 && allows < requests.len(),
            "request set must mix allows and denies"
        );

        let ours = time_per_decision(budget, requests.len(), || {
            for req in &requests {
                black_box(decide(&policy, black_box(req)));
            }
        });
        let theirs = time_per_decision(budget, requests.len(), || {
            for input in &inputs {
                black_box(rego_decide(&mut engine, black_box(input)));
            }
        });
        let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
        println!(
            "  {n:>6} rules: {} requests agree ({allows} allow); wardgate {:>9.0} ns, regorus {:>12.0} ns per decision: {ratio:>8.0}x (regorus policy load {:.0} ms)",
            requests.len(),
            ours.as_secs_f64() * 1e9,
            theirs.as_secs_f64() * 1e9,
            rego_load.as_secs_f64() * 1e3,
        );
        rows.push(serde_json::json!({
            "rules": n,
            "requests": requests.len(),
            "wardgate_ns": ours.as_secs_f64() * 1e9,
            "regorus_ns": theirs.as_secs_f64() * 1e9,
            "ratio": ratio,
        }));
    }
    if !full {
        println!("(smoke run: debug build, times are not measurements; use --bench)");
    }
    println!(
        "BENCH_JSON {}",
        serde_json::json!({"bench": "regorus", "full": full, "sizes": rows})
    );
}

/// Run `pass` (one pass over `per_pass` requests) until `budget` is spent, at least once;
/// return the mean time per request.
fn time_per_decision(budget: Duration, per_pass: usize, mut pass: impl FnMut()) -> Duration {
    pass(); // warm-up
    let start = Instant::now();
    let mut passes = 0u32;
    while passes == 0 || start.elapsed() < budget {
        pass();
        passes += 1;
    }
    start.elapsed() / (passes * per_pass as u32)
}

fn decide(policy: &Policy, (src, dst, method, path): &Req) -> bool {
    let mut req = Request::new(method, path);
    req.source = Some(src);
    req.destination = Some(dst);
    policy.decide(&req).is_allow()
}

fn input((src, dst, method, path): &Req) -> regorus::Value {
    let json = serde_json::json!({
        "source": src, "destination": dst, "method": method, "path": path,
    });
    regorus::Value::from_json_str(&json.to_string()).expect("input JSON")
}

fn rego_decide(engine: &mut regorus::Engine, input: &regorus::Value) -> bool {
    engine.set_input(input.clone());
    let v = engine
        .eval_rule("data.wardgate.allow".into())
        .expect("allow evaluates");
    v == regorus::Value::from(true)
}

/// The requests both engines judge at `n` rules: hits spread over the rule list, misses, other
/// methods, admin consoles, a vendor reaching into clinical, a crossed pair.
fn requests(n: usize) -> Vec<Req> {
    let rules = n - 2;
    let own = |(a, b, c, d): (String, String, &str, String)| (a, b, c.to_owned(), d);
    let mut out = Vec::new();
    for k in 0..16 {
        let i = (k * rules / 16 + k) % rules;
        out.push(own(support::hit(i)));
        out.push(own(support::miss(i)));
        let (s, d, _, p) = support::hit(i);
        out.push((s.clone(), d.clone(), "POST".into(), p.clone()));
        out.push((s.clone(), d.clone(), "DELETE".into(), p));
        out.push((
            s.clone(),
            d.clone(),
            "GET".into(),
            format!("/api/v1/res-{}", i % 50),
        ));
        out.push((s.clone(), d.clone(), "GET".into(), "/admin/users".into()));
        out.push((s.clone(), d.clone(), "GET".into(), "/admin".into()));
        let (_, other, _, _) = support::hit((i + 7) % rules);
        out.push((s, other, "GET".into(), format!("/api/v1/res-{}/x", i % 50)));
        out.push((
            "spiffe://partner-lab.example/ns/lab/sa/ingest".into(),
            d,
            "GET".into(),
            format!("/api/v1/res-{}/x", i % 50),
        ));
    }
    out
}

/// The Rego translation of `support::bundle(n)`, as modules of one package.
fn rego_policy(n: usize) -> Vec<String> {
    let mut modules = Vec::new();
    let mut r = String::with_capacity(n.min(2_000) * 260);
    r.push_str(
        r#"package wardgate

import rego.v1

default allow := false

allow if {
	not deny
	permit
}

clinical(id) if startswith(id, "spiffe://hospital.example/ns/clinical/")

administrative(id) if startswith(id, "spiffe://hospital.example/ns/admin/")

vendor(id) if startswith(id, "spiffe://partner-lab.example/")

# vendor-never-clinical
deny if {
	vendor(input.source)
	clinical(input.destination)
}

# no-admin-consoles
deny if {
	any_segment(input.source)
	admin_path(input.path)
}

any_segment(id) if clinical(id)

any_segment(id) if administrative(id)

any_segment(id) if vendor(id)

admin_path(p) if p == "/admin"

admin_path(p) if startswith(p, "/admin/")
"#,
    );
    for k in 0..50.min(n.saturating_sub(2)) {
        r.push_str(&format!(
            "\nres_{k}(p) if p == \"/api/v1/res-{k}\"\n\nres_{k}(p) if startswith(p, \"/api/v1/res-{k}/\")\n"
        ));
    }
    for i in 0..n.saturating_sub(2) {
        if i > 0 && i % 2_000 == 0 {
            modules.push(std::mem::take(&mut r));
            r.push_str("package wardgate\n\nimport rego.v1\n");
        }
        let (src, dst) = support::pair(i);
        r.push_str(&format!(
            "\n# r{i}\npermit if {{\n\tinput.source == \"{src}\"\n\tinput.destination == \"{dst}\"\n\tinput.method in {{\"GET\", \"POST\"}}\n\tres_{}(input.path)\n}}\n",
            i % 50
        ));
    }
    modules.push(r);
    modules
}
