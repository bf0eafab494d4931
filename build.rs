//! Build script: the git revision `wardgate --version` prints, as `WARDGATE_BUILD_REV`, and the
//! protobuf descriptor set gRPC reflection serves for the Authorization service.
//!
//! The revision is, in order: `$WARDGATE_GIT_REV` when set (container builds that copy the
//! sources without `.git`), else `git rev-parse --short HEAD` with `-dirty` appended when the
//! files the binary is built from (`src/`, `build.rs`, `Cargo.toml`, `Cargo.lock`, the embedded
//! bundle) differ from that commit, else `unknown`. It must never fail the build: no git, no
//! repository, or a git error all give `unknown`.
//!
//! The descriptor set is `$OUT_DIR/authz_descriptor.bin`: `envoy/service/auth/v3/external_auth.proto`
//! and every file it imports, compiled by `protox` (no `protoc` needed) from the protos vendored
//! as data in `proto/envoy-api` (see its README). A vendored file that does not compile fails the
//! build: it is a defect of the repository, never of the build machine.

use std::path::Path;
use std::process::Command;

/// The files whose changes make a build "dirty"; also what re-runs this script.
const BUILT_FROM: &[&str] = &[
    "src",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "deploy/bundles/hospital.yaml",
    "proto/envoy-api",
];

/// The vendored Envoy API protos, and the file that defines the Authorization service.
const PROTO_ROOT: &str = "proto/envoy-api";
const AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

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
    authz_descriptor_set();
}

/// Compile the Authorization service's protos (with every import, without source comments)
/// into `$OUT_DIR/authz_descriptor.bin`.
fn authz_descriptor_set() {
    use prost::Message as _;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(PROTO_ROOT);
    let set = match protox::Compiler::new([&root]) {
        Ok(mut compiler) => {
            compiler.include_imports(true).include_source_info(false);
            match compiler.open_file(AUTHZ_PROTO) {
                Ok(_) => compiler.file_descriptor_set(),
                Err(e) => panic!("{PROTO_ROOT}/{AUTHZ_PROTO}: {e:?}"),
            }
        }
        Err(e) => panic!("{PROTO_ROOT}: {e:?}"),
    };
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()))
        .join("authz_descriptor.bin");
    if let Err(e) = std::fs::write(&out, set.encode_to_vec()) {
        panic!("{}: {e}", out.display());
    }
}
