//! The container image scripts/build-image.sh assembles (scripts/test.sh builds it once and
//! names it in `$WARDGATE_IMAGE`, `LAYOUT:TAG`): inspected with skopeo, unpacked with umoci,
//! and its entrypoint run from the unpacked root filesystem (chroot, as the image's numeric
//! user) for `--version` and for a `validate` of the shipped bundle. Checks that the image holds
//! the binary and the CA roots and nothing else, and that its user, entrypoint and command are
//! the ones deploy/container/Containerfile declares.
//!
//! Skipped loudly without `$WARDGATE_IMAGE` (fails under `CI=true`); the chroot runs need root.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {why} (CI=true: this fails the build)");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {why}\n{bar}\n"
    );
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The Containerfile's final-stage instruction `word`, with its argument.
fn containerfile(word: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/container/Containerfile"),
    )
    .unwrap();
    text.lines()
        .rev()
        .take_while(|l| !l.starts_with("FROM "))
        .find_map(|l| l.strip_prefix(&format!("{word} ")))
        .unwrap_or_else(|| panic!("no {word} in the Containerfile's last stage"))
        .trim()
        .to_owned()
}

/// Every file (not directory) under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_image_holds_the_static_binary_and_ca_roots_and_runs_as_declared() {
    let Some(image) = std::env::var("WARDGATE_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        skip_or_fail(
            "container_image",
            "WARDGATE_IMAGE is not set: scripts/test.sh builds the image (scripts/build-image.sh)",
        );
        return;
    };
    let image = if Path::new(&image).is_absolute() {
        image
    } else {
        format!("{}/{image}", env!("CARGO_MANIFEST_DIR"))
    };
    let reference = format!("oci:{image}");

    // skopeo: the manifest (one layer) and the config (user, entrypoint, command, labels).
    let (ok, out, err) = run("skopeo", &["inspect", &reference]);
    assert!(ok, "skopeo inspect {reference}: {err}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        manifest["Layers"].as_array().map(Vec::len),
        Some(1),
        "{manifest}"
    );
    assert_eq!(manifest["Os"], "linux");
    let (ok, out, err) = run("skopeo", &["inspect", "--config", &reference]);
    assert!(ok, "{err}");
    let config: Value = serde_json::from_str(&out).unwrap();
    let config = &config["config"];
    assert_eq!(config["User"], containerfile("USER"));
    let entrypoint: Value = serde_json::from_str(&containerfile("ENTRYPOINT")).unwrap();
    assert_eq!(config["Entrypoint"], entrypoint);
    let cmd: Value = serde_json::from_str(&containerfile("CMD")).unwrap();
    assert_eq!(config["Cmd"], cmd);
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "wardgate"
    );
    let version = config["Labels"]["org.opencontainers.image.version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        image.ends_with(&format!(":wardgate:{version}")),
        "tagged with the version"
    );

    // umoci: the root filesystem holds the binary and the CA roots, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let (ok, _, err) = run(
        "umoci",
        &["unpack", "--image", &image, bundle.to_str().unwrap()],
    );
    assert!(ok, "umoci unpack: {err}");
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        files_under(&rootfs),
        [
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/wardgate"
        ]
    );
    let roots = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        roots.matches("BEGIN CERTIFICATE").count() > 50,
        "a CA bundle"
    );

    // The entrypoint, run from the unpacked root filesystem: chroot as the image's user, so
    // nothing from the host (no libc, no loader) is reachable.
    let (ok, uid, _) = run("id", &["-u"]);
    if !(ok && uid.trim() == "0") {
        skip_or_fail("container_image (chroot runs)", "not root: cannot chroot");
        return;
    }
    let entry = entrypoint[0].as_str().unwrap();
    let userspec = containerfile("USER");
    let chroot = |args: &[&str]| {
        let mut all = vec![
            "--userspec",
            userspec.as_str(),
            rootfs.to_str().unwrap(),
            entry,
        ];
        all.extend_from_slice(args);
        run("chroot", &all)
    };
    let (ok, out, err) = chroot(&["--version"]);
    assert!(ok, "wardgate --version in the image: {err}");
    let line = out.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        line.starts_with("wardgate ") && line.len() > "wardgate ".len(),
        "a version line: {out:?}"
    );
    assert!(line.contains(&version), "{line} names {version}");
    println!("in the image: {line}");

    // `validate` of the shipped bundle, mounted into the root filesystem as a volume would be.
    let mounted = rootfs.join("bundle");
    std::fs::create_dir(&mounted).unwrap();
    let shipped: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bundles/hospital.yaml");
    std::fs::copy(&shipped, mounted.join("hospital.yaml")).unwrap();
    std::fs::write(
        mounted.join("broken.yaml"),
        "version: 1\nrevision: 1\nrules: [{name: x, action: maybe}]\n",
    )
    .unwrap();
    let (ok, out, err) = chroot(&["validate", "/bundle/hospital.yaml"]);
    assert!(ok, "validate in the image: {out}{err}");
    assert!(out.contains("/bundle/hospital.yaml: ok: revision"), "{out}");
    println!("in the image: {}", out.trim());
    let (ok, out, err) = chroot(&["validate", "/bundle/broken.yaml"]);
    assert!(!ok, "a broken bundle validated: {out}{err}");
    assert!(
        format!("{out}{err}").contains("/bundle/broken.yaml:"),
        "{out}{err}"
    );
}
