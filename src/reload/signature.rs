//! Signed bundles: detached minisign signatures over a bundle file, or over a SHA-256 manifest
//! of a directory bundle.
//!
//! A file bundle `hospital.yaml` is signed as `hospital.yaml.minisig` (`minisign -Sm
//! hospital.yaml`). A directory bundle carries `bundle.sha256` in `sha256sum` format listing every
//! bundle file, and `bundle.sha256.minisig` over it (`sha256sum *.yaml > bundle.sha256 &&
//! minisign -Sm bundle.sha256`). With trusted keys configured, a bundle without a valid signature
//! from one of them, a file the manifest does not list, a listed file that is missing, or a file
//! whose hash differs is refused. This module only verifies bytes it is handed; it reads nothing.

use std::collections::BTreeMap;

use minisign_verify::{PublicKey, Signature};
use sha2::{Digest, Sha256};

/// Name of the manifest of a signed directory bundle.
pub const MANIFEST: &str = "bundle.sha256";

/// Suffix of a detached signature.
pub const SIG_SUFFIX: &str = ".minisig";

/// Why a bundle's signature does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Trusted keys are configured but the bundle carries no signature.
    #[error("bundle is not signed: expected `{0}`")]
    Missing(String),
    /// The signature file is not a minisign signature.
    #[error("`{file}` is not a minisign signature: {why}")]
    Malformed {
        /// Signature file.
        file: String,
        /// Decoder's message.
        why: String,
    },
    /// No trusted key verifies the signature.
    #[error(
        "signature `{0}` does not verify with any trusted key (wrong key or tampered content)"
    )]
    Invalid(String),
    /// A directory bundle has no manifest.
    #[error("signed directory bundle needs `{MANIFEST}` listing the SHA-256 of every bundle file")]
    NoManifest,
    /// A manifest line is not `<64 hex>  <name>`.
    #[error("`{MANIFEST}` line {line}: expected `<sha256 hex>  <file name>`")]
    ManifestSyntax {
        /// 1-based line.
        line: usize,
    },
    /// A bundle file the manifest does not list.
    #[error("`{0}` is not listed in `{MANIFEST}`")]
    Unlisted(String),
    /// A listed file that is not present.
    #[error("`{0}` is listed in `{MANIFEST}` but missing")]
    MissingFile(String),
    /// A file whose content differs from its listed hash.
    #[error("`{0}` does not match its SHA-256 in `{MANIFEST}` (tampered or stale manifest)")]
    HashMismatch(String),
}

/// The keys a bundle must be signed with (any one of them).
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKeys({} key(s))", self.keys.len())
    }
}

impl TrustedKeys {
    /// No keys: signatures are not required.
    pub fn none() -> Self {
        TrustedKeys::default()
    }

    /// Parse a minisign public key: the text of a `.pub` file, or its base64 line alone.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let trimmed = text.trim();
        let key = if trimmed.lines().count() > 1 {
            PublicKey::decode(trimmed)
        } else {
            PublicKey::from_base64(trimmed)
        }
        .map_err(|e| format!("not a minisign public key: {e}"))?;
        self.keys.push(key);
        Ok(())
    }

    /// Whether signatures are required.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Verify a detached signature over `content`.
    pub fn verify(
        &self,
        content: &[u8],
        sig_name: &str,
        sig_text: &str,
    ) -> Result<(), SignatureError> {
        let sig = Signature::decode(sig_text).map_err(|e| SignatureError::Malformed {
            file: sig_name.to_string(),
            why: e.to_string(),
        })?;
        if self
            .keys
            .iter()
            .any(|k| k.verify(content, &sig, false).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::Invalid(sig_name.to_string()))
        }
    }

    /// Verify a directory bundle: the manifest's signature, then every file against it.
    /// `files` are (base name, content) of every bundle file in the directory.
    pub fn verify_manifest(
        &self,
        manifest: &[u8],
        sig_text: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<(), SignatureError> {
        self.verify(manifest, &format!("{MANIFEST}{SIG_SUFFIX}"), sig_text)?;
        let listed = parse_manifest(manifest)?;
        for (name, content) in files {
            let want = listed
                .get(name.as_str())
                .ok_or_else(|| SignatureError::Unlisted(name.clone()))?;
            let got = format!("{:x}", Sha256::digest(content));
            if !got.eq_ignore_ascii_case(want) {
                return Err(SignatureError::HashMismatch(name.clone()));
            }
        }
        for name in listed.keys() {
            if !files.iter().any(|(n, _)| n == name) {
                return Err(SignatureError::MissingFile((*name).to_string()));
            }
        }
        Ok(())
    }
}

/// `sha256sum` output: `<hex>  <name>` or `<hex> *<name>` per line.
fn parse_manifest(text: &[u8]) -> Result<BTreeMap<&str, &str>, SignatureError> {
    let text = std::str::from_utf8(text).map_err(|_| SignatureError::ManifestSyntax { line: 1 })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SignatureError::ManifestSyntax { line: i + 1 };
        let (hash, rest) = line.split_once(' ').ok_or_else(bad)?;
        let name = rest.trim_start_matches([' ', '*']);
        let name = name.strip_prefix("./").unwrap_or(name);
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(bad());
        }
        out.insert(name, hash);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (minisign::KeyPair, String) {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
        let pk = kp.pk.to_base64();
        (kp, pk)
    }

    fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
        minisign::sign(Some(&kp.pk), &kp.sk, std::io::Cursor::new(data), None, None)
            .expect("sign")
            .into_string()
    }

    #[test]
    fn file_signature_verifies_only_with_the_right_key_and_content() {
        let (kp, pk) = keypair();
        let (_, other_pk) = keypair();
        let mut keys = TrustedKeys::none();
        keys.add(&pk).expect("key");
        let sig = sign(&kp, b"version: 1\n");
        assert_eq!(keys.verify(b"version: 1\n", "b.minisig", &sig), Ok(()));
        assert_eq!(
            keys.verify(b"version: 2\n", "b.minisig", &sig),
            Err(SignatureError::Invalid("b.minisig".into()))
        );
        let mut wrong = TrustedKeys::none();
        wrong.add(&other_pk).expect("key");
        assert!(wrong.verify(b"version: 1\n", "b.minisig", &sig).is_err());
        assert!(matches!(
            keys.verify(b"x", "b.minisig", "garbage"),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn manifest_catches_tampered_unlisted_and_missing_files() {
        let (kp, pk) = keypair();
        let mut keys = TrustedKeys::none();
        keys.add(&pk).expect("key");
        let a = b"a: 1\n".to_vec();
        let b = b"b: 2\n".to_vec();
        let manifest = format!(
            "{:x}  a.yaml\n{:x}  b.yaml\n",
            Sha256::digest(&a),
            Sha256::digest(&b)
        );
        let sig = sign(&kp, manifest.as_bytes());
        let files = vec![
            ("a.yaml".to_string(), a.clone()),
            ("b.yaml".to_string(), b.clone()),
        ];
        assert_eq!(
            keys.verify_manifest(manifest.as_bytes(), &sig, &files),
            Ok(())
        );

        let tampered = vec![
            ("a.yaml".to_string(), a.clone()),
            ("b.yaml".to_string(), b"b: 3\n".to_vec()),
        ];
        assert_eq!(
            keys.verify_manifest(manifest.as_bytes(), &sig, &tampered),
            Err(SignatureError::HashMismatch("b.yaml".into()))
        );
        let mut extra = files.clone();
        extra.push(("c.yaml".to_string(), b"c: 1\n".to_vec()));
        assert_eq!(
            keys.verify_manifest(manifest.as_bytes(), &sig, &extra),
            Err(SignatureError::Unlisted("c.yaml".into()))
        );
        assert_eq!(
            keys.verify_manifest(manifest.as_bytes(), &sig, &files[..1]),
            Err(SignatureError::MissingFile("b.yaml".into()))
        );
        let forged = manifest.replace("a.yaml", "z.yaml");
        assert!(keys
            .verify_manifest(forged.as_bytes(), &sig, &files)
            .is_err());
    }
}
