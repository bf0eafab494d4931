//! Signed bundles: detached minisign signatures over a bundle file, or over a SHA-256 manifest
//! of a directory bundle.
//!
//! A file bundle `hospital.yaml` is signed as `hospital.yaml.minisig` (`minisign -Sm
//! hospital.yaml`). A directory bundle carries `bundle.sha256` in `sha256sum` format listing every
//! bundle file, and `bundle.sha256.minisig` over it (`sha256sum *.yaml > bundle.sha256 &&
//! minisign -Sm bundle.sha256`). With trusted keys configured, a bundle without a valid signature
//! from one of them, a file the manifest does not list, a listed file that is missing, or a file
//! whose hash differs is refused. Legacy signatures (`minisign -l`, or minisign before 0.8: an
//! Ed25519 signature over the content itself rather than over its BLAKE2b hash) are accepted;
//! both kinds are checked against the same trusted keys. A refusal says whether the signature
//! is from a key that is not trusted or does not match the content. This module only verifies
//! bytes it is handed; it reads nothing.

use std::collections::BTreeMap;

use minisign_verify::{PublicKey, Signature};
use sha2::{Digest, Sha256};

use super::source::Fetched;

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
    /// The signature is from a trusted key but not over this content.
    #[error(
        "signature `{0}` does not match the content (changed after signing, or signed over other bytes)"
    )]
    Invalid(String),
    /// The signature is from a key that is not among the trusted ones.
    #[error("signature `{file}` is from key {key_id}, which is not a trusted key")]
    UntrustedKey {
        /// Signature file.
        file: String,
        /// The signing key's ID as minisign prints it (16 hex digits).
        key_id: String,
    },
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
        let mut from_trusted_key = false;
        for key in &self.keys {
            match key.verify(content, &sig, true) {
                Ok(()) => return Ok(()),
                Err(minisign_verify::Error::UnexpectedKeyId) => {}
                Err(_) => from_trusted_key = true,
            }
        }
        if from_trusted_key {
            Err(SignatureError::Invalid(sig_name.to_string()))
        } else {
            Err(SignatureError::UntrustedKey {
                file: sig_name.to_string(),
                key_id: key_id_of(sig_text),
            })
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

/// Check a fetched bundle against `keys`: nothing to check without keys; a directory bundle
/// by its signed manifest, a file bundle by its detached signature.
pub(crate) fn verify_fetched(keys: &TrustedKeys, f: &Fetched) -> Result<(), SignatureError> {
    if !keys.required() {
        return Ok(());
    }
    if f.is_dir {
        let Some((manifest, sig)) = &f.manifest else {
            return Err(SignatureError::NoManifest);
        };
        let Some(sig) = sig else {
            return Err(SignatureError::Missing(format!("{MANIFEST}{SIG_SUFFIX}")));
        };
        let files: Vec<(String, Vec<u8>)> = f
            .base_names
            .iter()
            .cloned()
            .zip(f.files.iter().map(|(_, b)| b.clone()))
            .collect();
        keys.verify_manifest(manifest, sig, &files)
    } else {
        let name = f.files.first().map(|(n, _)| n.as_str()).unwrap_or("bundle");
        let Some((sig_name, sig)) = &f.signature else {
            return Err(SignatureError::Missing(format!("{name}{SIG_SUFFIX}")));
        };
        let content = f
            .files
            .first()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default();
        keys.verify(content, sig_name, sig)
    }
}

/// The key ID of a minisign signature, as `minisign` prints it (the 8 bytes after the algorithm,
/// little-endian, in upper-case hex); `unknown` if the text does not hold one.
fn key_id_of(sig_text: &str) -> String {
    use std::fmt::Write;
    let decoded = sig_text
        .lines()
        .nth(1)
        .and_then(|line| super::base64::decode(line.trim()));
    match decoded.as_deref().and_then(|b| b.get(2..10)) {
        Some(id) => id.iter().rev().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        }),
        None => "unknown".to_string(),
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
mod tests;
