//! HTTP sources: a URL's password and presigned query are used for the request and shown
//! nowhere else (logs, observer, cache file names); a body that never ends is cut off at the
//! size limit while it streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame};

use super::*;

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// Every file name under `dir`, recursively.
fn names_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.path().is_dir() {
                out.extend(names_under(&e.path()));
            }
        }
    }
    out
}

#[tokio::test]
async fn credentials_and_presigned_queries_stay_out_of_logs_and_file_names() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secrets = ["hunter2", "deploy-bot", "Zm9vYmFy", "AKIAEXAMPLE", "t0ken"];
    let server = BundleServer::default();
    server.set(&bundle(1, false));
    let (addr, _task) = start_server(&server, None).await;
    let url = format!(
        "http://deploy-bot:hunter2@{addr}/bundles/hospital.yaml?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=Zm9vYmFy&token=t0ken"
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let recorder = Arc::new(Recorder::default());
    let h = handle();
    let source: BundleSource = url.parse().expect("URL");
    let mut cfg = ReloadConfig::new(source);
    cfg.cache_dir = Some(cache.path().to_path_buf());
    cfg.max_bytes = 64 * 1024;
    cfg.http_timeout = Duration::from_millis(500);
    let mut r = Reloader::new(cfg, Arc::clone(&h), recorder.clone(), "bundle");
    let debug = format!("{r:?}");

    // Swapped in, refused as invalid, refused by the server, too large, timed out.
    assert_eq!(r.initial_load().await, Outcome::Swapped);
    server.set("version: 1\nrevision: 2\nrules: [\n");
    assert_eq!(r.reload(false).await, Outcome::Invalid);
    server.mode.store(1, Ordering::SeqCst);
    assert_eq!(r.reload(false).await, Outcome::FetchError);
    server.mode.store(0, Ordering::SeqCst);
    server.set(&format!(
        "{}# {}\n",
        bundle(2, false),
        "x".repeat(100 * 1024)
    ));
    assert_eq!(r.reload(false).await, Outcome::TooLarge);
    server.mode.store(2, Ordering::SeqCst);
    assert_eq!(r.reload(false).await, Outcome::FetchError);
    server.mode.store(0, Ordering::SeqCst);

    // The query went with every request, and the user-info as Basic credentials.
    let uris = server.uris.lock().expect("lock").clone();
    assert!(
        uris.iter().all(|u| u.contains("X-Amz-Signature=Zm9vYmFy")),
        "{uris:?}"
    );
    let authorizations = server.authorizations.lock().expect("lock").clone();
    assert!(
        authorizations
            .iter()
            .all(|a| a.as_deref() == Some("Basic ZGVwbG95LWJvdDpodW50ZXIy")),
        "{authorizations:?}"
    );

    let text = logs.text();
    let shown = format!("http://{addr}/bundles/hospital.yaml");
    assert!(text.contains(&shown), "the logs name the source:\n{text}");
    let sources = recorder.sources.lock().expect("lock").clone();
    assert_eq!(sources, vec![shown.clone()]);
    let files = names_under(cache.path());
    assert!(!files.is_empty());
    for secret in secrets {
        assert!(!text.contains(secret), "`{secret}` in the logs:\n{text}");
        assert!(!debug.contains(secret), "`{secret}` in {debug}");
        assert!(
            files.iter().all(|f| !f.contains(secret)),
            "`{secret}` in a cached file name: {files:?}"
        );
    }
    // And the cached copy starts a sidecar while the server is down.
    server.mode.store(1, Ordering::SeqCst);
    let cold = handle();
    let mut cfg = ReloadConfig::new(url.parse().expect("URL"));
    cfg.cache_dir = Some(cache.path().to_path_buf());
    let mut cold_reloader = Reloader::new(cfg, Arc::clone(&cold), Arc::new(NoObserver), "bundle");
    assert_eq!(cold_reloader.initial_load().await, Outcome::FetchError);
    assert_eq!(revision(&cold), Some(1));
}

#[tokio::test]
async fn a_signed_http_bundle_takes_its_signature_beside_the_path_with_the_same_query() {
    let server = BundleServer::default();
    let (kp, keys) = keypair();
    server.set(&bundle(1, false));
    *server.sig.lock().expect("lock") = Some(sign(&kp, bundle(1, false).as_bytes()));
    let (addr, _task) = start_server(&server, None).await;
    let h = handle();
    let mut cfg = ReloadConfig::new(BundleSource::Http(format!(
        "http://{addr}/bundles/hospital.yaml?token=t0ken"
    )));
    cfg.trusted_keys = keys;
    let mut r = Reloader::new(cfg, Arc::clone(&h), Arc::new(NoObserver), "bundle");
    assert_eq!(r.reload(false).await, Outcome::Swapped);
    let uris = server.uris.lock().expect("lock").clone();
    assert_eq!(
        uris,
        vec![
            "/bundles/hospital.yaml?token=t0ken".to_string(),
            "/bundles/hospital.yaml.minisig?token=t0ken".to_string()
        ]
    );
}

/// A response body that never ends: 64 KiB chunks, counted as they are produced.
struct Endless {
    produced: Arc<AtomicU64>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.produced.fetch_add(64 * 1024, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'#'; 64 * 1024])))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_off_at_the_size_limit() {
    let produced = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counter = Arc::clone(&produced);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let produced = Arc::clone(&counter);
                        async move { Ok::<_, Infallible>(Response::new(Endless { produced })) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let h = handle();
    let mut r = http_reloader(addr, &h, |c| {
        c.max_bytes = 1024 * 1024;
        c.http_timeout = Duration::from_secs(30);
    });
    let started = std::time::Instant::now();
    assert_eq!(r.reload(false).await, Outcome::TooLarge);
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = produced.load(Ordering::SeqCst);
    eprintln!("endless body refused after {took:?}; the server produced {sent} bytes");
    assert!(
        took < Duration::from_secs(5),
        "refused only after {took:?}: the body was not cut off while streaming"
    );
    assert!(
        sent < 32 * 1024 * 1024,
        "{sent} bytes produced before the connection was dropped"
    );
}
