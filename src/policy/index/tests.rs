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
