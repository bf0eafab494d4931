//! wardgate as Istio's `envoyExtAuthzGrpc` extension provider, through a real Envoy configured
//! the way istiod configures a sidecar for an AuthorizationPolicy with `action: CUSTOM`
//! (tests/istio/sidecar-inbound.yaml, which cites the Istio source it follows). The provider
//! entry (deploy/istio/istiod-values.yaml) and the policy (deploy/istio/authorizationpolicy.yaml)
//! fill in the config; wardgate runs the shipped Istio bundle (deploy/istio/bundle.yaml) with
//! its signature, and callers present Istio-shaped SVIDs (spiffe://cluster.local/ns/N/sa/S).
//!
//! Checked: decisions, the headers the workload receives, the denial status, header and body
//! the caller receives, that no certificate reaches wardgate (so a lifetime bound denies instead
//! of passing unproven), and that requests fail closed when wardgate is down.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{plain_get, MtlsClient, Protocol, RawRequest};
use support::pki::{Ca, Lifetime, Svid};
use support::process::{free_port, render_template, require_envoy, ChildGuard, Envoy};
use support::upstream::EchoUpstream;
use support::BoxError;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(repo(rel)).unwrap()).unwrap()
}

/// The values istiod derives from the provider entry and the policy.
#[derive(Debug)]
struct IstioShape {
    cluster: String,
    authority: String,
    timeout: String,
    fail_open: bool,
    metadata_prefix: String,
    shadow_policy: String,
}

impl IstioShape {
    fn from_shipped_files() -> IstioShape {
        let values = yaml("deploy/istio/istiod-values.yaml");
        let policy = yaml("deploy/istio/authorizationpolicy.yaml");
        assert_eq!(policy["spec"]["action"], "CUSTOM");
        let provider_name = policy["spec"]["provider"]["name"].as_str().unwrap();
        let provider = values["meshConfig"]["extensionProviders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == provider_name)
            .unwrap_or_else(|| panic!("no extension provider {provider_name}"));
        let grpc = &provider["envoyExtAuthzGrpc"];
        let host = grpc["service"].as_str().unwrap();
        let port = grpc["port"].as_u64().unwrap();
        assert!(
            host.ends_with(".svc.cluster.local"),
            "a fully qualified service host: {host}"
        );
        let rules = policy["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "one rule: one shadow policy");
        IstioShape {
            // model.LookupCluster: BuildSubsetKey(outbound, "", host, port).
            cluster: format!("outbound|{port}||{host}"),
            // generateGRPCConfig: EnvoyGrpc.Authority = the service host name.
            authority: host.to_owned(),
            timeout: grpc["timeout"].as_str().unwrap_or("600s").to_owned(),
            fail_open: grpc["failOpen"].as_bool().unwrap_or(false),
            // generateFilterMatcherForProvider.
            metadata_prefix: format!("istio-ext-authz-{provider_name}"),
            // policyName(namespace, name, rule index, provider).
            shadow_policy: format!(
                "istio-ext-authz-{provider_name}-ns[{}]-policy[{}]-rule[0]",
                policy["metadata"]["namespace"].as_str().unwrap(),
                policy["metadata"]["name"].as_str().unwrap()
            ),
        }
    }
}

/// wardgate on TCP, as deploy/istio/wardgate.yaml runs it behind its own sidecar.
async fn start_wardgate(
    bundle: &Path,
    trusted_key: Option<&Path>,
    port: u16,
    dir: &Path,
    name: &str,
) -> Result<(ChildGuard, SocketAddr), BoxError> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
    command
        .arg("serve")
        .arg(format!("--bundle={}", bundle.display()))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--admin={admin}"))
        .env("WARDGATE_LOG", "info");
    if let Some(key) = trusted_key {
        command.arg(format!("--trusted-key={}", key.display()));
    }
    let mut child = ChildGuard::spawn(name, command, dir)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.exited() {
            return Err(format!("wardgate exited: {status}\n{}", child.log_tail(3000)).into());
        }
        if let Ok((200, _)) = plain_get(admin, "/readyz").await {
            return Ok((child, admin));
        }
        if Instant::now() > deadline {
            return Err(format!("wardgate not ready\n{}", child.log_tail(3000)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Mesh {
    envoy: Envoy,
    lab: Svid,
    ca: Ca,
    svids: BTreeMap<&'static str, Svid>,
}

impl Mesh {
    fn client(&self, who: &str) -> MtlsClient {
        MtlsClient::new(
            self.envoy.listen,
            &self.lab.dns_name,
            std::slice::from_ref(&self.ca.cert_der),
            Some(&self.svids[who]),
            Protocol::Http2,
        )
        .unwrap()
    }

    async fn send(&self, who: &str, request: &RawRequest) -> support::client::Reply {
        self.client(who).send(request).await.unwrap_or_else(|e| {
            panic!(
                "{who} {request:?}: {e}\n{}",
                self.envoy.child.log_tail(3000)
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardgate_decides_for_an_istio_sidecar_through_the_custom_provider() {
    let Some(envoy_binary) = require_envoy("istio_custom") else {
        return;
    };
    let shape = IstioShape::from_shipped_files();
    assert_eq!(
        shape.cluster,
        "outbound|9191||wardgate.wardgate.svc.cluster.local"
    );
    assert!(!shape.fail_open, "the shipped provider fails closed");

    let dir = tempfile::Builder::new()
        .prefix("wardgate-istio-")
        .tempdir()
        .unwrap();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    // Istio's CA for trust domain cluster.local; workload certificates as istiod issues them
    // (ehr's shorter than an hour, to show below that its lifetime never reaches wardgate).
    let ca = Ca::new("cluster.local").unwrap();
    let root = pki_dir.join("root-cert.pem");
    std::fs::write(&root, &ca.cert_pem).unwrap();
    let issue = |id: &str, stem: &str, lifetime| ca.issue(id, lifetime, &pki_dir, stem).unwrap();
    let lab = issue(
        "spiffe://cluster.local/ns/clinical/sa/lab",
        "lab",
        Lifetime::DAY,
    );
    let svids = BTreeMap::from([
        (
            "ehr",
            issue(
                "spiffe://cluster.local/ns/clinical/sa/ehr",
                "ehr",
                Lifetime::SHORT,
            ),
        ),
        (
            "pharmacy",
            issue(
                "spiffe://cluster.local/ns/clinical/sa/pharmacy",
                "pharmacy",
                Lifetime::DAY,
            ),
        ),
        (
            "billing",
            issue(
                "spiffe://cluster.local/ns/admin/sa/billing",
                "billing",
                Lifetime::DAY,
            ),
        ),
    ]);

    let app = EchoUpstream::start().await.unwrap();
    let wardgate_port = free_port().unwrap();
    let bundle = repo("deploy/istio/bundle.yaml");
    let key = repo("deploy/istio/keys/bundle-signing.pub");
    let (mut wardgate, _) =
        start_wardgate(&bundle, Some(&key), wardgate_port, dir.path(), "wardgate")
            .await
            .unwrap();

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("ENVOY_ADMIN_PORT", admin.port().to_string()),
        ("ENVOY_LISTEN_PORT", listen.port().to_string()),
        ("SVID_CERT", lab.cert_path.display().to_string()),
        ("SVID_KEY", lab.key_path.display().to_string()),
        ("ROOT_CERT", root.display().to_string()),
        ("SHADOW_POLICY_NAME", shape.shadow_policy.clone()),
        ("FAILURE_MODE_ALLOW", shape.fail_open.to_string()),
        ("EXTAUTHZ_CLUSTER", shape.cluster.clone()),
        ("EXTAUTHZ_AUTHORITY", shape.authority.clone()),
        ("EXTAUTHZ_TIMEOUT", shape.timeout.clone()),
        ("EXTAUTHZ_METADATA_PREFIX", shape.metadata_prefix.clone()),
        ("WARDGATE_PORT", wardgate_port.to_string()),
        ("APP_PORT", app.addr.port().to_string()),
    ]);
    let template = std::fs::read_to_string(repo("tests/istio/sidecar-inbound.yaml")).unwrap();
    let config_path = dir.path().join("envoy-istio.yaml");
    std::fs::write(&config_path, render_template(&template, &vars).unwrap()).unwrap();
    let mut command = Command::new(&envoy_binary);
    command.arg("-c").arg(&config_path).args([
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]);
    let envoy = Envoy {
        child: ChildGuard::spawn("envoy", command, dir.path()).unwrap(),
        listen,
        admin,
        config_path,
        access_log: dir.path().join("unused-access.log"),
    }
    .wait_ready("Istio-shaped Envoy")
    .await
    .unwrap();
    let mesh = Mesh {
        envoy,
        lab,
        ca,
        svids,
    };

    // Allowed: the workload receives the deciding rule, and only wardgate's.
    let reply = mesh
        .send(
            "ehr",
            &RawRequest::new("GET", "/results/7").header("x-wardgate-rule", "forged-by-caller"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json().unwrap();
    assert_eq!(
        echo["headers"]["x-wardgate-rule"],
        serde_json::json!(["ehr-reads-lab-results"]),
        "{echo}"
    );
    // Istio's sidecar tells the workload who called.
    let xfcc = echo["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/clinical/sa/ehr"),
        "{xfcc}"
    );

    // Break-glass: allowed, and the workload learns which entry allowed it.
    let reply = mesh
        .send(
            "pharmacy",
            &RawRequest::new("GET", "/results/7")
                .header("x-break-glass-reason", "code blue, bed 4"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json().unwrap();
    assert_eq!(
        echo["headers"]["x-wardgate-break-glass"][0],
        "clinical-emergency-override"
    );

    // Denied: 403 with the reason in a header and the body, no rule name, nothing upstream.
    let before = app.hits();
    for (who, request, reason) in [
        (
            "billing",
            RawRequest::new("GET", "/results/7"),
            "default_deny",
        ),
        // Istio's BASE normalisation resolves the dot segments before ext_authz sees the path.
        ("ehr", RawRequest::new("GET", "/results/../admin"), "rule"),
        (
            "ehr",
            RawRequest::new("DELETE", "/results/7"),
            "default_deny",
        ),
    ] {
        let reply = mesh.send(who, &request).await;
        assert_eq!(reply.status, 403, "{who} {request:?}: {}", reply.text());
        assert_eq!(reply.header("x-wardgate-reason"), Some(reason));
        assert_eq!(
            reply.json().unwrap(),
            serde_json::json!({ "reason": reason })
        );
        assert!(!reply.text().contains("no-workload-reaches-admin-consoles"));
    }
    assert_eq!(app.hits(), before, "no denied request reached the workload");

    // No certificate comes through the CUSTOM provider: a segment with a lifetime bound denies
    // its callers (svid_lifetime) even when their certificate is within the bound (ehr's is
    // valid for 50 minutes, under the 1h bound); it never lets them through unproven.
    wardgate.terminate(Duration::from_secs(10));
    let bounded = std::fs::read_to_string(&bundle).unwrap().replacen(
        "    members: [\"spiffe://cluster.local/ns/clinical/sa/*\"]\n",
        "    members: [\"spiffe://cluster.local/ns/clinical/sa/*\"]\n    max_svid_lifetime: 1h\n",
        1,
    );
    assert!(bounded.contains("max_svid_lifetime: 1h"));
    let bounded_path = dir.path().join("bounded.yaml");
    std::fs::write(&bounded_path, bounded).unwrap();
    let (mut wardgate, _) = start_wardgate(
        &bounded_path,
        None,
        wardgate_port,
        dir.path(),
        "wardgate-bounded",
    )
    .await
    .unwrap();
    let reply = mesh
        .send("ehr", &RawRequest::new("GET", "/results/7"))
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.header("x-wardgate-reason"), Some("svid_lifetime"));
    // A segment without a bound is unaffected.
    let reply = mesh
        .send(
            "billing",
            &RawRequest::new("GET", "/encounters/1/billing-codes"),
        )
        .await;
    assert_eq!(
        reply.status, 403,
        "billing -> lab is not ehr: default_deny, not svid_lifetime"
    );
    assert_eq!(reply.header("x-wardgate-reason"), Some("default_deny"));

    // Fail closed: wardgate down, every request refused (failOpen: false; Envoy's 403).
    wardgate.terminate(Duration::from_secs(10));
    let before = app.hits();
    let reply = mesh
        .send("ehr", &RawRequest::new("GET", "/results/7"))
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.header("x-wardgate-reason"),
        None,
        "Envoy's own refusal, not a decision"
    );
    assert_eq!(app.hits(), before);
    let (_, stats) = plain_get(mesh.envoy.admin, "/stats?filter=ext_authz")
        .await
        .unwrap();
    let failures: u64 = stats
        .lines()
        .filter(|l| l.contains("ext_authz.error") || l.contains("ext_authz.failure_mode_allowed"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failures >= 1, "{stats}");
    assert!(
        !stats.contains("failure_mode_allowed: 1"),
        "a failure was let through: {stats}"
    );
}
