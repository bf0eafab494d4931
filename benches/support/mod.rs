//! Bundle and request generators shared by the benches.
//!
//! Bundles have realistic shapes: three segments (clinical, administrative, vendor), a few
//! segment-wide deny boundaries first, then N workload-to-workload allow rules, each naming one
//! source service account, one destination service account, methods and path patterns.
#![allow(dead_code)] // reason: each bench binary uses a different part of this module

/// A generated bundle's YAML text.
pub fn bundle(rules: usize) -> String {
    let mut y = String::with_capacity(rules * 220);
    y.push_str("version: 1\nrevision: 1\ntrust_domains: [hospital.example, partner-lab.example]\n");
    y.push_str("segments:\n");
    y.push_str("  clinical:\n    members: [\"spiffe://hospital.example/ns/clinical/**\"]\n");
    y.push_str("  administrative:\n    members: [\"spiffe://hospital.example/ns/admin/**\"]\n");
    y.push_str("  vendor:\n    members: [\"spiffe://partner-lab.example/**\"]\n");
    y.push_str("rules:\n");
    y.push_str("  - name: vendor-never-clinical\n    action: deny\n    from: [vendor]\n    to: [clinical]\n");
    y.push_str("  - name: no-admin-consoles\n    action: deny\n    from: [clinical, administrative, vendor]\n    paths: [\"/admin\", \"/admin/**\"]\n");
    for i in 0..rules.saturating_sub(2) {
        let (src, dst) = pair(i);
        y.push_str(&format!(
            "  - name: r{i}\n    from: [\"{src}\"]\n    to: [\"{dst}\"]\n    methods: [GET, POST]\n    paths: [\"/api/v1/res-{}/**\", \"/api/v1/res-{}\"]\n",
            i % 50,
            i % 50
        ));
    }
    y
}

/// The same bundle as [`bundle`], written as JSON (the encoding of generated bundles): one line,
/// as a generator would write it.
pub fn bundle_json(rules: usize) -> String {
    let mut j = String::with_capacity(rules * 210);
    j.push_str(
        r#"{"version":1,"revision":1,"trust_domains":["hospital.example","partner-lab.example"],"#,
    );
    j.push_str(
        r#""segments":{"clinical":{"members":["spiffe://hospital.example/ns/clinical/**"]},"#,
    );
    j.push_str(r#""administrative":{"members":["spiffe://hospital.example/ns/admin/**"]},"#);
    j.push_str(r#""vendor":{"members":["spiffe://partner-lab.example/**"]}},"rules":["#);
    j.push_str(
        r#"{"name":"vendor-never-clinical","action":"deny","from":["vendor"],"to":["clinical"]},"#,
    );
    j.push_str(r#"{"name":"no-admin-consoles","action":"deny","from":["clinical","administrative","vendor"],"paths":["/admin","/admin/**"]}"#);
    for i in 0..rules.saturating_sub(2) {
        let (src, dst) = pair(i);
        let res = i % 50;
        j.push_str(&format!(
            r#",{{"name":"r{i}","from":["{src}"],"to":["{dst}"],"methods":["GET","POST"],"paths":["/api/v1/res-{res}/**","/api/v1/res-{res}"]}}"#
        ));
    }
    j.push_str("]}");
    j
}

/// Source and destination SPIFFE IDs of generated rule `i`.
pub fn pair(i: usize) -> (String, String) {
    let ns = ["clinical", "admin"];
    let src = format!("spiffe://hospital.example/ns/{}/sa/svc-{}", ns[i % 2], i);
    let dst = format!(
        "spiffe://hospital.example/ns/{}/sa/svc-{}",
        ns[(i / 2) % 2],
        i + 1
    );
    (src, dst)
}

/// A request that rule `i` allows: (source, destination, method, path).
pub fn hit(i: usize) -> (String, String, &'static str, String) {
    let (s, d) = pair(i);
    (s, d, "GET", format!("/api/v1/res-{}/items/42", i % 50))
}

/// A request no rule allows (a real workload pair, a path none of its rules lists).
pub fn miss(i: usize) -> (String, String, &'static str, String) {
    let (s, d) = pair(i);
    (s, d, "GET", "/api/v2/other/1".to_string())
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`), 0 where unavailable.
fn status_kib(field: &str) -> u64 {
    proc_status_field("self", field)
}

/// A numeric field of `/proc/PROC/status` (`PROC`: a pid or `self`; `VmRSS:` in KiB,
/// `Threads:`), 0 where unavailable.
pub fn proc_status_field(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Peak resident memory of this process, KiB.
pub fn hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Start counting the peak resident memory ([`hwm_kib`]) from now (Linux `clear_refs`), so a
/// measure leaves out what the bench did before it (generating a bundle's text).
pub fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
