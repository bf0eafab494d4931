//! `Decision` → Envoy's `CheckResponse`: the outbound direction of the adapter.
//!
//! This module owns what Envoy and the client see of a decision: an allow is an OK response
//! that adds `x-wardgate-rule` (and `x-wardgate-break-glass` on a break-glass allow) to the
//! upstream request and removes every other client-sent `x-wardgate-*` header; a denial is an
//! HTTP 403 with `x-wardgate-reason` and a JSON body naming the reason only. Both carry dynamic
//! metadata (decision, reason, rule, segments, bundle revision, evaluation time, whether it was
//! enforced) for Envoy's access log. In audit mode ([`Mode::Audit`]) a denial is answered like
//! an allow instead, with `x-wardgate-audit: would-deny <reason>` on the upstream request and no
//! rule header. It must never change a decision, never answer with a gRPC error status other
//! than OK or PERMISSION_DENIED, and never put a rule name or any request value into a denial a
//! client can see.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::{value::Kind, NullValue, Struct, Value};
use envoy_types::pb::google::rpc;

use super::audit::Mode;
use crate::policy::{Decision, Reason, Verdict};

/// Header added to the upstream request on allow, naming the rule that allowed it.
pub const RULE_HEADER: &str = "x-wardgate-rule";
/// Header added to the upstream request when a break-glass entry allowed it (value: its name).
pub const BREAK_GLASS_HEADER: &str = "x-wardgate-break-glass";
/// Header on a denial, naming the reason (`Reason::as_str`).
pub const REASON_HEADER: &str = "x-wardgate-reason";
/// Header added to the upstream request in audit mode when the decision was a denial that was
/// not enforced (value: `would-deny <reason>`).
pub const AUDIT_HEADER: &str = "x-wardgate-audit";
/// wardgate's own header namespace: client-sent headers with this prefix never reach upstream.
pub const HEADER_PREFIX: &str = "x-wardgate-";

/// Render a decision as Envoy's `CheckResponse`; in `mode` audit, a denial as an allow that
/// says so upstream.
pub(super) fn render(
    decision: &Decision<'_>,
    revision: Option<u64>,
    elapsed: Duration,
    client_headers: Option<&HashMap<String, String>>,
    mode: Mode,
) -> CheckResponse {
    let mut response = CheckResponse::new();
    let metadata = metadata(decision, revision, elapsed, mode);
    response.set_dynamic_metadata(Some(metadata));

    match (decision.verdict, mode) {
        (Verdict::Allow, _) => {
            let mut set_by_us: [Option<(&str, &str)>; 2] = [None, None];
            if let Some(rule) = decision.rule {
                set_by_us[0] = Some((RULE_HEADER, rule));
            }
            if decision.reason == Reason::BreakGlass {
                set_by_us[1] = Some((BREAK_GLASS_HEADER, decision.rule.unwrap_or("true")));
            }
            allow(&mut response, &set_by_us, client_headers);
        }
        (Verdict::Deny, Mode::Audit) => {
            let would_deny = format!("would-deny {}", decision.reason.as_str());
            allow(
                &mut response,
                &[Some((AUDIT_HEADER, would_deny.as_str()))],
                client_headers,
            );
        }
        (Verdict::Deny, Mode::Enforce) => {
            response.status = Some(rpc::Status {
                code: tonic::Code::PermissionDenied as i32,
                message: String::new(),
                details: Vec::new(),
            });
            let reason = decision.reason.as_str();
            let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(HttpStatusCode::Forbidden);
            denied.add_header(REASON_HEADER, reason, overwrite, false);
            denied.add_header("content-type", "application/json", overwrite, false);
            // Reason names are fixed snake_case identifiers: nothing to escape.
            denied.set_body(format!("{{\"reason\":\"{reason}\"}}"));
            response.set_http_response(denied);
        }
    }
    response
}

/// Make `response` an OK answer that sets `ours` on the upstream request and removes every
/// other client-sent header in wardgate's namespace.
fn allow(
    response: &mut CheckResponse,
    ours: &[Option<(&str, &str)>],
    client_headers: Option<&HashMap<String, String>>,
) {
    response.status = Some(rpc::Status {
        code: tonic::Code::Ok as i32,
        message: String::new(),
        details: Vec::new(),
    });
    let mut ok = OkHttpResponseBuilder::new();
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    for (name, value) in ours.iter().flatten() {
        ok.add_header(*name, *value, overwrite, false);
    }
    // Every client-sent header in our namespace goes, except those we overwrite above:
    // Envoy applies `headers_to_remove` after `headers` (verified with Envoy 1.40 in
    // tests/envoy_e2e.rs), so listing ours as well would remove our own value.
    let mut forged: Vec<&String> = client_headers
        .into_iter()
        .flat_map(HashMap::keys)
        .filter(|name| is_wardgate_header(name))
        .filter(|name| {
            !ours
                .iter()
                .flatten()
                .any(|(ours, _)| name.eq_ignore_ascii_case(ours))
        })
        .collect();
    forged.sort_unstable();
    for name in forged {
        ok.remove_header(name.as_str());
    }
    response.set_http_response(ok);
}

/// Whether `name` is in wardgate's header namespace (case-insensitive).
pub(super) fn is_wardgate_header(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name.as_bytes()[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX.as_bytes())
}

/// The dynamic metadata Envoy attaches to the request (namespace
/// `envoy.filters.http.ext_authz`), for access logs and later filters.
fn metadata(
    decision: &Decision<'_>,
    revision: Option<u64>,
    elapsed: Duration,
    mode: Mode,
) -> Struct {
    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }
    fn optional(s: Option<&str>) -> Value {
        s.map_or(
            Value {
                kind: Some(Kind::NullValue(NullValue::NullValue as i32)),
            },
            string,
        )
    }
    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    let mut fields = HashMap::with_capacity(8);
    fields.insert("decision".to_owned(), string(decision.verdict.as_str()));
    fields.insert("reason".to_owned(), string(decision.reason.as_str()));
    fields.insert("rule".to_owned(), optional(decision.rule));
    fields.insert(
        "source_segment".to_owned(),
        optional(decision.source_segment),
    );
    fields.insert(
        "destination_segment".to_owned(),
        optional(decision.destination_segment),
    );
    // Revisions are small integers in practice; f64 holds every integer below 2^53 exactly.
    #[allow(clippy::cast_precision_loss)]
    let revision = revision.map_or(
        Value {
            kind: Some(Kind::NullValue(NullValue::NullValue as i32)),
        },
        |r| number(r as f64),
    );
    fields.insert("bundle_revision".to_owned(), revision);
    fields.insert(
        "evaluation_us".to_owned(),
        number(elapsed.as_secs_f64() * 1e6),
    );
    // `decision` is the verdict as decided; in audit mode Envoy was told to allow regardless.
    fields.insert(
        "enforced".to_owned(),
        Value {
            kind: Some(Kind::BoolValue(mode.enforces())),
        },
    );
    Struct { fields }
}
