//! Evaluation: the decision order of DESIGN §3 applied to one request.
//!
//! `decide` and `decide_traced` share one generic body; the untraced instance carries no
//! tracing code at all. Only rules filed under the (source key, destination key) pairs of this
//! request's identities are looked at, in bundle order, stopping at the first match.
//! Nothing here allocates on the common path except identity parsing, reads the clock, or
//! touches anything but the policy and the request.

use smallvec::SmallVec;

use super::compile::{split_segments, Action, PairIndex, Policy, Rule, Slot, ANY};
use super::normalize;
use super::pattern::{Pattern, Seg};
use super::trace::{NoTrace, RuleOutcome, Trace, TraceStep, Tracer};
use super::{
    Decided, Decision, HeaderLookup, HttpAttributes, PeerCertificate, Reason, Request, Verdict,
};
use crate::identity;

/// Longest break-glass reason accepted, in bytes.
pub const MAX_BREAK_GLASS_REASON: usize = 256;

type Keys = SmallVec<[u32; 8]>;
type Segments<'a> = SmallVec<[&'a str; 16]>;

/// [`Pattern::matches_path`] on a path already split into segments (`[]` is the root).
#[inline]
fn path_matches(pattern: &Pattern, segs: &[&str]) -> bool {
    let want = pattern.segments();
    let len_ok = if pattern.more() {
        segs.len() > want.len()
    } else {
        segs.len() == want.len()
    };
    len_ok
        && want.iter().zip(segs).all(|(w, s)| match w {
            Seg::Any => true,
            Seg::Literal(l) => **l == **s,
        })
}

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
        if !paths.iter().any(|p| path_matches(p, &cx.path_segments)) {
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

/// The lowest-numbered matching rule across the buckets of every key pair.
fn first_match(
    index: &PairIndex,
    rules: &[Rule],
    src: &Keys,
    dst: &Keys,
    cx: &Ctx<'_>,
) -> Option<u32> {
    let mut best = u32::MAX;
    for &s in src {
        for &d in dst {
            if let Some(bucket) = index.get(&(s, d)) {
                for &i in bucket {
                    if i >= best {
                        break;
                    }
                    if mismatch(&rules[i as usize], cx).is_none() {
                        best = i;
                        break;
                    }
                }
            }
        }
    }
    (best != u32::MAX).then_some(best)
}

/// Every rule index filed under any pair, ascending and without duplicates.
fn candidates(indexes: &[&PairIndex], src: &Keys, dst: &Keys) -> Vec<u32> {
    let mut out = Vec::new();
    for index in indexes {
        for &s in src {
            for &d in dst {
                if let Some(bucket) = index.get(&(s, d)) {
                    out.extend_from_slice(bucket);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
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

    /// Walk the identity trie once: push the keys of the `side` patterns matching the identity
    /// into `keys`, and return its segment (segments never overlap, so there is at most one).
    #[inline]
    fn identity_keys(
        &self,
        trust_domain: &str,
        path: &str,
        side: Slot,
        keys: &mut Keys,
    ) -> Option<u32> {
        let mut seg = None;
        self.id_trie.lookup(trust_domain, path, &mut |slot, k| {
            if slot == Slot::Segment {
                seg = Some(k);
            } else if slot == side {
                keys.push(k);
            }
        });
        seg
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
        // One walk of the identity trie per identity: its segment and its pattern keys.
        let mut src_keys = Keys::new();
        let src_seg = self.identity_keys(src_td, src_path, Slot::From, &mut src_keys);
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
        let mut dst_keys = Keys::new();
        let dst_seg = dst_id.and_then(|(td, p)| self.identity_keys(td, p, Slot::To, &mut dst_keys));
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
        if let Some(s) = src_seg {
            src_keys.push(s);
        }
        if let Some(s) = dst_seg {
            dst_keys.push(s);
        }
        dst_keys.push(ANY);
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
        let denied = first_match(&self.deny_index, &self.rules, &src_keys, &dst_keys, &cx);
        let allowed = match denied {
            Some(_) => None,
            None => first_match(&self.allow_index, &self.rules, &src_keys, &dst_keys, &cx),
        };
        self.trace_rules(t, &src_keys, &dst_keys, &cx, denied.or(allowed));
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
                    let hit = first_match(
                        &self.break_glass_index,
                        &self.break_glass,
                        &src_keys,
                        &dst_keys,
                        &cx,
                    );
                    self.trace_break_glass(t, &src_keys, &dst_keys, &cx);
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
        src: &Keys,
        dst: &Keys,
        cx: &Ctx<'_>,
        decided_by: Option<u32>,
    ) {
        // The candidate list is built inside the step closure, so the untraced path (whose
        // tracer never calls it) does no work.
        let mut list = Vec::new();
        t.step(|| {
            list = candidates(&[&self.deny_index, &self.allow_index], src, dst);
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

    fn trace_break_glass<T: Tracer>(&self, t: &mut T, src: &Keys, dst: &Keys, cx: &Ctx<'_>) {
        let mut list = Vec::new();
        t.step(|| {
            list = candidates(&[&self.break_glass_index], src, dst);
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
