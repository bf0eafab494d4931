//! Test PKI: one CA per trust domain, X.509 SVIDs for the example bundle's workloads, and
//! certificates that must be refused (another CA, too long-lived for a vendor).
//!
//! Owns key and certificate generation (rcgen) and writing them as PEM files for Envoy. It must
//! never touch real key material or anything outside the directory it is given.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::BoxError;

/// Trust domains whose CAs are in the trust bundle Envoy validates callers against.
pub const TRUSTED_DOMAINS: [&str; 3] =
    ["hospital.example", "partner-lab.example", "medtech.example"];

/// The example bundle's workloads: short name and SPIFFE ID. Each gets an SVID from its trust
/// domain's CA.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("ehr", "spiffe://hospital.example/ns/clinical/sa/ehr"),
    ("lab", "spiffe://hospital.example/ns/clinical/sa/lab"),
    (
        "imaging",
        "spiffe://hospital.example/ns/clinical/sa/imaging",
    ),
    (
        "pharmacy",
        "spiffe://hospital.example/ns/clinical/sa/pharmacy",
    ),
    ("billing", "spiffe://hospital.example/ns/admin/sa/billing"),
    (
        "scheduling",
        "spiffe://hospital.example/ns/admin/sa/scheduling",
    ),
    ("hr", "spiffe://hospital.example/ns/admin/sa/hr"),
    (
        "interface-engine",
        "spiffe://hospital.example/ns/admin/sa/interface-engine",
    ),
    (
        "device-gateway",
        "spiffe://hospital.example/ns/admin/sa/device-gateway",
    ),
    ("reflab", "spiffe://partner-lab.example/ns/vendor/sa/reflab"),
    (
        "remote-support",
        "spiffe://medtech.example/ns/support/sa/remote-support",
    ),
];

/// Trust domains whose workloads get short-lived SVIDs (the bundle's vendor segment caps SVID
/// lifetime at one hour).
const SHORT_LIVED_DOMAINS: [&str; 2] = ["partner-lab.example", "medtech.example"];

/// A certificate authority that can issue SVIDs.
pub struct Ca {
    /// Common name, for messages.
    pub name: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An X.509 SVID and its key, in memory and on disk.
#[derive(Debug, Clone)]
pub struct Svid {
    /// The URI SAN.
    pub spiffe_id: String,
    /// DNS SAN (`<sa>.<ns>.svc`), so a client can verify a server SVID by name.
    pub dns_name: String,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Leaf certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// Path of the leaf PEM file.
    pub cert_path: PathBuf,
    /// Path of the key PEM file.
    pub key_path: PathBuf,
}

impl Svid {
    /// The private key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// How long an SVID is valid, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// How long before now it became valid.
    pub started_ago: Duration,
    /// How long after now it stays valid.
    pub remaining: Duration,
}

impl Lifetime {
    /// A day, as hospital workloads get here (the clinical and administrative segments set no cap).
    pub const DAY: Lifetime = Lifetime {
        started_ago: Duration::from_secs(3600),
        remaining: Duration::from_secs(23 * 3600),
    };
    /// 50 minutes: within the vendor segment's one-hour cap.
    pub const SHORT: Lifetime = Lifetime {
        started_ago: Duration::from_secs(10 * 60),
        remaining: Duration::from_secs(40 * 60),
    };
}

impl Ca {
    /// A new self-signed CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Result<Ca, BoxError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, format!("{trust_domain} test CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
            "spiffe://{trust_domain}"
        ))?)];
        set_validity(
            &mut params,
            Lifetime {
                started_ago: Duration::from_secs(2 * 3600),
                remaining: Duration::from_secs(7 * 24 * 3600),
            },
        );
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            name: format!("{trust_domain} test CA"),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Issue a leaf SVID for `spiffe_id` (clientAuth and serverAuth), valid for `lifetime`, and
    /// write `<dir>/<file_stem>.pem` and `<dir>/<file_stem>.key.pem`.
    pub fn issue(
        &self,
        spiffe_id: &str,
        lifetime: Lifetime,
        dir: &Path,
        file_stem: &str,
    ) -> Result<Svid, BoxError> {
        let dns_name = dns_name_for(spiffe_id);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, file_stem);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from(spiffe_id)?),
            SanType::DnsName(Ia5String::try_from(dns_name.as_str())?),
        ];
        set_validity(&mut params, lifetime);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;

        let cert_path = dir.join(format!("{file_stem}.pem"));
        let key_path = dir.join(format!("{file_stem}.key.pem"));
        fs::write(&cert_path, cert.pem())?;
        fs::write(&key_path, key.serialize_pem())?;
        Ok(Svid {
            spiffe_id: spiffe_id.to_owned(),
            dns_name,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
            cert_path,
            key_path,
        })
    }
}

/// `spiffe://td/ns/<ns>/sa/<sa>` → `<sa>.<ns>.svc`; anything else → `workload.svc`.
fn dns_name_for(spiffe_id: &str) -> String {
    let path = spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, path)| path);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["ns", ns, "sa", sa] => format!("{sa}.{ns}.svc"),
        _ => "workload.svc".to_owned(),
    }
}

fn set_validity(params: &mut CertificateParams, lifetime: Lifetime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = epoch + now.saturating_sub(lifetime.started_ago);
    params.not_after = epoch + now + lifetime.remaining;
}

/// Every CA and SVID a test needs, written under one directory.
#[derive(Debug)]
pub struct Pki {
    /// Where the PEM files are.
    pub dir: PathBuf,
    /// PEM file with the CA of every trusted trust domain, for a verifier that trusts them all
    /// at once.
    pub trust_bundle_path: PathBuf,
    /// Directory with one `<trust domain>.pem` per trusted trust domain holding that domain's
    /// CA only: the shipped Envoy configs' `TRUST_BUNDLE_DIR` (per-trust-domain validation).
    pub trust_bundle_dir: PathBuf,
    /// CAs by trust domain, plus `rogue` (trusted by nobody).
    pub cas: BTreeMap<String, Ca>,
    /// SVIDs by short name: every [`WORKLOADS`] entry, plus
    /// `rogue-ehr` (ehr's SPIFFE ID from the untrusted CA) and
    /// `reflab-long-lived` (reflab's SPIFFE ID valid for a day, over the vendor cap).
    pub svids: BTreeMap<String, Svid>,
}

impl Pki {
    /// Generate everything under `dir` (created if missing).
    pub fn generate(dir: &Path) -> Result<Pki, BoxError> {
        fs::create_dir_all(dir)?;
        let trust_bundle_dir = dir.join("bundles");
        fs::create_dir_all(&trust_bundle_dir)?;
        let mut cas = BTreeMap::new();
        let mut bundle = String::new();
        for domain in TRUSTED_DOMAINS {
            let ca = Ca::new(domain)?;
            fs::write(dir.join(format!("ca-{domain}.pem")), &ca.cert_pem)?;
            fs::write(trust_bundle_dir.join(format!("{domain}.pem")), &ca.cert_pem)?;
            bundle.push_str(&ca.cert_pem);
            cas.insert(domain.to_owned(), ca);
        }
        let rogue = Ca::new("hospital.example")?;
        fs::write(dir.join("ca-rogue.pem"), &rogue.cert_pem)?;
        cas.insert("rogue".to_owned(), rogue);
        let trust_bundle_path = dir.join("trust-bundle.pem");
        fs::write(&trust_bundle_path, bundle)?;

        let mut pki = Pki {
            dir: dir.to_owned(),
            trust_bundle_path,
            trust_bundle_dir,
            cas,
            svids: BTreeMap::new(),
        };
        for (name, id) in WORKLOADS {
            let domain = trust_domain_of(id);
            let lifetime = if SHORT_LIVED_DOMAINS.contains(&domain) {
                Lifetime::SHORT
            } else {
                Lifetime::DAY
            };
            pki.issue(domain, name, id, lifetime)?;
        }
        pki.issue(
            "rogue",
            "rogue-ehr",
            "spiffe://hospital.example/ns/clinical/sa/ehr",
            Lifetime::DAY,
        )?;
        pki.issue(
            "partner-lab.example",
            "reflab-long-lived",
            "spiffe://partner-lab.example/ns/vendor/sa/reflab",
            Lifetime::DAY,
        )?;
        Ok(pki)
    }

    /// Issue (or re-issue) an SVID from the CA `ca` and store it under `name`.
    pub fn issue(
        &mut self,
        ca: &str,
        name: &str,
        spiffe_id: &str,
        lifetime: Lifetime,
    ) -> Result<&Svid, BoxError> {
        let authority = self
            .cas
            .get(ca)
            .ok_or_else(|| format!("no CA named {ca}"))?;
        let svid = authority.issue(spiffe_id, lifetime, &self.dir, name)?;
        self.svids.insert(name.to_owned(), svid);
        self.svid(name)
    }

    /// The SVID stored under `name`.
    pub fn svid(&self, name: &str) -> Result<&Svid, BoxError> {
        self.svids
            .get(name)
            .ok_or_else(|| format!("no SVID named {name}").into())
    }

    /// DER certificates of every trusted CA (what a client trusts for Envoy's server SVID).
    pub fn trusted_roots(&self) -> Vec<CertificateDer<'static>> {
        TRUSTED_DOMAINS
            .iter()
            .filter_map(|d| self.cas.get(*d))
            .map(|ca| ca.cert_der.clone())
            .collect()
    }
}

fn trust_domain_of(spiffe_id: &str) -> &str {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
}
