//! The bundle digest: the `sha256:<hex>` that identifies one version of a bundle in logs,
//! metrics (`wardgate_bundle_info`), `/v1/bundle`, `validate` output and the equal-revision
//! check of a reload.
//!
//! What it covers is decided here and nowhere else (README, "Bundle digest"): for a bundle of
//! one file, that file's bytes only, so the digest equals `sha256sum` of the file however the
//! file is named or wherever it comes from (path, URL, the `--cache-dir` copy); for a bundle of
//! several files (a directory), each file's name relative to the directory and its bytes, in
//! merge order, because the names decide that order and identify each file (a signed
//! directory's manifest lists them by name). It must never read files or depend on anything but
//! the (name, text) pairs it is given.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The digest of the bundle made of `sources`, (name, text) pairs in merge order. A name may
/// be a path: only its last component (the name within the bundle's directory) counts.
pub(crate) fn bundle_digest(sources: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    match sources {
        [(_, text)] => hasher.update(text.as_bytes()),
        _ => {
            for (name, text) in sources {
                let base = Path::new(name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                hasher.update((base.len() as u64).to_be_bytes());
                hasher.update(base.as_bytes());
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    format!("sha256:{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::bundle_digest;

    fn one(name: &str, text: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), text.to_owned())]
    }

    #[test]
    fn a_single_file_is_identified_by_its_bytes_alone() {
        let text = "version: 1\nrevision: 7\n";
        let digest = bundle_digest(&one("/etc/wardgate/hospital.yaml", text));
        // Renamed, moved, or fetched from a URL: the same digest.
        assert_eq!(digest, bundle_digest(&one("renamed.yaml", text)));
        assert_eq!(
            digest,
            bundle_digest(&one("https://bundles.example/hospital", text))
        );
        // One byte changed: a different digest.
        assert_ne!(
            digest,
            bundle_digest(&one("hospital.yaml", "version: 1\nrevision: 8\n"))
        );
        // What `printf 'version: 1\nrevision: 7\n' | sha256sum` prints.
        assert_eq!(
            digest,
            "sha256:5a2ad494cc55ca550f571891258d56e412ebc1f9c39ee56b349f3178b01d8092"
        );
    }

    #[test]
    fn a_directory_is_identified_by_names_and_bytes_in_merge_order() {
        let files = |a: &str, b: &str| {
            vec![
                (format!("/bundle.d/{a}"), "segments: {}\n".to_owned()),
                (format!("/bundle.d/{b}"), "rules: []\n".to_owned()),
            ]
        };
        let digest = bundle_digest(&files("10-segments.yaml", "20-rules.yaml"));
        // The directory itself may move: only names within it count.
        let moved: Vec<(String, String)> = files("10-segments.yaml", "20-rules.yaml")
            .into_iter()
            .map(|(n, t)| (n.replace("/bundle.d/", "/elsewhere/"), t))
            .collect();
        assert_eq!(digest, bundle_digest(&moved));
        // A renamed file is a different bundle: the names order and identify the files.
        assert_ne!(
            digest,
            bundle_digest(&files("10-segments.yaml", "30-rules.yaml"))
        );
        let mut changed = files("10-segments.yaml", "20-rules.yaml");
        changed[1].1.push(' ');
        assert_ne!(digest, bundle_digest(&changed));
        // Content moved from one file to the next does not collide.
        let shifted = vec![
            ("/bundle.d/10-segments.yaml".to_owned(), String::new()),
            (
                "/bundle.d/20-rules.yaml".to_owned(),
                "segments: {}\nrules: []\n".to_owned(),
            ),
        ];
        assert_ne!(digest, bundle_digest(&shifted));
    }
}
