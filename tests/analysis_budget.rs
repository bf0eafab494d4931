//! `analyze` and `diff` on bundles built to make exact analysis explode, run as the real binary.
//!
//! Each bundle is generated here and small (a few hundred bytes to a few tens of KB): deny rules
//! that encode a pigeonhole puzzle (no short proof that they cover the allow rule), wildcard
//! patterns at growing depths (every pair overlaps, so differences multiply), and one rule naming
//! hundreds of sources and destinations (its sets are their product). With the default
//! budget each verb must refuse cleanly: exit 3, one `FILE:LINE:COL` line naming the rule being
//! analysed and the budget, in bounded time and memory (peak RSS read from the kernel with
//! `wait4`). A raised budget must let a small case finish, and the shipped bundle must fit
//! easily.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// Peak resident memory of the child, in KiB.
    max_rss_kib: i64,
}

/// Run wardgate and collect its exit code, output, wall time and peak RSS.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped with libc::wait4, which also reports its peak RSS"
)]
fn run(args: &[&str]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .env("WARDGATE_DOT", "/nonexistent/dot")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wardgate");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let stdout = reader.join().expect("reader");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: `rusage` is plain data, zero is a valid value; `wait4` reaps our own child, whose
    // `Child` handle is never waited on afterwards.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4");
    let elapsed = started.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Run {
        code,
        stdout,
        stderr,
        elapsed,
        max_rss_kib: usage.ru_maxrss,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `pigeons` pigeons, one fewer holes: header `p<i>` names pigeon i's hole. The allow rule
/// `seat` needs every pigeon in a hole; one deny rule per pair of pigeons sharing a hole. The
/// deny rules cover `seat` entirely, and proving it takes exponentially many cases.
fn pigeonhole(pigeons: usize, with_seat: bool) -> String {
    let holes: Vec<String> = (0..pigeons - 1).map(|k| format!("h{k}")).collect();
    let mut out = String::from(
        "version: 1\nrevision: 1\ntrust_domains: [t.example]\nsegments: {s: {members: [\"spiffe://t.example/**\"]}}\nrules:\n",
    );
    for i in 0..pigeons {
        for j in i + 1..pigeons {
            for h in &holes {
                out.push_str(&format!(
                    "  - {{name: c{i}-{j}-{h}, action: deny, from: [s], when: {{headers: {{p{i}: [{h}], p{j}: [{h}]}}}}}}\n"
                ));
            }
        }
    }
    if with_seat {
        let all = holes.join(", ");
        let headers: Vec<String> = (0..pigeons).map(|i| format!("p{i}: [{all}]")).collect();
        out.push_str(&format!(
            "  - {{name: seat, from: [s], when: {{headers: {{{}}}}}}}\n",
            headers.join(", ")
        ));
    }
    out
}

/// One segment whose members (and one deny rule's paths) put a literal at depths 0..k below
/// wildcards: every pair overlaps, and each difference splits the last one's pieces again.
fn wildcard_depths(k: usize) -> String {
    let ids: Vec<String> = (0..k)
        .map(|i| format!("\"spiffe://t.example/{}a/**\"", "*/".repeat(i)))
        .collect();
    let paths: Vec<String> = (0..k)
        .map(|i| format!("\"/{}a/**\"", "*/".repeat(i)))
        .collect();
    format!(
        "version: 1\nrevision: 1\ntrust_domains: [t.example]\nsegments: {{s: {{members: [{}]}}}}\nrules:\n  - {{name: d, action: deny, from: [s], to: [s], paths: [{}]}}\n  - {{name: g, from: [s], to: [s]}}\n",
        ids.join(", "),
        paths.join(", ")
    )
}

/// `FILE:LINE:COL` of the rule named `name` in a generated bundle (rules are one line each,
/// written `  - {name: ...`, so the mapping starts at column 5).
fn site(file: &Path, text: &str, name: &str) -> String {
    let needle = format!("{{name: {name},");
    let line = text
        .lines()
        .position(|l| l.contains(&needle))
        .expect("rule in bundle")
        + 1;
    format!("{}:{line}:5", file.display())
}

/// The time a refusal may take: about 2 s in a release build; debug builds run the same work
/// several times slower.
fn time_limit() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(4)
    }
}

/// A clean refusal: exit 3, nothing on stdout, one line naming the rule and the budget.
fn assert_refused(r: &Run, at: &str, rule: &str, limit: &str) {
    assert_eq!(r.code, 3, "exit code; stderr: {}", r.stderr);
    assert!(r.stdout.is_empty(), "no partial answer: {}", r.stdout);
    let line = r.stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.starts_with(&format!(
            "{at}: analysing rule `{rule}` exceeds the analysis {limit}"
        )),
        "{line}"
    );
    assert!(
        line.contains("--max-analysis-work") || line.contains("--max-analysis-memory"),
        "names the flag: {line}"
    );
    assert!(!line.contains("panicked"), "{line}");
    assert!(
        r.elapsed < time_limit(),
        "refused after {:?}: {line}",
        r.elapsed
    );
    assert!(
        r.max_rss_kib < 200 * 1024,
        "peak RSS {} KiB: {line}",
        r.max_rss_kib
    );
}

#[test]
fn analyze_refuses_a_pigeonhole_of_deny_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = pigeonhole(8, true);
    assert!(text.len() < 20_000, "{} bytes", text.len());
    let b = write(dir.path(), "puzzle.yaml", &text);
    let r = run(&["analyze", s(&b), "--findings"]);
    assert_refused(&r, &site(&b, &text, "seat"), "seat", "work budget");
    // The default is named, so the reader knows what to raise.
    assert!(r.stderr.contains("15000000 units"), "{}", r.stderr);
}

#[test]
fn a_raised_budget_lets_a_small_puzzle_finish_and_a_lowered_one_refuses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = pigeonhole(4, true);
    let b = write(dir.path(), "small.yaml", &text);
    let done = run(&["analyze", s(&b), "--findings", "--json"]);
    // Finished: exit 1 is "a warning finding" (the shadowed rule below), not a refusal (3).
    assert_eq!(done.code, 1, "{}", done.stderr);
    let v: serde_json::Value = serde_json::from_str(&done.stdout).expect("json");
    let shadowed = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["kind"] == "shadowed-by-deny" && f["rule"] == "seat");
    assert!(shadowed, "the deny rules refuse all of `seat`: {v}");
    let r = run(&[
        "analyze",
        s(&b),
        "--findings",
        "--max-analysis-work",
        "2000",
    ]);
    assert_refused(&r, &site(&b, &text, "seat"), "seat", "work budget");
    assert!(r.stderr.contains("of 2000 units"), "{}", r.stderr);
    let r = run(&["analyze", s(&b), "--findings", "--max-analysis-memory", "0"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("memory budget of 0 MiB"), "{}", r.stderr);
}

#[test]
fn diff_refuses_to_revoke_a_puzzle_it_cannot_afford() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_text = pigeonhole(8, true);
    let old = write(dir.path(), "old.yaml", &old_text);
    let new = write(dir.path(), "new.yaml", &pigeonhole(8, false));
    // Removing `seat` revokes nothing (the deny rules refused all of it), but proving that is
    // the puzzle again.
    let r = run(&["diff", s(&old), s(&new)]);
    assert_refused(&r, &site(&old, &old_text, "seat"), "seat", "work budget");
}

#[test]
fn wildcards_at_growing_depths_are_refused_by_analyze_and_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = wildcard_depths(10);
    assert!(text.len() < 800, "{} bytes", text.len());
    let b = write(dir.path(), "deep.yaml", &text);
    let small = write(dir.path(), "small.yaml", &wildcard_depths(2));
    for args in [
        vec!["analyze", s(&b), "--who-can-reach", "s"],
        vec!["diff", s(&b), s(&small)],
        vec!["diff", s(&small), s(&b)],
    ] {
        let r = run(&args);
        // The allow rule `g` (line 7) of whichever bundle's grants were being compared.
        let at = [&b, &small]
            .into_iter()
            .map(|f| format!("{}:7:5", f.display()))
            .find(|at| r.stderr.starts_with(at.as_str()))
            .unwrap_or_default();
        assert!(!at.is_empty(), "{args:?}: {}", r.stderr);
        assert_refused(&r, &at, "g", "");
    }
}

#[test]
fn a_rule_naming_many_sources_and_destinations_is_refused_while_it_is_built() {
    // 400 sources x 400 destinations: 160,000 request sets for one rule.
    let ids: Vec<String> = (0..400)
        .map(|i| format!("\"spiffe://t.example/w{i}\""))
        .collect();
    let ids = ids.join(", ");
    let text = format!(
        "version: 1\nrevision: 1\ntrust_domains: [t.example]\nrules:\n  - name: wide\n    from: [{ids}]\n    to: [{ids}]\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let b = write(dir.path(), "wide.yaml", &text);
    let r = run(&["analyze", s(&b)]);
    assert_refused(&r, &format!("{}:5:5", b.display()), "wide", "memory budget");
    let r = run(&["diff", s(&b), s(&b)]);
    assert_refused(&r, &format!("{}:5:5", b.display()), "wide", "memory budget");
}

#[test]
fn the_shipped_bundle_fits_in_a_small_fraction_of_the_budget() {
    let hospital = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml");
    // A hundredth of the default work budget and of the memory budget suffice.
    for args in [
        vec!["analyze", s(&hospital)],
        vec!["analyze", s(&hospital), "--who-can-reach", "clinical"],
        vec!["diff", s(&hospital), s(&hospital)],
    ] {
        let mut args = args;
        args.extend([
            "--max-analysis-work",
            "200000",
            "--max-analysis-memory",
            "1",
        ]);
        let r = run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
}
