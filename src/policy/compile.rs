//! Validation and compilation: raw bundle files in, an immutable, indexed [`Policy`] out.
//!
//! Validation collects every problem with its file, line and column (DESIGN §2). Compilation
//! then interns every identity pattern, builds tries that map a SPIFFE ID to the patterns and the
//! segment it matches, and files every rule under each (source key, destination key) pair it
//! names. A request then looks up only the handful of buckets its own identities select, so
//! decision cost depends on the rules that can apply to that pair, not on the bundle's size.
//!
//! This module never evaluates a request; see `eval`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use fnv::FnvHashMap;
use sha2::{Digest, Sha256};

use super::bundle::{self, RawBundle, RawRule, SourceFile, S};
use super::error::Diagnostics;
use super::pattern::{Pattern, Seg};
use super::schedule::{self, Schedule};

/// The supported bundle format version.
pub const FORMAT_VERSION: u64 = 1;

/// Key meaning "any destination" (a rule without `to`).
pub(crate) const ANY: u32 = u32::MAX;

/// An immutable, compiled rule bundle. Build it with [`Policy::from_path`] or
/// [`Policy::from_yaml_str`]; ask it with [`Policy::decide`].
#[derive(Debug)]
pub struct Policy {
    pub(crate) revision: u64,
    pub(crate) digest: String,
    pub(crate) trust_domains: Vec<Box<str>>,
    pub(crate) segments: Vec<Segment>,
    /// Segment members, `from` and `to` patterns, each payload tagged with its [`Slot`].
    pub(crate) id_trie: IdTrie,
    pub(crate) rules: Vec<Rule>,
    pub(crate) break_glass: Vec<Rule>,
    pub(crate) break_glass_header: Option<Box<str>>,
    pub(crate) deny_index: PairIndex,
    pub(crate) allow_index: PairIndex,
    pub(crate) break_glass_index: PairIndex,
}

/// A segment: a named zone of workloads.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) name: Box<str>,
    pub(crate) members: Vec<Pattern>,
    pub(crate) max_svid_lifetime: Option<jiff::SignedDuration>,
    /// Where the segment is defined: file, line, column of its name.
    pub(crate) site: (Box<str>, u64, u64),
}

/// Allow or deny, as a rule states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The rule grants.
    Allow,
    /// The rule refuses; deny rules are hard boundaries.
    Deny,
}

/// A rule as listed by [`Policy::rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo<'p> {
    /// Rule name.
    pub name: &'p str,
    /// Allow or deny.
    pub action: Action,
    /// Whether this is a break-glass entry.
    pub break_glass: bool,
    /// Bundle file it is defined in.
    pub file: &'p str,
    /// Line of its definition.
    pub line: u64,
}

/// A `from` or `to` entry.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Segment(u32),
    Pattern(Pattern),
}

/// A compiled rule or break-glass entry.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: Box<str>,
    pub(crate) action: Action,
    pub(crate) from: Vec<Endpoint>,
    pub(crate) to: Option<Vec<Endpoint>>,
    /// Upper-case methods.
    pub(crate) methods: Option<Vec<Box<str>>>,
    pub(crate) paths: Option<Vec<Pattern>>,
    /// Lower-case hosts without port.
    pub(crate) hosts: Option<Vec<Box<str>>>,
    pub(crate) schedule: Option<Schedule>,
    /// Lower-case header name, allowed exact values.
    pub(crate) headers: Vec<(Box<str>, Vec<Box<str>>)>,
    pub(crate) file: Box<str>,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

/// Rule indices (ascending, i.e. bundle order) per (source key, destination key).
pub(crate) type PairIndex = HashMap<(u32, u32), Box<[u32]>, BuildHasherDefault<PairHasher>>;

/// A multiplicative hasher for the pair index's `(u32, u32)` keys: two integer writes, one
/// multiply and a fold, instead of FNV's byte loop. Keys are small dense integers chosen by the
/// compiler, not by requests, so no keyed hash is needed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }
}

/// What a trie payload stands for: the identity's segment, or the key of a `from` or `to`
/// pattern. Stored in the top two bits of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A segment member pattern; the payload is the segment id.
    Segment = 0,
    /// A `from` pattern; the payload is its interned key.
    From = 1,
    /// A `to` pattern; the payload is its interned key.
    To = 2,
}

const SLOT_SHIFT: u32 = 30;
const PAYLOAD_MASK: u32 = (1 << SLOT_SHIFT) - 1;
const NO_NODE: u32 = u32::MAX;
/// Children kept in a sorted vector up to this many, in a hash map beyond.
const FEW_CHILDREN: usize = 8;
/// Path segments looked at without spilling to the heap.
const INLINE_SEGMENTS: usize = 16;

/// A trie over SPIFFE IDs: trust domain, then path segments, with `*` and `**` edges. One trie
/// holds segment members and `from` and `to` patterns alike (each payload tagged with its
/// [`Slot`]), so a request walks it once per identity.
#[derive(Debug, Default)]
pub(crate) struct IdTrie {
    roots: Vec<(Box<str>, u32)>,
    nodes: Vec<TrieNode>,
}

#[derive(Debug)]
struct TrieNode {
    literal: Children,
    star: u32,
    /// Payloads of patterns ending exactly here.
    exact: Box<[u32]>,
    /// Payloads of patterns ending here in `**` (one or more further segments).
    more: Box<[u32]>,
}

impl Default for TrieNode {
    fn default() -> Self {
        TrieNode {
            literal: Children::Few(Vec::new()),
            star: NO_NODE,
            exact: Box::default(),
            more: Box::default(),
        }
    }
}

/// A node's literal edges: most nodes have a handful (a linear scan beats hashing), a few (the
/// `sa` level of a large mesh) have thousands.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, u32)>),
    Many(FnvHashMap<Box<str>, u32>),
}

impl Children {
    #[inline]
    fn get(&self, seg: &str) -> Option<u32> {
        match self {
            Children::Few(list) => list.iter().find(|(l, _)| **l == *seg).map(|&(_, n)| n),
            Children::Many(map) => map.get(seg).copied(),
        }
    }

    fn insert(&mut self, seg: &str, node: u32) {
        match self {
            Children::Few(list) if list.len() < FEW_CHILDREN => list.push((seg.into(), node)),
            Children::Few(list) => {
                let mut map: FnvHashMap<Box<str>, u32> = list.drain(..).collect();
                map.insert(seg.into(), node);
                *self = Children::Many(map);
            }
            Children::Many(map) => {
                map.insert(seg.into(), node);
            }
        }
    }

    fn shrink(&mut self) {
        match self {
            Children::Few(list) => list.shrink_to_fit(),
            Children::Many(map) => map.shrink_to_fit(),
        }
    }
}

fn push_unique(list: &mut Box<[u32]>, payload: u32) {
    if !list.contains(&payload) {
        let mut v = std::mem::take(list).into_vec();
        v.push(payload);
        *list = v.into_boxed_slice();
    }
}

/// The `/`-separated segments of `""` or `/a/b` (a plain byte scan: segments are short, and
/// `str::split`'s searcher costs more than it saves here).
#[inline]
pub(crate) fn split_segments(path: &str) -> smallvec::SmallVec<[&str; INLINE_SEGMENTS]> {
    let mut segs = smallvec::SmallVec::new();
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return segs;
    }
    let bytes = rest.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            segs.push(&rest[start..i]);
            start = i + 1;
        }
    }
    segs.push(&rest[start..]);
    segs
}

impl IdTrie {
    /// File `payload` under `pattern`; returns the pattern's leaf node and whether it ends in
    /// `**`, which together identify the pattern (equal patterns end at the same place).
    fn insert(&mut self, pattern: &Pattern, slot: Slot, payload: u32) -> (u32, bool) {
        debug_assert!(payload <= PAYLOAD_MASK);
        let tagged = (slot as u32) << SLOT_SHIFT | (payload & PAYLOAD_MASK);
        let td = pattern.trust_domain().unwrap_or("");
        let mut node = match self.roots.iter().find(|(t, _)| **t == *td) {
            Some(&(_, n)) => n,
            None => {
                let n = self.new_node();
                self.roots.push((td.into(), n));
                n
            }
        };
        for seg in pattern.segments() {
            node = match seg {
                Seg::Literal(l) => match self.nodes[node as usize].literal.get(l) {
                    Some(n) => n,
                    None => {
                        let n = self.new_node();
                        self.nodes[node as usize].literal.insert(l, n);
                        n
                    }
                },
                Seg::Any => match self.nodes[node as usize].star {
                    NO_NODE => {
                        let n = self.new_node();
                        self.nodes[node as usize].star = n;
                        n
                    }
                    n => n,
                },
            };
        }
        let leaf = &mut self.nodes[node as usize];
        if pattern.more() {
            push_unique(&mut leaf.more, tagged);
        } else {
            push_unique(&mut leaf.exact, tagged);
        }
        (node, pattern.more())
    }

    /// The leaf node and `**` flag `pattern` would end at, if it was inserted.
    fn find(&self, pattern: &Pattern) -> Option<(u32, bool)> {
        let td = pattern.trust_domain().unwrap_or("");
        let mut node = self.roots.iter().find(|(t, _)| **t == *td)?.1;
        for seg in pattern.segments() {
            let n = &self.nodes[node as usize];
            node = match seg {
                Seg::Literal(l) => n.literal.get(l)?,
                Seg::Any if n.star != NO_NODE => n.star,
                Seg::Any => return None,
            };
        }
        Some((node, pattern.more()))
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(TrieNode::default());
        (self.nodes.len() - 1) as u32
    }

    fn shrink(&mut self) {
        self.nodes.shrink_to_fit();
        for n in &mut self.nodes {
            n.literal.shrink();
        }
    }

    /// Call `found(slot, payload)` for every pattern matching `trust_domain` + `path`
    /// (`""` or `/a/b`).
    #[inline]
    pub(crate) fn lookup(&self, trust_domain: &str, path: &str, found: &mut impl FnMut(Slot, u32)) {
        let Some(&(_, root)) = self.roots.iter().find(|(t, _)| **t == *trust_domain) else {
            return;
        };
        let segs = split_segments(path);
        let mut emit = |list: &[u32]| {
            for &p in list {
                let slot = match p >> SLOT_SHIFT {
                    0 => Slot::Segment,
                    1 => Slot::From,
                    _ => Slot::To,
                };
                found(slot, p & PAYLOAD_MASK);
            }
        };
        self.walk(root, &segs, &mut emit);
    }

    fn walk(&self, node: u32, segs: &[&str], found: &mut impl FnMut(&[u32])) {
        let n = &self.nodes[node as usize];
        match segs.split_first() {
            None => found(&n.exact),
            Some((seg, rest)) => {
                if !n.more.is_empty() {
                    found(&n.more);
                }
                if let Some(child) = n.literal.get(seg) {
                    self.walk(child, rest, found);
                }
                if n.star != NO_NODE {
                    self.walk(n.star, rest, found);
                }
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

struct Ctx<'a> {
    errors: &'a mut Diagnostics,
    file: &'a str,
}

impl Ctx<'_> {
    fn err<T>(&mut self, at: &S<T>, message: impl Into<String>) {
        self.errors.push(
            self.file,
            at.referenced.line(),
            at.referenced.column(),
            message,
        );
    }
}

/// What compile needs to resolve names, gathered across all files first.
struct Names {
    trust_domains: Vec<Box<str>>,
    segments: FnvHashMap<String, u32>,
}

impl Policy {
    /// Load a bundle from a YAML file or a directory of `*.yaml` files.
    pub fn from_path(path: &Path) -> Result<Policy, Diagnostics> {
        let mut errors = Diagnostics::default();
        let sources = bundle::read_sources(path, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Policy::from_sources(&sources)
    }

    /// Compile one YAML text; `name` is used in error messages.
    pub fn from_yaml_str(name: &str, text: &str) -> Result<Policy, Diagnostics> {
        Policy::from_sources(&[(name.to_string(), text.to_string())])
    }

    /// Compile (name, text) pairs as one bundle, merged in the order given.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Policy, Diagnostics> {
        let mut errors = Diagnostics::default();
        let files: Vec<SourceFile> = sources
            .iter()
            .filter_map(|(name, text)| bundle::parse(name, text, &mut errors))
            .collect();
        if files.len() != sources.len() {
            return Err(errors);
        }
        let mut hasher = Sha256::new();
        for (name, text) in sources {
            let base = Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            hasher.update((base.len() as u64).to_be_bytes());
            hasher.update(base.as_bytes());
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        let digest = format!("sha256:{:x}", hasher.finalize());
        let policy = compile(&files, digest, &mut errors);
        match policy {
            Some(p) if errors.is_empty() => Ok(p),
            _ => Err(errors),
        }
    }

    /// The bundle's `revision`.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `sha256:<hex>` over the bundle's file names and contents.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of rules (not counting break-glass entries).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Names of the rules, in bundle order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// Every rule in bundle order, then every break-glass entry, with where it is defined.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        let rules = self.rules.iter().map(|r| (r, false));
        let bg = self.break_glass.iter().map(|r| (r, true));
        rules.chain(bg).map(|(r, break_glass)| RuleInfo {
            name: &r.name,
            action: r.action,
            break_glass,
            file: &r.file,
            line: r.line,
        })
    }

    /// Names of the break-glass entries, in bundle order.
    pub fn break_glass_names(&self) -> impl Iterator<Item = &str> {
        self.break_glass.iter().map(|r| &*r.name)
    }

    /// Names of the segments, in bundle order.
    pub fn segment_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|s| &*s.name)
    }

    /// The trust domains the bundle accepts.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.trust_domains.iter().map(|t| &**t)
    }

    /// The header that carries a break-glass reason, if the bundle enables break-glass.
    pub fn break_glass_header(&self) -> Option<&str> {
        self.break_glass_header.as_deref()
    }
}

fn compile(files: &[SourceFile], digest: String, errors: &mut Diagnostics) -> Option<Policy> {
    // Pass 1: header fields, trust domains and segment names across all files.
    let mut version: Option<u64> = None;
    let mut revision: Option<u64> = None;
    let mut names = Names {
        trust_domains: Vec::new(),
        segments: FnvHashMap::default(),
    };
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        let b: &RawBundle = &f.bundle;
        if let Some(v) = &b.version {
            if v.value != FORMAT_VERSION {
                cx.err(v, format!("unsupported bundle format version {} (this wardgate reads version {FORMAT_VERSION})", v.value));
            } else if version.is_some_and(|old| old != v.value) {
                cx.err(v, "`version` differs from another file of this bundle");
            }
            version = Some(v.value);
        }
        if let Some(r) = &b.revision {
            if revision.is_some_and(|old| old != r.value) {
                cx.err(r, "`revision` differs from another file of this bundle");
            }
            revision = Some(r.value);
        }
        for td in &b.trust_domains {
            match Pattern::parse_spiffe(&format!("spiffe://{}", td.value)) {
                Ok(_) if !td.value.contains('/') => {
                    if !names.trust_domains.iter().any(|t| **t == *td.value) {
                        names.trust_domains.push(td.value.as_str().into());
                    }
                }
                _ => cx.err(td, format!("trust domain `{}` is not valid: use lowercase letters, digits, `.`, `_` and `-`", td.value)),
            }
        }
        for (name, _) in &b.segments.0 {
            if !valid_name(&name.value) {
                cx.err(
                    name,
                    format!(
                        "segment name `{}` must match [a-z0-9][a-z0-9-]*",
                        name.value
                    ),
                );
            } else if names.segments.contains_key(&name.value) {
                cx.err(
                    name,
                    format!("segment `{}` is defined more than once", name.value),
                );
            } else {
                let id = names.segments.len() as u32;
                names.segments.insert(name.value.clone(), id);
            }
        }
    }
    let first = files.first().map(|f| f.name.as_str()).unwrap_or("bundle");
    if version.is_none() {
        errors.push(
            first,
            0,
            0,
            "missing `version` (this wardgate reads `version: 1`)",
        );
    }
    if revision.is_none() {
        errors.push(
            first,
            0,
            0,
            "missing `revision` (an integer that grows with every release of the bundle)",
        );
    }
    if names.trust_domains.is_empty() {
        errors.push(
            first,
            0,
            0,
            "missing `trust_domains`: list at least one trust domain",
        );
    }

    // Pass 2: segments with their members.
    let mut segments: Vec<Segment> = Vec::new();
    let mut member_sites: Vec<(Pattern, u32, String, u64, u64)> = Vec::new();
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        for (name, raw) in &f.bundle.segments.0 {
            let Some(&id) = names.segments.get(&name.value) else {
                continue;
            };
            if id as usize != segments.len() {
                continue; // a duplicate, already reported
            }
            let mut members = Vec::new();
            if raw.members.is_empty() {
                cx.err(name, format!("segment `{}` has no `members`", name.value));
            }
            for m in &raw.members {
                if let Some(p) = spiffe_pattern(&mut cx, m, &names.trust_domains) {
                    member_sites.push((
                        p.clone(),
                        id,
                        f.name.clone(),
                        m.referenced.line(),
                        m.referenced.column(),
                    ));
                    members.push(p);
                }
            }
            let max_svid_lifetime = raw.max_svid_lifetime.as_ref().and_then(|d| {
                match d.value.trim().parse::<jiff::SignedDuration>() {
                    Ok(v) if v.is_positive() => Some(v),
                    _ => {
                        cx.err(d, format!("max_svid_lifetime `{}` must be a positive duration such as `1h`, `30m` or `1h30m`", d.value));
                        None
                    }
                }
            });
            segments.push(Segment {
                name: name.value.as_str().into(),
                members,
                max_svid_lifetime,
                site: (
                    f.name.as_str().into(),
                    name.referenced.line(),
                    name.referenced.column(),
                ),
            });
        }
    }
    for (i, (a, sa, _, _, _)) in member_sites.iter().enumerate() {
        for (b, sb, file, line, col) in &member_sites[i + 1..] {
            if sa != sb && a.overlaps(b) {
                errors.push(
                    file,
                    *line,
                    *col,
                    format!(
                        "member `{b}` of segment `{}` overlaps member `{a}` of segment `{}`: an identity may belong to at most one segment",
                        segments.get(*sb as usize).map(|s| &*s.name).unwrap_or("?"),
                        segments.get(*sa as usize).map(|s| &*s.name).unwrap_or("?"),
                    ),
                );
            }
        }
    }

    // Pass 3: rules and break-glass entries.
    let mut rule_names: HashSet<String> = HashSet::new();
    let mut rules = Vec::new();
    let mut break_glass = Vec::new();
    let mut break_glass_header: Option<Box<str>> = None;
    for f in files {
        let mut cx = Ctx {
            errors,
            file: &f.name,
        };
        for raw in &f.bundle.rules {
            if let Some(rule) = compile_rule(&mut cx, raw, &names, &mut rule_names, false) {
                rules.push(rule);
            }
        }
        if let Some(bg) = &f.bundle.break_glass {
            if break_glass_header.is_some() {
                cx.err(
                    bg,
                    "`break_glass` is defined in more than one file of this bundle",
                );
            }
            match &bg.value.header {
                None => cx.err(bg, "`break_glass` needs a `header` naming the request header that carries the reason"),
                Some(h) => {
                    let lower = h.value.to_ascii_lowercase();
                    if !valid_header_name(&lower) {
                        cx.err(h, format!("`{}` is not a valid header name", h.value));
                    } else if lower.starts_with("x-wardgate-") {
                        cx.err(h, "the break-glass header may not be in wardgate's own `x-wardgate-*` namespace (those are stripped from client requests)");
                    } else {
                        break_glass_header = Some(lower.into());
                    }
                }
            }
            if bg.value.allow.is_empty() {
                cx.err(bg, "`break_glass` has no `allow` entries");
            }
            for raw in &bg.value.allow {
                if let Some(rule) = compile_rule(&mut cx, raw, &names, &mut rule_names, true) {
                    break_glass.push(rule);
                }
            }
        }
    }
    if !errors.is_empty() {
        return None;
    }

    // Index.
    // Interned pattern keys, by where the pattern ends in the trie (no pattern hashing or
    // cloning): (leaf node, ends in `**`) -> key.
    let mut patterns: FnvHashMap<(u32, bool), u32> = FnvHashMap::default();
    let n_segments = segments.len() as u32;
    let mut id_trie = IdTrie::default();
    for (i, s) in segments.iter().enumerate() {
        for m in &s.members {
            id_trie.insert(m, Slot::Segment, i as u32);
        }
    }
    // Keys interned per pattern, shared by `from` and `to`; the trie records which side
    // named a pattern, so a key filed as `from` never matches a destination.
    let mut key = |e: &Endpoint, slot: Slot, trie: &mut IdTrie| -> u32 {
        match e {
            Endpoint::Segment(s) => *s,
            Endpoint::Pattern(p) => {
                let next = n_segments + patterns.len() as u32;
                let k = match trie.find(p).and_then(|leaf| patterns.get(&leaf)) {
                    Some(&k) => k,
                    None => next,
                };
                let leaf = trie.insert(p, slot, k);
                patterns.entry(leaf).or_insert(k);
                k
            }
        }
    };
    let mut deny_pairs: FnvHashMap<(u32, u32), Vec<u32>> = FnvHashMap::default();
    let mut allow_pairs: FnvHashMap<(u32, u32), Vec<u32>> = FnvHashMap::default();
    let mut break_glass_pairs: FnvHashMap<(u32, u32), Vec<u32>> = FnvHashMap::default();
    let mut froms: Vec<u32> = Vec::new();
    let mut tos: Vec<u32> = Vec::new();
    for (list, is_bg) in [(&rules, false), (&break_glass, true)] {
        for (i, rule) in list.iter().enumerate() {
            froms.clear();
            froms.extend(rule.from.iter().map(|e| key(e, Slot::From, &mut id_trie)));
            tos.clear();
            match &rule.to {
                None => tos.push(ANY),
                Some(to) => tos.extend(to.iter().map(|e| key(e, Slot::To, &mut id_trie))),
            }
            let index = match (is_bg, rule.action) {
                (true, _) => &mut break_glass_pairs,
                (false, Action::Deny) => &mut deny_pairs,
                (false, Action::Allow) => &mut allow_pairs,
            };
            for &f in &froms {
                for &t in &tos {
                    let bucket = index.entry((f, t)).or_default();
                    if bucket.last() != Some(&(i as u32)) {
                        bucket.push(i as u32);
                    }
                }
            }
        }
    }
    id_trie.shrink();
    let freeze = |pairs: FnvHashMap<(u32, u32), Vec<u32>>| -> PairIndex {
        let mut index = PairIndex::with_capacity_and_hasher(pairs.len(), Default::default());
        index.extend(pairs.into_iter().map(|(k, v)| (k, v.into_boxed_slice())));
        index
    };
    let deny_index = freeze(deny_pairs);
    let allow_index = freeze(allow_pairs);
    let break_glass_index = freeze(break_glass_pairs);

    Some(Policy {
        revision: revision.unwrap_or(0),
        digest,
        trust_domains: names.trust_domains,
        segments,
        id_trie,
        rules,
        break_glass,
        break_glass_header,
        deny_index,
        allow_index,
        break_glass_index,
    })
}

fn spiffe_pattern(
    cx: &mut Ctx<'_>,
    text: &S<String>,
    trust_domains: &[Box<str>],
) -> Option<Pattern> {
    match Pattern::parse_spiffe(&text.value) {
        Err(e) => {
            cx.err(
                text,
                format!("`{}` is not a valid SPIFFE ID pattern: {e}", text.value),
            );
            None
        }
        Ok(p) => {
            let td = p.trust_domain().unwrap_or("");
            if !trust_domains.iter().any(|t| **t == *td) {
                cx.err(text, format!("`{}` is outside the bundle's trust_domains (trust domain `{td}` is not listed)", text.value));
                None
            } else {
                Some(p)
            }
        }
    }
}

fn endpoints(
    cx: &mut Ctx<'_>,
    list: &S<Vec<S<String>>>,
    names: &Names,
    key: &str,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for e in &list.value {
        if e.value.starts_with("spiffe://") || e.value.to_ascii_lowercase().starts_with("spiffe:") {
            if let Some(p) = spiffe_pattern(cx, e, &names.trust_domains) {
                out.push(Endpoint::Pattern(p));
            }
        } else {
            match names.segments.get(&e.value) {
                Some(&id) => out.push(Endpoint::Segment(id)),
                None => cx.err(
                    e,
                    format!(
                        "`{key}` names segment `{}`, which is not defined under `segments`",
                        e.value
                    ),
                ),
            }
        }
    }
    out
}

fn non_empty<'a>(
    cx: &mut Ctx<'_>,
    list: &'a Option<S<Vec<S<String>>>>,
    key: &str,
) -> Option<&'a S<Vec<S<String>>>> {
    let list = list.as_ref()?;
    if list.value.is_empty() {
        cx.err(
            list,
            format!("`{key}` is empty: omit it to mean any, or list at least one entry"),
        );
        return None;
    }
    Some(list)
}

fn compile_rule(
    cx: &mut Ctx<'_>,
    raw: &S<RawRule>,
    names: &Names,
    seen: &mut HashSet<String>,
    break_glass: bool,
) -> Option<Rule> {
    let r = &raw.value;
    let before = cx.errors.0.len();
    let what = if break_glass {
        "break-glass entry"
    } else {
        "rule"
    };
    let name = match &r.name {
        None => {
            cx.err(raw, format!("{what} without a `name`"));
            String::new()
        }
        Some(n) => {
            if !valid_name(&n.value) {
                cx.err(
                    n,
                    format!("{what} name `{}` must match [a-z0-9][a-z0-9-]*", n.value),
                );
            } else if !seen.insert(n.value.clone()) {
                cx.err(n, format!("duplicate rule name `{}`: names must be unique across the bundle, break-glass entries included", n.value));
            }
            n.value.clone()
        }
    };
    let action = match &r.action {
        None => Action::Allow,
        Some(a) if break_glass => {
            cx.err(a, "break-glass entries only allow: remove `action`");
            Action::Allow
        }
        Some(a) => match a.value.as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => {
                cx.err(a, format!("action `{other}` is not `allow` or `deny`"));
                Action::Allow
            }
        },
    };
    let from = match &r.from {
        None => {
            cx.err(raw, format!("{what} `{name}` has no `from`: every rule must say which sources it applies to"));
            Vec::new()
        }
        Some(list) if list.value.is_empty() => {
            cx.err(list, format!("{what} `{name}` has an empty `from`"));
            Vec::new()
        }
        Some(list) => endpoints(cx, list, names, "from"),
    };
    let to = non_empty(cx, &r.to, "to").map(|l| endpoints(cx, l, names, "to"));
    let methods = non_empty(cx, &r.methods, "methods").map(|l| {
        l.value
            .iter()
            .filter_map(|m| {
                if !m.value.is_empty() && m.value.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Some(m.value.to_ascii_uppercase().into_boxed_str())
                } else {
                    cx.err(
                        m,
                        format!("method `{}` is not an HTTP method token", m.value),
                    );
                    None
                }
            })
            .collect()
    });
    let paths = non_empty(cx, &r.paths, "paths").map(|l| {
        l.value
            .iter()
            .filter_map(|p| match Pattern::parse_path(&p.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    cx.err(
                        p,
                        format!(
                            "path `{}` is not a valid normalised path pattern: {e}",
                            p.value
                        ),
                    );
                    None
                }
            })
            .collect()
    });
    let hosts = non_empty(cx, &r.hosts, "hosts").map(|l| {
        l.value
            .iter()
            .filter_map(|h| {
                let lower = h.value.to_ascii_lowercase();
                if valid_host(&lower) {
                    Some(lower.into_boxed_str())
                } else {
                    cx.err(
                        h,
                        format!(
                            "host `{}` must be a host name without port or scheme",
                            h.value
                        ),
                    );
                    None
                }
            })
            .collect()
    });
    let mut schedule = None;
    let mut headers = Vec::new();
    if let Some(when) = &r.when {
        if let Some(s) = &when.value.schedule {
            let mut days = 0u8;
            if let Some(d) = non_empty(cx, &s.value.days, "days") {
                for day in &d.value {
                    match schedule::parse_day(&day.value) {
                        Some(bit) => days |= bit,
                        None => cx.err(
                            day,
                            format!(
                                "day `{}` is not one of mon, tue, wed, thu, fri, sat, sun",
                                day.value
                            ),
                        ),
                    }
                }
            }
            let hours =
                s.value
                    .hours
                    .as_ref()
                    .and_then(|h| match schedule::parse_hours(&h.value) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            cx.err(h, e);
                            None
                        }
                    });
            let tz = s.value.timezone.as_ref();
            match Schedule::new(days, hours, tz.map(|t| t.value.as_str())) {
                Ok(v) => schedule = Some(v),
                Err(e) => match tz {
                    Some(t) => cx.err(t, e),
                    None => cx.err(s, e),
                },
            }
        }
        if let Some(h) = &when.value.headers {
            for (hname, values) in &h.0 {
                let lower = hname.value.to_ascii_lowercase();
                if !valid_header_name(&lower) {
                    cx.err(
                        hname,
                        format!("`{}` is not a valid header name", hname.value),
                    );
                }
                if values.is_empty() {
                    cx.err(
                        hname,
                        format!("header condition `{}` lists no allowed values", hname.value),
                    );
                }
                headers.push((
                    lower.into_boxed_str(),
                    values.iter().map(|v| v.value.as_str().into()).collect(),
                ));
            }
        }
    }
    if cx.errors.0.len() != before {
        return None;
    }
    Some(Rule {
        name: name.into(),
        action,
        from,
        to,
        methods,
        paths,
        hosts,
        schedule,
        headers,
        file: cx.file.into(),
        line: raw.referenced.line(),
        column: raw.referenced.column(),
    })
}
