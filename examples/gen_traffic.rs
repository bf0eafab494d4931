//! Write generated hospital traffic as a decision log to stdout (see tests/traffic/mod.rs):
//!
//! ```sh
//! cargo run --example gen_traffic -- [--requests N] [--seed S] [--redact] [--bundle FILE] > decisions.jsonl
//! ```
//!
//! Defaults: 12,000 requests, seed 17, decided by deploy/bundles/hospital.yaml.

use std::io::Write as _;
use std::path::PathBuf;

#[path = "../tests/traffic/mod.rs"]
mod traffic;

fn main() -> std::process::ExitCode {
    let mut requests = 12_000usize;
    let mut seed = 17u64;
    let mut redact = false;
    let mut bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| args.next().unwrap_or_default();
        match a.as_str() {
            "--requests" => requests = value(&mut args).parse().unwrap_or(requests),
            "--seed" => seed = value(&mut args).parse().unwrap_or(seed),
            "--bundle" => bundle = PathBuf::from(value(&mut args)),
            "--redact" => redact = true,
            other => {
                eprintln!("usage: gen_traffic [--requests N] [--seed S] [--redact] [--bundle FILE] (not `{other}`)");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let policy = match wardgate::policy::Policy::from_path(&bundle) {
        Ok(p) => p,
        Err(errors) => {
            for d in errors.iter() {
                eprintln!("{d}");
            }
            return std::process::ExitCode::from(3);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in traffic::generate(&policy, requests, seed) {
        let line = if redact {
            traffic::redact_line(&line)
        } else {
            line
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}
