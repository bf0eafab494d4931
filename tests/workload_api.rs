//! wardgate's own identity, end to end: the SPIFFE Workload API test double
//! (tests/support/workload_api.rs) against the `spiffe` crate, and `wardgate serve --tls`
//! against callers holding SVIDs from the test PKI.
//!
//! * the double is a faithful peer: the `spiffe` crate's `X509Source` and
//!   `WorkloadApiClient` accept it, it requires the `workload.spiffe.io` header, and its
//!   hand-written messages match `proto/workload.proto`;
//! * the mTLS listener refuses a caller that is not allow-listed, one whose certificate comes
//!   from another CA (a rogue one, or a trusted partner CA minting a hospital ID), and one with
//!   no certificate, with a TLS error and a log line, never a decision;
//! * rotation: the double rotates wardgate's SVID twice while callers make continuous Checks,
//!   one over a connection that lives through both rotations and one opening a new connection
//!   (a full handshake) for every few Checks and recording which certificate serial each
//!   handshake saw; new handshakes present the new certificate and no call fails;
//! * wardgate keeps serving through an agent restart and reconnects with backoff;
//! * the file backend picks up a certificate renewed the way spiffe-helper writes it (in place,
//!   certificate first, key second) without ever presenting a half-written or mismatched pair.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::mtls::{
    check_request, is_allow, issue_wardgate_svid, metric, serial_of, Caller, TlsWardgate,
    WARDGATE_ID,
};
use support::pki::{Lifetime, Pki};
use support::workload_api::{
    fetch_x509_svid_raw, pb, WorkloadApiDouble, WorkloadState, SECURITY_HEADER,
};
use support::BoxError;

const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

/// A PKI, a double serving wardgate's first SVID (hospital CA) with partner-lab's and
/// medtech's CAs as federated bundles, all in one temporary directory.
struct Agent {
    dir: tempfile::TempDir,
    pki: Pki,
    state: WorkloadState,
    double: WorkloadApiDouble,
}

async fn agent() -> Result<Agent, BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("wardgate-identity-")
        .tempdir()?;
    let mut pki = Pki::generate(&dir.path().join("pki"))?;
    let first = issue_wardgate_svid(&mut pki, "wardgate-1")?;
    let state = WorkloadState::new(
        &first,
        &pki.cas["hospital.example"],
        &[
            ("partner-lab.example", &pki.cas["partner-lab.example"]),
            ("medtech.example", &pki.cas["medtech.example"]),
        ],
    );
    let double = WorkloadApiDouble::start(&dir.path().join("agent.sock"), state.clone()).await?;
    Ok(Agent {
        dir,
        pki,
        state,
        double,
    })
}

/// `wardgate serve --tls --svid-source workload-api` on the double, admitting lab only.
async fn wardgate_on(agent: &Agent) -> Result<TlsWardgate, BoxError> {
    let args: Vec<String> = [
        "--svid-source",
        "workload-api",
        "--spiffe-endpoint-socket",
        &agent.double.endpoint(),
        "--allow-caller",
        LAB,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    TlsWardgate::start(&support::shipped_bundle(), agent.dir.path(), &args).await
}

fn lab_caller(wardgate: &TlsWardgate, pki: &Pki) -> Result<Caller, BoxError> {
    Caller::new(
        wardgate.listen,
        &[pki.cas["hospital.example"].cert_der.clone()],
        Some(pki.svid("lab")?),
    )
}

// --- the double ------------------------------------------------------------------------------

/// Every field number in `proto/workload.proto` is one the hand-written message puts on the
/// wire, and the other way round (all fields of these messages are length-delimited).
#[test]
fn proto_file_matches_the_double() {
    use prost::Message as _;
    let proto =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/workload.proto"))
            .expect("proto/workload.proto");
    let mut declared: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in proto
        .lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
    {
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            declared.entry(name.clone()).or_default();
            current = (!line.ends_with('}')).then_some(name);
        } else if line == "}" {
            current = None;
        } else if let (Some(message), Some((_, number))) = (&current, line.split_once('=')) {
            let number: u32 = number.trim_end_matches(';').trim().parse().expect(line);
            declared.entry(message.clone()).or_default().push(number);
        }
    }
    assert!(proto.contains("service SpiffeWorkloadAPI {"));
    assert!(proto.contains("rpc FetchX509SVID(X509SVIDRequest) returns (stream X509SVIDResponse);"));
    assert!(proto.contains(
        "rpc FetchX509Bundles(X509BundlesRequest) returns (stream X509BundlesResponse);"
    ));
    assert!(
        !proto.contains("\npackage "),
        "the Workload API service has no package"
    );

    /// Top-level field numbers present in an encoded message.
    fn tags(bytes: &[u8]) -> Vec<u32> {
        let mut buf = bytes;
        let mut tags = Vec::new();
        while !buf.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf).expect("key");
            assert_eq!(wire_type, prost::encoding::WireType::LengthDelimited);
            let len = prost::encoding::decode_varint(&mut buf).expect("length") as usize;
            buf = &buf[len..];
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        tags
    }
    let svid = pb::X509svid {
        spiffe_id: "spiffe://a/b".into(),
        x509_svid: vec![1],
        x509_svid_key: vec![2],
        bundle: vec![3],
        hint: "h".into(),
    };
    let encoded: BTreeMap<&str, Vec<u32>> = BTreeMap::from([
        (
            "X509SVIDRequest",
            tags(&pb::X509svidRequest {}.encode_to_vec()),
        ),
        (
            "X509SVIDResponse",
            tags(
                &pb::X509svidResponse {
                    svids: vec![svid.clone()],
                    crl: vec![vec![4]],
                    federated_bundles: [("spiffe://c".to_owned(), vec![5])].into(),
                }
                .encode_to_vec(),
            ),
        ),
        ("X509SVID", tags(&svid.encode_to_vec())),
        (
            "X509BundlesRequest",
            tags(&pb::X509BundlesRequest {}.encode_to_vec()),
        ),
        (
            "X509BundlesResponse",
            tags(
                &pb::X509BundlesResponse {
                    crl: vec![vec![4]],
                    bundles: [("spiffe://c".to_owned(), vec![5])].into(),
                }
                .encode_to_vec(),
            ),
        ),
    ]);
    let declared: BTreeMap<&str, Vec<u32>> = declared
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(declared, encoded);
}

/// The `spiffe` crate takes the double for an agent: `X509Source` syncs, sees the SVID and
/// every bundle (own and federated), and follows a rotation; `FetchX509Bundles` works; the
/// security header is required; a workload without SVIDs is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_accepts_the_double() {
    let mut agent = agent().await.expect("agent");
    let source = tokio::time::timeout(
        Duration::from_secs(20),
        spiffe::X509Source::builder()
            .endpoint(agent.double.endpoint())
            .build(),
    )
    .await
    .expect("initial sync in time")
    .expect("X509Source accepts the double");
    let svid = source.svid().expect("svid");
    assert_eq!(svid.spiffe_id().to_string(), WARDGATE_ID);
    let first_serial = serial_of(svid.leaf().as_bytes());
    let bundles = source.bundle_set().expect("bundles");
    let mut domains: Vec<String> = bundles.iter().map(|(td, _)| td.to_string()).collect();
    domains.sort();
    assert_eq!(
        domains,
        ["hospital.example", "medtech.example", "partner-lab.example"]
    );

    // Rotation: a new response on the open stream.
    let mut updates = source.updated();
    let second = issue_wardgate_svid(&mut agent.pki, "wardgate-2").expect("issue");
    agent.double.set(
        agent
            .state
            .with_svid(&second, &agent.pki.cas["hospital.example"]),
    );
    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .expect("update in time")
        .expect("update");
    let rotated = serial_of(source.svid().expect("svid").leaf().as_bytes());
    assert_ne!(rotated, first_serial);
    assert_eq!(rotated, serial_of(&second.cert_der));
    source.shutdown().await;

    let client = spiffe::WorkloadApiClient::connect_to(agent.double.endpoint())
        .await
        .expect("client");
    let set = client.fetch_x509_bundles().await.expect("FetchX509Bundles");
    assert_eq!(set.len(), 3);

    let calls = agent.double.calls();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.security_header),
        "{calls:?}"
    );
    let refused = fetch_x509_svid_raw(&agent.double.socket, false)
        .await
        .expect_err("a call without the security header is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let raw = fetch_x509_svid_raw(&agent.double.socket, true)
        .await
        .expect("with the header");
    assert_eq!(raw.svids.len(), 1);
    assert_eq!(raw.federated_bundles.len(), 2);
    assert!(raw
        .federated_bundles
        .contains_key("spiffe://partner-lab.example"));

    agent.double.set(WorkloadState::default());
    let denied = fetch_x509_svid_raw(&agent.double.socket, true)
        .await
        .expect_err("no identity");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(!SECURITY_HEADER.is_empty());
}

// --- the mTLS listener -------------------------------------------------------------------------

/// Wait until `wardgate`'s log contains every one of `needles` (each refusal is logged from a
/// task, so it can trail the client's error by a moment).
async fn log_contains(wardgate: &TlsWardgate, needles: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = wardgate.log();
        let missing: Vec<&&str> = needles.iter().filter(|n| !log.contains(**n)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("log lacks {missing:?}:\n{log}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of every series of `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_refuses_unlisted_foreign_and_anonymous_callers() {
    let mut agent = agent().await.expect("agent");
    // lab's SPIFFE ID from a CA nobody trusts, and from partner-lab's CA (trusted, but not for
    // hospital.example IDs).
    agent
        .pki
        .issue("rogue", "rogue-lab", LAB, Lifetime::DAY)
        .expect("rogue");
    agent
        .pki
        .issue(
            "partner-lab.example",
            "partner-minted-lab",
            LAB,
            Lifetime::DAY,
        )
        .expect("forged");
    let mut wardgate = wardgate_on(&agent).await.expect("wardgate");
    let lab = lab_caller(&wardgate, &agent.pki).expect("caller");
    wardgate.wait_until_serving(&lab).await.expect("serving");
    let before = wardgate.metrics().await.expect("metrics");

    let roots = [agent.pki.cas["hospital.example"].cert_der.clone()];
    let cases = [
        (
            "not allow-listed (ehr)",
            Some("ehr"),
            "is not on the allow-list",
        ),
        (
            "rogue CA",
            Some("rogue-lab"),
            "does not verify against the trust bundle of `hospital.example`",
        ),
        (
            "partner CA minting a hospital ID",
            Some("partner-minted-lab"),
            "does not verify against the trust bundle of `hospital.example`",
        ),
        ("no certificate", None, "peer sent no certificates"),
    ];
    let mut failures = Vec::new();
    for (name, svid, reason) in cases {
        let svid = svid.map(|s| agent.pki.svid(s).expect("svid"));
        let caller = Caller::new(wardgate.listen, &roots, svid).expect("caller");
        match caller.check_once().await {
            Ok(response) => failures.push(format!("{name}: got a decision: {response:?}")),
            Err(error) => eprintln!("{name}: refused: {error}"),
        }
        if let Err(e) = log_contains(&wardgate, &["mTLS caller refused", reason]).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    // The allow-listed caller still gets decisions.
    let response = lab.check_once().await.expect("lab gets a decision");
    assert!(is_allow(&response));
    let after = wardgate.metrics().await.expect("metrics");
    // Only the two checks lab made were decided (the readiness probe and the one above).
    let decided =
        metric_sum(&after, "wardgate_checks_total") - metric_sum(&before, "wardgate_checks_total");
    if decided != 1.0 {
        failures.push(format!("{decided} checks decided, expected only lab's one"));
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", wardgate.log());
}

/// What the callers of the rotation test saw.
#[derive(Default)]
struct Traffic {
    /// Server serial of every handshake, in order, per handshaking caller.
    handshakes: Mutex<Vec<Vec<String>>>,
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
    /// Checks answered on the connection opened before the first rotation.
    long_lived_ok: AtomicU64,
    stop: AtomicBool,
}

impl Traffic {
    fn fail(&self, what: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.push(what);
        }
    }

    fn seen(&self, serial: &str) -> bool {
        self.handshakes
            .lock()
            .map(|h| h.iter().any(|one| one.iter().any(|s| s == serial)))
            .unwrap_or(false)
    }
}

/// A caller that opens a new connection (full handshake), makes three Checks on it, and
/// repeats until told to stop.
async fn handshaking_caller(caller: Caller, traffic: Arc<Traffic>, index: usize) {
    while !traffic.stop.load(Ordering::Relaxed) {
        match caller.connect().await {
            Ok(mut connection) => {
                if let Ok(mut h) = traffic.handshakes.lock() {
                    h[index].push(connection.server_serial.clone());
                }
                for _ in 0..3 {
                    match connection.client.check(check_request()).await {
                        Ok(r) if is_allow(r.get_ref()) => {
                            traffic.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => traffic.fail(format!("not an allow: {:?}", r.get_ref())),
                        Err(e) => traffic.fail(format!("check failed: {e}")),
                    }
                }
            }
            Err(e) => traffic.fail(format!("connect failed: {e}")),
        }
    }
}

/// A caller that keeps one connection for the whole test and makes Checks back to back.
async fn long_lived_caller(caller: Caller, traffic: Arc<Traffic>) {
    let mut connection = match caller.connect().await {
        Ok(c) => c,
        Err(e) => return traffic.fail(format!("long-lived connect failed: {e}")),
    };
    while !traffic.stop.load(Ordering::Relaxed) {
        match connection.client.check(check_request()).await {
            Ok(r) if is_allow(r.get_ref()) => {
                traffic.long_lived_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => traffic.fail(format!("long-lived: not an allow: {:?}", r.get_ref())),
            Err(e) => traffic.fail(format!("long-lived: check failed: {e}")),
        }
    }
}

/// Serials of one caller's handshakes in order must step through `order` without going back.
fn monotonic(sequence: &[String], order: &[String]) -> bool {
    let mut at = 0;
    for serial in sequence {
        match order.iter().position(|s| s == serial) {
            Some(i) if i >= at => at = i,
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_during_continuous_checks_fails_no_call() {
    let mut agent = agent().await.expect("agent");
    let mut wardgate = wardgate_on(&agent).await.expect("wardgate");
    let caller = lab_caller(&wardgate, &agent.pki).expect("caller");
    let first = serial_of(&agent.pki.svid("wardgate-1").expect("svid").cert_der);
    assert_eq!(
        wardgate.wait_until_serving(&caller).await.expect("serving"),
        first
    );

    let handshakers = 2;
    let traffic = Arc::new(Traffic {
        handshakes: Mutex::new(vec![Vec::new(); handshakers]),
        ..Traffic::default()
    });
    let mut tasks = vec![tokio::spawn(long_lived_caller(
        caller.clone(),
        Arc::clone(&traffic),
    ))];
    for i in 0..handshakers {
        tasks.push(tokio::spawn(handshaking_caller(
            caller.clone(),
            Arc::clone(&traffic),
            i,
        )));
    }

    let mut order = vec![first.clone()];
    let mut rotated_at = Vec::new();
    for round in 2..=3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next =
            issue_wardgate_svid(&mut agent.pki, &format!("wardgate-{round}")).expect("issue");
        let serial = serial_of(&next.cert_der);
        let started = Instant::now();
        agent.double.set(
            agent
                .state
                .with_svid(&next, &agent.pki.cas["hospital.example"]),
        );
        let deadline = started + Duration::from_secs(10);
        while !traffic.seen(&serial) {
            assert!(
                Instant::now() < deadline,
                "rotation {round} not seen by a new handshake\n{}",
                wardgate.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rotated_at.push(started.elapsed());
        order.push(serial);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    traffic.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("caller task");
    }

    let handshakes = traffic.handshakes.lock().expect("lock").clone();
    let failed = traffic.failed.lock().expect("lock").clone();
    let mut per_serial: BTreeMap<&str, usize> = BTreeMap::new();
    for serial in handshakes.iter().flatten() {
        *per_serial.entry(serial.as_str()).or_default() += 1;
    }
    eprintln!(
        "rotation: serials in order {order:?}; handshakes per serial {per_serial:?}; \
         new SVID first presented {rotated_at:?} after the agent sent it; \
         {} checks on fresh connections, {} on the long-lived connection, {} failed",
        traffic.ok.load(Ordering::Relaxed),
        traffic.long_lived_ok.load(Ordering::Relaxed),
        failed.len()
    );
    for (i, sequence) in handshakes.iter().enumerate() {
        eprintln!("handshaker {i}: {}", compress(sequence, &order));
    }
    assert!(
        failed.is_empty(),
        "calls failed during rotation: {failed:#?}"
    );
    for sequence in &handshakes {
        assert!(
            monotonic(sequence, &order),
            "a handshake went back to an older SVID: {sequence:?} (order {order:?})"
        );
    }
    for serial in &order {
        assert!(
            per_serial.contains_key(serial.as_str()),
            "no handshake saw {serial}"
        );
    }
    assert!(traffic.long_lived_ok.load(Ordering::Relaxed) > 0);

    let metrics = wardgate.metrics().await.expect("metrics");
    assert_eq!(
        metric(&metrics, "wardgate_svid_rotations_total"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "wardgate_workload_api_connected"),
        Some(1.0)
    );
    let expiry = metric(&metrics, "wardgate_svid_expiry_seconds").expect("expiry");
    assert!(
        (22.0 * 3600.0..=23.0 * 3600.0).contains(&expiry),
        "{expiry}"
    );
    assert!(wardgate.log().contains("own SVID rotated"));
}

/// `a×12 b×30 c×9`: runs of serials, named by their rotation index.
fn compress(sequence: &[String], order: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    for serial in sequence {
        let i = order.iter().position(|s| s == serial).unwrap_or(usize::MAX);
        match &mut last {
            Some((j, n)) if *j == i => *n += 1,
            _ => {
                if let Some((j, n)) = last {
                    out.push(format!("svid{}×{n}", j + 1));
                }
                last = Some((i, 1));
            }
        }
    }
    if let Some((j, n)) = last {
        out.push(format!("svid{}×{n}", j + 1));
    }
    out.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_through_an_agent_restart_and_reconnects() {
    let agent = agent().await.expect("agent");
    let mut wardgate = wardgate_on(&agent).await.expect("wardgate");
    let caller = lab_caller(&wardgate, &agent.pki).expect("caller");
    let first = serial_of(&agent.pki.svid("wardgate-1").expect("svid").cert_der);
    wardgate.wait_until_serving(&caller).await.expect("serving");
    let metrics = wardgate.metrics().await.expect("metrics");
    assert_eq!(
        metric(&metrics, "wardgate_workload_api_connected"),
        Some(1.0)
    );

    // The agent goes away.
    let socket = agent.double.socket.clone();
    let Agent {
        dir,
        mut pki,
        state,
        double,
    } = agent;
    double.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = wardgate.metrics().await.expect("metrics");
        if metric(&metrics, "wardgate_workload_api_connected") == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "disconnection not noticed\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The SVID in force keeps serving while the agent is down.
    for _ in 0..3 {
        let mut connection = caller
            .connect()
            .await
            .expect("connect while the agent is down");
        assert_eq!(connection.server_serial, first);
        let response = connection
            .client
            .check(check_request())
            .await
            .expect("check");
        assert!(is_allow(response.get_ref()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The agent comes back (same socket) with a new SVID.
    let second = issue_wardgate_svid(&mut pki, "wardgate-2").expect("issue");
    let restarted = Instant::now();
    let double = WorkloadApiDouble::start(
        &socket,
        state.with_svid(&second, &pki.cas["hospital.example"]),
    )
    .await
    .expect("restart");
    let serial = serial_of(&second.cert_der);
    let deadline = restarted + Duration::from_secs(20);
    loop {
        if let Ok(connection) = caller.connect().await {
            if connection.server_serial == serial {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not reconnected within 20 s\n{}",
            wardgate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "reconnected and took the new SVID {:?} after the agent came back",
        restarted.elapsed()
    );
    let metrics = wardgate.metrics().await.expect("metrics");
    assert_eq!(
        metric(&metrics, "wardgate_workload_api_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert!(double.calls().iter().any(|c| c.method == "FetchX509SVID"));
    drop(dir);
}

// --- the file backend ---------------------------------------------------------------------------

/// Rewrite `path` in place (truncate, then write), the way spiffe-helper writes its files, in
/// two halves with a pause between, so a reader can see the half-written file.
fn write_in_place_slowly(path: &Path, content: &[u8], pause: Duration) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open");
    let half = content.len() / 2;
    file.write_all(&content[..half]).expect("write");
    file.flush().expect("flush");
    std::thread::sleep(pause);
    file.write_all(&content[half..]).expect("write");
    file.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_follows_a_spiffe_helper_renewal() {
    let dir = tempfile::Builder::new()
        .prefix("wardgate-files-")
        .tempdir()
        .expect("dir");
    let mut pki = Pki::generate(&dir.path().join("pki")).expect("pki");
    let first = issue_wardgate_svid(&mut pki, "wardgate-1").expect("issue");
    // spiffe-helper's layout: svid.pem (chain), svid_key.pem (PKCS#8), svid_bundle.pem.
    let helper = dir.path().join("spiffe");
    std::fs::create_dir_all(&helper).expect("mkdir");
    let (cert, key, bundle) = (
        helper.join("svid.pem"),
        helper.join("svid_key.pem"),
        helper.join("svid_bundle.pem"),
    );
    std::fs::copy(&first.cert_path, &cert).expect("cert");
    std::fs::copy(&first.key_path, &key).expect("key");
    std::fs::write(&bundle, &pki.cas["hospital.example"].cert_pem).expect("bundle");
    let args: Vec<String> = vec![
        "--svid-source".into(),
        "files".into(),
        "--svid-cert".into(),
        cert.display().to_string(),
        "--svid-key".into(),
        key.display().to_string(),
        "--trust-bundle".into(),
        format!("hospital.example={}", bundle.display()),
        "--allow-caller".into(),
        LAB.into(),
    ];
    let mut wardgate = TlsWardgate::start(&support::shipped_bundle(), dir.path(), &args)
        .await
        .expect("wardgate");
    let caller = Caller::new(
        wardgate.listen,
        &[pki.cas["hospital.example"].cert_der.clone()],
        Some(pki.svid("lab").expect("lab")),
    )
    .expect("caller");
    let first_serial = serial_of(&first.cert_der);
    assert_eq!(
        wardgate.wait_until_serving(&caller).await.expect("serving"),
        first_serial
    );

    let traffic = Arc::new(Traffic {
        handshakes: Mutex::new(vec![Vec::new()]),
        ..Traffic::default()
    });
    let task = tokio::spawn(handshaking_caller(caller.clone(), Arc::clone(&traffic), 0));

    // The renewal, as spiffe-helper performs it: certificate (slowly, in place), then key,
    // then bundle. Between the certificate and the key the files hold a mismatched pair.
    let second = issue_wardgate_svid(&mut pki, "wardgate-2").expect("issue");
    let second_serial = serial_of(&second.cert_der);
    let new_cert = std::fs::read(&second.cert_path).expect("read");
    let new_key = std::fs::read(&second.key_path).expect("read");
    let (cert_w, key_w, bundle_w) = (cert.clone(), key.clone(), bundle.clone());
    let bundle_pem = pki.cas["hospital.example"].cert_pem.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mismatch_from = Instant::now();
    tokio::task::spawn_blocking(move || {
        write_in_place_slowly(&cert_w, &new_cert, Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(700));
        write_in_place_slowly(&key_w, &new_key, Duration::from_millis(100));
        write_in_place_slowly(&bundle_w, bundle_pem.as_bytes(), Duration::from_millis(50));
    })
    .await
    .expect("writer");
    let mismatch_lasted = mismatch_from.elapsed();
    let handshakes_during_mismatch = traffic.handshakes.lock().expect("lock")[0].len();

    let deadline = Instant::now() + Duration::from_secs(10);
    while !traffic.seen(&second_serial) {
        assert!(
            Instant::now() < deadline,
            "renewal not picked up\n{}",
            wardgate.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    traffic.stop.store(true, Ordering::Relaxed);
    task.await.expect("caller");

    let sequence = traffic.handshakes.lock().expect("lock")[0].clone();
    let failed = traffic.failed.lock().expect("lock").clone();
    let order = [first_serial.clone(), second_serial.clone()];
    eprintln!(
        "file renewal: {} ({} handshakes while the files were being rewritten over {mismatch_lasted:?})",
        compress(&sequence, &order),
        handshakes_during_mismatch
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(monotonic(&sequence, &order), "{sequence:?}");
    assert!(sequence.contains(&first_serial));
    let metrics = wardgate.metrics().await.expect("metrics");
    assert_eq!(
        metric(&metrics, "wardgate_svid_rotations_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "wardgate_workload_api_connected"), None);
    let _ = WARDGATE_ID;
}
