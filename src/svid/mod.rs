//! wardgate's own identity: its X.509 SVID (what the mTLS listener presents) and the trust
//! bundles (what callers' certificates and forwarded certificates are verified against), kept
//! current from one of two backends.
//!
//! This module owns the shared [`Identity`] (the current [`Svid`] in an `arc-swap`, the
//! [`TrustHandle`] shared with forwarded-chain verification), the [`IdentitySource`] interface
//! both backends implement ([`workload_api`]: the SPIFFE Workload API through the `spiffe`
//! crate's `X509Source`; [`files`]: PEM files written spiffe-helper style), and the
//! [`SvidObserver`] hook that metrics ([`metrics`]) plug into. A new SVID or bundle set is
//! checked completely (parses, key matches certificate, one SPIFFE ID, not expired) before it
//! replaces the one in force, with one atomic store: a handshake in progress keeps the SVID it
//! loaded, the next one sees the new SVID.
//!
//! It must never serve, decide or verify a request, never log or expose private key material,
//! never replace a working SVID with one that fails those checks, and never block the
//! handshake path (readers only `load` from `arc-swap`).

pub mod files;
pub mod metrics;
pub mod workload_api;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::identity;
use crate::trust::{TrustBundles, TrustHandle};

/// A boxed future, as [`IdentitySource::run`] takes and returns.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Why an SVID (or a bundle) was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The certificate chain is empty or not PEM/DER certificates.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The private key does not parse or is of a type rustls cannot sign with.
    #[error("private key: {0}")]
    Key(String),
    /// The private key is not the key of the leaf certificate (for files: typically the
    /// moment between writing the new certificate and writing its key).
    #[error("the private key does not belong to the leaf certificate")]
    KeyMismatch,
    /// The leaf is not a usable X.509-SVID (URI SANs, CA flag).
    #[error("not an X.509-SVID: {0}")]
    NotAnSvid(String),
    /// The leaf is outside its validity period.
    #[error("the certificate expired at {0}")]
    Expired(jiff::Timestamp),
    /// A trust bundle could not be read.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// The backend's configuration is unusable (bad endpoint, missing files).
    #[error("{0}")]
    Config(String),
}

/// One X.509 SVID of wardgate's own, checked and ready for rustls.
pub struct Svid {
    spiffe_id: String,
    certified_key: Arc<CertifiedKey>,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    serial: String,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Check and assemble an SVID from its chain (leaf first) and private key: the chain must
    /// parse, the leaf must carry exactly one URI SAN that is a valid SPIFFE ID, must not be a
    /// CA and must not have expired, and the key must be the leaf's.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Svid, SvidError> {
        let leaf = chain
            .first()
            .ok_or_else(|| SvidError::Chain("no certificate".into()))?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| SvidError::Chain(format!("leaf does not parse: {e}")))?;
        for (i, extra) in chain.iter().enumerate().skip(1) {
            X509Certificate::from_der(extra.as_ref()).map_err(|e| {
                SvidError::Chain(format!("certificate {} does not parse: {e}", i + 1))
            })?;
        }
        let spiffe_id = single_spiffe_id(&cert)?;
        let not_before = to_timestamp(cert.validity().not_before.timestamp());
        let not_after = to_timestamp(cert.validity().not_after.timestamp());
        if not_after <= jiff::Timestamp::now() {
            return Err(SvidError::Expired(not_after));
        }
        let serial = cert.raw_serial_as_string().replace(':', "");

        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| SvidError::Key(e.to_string()))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        // Unlike `CertifiedKey::from_der`, an undeterminable match counts as a mismatch: ring
        // reports the public key of every key type it loads, so this never refuses a good pair.
        certified_key
            .keys_match()
            .map_err(|_| SvidError::KeyMismatch)?;
        Ok(Svid {
            spiffe_id,
            certified_key: Arc::new(certified_key),
            not_before,
            not_after,
            serial,
        })
    }

    /// The SPIFFE ID (the leaf's URI SAN).
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// Chain and signing key, as the TLS server presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &[u8] {
        self.certified_key
            .cert
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> jiff::Timestamp {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> jiff::Timestamp {
        self.not_after
    }

    /// The leaf's serial number, lower-case hex without separators (for logs).
    pub fn serial(&self) -> &str {
        &self.serial
    }
}

fn to_timestamp(unix_seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(unix_seconds).unwrap_or(jiff::Timestamp::MIN)
}

/// The one SPIFFE ID of an X.509-SVID leaf (exactly one URI SAN, valid, not a CA).
fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<String, SvidError> {
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push(*uri);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(SvidError::NotAnSvid("the certificate is a CA".into()));
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [one] => identity::parse_spiffe_id(one)
            .map(|_| (*one).to_owned())
            .map_err(|e| SvidError::NotAnSvid(format!("URI SAN `{one}`: {e}"))),
        [] => Err(SvidError::NotAnSvid("no URI SAN".into())),
        more => Err(SvidError::NotAnSvid(format!(
            "{} URI SANs (an SVID has exactly one)",
            more.len()
        ))),
    }
}

/// Told about every change of wardgate's own identity; metrics hook in here
/// ([`metrics::SvidMetrics`]). Calls come from the backend's task, never from a handshake.
pub trait SvidObserver: Send + Sync {
    /// A new SVID is in force. `rotated` is false for the first one.
    fn svid_changed(&self, _svid: &Svid, _rotated: bool) {}
    /// The SVID was withdrawn (the Workload API denied it): none is in force.
    fn svid_withdrawn(&self) {}
    /// A new set of trust bundles is in force.
    fn bundles_changed(&self, _bundles: &TrustBundles) {}
    /// The Workload API connection came up (`true`) or went down (`false`).
    fn workload_api_connected(&self, _connected: bool) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSvidObserver;
impl SvidObserver for NoSvidObserver {}

/// The identity in force: read by the TLS layer on every handshake, written by one backend.
pub struct Identity {
    svid: ArcSwapOption<Svid>,
    trust: TrustHandle,
    observer: Arc<dyn SvidObserver>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trust = self.trust.load();
        let mut domains: Vec<&str> = trust.domains().collect();
        domains.sort_unstable();
        f.debug_struct("Identity")
            .field("svid", &self.svid.load())
            .field("trust_domains", &domains)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// No SVID yet; bundles are read from and written to `trust` (shared with forwarded-chain
    /// verification, so both always use the same bundles).
    pub fn new(trust: TrustHandle, observer: Arc<dyn SvidObserver>) -> Arc<Identity> {
        Arc::new(Identity {
            svid: ArcSwapOption::empty(),
            trust,
            observer,
        })
    }

    /// The SVID in force, if any.
    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.load_full()
    }

    /// The trust bundles, shared.
    pub fn trust(&self) -> &TrustHandle {
        &self.trust
    }

    /// Put `svid` in force unless it is the one already in force (same leaf). Returns whether
    /// it replaced anything.
    pub fn publish_svid(&self, svid: Svid) -> bool {
        let previous = self.svid.load_full();
        if previous
            .as_ref()
            .is_some_and(|p| p.leaf_der() == svid.leaf_der())
        {
            return false;
        }
        let rotated = previous.is_some();
        tracing::info!(
            spiffe_id = svid.spiffe_id(),
            serial = svid.serial(),
            not_after = %svid.not_after(),
            previous_serial = previous.as_ref().map(|p| p.serial()),
            "{}",
            if rotated { "own SVID rotated" } else { "own SVID in force" }
        );
        let svid = Arc::new(svid);
        self.svid.store(Some(Arc::clone(&svid)));
        self.observer.svid_changed(&svid, rotated);
        true
    }

    /// Take the SVID out of force (the Workload API withdrew it): new handshakes fail until a
    /// new one arrives.
    pub fn withdraw_svid(&self) {
        if self.svid.swap(None).is_some() {
            tracing::error!(
                "own SVID withdrawn: the mTLS listener refuses handshakes until a new one arrives"
            );
            self.observer.svid_withdrawn();
        }
    }

    /// Put `bundles` in force unless they equal the ones in force. Returns whether they
    /// replaced anything.
    pub fn publish_bundles(&self, bundles: TrustBundles) -> bool {
        let current = self.trust.load();
        if same_bundles(&current, &bundles) {
            return false;
        }
        let mut domains: Vec<String> = bundles
            .domains()
            .map(|d| format!("{d} ({} CA)", bundles.cas(d).len()))
            .collect();
        domains.sort_unstable();
        tracing::info!(trust_domains = %domains.join(", "), "trust bundles updated");
        self.observer.bundles_changed(&bundles);
        self.trust.store(Arc::new(bundles));
        true
    }
}

fn same_bundles(a: &TrustBundles, b: &TrustBundles) -> bool {
    let mut ad: Vec<&str> = a.domains().collect();
    let mut bd: Vec<&str> = b.domains().collect();
    ad.sort_unstable();
    bd.sort_unstable();
    ad == bd && ad.iter().all(|d| a.cas(d) == b.cas(d))
}

/// A running backend: follows its source and keeps an [`Identity`] current.
pub trait IdentitySource: Send + fmt::Debug {
    /// Short name for logs: `workload-api` or `files`.
    fn kind(&self) -> &'static str;

    /// Follow the source until `shutdown` completes; then release it (close the Workload API
    /// stream, stop watching files).
    fn run(self: Box<Self>, shutdown: BoxFuture) -> BoxFuture;
}

/// Which backend, with its settings.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// The SPIFFE Workload API.
    WorkloadApi(workload_api::Config),
    /// PEM files on disk.
    Files(files::Config),
}

/// Load what can be loaded now and return the backend, ready to [`IdentitySource::run`].
///
/// For files, the first load happens here and a configuration error (a file that does not
/// exist) is returned; content that is not yet consistent is retried by `run`. For the
/// Workload API nothing blocks here: `run` connects, retrying with backoff while the agent is
/// not there, and the mTLS listener refuses handshakes until the first SVID has arrived.
pub fn start(
    config: SourceConfig,
    identity: Arc<Identity>,
) -> Result<Box<dyn IdentitySource>, SvidError> {
    match config {
        SourceConfig::WorkloadApi(c) => {
            Ok(Box::new(workload_api::WorkloadApiSource::new(c, identity)?))
        }
        SourceConfig::Files(c) => Ok(Box::new(files::FileSource::start(c, identity)?)),
    }
}

#[cfg(test)]
pub(crate) mod test_pki {
    //! Certificates for the unit tests of this module and of `tls`.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    pub(crate) struct TestCa {
        pub(crate) pem: String,
        pub(crate) der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    pub(crate) struct TestLeaf {
        pub(crate) cert_pem: String,
        pub(crate) cert_der: Vec<u8>,
        pub(crate) key_pem: String,
        pub(crate) key_der: Vec<u8>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> TestCa {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            TestCa {
                pem: cert.pem(),
                der: cert.der().to_vec(),
                issuer: Issuer::new(p, key),
            }
        }

        pub(crate) fn leaf(&self, uris: &[&str], validity_secs: i64) -> TestLeaf {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = uris
                .iter()
                .map(|u| SanType::URI((*u).try_into().unwrap()))
                .collect();
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            let now = jiff::Timestamp::now().as_second();
            let at = |secs: i64| epoch + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
            p.not_before = at(now - 300);
            p.not_after = at(now + validity_secs);
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            TestLeaf {
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                key_pem: key.serialize_pem(),
                key_der: key.serialize_der(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::test_pki::TestCa;
    use super::*;
    use rustls::pki_types::PrivatePkcs8KeyDer;

    fn svid_of(leaf: &test_pki::TestLeaf) -> Result<Svid, SvidError> {
        Svid::new(
            vec![CertificateDer::from(leaf.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
    }

    #[test]
    fn an_svid_is_checked_before_it_is_taken() {
        let ca = TestCa::new("hospital CA");
        let good = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
        let svid = svid_of(&good).unwrap();
        assert_eq!(svid.spiffe_id(), "spiffe://hospital.example/wardgate");
        assert!(!svid.serial().is_empty());
        assert!(!format!("{svid:?}").contains("key_der"));

        let other = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
        let mismatched = Svid::new(
            vec![CertificateDer::from(good.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other.key_der.clone())),
        );
        assert_eq!(mismatched.err(), Some(SvidError::KeyMismatch));

        let two = ca.leaf(
            &["spiffe://hospital.example/a", "spiffe://hospital.example/b"],
            3600,
        );
        assert!(matches!(svid_of(&two), Err(SvidError::NotAnSvid(_))));
        let none = ca.leaf(&[], 3600);
        assert!(matches!(svid_of(&none), Err(SvidError::NotAnSvid(_))));
        let bad_id = ca.leaf(&["spiffe://hospital.example/a/../b"], 3600);
        assert!(matches!(svid_of(&bad_id), Err(SvidError::NotAnSvid(_))));
        let expired = ca.leaf(&["spiffe://hospital.example/wardgate"], -60);
        assert!(matches!(svid_of(&expired), Err(SvidError::Expired(_))));
        assert!(matches!(
            Svid::new(
                Vec::new(),
                PrivateKeyDer::Pkcs8(good.key_der.clone().into())
            ),
            Err(SvidError::Chain(_))
        ));
    }

    #[test]
    fn identity_publishes_only_changes() {
        let ca = TestCa::new("hospital CA");
        let identity = Identity::new(Arc::default(), Arc::new(NoSvidObserver));
        assert!(identity.svid().is_none());
        let first = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
        assert!(identity.publish_svid(svid_of(&first).unwrap()));
        assert!(!identity.publish_svid(svid_of(&first).unwrap()));
        let second = ca.leaf(&["spiffe://hospital.example/wardgate"], 3600);
        assert!(identity.publish_svid(svid_of(&second).unwrap()));
        assert_eq!(
            identity.svid().unwrap().leaf_der(),
            second.cert_der.as_slice()
        );
        identity.withdraw_svid();
        assert!(identity.svid().is_none());

        let mut bundles = TrustBundles::new();
        bundles.set("hospital.example", vec![ca.der.clone()]);
        assert!(identity.publish_bundles(bundles.clone()));
        assert!(!identity.publish_bundles(bundles));
        assert_eq!(identity.trust().load().cas("hospital.example").len(), 1);
    }
}
