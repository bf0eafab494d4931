//! The pod deploy/kubernetes renders (the hospital-lab overlay), run as local processes: each
//! container's command and arguments as the rendered Deployment declares them, each volume a
//! directory filled the way the kubelet fills it (ConfigMaps as files behind `..data`, the
//! emptyDir empty and world-writable), mount paths and ports mapped into a temporary directory
//! and free loopback ports, and nothing else changed. Envoy runs the rendered `wardgate-envoy`
//! ConfigMap's config with only its socket paths and ports rewritten by that same mapping.
//!
//! In place of the SPIRE agent, the CSI driver's volume holds the socket of the SPIFFE Workload
//! API **test double** (tests/support/workload_api.rs): it speaks the Workload API and, like a
//! SPIRE agent, Envoy's SDS on the same socket (tests/support/sds.rs). Envoy takes its SVID and
//! trust bundles from it by SDS and wardgate its own SVID and bundles by the Workload API, as the
//! manifests configure them against a real agent. The app container is replaced by an echo
//! server at the address its `LISTEN_ADDRESS` declares.
//!
//! When the test runs as root, wardgate runs as the user and group its securityContext names,
//! and the socket's permissions are checked with processes running as Envoy's and the app's
//! users.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{plain_get, Protocol, RawRequest};
use support::kube::{
    command_line, container, flag_value, manifests_dir, mounts, pod_spec, require_kubectl, str_at,
    Rendered,
};
use support::pki::{Lifetime, Pki};
use support::process::{free_port, require_envoy, ChildGuard};
use support::upstream::EchoUpstream;
use support::workload_api::{WorkloadApiDouble, WorkloadState};
use support::BoxError;

/// One container's view: its mount paths mapped to directories of the temporary pod.
#[derive(Debug, Default)]
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    /// The local path of an absolute path inside the container; `None` outside every mount.
    fn map(&self, path: &str) -> Option<PathBuf> {
        self.0.iter().find_map(|(mount, dir)| {
            if path == mount {
                Some(dir.clone())
            } else {
                path.strip_prefix(&format!("{mount}/"))
                    .map(|rest| dir.join(rest))
            }
        })
    }
}

/// The pod, materialised in a temporary directory.
struct Pod {
    dir: tempfile::TempDir,
    deployment: Value,
    /// Container name -> its mounts.
    mounts: BTreeMap<String, Mounts>,
    /// Declared port -> local loopback port.
    ports: BTreeMap<u64, u16>,
}

impl Pod {
    fn new(rendered: &Rendered) -> Result<Pod, BoxError> {
        let dir = tempfile::Builder::new().prefix("wardgate-pod-").tempdir()?;
        // Other users (wardgate's, below) must be able to traverse it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let deployment = rendered.one("Deployment")?.clone();
        let spec = pod_spec(&deployment);
        let mut volume_dirs = BTreeMap::new();
        for volume in spec["volumes"].as_array().ok_or("no volumes")? {
            let name = str_at(volume, "/name");
            let path = dir.path().join("volumes").join(name);
            std::fs::create_dir_all(&path)?;
            if let Some(cm) = volume["configMap"]["name"].as_str() {
                write_config_map(&path, rendered.named("ConfigMap", cm)?)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else if volume.get("emptyDir").is_some() {
                // The kubelet creates an emptyDir world-writable when no fsGroup is set.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
            } else if volume.get("csi").is_some() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else {
                return Err(format!("volume {name}: a kind this test does not know").into());
            }
            volume_dirs.insert(name.to_owned(), path);
        }
        let mut mount_map = BTreeMap::new();
        for c in spec["containers"].as_array().ok_or("no containers")? {
            let mut m = Mounts::default();
            for (volume, path) in mounts(c) {
                let local = volume_dirs
                    .get(&volume)
                    .ok_or_else(|| format!("mount of unknown volume {volume}"))?;
                m.0.push((path, local.clone()));
            }
            mount_map.insert(str_at(c, "/name").to_owned(), m);
        }
        Ok(Pod {
            dir,
            deployment,
            mounts: mount_map,
            ports: BTreeMap::new(),
        })
    }

    fn mounts(&self, container: &str) -> &Mounts {
        &self.mounts[container]
    }

    /// The local port for a declared one (allocated on first use).
    fn port(&mut self, declared: u64) -> Result<u16, BoxError> {
        if let Some(p) = self.ports.get(&declared) {
            return Ok(*p);
        }
        let p = free_port()?;
        self.ports.insert(declared, p);
        Ok(p)
    }

    /// `host:port` in the pod -> 127.0.0.1 and the mapped port.
    fn address(&mut self, addr: &str) -> Result<SocketAddr, BoxError> {
        let (_, port) = addr.rsplit_once(':').ok_or("not host:port")?;
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            self.port(port.parse()?)?,
        )))
    }

    /// One argument with every path inside a mount and every `host:port` mapped.
    fn map_arg(&mut self, container: &str, arg: &str) -> Result<String, BoxError> {
        let (prefix, value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value),
            _ => (String::new(), arg),
        };
        for scheme in ["unix://", "unix:", ""] {
            if let Some(path) = value.strip_prefix(scheme).filter(|p| p.starts_with('/')) {
                if let Some(local) = self.mounts(container).map(path) {
                    return Ok(format!("{prefix}{scheme}{}", local.display()));
                }
            }
        }
        if value.starts_with("0.0.0.0:") || value.starts_with("127.0.0.1:") {
            return Ok(format!("{prefix}{}", self.address(value)?));
        }
        Ok(arg.to_owned())
    }
}

/// Write a ConfigMap's data the way the kubelet does: the files in a timestamped directory,
/// `..data` pointing at it, and each key a symlink through `..data`.
fn write_config_map(dir: &Path, cm: &Value) -> Result<(), BoxError> {
    let data = cm["data"].as_object().ok_or("ConfigMap without data")?;
    let timestamped = dir.join("..2026_11_30_00_00_00.000000001");
    std::fs::create_dir_all(&timestamped)?;
    std::fs::set_permissions(&timestamped, std::fs::Permissions::from_mode(0o755))?;
    for (key, value) in data {
        let file = timestamped.join(key);
        std::fs::write(&file, value.as_str().ok_or("non-string data")?)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key))?;
    }
    std::os::unix::fs::symlink(
        timestamped.file_name().ok_or("no name")?,
        dir.join("..data"),
    )?;
    Ok(())
}

/// Envoy's config with its Unix socket paths mapped through Envoy's mounts and its listener,
/// admin and upstream addresses mapped to loopback ports; nothing else changes.
fn map_envoy_config(pod: &mut Pod, value: &mut Value) -> Result<(), BoxError> {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(pipe)) = map.get_mut("pipe") {
                let path = pipe["path"].as_str().ok_or("pipe without path")?.to_owned();
                let local = pod
                    .mounts("envoy")
                    .map(&path)
                    .ok_or_else(|| format!("Envoy's pipe {path} is in no volume Envoy mounts"))?;
                pipe.insert("path".into(), Value::from(local.display().to_string()));
            }
            if let Some(Value::Object(sa)) = map.get_mut("socket_address") {
                let port = sa["port_value"]
                    .as_u64()
                    .ok_or("socket_address without port")?;
                let local = pod.port(port)?;
                sa.insert("address".into(), Value::from("127.0.0.1"));
                sa.insert("port_value".into(), Value::from(local));
            }
            for v in map.values_mut() {
                map_envoy_config(pod, v)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                map_envoy_config(pod, v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Can a process running as `uid:gid` connect to the Unix socket `path`? (A Python one-liner
/// from the system Python, reachable by every user.)
fn can_connect_as(uid: u32, gid: u32, path: &Path) -> Result<bool, BoxError> {
    let status = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        ])
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stderr(std::process::Stdio::null())
        .status()?;
    Ok(status.success())
}

fn security_id(container: &Value, field: &str) -> Result<u32, BoxError> {
    Ok(u32::try_from(
        container["securityContext"][field]
            .as_u64()
            .ok_or_else(|| format!("no securityContext.{field}"))?,
    )?)
}

async fn wait_for<F, Fut>(
    what: &str,
    logs: impl Fn() -> String,
    mut probe: F,
) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe().await {
        if Instant::now() > deadline {
            return Err(format!("{what} within 60 s\n{}", logs()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_pod_serves_decisions_with_svids_from_the_agent_socket() {
    let Some(envoy_binary) = require_envoy("deploy_pod") else {
        return;
    };
    let Some(kubectl) = require_kubectl("deploy_pod") else {
        return;
    };
    let rendered = Rendered::render(&kubectl, &manifests_dir("overlays/hospital-lab")).unwrap();
    let mut pod = Pod::new(&rendered).unwrap();
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);

    // --- the SPIRE agent's place: the Workload API + SDS double in the CSI volume ------------
    let pki_dir = pod.dir.path().join("pki");
    let mut pki = Pki::generate(&pki_dir).unwrap();
    let wardgate_spec = container(&pod.deployment, "wardgate").unwrap().clone();
    let wardgate_declared = command_line(&wardgate_spec);
    let endpoint = flag_value(&wardgate_declared, "--spiffe-endpoint-socket").unwrap();
    let agent_socket = pod
        .mounts("wardgate")
        .map(endpoint.strip_prefix("unix://").unwrap())
        .expect("the agent socket is in a volume wardgate mounts");
    let lab = pki.svid("lab").unwrap().clone();
    // The SVID the agent rotates to, later.
    let rotated = pki
        .issue(
            "hospital.example",
            "lab-rotated",
            &lab.spiffe_id,
            Lifetime::DAY,
        )
        .unwrap()
        .clone();
    let state = WorkloadState::new(
        &lab,
        &pki.cas["hospital.example"],
        &[
            ("partner-lab.example", &pki.cas["partner-lab.example"]),
            ("medtech.example", &pki.cas["medtech.example"]),
        ],
    );
    let agent = WorkloadApiDouble::start(&agent_socket, state.clone())
        .await
        .unwrap();
    // A SPIRE agent's socket admits every local user; the agent attests who is calling.
    std::fs::set_permissions(&agent_socket, std::fs::Permissions::from_mode(0o777)).unwrap();

    // --- the app: an echo server where LISTEN_ADDRESS says ------------------------------------
    let app_spec = container(&pod.deployment, "app").unwrap().clone();
    let listen = app_spec["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "LISTEN_ADDRESS")
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_owned();
    assert!(
        listen.starts_with("127.0.0.1:"),
        "the app listens on loopback only"
    );
    let app_addr = pod.address(&listen).unwrap();
    let app = EchoUpstream::start_at(app_addr).await.unwrap();

    // --- wardgate, as declared ----------------------------------------------------------------
    let mut args = Vec::new();
    for arg in wardgate_declared.iter().skip(1) {
        args.push(pod.map_arg("wardgate", arg).unwrap());
    }
    assert_eq!(wardgate_declared[0], "/usr/local/bin/wardgate");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wardgate"));
    command.args(&args).env("WARDGATE_LOG", "info");
    if as_root {
        command
            .uid(security_id(&wardgate_spec, "runAsUser").unwrap())
            .gid(security_id(&wardgate_spec, "runAsGroup").unwrap());
    }
    let mut wardgate = ChildGuard::spawn("wardgate", command, pod.dir.path()).unwrap();
    let admin = pod
        .address(flag_value(&wardgate_declared, "--admin").unwrap())
        .unwrap();
    let readiness = str_at(&wardgate_spec, "/readinessProbe/httpGet/path").to_owned();
    let wardgate_logs = |g: &ChildGuard| g.log_tail(4000);
    {
        let w = &wardgate;
        wait_for(
            "wardgate ready (readinessProbe)",
            || wardgate_logs(w),
            || async { matches!(plain_get(admin, &readiness).await, Ok((200, _))) },
        )
        .await
        .unwrap();
    }
    assert!(wardgate.exited().is_none());

    // The socket: wardgate's user and group, mode 0660.
    let listen_arg = flag_value(&wardgate_declared, "--listen").unwrap();
    let socket = pod
        .mounts("wardgate")
        .map(listen_arg.strip_prefix("unix:").unwrap())
        .unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let envoy_spec = container(&pod.deployment, "envoy").unwrap().clone();
    if as_root {
        let (uid, gid) = (
            security_id(&wardgate_spec, "runAsUser").unwrap(),
            security_id(&wardgate_spec, "runAsGroup").unwrap(),
        );
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        let envoy_ids = (
            security_id(&envoy_spec, "runAsUser").unwrap(),
            security_id(&envoy_spec, "runAsGroup").unwrap(),
        );
        let app_ids = (
            security_id(&app_spec, "runAsUser").unwrap(),
            security_id(&app_spec, "runAsGroup").unwrap(),
        );
        assert!(
            can_connect_as(envoy_ids.0, envoy_ids.1, &socket).unwrap(),
            "Envoy's user {envoy_ids:?} must be able to connect to wardgate's socket"
        );
        assert!(
            !can_connect_as(app_ids.0, app_ids.1, &socket).unwrap(),
            "the app's user {app_ids:?} must not be able to connect to wardgate's socket"
        );
    } else {
        eprintln!("deploy_pod: not root, so wardgate runs as the test's user and socket permissions are not probed");
    }

    // wardgate took its own SVID and the bundles from the agent socket.
    let metrics = plain_get(admin, "/metrics").await.unwrap().1;
    let expiry = support::mtls::metric(&metrics, "wardgate_svid_expiry_timestamp_seconds")
        .expect("wardgate exports its SVID's expiry once it has one");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "{expiry}");
    assert!(agent
        .calls()
        .iter()
        .any(|c| c.method == "FetchX509SVID" && c.security_header));

    // --- Envoy, as declared -------------------------------------------------------------------
    let envoy_declared = command_line(&envoy_spec);
    assert_eq!(envoy_declared[0], "envoy");
    let config_arg = flag_value(&envoy_declared, "-c").unwrap().to_owned();
    let config_local = pod.mounts("envoy").map(&config_arg).unwrap();
    let mut config: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&config_local).unwrap()).unwrap();
    map_envoy_config(&mut pod, &mut config).unwrap();
    let mapped_config = pod.dir.path().join("envoy-mapped.yaml");
    std::fs::write(
        &mapped_config,
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut envoy_args = Vec::new();
    for arg in envoy_declared.iter().skip(1) {
        if *arg == config_arg {
            envoy_args.push(mapped_config.display().to_string());
        } else {
            envoy_args.push(pod.map_arg("envoy", arg).unwrap());
        }
    }
    let mut command = Command::new(&envoy_binary);
    command.args(&envoy_args);
    let envoy = ChildGuard::spawn("envoy", command, pod.dir.path()).unwrap();
    let listener_port = envoy_spec["ports"][0]["containerPort"].as_u64().unwrap();
    let listener = SocketAddr::from(([127, 0, 0, 1], pod.port(listener_port).unwrap()));
    let envoy_admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap();
    let envoy_admin = SocketAddr::from(([127, 0, 0, 1], u16::try_from(envoy_admin_port).unwrap()));
    {
        let e = &envoy;
        wait_for(
            "Envoy ready (admin /ready: the SVID arrived by SDS)",
            || e.log_tail(6000),
            || async { matches!(plain_get(envoy_admin, "/ready").await, Ok((200, _))) },
        )
        .await
        .unwrap();
    }

    // Envoy asked the agent socket for the SPIRE agent's default SVID and all bundles.
    let names: Vec<String> = agent
        .sds_requests()
        .into_iter()
        .flat_map(|r| r.resource_names)
        .collect();
    assert!(names.iter().any(|n| n == "default"), "{names:?}");
    assert!(names.iter().any(|n| n == "ALL"), "{names:?}");
    assert!(agent.sds_requests().iter().all(|r| r.error.is_none()));

    // --- calls through the pod ----------------------------------------------------------------
    let logs = || format!("{}\n{}", wardgate.log_tail(3000), envoy.log_tail(3000));
    let client = |who: &str| {
        support::client::MtlsClient::new(
            listener,
            &lab.dns_name,
            &pki.trusted_roots(),
            Some(pki.svid(who).unwrap()),
            Protocol::Http2,
        )
        .unwrap()
    };
    let cases: &[(&str, RawRequest, u16, &str)] = &[
        (
            "ehr",
            RawRequest::new("GET", "/results/7"),
            200,
            "ehr-reads-lab-results",
        ),
        (
            "ehr",
            RawRequest::new("POST", "/orders"),
            200,
            "ehr-orders-lab-tests",
        ),
        (
            "ehr",
            RawRequest::new("GET", "/results/../admin"),
            403,
            "rule",
        ),
        (
            "billing",
            RawRequest::new("GET", "/results/7"),
            403,
            "default_deny",
        ),
        // partner-lab's SVID verifies only with its federated bundle ("ALL" by SDS).
        ("reflab", RawRequest::new("GET", "/results/7"), 403, "rule"),
        (
            "pharmacy",
            RawRequest::new("GET", "/results/7").header("x-break-glass-reason", "code blue, bed 4"),
            200,
            "clinical-emergency-override",
        ),
    ];
    for (who, request, status, what) in cases {
        let reply = client(who)
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("{who} {request:?}: {e}\n{}", logs()));
        assert_eq!(
            reply.status,
            *status,
            "{who} {request:?}: {}\n{}",
            reply.text(),
            logs()
        );
        if *status == 200 {
            let echo = reply.json().unwrap();
            assert_eq!(echo["headers"]["x-wardgate-rule"][0], *what, "{echo}");
        } else {
            assert_eq!(
                reply.header("x-wardgate-reason"),
                Some(*what),
                "{who} {request:?}"
            );
        }
    }
    // A certificate from a CA of no trust domain never gets past Envoy's SPIFFE validator.
    let rogue = client("rogue-ehr")
        .send(&RawRequest::new("GET", "/results/7"))
        .await;
    assert!(rogue.is_err(), "rogue certificate accepted: {rogue:?}");
    assert_eq!(
        app.hits(),
        3,
        "only the three allowed calls reached the app"
    );

    // --- rotation: a new SVID is pushed by SDS and served without a restart -------------------
    agent.set(state.with_svid(&rotated, &pki.cas["hospital.example"]));
    let serial = support::mtls::serial_of(&rotated.cert_der);
    let serial = serial.trim_start_matches('0').to_owned();
    wait_for(
        "Envoy serving the rotated SVID (admin /certs)",
        logs,
        || async {
            plain_get(envoy_admin, "/certs")
                .await
                .map(|(_, body)| body.to_lowercase().contains(&serial))
                .unwrap_or(false)
        },
    )
    .await
    .unwrap();
    let reply = client("ehr")
        .send(&RawRequest::new("GET", "/results/8"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    // --- fail closed: wardgate gone, Envoy refuses --------------------------------------------
    wardgate.terminate(Duration::from_secs(10));
    let reply = client("ehr")
        .send(&RawRequest::new("GET", "/results/9"))
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(app.hits(), 4);
    drop(envoy);
}
