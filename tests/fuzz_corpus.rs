//! The fuzz corpora, replayed on stable Rust: every committed input under
//! `fuzz/corpus/TARGET/` and every fixed crash under `fuzz/regressions/TARGET/` goes through the
//! same target function libFuzzer calls (`fuzz/src/lib.rs`, included here), so a regression on
//! known input fails `cargo test` even where the nightly toolchain and cargo-fuzz are missing.
//! `scripts/fuzz.sh --smoke` runs the targets themselves; fuzz/README.md has the long runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

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

/// The replay itself can fail: a target whose invariant breaks on an input is reported with
/// that input's name (here the invariant is forced to break).
#[test]
fn a_failing_input_is_reported() {
    let result = catch_unwind(|| replay("path_normalize", |_| panic!("invariant broken")));
    assert!(result.is_err());
}
