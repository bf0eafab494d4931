//! Build script: the git revision `wardgate --version` prints, as `WARDGATE_BUILD_REV`.
//!
//! The revision is, in order: `$WARDGATE_GIT_REV` when set (container builds that copy the
//! sources without `.git`), else `git rev-parse --short HEAD` with `-dirty` appended when the
//! files the binary is built from (`src/`, `build.rs`, `Cargo.toml`, `Cargo.lock`, the embedded
//! bundle) differ from that commit, else `unknown`. It must never fail the build: no git, no
//! repository, or a git error all give `unknown`.

use std::path::Path;
use std::process::Command;

/// The files whose changes make a build "dirty"; also what re-runs this script.
const BUILT_FROM: &[&str] = &[
    "src",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "deploy/bundles/hospital.yaml",
];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Re-run when HEAD moves: the HEAD file and the branch it points to (loose or packed).
fn watch_head() {
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git_dir = root.join(git_dir);
    let common = root.join(common);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", common.join(branch).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        common.join("packed-refs").display()
    );
}

fn revision() -> String {
    if let Some(rev) = std::env::var("WARDGATE_GIT_REV")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        return rev.trim().to_owned();
    }
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]).filter(|r| !r.is_empty()) else {
        return "unknown".to_owned();
    };
    watch_head();
    let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    status.extend_from_slice(BUILT_FROM);
    match git(&status) {
        Some(changes) if changes.is_empty() => rev,
        Some(_) => format!("{rev}-dirty"),
        None => rev,
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=WARDGATE_GIT_REV");
    for path in BUILT_FROM {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rustc-env=WARDGATE_BUILD_REV={}", revision());
}
