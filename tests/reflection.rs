//! gRPC reflection, asked by a real reflection client: PyPI's grpcio-reflection (the
//! `ProtoReflectionDescriptorDatabase` behind Python gRPC tooling, which speaks the v1alpha
//! protocol that older tools still use). Over the Unix socket it lists the Authorization and
//! Health services and resolves `Check` to its request and response types, which needs every
//! imported file of the descriptor set. Over the mTLS listener a caller that the listener admits
//! but `--reflection-allow` does not name is refused PERMISSION_DENIED, while a named one gets
//! the same listing; with no `--reflection-allow` at all reflection is not served there.
//!
//! Needs grpcio and grpcio-reflection, which scripts/install-test-deps.sh installs: skipped
//! loudly without them, except under `CI=true`.

mod support;

use std::io::Write as _;
use std::process::Command;

use support::mtls::{issue_wardgate_svid, Caller, TlsWardgate, WARDGATE_DNS};
use support::pki::Pki;
use support::process::Wardgate;
use support::shipped_bundle;

const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";

/// Lists the services over reflection and resolves Authorization/Check through a descriptor
/// pool fed only by reflection. Prints `service NAME` lines and one `method` line, or
/// `refused CODE` and exits 3 when the server refuses.
const CLIENT: &str = r#"
import sys, grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool

target = sys.argv[1]
# grpcio sends a unix: target's path as :authority, which HTTP/2 servers refuse (see
# docs/examples/check_over_unix_socket.py); a plain name instead.
options = [("grpc.default_authority", "wardgate")]
if target.startswith("unix:"):
    channel = grpc.insecure_channel(target, options=options)
else:
    root, cert, key, name = sys.argv[2:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(root, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])
db = ProtoReflectionDescriptorDatabase(channel)
try:
    services = list(db.get_services())
except grpc.RpcError as e:
    print("refused", e.code().name, e.details())
    sys.exit(3)
for s in services:
    print("service", s)
check = DescriptorPool(db).FindServiceByName("envoy.service.auth.v3.Authorization").FindMethodByName("Check")
print("method", check.full_name, check.input_type.full_name, check.output_type.full_name)
"#;

/// Whether grpcio-reflection imports; skip loudly (fail under CI=true) when not.
fn require_reflection_client(test: &str) -> bool {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_reflection.v1alpha.proto_reflection_descriptor_database",
        ])
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned(),
        Err(e) => format!("python3: {e}"),
    };
    let help =
        format!("python3 cannot import grpc_reflection: run scripts/install-test-deps.sh ({why})");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {help}");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {help}\n{bar}\n"
    );
    false
}

/// Run the client with `args`; (exit code, stdout + stderr).
fn reflect(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_full_listing(code: Option<i32>, text: &str) {
    assert_eq!(code, Some(0), "{text}");
    for service in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
    ] {
        assert!(
            text.lines().any(|l| l == format!("service {service}")),
            "{service} not listed: {text}"
        );
    }
    assert!(
        text.lines().any(|l| l
            == "method envoy.service.auth.v3.Authorization.Check \
                envoy.service.auth.v3.CheckRequest envoy.service.auth.v3.CheckResponse"),
        "Check did not resolve: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_over_the_unix_socket() {
    if !require_reflection_client("reflection_lists_the_services_over_the_unix_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wardgate.sock");
    let wardgate = Wardgate::start(&shipped_bundle(), &socket, dir.path(), &[])
        .await
        .unwrap();
    let target = format!("unix:{}", socket.display());
    let (code, text) = reflect(&[&target]);
    assert_full_listing(code, &text);
    drop(wardgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_on_the_mtls_listener_only_for_allow_listed_callers() {
    if !require_reflection_client("reflection_on_the_mtls_listener_only_for_allow_listed_callers") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("wardgate-reflection-")
        .tempdir()
        .unwrap();
    let mut pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let own = issue_wardgate_svid(&mut pki, "wardgate").unwrap();
    let hospital_ca = pki.trust_bundle_dir.join("hospital.example.pem");
    let base: Vec<String> = [
        "--svid-source",
        "files",
        "--svid-cert",
        own.cert_path.to_str().unwrap(),
        "--svid-key",
        own.key_path.to_str().unwrap(),
        "--trust-bundle",
        &format!("hospital.example={}", hospital_ca.display()),
        "--allow-caller",
        EHR,
        "--allow-caller",
        LAB,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let as_caller = |listen: std::net::SocketAddr, name: &str| {
        let svid = pki.svid(name).unwrap();
        reflect(&[
            &listen.to_string(),
            hospital_ca.to_str().unwrap(),
            svid.cert_path.to_str().unwrap(),
            svid.key_path.to_str().unwrap(),
            WARDGATE_DNS,
        ])
    };

    // ehr is named by --reflection-allow; lab is admitted to the listener but not named.
    let args = [base.clone(), vec!["--reflection-allow".into(), EHR.into()]].concat();
    let mut wardgate = TlsWardgate::start(&shipped_bundle(), dir.path(), &args)
        .await
        .unwrap();
    let lab_caller = Caller::new(
        wardgate.listen,
        &[pki.cas["hospital.example"].cert_der.clone()],
        Some(pki.svid("lab").unwrap()),
    )
    .unwrap();
    wardgate.wait_until_serving(&lab_caller).await.unwrap();
    let (code, text) = as_caller(wardgate.listen, "ehr");
    assert_full_listing(code, &text);
    let (code, text) = as_caller(wardgate.listen, "lab");
    assert_eq!(code, Some(3), "lab must be refused: {text}");
    assert!(
        text.starts_with("refused PERMISSION_DENIED"),
        "{text}\n{}",
        wardgate.log()
    );
    // Check itself still works for lab: only reflection is gated.
    assert!(support::mtls::is_allow(
        &lab_caller.check_once().await.unwrap()
    ));
    drop(wardgate);

    // Without --reflection-allow, reflection is not served on the mTLS listener at all.
    let mut wardgate = TlsWardgate::start(&shipped_bundle(), dir.path(), &base)
        .await
        .unwrap();
    let lab_caller = Caller::new(
        wardgate.listen,
        &[pki.cas["hospital.example"].cert_der.clone()],
        Some(pki.svid("lab").unwrap()),
    )
    .unwrap();
    wardgate.wait_until_serving(&lab_caller).await.unwrap();
    let (code, text) = as_caller(wardgate.listen, "ehr");
    assert_eq!(code, Some(3), "{text}");
    assert!(text.starts_with("refused UNIMPLEMENTED"), "{text}");
}
