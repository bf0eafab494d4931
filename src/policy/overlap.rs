//! Finding segment members that overlap a member of another segment, without comparing every
//! pair.
//!
//! Segments must never overlap (an identity belongs to at most one segment). `compile` adds the
//! members one by one, in bundle order, and asks before each addition whether the new member
//! overlaps one already added to another segment. Members live in a trie over trust domain and
//! path segments (`*` edges and `**` ends as in the rule index), and every node knows whether
//! its subtree holds members of no segment, of one segment, or of several; a query skips every
//! subtree that holds only its own segment, so members grouped by namespace cost a walk down
//! their own path. Hostile member lists (wildcards at every level, segments interleaved) can
//! still make a query visit much of the trie: every node visited is counted, and the caller
//! stops once its compile budget runs out.
//!
//! This module never reports anything itself and never knows segment names: it answers "which
//! earlier member overlaps this one", by member number.

use std::sync::Arc;

use fnv::FnvHashMap;

use super::pattern::{Pattern, Seg};

const NO_NODE: u32 = u32::MAX;
/// Subtree summary: no member.
const EMPTY: u32 = u32::MAX;
/// Subtree summary: members of more than one segment.
const MIXED: u32 = u32::MAX - 1;

/// The members added so far. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct MemberTrie {
    roots: FnvHashMap<Box<str>, u32>,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    literal: FnvHashMap<Arc<str>, u32>,
    star: u32,
    /// (segment, member) of members ending exactly here.
    exact: Vec<(u32, u32)>,
    /// (segment, member) of members ending here in `**`.
    more: Vec<(u32, u32)>,
    /// The segment of every member at or below this node, or [`EMPTY`] / [`MIXED`].
    owner: u32,
}

impl Node {
    fn new() -> Node {
        Node {
            literal: FnvHashMap::default(),
            star: NO_NODE,
            exact: Vec::new(),
            more: Vec::new(),
            owner: EMPTY,
        }
    }

    /// Whether the subtree may hold a member of a segment other than `segment`.
    fn foreign(&self, segment: u32) -> bool {
        self.owner != EMPTY && self.owner != segment
    }
}

fn merge(owner: u32, segment: u32) -> u32 {
    match owner {
        EMPTY => segment,
        o if o == segment => o,
        _ => MIXED,
    }
}

/// A query's node-visit allowance ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted;

/// One query: the pattern asked about, its segment, and the visits left.
struct Query<'a> {
    segs: &'a [Seg],
    more: bool,
    segment: u32,
    visits: &'a mut u64,
}

impl Query<'_> {
    fn visit(&mut self) -> Result<(), Exhausted> {
        if *self.visits == 0 {
            return Err(Exhausted);
        }
        *self.visits -= 1;
        Ok(())
    }

    fn other(&self, list: &[(u32, u32)]) -> Option<u32> {
        list.iter()
            .find(|&&(s, _)| s != self.segment)
            .map(|&(_, m)| m)
    }
}

impl MemberTrie {
    /// Add member number `member` of segment `segment`.
    pub(crate) fn insert(&mut self, pattern: &Pattern, segment: u32, member: u32) {
        let td = pattern.trust_domain().unwrap_or("");
        let mut node = match self.roots.get(td) {
            Some(&n) => n,
            None => {
                let n = self.new_node();
                self.roots.insert(td.into(), n);
                n
            }
        };
        self.own(node, segment);
        for seg in pattern.segments() {
            let next = match seg {
                Seg::Literal(l) => self.node(node).and_then(|n| n.literal.get(&**l).copied()),
                Seg::Any => self.node(node).map(|n| n.star).filter(|&s| s != NO_NODE),
            };
            node = match next {
                Some(n) => n,
                None => {
                    let n = self.new_node();
                    if let Some(parent) = self.nodes.get_mut(node as usize) {
                        match seg {
                            Seg::Literal(l) => {
                                parent.literal.insert(Arc::clone(l), n);
                            }
                            Seg::Any => parent.star = n,
                        }
                    }
                    n
                }
            };
            self.own(node, segment);
        }
        if let Some(leaf) = self.nodes.get_mut(node as usize) {
            if pattern.more() {
                leaf.more.push((segment, member));
            } else {
                leaf.exact.push((segment, member));
            }
        }
    }

    /// A member of a segment other than `segment`, added earlier, that overlaps `pattern` (some
    /// identity matches both), if there is one. Each trie node looked at costs one of `visits`.
    pub(crate) fn overlapping(
        &self,
        pattern: &Pattern,
        segment: u32,
        visits: &mut u64,
    ) -> Result<Option<u32>, Exhausted> {
        let td = pattern.trust_domain().unwrap_or("");
        let Some(&root) = self.roots.get(td) else {
            return Ok(None);
        };
        let mut q = Query {
            segs: pattern.segments(),
            more: pattern.more(),
            segment,
            visits,
        };
        self.walk(root, 0, &mut q)
    }

    /// Nodes in the trie (for the compile budget's memory estimate).
    pub(crate) fn nodes(&self) -> u64 {
        self.nodes.len() as u64
    }

    fn node(&self, n: u32) -> Option<&Node> {
        self.nodes.get(n as usize)
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node::new());
        (self.nodes.len() - 1) as u32
    }

    fn own(&mut self, node: u32, segment: u32) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.owner = merge(n.owner, segment);
        }
    }

    /// Members at or below `node` (which sits at depth `depth`, the pattern's first `depth`
    /// segments already matched) that overlap the query.
    fn walk(&self, node: u32, depth: usize, q: &mut Query<'_>) -> Result<Option<u32>, Exhausted> {
        let Some(n) = self.node(node) else {
            return Ok(None);
        };
        if !n.foreign(q.segment) {
            return Ok(None);
        }
        q.visit()?;
        let n_segs = q.segs.len();
        // A stored `**` member ending here matches every longer identity with this prefix.
        if depth < n_segs || q.more {
            if let Some(m) = q.other(&n.more) {
                return Ok(Some(m));
            }
        }
        match q.segs.get(depth) {
            None if q.more => {
                // The query's own `**` matches every identity below this node: any member
                // strictly below overlaps.
                self.any_below(n, q)
            }
            None => Ok(q.other(&n.exact)),
            Some(Seg::Literal(l)) => {
                if let Some(&child) = n.literal.get(&**l) {
                    if let Some(m) = self.walk(child, depth + 1, q)? {
                        return Ok(Some(m));
                    }
                }
                if n.star != NO_NODE {
                    return self.walk(n.star, depth + 1, q);
                }
                Ok(None)
            }
            Some(Seg::Any) => {
                for &child in n.literal.values() {
                    if let Some(m) = self.walk(child, depth + 1, q)? {
                        return Ok(Some(m));
                    }
                }
                if n.star != NO_NODE {
                    return self.walk(n.star, depth + 1, q);
                }
                Ok(None)
            }
        }
    }

    /// Some member of another segment strictly below `n`, found through the owner summaries.
    fn any_below(&self, n: &Node, q: &mut Query<'_>) -> Result<Option<u32>, Exhausted> {
        let children = n.literal.values().copied().chain(Some(n.star));
        for child in children {
            let Some(c) = self.node(child) else {
                continue;
            };
            if !c.foreign(q.segment) {
                continue;
            }
            q.visit()?;
            if let Some(m) = q.other(&c.exact).or_else(|| q.other(&c.more)) {
                return Ok(Some(m));
            }
            if let Some(m) = self.any_below(c, q)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse_spiffe(s).expect("pattern")
    }

    /// Compare the trie with `Pattern::overlaps` on every pair of a small set of patterns.
    #[test]
    fn agrees_with_pairwise_overlap() {
        let all = [
            "spiffe://td/a",
            "spiffe://td/a/b",
            "spiffe://td/a/*",
            "spiffe://td/a/**",
            "spiffe://td/*/b",
            "spiffe://td/*",
            "spiffe://td/**",
            "spiffe://td",
            "spiffe://td/x/y/z",
            "spiffe://td/*/*/z",
            "spiffe://other/a",
            "spiffe://td/a/b/**",
        ];
        for (i, a) in all.iter().enumerate() {
            for b in all.iter() {
                let mut trie = MemberTrie::default();
                trie.insert(&p(a), 0, i as u32);
                let mut visits = u64::MAX;
                let found = trie.overlapping(&p(b), 1, &mut visits).expect("budget");
                let expected = p(a).overlaps(&p(b));
                assert_eq!(found.is_some(), expected, "{a} vs {b}");
                // Same segment: never reported.
                let same = trie.overlapping(&p(b), 0, &mut visits).expect("budget");
                assert_eq!(same, None, "{a} vs {b} in one segment");
            }
        }
    }

    #[test]
    fn many_disjoint_members_cost_a_walk_each() {
        let mut trie = MemberTrie::default();
        let mut visits = 10_000_000u64;
        let n = 20_000u32;
        for i in 0..n {
            let m = p(&format!("spiffe://td/ns/s{}/sa/w{i}", i % 7));
            assert_eq!(trie.overlapping(&m, i % 7, &mut visits), Ok(None));
            trie.insert(&m, i % 7, i);
        }
        // A handful of nodes per query, not a scan of the earlier members.
        assert!(10_000_000 - visits < u64::from(n) * 8, "{visits}");
    }

    #[test]
    fn running_out_of_visits_is_reported() {
        let mut trie = MemberTrie::default();
        for i in 0..100u32 {
            trie.insert(&p(&format!("spiffe://td/a{i}/x")), i % 2, i);
        }
        let mut visits = 10;
        assert_eq!(
            trie.overlapping(&p("spiffe://td/*/y"), 5, &mut visits),
            Err(Exhausted)
        );
    }
}
