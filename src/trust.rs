//! Trust bundles: the CA certificates of each trust domain, and verification of a forwarded
//! leaf certificate against the bundle of *its own* trust domain.
//!
//! Envoy verifies a caller's certificate against every CA it trusts at once, so in a federated
//! mesh a certificate issued by partner-lab's CA for `spiffe://hospital.example/...` passes
//! Envoy's handshake. SPIFFE requires an SVID to be verified against the bundle of the trust
//! domain in its ID; with `serve --verify-chain`, wardgate does exactly that and denies such a
//! cross-domain forgery as `bad_certificate`.
//!
//! Bundles come from PEM files (one per trust domain) or from the SPIFFE Workload API; this
//! module holds and checks them and never fetches anything itself.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The shared, hot-swappable set of trust bundles.
pub type TrustHandle = Arc<ArcSwap<TrustBundles>>;

/// CA certificates (DER) by trust domain name.
#[derive(Debug, Clone, Default)]
pub struct TrustBundles {
    by_domain: HashMap<String, Vec<Vec<u8>>>,
}

/// Why a leaf does not chain to its trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No bundle is known for the trust domain.
    #[error("no trust bundle for trust domain `{0}`")]
    NoBundle(String),
    /// The certificate is not DER X.509.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// No CA of the domain's bundle signed the certificate.
    #[error("not signed by any CA in the trust bundle of `{0}`")]
    NotSigned(String),
    /// A bundle file could not be read.
    #[error("{0}")]
    Bundle(String),
}

impl TrustBundles {
    /// An empty set.
    pub fn new() -> Self {
        TrustBundles::default()
    }

    /// Replace the bundle of `trust_domain` with these CA certificates (DER).
    pub fn set(&mut self, trust_domain: &str, cas: Vec<Vec<u8>>) {
        self.by_domain.insert(trust_domain.to_string(), cas);
    }

    /// Replace the bundle of `trust_domain` with every certificate of a PEM text.
    pub fn set_pem(&mut self, trust_domain: &str, pem_text: &str) -> Result<usize, TrustError> {
        let mut cas = Vec::new();
        for pem in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
            let pem =
                pem.map_err(|e| TrustError::Bundle(format!("bad PEM for `{trust_domain}`: {e}")))?;
            if pem.label != "CERTIFICATE" {
                continue;
            }
            X509Certificate::from_der(&pem.contents).map_err(|e| {
                TrustError::Bundle(format!(
                    "bad certificate in the bundle of `{trust_domain}`: {e}"
                ))
            })?;
            cas.push(pem.contents);
        }
        if cas.is_empty() {
            return Err(TrustError::Bundle(format!(
                "no certificate in the bundle of `{trust_domain}`"
            )));
        }
        let n = cas.len();
        self.set(trust_domain, cas);
        Ok(n)
    }

    /// The trust domains with a bundle.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.by_domain.keys().map(String::as_str)
    }

    /// The CA certificates (DER) of a trust domain.
    pub fn cas(&self, trust_domain: &str) -> &[Vec<u8>] {
        self.by_domain
            .get(trust_domain)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether `leaf_der` is signed by a CA of `trust_domain`'s bundle, with a matching issuer
    /// name. (Envoy forwards the leaf only, so intermediates are not available: a trust domain
    /// that issues through intermediates lists them in its bundle.)
    pub fn verify_leaf(&self, trust_domain: &str, leaf_der: &[u8]) -> Result<(), TrustError> {
        let cas = self
            .by_domain
            .get(trust_domain)
            .ok_or_else(|| TrustError::NoBundle(trust_domain.to_string()))?;
        let (_, leaf) =
            X509Certificate::from_der(leaf_der).map_err(|e| TrustError::Parse(e.to_string()))?;
        for ca in cas {
            let Ok((_, ca)) = X509Certificate::from_der(ca) else {
                continue;
            };
            if ca.subject() != leaf.issuer() {
                continue;
            }
            if leaf.verify_signature(Some(ca.public_key())).is_ok() {
                return Ok(());
            }
        }
        Err(TrustError::NotSigned(trust_domain.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca");
        (cert, Issuer::new(p, key))
    }

    fn leaf(id: &str, issuer: &Issuer<'static, KeyPair>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
        let key = KeyPair::generate().expect("key");
        p.signed_by(&key, issuer).expect("leaf").der().to_vec()
    }

    #[test]
    fn leaf_must_chain_to_its_own_trust_domain() {
        let (hospital, hospital_issuer) = ca("hospital CA");
        let (partner, partner_issuer) = ca("partner CA");
        let mut b = TrustBundles::new();
        b.set("hospital.example", vec![hospital.der().to_vec()]);
        b.set("partner-lab.example", vec![partner.der().to_vec()]);

        let good = leaf(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            &hospital_issuer,
        );
        assert_eq!(b.verify_leaf("hospital.example", &good), Ok(()));

        // Partner's CA minting a hospital identity: trusted by Envoy, refused here.
        let forged = leaf(
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            &partner_issuer,
        );
        assert_eq!(
            b.verify_leaf("hospital.example", &forged),
            Err(TrustError::NotSigned("hospital.example".into()))
        );
        assert_eq!(b.verify_leaf("partner-lab.example", &forged), Ok(()));
        assert!(matches!(
            b.verify_leaf("other.example", &good),
            Err(TrustError::NoBundle(_))
        ));
        assert!(matches!(
            b.verify_leaf("hospital.example", b"junk"),
            Err(TrustError::Parse(_))
        ));
    }

    #[test]
    fn pem_bundles() {
        let (hospital, _) = ca("hospital CA");
        let mut b = TrustBundles::new();
        assert_eq!(b.set_pem("hospital.example", &hospital.pem()), Ok(1));
        assert!(b.set_pem("x", "not pem").is_err());
        assert_eq!(b.cas("hospital.example").len(), 1);
    }
}
