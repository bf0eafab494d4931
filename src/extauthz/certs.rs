//! The per-thread cache of decoded forwarded certificates.
//!
//! Envoy forwards the caller's leaf certificate URL-encoded PEM on every Check; decoding it
//! (percent-decoding, base64, X.509 parsing) costs far more than the decision itself, and a
//! sidecar sees the same few callers over and over. This module owns remembering the decoding,
//! per thread (no lock shared between checks), and the bounds on it: a forwarded certificate
//! over [`MAX_FORWARDED_CERTIFICATE`] bytes is refused before it is decoded or remembered, and
//! each thread's cache holds at most [`CERT_CACHE_ENTRIES`] entries and
//! [`CERT_CACHE_BYTES`] bytes (text, DER and facts counted), so a caller sending many large
//! distinct certificates costs at most that per worker thread. It must never cache anything
//! but that pure function of the text: validity, SAN and lifetime are judged by `decide` on
//! every check, and chain verification (which depends on trust bundles that rotate) runs on
//! every check too. It must never trust a hit without comparing the whole text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use crate::identity::{self, CertError, CertificateFacts};

/// The longest forwarded certificate read, as Envoy sends it (URL-encoded PEM): 16 KiB. An
/// X.509-SVID leaf is 1–3 KiB encoded; a longer text is denied `bad_certificate` unread.
pub const MAX_FORWARDED_CERTIFICATE: usize = 16 * 1024;

/// How many decoded forwarded certificates each thread remembers.
const CERT_CACHE_ENTRIES: usize = 512;

/// How many bytes of decoded forwarded certificates each thread remembers: 1 MiB.
const CERT_CACHE_BYTES: usize = 1024 * 1024;

/// What an entry costs beyond its text, DER and strings: map slot, `Rc`, facts.
const ENTRY_OVERHEAD: usize = 256;

/// A forwarded certificate, decoded once: its DER (for chain verification) and the facts
/// `decide` judges.
#[derive(Debug)]
pub(super) struct ForwardedCert {
    pub(super) der: Vec<u8>,
    pub(super) facts: CertificateFacts,
}

/// A decoding, shared between the cache and the checks using it.
pub(super) type Decoded = Rc<Result<ForwardedCert, CertError>>;

/// A forwarded certificate longer than [`MAX_FORWARDED_CERTIFICATE`]: neither decoded nor
/// remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Oversize {
    /// Its length in bytes.
    pub(super) len: usize,
}

impl fmt::Display for Oversize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded certificate is {} bytes, over the limit of {MAX_FORWARDED_CERTIFICATE}",
            self.len
        )
    }
}

/// Decoded forwarded certificates keyed by a hash of the URL-encoded PEM's length and last 96
/// bytes (its signature, unique per certificate) and confirmed by comparing the whole text. A
/// hit costs a short hash, one `memcmp` and a reference-count increment.
#[derive(Default)]
struct CertCache {
    map: HashMap<u64, Vec<(Box<str>, Decoded)>>,
    entries: usize,
    bytes: usize,
}

thread_local! {
    static CERT_CACHE: RefCell<CertCache> = RefCell::new(CertCache::default());
}

fn cert_cache_key(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let bytes = text.as_bytes();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.len().hash(&mut h);
    bytes[bytes.len().saturating_sub(96)..].hash(&mut h);
    h.finish()
}

/// What remembering `decoded` under `text` costs, in bytes.
fn entry_cost(text: &str, decoded: &Result<ForwardedCert, CertError>) -> usize {
    let held = match decoded {
        Ok(cert) => {
            cert.der.len()
                + cert
                    .facts
                    .uri_sans
                    .iter()
                    .map(|san| san.len() + std::mem::size_of::<String>())
                    .sum::<usize>()
        }
        Err(error) => error.to_string().len(),
    };
    text.len() + held + ENTRY_OVERHEAD
}

/// Decode a forwarded certificate (URL-encoded PEM as Envoy sends it), remembered per thread;
/// [`Oversize`] for a text over [`MAX_FORWARDED_CERTIFICATE`], which is neither decoded nor
/// remembered.
pub(super) fn cached_certificate(text: &str) -> Result<Decoded, Oversize> {
    if text.len() > MAX_FORWARDED_CERTIFICATE {
        return Err(Oversize { len: text.len() });
    }
    let key = cert_cache_key(text);
    let hit = CERT_CACHE.with(|c| {
        c.borrow()
            .map
            .get(&key)
            .and_then(|list| list.iter().find(|(t, _)| &**t == text))
            .map(|(_, r)| Rc::clone(r))
    });
    if let Some(r) = hit {
        return Ok(r);
    }
    let decoded = Rc::new(identity::certificate_der(text).and_then(|der| {
        let facts = identity::facts_from_der(&der)?;
        Ok(ForwardedCert { der, facts })
    }));
    let cost = entry_cost(text, &decoded);
    CERT_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.entries >= CERT_CACHE_ENTRIES || c.bytes + cost > CERT_CACHE_BYTES {
            // Full: start over rather than track recency; a sidecar sees few distinct callers.
            // One entry always fits: the text limit keeps its cost far below the byte bound.
            *c = CertCache::default();
        }
        c.map
            .entry(key)
            .or_default()
            .push((text.into(), Rc::clone(&decoded)));
        c.entries += 1;
        c.bytes += cost;
    });
    Ok(decoded)
}

/// This thread's cache use: (entries, bytes).
#[cfg(test)]
fn cache_usage() -> (usize, usize) {
    CERT_CACHE.with(|c| {
        let c = c.borrow();
        (c.entries, c.bytes)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn url_encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn pem(id: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("uri"))];
        let key = rcgen::KeyPair::generate().expect("key");
        url_encode(&p.self_signed(&key).expect("cert").pem())
    }

    fn facts(text: &str) -> Result<CertificateFacts, CertError> {
        match &*cached_certificate(text).expect("under the size limit") {
            Ok(cert) => {
                assert_eq!(identity::certificate_der(text).as_ref(), Ok(&cert.der));
                Ok(cert.facts.clone())
            }
            Err(e) => Err(e.clone()),
        }
    }

    #[test]
    fn cached_parse_is_the_parse() {
        let a = pem("spiffe://td/a");
        let b = pem("spiffe://td/b");
        for _ in 0..2 {
            assert_eq!(facts(&a), identity::certificate_facts(&a));
            assert_eq!(facts(&b), identity::certificate_facts(&b));
        }
        assert_eq!(
            facts(&a).expect("parsed").uri_sans,
            vec!["spiffe://td/a".to_string()]
        );
        // Same length and same tail, different text: the whole text decides.
        let mut forged = a.clone();
        forged.replace_range(40..41, if &a[40..41] == "A" { "B" } else { "A" });
        assert_eq!(cert_cache_key(&forged), cert_cache_key(&a));
        assert_eq!(facts(&forged), identity::certificate_facts(&forged));
        assert_ne!(facts(&forged), facts(&a));
        assert!(facts("garbage").is_err());
    }

    #[test]
    fn oversize_certificates_are_refused_unread_and_not_kept() {
        let before = cache_usage();
        let long = "A".repeat(MAX_FORWARDED_CERTIFICATE + 1);
        assert_eq!(
            cached_certificate(&long).err(),
            Some(Oversize {
                len: MAX_FORWARDED_CERTIFICATE + 1
            })
        );
        assert_eq!(cache_usage(), before, "nothing remembered");
        // At the limit it is read (and, being garbage, remembered as unreadable).
        let at_limit = "A".repeat(MAX_FORWARDED_CERTIFICATE);
        assert!(matches!(
            cached_certificate(&at_limit).as_deref(),
            Ok(Err(_))
        ));
        assert_eq!(cache_usage().0, before.0 + 1);
        assert!(cache_usage().1 >= before.1 + MAX_FORWARDED_CERTIFICATE);
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_entries() {
        // Many distinct large texts, as a direct caller may send: the bytes held never pass
        // the bound, though the texts total 20 times it.
        let mut most = 0;
        for i in 0..1_400 {
            let mut text = format!("{i:06}");
            text.push_str(&"A".repeat(MAX_FORWARDED_CERTIFICATE - 6));
            assert!(cached_certificate(&text).is_ok());
            let (entries, bytes) = cache_usage();
            assert!(bytes <= CERT_CACHE_BYTES, "{bytes} bytes after {i}");
            assert!(entries <= CERT_CACHE_ENTRIES);
            most = most.max(bytes);
        }
        // The accounting counts the texts: the cache filled up to the bound before starting over.
        assert!(
            most > CERT_CACHE_BYTES - 2 * MAX_FORWARDED_CERTIFICATE,
            "{most}"
        );
        // Many small ones: bounded in entries.
        for i in 0..2 * CERT_CACHE_ENTRIES {
            assert!(cached_certificate(&format!("x{i}")).is_ok());
            assert!(cache_usage().0 <= CERT_CACHE_ENTRIES);
        }
        // A real certificate is still decoded and remembered after all that.
        let a = pem("spiffe://td/a");
        assert!(facts(&a).is_ok());
        let hit = cached_certificate(&a).expect("small");
        assert_eq!(Rc::strong_count(&hit), 2, "served from the cache");
    }
}
