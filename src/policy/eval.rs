//! Evaluation: the decision order (docs/ARCHITECTURE.md) applied to one request.
//!
//! `decide` and `decide_traced` share one generic body; the untraced instance carries no
//! tracing code at all. Only the rules the `index` files under this request's identities are
//! looked at, in bundle order, stopping at the first match. This module reads the compiled
//! `model` and asks the `index`; it never builds or changes either, never allocates on the
//! common path except identity parsing, never reads the clock, and touches nothing but the
//! policy and the request.

use smallvec::SmallVec;

use super::index::{Placement, RuleList};
use super::model::{Action, Policy, Rule};
use super::normalize;
use super::pattern::split_segments;
use super::trace::{NoTrace, RuleOutcome, Trace, TraceStep, Tracer};
use super::{
    Decided, Decision, HeaderLookup, HttpAttributes, PeerCertificate, Reason, Request, Verdict,
};
use crate::identity;

/// Longest break-glass reason accepted, in bytes.
pub const MAX_BREAK_GLASS_REASON: usize = 256;

type Segments<'a> = SmallVec<[&'a str; 16]>;

/// The request fields rules look at, normalised once.
struct Ctx<'r> {
    method: &'r str,
    /// The normalised path, split once into its segments.
    path_segments: Segments<'r>,
    host: &'r str,
    headers: &'r dyn HeaderLookup,
    time: jiff::Timestamp,
}

/// The first condition of a rule that failed.
#[derive(Clone, Copy)]
enum Mismatch {
    Method,
    Path,
    Host,
    Schedule,
    Header(usize),
}

fn mismatch(rule: &Rule, cx: &Ctx<'_>) -> Option<Mismatch> {
    if let Some(methods) = &rule.methods {
        if !methods.iter().any(|m| m.eq_ignore_ascii_case(cx.method)) {
            return Some(Mismatch::Method);
        }
    }
    if let Some(paths) = &rule.paths {
        if !paths.iter().any(|p| p.matches_split(&cx.path_segments)) {
            return Some(Mismatch::Path);
        }
    }
    if let Some(hosts) = &rule.hosts {
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(cx.host)) {
            return Some(Mismatch::Host);
        }
    }
    if let Some(s) = &rule.schedule {
        if !s.matches(cx.time) {
            return Some(Mismatch::Schedule);
        }
    }
    for (i, (name, allowed)) in rule.headers.iter().enumerate() {
        match cx.headers.header(name) {
            Some(v) if allowed.iter().any(|a| **a == *v) => {}
            _ => return Some(Mismatch::Header(i)),
        }
    }
    None
}

fn outcome(rule: &Rule, m: Option<Mismatch>) -> RuleOutcome {
    match m {
        None => RuleOutcome::Matched,
        Some(Mismatch::Method) => RuleOutcome::Method,
        Some(Mismatch::Path) => RuleOutcome::Path,
        Some(Mismatch::Host) => RuleOutcome::Host,
        Some(Mismatch::Schedule) => RuleOutcome::Schedule(
            rule.schedule
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_default(),
        ),
        Some(Mismatch::Header(i)) => RuleOutcome::Header(
            rule.headers
                .get(i)
                .map(|h| h.0.to_string())
                .unwrap_or_default(),
        ),
    }
}

/// Why the reference parser rejects `raw` (traced runs only; the fast check already said no).
fn id_error(raw: &str) -> String {
    match identity::parse_spiffe_id(raw) {
        Err(e) => e.to_string(),
        Ok(_) => "rejected".to_string(),
    }
}

/// Whether a break-glass reason is acceptable: non-empty, bounded, printable ASCII.
pub fn valid_break_glass_reason(v: &str) -> bool {
    !v.trim().is_empty()
        && v.len() <= MAX_BREAK_GLASS_REASON
        && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl Policy {
    /// Decide one request by the decision order (docs/ARCHITECTURE.md). Pure: same policy and
    /// request, same decision.
    pub fn decide(&self, request: &Request<'_>) -> Decision<'_> {
        self.evaluate(request, &mut NoTrace, &mut None)
    }

    /// Decide one request as [`Policy::decide`] does, and hand back the break-glass reason the
    /// decision accepted, so that a caller logging it need not read the header again.
    pub fn decide_stated<'p, 'r>(&'p self, request: &Request<'r>) -> Decided<'p, 'r> {
        let mut break_glass_reason = None;
        let decision = self.evaluate(request, &mut NoTrace, &mut break_glass_reason);
        Decided {
            decision,
            break_glass_reason,
        }
    }

    /// Decide one request and record why in `trace`. Returns exactly what [`Policy::decide`]
    /// returns for the same request.
    pub fn decide_traced(&self, request: &Request<'_>, trace: &mut Trace) -> Decision<'_> {
        self.evaluate(request, trace, &mut None)
    }

    fn trusts(&self, trust_domain: &str) -> bool {
        self.trust_domains.iter().any(|td| **td == *trust_domain)
    }

    /// The first rule of `list` (by position) that the index files under this pair and whose
    /// conditions all hold.
    #[inline]
    fn first_match(
        &self,
        list: RuleList,
        src: &Placement,
        dst: &Placement,
        cx: &Ctx<'_>,
    ) -> Option<u32> {
        let rules = match list {
            RuleList::Deny | RuleList::Allow => &self.rules,
            RuleList::BreakGlass => &self.break_glass,
        };
        self.index.first_match(list, src, dst, |i| {
            mismatch(&rules[i as usize], cx).is_none()
        })
    }

    fn segment_name(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.segments.get(i as usize))
            .map(|s| &*s.name)
    }

    /// The decision order. `stated` receives the break-glass reason of a break-glass allow.
    fn evaluate<'p, 'r, T: Tracer>(
        &'p self,
        req: &Request<'r>,
        t: &mut T,
        stated: &mut Option<&'r str>,
    ) -> Decision<'p> {
        let deny = |reason, src: Option<u32>, dst: Option<u32>| Decision {
            verdict: Verdict::Deny,
            reason,
            rule: None,
            source_segment: self.segment_name(src),
            destination_segment: self.segment_name(dst),
        };

        // 2. Source identity.
        let Some(raw_source) = req.source.filter(|s| !s.is_empty()) else {
            t.step(|| TraceStep::SourceRejected {
                why: "no source principal (the caller presented no SPIFFE identity)".into(),
            });
            return deny(Reason::Unauthenticated, None, None);
        };
        // The zero-allocation check; it accepts exactly what `identity::parse_spiffe_id` (the
        // `spiffe` crate) accepts, which is asked again only to explain a rejection.
        let Some((src_td, src_path)) = identity::spiffe_id_parts(raw_source) else {
            t.step(|| TraceStep::SourceRejected {
                why: format!(
                    "`{raw_source}` is not a valid SPIFFE ID: {}",
                    id_error(raw_source)
                ),
            });
            return deny(Reason::Unauthenticated, None, None);
        };
        if !self.trusts(src_td) {
            t.step(|| TraceStep::SourceRejected {
                why: format!("trust domain `{src_td}` is not one of the bundle's trust_domains"),
            });
            return deny(Reason::Unauthenticated, None, None);
        }
        // One look-up in the index per identity: its segment and the rules that can name it.
        let src = self.index.source(src_td, src_path);
        let src_seg = src.segment();
        t.step(|| TraceStep::Source {
            id: raw_source.to_string(),
            segment: self.segment_name(src_seg).map(str::to_string),
        });

        // Destination: unusable means unknown, and only rules without `to` can apply.
        let raw_destination = req.destination.filter(|d| !d.is_empty());
        let destination = raw_destination.map(identity::spiffe_id_parts);
        let dst_id = match destination {
            Some(Some((td, p))) if self.trusts(td) => Some((td, p)),
            _ => None,
        };
        let dst = self.index.destination(dst_id);
        let dst_seg = dst.segment();
        t.step(|| TraceStep::Destination {
            id: dst_id.and(raw_destination).map(str::to_string),
            segment: self.segment_name(dst_seg).map(str::to_string),
            note: match (raw_destination, destination) {
                (raw, Some(None)) => Some(format!(
                    "not a valid SPIFFE ID: {}",
                    id_error(raw.unwrap_or_default())
                )),
                (_, None) => Some("no destination principal".into()),
                (_, Some(Some(_))) if dst_id.is_none() => {
                    Some("outside the bundle's trust_domains".into())
                }
                (_, Some(Some(_))) => None,
            },
        });

        // 3. Path: none to judge without the HTTP attributes, else one unambiguous form.
        if req.http == HttpAttributes::Absent {
            t.step(|| TraceStep::PathRejected {
                why: "the request carries no HTTP attributes (no method, path or headers)".into(),
            });
            return deny(Reason::BadPath, src_seg, dst_seg);
        }
        let path = match normalize::path(req.path) {
            Ok(p) => p,
            Err(e) => {
                t.step(|| TraceStep::PathRejected {
                    why: format!("`{}`: {e}", req.path),
                });
                return deny(Reason::BadPath, src_seg, dst_seg);
            }
        };
        t.step(|| TraceStep::Path {
            raw: req.path.to_string(),
            normalized: path.to_string(),
        });

        // 4. Forwarded certificate and SVID lifetime.
        let max_lifetime = src_seg
            .and_then(|s| self.segments.get(s as usize))
            .and_then(|s| s.max_svid_lifetime);
        match req.peer_certificate {
            PeerCertificate::NotForwarded => {
                if let Some(max) = max_lifetime {
                    t.step(|| TraceStep::Certificate {
                        result: format!("not forwarded, but the source's segment requires a certificate valid at most {max:#}"),
                    });
                    return deny(Reason::SvidLifetime, src_seg, dst_seg);
                }
            }
            PeerCertificate::Unreadable(why) => {
                t.step(|| TraceStep::Certificate {
                    result: format!("rejected: {why}"),
                });
                return deny(Reason::BadCertificate, src_seg, dst_seg);
            }
            PeerCertificate::Parsed(cert) => {
                let problem = if cert.uri_sans.len() != 1 {
                    Some(format!(
                        "has {} URI SANs, exactly one is required",
                        cert.uri_sans.len()
                    ))
                } else if cert.uri_sans[0] != raw_source {
                    Some(format!(
                        "URI SAN `{}` differs from the principal",
                        cert.uri_sans[0]
                    ))
                } else if cert.is_ca {
                    Some("is a CA certificate, not a leaf".to_string())
                } else if req.time < cert.not_before || req.time > cert.not_after {
                    Some(format!(
                        "is outside its validity ({} to {})",
                        cert.not_before, cert.not_after
                    ))
                } else {
                    None
                };
                if let Some(p) = problem {
                    t.step(|| TraceStep::Certificate { result: p });
                    return deny(Reason::BadCertificate, src_seg, dst_seg);
                }
                let lifetime = cert.not_after.duration_since(cert.not_before);
                if let Some(max) = max_lifetime {
                    if lifetime > max {
                        t.step(|| TraceStep::Certificate {
                            result: format!("valid for {lifetime:#}, over the segment's max_svid_lifetime of {max:#}"),
                        });
                        return deny(Reason::SvidLifetime, src_seg, dst_seg);
                    }
                }
                t.step(|| TraceStep::Certificate {
                    result: format!("ok (valid for {lifetime:#})"),
                });
            }
        }

        // 5-8. Rules, through the index.
        let host = normalize::host(req.host);
        let cx = Ctx {
            method: req.method,
            path_segments: split_segments(&path),
            host,
            headers: req.headers,
            time: req.time,
        };

        let decided = |verdict, reason, rule: &'p Rule| Decision {
            verdict,
            reason,
            rule: Some(&*rule.name),
            source_segment: self.segment_name(src_seg),
            destination_segment: self.segment_name(dst_seg),
        };
        let denied = self.first_match(RuleList::Deny, &src, &dst, &cx);
        let allowed = match denied {
            Some(_) => None,
            None => self.first_match(RuleList::Allow, &src, &dst, &cx),
        };
        self.trace_rules(t, &src, &dst, &cx, denied.or(allowed));
        if let Some(i) = denied {
            return decided(Verdict::Deny, Reason::Rule, &self.rules[i as usize]);
        }
        if let Some(i) = allowed {
            return decided(Verdict::Allow, Reason::Rule, &self.rules[i as usize]);
        }

        // 7. Break-glass.
        if let Some(header) = self.break_glass_header.as_deref() {
            if let Some(value) = req.headers.header(header) {
                if !valid_break_glass_reason(value) {
                    t.step(|| TraceStep::BreakGlass {
                        result: format!("ignored: `{header}` must be non-empty printable text of at most {MAX_BREAK_GLASS_REASON} bytes"),
                    });
                } else {
                    let hit = self.first_match(RuleList::BreakGlass, &src, &dst, &cx);
                    self.trace_break_glass(t, &src, &dst, &cx);
                    if let Some(i) = hit {
                        *stated = Some(value);
                        return decided(
                            Verdict::Allow,
                            Reason::BreakGlass,
                            &self.break_glass[i as usize],
                        );
                    }
                }
            }
        }

        // 8.
        deny(Reason::DefaultDeny, src_seg, dst_seg)
    }

    /// Record every indexed rule for this pair in bundle order (traced runs only).
    fn trace_rules<T: Tracer>(
        &self,
        t: &mut T,
        src: &Placement,
        dst: &Placement,
        cx: &Ctx<'_>,
        decided_by: Option<u32>,
    ) {
        // The candidate list is built inside the step closure, so the untraced path (whose
        // tracer never calls it) does no work.
        let mut list = Vec::new();
        t.step(|| {
            list = self
                .index
                .candidates(&[RuleList::Deny, RuleList::Allow], src, dst);
            TraceStep::NotApplicable {
                rules: self.rules.len() - list.len(),
            }
        });
        let denied_first =
            decided_by.is_some_and(|i| self.rules[i as usize].action == Action::Deny);
        for i in list {
            let rule = &self.rules[i as usize];
            let reached = match rule.action {
                Action::Deny => !(denied_first && decided_by.is_some_and(|d| i > d)),
                Action::Allow => !denied_first && decided_by.is_none_or(|d| i <= d),
            };
            t.step(|| TraceStep::Rule {
                rule: rule.name.to_string(),
                kind: match rule.action {
                    Action::Allow => "allow",
                    Action::Deny => "deny",
                },
                outcome: if reached {
                    outcome(rule, mismatch(rule, cx))
                } else {
                    RuleOutcome::NotReached
                },
            });
        }
    }

    fn trace_break_glass<T: Tracer>(
        &self,
        t: &mut T,
        src: &Placement,
        dst: &Placement,
        cx: &Ctx<'_>,
    ) {
        let mut list = Vec::new();
        t.step(|| {
            list = self.index.candidates(&[RuleList::BreakGlass], src, dst);
            TraceStep::BreakGlass {
                result: format!(
                    "requested; {} entry(ies) apply to these identities",
                    list.len()
                ),
            }
        });
        for i in list {
            let rule = &self.break_glass[i as usize];
            t.step(|| TraceStep::Rule {
                rule: rule.name.to_string(),
                kind: "break_glass",
                outcome: outcome(rule, mismatch(rule, cx)),
            });
        }
    }
}
