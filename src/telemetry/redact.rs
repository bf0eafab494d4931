//! What a decision-log record may hold of a request: the settings (`--decision-log-paths`,
//! `--decision-log-key`) and the rules that turn client-controlled values into loggable ones.
//!
//! The writer thread calls [`Redactor::path`], [`Redactor::host`], [`Redactor::method`] and
//! [`Redactor::request_id`] for every record (never the check path). Paths follow the policy
//! that decided ([`LogView`]), built once per policy and kept while records of that policy
//! arrive. A request id that is not a UUID is replaced by `hmac-` and 32 hex digits of
//! HMAC-SHA256 under the log key, so that whoever holds the key can hash the ids of Envoy's
//! access log and join the two. This module never logs, never fails a record, and never lets a
//! value through that the bundle does not name, except in `--decision-log-paths full`.

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::decision_log::{self, PathForm, MAX_PATH, REDACTED};
use crate::policy::logging::{LogView, Shown};
use crate::policy::Policy;

/// `--decision-log-paths`: how paths are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathLogging {
    /// Only the segments the deciding rule or the bundle's `logging` section names (default).
    #[default]
    Redacted,
    /// The path as sent, without query or fragment: for a debugging session only.
    Full,
    /// No path at all.
    Off,
}

impl PathLogging {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PathLogging::Redacted => "redacted",
            PathLogging::Full => "full",
            PathLogging::Off => "off",
        }
    }
}

impl fmt::Display for PathLogging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PathLogging {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [PathLogging::Redacted, PathLogging::Full, PathLogging::Off]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not redacted, full or off"))
    }
}

/// Fewest bytes a `--decision-log-key` file must hold.
pub const MIN_KEY_BYTES: usize = 16;

/// The key of the request-id hash, prepared as HMAC-SHA256's inner and outer pad blocks.
#[derive(Clone)]
pub struct RequestIdKey {
    inner: [u8; 64],
    outer: [u8; 64],
}

impl fmt::Debug for RequestIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestIdKey(..)")
    }
}

/// Why a `--decision-log-key` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Unreadable.
    #[error("cannot read the key file: {0}")]
    Read(#[from] std::io::Error),
    /// Too short to be a secret.
    #[error("the key file holds {0} bytes (trailing white space not counted); at least {MIN_KEY_BYTES} are needed")]
    Short(usize),
}

impl RequestIdKey {
    /// A key from secret bytes (any length; longer than a block is hashed first, as HMAC says).
    pub fn from_bytes(key: &[u8]) -> RequestIdKey {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        RequestIdKey {
            inner: block.map(|b| b ^ 0x36),
            outer: block.map(|b| b ^ 0x5c),
        }
    }

    /// The key in `path`: its bytes without trailing white space (so `openssl dgst -hmac
    /// "$(cat FILE)"` computes the same hash), at least [`MIN_KEY_BYTES`] of them.
    pub fn from_file(path: &Path) -> Result<RequestIdKey, KeyError> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(64 * 1024)
            .read_to_end(&mut bytes)?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let key = bytes.get(..end).unwrap_or_default();
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short(key.len()));
        }
        Ok(RequestIdKey::from_bytes(key))
    }

    /// A random key for this process only: hashes join records of one process run, not the
    /// access log. Read from the kernel's random source; if that fails, from a seeded
    /// generator mixed with the time and process id (unpredictable enough to keep a hash from
    /// being reversed by guessing, which is all it guards).
    pub fn random() -> RequestIdKey {
        let mut key = [0u8; 32];
        let from_kernel = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .is_ok();
        if !from_kernel {
            let seed = format!(
                "{}-{}-{}",
                fastrand::u64(..),
                std::process::id(),
                jiff::Timestamp::now().as_nanosecond()
            );
            key.copy_from_slice(&Sha256::digest(seed.as_bytes()));
        }
        RequestIdKey::from_bytes(&key)
    }

    /// HMAC-SHA256 of `message` under this key.
    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let inner = Sha256::new()
            .chain_update(self.inner)
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(self.outer)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The logged form of a request id that is not a UUID: `hmac-` and the first 16 bytes of
    /// the MAC in lower-case hex.
    pub fn hash(&self, id: &str) -> String {
        let mac = self.mac(id.as_bytes());
        let mut out = String::with_capacity(5 + 32);
        out.push_str("hmac-");
        for b in mac.iter().take(16) {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// How the decision log treats what a client controls.
#[derive(Debug, Clone)]
pub struct Redaction {
    /// How paths are written.
    pub paths: PathLogging,
    /// The request-id hash key.
    pub key: Arc<RequestIdKey>,
}

impl Default for Redaction {
    /// Redacted paths, a random per-process key.
    fn default() -> Self {
        Redaction {
            paths: PathLogging::Redacted,
            key: Arc::new(RequestIdKey::random()),
        }
    }
}

/// The writer thread's redaction state: the settings and the view of the latest policy seen.
pub(super) struct Redactor {
    settings: Redaction,
    /// The policy the view was built from (kept alive so the pointer cannot be reused).
    view: Option<(Arc<Policy>, LogView)>,
    /// For records without a policy (`no_policy`): standard methods only, nothing else.
    bare: LogView,
}

impl Redactor {
    pub(super) fn new(settings: Redaction) -> Redactor {
        Redactor {
            settings,
            view: None,
            bare: LogView::without_policy(),
        }
    }

    fn view_of(&mut self, policy: Option<&Arc<Policy>>) -> Option<(&Policy, &LogView)> {
        let policy = policy?;
        let current = self
            .view
            .as_ref()
            .is_some_and(|(p, _)| Arc::ptr_eq(p, policy));
        if !current {
            self.view = Some((Arc::clone(policy), LogView::new(policy)));
        }
        self.view.as_ref().map(|(p, v)| (&**p, v))
    }

    /// The logged path and its form. `cut` says the copy of the raw path was already shortened.
    pub(super) fn path(
        &mut self,
        policy: Option<&Arc<Policy>>,
        rule: Option<&str>,
        raw: &str,
        cut: bool,
    ) -> (String, PathForm) {
        let mut out = String::new();
        let form = match self.settings.paths {
            PathLogging::Off => return (out, PathForm::Off),
            PathLogging::Full => {
                let (text, whole) = cap_at_segment(decision_log::loggable_path(raw), MAX_PATH);
                out.push_str(text);
                if whole {
                    PathForm::Full
                } else {
                    PathForm::Truncated
                }
            }
            PathLogging::Redacted => {
                let shown = match self.view_of(policy) {
                    // A cut copy may end inside a segment: no rule can be trusted with it.
                    Some((p, view)) => view.path(p, rule.filter(|_| !cut), raw, &mut out, MAX_PATH),
                    None => self.bare.path_without_policy(raw, &mut out, MAX_PATH),
                };
                match shown {
                    Shown::Full => PathForm::Full,
                    Shown::Redacted => PathForm::Redacted,
                    Shown::Truncated => PathForm::Truncated,
                }
            }
        };
        if cut && form != PathForm::Off {
            return (out, PathForm::Truncated);
        }
        (out, form)
    }

    /// The logged host: empty stays empty, a host the bundle names is kept, anything else is
    /// [`REDACTED`].
    pub(super) fn host(&mut self, policy: Option<&Arc<Policy>>, raw: &str) -> String {
        if raw.is_empty() {
            return String::new();
        }
        let known = match self.view_of(policy) {
            Some((_, view)) => view.host(raw),
            None => None,
        };
        known.unwrap_or_else(|| REDACTED.to_owned())
    }

    /// The logged method: standard or named by a rule, else [`REDACTED`].
    pub(super) fn method(&mut self, policy: Option<&Arc<Policy>>, raw: &str) -> String {
        let known = match self.view_of(policy) {
            Some((_, view)) => view.method(raw).map(str::to_owned),
            None => self.bare.method(raw).map(str::to_owned),
        };
        known.unwrap_or_else(|| REDACTED.to_owned())
    }

    /// The logged request id: a UUID as sent, anything else as its keyed hash.
    pub(super) fn request_id(&self, raw: &str) -> String {
        if decision_log::is_envoy_request_id(raw) {
            raw.to_owned()
        } else {
            self.settings.key.hash(raw)
        }
    }
}

/// `text` cut to at most `max` bytes at a `/` (or a character boundary when there is none);
/// the flag says whether it is whole.
pub(super) fn cap_at_segment(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, true);
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text.get(..end).unwrap_or_default();
    let cut = match head.rfind('/') {
        Some(i) if i > 0 => &head[..i],
        _ => head,
    };
    (cut, false)
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(super) fn cap(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// RFC 4231 test case 2, so that the documented `openssl dgst -hmac` recipe holds.
    #[test]
    fn the_hash_is_hmac_sha256() {
        let key = RequestIdKey::from_bytes(b"Jefe");
        let mac = key.mac(b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long = RequestIdKey::from_bytes(&[0xaa; 131]);
        let mac = long.mac(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(mac[..4], [0x60, 0xe4, 0x31, 0x59]);
        assert_eq!(key.hash("x").len(), 37);
        assert!(key.hash("MRN-1").starts_with("hmac-"));
        assert_ne!(key.hash("MRN-1"), key.hash("MRN-2"));
        assert_ne!(
            RequestIdKey::random().hash("MRN-1"),
            RequestIdKey::random().hash("MRN-1"),
            "each process has its own key"
        );
    }

    #[test]
    fn key_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let from_file = RequestIdKey::from_file(&path).unwrap();
        let direct = RequestIdKey::from_bytes(b"0123456789abcdef0123");
        assert_eq!(from_file.hash("id"), direct.hash("id"));
        std::fs::write(&path, "short\n").unwrap();
        let err = RequestIdKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes"), "{err}");
    }

    #[test]
    fn flag_values_parse() {
        assert_eq!("full".parse::<PathLogging>(), Ok(PathLogging::Full));
        assert_eq!("off".parse::<PathLogging>(), Ok(PathLogging::Off));
        assert_eq!("redacted".parse::<PathLogging>(), Ok(PathLogging::Redacted));
        assert!("partial".parse::<PathLogging>().is_err());
    }

    #[test]
    fn caps_cut_at_boundaries() {
        assert_eq!(cap_at_segment("/a/bb/ccc", 6), ("/a/bb", false));
        assert_eq!(cap_at_segment("/a/bb/ccc", 5), ("/a", false));
        assert_eq!(cap_at_segment("/a/bb", 6), ("/a/bb", true));
        assert_eq!(cap("héllo", 2), "h");
    }
}
