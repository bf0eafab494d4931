//! Path generalisation for `wardgate learn`: the observed paths of one conversation, as a trie
//! of segments, reduced to the few path patterns that cover them.
//!
//! A position becomes `*` only where the data says it holds identifiers: at least
//! `id_min_distinct` different identifier-looking values (digits, UUIDs, hex, codes with
//! digits), or the redaction marker `{}` (a value the log writer removed), or more than
//! `max_literals` different values of any kind. A subtree becomes `**` only where every
//! position below is already `*` and paths end at `deep_min_depths` or more different depths.
//! Everything else stays literal. This module owns those rules; it must never widen a pattern
//! for any other reason, and knows nothing of methods, identities or bundles.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

/// The redaction marker as it appears in a logged path, and in normal form.
pub(crate) const REDACTION_MARKER: &str = "{}";
const REDACTION_MARKER_NORMAL: &str = "%7B%7D";

/// What kind of values a wildcard replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ValueKind {
    /// The log writer's redaction marker.
    Redacted,
    /// Decimal digits.
    Number,
    /// An 8-4-4-4-12 hexadecimal UUID.
    Uuid,
    /// Digits with `.`, `-`, `_` or `:` (dates, DICOM UIDs, versions).
    Numeric,
    /// Twelve or more hexadecimal characters with digits and letters.
    Hex,
    /// Letters with at least four digits (`MRN00012345`, `INF-000123`).
    Code,
    /// Not identifier-looking, but more different values than `--max-literals`.
    HighCardinality,
}

impl ValueKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ValueKind::Redacted => "redacted",
            ValueKind::Number => "number",
            ValueKind::Uuid => "uuid",
            ValueKind::Numeric => "numeric",
            ValueKind::Hex => "hex",
            ValueKind::Code => "code",
            ValueKind::HighCardinality => "high-cardinality",
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The identifier kind of one normalised path segment, if it looks like an identifier.
pub(crate) fn identifier_kind(seg: &str) -> Option<ValueKind> {
    if seg == REDACTION_MARKER || seg == REDACTION_MARKER_NORMAL {
        return Some(ValueKind::Redacted);
    }
    if seg.is_empty() {
        return None;
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let letters = seg.bytes().filter(u8::is_ascii_alphabetic).count();
    let separators = seg.bytes().filter(|b| b".-_:".contains(b)).count();
    let only_these = digits + letters + separators == seg.len();
    if digits == seg.len() {
        return Some(ValueKind::Number);
    }
    if is_uuid(seg) {
        return Some(ValueKind::Uuid);
    }
    if !only_these || digits == 0 {
        return None;
    }
    if letters == 0 {
        return Some(ValueKind::Numeric);
    }
    if separators == 0 && seg.len() >= 12 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(ValueKind::Hex);
    }
    if digits >= 4 && seg.len() >= 6 {
        return Some(ValueKind::Code);
    }
    None
}

/// The thresholds (the `--id-min-distinct`, `--max-literals` and `--deep-min-depths` flags).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) id_min_distinct: usize,
    pub(crate) max_literals: usize,
    pub(crate) deep_min_depths: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    Lit(Box<str>),
    Star,
    Deep,
}

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Label, Node>,
    /// Observations whose path ends here.
    ends: Vec<usize>,
    /// For `*` and `**` nodes: the literal values they took over, and their kinds.
    replaced: HashSet<Box<str>>,
    kinds: BTreeSet<ValueKind>,
    /// For `**` nodes: the depths below the parent at which paths ended.
    depths: BTreeSet<usize>,
}

/// A wildcard in a generalised pattern and what it stands for.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Wildcard {
    /// 1-based segment position.
    pub(crate) position: usize,
    /// `*` or `**`.
    pub(crate) wildcard: &'static str,
    /// Different observed values (for `**`: different observed remainders).
    pub(crate) distinct: usize,
    pub(crate) kinds: Vec<ValueKind>,
    /// For `**`: the depths observed below it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) depths: Vec<usize>,
}

/// A path pattern and the observations it stands for.
#[derive(Debug, Clone)]
pub(crate) struct PathFamily {
    pub(crate) pattern: String,
    pub(crate) members: Vec<usize>,
    pub(crate) wildcards: Vec<Wildcard>,
}

fn absorb(into: &mut Node, from: Node) {
    into.ends.extend(from.ends);
    into.replaced.extend(from.replaced);
    into.kinds.extend(from.kinds);
    into.depths.extend(from.depths);
    for (label, child) in from.children {
        match into.children.entry(label) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(child);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => absorb(o.get_mut(), child),
        }
    }
}

/// Merge the literal children `labels` of `node` into its `*` child.
fn merge_into_star(node: &mut Node, labels: Vec<Label>) {
    let mut star = node.children.remove(&Label::Star).unwrap_or_default();
    for label in labels {
        if let Some(child) = node.children.remove(&label) {
            if let Label::Lit(s) = &label {
                star.kinds
                    .insert(identifier_kind(s).unwrap_or(ValueKind::HighCardinality));
                star.replaced.insert(s.clone());
            }
            absorb(&mut star, child);
        }
    }
    node.children.insert(Label::Star, star);
}

fn literals(node: &Node, only_ids: bool) -> Vec<Label> {
    node.children
        .keys()
        .filter(|l| match l {
            Label::Lit(s) => !only_ids || identifier_kind(s).is_some(),
            _ => false,
        })
        .cloned()
        .collect()
}

fn generalise_node(node: &mut Node, t: &Thresholds) {
    let ids = literals(node, true);
    let marker = ids
        .iter()
        .any(|l| matches!(l, Label::Lit(s) if identifier_kind(s) == Some(ValueKind::Redacted)));
    if marker || ids.len() >= t.id_min_distinct {
        merge_into_star(node, ids);
    }
    let lits = literals(node, false);
    if lits.len() > t.max_literals {
        merge_into_star(node, lits);
    }
    for child in node.children.values_mut() {
        generalise_node(child, t);
    }
}

fn all_star(node: &Node) -> bool {
    node.children
        .iter()
        .all(|(l, c)| *l == Label::Star && all_star(c))
}

fn end_depths(node: &Node, depth: usize, out: &mut BTreeSet<usize>) {
    if !node.ends.is_empty() {
        out.insert(depth);
    }
    for c in node.children.values() {
        end_depths(c, depth + 1, out);
    }
}

fn flatten(node: Node, into: &mut Node) {
    into.ends.extend(node.ends);
    into.replaced.extend(node.replaced);
    into.kinds.extend(node.kinds);
    for (_, c) in node.children {
        flatten(c, into);
    }
}

fn deepen(node: &mut Node, t: &Thresholds) {
    if node.children.len() == 1 {
        if let Some(star) = node.children.get(&Label::Star) {
            if all_star(star) {
                let mut depths = BTreeSet::new();
                end_depths(star, 1, &mut depths);
                if depths.len() >= t.deep_min_depths {
                    if let Some(star) = node.children.remove(&Label::Star) {
                        let mut deep = Node {
                            depths,
                            ..Node::default()
                        };
                        flatten(star, &mut deep);
                        node.children.insert(Label::Deep, deep);
                    }
                    return;
                }
            }
        }
    }
    for c in node.children.values_mut() {
        deepen(c, t);
    }
}

fn emit(
    node: &Node,
    prefix: &mut Vec<String>,
    wild: &mut Vec<Wildcard>,
    paths: &[&str],
    out: &mut Vec<PathFamily>,
) {
    if !node.ends.is_empty() {
        let pattern = if prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", prefix.join("/"))
        };
        let mut members = node.ends.clone();
        members.sort_unstable();
        out.push(PathFamily {
            pattern,
            members,
            wildcards: wild.clone(),
        });
    }
    for (label, child) in &node.children {
        let position = prefix.len() + 1;
        let (seg, w) = match label {
            Label::Lit(s) => (s.to_string(), None),
            Label::Star => (
                "*".to_string(),
                Some(Wildcard {
                    position,
                    wildcard: "*",
                    distinct: child.replaced.len(),
                    kinds: child.kinds.iter().copied().collect(),
                    depths: Vec::new(),
                }),
            ),
            Label::Deep => {
                let remainders: HashSet<&str> = child
                    .ends
                    .iter()
                    .filter_map(|&i| paths.get(i))
                    .map(|p| remainder(p, prefix.len()))
                    .collect();
                (
                    "**".to_string(),
                    Some(Wildcard {
                        position,
                        wildcard: "**",
                        distinct: remainders.len(),
                        kinds: child.kinds.iter().copied().collect(),
                        depths: child.depths.iter().copied().collect(),
                    }),
                )
            }
        };
        prefix.push(seg);
        let pushed = w.is_some();
        if let Some(w) = w {
            wild.push(w);
        }
        emit(child, prefix, wild, paths, out);
        prefix.pop();
        if pushed {
            wild.pop();
        }
    }
}

/// The part of `path` after its first `skip` segments.
fn remainder(path: &str, skip: usize) -> &str {
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    for _ in 0..skip {
        rest = rest.split_once('/').map(|(_, r)| r).unwrap_or("");
    }
    rest
}

/// Generalise normalised paths (indexed by observation) into path families. Every observation
/// belongs to exactly one family, whose pattern matches its path.
pub(crate) fn generalise(paths: &[&str], t: &Thresholds) -> Vec<PathFamily> {
    let mut root = Node::default();
    for (i, p) in paths.iter().enumerate() {
        let mut node = &mut root;
        let rest = p.strip_prefix('/').unwrap_or(p);
        if !rest.is_empty() {
            for seg in rest.split('/') {
                node = node.children.entry(Label::Lit(seg.into())).or_default();
            }
        }
        node.ends.push(i);
    }
    generalise_node(&mut root, t);
    deepen(&mut root, t);
    let mut out = Vec::new();
    emit(&root, &mut Vec::new(), &mut Vec::new(), paths, &mut out);
    out
}
