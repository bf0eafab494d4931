//! Tests of the rule index through the calls `compile` and `eval` make.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn id(p: &str) -> Pattern {
    Pattern::parse_spiffe(p).expect("pattern")
}

fn pat(p: &Pattern) -> Selector<'_> {
    Selector::Pattern(p)
}

/// `spiffe://td/path` as (trust domain, path).
fn split(s: &str) -> (&str, &str) {
    let rest = s.strip_prefix("spiffe://").unwrap();
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// Every rule of `list` filed for (source, destination), through the lookups `eval` uses.
fn filed(index: &RuleIndex, list: RuleList, src: &str, dst: Option<&str>) -> Vec<u32> {
    let (td, path) = split(src);
    let src = index.source(td, path);
    let dst = index.destination(dst.map(split));
    index.candidates(&[list], &src, &dst)
}

#[test]
fn rules_are_found_by_pattern_segment_and_any_destination() {
    let clinical = id("spiffe://td/ns/clinical/**");
    let ehr = id("spiffe://td/ns/clinical/sa/ehr");
    let any_sa = id("spiffe://td/ns/*/sa/lab");
    let mut b = IndexBuilder::new(1);
    b.segment_member(0, &clinical);
    // 0: ehr -> any sa/lab; 1: clinical segment -> anywhere; 2: any_sa -> ehr.
    b.rule(RuleList::Allow, 0, [pat(&ehr)], Some([pat(&any_sa)]));
    b.rule(
        RuleList::Allow,
        1,
        [Selector::Segment(0)],
        None::<[Selector<'_>; 0]>,
    );
    b.rule(RuleList::Allow, 2, [pat(&any_sa)], Some([pat(&ehr)]));
    let index = b.finish();

    let ehr_id = "spiffe://td/ns/clinical/sa/ehr";
    let lab_id = "spiffe://td/ns/clinical/sa/lab";
    assert_eq!(
        filed(&index, RuleList::Allow, ehr_id, Some(lab_id)),
        vec![0, 1]
    );
    // An unknown destination meets only rules without `to`.
    assert_eq!(filed(&index, RuleList::Allow, ehr_id, None), vec![1]);
    // A `to` pattern never places a source: lab is placed by `any_sa` only as a `from`.
    assert_eq!(
        filed(&index, RuleList::Allow, lab_id, Some(ehr_id)),
        vec![1, 2]
    );
    // `**` needs at least one further segment; the other lists stay empty.
    assert_eq!(
        filed(&index, RuleList::Allow, "spiffe://td/ns/clinical", None),
        Vec::<u32>::new()
    );
    assert!(filed(&index, RuleList::Deny, ehr_id, Some(lab_id)).is_empty());
    let placed = index.source("td", "/ns/clinical/sa/ehr");
    assert_eq!(placed.segment(), Some(0));
    assert_eq!(index.source("other", "/ns/clinical/sa/ehr").segment(), None);
}

#[test]
fn first_match_is_the_lowest_matching_position() {
    let a = id("spiffe://td/a");
    let b_id = id("spiffe://td/b");
    let star = id("spiffe://td/*");
    let mut b = IndexBuilder::new(0);
    b.rule(RuleList::Deny, 0, [pat(&star)], Some([pat(&b_id)]));
    b.rule(RuleList::Deny, 3, [pat(&a)], Some([pat(&b_id)]));
    b.rule(RuleList::Deny, 5, [pat(&a)], None::<[Selector<'_>; 0]>);
    let index = b.finish();
    let src = index.source("td", "/a");
    let dst = index.destination(Some(("td", "/b")));
    assert_eq!(
        index.first_match(RuleList::Deny, &src, &dst, |_| true),
        Some(0)
    );
    assert_eq!(
        index.first_match(RuleList::Deny, &src, &dst, |i| i != 0),
        Some(3)
    );
    assert_eq!(
        index.first_match(RuleList::Deny, &src, &dst, |i| i == 5),
        Some(5)
    );
    assert_eq!(
        index.first_match(RuleList::Deny, &src, &dst, |_| false),
        None
    );
    assert_eq!(
        index.first_match(RuleList::Allow, &src, &dst, |_| true),
        None
    );
}

#[test]
fn wide_trie_levels_still_find_every_child() {
    // More literal children than FEW_CHILDREN switches the node to a hash map.
    let names: Vec<String> = (0..3 * FEW_CHILDREN)
        .map(|i| format!("spiffe://td/sa/w{i}"))
        .collect();
    let patterns: Vec<Pattern> = names.iter().map(|n| id(n)).collect();
    let mut b = IndexBuilder::new(0);
    for (i, p) in patterns.iter().enumerate() {
        b.rule(
            RuleList::Allow,
            i as u32,
            [pat(p)],
            None::<[Selector<'_>; 0]>,
        );
    }
    let index = b.finish();
    for i in 0..patterns.len() {
        let src = index.source("td", &format!("/sa/w{i}"));
        let dst = index.destination(None);
        assert_eq!(
            index.candidates(&[RuleList::Allow], &src, &dst),
            vec![i as u32]
        );
    }
}

/// The review's worst case: one rule naming 4,000 sources and the same 4,000 destinations.
/// Filing it under every pair made 16 million entries; the index must stay linear in what the
/// rule names, and still find the rule for every pair it names and for no other.
#[test]
fn a_rule_naming_thousands_of_sources_and_destinations_stays_linear() {
    let n = 4_000;
    let patterns: Vec<Pattern> = (0..n)
        .map(|i| id(&format!("spiffe://td/sa/w{i}")))
        .collect();
    let mut b = IndexBuilder::new(0);
    b.rule(
        RuleList::Allow,
        0,
        patterns.iter().map(pat),
        Some(patterns.iter().map(pat)),
    );
    // A narrow rule beside it: one source, every destination.
    b.rule(
        RuleList::Allow,
        1,
        [pat(&patterns[7])],
        Some(patterns.iter().map(pat)),
    );
    let named = 3 * n as u64 + 1;
    assert!(
        b.entries() <= 8 * named,
        "{} entries for {named} named keys",
        b.entries()
    );
    let index = b.finish();
    for (s, d) in [(0, 1), (3_999, 0), (7, 7), (1_234, 2_345)] {
        let src = index.source("td", &format!("/sa/w{s}"));
        let dst = index.destination(Some(("td", &format!("/sa/w{d}"))));
        let expected: Vec<u32> = if s == 7 { vec![0, 1] } else { vec![0] };
        assert_eq!(
            index.candidates(&[RuleList::Allow], &src, &dst),
            expected,
            "w{s} -> w{d}"
        );
        assert_eq!(
            index.first_match(RuleList::Allow, &src, &dst, |i| i == 1),
            (s == 7).then_some(1)
        );
    }
    // A destination the rule does not name, and an unknown one.
    let src = index.source("td", "/sa/w1");
    let outside = index.destination(Some(("td", "/sa/other")));
    assert!(index
        .candidates(&[RuleList::Allow], &src, &outside)
        .is_empty());
    assert!(index
        .candidates(&[RuleList::Allow], &src, &index.destination(None))
        .is_empty());
}

/// Narrow and wide rules mixed, every list, against a brute-force reading of `from` and `to`:
/// the index must file each rule exactly where the rule's own entries say, whichever way it
/// files it.
#[test]
fn wide_and_narrow_rules_agree_with_brute_force() {
    let ids: Vec<String> = (0..12).map(|i| format!("/ns/n{}/sa/s{i}", i % 3)).collect();
    let exact: Vec<Pattern> = ids.iter().map(|p| id(&format!("spiffe://td{p}"))).collect();
    let ns: Vec<Pattern> = (0..3)
        .map(|n| id(&format!("spiffe://td/ns/n{n}/**")))
        .collect();
    let star = id("spiffe://td/ns/*/sa/s4");
    // Segment 0 holds namespace n0.
    let in_segment = |i: usize| i % 3 == 0;
    // Rule r: sources and destinations chosen by a small arithmetic pattern, some by
    // segment, some by `**`, some by `*`; sizes from 1 to 12 on each side.
    #[derive(Clone)]
    enum E {
        Id(usize),
        Ns(usize),
        Seg,
        Star,
    }
    let matches = |e: &E, i: usize| match e {
        E::Id(j) => *j == i,
        E::Ns(n) => i % 3 == *n,
        E::Seg => in_segment(i),
        E::Star => i == 4,
    };
    let side = |r: usize, salt: usize| -> Vec<E> {
        let len = 1 + (r * 7 + salt) % 12;
        (0..len)
            .map(|k| match (r + k + salt) % 9 {
                0 => E::Ns((r + k) % 3),
                1 => E::Seg,
                2 => E::Star,
                _ => E::Id((r * 5 + k * 3 + salt) % 12),
            })
            .collect()
    };
    let rules: Vec<(Vec<E>, Option<Vec<E>>)> = (0..40)
        .map(|r| (side(r, 1), (r % 5 != 0).then(|| side(r, 4))))
        .collect();
    let sel = |e: &E| -> Selector<'_> {
        match e {
            E::Id(j) => pat(&exact[*j]),
            E::Ns(n) => pat(&ns[*n]),
            E::Seg => Selector::Segment(0),
            E::Star => pat(&star),
        }
    };
    let mut b = IndexBuilder::new(1);
    b.segment_member(0, &ns[0]);
    for (r, (from, to)) in rules.iter().enumerate() {
        let list = if r % 2 == 0 {
            RuleList::Allow
        } else {
            RuleList::Deny
        };
        b.rule(
            list,
            r as u32,
            from.iter().map(sel),
            to.as_ref().map(|t| t.iter().map(sel)),
        );
    }
    let index = b.finish();
    for s in 0..12 {
        for d in (0..12).map(Some).chain([None]) {
            let src_id = format!("spiffe://td{}", ids[s]);
            let dst_id = d.map(|d| format!("spiffe://td{}", ids[d]));
            for (list, parity) in [(RuleList::Allow, 0), (RuleList::Deny, 1)] {
                let expected: Vec<u32> = rules
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| r % 2 == parity)
                    .filter(|(_, (from, to))| {
                        from.iter().any(|e| matches(e, s))
                            && match (to, d) {
                                (None, _) => true,
                                (Some(_), None) => false,
                                (Some(to), Some(d)) => to.iter().any(|e| matches(e, d)),
                            }
                    })
                    .map(|(r, _)| r as u32)
                    .collect();
                assert_eq!(
                    filed(&index, list, &src_id, dst_id.as_deref()),
                    expected,
                    "{src_id} -> {dst_id:?}"
                );
                let src = index.source("td", &ids[s]);
                let dst = index.destination(d.map(|d| ("td", ids[d].as_str())));
                for skip in 0..3 {
                    assert_eq!(
                        index.first_match(list, &src, &dst, |i| !expected
                            .iter()
                            .take(skip)
                            .any(|&e| e == i)),
                        expected.get(skip).copied(),
                        "{src_id} -> {dst_id:?}, skipping {skip}"
                    );
                }
            }
        }
    }
}
