//! A fast path for reading bundle files: a parser for the plain block-style YAML that bundles
//! are written in, producing exactly the [`RawBundle`] serde-saphyr would, positions included.
//!
//! It exists for speed only (a 10,000-rule bundle is 2 MB of YAML; serde-saphyr spent three
//! quarters of compile time on it). It never decides anything and never reports an error: on
//! anything outside the small subset it understands (anchors, aliases, tags, block scalars,
//! flow mappings, escapes, multi-line scalars, tabs, non-ASCII, duplicate or unknown keys,
//! `null`/boolean-looking plain scalars, ...) it answers `None`, and the caller parses the
//! file with serde-saphyr, which stays the reference and the source of every error message.
//! A differential test (below) checks both agree on every bundle the tests know.

use super::{
    Loc, OrderedMap, RawBreakGlass, RawBundle, RawRule, RawSchedule, RawSegment, RawWhen, S,
};

/// A parsed node. Scalars are slices of the input (the subset has no escapes).
#[derive(Debug)]
enum Node<'a> {
    Scalar {
        text: &'a str,
        plain: bool,
        at: Loc,
    },
    Seq {
        items: Vec<Node<'a>>,
        at: Loc,
    },
    Map {
        entries: Vec<(&'a str, Loc, Node<'a>)>,
        at: Loc,
    },
}

impl Node<'_> {
    fn at(&self) -> Loc {
        match self {
            Node::Scalar { at, .. } | Node::Seq { at, .. } | Node::Map { at, .. } => *at,
        }
    }
}

/// One content line: 1-based number, indentation, and the text after the indentation.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    no: u64,
    indent: usize,
    text: &'a str,
}

/// Parse `text` if it is within the subset; `None` means "ask serde-saphyr".
pub(crate) fn parse(text: &str) -> Option<RawBundle> {
    if text.contains(['\t', '\r']) || text.starts_with('\u{feff}') {
        return None;
    }
    let mut lines = Vec::with_capacity(text.len() / 24);
    for (i, raw) in text.split('\n').enumerate() {
        let trimmed = raw.trim_end_matches(' ');
        let content = trimmed.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue; // comments may hold any text
        }
        if !content.is_ascii() {
            return None; // columns would count characters, not bytes
        }
        if content.starts_with("---") || content.starts_with("...") || content.starts_with('%') {
            return None;
        }
        lines.push(Line {
            no: i as u64 + 1,
            indent: trimmed.len() - content.len(),
            text: content,
        });
    }
    let first = *lines.first()?;
    if first.indent != 0 {
        return None;
    }
    let mut p = Parser { lines, pos: 0 };
    let root = p.block(0)?;
    if p.pos != p.lines.len() {
        return None;
    }
    bundle(root)
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

fn loc(line: u64, column: usize) -> Loc {
    Loc {
        line,
        column: column as u64 + 1,
    }
}

impl<'a> Parser<'a> {
    /// The block node starting at the current line, whose indentation must be exactly `indent`.
    fn block(&mut self, indent: usize) -> Option<Node<'a>> {
        let line = *self.lines.get(self.pos)?;
        if line.indent != indent {
            return None;
        }
        if line.text == "-" || line.text.starts_with("- ") {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    fn sequence(&mut self, indent: usize) -> Option<Node<'a>> {
        let first = self.lines[self.pos];
        let at = loc(first.no, first.indent);
        let mut items = Vec::new();
        while let Some(&line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            if line.indent != indent || !line.text.starts_with("- ") {
                // A deeper line here, or a key beside the items: outside the subset.
                if line.indent == indent && line.text != "-" {
                    break;
                }
                return None;
            }
            let rest = line.text[2..].trim_start_matches(' ');
            let column = indent + (line.text.len() - rest.len());
            if rest.is_empty() || rest.starts_with("- ") || rest == "-" {
                return None;
            }
            if key_of(rest).is_some() {
                // `- key: value` opens a mapping whose keys sit at `column`.
                self.lines[self.pos] = Line {
                    no: line.no,
                    indent: column,
                    text: rest,
                };
                items.push(self.mapping(column)?);
            } else {
                let (node, tail) = inline_value(rest, line.no, column)?;
                if !tail.is_empty() {
                    return None;
                }
                items.push(node);
                self.pos += 1;
            }
        }
        Some(Node::Seq { items, at })
    }

    fn mapping(&mut self, indent: usize) -> Option<Node<'a>> {
        let first = self.lines[self.pos];
        let at = loc(first.no, first.indent);
        let mut entries: Vec<(&'a str, Loc, Node<'a>)> = Vec::with_capacity(8);
        while let Some(&line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || line.text.starts_with("- ") || line.text == "-" {
                return None;
            }
            let (key, rest) = key_of(line.text)?;
            if entries.iter().any(|(k, _, _)| *k == key) {
                return None; // duplicate keys: serde-saphyr's to judge
            }
            let key_at = loc(line.no, line.indent);
            let rest_trimmed = rest.trim_start_matches(' ');
            if rest_trimmed.is_empty() || rest_trimmed.starts_with('#') {
                // The value is the block on the following lines.
                self.pos += 1;
                let next = *self.lines.get(self.pos)?;
                let value = if next.indent > indent {
                    self.block(next.indent)?
                } else if next.indent == indent && next.text.starts_with("- ") {
                    self.sequence(indent)?
                } else {
                    return None; // an empty value (null): serde-saphyr's to judge
                };
                entries.push((key, key_at, value));
            } else {
                if !rest.starts_with(' ') {
                    return None;
                }
                let column = line.indent + (line.text.len() - rest_trimmed.len());
                let (value, tail) = inline_value(rest_trimmed, line.no, column)?;
                if !tail.is_empty() {
                    return None;
                }
                entries.push((key, key_at, value));
                self.pos += 1;
            }
        }
        Some(Node::Map { entries, at })
    }
}

/// `key: rest` or `key:` (end of line). Keys are plain `[A-Za-z0-9_-]+` or simply quoted.
fn key_of(text: &str) -> Option<(&str, &str)> {
    let (key, after) = if let Some(q) = text.strip_prefix('"').or_else(|| text.strip_prefix('\'')) {
        let quote = text.as_bytes()[0] as char;
        let end = q.find(quote)?;
        let key = &q[..end];
        if key.contains(['\\', '"', '\'']) || key.is_empty() {
            return None;
        }
        (key, &q[end + 1..])
    } else {
        let end = text
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .unwrap_or(text.len());
        if end == 0 {
            return None;
        }
        (&text[..end], &text[end..])
    };
    let rest = after.strip_prefix(':')?;
    if rest.is_empty() || rest.starts_with(' ') {
        Some((key, rest))
    } else {
        None
    }
}

/// A value on one line: a flow sequence of scalars, or a scalar. Returns it and what follows
/// (empty, or the line was not in the subset).
fn inline_value(text: &str, line: u64, column: usize) -> Option<(Node<'_>, &str)> {
    let at = loc(line, column);
    if let Some(inner) = text.strip_prefix('[') {
        let mut items = Vec::with_capacity(4);
        let mut rest = inner.trim_start_matches(' ');
        let mut col = column + 1 + (inner.len() - rest.len());
        if let Some(after) = rest.strip_prefix(']') {
            return Some((Node::Seq { items, at }, comment_tail(after)?));
        }
        loop {
            let (node, used) = flow_scalar(rest, line, col)?;
            items.push(node);
            let after = rest[used..].trim_start_matches(' ');
            col += rest.len() - after.len();
            if let Some(a) = after.strip_prefix(',') {
                let a2 = a.trim_start_matches(' ');
                col += 1 + (a.len() - a2.len());
                rest = a2;
                if rest.starts_with(']') {
                    return None; // trailing comma: leave it to serde-saphyr
                }
            } else if let Some(a) = after.strip_prefix(']') {
                return Some((Node::Seq { items, at }, comment_tail(a)?));
            } else {
                return None;
            }
        }
    }
    if text.starts_with('{') {
        let (node, used) = flow_map(text, line, column)?;
        return Some((node, comment_tail(&text[used..])?));
    }
    let (node, used) = block_scalar(text, line, column)?;
    Some((node, comment_tail(&text[used..])?))
}

/// `{key: value, ...}` on one line, values being scalars or `[...]` of scalars: (node, bytes
/// used).
fn flow_map(text: &str, line: u64, column: usize) -> Option<(Node<'_>, usize)> {
    let at = loc(line, column);
    let mut entries: Vec<(&str, Loc, Node<'_>)> = Vec::new();
    let mut i = 1; // after `{`
    let skip = |i: &mut usize| {
        while text.as_bytes().get(*i) == Some(&b' ') {
            *i += 1;
        }
    };
    skip(&mut i);
    if text.get(i..)?.starts_with('}') {
        return Some((Node::Map { entries, at }, i + 1));
    }
    loop {
        let key_at = loc(line, column + i);
        let (key, after) = key_of(text.get(i..)?)?;
        if after.is_empty() || entries.iter().any(|(k, _, _)| *k == key) {
            return None;
        }
        i = text.len() - after.len(); // at the space after `:`
        skip(&mut i);
        let rest = text.get(i..)?;
        let (value, used) = if rest.starts_with('[') {
            let close = rest.find(']')?;
            let (node, tail) = inline_value(&rest[..=close], line, column + i)?;
            if !tail.is_empty() {
                return None;
            }
            (node, close + 1)
        } else {
            flow_scalar(rest, line, column + i)?
        };
        entries.push((key, key_at, value));
        i += used;
        skip(&mut i);
        match text.as_bytes().get(i) {
            Some(b',') => {
                i += 1;
                skip(&mut i);
                if text.get(i..)?.starts_with('}') {
                    return None; // trailing comma
                }
            }
            Some(b'}') => return Some((Node::Map { entries, at }, i + 1)),
            _ => return None,
        }
    }
}

/// What follows a value must be nothing or a comment; returns "" when so.
fn comment_tail(rest: &str) -> Option<&'static str> {
    let t = rest.trim_start_matches(' ');
    if t.is_empty() || (t.starts_with('#') && t.len() < rest.len()) {
        Some("")
    } else {
        None
    }
}

/// A quoted scalar without escapes, closing on this line: (text, bytes used).
fn quoted(text: &str) -> Option<(&str, usize)> {
    let quote = *text.as_bytes().first()?;
    let body = &text[1..];
    let end = body.find(quote as char)?;
    let s = &body[..end];
    if s.contains('\\') || (quote == b'\'' && body[end + 1..].starts_with('\'')) {
        return None;
    }
    Some((s, end + 2))
}

fn starts_like_plain(text: &str) -> bool {
    text.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_' || b == b'.')
}

/// Plain scalars that YAML would read as null, a boolean or a special float: not strings.
fn special(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "null" | "~" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | ".inf" | ".nan"
    ) || text.starts_with('.')
}

fn scalar_node(text: &str, plain: bool, line: u64, column: usize) -> Option<Node<'_>> {
    if plain && special(text) {
        return None;
    }
    Some(Node::Scalar {
        text,
        plain,
        at: loc(line, column),
    })
}

/// A scalar inside `[...]`: quoted, or plain up to `,` or `]`.
fn flow_scalar(text: &str, line: u64, column: usize) -> Option<(Node<'_>, usize)> {
    if text.starts_with('"') || text.starts_with('\'') {
        let (s, used) = quoted(text)?;
        return Some((scalar_node(s, false, line, column)?, used));
    }
    if !starts_like_plain(text) {
        return None;
    }
    let end = text.find([',', ']', '}'])?;
    let s = text[..end].trim_end_matches(' ');
    if s.contains([':', '#', '[', '{', '}', '"', '\'']) && !plain_colons_ok(s) {
        return None;
    }
    Some((scalar_node(s, true, line, column)?, s.len()))
}

/// `:` inside a plain scalar is fine when never followed by a space or the end (`spiffe://x`,
/// `06:00-20:00`); nothing else among the flagged characters is accepted.
fn plain_colons_ok(s: &str) -> bool {
    if s.contains(['#', '[', '{', '}', '"', '\'']) {
        return false;
    }
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .all(|(i, &c)| c != b':' || b.get(i + 1).is_some_and(|&n| n != b' ' && n != b','))
}

/// A scalar that is the rest of a block line: quoted, or plain up to a ` #` comment.
fn block_scalar(text: &str, line: u64, column: usize) -> Option<(Node<'_>, usize)> {
    if text.starts_with('"') || text.starts_with('\'') {
        let (s, used) = quoted(text)?;
        return Some((scalar_node(s, false, line, column)?, used));
    }
    if !starts_like_plain(text) {
        return None;
    }
    let end = text.find(" #").unwrap_or(text.len());
    let s = text[..end].trim_end_matches(' ');
    if s.contains([',', ']', '`'])
        || (s.contains([':', '#', '[', '{', '}', '"', '\'']) && !plain_colons_ok(s))
    {
        return None;
    }
    Some((scalar_node(s, true, line, column)?, s.len()))
}

// ----- typed conversion -----

fn string(node: Node<'_>) -> Option<S<String>> {
    match node {
        Node::Scalar { text, at, .. } => Some(S {
            value: text.to_owned(),
            referenced: at,
        }),
        _ => None,
    }
}

fn integer(node: Node<'_>) -> Option<S<u64>> {
    match node {
        Node::Scalar {
            text,
            plain: true,
            at,
        } if !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'))
            && text.len() < 19 =>
        {
            Some(S {
                value: text.parse().ok()?,
                referenced: at,
            })
        }
        _ => None,
    }
}

fn strings(node: Node<'_>) -> Option<Vec<S<String>>> {
    match node {
        Node::Seq { items, .. } => items.into_iter().map(string).collect(),
        _ => None,
    }
}

fn spanned_strings(node: Node<'_>) -> Option<S<Vec<S<String>>>> {
    let at = node.at();
    Some(S {
        value: strings(node)?,
        referenced: at,
    })
}

/// A mapping's entries: key, key position, value.
type Entries<'a> = Vec<(&'a str, Loc, Node<'a>)>;

fn entries(node: Node<'_>) -> Option<(Entries<'_>, Loc)> {
    match node {
        Node::Map { entries, at } => Some((entries, at)),
        _ => None,
    }
}

/// Set a field once; `None` (bail) for a second time (already excluded by the parser).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn ordered_map<V>(node: Node<'_>, value: impl Fn(Node<'_>) -> Option<V>) -> Option<OrderedMap<V>> {
    let (entries, _) = entries(node)?;
    let mut out = Vec::with_capacity(entries.len());
    for (key, at, v) in entries {
        out.push((
            S {
                value: key.to_owned(),
                referenced: at,
            },
            value(v)?,
        ));
    }
    Some(OrderedMap(out))
}

fn bundle(node: Node<'_>) -> Option<RawBundle> {
    let (entries, _) = entries(node)?;
    let mut b = RawBundle::default();
    let mut seen = [false; 6];
    for (key, _, v) in entries {
        let i = [
            "version",
            "revision",
            "trust_domains",
            "segments",
            "rules",
            "break_glass",
        ]
        .iter()
        .position(|k| *k == key)?;
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        match i {
            0 => b.version = Some(integer(v)?),
            1 => b.revision = Some(integer(v)?),
            2 => b.trust_domains = strings(v)?,
            3 => b.segments = ordered_map(v, segment)?,
            4 => b.rules = rules(v)?,
            _ => b.break_glass = Some(break_glass(v)?),
        }
    }
    Some(b)
}

fn segment(node: Node<'_>) -> Option<RawSegment> {
    let (entries, _) = entries(node)?;
    let mut members = None;
    let mut max_svid_lifetime = None;
    for (key, _, v) in entries {
        match key {
            "members" => once(&mut members, strings(v)?)?,
            "max_svid_lifetime" => once(&mut max_svid_lifetime, string(v)?)?,
            _ => return None,
        }
    }
    Some(RawSegment {
        members: members.unwrap_or_default(),
        max_svid_lifetime,
    })
}

fn rules(node: Node<'_>) -> Option<Vec<S<RawRule>>> {
    match node {
        Node::Seq { items, .. } => items.into_iter().map(rule).collect(),
        _ => None,
    }
}

fn rule(node: Node<'_>) -> Option<S<RawRule>> {
    let (entries, at) = entries(node)?;
    let mut r = RawRule {
        name: None,
        action: None,
        from: None,
        to: None,
        methods: None,
        paths: None,
        hosts: None,
        when: None,
    };
    for (key, _, v) in entries {
        match key {
            "name" => once(&mut r.name, string(v)?)?,
            "action" => once(&mut r.action, string(v)?)?,
            "from" => once(&mut r.from, spanned_strings(v)?)?,
            "to" => once(&mut r.to, spanned_strings(v)?)?,
            "methods" => once(&mut r.methods, spanned_strings(v)?)?,
            "paths" => once(&mut r.paths, spanned_strings(v)?)?,
            "hosts" => once(&mut r.hosts, spanned_strings(v)?)?,
            "when" => once(&mut r.when, when(v)?)?,
            _ => return None,
        }
    }
    Some(S {
        value: r,
        referenced: at,
    })
}

fn when(node: Node<'_>) -> Option<S<RawWhen>> {
    let (entries, at) = entries(node)?;
    let mut w = RawWhen {
        schedule: None,
        headers: None,
    };
    for (key, _, v) in entries {
        match key {
            "schedule" => once(&mut w.schedule, schedule(v)?)?,
            "headers" => once(&mut w.headers, ordered_map(v, strings)?)?,
            _ => return None,
        }
    }
    Some(S {
        value: w,
        referenced: at,
    })
}

fn schedule(node: Node<'_>) -> Option<S<RawSchedule>> {
    let (entries, at) = entries(node)?;
    let mut s = RawSchedule {
        days: None,
        hours: None,
        timezone: None,
    };
    for (key, _, v) in entries {
        match key {
            "days" => once(&mut s.days, spanned_strings(v)?)?,
            "hours" => once(&mut s.hours, string(v)?)?,
            "timezone" => once(&mut s.timezone, string(v)?)?,
            _ => return None,
        }
    }
    Some(S {
        value: s,
        referenced: at,
    })
}

fn break_glass(node: Node<'_>) -> Option<S<RawBreakGlass>> {
    let (entries, at) = entries(node)?;
    let mut header = None;
    let mut allow = None;
    for (key, _, v) in entries {
        match key {
            "header" => once(&mut header, string(v)?)?,
            "allow" => once(&mut allow, rules(v)?)?,
            _ => return None,
        }
    }
    Some(S {
        value: RawBreakGlass {
            header,
            allow: allow.unwrap_or_default(),
        },
        referenced: at,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_with_saphyr;
    use super::*;
    use crate::policy::error::Diagnostics;
    use proptest::prelude::*;

    const HOSPITAL: &str = include_str!("../../deploy/bundles/hospital.yaml");

    fn saphyr(text: &str) -> Option<RawBundle> {
        parse_with_saphyr("t.yaml", text, &mut Diagnostics::default()).map(|f| f.bundle)
    }

    /// Where the fast path answers, it answers exactly what serde-saphyr answers.
    fn agree(text: &str) -> bool {
        match parse(text) {
            None => false,
            Some(fast) => {
                assert_eq!(Some(fast), saphyr(text), "fast path differs on:\n{text}");
                true
            }
        }
    }

    fn generated(rules: usize) -> String {
        let mut y = String::from(
            "version: 1\nrevision: 7\ntrust_domains: [hospital.example, partner-lab.example]\n\
             segments:\n  clinical:\n    members: [\"spiffe://hospital.example/ns/clinical/**\"]\n\
             \x20 vendor:\n    members:\n      - spiffe://partner-lab.example/**\n    max_svid_lifetime: 1h\n\
             rules:\n",
        );
        for i in 0..rules {
            y.push_str(&format!(
                "  - name: r{i}   # rule {i}\n    from: [\"spiffe://hospital.example/ns/clinical/sa/s{i}\", vendor]\n    to: [spiffe://hospital.example/ns/clinical/sa/d{i}]\n    methods: [GET, 'POST']\n    paths: [\"/api/v1/res-{i}/**\", /api/v1/res-{i}]\n"
            ));
        }
        y
    }

    #[test]
    fn takes_the_fast_path_on_real_bundles() {
        assert!(agree(HOSPITAL), "hospital.yaml should be in the subset");
        assert!(agree(&generated(50)));
    }

    #[test]
    fn agrees_on_styles_it_accepts() {
        let cases = [
            "version: 1\nrevision: 2\ntrust_domains:\n- a.example\n- b.example\n",
            "version: 1\nrevision: 2\ntrust_domains: []\nrules: []\n",
            "version: 1 # c\nrevision: 2\n\n# x\ntrust_domains: [ a , 'b' ]   # tail\n",
            "rules:\n  - name: x\n    when:\n      schedule: {days: [mon], hours: \"06:00-20:00\"}\n",
            "rules:\n  - name: x\n    when:\n      schedule:\n        days: [mon, tue]\n        hours: 06:00-20:00\n        timezone: Europe/Berlin\n      headers:\n        x-purpose-of-use: [TREAT, ETREAT]\n        \"x-q\": ['a']\n",
            "break_glass:\n  header: x-break-glass-reason\n  allow:\n    - name: er\n      from: [clinical]\n      to: [clinical]\n",
            "rules:\n-   name: spaced\n    from: [a]\n",
            "segments:\n  s:\n    members: [\"spiffe://td/**\"]\n    max_svid_lifetime: 1h30m\n",
            "rules:\n  - name: 0-day\n    from: [a]\n    paths: [/a:b, /x]\n    hosts: [lab.svc]\n",
        ];
        for text in cases {
            assert!(agree(text), "{text:?} should take the fast path");
        }
    }

    #[test]
    fn leaves_everything_else_to_serde_saphyr() {
        for text in [
            "version: 1\nversion: 2\n",
            "rules:\n  - name: &a x\n",
            "rules:\n  - name: *a\n",
            "revision: !!int 3\n",
            "trust_domains: [a,]\n",
            "rules:\n  - name: \"a\\nb\"\n",
            "rules:\n  - name: |\n      x\n",
            "name: null\n",
            "version: 01\n",
            "unknown: 1\n",
            "rules:\n  - name: x\n    bogus: 1\n",
            "rules:\n  - name:\n",
            "rules:\n\t- name: x\n",
            "---\nversion: 1\n",
            "version: 1\r\n",
            "trust_domains: [a\n  , b]\n",
        ] {
            assert!(parse(text).is_none(), "{text:?} should fall back");
        }
    }

    fn mutation() -> impl Strategy<Value = (usize, String)> {
        (
            0usize..HOSPITAL.len(),
            prop::sample::select(vec![
                "", " ", "  ", "\n", "- ", ":", ": ", "#", " #", "[", "]", ",", "'", "\"", "x",
                "*", "&", "!", "|", "{", "}", "-", "null", "1", "\\", "\t", "~", "?",
            ])
            .prop_map(str::to_owned),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        /// Mutate the shipped bundle anywhere: whenever the fast path still answers, its answer
        /// is serde-saphyr's.
        #[test]
        fn mutated_bundles_agree_or_fall_back(
            edits in prop::collection::vec((mutation(), 0usize..3), 1..4)
        ) {
            let mut text = HOSPITAL.to_owned();
            for ((at, insert), delete) in edits {
                let mut at = at.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + delete).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(at..end, &insert);
            }
            if let Some(fast) = parse(&text) {
                prop_assert_eq!(Some(fast), saphyr(&text), "text:\n{}", text);
            }
        }
    }
}
