//! Tests of the Envoy adapter: `AuthzService::respond` from `CheckRequest` to `CheckResponse`,
//! in-process. The fixtures (bundle, principals, request builder, response readers) are shared
//! with the gRPC server's tests in `crate::grpc`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arc_swap::ArcSwapOption;
use envoy_types::ext_authz::v3::pb::{
    DeniedHttpResponse, HeaderAppendAction, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::value::Kind;

use super::response::is_wardgate_header;
use super::*;

pub(crate) const POLICY: &str = r#"
version: 1
revision: 7
trust_domains: [hospital.example, partner-lab.example]
segments:
  clinical:
    members: ["spiffe://hospital.example/ns/clinical/**"]
  vendor:
    members: ["spiffe://partner-lab.example/**"]
rules:
  - name: vendor-never-reaches-clinical
    action: deny
    from: [vendor]
    to: [clinical]
  - name: ehr-reads-lab-results
    from: ["spiffe://hospital.example/ns/clinical/sa/ehr"]
    to: ["spiffe://hospital.example/ns/clinical/sa/lab"]
    methods: [GET]
    paths: ["/results/**"]
"#;

pub(crate) const EHR: &str = "spiffe://hospital.example/ns/clinical/sa/ehr";
pub(crate) const LAB: &str = "spiffe://hospital.example/ns/clinical/sa/lab";
pub(crate) const VENDOR: &str = "spiffe://partner-lab.example/ns/vendor/sa/reflab";

fn service() -> AuthzService {
    let policy = Policy::from_yaml_str("test.yaml", POLICY).unwrap();
    let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
    AuthzService::new(handle, AuthzConfig::default())
}

pub(crate) fn check(source: &str, destination: &str, method: &str, path: &str) -> CheckRequest {
    check_with_headers(source, destination, method, path, &[])
}

fn check_with_headers(
    source: &str,
    destination: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: source.to_owned(),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: destination.to_owned(),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                time: None,
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "lab.clinical.svc".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn ok_response(response: &CheckResponse) -> &OkHttpResponse {
    match response.http_response.as_ref() {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OK response, got {other:?}"),
    }
}

pub(crate) fn denied_response(response: &CheckResponse) -> &DeniedHttpResponse {
    match response.http_response.as_ref() {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denied response, got {other:?}"),
    }
}

fn header<'r>(
    headers: &'r [envoy_types::ext_authz::v3::pb::HeaderValueOption],
    name: &str,
) -> Option<&'r str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn meta<'m>(response: &'m CheckResponse, key: &str) -> &'m Kind {
    response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
        .unwrap_or_else(|| panic!("metadata has no {key}"))
}

pub(crate) fn status_code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}

#[test]
fn allow_adds_rule_header_and_overwrites() {
    let response = service().respond(&check(EHR, LAB, "GET", "/results/42?full=1"));
    assert_eq!(status_code(&response), 0);
    let ok = ok_response(&response);
    assert_eq!(
        header(&ok.headers, RULE_HEADER),
        Some("ehr-reads-lab-results")
    );
    let added = ok
        .headers
        .iter()
        .find(|h| h.header.as_ref().is_some_and(|h| h.key == RULE_HEADER));
    assert_eq!(
        added.map(|h| h.append_action),
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
    );
    assert!(ok.headers_to_remove.is_empty());
}

#[test]
fn allow_removes_forged_wardgate_headers() {
    let request = check_with_headers(
        EHR,
        LAB,
        "GET",
        "/results/42",
        &[
            ("x-wardgate-rule", "admin-everything"),
            ("x-wardgate-break-glass", "true"),
            ("x-wardgate-anything", "1"),
            ("x-purpose-of-use", "TREAT"),
        ],
    );
    let response = service().respond(&request);
    let ok = ok_response(&response);
    // The forged rule header is overwritten, never listed for removal (that could remove
    // our own value); the others are removed; unrelated headers are left alone.
    assert_eq!(
        header(&ok.headers, RULE_HEADER),
        Some("ehr-reads-lab-results")
    );
    assert_eq!(
        ok.headers_to_remove,
        vec![
            "x-wardgate-anything".to_owned(),
            "x-wardgate-break-glass".to_owned()
        ]
    );
}

#[test]
fn deny_has_reason_header_and_json_body_without_rule() {
    let response = service().respond(&check(VENDOR, LAB, "GET", "/results/42"));
    assert_eq!(status_code(&response), tonic::Code::PermissionDenied as i32);
    let denied = denied_response(&response);
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(header(&denied.headers, REASON_HEADER), Some("rule"));
    assert_eq!(
        header(&denied.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(denied.body, r#"{"reason":"rule"}"#);
    assert!(!denied.body.contains("vendor-never-reaches-clinical"));
    assert!(header(&denied.headers, RULE_HEADER).is_none());
    // The rule is in the metadata for Envoy's access log, not in what the client sees.
    assert_eq!(
        meta(&response, "rule"),
        &Kind::StringValue("vendor-never-reaches-clinical".into())
    );
}

#[test]
fn default_deny_and_bad_path() {
    let service = service();
    let response = service.respond(&check(EHR, LAB, "GET", "/admin"));
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"default_deny"}"#
    );
    let response = service.respond(&check(EHR, LAB, "GET", "/results%2F..%2Fadmin"));
    assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);
    // A dot-segment is refused rather than resolved: an upstream may read it differently.
    let response = service.respond(&check(EHR, LAB, "GET", "/results/../admin"));
    assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);
}

#[test]
fn metadata_names_decision_segments_revision_and_time() {
    let response = service().respond(&check(EHR, LAB, "GET", "/results/1"));
    assert_eq!(
        meta(&response, "decision"),
        &Kind::StringValue("allow".into())
    );
    assert_eq!(meta(&response, "reason"), &Kind::StringValue("rule".into()));
    assert_eq!(
        meta(&response, "rule"),
        &Kind::StringValue("ehr-reads-lab-results".into())
    );
    assert_eq!(
        meta(&response, "source_segment"),
        &Kind::StringValue("clinical".into())
    );
    assert_eq!(
        meta(&response, "destination_segment"),
        &Kind::StringValue("clinical".into())
    );
    assert_eq!(meta(&response, "bundle_revision"), &Kind::NumberValue(7.0));
    assert!(matches!(meta(&response, "evaluation_us"), Kind::NumberValue(us) if *us >= 0.0));
}

#[test]
fn no_policy_denies() {
    let service = AuthzService::new(Arc::new(ArcSwapOption::empty()), AuthzConfig::default());
    let response = service.respond(&check(EHR, LAB, "GET", "/results/1"));
    assert_eq!(denied_response(&response).body, r#"{"reason":"no_policy"}"#);
    assert!(matches!(
        meta(&response, "bundle_revision"),
        Kind::NullValue(_)
    ));
}

#[test]
fn malformed_requests_deny_never_error() {
    let service = service();
    let empty = service.respond(&CheckRequest::default());
    assert_eq!(
        denied_response(&empty).body,
        r#"{"reason":"unauthenticated"}"#
    );

    let mut no_http = check(EHR, LAB, "GET", "/results/1");
    if let Some(request) = no_http.attributes.as_mut().and_then(|a| a.request.as_mut()) {
        request.http = None;
    }
    let response = service.respond(&no_http);
    assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);

    let response = service.respond(&check("", LAB, "GET", "/results/1"));
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"unauthenticated"}"#
    );
}

#[test]
fn pinned_destination_applies_only_when_envoy_sends_none() {
    let policy = Policy::from_yaml_str("test.yaml", POLICY).unwrap();
    let handle: PolicyHandle = Arc::new(ArcSwapOption::from_pointee(policy));
    let service = AuthzService::new(
        handle,
        AuthzConfig {
            destination_principal: Some(LAB.to_owned()),
            ..AuthzConfig::default()
        },
    );
    let response = service.respond(&check(EHR, "", "GET", "/results/1"));
    assert_eq!(status_code(&response), 0);
    let response = service.respond(&check(
        EHR,
        "spiffe://hospital.example/ns/clinical/sa/imaging",
        "GET",
        "/results/1",
    ));
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"default_deny"}"#
    );
}

#[test]
fn unreadable_forwarded_certificate_is_refused() {
    let mut request = check(EHR, LAB, "GET", "/results/1");
    if let Some(source) = request.attributes.as_mut().and_then(|a| a.source.as_mut()) {
        source.certificate = "-----BEGIN%20CERTIFICATE-----%0Agarbage".to_owned();
    }
    let response = service().respond(&request);
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"bad_certificate"}"#
    );
}

#[tokio::test]
async fn grpc_entry_point_never_errors() {
    let response = service()
        .check(tonic::Request::new(CheckRequest::default()))
        .await;
    assert!(response.is_ok());
}

#[test]
fn wardgate_header_prefix_is_case_insensitive() {
    assert!(is_wardgate_header("x-wardgate-rule"));
    assert!(is_wardgate_header("X-Wardgate-Rule"));
    assert!(!is_wardgate_header("x-wardgate"));
    assert!(!is_wardgate_header("x-ward"));
}

fn without_http(mut check: CheckRequest) -> CheckRequest {
    if let Some(request) = check.attributes.as_mut().and_then(|a| a.request.as_mut()) {
        request.http = None;
    }
    check
}

#[test]
fn missing_http_attributes_are_a_step_of_the_decision_order() {
    let service = service();
    // A trusted caller passes the source step; the path step has no path to judge.
    let response = service.respond(&without_http(check(EHR, LAB, "GET", "/results/1")));
    assert_eq!(denied_response(&response).body, r#"{"reason":"bad_path"}"#);
    assert_eq!(
        meta(&response, "source_segment"),
        &Kind::StringValue("clinical".into())
    );
    // A caller outside the trust domains is refused at the source step, before the path.
    let stranger = "spiffe://elsewhere.example/ns/x/sa/y";
    let response = service.respond(&without_http(check(stranger, LAB, "GET", "/results/1")));
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"unauthenticated"}"#
    );
}

#[test]
fn break_glass_allow_names_the_entry_upstream() {
    let bundle = format!(
        "{POLICY}break_glass:\n  header: X-Break-Glass-Reason\n  allow:\n    - name: ehr-emergency-admin\n      from: [\"{EHR}\"]\n      to: [\"{LAB}\"]\n      paths: [\"/admin/**\"]\n"
    );
    let policy = Policy::from_yaml_str("bg.yaml", &bundle).unwrap();
    let service = AuthzService::new(
        Arc::new(ArcSwapOption::from_pointee(policy)),
        AuthzConfig::default(),
    );
    let response = service.respond(&check_with_headers(
        EHR,
        LAB,
        "GET",
        "/admin/users",
        &[("x-break-glass-reason", "code blue in ward 3")],
    ));
    let ok = ok_response(&response);
    assert_eq!(
        header(&ok.headers, BREAK_GLASS_HEADER),
        Some("ehr-emergency-admin")
    );
    assert_eq!(
        meta(&response, "reason"),
        &Kind::StringValue("break_glass".into())
    );
    // Without a stated reason the same call is not an emergency.
    let response = service.respond(&check(EHR, LAB, "GET", "/admin/users"));
    assert_eq!(
        denied_response(&response).body,
        r#"{"reason":"default_deny"}"#
    );
}
