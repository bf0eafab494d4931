//! The per-thread cache of decoded forwarded certificates.
//!
//! Envoy forwards the caller's leaf certificate URL-encoded PEM on every Check; decoding it
//! (percent-decoding, base64, X.509 parsing) costs far more than the decision itself, and a
//! sidecar sees the same few callers over and over. This module owns remembering the decoding,
//! per thread (no lock shared between checks). It must never cache anything but that pure
//! function of the text: validity, SAN and lifetime are judged by `decide` on every check, and
//! chain verification (which depends on trust bundles that rotate) runs on every check too. It
//! must never trust a hit without comparing the whole text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::identity::{self, CertError, CertificateFacts};

/// How many parsed forwarded certificates each thread remembers.
const CERT_CACHE_ENTRIES: usize = 512;

/// A forwarded certificate, decoded once: its DER (for chain verification) and the facts
/// `decide` judges.
#[derive(Debug)]
pub(super) struct ForwardedCert {
    pub(super) der: Vec<u8>,
    pub(super) facts: CertificateFacts,
}

/// A decoding, shared between the cache and the checks using it.
pub(super) type Decoded = Rc<Result<ForwardedCert, CertError>>;

/// Decoded forwarded certificates keyed by a hash of the URL-encoded PEM's length and last 96
/// bytes (its signature, unique per certificate) and confirmed by comparing the whole text. A
/// hit costs a short hash, one `memcmp` and a reference-count increment.
type CertCache = HashMap<u64, Vec<(Box<str>, Decoded)>>;

thread_local! {
    /// The cache and how many entries it holds.
    static CERT_CACHE: RefCell<(CertCache, usize)> = RefCell::new((HashMap::new(), 0));
}

fn cert_cache_key(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let bytes = text.as_bytes();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.len().hash(&mut h);
    bytes[bytes.len().saturating_sub(96)..].hash(&mut h);
    h.finish()
}

/// Decode a forwarded certificate (URL-encoded PEM as Envoy sends it), remembered per thread.
pub(super) fn cached_certificate(text: &str) -> Decoded {
    let key = cert_cache_key(text);
    let hit = CERT_CACHE.with(|c| {
        c.borrow()
            .0
            .get(&key)
            .and_then(|list| list.iter().find(|(t, _)| &**t == text))
            .map(|(_, r)| Rc::clone(r))
    });
    if let Some(r) = hit {
        return r;
    }
    let decoded = Rc::new(identity::certificate_der(text).and_then(|der| {
        let facts = identity::facts_from_der(&der)?;
        Ok(ForwardedCert { der, facts })
    }));
    CERT_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.1 >= CERT_CACHE_ENTRIES {
            // Full: start over rather than track recency; a sidecar sees few distinct callers.
            c.0.clear();
            c.1 = 0;
        }
        c.0.entry(key)
            .or_default()
            .push((text.into(), Rc::clone(&decoded)));
        c.1 += 1;
    });
    decoded
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
        match &*cached_certificate(text) {
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
}
