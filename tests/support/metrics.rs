//! A strict parser for the Prometheus text exposition format (version 0.0.4), and a scrape
//! helper for wardgate's admin listener.
//!
//! Owns turning a `/metrics` body into samples keyed by name and exact label set. It refuses
//! what Prometheus would refuse (bad names, unterminated or badly escaped label values,
//! unparseable numbers, a series listed twice, a sample without a `# TYPE`), so a test that
//! passes here reads the same numbers a Prometheus server would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::BoxError;

/// Label name → value.
pub type Labels = BTreeMap<String, String>;

/// One parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Sample name → label set → value.
    pub samples: BTreeMap<String, BTreeMap<Labels, f64>>,
    /// Family name → `counter`, `gauge`, `histogram`, ...
    pub types: BTreeMap<String, String>,
    /// Family name → help text.
    pub help: BTreeMap<String, String>,
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Scrape {
    /// The value of the sample `name` with exactly these labels.
    pub fn get(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.get(&labels(pairs)).copied()
    }

    /// Every series of the sample `name`.
    pub fn series(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples.get(name).cloned().unwrap_or_default()
    }

    /// Every sample name.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.keys().cloned().collect()
    }

    /// For every series of `name` in `self` (the later scrape), its increase since `before`
    /// (a series absent before counts from 0).
    pub fn deltas(&self, before: &Scrape, name: &str) -> BTreeMap<Labels, f64> {
        let earlier = before.series(name);
        self.series(name)
            .into_iter()
            .map(|(l, v)| {
                let was = earlier.get(&l).copied().unwrap_or(0.0);
                (l, v - was)
            })
            .collect()
    }
}

/// Parse an exposition body.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if let Some(rest) = comment.strip_prefix("TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without a type".into()))?;
                check_name(name).map_err(at)?;
                let kind = kind.trim();
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("unknown type {kind}")));
                }
                if scrape
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_some()
                {
                    return Err(at(format!("second TYPE for {name}")));
                }
            } else if let Some(rest) = comment.strip_prefix("HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_name(name).map_err(at)?;
                scrape.help.insert(name.to_owned(), help.to_owned());
            }
            continue;
        }
        let (name, labels, rest) = parse_series(line).map_err(at)?;
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .ok_or_else(|| at("no value".into()))
            .and_then(|v| parse_value(v).map_err(at))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        family_of(&name, &scrape.types)
            .ok_or_else(|| at(format!("sample {name} has no # TYPE before it")))?;
        if scrape
            .samples
            .entry(name.clone())
            .or_default()
            .insert(labels, value)
            .is_some()
        {
            return Err(at(format!("series of {name} listed twice")));
        }
    }
    Ok(scrape)
}

/// The declared family a sample belongs to (`x_bucket` → `x` for a histogram, and so on).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return Some(base);
            }
        }
    }
    None
}

fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

/// `name{a="x",b="y"} rest` → (name, labels, rest).
fn parse_series(line: &str) -> Result<(String, Labels, &str), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value after the name")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            // Label name, or the closing brace.
            while chars.peek().is_some_and(|(_, c)| *c == ' ') {
                chars.next();
            }
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated label set".into());
            };
            if c == '}' {
                rest = &body[start + 1..];
                break;
            }
            let eq = body[start..]
                .find('=')
                .map(|i| start + i)
                .ok_or("label without =")?;
            let label = body[start..eq].trim();
            check_label_name(label)?;
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("value of {label} is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated value of {label}")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {label}")),
                    },
                    Some((_, '\n')) => return Err("raw newline in a label value".into()),
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            match chars.peek().map(|(_, c)| *c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                other => return Err(format!("expected , or }} after {label}, got {other:?}")),
            }
        }
    }
    if !rest.starts_with(char::is_whitespace) {
        return Err("no whitespace before the value".into());
    }
    Ok((name.to_owned(), labels, rest.trim_start()))
}

/// GET `/metrics` from wardgate's admin listener and parse it; also returns the raw text.
pub async fn scrape(admin: SocketAddr) -> Result<(Scrape, String), BoxError> {
    let (status, body) = super::client::plain_get(admin, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}: {body}").into());
    }
    let parsed = parse(&body).map_err(|e| format!("unparseable /metrics: {e}\n{body}"))?;
    Ok((parsed, body))
}
