//! The rule index: which rules can apply to a request's pair of identities, found without
//! looking at any other rule.
//!
//! `compile` fills an [`IndexBuilder`] (segment members, then every rule's `from` and `to`
//! entries by position) and keeps the [`RuleIndex`] it yields; `eval` reads it through four
//! calls: place the source and the destination ([`RuleIndex::source`],
//! [`RuleIndex::destination`]), then ask for the first rule of a list that matches
//! ([`RuleIndex::first_match`]) or for every rule that could ([`RuleIndex::candidates`]).
//!
//! Inside, one trie over SPIFFE IDs holds segment members and `from` / `to` patterns alike, each
//! interned as a small integer key. A rule is filed in one of two ways, so that the index grows
//! with the sum of the rules' `from` and `to` entries, never with their product:
//!
//! * a *narrow* rule (the usual kind: one side names a handful of keys) under each (source key,
//!   destination key) pair it names, as long as that makes at most [`PAIR_FACTOR`] entries per
//!   key it names;
//! * a *wide* rule (many sources and many destinations) under each key of its smaller side only,
//!   beside the sorted keys of its other side, which a lookup tests against the request's keys.
//!
//! A request walks the trie once per identity and looks up only the buckets its own keys
//! select, so decision cost depends on the rules that can apply to the pair (plus the wide rules
//! naming one of its identities), not on the bundle's size. That layout is private to this
//! module and may change freely.
//!
//! This module never validates (it trusts what `compile` hands it), never knows what a rule
//! says beyond its `from` and `to` (callers pass the test of a rule's other conditions in), and
//! never imports the policy model, which sits above it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use fnv::FnvHashMap;
use smallvec::SmallVec;

use super::pattern::{split_segments, Pattern, Seg};

/// Key meaning "any destination" (a rule without `to`).
const ANY: u32 = u32::MAX;

/// A rule is filed under its (from, to) pairs while their number is at most this many times the
/// number of keys it names; beyond, it is a wide rule (see the module documentation). Rules
/// naming one source or one destination, or up to 16 of each, are always narrow.
#[cfg(not(test))]
const PAIR_FACTOR: usize = 8;
/// Unit tests file every rule with more than two keys on both sides as wide, so that the
/// agreement tests against the reference evaluator (whose generated rules are small) exercise
/// both ways of filing.
#[cfg(test)]
const PAIR_FACTOR: usize = 1;

/// A list of rules, each numbered by its position in bundle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleList {
    /// Deny rules (positions in the rule list).
    Deny,
    /// Allow rules (positions in the rule list, shared with the deny rules).
    Allow,
    /// Break-glass entries (positions in the break-glass list).
    BreakGlass,
}

/// What one `from` or `to` entry of a rule selects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Selector<'a> {
    /// Every member of the segment with this number.
    Segment(u32),
    /// Every identity matching the pattern.
    Pattern(&'a Pattern),
}

/// Where one identity sits in the index: its segment, and the keys under which rules naming it
/// (through a pattern or its segment) are filed.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    segment: Option<u32>,
    keys: SmallVec<[u32; 8]>,
}

impl Placement {
    /// The number of the identity's segment, if it belongs to one.
    pub(crate) fn segment(&self) -> Option<u32> {
        self.segment
    }
}

/// The compiled index of one policy. See the module documentation.
#[derive(Debug)]
pub(crate) struct RuleIndex {
    /// Segment members, `from` and `to` patterns, each payload tagged with its [`Slot`].
    trie: IdTrie,
    deny: ListIndex,
    allow: ListIndex,
    break_glass: ListIndex,
}

/// The rules of one list: narrow ones by pair, wide ones by the keys of one side.
#[derive(Debug, Default)]
struct ListIndex {
    pairs: PairIndex,
    /// Wide rules filed by source key, each with the set of its destination keys.
    by_from: KeyIndex,
    /// Wide rules filed by destination key, each with the set of its source keys.
    by_to: KeyIndex,
    /// The other side's keys of each wide rule, sorted, one set after the other.
    sets: Vec<u32>,
}

impl ListIndex {
    /// Whether wide rule set `set` (a range of `sets`) shares a key with `keys`.
    #[inline]
    fn meets(&self, set: (u32, u32), keys: &[u32]) -> bool {
        let Some(set) = self.sets.get(set.0 as usize..set.1 as usize) else {
            return false;
        };
        keys.iter().any(|k| set.binary_search(k).is_ok())
    }

    /// The wide rules of `by` under `keys` whose other side meets `other`, lowest first within
    /// each bucket, as for [`RuleIndex::first_match`].
    #[inline]
    fn wide_first(
        &self,
        by: &KeyIndex,
        keys: &[u32],
        other: &[u32],
        best: &mut u32,
        matches: &mut impl FnMut(u32) -> bool,
    ) {
        if by.is_empty() {
            return;
        }
        for k in keys {
            if let Some(bucket) = by.get(k) {
                for w in bucket.iter() {
                    if w.position >= *best {
                        break;
                    }
                    if self.meets(w.set, other) && matches(w.position) {
                        *best = w.position;
                        break;
                    }
                }
            }
        }
    }

    fn wide_all(&self, by: &KeyIndex, keys: &[u32], other: &[u32], out: &mut Vec<u32>) {
        for k in keys {
            if let Some(bucket) = by.get(k) {
                out.extend(
                    bucket
                        .iter()
                        .filter(|w| self.meets(w.set, other))
                        .map(|w| w.position),
                );
            }
        }
    }
}

/// One wide rule in a bucket: its position, and the range of `sets` holding its other side.
#[derive(Debug, Clone, Copy)]
struct Wide {
    position: u32,
    set: (u32, u32),
}

impl RuleIndex {
    /// Place a source identity (already known to be a valid SPIFFE ID in a trusted domain).
    #[inline]
    pub(crate) fn source(&self, trust_domain: &str, path: &str) -> Placement {
        let mut placed = self.place(trust_domain, path, Slot::From);
        if let Some(s) = placed.segment {
            placed.keys.push(s);
        }
        placed
    }

    /// Place a destination; `None` is an unknown destination, which only rules without `to`
    /// can apply to.
    #[inline]
    pub(crate) fn destination(&self, id: Option<(&str, &str)>) -> Placement {
        let mut placed = match id {
            Some((trust_domain, path)) => self.place(trust_domain, path, Slot::To),
            None => Placement::default(),
        };
        if let Some(s) = placed.segment {
            placed.keys.push(s);
        }
        placed.keys.push(ANY);
        placed
    }

    /// The lowest-numbered rule of `list` filed under this pair for which `matches` holds.
    /// `matches` is asked in ascending order within each bucket and never about a rule beyond
    /// the best one found so far.
    #[inline]
    pub(crate) fn first_match(
        &self,
        list: RuleList,
        src: &Placement,
        dst: &Placement,
        mut matches: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let index = self.list(list);
        let mut best = u32::MAX;
        for &s in &src.keys {
            for &d in &dst.keys {
                if let Some(bucket) = index.pairs.get(&(s, d)) {
                    for &i in bucket.iter() {
                        if i >= best {
                            break;
                        }
                        if matches(i) {
                            best = i;
                            break;
                        }
                    }
                }
            }
        }
        index.wide_first(
            &index.by_from,
            &src.keys,
            &dst.keys,
            &mut best,
            &mut matches,
        );
        index.wide_first(&index.by_to, &dst.keys, &src.keys, &mut best, &mut matches);
        (best != u32::MAX).then_some(best)
    }

    /// Every rule of `lists` filed under this pair, ascending and without duplicates (lists
    /// that share a numbering, deny and allow, are merged).
    pub(crate) fn candidates(
        &self,
        lists: &[RuleList],
        src: &Placement,
        dst: &Placement,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for &list in lists {
            let index = self.list(list);
            for &s in &src.keys {
                for &d in &dst.keys {
                    if let Some(bucket) = index.pairs.get(&(s, d)) {
                        out.extend_from_slice(bucket);
                    }
                }
            }
            index.wide_all(&index.by_from, &src.keys, &dst.keys, &mut out);
            index.wide_all(&index.by_to, &dst.keys, &src.keys, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn list(&self, list: RuleList) -> &ListIndex {
        match list {
            RuleList::Deny => &self.deny,
            RuleList::Allow => &self.allow,
            RuleList::BreakGlass => &self.break_glass,
        }
    }

    /// Walk the identity trie once: the keys of the `side` patterns matching the identity and
    /// its segment (segments never overlap, so there is at most one).
    #[inline]
    fn place(&self, trust_domain: &str, path: &str, side: Slot) -> Placement {
        let mut placed = Placement::default();
        self.trie.lookup(trust_domain, path, &mut |slot, k| {
            if slot == Slot::Segment {
                placed.segment = Some(k);
            } else if slot == side {
                placed.keys.push(k);
            }
        });
        placed
    }
}

/// Collects segment members and rules, then freezes them into a [`RuleIndex`].
#[derive(Debug)]
pub(crate) struct IndexBuilder {
    trie: IdTrie,
    segment_count: u32,
    /// Interned pattern keys, by where the pattern ends in the trie (no pattern hashing or
    /// cloning): (leaf node, ends in `**`) -> key.
    patterns: FnvHashMap<(u32, bool), u32>,
    deny: ListBuilder,
    allow: ListBuilder,
    break_glass: ListBuilder,
    froms: Vec<u32>,
    tos: Vec<u32>,
    /// Entries filed so far (pair entries, wide entries and wide sets' keys).
    entries: u64,
}

/// One list's rules while they are being added.
#[derive(Debug, Default)]
struct ListBuilder {
    pairs: FnvHashMap<(u32, u32), Vec<u32>>,
    by_from: FnvHashMap<u32, Vec<Wide>>,
    by_to: FnvHashMap<u32, Vec<Wide>>,
    sets: Vec<u32>,
}

impl IndexBuilder {
    /// A builder for a policy with `segment_count` segments (numbered from 0). Pattern keys are
    /// numbered after them.
    pub(crate) fn new(segment_count: u32) -> Self {
        IndexBuilder {
            trie: IdTrie::default(),
            segment_count,
            patterns: FnvHashMap::default(),
            deny: ListBuilder::default(),
            allow: ListBuilder::default(),
            break_glass: ListBuilder::default(),
            froms: Vec::new(),
            tos: Vec::new(),
            entries: 0,
        }
    }

    /// `member` belongs to segment `segment`. Add every member before the first rule.
    pub(crate) fn segment_member(&mut self, segment: u32, member: &Pattern) {
        self.trie.insert(member, Slot::Segment, segment);
    }

    /// File rule number `position` of `list` under the `from` and `to` entries it names; `to` of
    /// `None` means any destination, including an unknown one. Add a list's rules in ascending
    /// order. The entries this files number at most [`PAIR_FACTOR`] times the rule's entries.
    pub(crate) fn rule<'a>(
        &mut self,
        list: RuleList,
        position: u32,
        from: impl IntoIterator<Item = Selector<'a>>,
        to: Option<impl IntoIterator<Item = Selector<'a>>>,
    ) {
        let mut froms = std::mem::take(&mut self.froms);
        let mut tos = std::mem::take(&mut self.tos);
        froms.clear();
        for e in from {
            froms.push(self.key(e, Slot::From));
        }
        tos.clear();
        match to {
            None => tos.push(ANY),
            Some(to) => {
                for e in to {
                    tos.push(self.key(e, Slot::To));
                }
            }
        }
        froms.sort_unstable();
        froms.dedup();
        tos.sort_unstable();
        tos.dedup();
        let index = match list {
            RuleList::Deny => &mut self.deny,
            RuleList::Allow => &mut self.allow,
            RuleList::BreakGlass => &mut self.break_glass,
        };
        let product = froms.len().saturating_mul(tos.len());
        if product <= PAIR_FACTOR.saturating_mul(froms.len() + tos.len()) {
            for &f in &froms {
                for &t in &tos {
                    let bucket = index.pairs.entry((f, t)).or_default();
                    if bucket.last() != Some(&position) {
                        bucket.push(position);
                    }
                }
            }
            self.entries = self.entries.saturating_add(product as u64);
        } else {
            // Wide: file under the smaller side, test the other side at lookup.
            let (keys, other, by) = if froms.len() <= tos.len() {
                (&froms, &tos, &mut index.by_from)
            } else {
                (&tos, &froms, &mut index.by_to)
            };
            let start = index.sets.len() as u32;
            index.sets.extend_from_slice(other);
            let wide = Wide {
                position,
                set: (start, index.sets.len() as u32),
            };
            for &k in keys.iter() {
                by.entry(k).or_default().push(wide);
            }
            self.entries = self
                .entries
                .saturating_add((keys.len() + other.len()) as u64);
        }
        self.froms = froms;
        self.tos = tos;
    }

    /// The key of one entry. Keys are interned per pattern, shared by `from` and `to`; the trie
    /// records which side named a pattern, so a key filed as `from` never matches a destination.
    fn key(&mut self, e: Selector<'_>, slot: Slot) -> u32 {
        match e {
            Selector::Segment(s) => s,
            Selector::Pattern(p) => {
                let next = self.segment_count + self.patterns.len() as u32;
                let k = match self.trie.find(p).and_then(|leaf| self.patterns.get(&leaf)) {
                    Some(&k) => k,
                    None => next,
                };
                let leaf = self.trie.insert(p, slot, k);
                self.patterns.entry(leaf).or_insert(k);
                k
            }
        }
    }

    /// Entries filed so far: (from, to) pairs of narrow rules, plus the keys of wide rules.
    /// Grows linearly with the rules' `from` and `to` entries (at most [`PAIR_FACTOR`] per
    /// entry), so callers can bound it by the bundle's size.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Nodes of the identity trie so far (one per distinct trust domain and pattern prefix).
    pub(crate) fn trie_nodes(&self) -> u64 {
        self.trie.nodes.len() as u64
    }

    /// The finished, compacted index.
    pub(crate) fn finish(mut self) -> RuleIndex {
        self.trie.shrink();
        RuleIndex {
            trie: self.trie,
            deny: self.deny.freeze(),
            allow: self.allow.freeze(),
            break_glass: self.break_glass.freeze(),
        }
    }
}

impl ListBuilder {
    fn freeze(self) -> ListIndex {
        let mut pairs = PairIndex::with_capacity_and_hasher(self.pairs.len(), Default::default());
        pairs.extend(
            self.pairs
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice())),
        );
        let keyed = |m: FnvHashMap<u32, Vec<Wide>>| {
            let mut out = KeyIndex::with_capacity_and_hasher(m.len(), Default::default());
            out.extend(m.into_iter().map(|(k, v)| (k, v.into_boxed_slice())));
            out
        };
        let mut sets = self.sets;
        sets.shrink_to_fit();
        ListIndex {
            pairs,
            by_from: keyed(self.by_from),
            by_to: keyed(self.by_to),
            sets,
        }
    }
}

/// Narrow rules' positions (ascending, i.e. bundle order) per (source key, destination key).
type PairIndex = HashMap<(u32, u32), Box<[u32]>, BuildHasherDefault<PairHasher>>;

/// Wide rules (ascending positions) per key of the side they are filed by.
type KeyIndex = HashMap<u32, Box<[Wide]>, BuildHasherDefault<PairHasher>>;

/// A multiplicative hasher for the index's `u32` and `(u32, u32)` keys: integer writes, one
/// multiply and a fold, instead of FNV's byte loop. Keys are small dense integers chosen by the
/// compiler, not by requests, so no keyed hash is needed.
#[derive(Debug, Default, Clone, Copy)]
struct PairHasher(u64);

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
enum Slot {
    /// A segment member pattern; the payload is the segment number.
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

/// A trie over SPIFFE IDs: trust domain, then path segments, with `*` and `**` edges. One trie
/// holds segment members and `from` and `to` patterns alike (each payload tagged with its
/// [`Slot`]), so a request walks it once per identity.
#[derive(Debug, Default)]
struct IdTrie {
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
/// `sa` level of a large mesh) have thousands. Each edge holds the pattern's own string.
#[derive(Debug)]
enum Children {
    Few(Vec<(Arc<str>, u32)>),
    Many(FnvHashMap<Arc<str>, u32>),
}

impl Children {
    #[inline]
    fn get(&self, seg: &str) -> Option<u32> {
        match self {
            Children::Few(list) => list.iter().find(|(l, _)| **l == *seg).map(|&(_, n)| n),
            Children::Many(map) => map.get(seg).copied(),
        }
    }

    fn insert(&mut self, seg: &Arc<str>, node: u32) {
        match self {
            Children::Few(list) if list.len() < FEW_CHILDREN => {
                list.push((Arc::clone(seg), node));
            }
            Children::Few(list) => {
                let mut map: FnvHashMap<Arc<str>, u32> = list.drain(..).collect();
                map.insert(Arc::clone(seg), node);
                *self = Children::Many(map);
            }
            Children::Many(map) => {
                map.insert(Arc::clone(seg), node);
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
    fn lookup(&self, trust_domain: &str, path: &str, found: &mut impl FnMut(Slot, u32)) {
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

#[cfg(test)]
mod tests;
