//! An independent RFC 3986 reading of a raw request path, the way an upstream that resolves
//! dot-segments (Python, Node, Go URL resolution) reads it: the oracle that whatever
//! [`super::path`] accepts names one resource for every upstream.
//!
//! This module owns only that oracle, for the normaliser's property tests
//! (`normalize/tests.rs`) and the fuzz target `path_normalize` (through `crate::fuzzing`). Nothing
//! here reuses the code under test, and nothing outside tests and fuzzing may call it: it is
//! never on the request path.

/// The path component of an origin-form request target: everything before `?` or `#`.
pub(crate) fn path_component(raw: &str) -> &str {
    match raw.find(['?', '#']) {
        Some(end) => &raw[..end],
        None => raw,
    }
}

/// `remove_dot_segments` exactly as RFC 3986 §5.2.4 writes it (input and output buffers).
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_owned(); // A
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_owned(); // A
        } else if input.starts_with("/./") {
            input = input[2..].to_owned(); // B
        } else if input == "/." {
            input = "/".to_owned(); // B
        } else if input.starts_with("/../") || input == "/.." {
            input = if input == "/.." {
                "/".to_owned()
            } else {
                input[3..].to_owned()
            }; // C
            match output.rfind('/') {
                Some(at) => output.truncate(at),
                None => output.clear(),
            }
        } else if input == "." || input == ".." {
            input.clear(); // D
        } else {
            // E: the first segment, with its leading `/` if any, up to the next `/`.
            let skip = usize::from(input.starts_with('/'));
            let end = input[skip..].find('/').map_or(input.len(), |i| i + skip);
            output.push_str(&input[..end]);
            input = input[end..].to_owned();
        }
    }
    output
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decode `%XX` triplets of unreserved characters, as an upstream that normalises does
/// (RFC 3986 §6.2.2.2); every other triplet is left alone.
pub(crate) fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match decoded {
            Some(b) if unreserved(b) => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// One character of a segment, compared the way RFC 3986 §6.2.2 makes URIs equivalent:
/// an unreserved character is the same raw or encoded, hex case does not matter, and a
/// reserved character is not the same raw and encoded. A raw character that may not appear
/// in a path at all stands for its encoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Raw(u8),
    Encoded(u8),
}

fn raw_in_path(b: u8) -> bool {
    unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

/// The resource a resolved path names: its segments, each as a list of units. A single
/// trailing slash names the same resource as the path without it: that is wardgate's
/// documented choice (README.md, "Where the design is silent"), not RFC 3986's.
pub(crate) fn resource(path: &str) -> Vec<Vec<Unit>> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split('/')
        .map(|segment| {
            let bytes = segment.as_bytes();
            let mut units = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                let decoded = match bytes.get(i..i + 3) {
                    Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l),
                    _ => None,
                };
                if let Some(b) = decoded {
                    units.push(if unreserved(b) {
                        Unit::Raw(b)
                    } else {
                        Unit::Encoded(b)
                    });
                    i += 3;
                } else {
                    let b = bytes[i];
                    units.push(if raw_in_path(b) {
                        Unit::Raw(b)
                    } else {
                        Unit::Encoded(b)
                    });
                    i += 1;
                }
            }
            units
        })
        .collect()
}

/// Whether an upstream's reading of `raw` names the resource wardgate `decided` on, both for an
/// upstream that decodes unreserved characters before resolving and for one that does not.
/// `Err` says how they differ.
pub(crate) fn upstream_agrees(raw: &str, decided: &str) -> Result<(), String> {
    let component = path_component(raw);
    let decided_resource = resource(decided);
    let as_is = remove_dot_segments(component);
    if resource(&as_is) != decided_resource {
        return Err(format!(
            "{raw:?} read without decoding is {as_is:?}, wardgate decided on {decided:?}"
        ));
    }
    let decoded = remove_dot_segments(&decode_unreserved(component));
    if resource(&decoded) != decided_resource {
        return Err(format!(
            "{raw:?} read after decoding is {decoded:?}, wardgate decided on {decided:?}"
        ));
    }
    Ok(())
}
