//! The fuzz corpora, replayed on stable Rust: every committed input under
//! `fuzz/corpus/TARGET/` and every fixed crash under `fuzz/regressions/TARGET/` goes through the
//! same target function libFuzzer calls (`fuzz/src/lib.rs`, included here), so a regression on
//! known input fails `cargo test` even where the nightly toolchain and cargo-fuzz are missing.
//!
//! Then each target runs briefly on inputs mutated from its corpus (`*_mutated`): two seconds of
//! bit flips, byte and token insertions, deletions, duplications and splices, from a seed that
//! is printed and can be replayed with `WARDGATE_FUZZ_SEED=N` (length in seconds:
//! `WARDGATE_FUZZ_SECONDS`). It is not coverage-guided; it is the smoke that runs in the default
//! test command without the nightly toolchain, so a target that breaks on a near-miss of known
//! input fails CI. A failing input is written to a temporary file named in the failure, to be
//! committed under `fuzz/regressions/TARGET/`. `scripts/fuzz.sh --smoke` runs the
//! coverage-guided targets themselves; fuzz/README.md has the long runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// The committed inputs of `target`: its corpus, then its regressions.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
        files.sort();
        out.extend(
            files
                .iter()
                .map(|f| std::fs::read(f).expect("read corpus file")),
        );
    }
    out
}

/// Fragments that often sit at the edges of what the parsers accept.
const TOKENS: &[&[u8]] = &[
    b"%2F",
    b"%2f",
    b"%5C",
    b"%00",
    b"%25",
    b"%",
    b"/..",
    b"/./",
    b"//",
    b"\\",
    b"?",
    b"#",
    b";",
    b"*",
    b"**",
    b"spiffe://",
    b"\n",
    b"\r\n",
    b":",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"&a",
    b"*a",
    b"!!",
    b"~",
    b"\xff",
    b"\xc3\xa9",
    b"\t",
    b"  ",
    b"#--\n",
    b"9999999999999999999999",
    b"-1",
    b"0x",
    b"\0",
];

/// One random edit of `data` (`other` is another input to splice from).
fn mutate(rng: &mut fastrand::Rng, data: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut fastrand::Rng, len: usize| rng.usize(..=len);
    match rng.u8(..7) {
        0 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            data[i] ^= 1 << rng.u8(..8);
        }
        1 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            data[i] = *rng.choice(b"\0\x7f\x80\xff/%.:*?-\n ").unwrap_or(&0);
        }
        2 => {
            let i = at(rng, data.len());
            let token = rng.choice(TOKENS).copied().unwrap_or(b"");
            data.splice(i..i, token.iter().copied());
        }
        3 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            let n = rng.usize(1..=(data.len() - i).min(16));
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            let i = rng.usize(..data.len());
            let n = rng.usize(1..=(data.len() - i).min(64));
            let copy = data[i..i + n].to_vec();
            let j = at(rng, data.len());
            data.splice(j..j, copy);
        }
        5 if !other.is_empty() => {
            let cut = at(rng, data.len());
            let from = rng.usize(..other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let i = at(rng, data.len());
            data.insert(i, rng.u8(..));
        }
    }
}

/// Run `run` on inputs mutated from `seeds` for `budget`: the number of inputs run, or the first
/// input it panics on.
fn mutated(seeds: &[Vec<u8>], run: fn(&[u8]), seed: u64, budget: Duration) -> Result<u64, Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let empty = Vec::new();
    let mut runs = 0;
    while start.elapsed() < budget {
        let mut data = rng.choice(seeds).unwrap_or(&empty).clone();
        let other = rng.choice(seeds).unwrap_or(&empty);
        for _ in 0..rng.usize(1..=4) {
            mutate(&mut rng, &mut data, other);
        }
        data.truncate(256 * 1024);
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            return Err(data);
        }
        runs += 1;
    }
    Ok(runs)
}

/// The mutation smoke of one target (see the module comment).
fn smoke(target: &str, run: fn(&[u8])) {
    let seed = std::env::var("WARDGATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let seconds = std::env::var("WARDGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seeds = inputs(target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} is empty");
    eprintln!("{target}: mutation smoke, WARDGATE_FUZZ_SEED={seed}");
    match mutated(&seeds, run, seed, Duration::from_secs_f64(seconds)) {
        Ok(runs) => eprintln!("{target}: {runs} mutated inputs in {seconds} s, no failure"),
        Err(input) => {
            let file = std::env::temp_dir().join(format!("wardgate-fuzz-{target}-{seed}"));
            std::fs::write(&file, &input).expect("write the failing input");
            panic!(
                "{target} fails on a mutated input (WARDGATE_FUZZ_SEED={seed}), saved as {}; \
             commit it under fuzz/regressions/{target}/ once fixed",
                file.display()
            );
        }
    }
}

/// Replay every file of `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET` through `run`; the
/// corpus must not be empty. Names every failing file.
fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut corpus_files = 0;
    let mut failed = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
        files.sort();
        for file in files {
            if dir.ends_with(Path::new("corpus").join(target)) {
                corpus_files += 1;
            }
            let data = std::fs::read(&file).expect("read corpus file");
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(corpus_files > 0, "fuzz/corpus/{target} is empty");
    assert!(failed.is_empty(), "{target} fails on: {failed:#?}");
}

#[test]
fn path_normalize_corpus() {
    replay("path_normalize", targets::path_normalize);
}

#[test]
fn spiffe_id_corpus() {
    replay("spiffe_id", targets::spiffe_id);
}

#[test]
fn bundle_compile_corpus() {
    replay("bundle_compile", targets::bundle_compile);
}

#[test]
fn policy_reference_corpus() {
    replay("policy_reference", targets::policy_reference);
}

#[test]
fn check_request_corpus() {
    replay("check_request", targets::check_request);
}

#[test]
fn forwarded_cert_corpus() {
    replay("forwarded_cert", targets::forwarded_cert);
}

#[test]
fn decision_log_corpus() {
    replay("decision_log", targets::decision_log);
}

#[test]
fn test_cases_corpus() {
    replay("test_cases", targets::test_cases);
}

#[test]
fn path_normalize_mutated() {
    smoke("path_normalize", targets::path_normalize);
}

#[test]
fn spiffe_id_mutated() {
    smoke("spiffe_id", targets::spiffe_id);
}

#[test]
fn bundle_compile_mutated() {
    smoke("bundle_compile", targets::bundle_compile);
}

#[test]
fn policy_reference_mutated() {
    smoke("policy_reference", targets::policy_reference);
}

#[test]
fn check_request_mutated() {
    smoke("check_request", targets::check_request);
}

#[test]
fn forwarded_cert_mutated() {
    smoke("forwarded_cert", targets::forwarded_cert);
}

#[test]
fn decision_log_mutated() {
    smoke("decision_log", targets::decision_log);
}

#[test]
fn test_cases_mutated() {
    smoke("test_cases", targets::test_cases);
}

/// The smoke can fail: a target that breaks on some near-miss of its corpus is caught within
/// the budget, and the input it broke on is returned (here a target that refuses any input
/// longer than its longest seed by two bytes).
#[test]
fn the_mutation_smoke_finds_a_broken_target() {
    static LONGEST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    fn fragile(data: &[u8]) {
        assert!(
            data.len() < LONGEST.get().copied().unwrap_or(0) + 2,
            "too long"
        );
    }
    let seeds = inputs("path_normalize");
    let longest = *LONGEST.get_or_init(|| seeds.iter().map(Vec::len).max().unwrap_or(0));
    let found = mutated(&seeds, fragile, 7, Duration::from_secs(10));
    let input = found.expect_err("the mutations never made a longer input");
    assert!(input.len() >= longest + 2);
}

/// The replay itself can fail: a target whose invariant breaks on an input is reported with
/// that input's name (here the invariant is forced to break).
#[test]
fn a_failing_input_is_reported() {
    let result = catch_unwind(|| replay("path_normalize", |_| panic!("invariant broken")));
    assert!(result.is_err());
}
