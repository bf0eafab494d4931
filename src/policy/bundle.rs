//! The raw bundle model (format version 1) as it is written in YAML or JSON, with source
//! locations.
//!
//! This is plain data deserialised with serde: every key is known (unknown keys are errors) and
//! every value keeps its line and column, so validation in [`super::compile`] can point at the
//! exact place of each problem. Loading reads one file or the `*.yaml` / `*.yml` / `*.json`
//! files of one directory; nothing here interprets the values.
//!
//! A file's [`Encoding`] comes from its name. YAML is read by serde-saphyr, with positions. JSON
//! (for generated bundles) is read by serde_json into the same types, several times faster but
//! without positions; every JSON document is also YAML, so when a JSON file has a problem the
//! caller reads it again with serde-saphyr to name the line and column ([`parse_with_saphyr`]).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use super::error::Diagnostics;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A value with the source position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S<T> {
    pub(crate) value: T,
    /// Where the value is written (1-based line and column).
    pub(crate) referenced: Loc,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

impl Loc {
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    pub(crate) fn column(&self) -> u64 {
        self.column
    }
}

thread_local! {
    /// Whether the deserializer running on this thread gives positions (serde-saphyr does,
    /// serde_json does not); see [`WithoutPositions`].
    static POSITIONS: Cell<bool> = const { Cell::new(true) };
}

/// While alive, [`S`] values on this thread deserialize their value alone, at an unknown
/// position (line 0): for serde_json, which has no positions to give.
struct WithoutPositions(bool);

impl WithoutPositions {
    fn new() -> WithoutPositions {
        WithoutPositions(POSITIONS.replace(false))
    }
}

impl Drop for WithoutPositions {
    fn drop(&mut self) {
        POSITIONS.set(self.0);
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for S<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !POSITIONS.get() {
            return T::deserialize(deserializer).map(|value| S {
                value,
                referenced: Loc::default(),
            });
        }
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(S {
            value: spanned.value,
            referenced: Loc {
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
        })
    }
}

/// One bundle file (a directory bundle is several of these, merged by the compiler).
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBundle {
    pub(crate) version: Option<S<u64>>,
    pub(crate) revision: Option<S<u64>>,
    #[serde(default)]
    pub(crate) trust_domains: Vec<S<String>>,
    #[serde(default)]
    pub(crate) segments: OrderedMap<RawSegment>,
    #[serde(default)]
    pub(crate) rules: Vec<S<RawRule>>,
    pub(crate) break_glass: Option<S<RawBreakGlass>>,
    /// What the decision log may show of a request (see [`RawLogging`]).
    pub(crate) logging: Option<S<RawLogging>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSegment {
    #[serde(default)]
    pub(crate) members: Vec<S<String>>,
    pub(crate) max_svid_lifetime: Option<S<String>>,
}

/// A rule, or a break-glass entry (which may not carry `action`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) name: Option<S<String>>,
    pub(crate) action: Option<S<String>>,
    pub(crate) from: Option<S<Vec<S<String>>>>,
    pub(crate) to: Option<S<Vec<S<String>>>>,
    pub(crate) methods: Option<S<Vec<S<String>>>>,
    pub(crate) paths: Option<S<Vec<S<String>>>>,
    pub(crate) hosts: Option<S<Vec<S<String>>>>,
    pub(crate) when: Option<S<RawWhen>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWhen {
    pub(crate) schedule: Option<S<RawSchedule>>,
    pub(crate) headers: Option<OrderedMap<Vec<S<String>>>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    pub(crate) days: Option<S<Vec<S<String>>>>,
    pub(crate) hours: Option<S<String>>,
    pub(crate) timezone: Option<S<String>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreakGlass {
    pub(crate) header: Option<S<String>>,
    #[serde(default)]
    pub(crate) allow: Vec<S<RawRule>>,
}

/// A YAML mapping kept in source order, keys with their positions.
#[derive(Debug, PartialEq)]
pub(crate) struct OrderedMap<V>(pub(crate) Vec<(S<String>, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<S<String>, V>()? {
                    out.push(entry);
                }
                Ok(OrderedMap(out))
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// One loaded file: its display name, its text and its parsed form.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub(crate) name: String,
    pub(crate) bundle: RawBundle,
    /// Whether the values carry their positions (false for JSON read by serde_json).
    pub(crate) positions: bool,
}

/// How a bundle file is written, by its name: `*.json` is JSON, anything else YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Yaml,
    Json,
}

impl Encoding {
    pub(crate) fn of(name: &str) -> Encoding {
        if name.ends_with(".json") {
            Encoding::Json
        } else {
            Encoding::Yaml
        }
    }
}

/// Parse one bundle file, in the [`Encoding`] its name says. A parse error (syntax, unknown
/// key, wrong type) is reported with its position.
pub(crate) fn parse(name: &str, text: &str, errors: &mut Diagnostics) -> Option<SourceFile> {
    match Encoding::of(name) {
        Encoding::Yaml => parse_yaml(name, text, errors),
        Encoding::Json => parse_json(name, text, errors),
    }
}

/// Parse one JSON text with serde_json, without positions. When it does not parse, serde-saphyr
/// reads it as YAML for its messages (every unknown key, each with its position); if YAML
/// accepts what JSON does not (a trailing comma, an unquoted string), serde_json's message is
/// the one reported.
fn parse_json(name: &str, text: &str, errors: &mut Diagnostics) -> Option<SourceFile> {
    let parsed = {
        let _no_positions = WithoutPositions::new();
        serde_json::from_str::<RawBundle>(text)
    };
    match parsed {
        Ok(bundle) => Some(SourceFile {
            name: name.to_string(),
            bundle,
            positions: false,
        }),
        Err(e) => {
            let before = errors.0.len();
            if parse_with_saphyr(name, text, errors).is_some() || errors.0.len() == before {
                errors.0.truncate(before);
                let message = e.to_string();
                let message = match message.find(" at line ") {
                    Some(i) => message[..i].to_string(),
                    None => message,
                };
                errors.push(name, e.line() as u64, e.column() as u64, message);
            }
            None
        }
    }
}

/// Parse one YAML text; a text of nothing but comments is an empty bundle file.
fn parse_yaml(name: &str, text: &str, errors: &mut Diagnostics) -> Option<SourceFile> {
    let only_comments = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if only_comments {
        return Some(SourceFile {
            name: name.to_string(),
            bundle: RawBundle::default(),
            positions: true,
        });
    }
    parse_with_saphyr(name, text, errors)
}

/// Parse one text with serde-saphyr (the reference reader), as YAML, with positions.
pub(crate) fn parse_with_saphyr(
    name: &str,
    text: &str,
    errors: &mut Diagnostics,
) -> Option<SourceFile> {
    match serde_saphyr::from_str_with_options::<RawBundle>(text, parse_options()) {
        Ok(bundle) => Some(SourceFile {
            name: name.to_string(),
            bundle,
            positions: true,
        }),
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            // serde stops at the first problem; list every unknown key of the file instead, so
            // one run of `validate` names them all. Other problems keep serde's own message.
            let unknown = unknown_keys(name, text, errors);
            let message = plain_message(&e);
            if unknown == 0 || !message.contains("unknown field") {
                errors.push(name, line, column, message);
            }
            None
        }
    }
}

/// Any YAML value, reduced to what [`unknown_keys`] needs: mapping keys with their positions.
enum Shape {
    Map(Vec<(S<KeyText>, Shape)>),
    Seq(Vec<Shape>),
    Scalar,
}

/// A mapping key of any scalar type, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("~".to_string()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<S<KeyText>, Shape>()? {
                    out.push(entry);
                }
                Ok(Shape::Map(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Shape, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Shape>()? {
                    out.push(v);
                }
                Ok(Shape::Seq(out))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// The keys of each kind of mapping in the bundle format (mirrors the `Raw*` types above).
const TOP_KEYS: &[&str] = &[
    "version",
    "revision",
    "trust_domains",
    "segments",
    "rules",
    "break_glass",
    "logging",
];
const SEGMENT_KEYS: &[&str] = &["members", "max_svid_lifetime"];
const RULE_KEYS: &[&str] = &[
    "name", "action", "from", "to", "methods", "paths", "hosts", "when",
];
const WHEN_KEYS: &[&str] = &["schedule", "headers"];
const SCHEDULE_KEYS: &[&str] = &["days", "hours", "timezone"];
const BREAK_GLASS_KEYS: &[&str] = &["header", "allow"];
const LOGGING_KEYS: &[&str] = &["full_paths", "path_templates", "hide_segments"];

/// One key of a mapping with its value.
type Entry = (S<KeyText>, Shape);

fn field<'a>(map: &'a [Entry], key: &str) -> Option<&'a Shape> {
    map.iter().find(|(k, _)| k.value.0 == key).map(|(_, v)| v)
}

fn rules(shape: Option<&Shape>) -> Vec<&Shape> {
    match shape {
        Some(Shape::Seq(items)) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// Report every unknown key of `text` (each with its position); returns how many. A text that
/// is not even well-formed YAML reports nothing here (the caller has serde's message).
fn unknown_keys(name: &str, text: &str, errors: &mut Diagnostics) -> usize {
    let Ok(shape) = serde_saphyr::from_str_with_options::<Shape>(text, parse_options()) else {
        return 0;
    };
    let before = errors.0.len();
    let mut check = |map: &[(S<KeyText>, Shape)], known: &[&str], place: &str| {
        for (k, _) in map {
            if !known.contains(&k.value.0.as_str()) {
                errors.push(
                    name,
                    k.referenced.line(),
                    k.referenced.column(),
                    format!(
                        "unknown key `{}` in {place}; expected one of: {}",
                        k.value.0,
                        known.join(", ")
                    ),
                );
            }
        }
    };
    let Shape::Map(top) = &shape else {
        return 0;
    };
    check(top, TOP_KEYS, "the bundle");
    let mut rule_maps: Vec<(&[Entry], &str)> = Vec::new();
    if let Some(Shape::Map(segments)) = field(top, "segments") {
        for (_, seg) in segments {
            if let Shape::Map(seg) = seg {
                check(seg, SEGMENT_KEYS, "a segment");
            }
        }
    }
    for r in rules(field(top, "rules")) {
        if let Shape::Map(r) = r {
            rule_maps.push((r, "a rule"));
        }
    }
    if let Some(Shape::Map(bg)) = field(top, "break_glass") {
        check(bg, BREAK_GLASS_KEYS, "`break_glass`");
        for r in rules(field(bg, "allow")) {
            if let Shape::Map(r) = r {
                rule_maps.push((r, "a break-glass entry"));
            }
        }
    }
    if let Some(Shape::Map(logging)) = field(top, "logging") {
        check(logging, LOGGING_KEYS, "`logging`");
    }
    for (r, place) in rule_maps {
        check(r, RULE_KEYS, place);
        if let Some(Shape::Map(when)) = field(r, "when") {
            check(when, WHEN_KEYS, "`when`");
            if let Some(Shape::Map(schedule)) = field(when, "schedule") {
                check(schedule, SCHEDULE_KEYS, "`schedule`");
            }
        }
    }
    if let Some(found) = errors.0.get_mut(before..) {
        found.sort_by_key(|d| (d.line, d.column));
    }
    errors.0.len() - before
}

/// Parser limits. serde-saphyr's defaults (250,000 nodes) stop near 20,000 rules; wardgate
/// bundles may hold 100,000+, so the node and event budgets scale with the file-size limit while
/// depth, alias and anchor limits keep their defensive defaults.
fn parse_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 32_000_000;
    budget.max_events = 64_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// serde-saphyr's message without its source snippet and without a repeated position.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // Drop a trailing " at line X, column Y" that would repeat the FILE:LINE:COL prefix.
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// Largest bundle file wardgate reads; a larger one is refused rather than parsed.
pub(crate) const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Read a bundle file, or every `*.yaml` / `*.yml` / `*.json` file (sorted by name) of a
/// directory.
/// Returns (display name, text) pairs.
pub(crate) fn read_sources(path: &Path, errors: &mut Diagnostics) -> Vec<(String, String)> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(&shown, 0, 0, format!("cannot read bundle: {e}"));
            return Vec::new();
        }
    };
    let files = if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(&shown, 0, 0, format!("cannot list bundle directory: {e}"));
                return Vec::new();
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.')
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                    && p.is_file()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            errors.push(
                &shown,
                0,
                0,
                "bundle directory holds no *.yaml, *.yml or *.json files",
            );
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let name = file.display().to_string();
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                errors.push(
                    &name,
                    0,
                    0,
                    format!(
                        "file is {} bytes, over the {MAX_FILE_BYTES}-byte limit",
                        m.len()
                    ),
                );
                continue;
            }
            _ => {}
        }
        match std::fs::read(&file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => out.push((name, text)),
                Err(_) => errors.push(&name, 0, 0, "file is not valid UTF-8"),
            },
            Err(e) => errors.push(&name, 0, 0, format!("cannot read bundle file: {e}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The `logging` section: what the decision log may show of a request path. Validated and
// compiled in `super::logging`; nothing here interprets it.

/// `logging:` in a bundle file.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    /// Path patterns whose matching paths may be logged in full (normalised, never the query).
    #[serde(default)]
    pub(crate) full_paths: Vec<S<String>>,
    /// Path patterns whose literal segments may be logged for any decision, including denials
    /// that no rule decided.
    #[serde(default)]
    pub(crate) path_templates: Vec<S<String>>,
    /// Segment values never logged, even where a rule's pattern or a template names them.
    #[serde(default)]
    pub(crate) hide_segments: Vec<S<String>>,
}
