//! The Kubernetes manifests an operator applies (`deploy/kubernetes`, and `deploy/istio` for the
//! schema check): rendered with kustomize,
//! every object validated strictly against the Kubernetes schemas of the oldest and newest
//! versions PyPI's kubernetes-validate offers, and the properties the deployment depends on
//! checked on the rendered objects (not on the source files): the shipped bundle and Envoy config
//! are the ConfigMaps' contents byte for byte, only Envoy and wardgate share the socket, the app
//! is unreachable around Envoy, Prometheus' job matches the alerts, SPIRE's registration selects
//! the pod and yields the identity the bundle names, and the container runs the image's
//! entrypoint.
//!
//! The pod's processes themselves are run by tests/deploy_pod.rs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::kube::{
    command_line, container, container_port, flag_value, manifests_dir, mounts, pod_spec,
    require_kubectl, str_at, Rendered,
};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn render(kubectl: &Path, rel: &str) -> Rendered {
    Rendered::render(kubectl, &manifests_dir(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// Run tests/deploy/validate_k8s.py on `files`: its output and whether it passed.
fn validate(files: &[&Path]) -> (bool, String) {
    let output = Command::new("python3")
        .arg(repo("tests/deploy/validate_k8s.py"))
        .args(files)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if text.contains("No module named") {
        let help =
            "python3 cannot import kubernetes_validate or yaml: run scripts/install-test-deps.sh";
        panic!("{help}\n{text}");
    }
    (output.status.success(), text)
}

#[test]
fn every_rendered_object_passes_strict_schema_validation_for_the_oldest_and_newest_kubernetes() {
    let Some(kubectl) = require_kubectl("deploy_manifests::schema") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for rel in ["base", "overlays/hospital-lab", "../istio"] {
        let rendered = render(&kubectl, rel);
        let file = dir
            .path()
            .join(format!("{}.yaml", rel.replace(['/', '.'], "-")));
        std::fs::write(&file, &rendered.yaml).unwrap();
        files.push(file);
    }
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, text) = validate(&paths);
    println!("{text}");
    assert!(ok, "schema validation failed:\n{text}");
    // Which versions: kubernetes-validate's own oldest and newest, whatever its release.
    let versions = Command::new("python3")
        .args([
            "-c",
            "import kubernetes_validate.utils as k; v=sorted(set(k.all_versions()), key=k.major_minor); print(v[0], v[-1])",
        ])
        .output()
        .unwrap();
    let versions = String::from_utf8_lossy(&versions.stdout).trim().to_owned();
    let (oldest, newest) = versions.split_once(' ').expect("two versions");
    assert!(
        text.contains(&format!("against {oldest} and {newest}")),
        "validated against {oldest} and {newest}:\n{text}"
    );
    // 8 objects per kustomization (deploy/istio too), each built-in one validated for both
    // versions.
    assert!(text.contains("validated 24 objects"), "{text}");

    // The validator really is strict: an unknown field in the Deployment, a bad field in the
    // PodMonitor and a namespace on the cluster-scoped ClusterSPIFFEID are each refused.
    let rendered = render(&kubectl, "overlays/hospital-lab");
    for (kind, pointer, value) in [
        (
            "Deployment",
            "/spec/template/spec/containers/1/runAsUser",
            Value::from(0),
        ),
        (
            "PodMonitor",
            "/spec/podMetricsEndpoints/0/portname",
            Value::from("admin"),
        ),
        (
            "ClusterSPIFFEID",
            "/metadata/namespace",
            Value::from("clinical"),
        ),
    ] {
        let mut object = rendered.one(kind).unwrap().clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        object
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert(key.to_owned(), value);
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, serde_json::to_string(&object).unwrap()).unwrap();
        let (ok, text) = validate(&[&bad]);
        assert!(!ok, "{kind} with {pointer} passed validation:\n{text}");
    }
}

#[test]
fn the_base_and_the_overlay_render_every_object_the_pod_needs() {
    let Some(kubectl) = require_kubectl("deploy_manifests::objects") else {
        return;
    };
    for (rel, workload) in [("base", "app"), ("overlays/hospital-lab", "lab")] {
        let rendered = render(&kubectl, rel);
        let kinds: BTreeSet<(String, String)> = rendered
            .kinds_and_names()
            .into_iter()
            // Generated ConfigMaps carry a content hash after their name.
            .map(|(kind, name)| {
                let stem = ["wardgate-envoy", "wardgate-trusted-keys"]
                    .into_iter()
                    .find(|s| name.starts_with(&format!("{s}-")))
                    .map_or(name.clone(), str::to_owned);
                (kind, stem)
            })
            .collect();
        let expected: BTreeSet<(String, String)> = [
            ("ServiceAccount", workload),
            ("ConfigMap", "wardgate-envoy"),
            ("ConfigMap", "wardgate-bundle"),
            ("ConfigMap", "wardgate-trusted-keys"),
            ("Deployment", workload),
            ("NetworkPolicy", "app-ingress"),
            ("PodMonitor", "wardgate"),
            ("ClusterSPIFFEID", "wardgate-sidecars"),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n.to_owned()))
        .collect();
        assert_eq!(kinds, expected, "{rel}");
        assert_eq!(rendered.objects.len(), expected.len(), "{rel}: duplicates");

        let deployment = rendered.one("Deployment").unwrap();
        assert_eq!(
            str_at(pod_spec(deployment), "/serviceAccountName"),
            workload,
            "{rel}: the pod runs as the rendered ServiceAccount"
        );
        // Every namespaced object in the overlay's namespace; the ClusterSPIFFEID in none.
        let namespace = if rel == "base" { "" } else { "clinical" };
        for object in &rendered.objects {
            let expected = if object["kind"] == "ClusterSPIFFEID" {
                ""
            } else {
                namespace
            };
            assert_eq!(
                str_at(object, "/metadata/namespace"),
                expected,
                "{rel}: namespace of {}",
                object["kind"]
            );
        }
    }
}

#[test]
fn the_configmaps_hold_the_very_files_the_tests_run() {
    let Some(kubectl) = require_kubectl("deploy_manifests::drift") else {
        return;
    };
    // kustomize reads no file outside the overlay's directory, so the overlay holds a copy of
    // the shipped bundle: it must not differ by one byte.
    let shipped = std::fs::read(repo("deploy/bundles/hospital.yaml")).unwrap();
    let copy = std::fs::read(repo(
        "deploy/kubernetes/overlays/hospital-lab/hospital.yaml",
    ))
    .unwrap();
    assert!(
        shipped == copy,
        "deploy/kubernetes/overlays/hospital-lab/hospital.yaml differs from deploy/bundles/hospital.yaml: \
         run scripts/sign-deploy-bundles.sh and commit what it writes"
    );

    for (rel, bundle_file) in [
        ("base", "deploy/kubernetes/base/bundle/bundle.yaml"),
        ("overlays/hospital-lab", "deploy/bundles/hospital.yaml"),
    ] {
        let rendered = render(&kubectl, rel);
        let deployment = rendered.one("Deployment").unwrap();
        let wardgate = command_line(container(deployment, "wardgate").unwrap());

        // The bundle wardgate is told to load is the ConfigMap's `bundle.yaml`, and that is the
        // shipped file.
        let bundle_arg = flag_value(&wardgate, "--bundle").unwrap();
        let bundle_cm = rendered.config_map_of_volume("bundle").unwrap();
        let mount = mount_path(deployment, "wardgate", "bundle");
        let key = bundle_arg
            .strip_prefix(&format!("{mount}/"))
            .unwrap_or_else(|| {
                panic!("{rel}: --bundle {bundle_arg} is not in the bundle volume {mount}")
            });
        assert_eq!(
            str_at(bundle_cm, &format!("/data/{}", escape(key))),
            read(bundle_file),
            "{rel}: ConfigMap {key} is not {bundle_file}"
        );

        // The signature beside it verifies with the key wardgate is given.
        let signature = str_at(
            bundle_cm,
            &format!("/data/{}", escape(&format!("{key}.minisig"))),
        );
        let key_arg = flag_value(&wardgate, "--trusted-key").unwrap();
        let keys_cm = rendered.config_map_of_volume("trusted-keys").unwrap();
        let keys_mount = mount_path(deployment, "wardgate", "trusted-keys");
        let key_file = key_arg.strip_prefix(&format!("{keys_mount}/")).unwrap();
        let public_key = str_at(keys_cm, &format!("/data/{}", escape(key_file)));
        let public_key = minisign::PublicKeyBox::from_string(public_key)
            .and_then(|b| b.into_public_key())
            .unwrap_or_else(|e| panic!("{rel}: public key: {e}"));
        let signature = minisign::SignatureBox::from_string(signature)
            .unwrap_or_else(|e| panic!("{rel}: signature: {e}"));
        minisign::verify(
            &public_key,
            &signature,
            std::io::Cursor::new(read(bundle_file).into_bytes()),
            true,
            false,
            false,
        )
        .unwrap_or_else(|e| {
            panic!("{rel}: {bundle_file}'s signature does not verify ({e}): run scripts/sign-deploy-bundles.sh")
        });

        // Envoy's config is base/envoy.yaml, the file tests/deploy_pod.rs runs.
        let envoy = command_line(container(deployment, "envoy").unwrap());
        let config_arg = flag_value(&envoy, "-c").unwrap();
        let envoy_cm = rendered.config_map_of_volume("envoy-config").unwrap();
        let envoy_mount = mount_path(deployment, "envoy", "envoy-config");
        let envoy_key = config_arg.strip_prefix(&format!("{envoy_mount}/")).unwrap();
        assert_eq!(
            str_at(envoy_cm, &format!("/data/{}", escape(envoy_key))),
            read("deploy/kubernetes/base/envoy.yaml"),
            "{rel}: Envoy's ConfigMap"
        );
    }
}

/// JSON-pointer escaping of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Where `container` mounts `volume`.
fn mount_path(deployment: &Value, container_name: &str, volume: &str) -> String {
    mounts(container(deployment, container_name).unwrap())
        .into_iter()
        .find(|(name, _)| name == volume)
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("{container_name} does not mount {volume}"))
}

#[test]
fn only_envoy_and_wardgate_can_reach_the_socket_and_nothing_reaches_the_app_around_envoy() {
    let Some(kubectl) = require_kubectl("deploy_manifests::isolation") else {
        return;
    };
    let rendered = render(&kubectl, "overlays/hospital-lab");
    let deployment = rendered.one("Deployment").unwrap();
    let pod = pod_spec(deployment);
    let app = container(deployment, "app").unwrap();
    let envoy = container(deployment, "envoy").unwrap();
    let wardgate = container(deployment, "wardgate").unwrap();
    let wardgate_args = command_line(wardgate);

    // The socket's directory is an emptyDir mounted by Envoy and wardgate only.
    let listen = flag_value(&wardgate_args, "--listen").unwrap();
    let socket = listen
        .strip_prefix("unix:")
        .expect("wardgate listens on a Unix socket");
    let socket_dir = Path::new(socket).parent().unwrap().to_str().unwrap();
    let socket_volume = mounts(wardgate)
        .into_iter()
        .find(|(_, path)| path == socket_dir)
        .map(|(name, _)| name)
        .expect("the socket's directory is a volume");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == socket_volume.as_str())
        .unwrap();
    assert!(volume.get("emptyDir").is_some(), "{volume}");
    let sharing: BTreeSet<&str> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| mounts(c).iter().any(|(name, _)| *name == socket_volume))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(sharing, BTreeSet::from(["envoy", "wardgate"]));

    // The socket is 0660 (src/server.rs): its owner and group may connect. Envoy's group is
    // wardgate's; the app's user and group are neither; no pod-wide group adds one.
    let id = |c: &Value, field: &str| c["securityContext"][field].as_u64().unwrap();
    assert_eq!(id(envoy, "runAsGroup"), id(wardgate, "runAsGroup"));
    assert_ne!(id(envoy, "runAsUser"), id(wardgate, "runAsUser"));
    for field in ["runAsUser", "runAsGroup"] {
        assert_ne!(id(app, field), id(wardgate, "runAsUser"), "app {field}");
        assert_ne!(id(app, field), id(wardgate, "runAsGroup"), "app {field}");
    }
    assert!(pod["securityContext"].get("fsGroup").is_none());
    assert!(pod["securityContext"].get("supplementalGroups").is_none());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
        assert_ne!(sc["runAsUser"], 0, "{}", c["name"]);
    }

    // The app declares no port and Envoy reaches it on loopback.
    assert!(
        app.get("ports").is_none(),
        "the app must not declare a port"
    );
    let envoy_config = envoy_config(&rendered);
    let local_app = cluster(&envoy_config, "local_app");
    assert_eq!(
        str_at(
            local_app,
            "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address"
        ),
        "127.0.0.1"
    );

    // NetworkPolicy: Envoy's port from anywhere, the admin port from `monitoring` only, nothing
    // else; both named ports are the containers' and the processes listen on them.
    let policy = rendered.one("NetworkPolicy").unwrap();
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert!(
        policy["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| deployment["spec"]["template"]["metadata"]["labels"][k] == *v),
        "the NetworkPolicy selects the pod"
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let port_of = |rule: &Value| {
        let ports = rule["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1);
        ports[0]["port"].as_str().unwrap().to_owned()
    };
    let open = rules.iter().find(|r| r.get("from").is_none()).unwrap();
    assert_eq!(port_of(open), "mtls");
    let monitoring = rules.iter().find(|r| r.get("from").is_some()).unwrap();
    assert_eq!(port_of(monitoring), "admin");
    assert_eq!(
        monitoring["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    let mtls_port = container_port(envoy, "mtls").unwrap();
    let listener = &envoy_config["static_resources"]["listeners"][0]["address"]["socket_address"];
    assert_eq!(listener["port_value"].as_u64(), Some(mtls_port));
    let admin_port = container_port(wardgate, "admin").unwrap();
    let admin_arg = flag_value(&wardgate_args, "--admin").unwrap();
    assert_eq!(admin_arg, format!("0.0.0.0:{admin_port}"));
    // Envoy's admin API is on loopback, not a declared port.
    assert_eq!(
        str_at(&envoy_config, "/admin/address/socket_address/address"),
        "127.0.0.1"
    );
}

fn envoy_config(rendered: &Rendered) -> Value {
    let cm = rendered.config_map_of_volume("envoy-config").unwrap();
    serde_saphyr::from_str::<Value>(str_at(cm, "/data/envoy.yaml")).unwrap()
}

fn cluster<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no Envoy cluster {name}"))
}

#[test]
fn prometheus_scrapes_wardgate_under_the_job_the_alerts_select() {
    let Some(kubectl) = require_kubectl("deploy_manifests::podmonitor") else {
        return;
    };
    let rendered = render(&kubectl, "overlays/hospital-lab");
    let deployment = rendered.one("Deployment").unwrap();
    let monitor = rendered.one("PodMonitor").unwrap();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels[k], *v, "the PodMonitor selects the pod by {k}");
    }
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    let wardgate = container(deployment, "wardgate").unwrap();
    assert!(container_port(wardgate, str_at(endpoint, "/port")).is_some());
    assert_eq!(endpoint["path"], "/metrics");

    // The job the alerts select, read from the alert rules themselves.
    let alerts = read("deploy/prometheus/alerts.yaml");
    let jobs: BTreeSet<&str> = alerts
        .match_indices("job=\"")
        .filter_map(|(i, m)| alerts[i + m.len()..].split('"').next())
        .collect();
    assert_eq!(jobs.len(), 1, "the alerts select one job: {jobs:?}");
    let job = jobs.into_iter().next().unwrap();
    // The PodMonitor's job would be `<namespace>/<name>` without the relabeling that sets it.
    let sets_job: Vec<&Value> = endpoint["relabelings"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["targetLabel"] == "job").collect())
        .unwrap_or_default();
    assert_eq!(sets_job.len(), 1, "{endpoint}");
    assert_eq!(sets_job[0]["action"], "replace");
    assert_eq!(sets_job[0]["replacement"], job);
    assert!(sets_job[0].get("sourceLabels").is_none());
    // No prometheus.io annotations pretending to configure scraping.
    assert!(deployment["spec"]["template"]["metadata"]
        .get("annotations")
        .is_none());
}

#[test]
fn spire_registers_the_pod_under_the_identity_the_bundle_names() {
    let Some(kubectl) = require_kubectl("deploy_manifests::spire") else {
        return;
    };
    let rendered = render(&kubectl, "overlays/hospital-lab");
    let deployment = rendered.one("Deployment").unwrap();
    let registration = rendered.one("ClusterSPIFFEID").unwrap();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in registration["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels[k], *v, "the ClusterSPIFFEID selects the pod by {k}");
    }
    // The controller manager's template, filled in for this pod and the hospital trust domain.
    let id = str_at(registration, "/spec/spiffeIDTemplate")
        .replace("{{ .TrustDomain }}", "hospital.example")
        .replace(
            "{{ .PodMeta.Namespace }}",
            str_at(deployment, "/metadata/namespace"),
        )
        .replace(
            "{{ .PodSpec.ServiceAccountName }}",
            str_at(pod_spec(deployment), "/serviceAccountName"),
        );
    assert_eq!(id, "spiffe://hospital.example/ns/clinical/sa/lab");
    let bundle = read("deploy/bundles/hospital.yaml");
    assert!(
        bundle.contains(&format!("\"{id}\"")),
        "the bundle names {id}"
    );
    // Envoy must trust the partner domains whose callers the bundle judges.
    let federates: BTreeSet<&str> = registration["spec"]["federatesWith"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        federates,
        BTreeSet::from(["partner-lab.example", "medtech.example"])
    );

    // Envoy and wardgate both use the agent socket the CSI driver mounts, read-only.
    let csi = pod_spec(deployment)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("csi").is_some())
        .unwrap();
    assert_eq!(csi["csi"]["driver"], "csi.spiffe.io");
    assert_eq!(csi["csi"]["readOnly"], true);
    let csi_name = csi["name"].as_str().unwrap();
    let wardgate_args = command_line(container(deployment, "wardgate").unwrap());
    let endpoint = flag_value(&wardgate_args, "--spiffe-endpoint-socket").unwrap();
    let agent_socket = endpoint.strip_prefix("unix://").unwrap();
    let envoy_config = envoy_config(&rendered);
    let sds_pipe = str_at(
        cluster(&envoy_config, "spire_agent"),
        "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/pipe/path",
    );
    assert_eq!(sds_pipe, agent_socket);
    for name in ["envoy", "wardgate"] {
        let c = container(deployment, name).unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == csi_name)
            .unwrap_or_else(|| panic!("{name} mounts the agent socket"));
        assert_eq!(mount["readOnly"], true);
        assert!(agent_socket.starts_with(&format!("{}/", str_at(mount, "/mountPath"))));
    }
    assert!(
        mounts(container(deployment, "app").unwrap())
            .iter()
            .all(|(n, _)| n != csi_name),
        "the app does not need the agent socket"
    );
}

#[test]
fn the_wardgate_container_runs_the_images_entrypoint() {
    let Some(kubectl) = require_kubectl("deploy_manifests::entrypoint") else {
        return;
    };
    let rendered = render(&kubectl, "overlays/hospital-lab");
    let wardgate = container(rendered.one("Deployment").unwrap(), "wardgate").unwrap();
    let containerfile = read("deploy/container/Containerfile");
    let entrypoint = containerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("the Containerfile has an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).unwrap();
    assert_eq!(
        wardgate["command"],
        serde_json::json!(entrypoint),
        "the Deployment's command is the image's entrypoint"
    );
    let user = containerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert_eq!(
        user.trim(),
        format!(
            "{}:{}",
            wardgate["securityContext"]["runAsUser"], wardgate["securityContext"]["runAsGroup"]
        ),
        "the Deployment runs wardgate as the image's user"
    );
}
