//! The PEM-file backend: wardgate's SVID and trust bundles from files on disk, written by
//! spiffe-helper, cert-manager's csi-driver-spiffe, a Kubernetes Secret or an operator.
//!
//! This module owns reading the certificate chain (PEM, leaf first), the private key (PEM,
//! PKCS#8 as spiffe-helper writes it; SEC1 and PKCS#1 are accepted too) and one CA bundle file
//! per trust domain; noticing changes (file-system events on the files' directories, plus a
//! poll, since an atomic symlink swap can slip past a watcher); and swapping in a new SVID only
//! when it is complete. spiffe-helper rewrites its files *in place*, one after the other
//! (certificate, then key, then bundle), so a reader can see a half-written file, or a new
//! certificate beside the old key. Such states are never taken: the pair is swapped in only
//! when both files parse and the key is the certificate's ([`Svid::new`]); until then the SVID
//! in force stays, and the next event or poll tries again. A pair that stays inconsistent
//! longer than a grace period is logged as a warning. A bundle file that does not parse keeps
//! that trust domain's previous CAs.
//!
//! It must never write to these files, never log key material, and never put an SVID in force
//! that fails [`Svid::new`]'s checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{BoxFuture, Identity, IdentitySource, Svid, SvidError};
use crate::trust::TrustBundles;

/// Where wardgate's SVID is.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    /// Certificate chain, PEM, leaf first (spiffe-helper: `svid.pem`).
    pub cert: PathBuf,
    /// Private key, PEM (spiffe-helper: `svid_key.pem`, PKCS#8).
    pub key: PathBuf,
}

/// What to read and how often.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SVID; `None` for bundles only (forwarded-chain verification without an mTLS
    /// listener).
    pub svid: Option<SvidFiles>,
    /// One CA bundle file (PEM) per trust domain (spiffe-helper: `svid_bundle.pem` for its
    /// own trust domain).
    pub bundles: Vec<(String, PathBuf)>,
    /// Re-read this often even without file-system events.
    pub poll_interval: Duration,
    /// After an event, wait this long for a burst of writes to finish.
    pub settle: Duration,
    /// Warn when the certificate and key stay inconsistent for longer than this.
    pub grace: Duration,
}

impl Config {
    /// Defaults: poll every 2 s, settle 100 ms, warn after 10 s of inconsistency.
    pub fn new(svid: Option<SvidFiles>, bundles: Vec<(String, PathBuf)>) -> Config {
        Config {
            svid,
            bundles,
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(100),
            grace: Duration::from_secs(10),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        self.svid
            .iter()
            .flat_map(|s| [s.cert.as_path(), s.key.as_path()])
            .chain(self.bundles.iter().map(|(_, p)| p.as_path()))
    }
}

/// Follows the files; see the module documentation.
pub struct FileSource {
    config: Config,
    identity: Arc<Identity>,
    /// The certificate and key bytes of the SVID in force, to skip re-parsing unchanged files.
    in_force: Option<(Vec<u8>, Vec<u8>)>,
    /// Since when the files have held a pair that is not usable, and whether that was logged.
    unusable_since: Option<(Instant, bool)>,
    /// Bundle files that did not parse, and whether that was logged.
    bad_bundles: Vec<(String, Instant, bool)>,
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FileSource {
    /// Check that every file exists, and load them once. Content that is not usable yet (a
    /// write in progress) is not an error here: [`FileSource::follow`] keeps trying.
    pub fn start(config: Config, identity: Arc<Identity>) -> Result<FileSource, SvidError> {
        for path in config.paths() {
            if !path.is_file() {
                return Err(SvidError::Config(format!(
                    "{}: not a readable file",
                    path.display()
                )));
            }
        }
        let mut source = FileSource {
            config,
            identity,
            in_force: None,
            unusable_since: None,
            bad_bundles: Vec::new(),
        };
        source.reload();
        Ok(source)
    }

    /// Re-read the files when they change (or every poll interval) until `shutdown`.
    pub async fn follow(mut self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = watch(&self.config, tx);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.config.poll_interval) => {}
                Some(()) = events.recv() => {
                    tokio::time::sleep(self.config.settle).await;
                    while events.try_recv().is_ok() {}
                }
            }
            self.reload();
        }
    }

    /// One pass over every file. Returns whether the SVID in force changed.
    pub fn reload(&mut self) -> bool {
        self.reload_bundles();
        self.reload_svid()
    }

    fn reload_svid(&mut self) -> bool {
        let Some(files) = &self.config.svid else {
            return false;
        };
        let read = std::fs::read(&files.cert).and_then(|c| Ok((c, std::fs::read(&files.key)?)));
        let (cert, key) = match read {
            Ok(pair) => pair,
            Err(error) => {
                self.unusable(&SvidError::Config(format!("cannot read: {error}")));
                return false;
            }
        };
        if self
            .in_force
            .as_ref()
            .is_some_and(|(c, k)| *c == cert && *k == key)
        {
            self.unusable_since = None;
            return false;
        }
        match parse_svid(&cert, &key) {
            Ok(svid) => {
                if let Some((since, _)) = self.unusable_since.take() {
                    tracing::debug!(waited = ?since.elapsed(), "SVID files consistent again");
                }
                self.in_force = Some((cert, key));
                self.identity.publish_svid(svid)
            }
            Err(error) => {
                self.unusable(&error);
                false
            }
        }
    }

    /// The files hold something unusable: normal for a moment during an in-place rewrite,
    /// worth a warning when it lasts.
    fn unusable(&mut self, error: &SvidError) {
        let Some(files) = &self.config.svid else {
            return;
        };
        let now = Instant::now();
        let (since, warned) = self.unusable_since.get_or_insert((now, false));
        if !*warned && now.duration_since(*since) >= self.config.grace {
            *warned = true;
            tracing::warn!(cert = %files.cert.display(), key = %files.key.display(), %error,
                "SVID files unusable for {:?}; keeping the SVID in force", self.config.grace);
        } else {
            tracing::debug!(cert = %files.cert.display(), %error,
                "SVID files not usable (yet); keeping the SVID in force");
        }
    }

    fn reload_bundles(&mut self) {
        if self.config.bundles.is_empty() {
            return;
        }
        let current = self.identity.trust().load_full();
        let mut next = TrustBundles::new();
        let now = Instant::now();
        let mut still_bad = Vec::new();
        for (domain, path) in &self.config.bundles {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string());
            let loaded = text.and_then(|t| {
                let mut one = TrustBundles::new();
                one.set_pem(domain, &t)
                    .map(|_| one)
                    .map_err(|e| e.to_string())
            });
            match loaded {
                Ok(one) => next.set(domain, one.cas(domain).to_vec()),
                Err(error) => {
                    let (since, mut warned) = self
                        .bad_bundles
                        .iter()
                        .find(|(d, _, _)| d == domain)
                        .map_or((now, false), |(_, s, w)| (*s, *w));
                    if !warned && now.duration_since(since) >= self.config.grace {
                        warned = true;
                        tracing::warn!(trust_domain = %domain, file = %path.display(), %error,
                            "trust bundle unusable; keeping the CAs in force for this trust domain");
                    }
                    still_bad.push((domain.clone(), since, warned));
                    let previous = current.cas(domain);
                    if !previous.is_empty() {
                        next.set(domain, previous.to_vec());
                    }
                }
            }
        }
        self.bad_bundles = still_bad;
        self.identity.publish_bundles(next);
    }
}

/// Parse a certificate chain and key from PEM and check them as a pair.
pub fn parse_svid(cert_pem: &[u8], key_pem: &[u8]) -> Result<Svid, SvidError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Chain(format!("PEM: {e}")))?;
    if chain.is_empty() {
        return Err(SvidError::Chain("no CERTIFICATE in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| SvidError::Key(e.to_string()))?;
    Svid::new(chain, key)
}

impl IdentitySource for FileSource {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn run(self: Box<Self>, shutdown: BoxFuture) -> BoxFuture {
        Box::pin(self.follow(shutdown))
    }
}

/// Watch the directories of every file (non-recursively): in-place writes, renames and
/// symlink swaps all show up there.
fn watch(config: &Config, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut dirs: Vec<PathBuf> = config
        .paths()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    if dirs.is_empty() {
        return None;
    }
    crate::watch::watch_dirs(&dirs, tx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::svid::test_pki::TestCa;
    use crate::svid::NoSvidObserver;

    const ID: &str = "spiffe://hospital.example/ns/wardgate/sa/wardgate";

    struct Dir {
        _tmp: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    }

    fn dir() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        Dir {
            cert: tmp.path().join("svid.pem"),
            key: tmp.path().join("svid_key.pem"),
            bundle: tmp.path().join("svid_bundle.pem"),
            _tmp: tmp,
        }
    }

    fn source(d: &Dir) -> (FileSource, Arc<Identity>) {
        let identity = Identity::new(Arc::default(), Arc::new(NoSvidObserver));
        let config = Config::new(
            Some(SvidFiles {
                cert: d.cert.clone(),
                key: d.key.clone(),
            }),
            vec![("hospital.example".into(), d.bundle.clone())],
        );
        (
            FileSource::start(config, Arc::clone(&identity)).unwrap(),
            identity,
        )
    }

    fn serial(identity: &Identity) -> String {
        identity.svid().unwrap().serial().to_owned()
    }

    #[test]
    fn missing_files_are_a_configuration_error() {
        let d = dir();
        let identity = Identity::new(Arc::default(), Arc::new(NoSvidObserver));
        let config = Config::new(
            Some(SvidFiles {
                cert: d.cert.clone(),
                key: d.key.clone(),
            }),
            Vec::new(),
        );
        assert!(matches!(
            FileSource::start(config, identity),
            Err(SvidError::Config(_))
        ));
    }

    /// The renewal sequence spiffe-helper performs, with a reload between every step:
    /// certificate rewritten in place (first half, then all), key rewritten, bundle rewritten.
    #[test]
    fn spiffe_helper_renewal_swaps_only_a_complete_matching_pair() {
        let d = dir();
        let ca = TestCa::new("hospital CA");
        let first = ca.leaf(&[ID], 3600);
        std::fs::write(&d.cert, &first.cert_pem).unwrap();
        std::fs::write(&d.key, &first.key_pem).unwrap();
        std::fs::write(&d.bundle, &ca.pem).unwrap();
        let (mut source, identity) = source(&d);
        let first_serial = serial(&identity);
        assert_eq!(identity.trust().load().cas("hospital.example").len(), 1);

        let second = ca.leaf(&[ID], 3600);
        // A truncated certificate (the writer is half-way through).
        std::fs::write(&d.cert, &second.cert_pem[..second.cert_pem.len() / 2]).unwrap();
        assert!(!source.reload());
        assert_eq!(serial(&identity), first_serial);
        // The whole certificate, beside the old key.
        std::fs::write(&d.cert, &second.cert_pem).unwrap();
        assert!(!source.reload());
        assert_eq!(serial(&identity), first_serial);
        // An empty key file (truncated before the write).
        std::fs::write(&d.key, "").unwrap();
        assert!(!source.reload());
        assert_eq!(serial(&identity), first_serial);
        // The new key: now the pair is complete and matching.
        std::fs::write(&d.key, &second.key_pem).unwrap();
        assert!(source.reload());
        let second_serial = serial(&identity);
        assert_ne!(second_serial, first_serial);
        // Nothing changed: nothing happens.
        assert!(!source.reload());

        // The bundle: half-written keeps the CAs in force, complete replaces them.
        let next_ca = TestCa::new("hospital CA 2");
        std::fs::write(&d.bundle, &next_ca.pem[..20]).unwrap();
        source.reload();
        assert_eq!(
            identity.trust().load().cas("hospital.example"),
            std::slice::from_ref(&ca.der)
        );
        std::fs::write(&d.bundle, format!("{}{}", ca.pem, next_ca.pem)).unwrap();
        source.reload();
        assert_eq!(identity.trust().load().cas("hospital.example").len(), 2);
        assert_eq!(serial(&identity), second_serial);
    }

    #[tokio::test]
    async fn follows_renewals_through_events_and_polls() {
        let d = dir();
        let ca = TestCa::new("hospital CA");
        let first = ca.leaf(&[ID], 3600);
        std::fs::write(&d.cert, &first.cert_pem).unwrap();
        std::fs::write(&d.key, &first.key_pem).unwrap();
        std::fs::write(&d.bundle, &ca.pem).unwrap();
        let (mut source, identity) = source(&d);
        source.config.poll_interval = Duration::from_millis(200);
        let first_serial = serial(&identity);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(source.follow(async move {
            let _ = stopped.await;
        }));

        let second = ca.leaf(&[ID], 3600);
        std::fs::write(&d.cert, &second.cert_pem).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            serial(&identity),
            first_serial,
            "certificate alone is not taken"
        );
        std::fs::write(&d.key, &second.key_pem).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while serial(&identity) == first_serial {
            assert!(Instant::now() < deadline, "renewal not picked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(());
        task.await.unwrap();
    }
}
