//! Request normalisation: the raw `:path` and `:authority` Envoy forwards, turned into the one
//! unambiguous form that rule patterns are matched against (README.md, "Where the design is
//! silent").
//!
//! This module owns the canonical form of a request path: query and fragment stripped,
//! percent-encoded unreserved characters decoded, every other percent-encoding kept with
//! upper-case hex digits, raw characters a URI path may not carry percent-encoded, and a single
//! trailing slash dropped. It also owns stripping the port from an authority. It must never
//! guess: wardgate cannot change the path Envoy forwards, so it decides only on a path that
//! every reasonable upstream reads the same way. Whatever could be read two ways by wardgate and
//! by the upstream is a [`PathError`], which the policy turns into a `bad_path` denial: a
//! dot-segment (`.` or `..`, raw or percent-encoded in any case, since an upstream that does not
//! decode `%2e` keeps it as a literal segment while RFC 3986 resolution removes it), an empty
//! segment (`//`, which RFC 3986 keeps as a segment that `..` can remove while other servers
//! merge it), an encoded `/` or `\`, a raw `\`, control characters, broken percent-encoding,
//! raw non-ASCII and a raw `;`. A trailing slash (`/a/`) is not an empty segment between two
//! others and reads the same everywhere; it is dropped, so `/a/` is decided as `/a`. It must
//! never allocate when the path is already normal, and never do I/O, log or panic: it is called
//! on every request.

use std::borrow::Cow;

pub(crate) mod rfc3986;

/// Why a path cannot be normalised unambiguously. Every variant is a `bad_path` denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The path does not start with `/` (asterisk-form `*`, absolute-form `http://…`, a bare
    /// query `?…`, or anything else that is not origin-form).
    #[error("path does not start with `/` (only origin-form paths are accepted)")]
    NotOriginForm,
    /// A `%2F` (encoded `/`): upstreams disagree on whether it separates segments.
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    /// A `%5C` (encoded `\`): some upstreams treat it as a path separator.
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    /// A raw `\`: some upstreams treat it as a path separator.
    #[error("path contains a backslash")]
    Backslash,
    /// A raw control character (0x00–0x1F or 0x7F), NUL included.
    #[error("path contains a control character")]
    ControlCharacter,
    /// A percent-encoded control character (`%00`–`%1F` or `%7F`), NUL included.
    #[error("path contains an encoded control character")]
    EncodedControlCharacter,
    /// A `%` not followed by two hexadecimal digits.
    #[error("path contains invalid percent-encoding")]
    InvalidPercentEncoding,
    /// A raw byte outside ASCII (it must arrive percent-encoded).
    #[error("path contains a raw non-ASCII character")]
    NonAscii,
    /// A raw `;`: servlet containers and some frameworks treat `;…` as path parameters and
    /// strip them, so `/admin;x/secret` could reach `/admin/secret` past a deny rule.
    /// (An encoded `%3B` is data and stays encoded.)
    #[error("path contains `;` (path parameters are ambiguous across upstream servers)")]
    PathParameter,
    /// A `.` or `..` segment, raw or percent-encoded (`%2e`, `.%2E`, …): an RFC 3986 upstream
    /// resolves it, one that does not decode `%2e` keeps it as a literal segment, so wardgate
    /// could not know which resource is meant.
    #[error("path contains a dot-segment (`.` or `..`, raw or percent-encoded)")]
    DotSegment,
    /// An empty segment (`//`) anywhere but a single trailing slash: some upstreams merge it,
    /// while RFC 3986 keeps it as a segment a later `..` can remove.
    #[error("path contains an empty segment (`//`)")]
    EmptySegment,
}

/// Normalise a raw `:path` as Envoy forwards it.
///
/// Returns the canonical form (see the module documentation), borrowed from `raw` whenever the
/// part before any query or fragment is already canonical, so the common case does not
/// allocate.
///
/// ```
/// use std::borrow::Cow;
/// use wardgate::policy::normalize;
///
/// assert_eq!(normalize::path("/results/%7e7/").unwrap(), "/results/~7");
/// assert!(matches!(normalize::path("/results/7?full=1"), Ok(Cow::Borrowed("/results/7"))));
/// assert!(normalize::path("/a%2Fb").is_err());
/// assert!(normalize::path("/results/../admin").is_err());
/// assert!(normalize::path("/results//admin").is_err());
/// ```
pub fn path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = strip_query(raw)?;
    if is_canonical(path) {
        Ok(Cow::Borrowed(path))
    } else {
        rebuild(path).map(Cow::Owned)
    }
}

/// Whether `path` is a path in normal form: [`path`] would return it unchanged and borrowed,
/// and it carries no query or fragment. The bundle validator uses this to reject rule paths
/// that no normalised request could ever equal.
pub fn is_normal(path: &str) -> bool {
    !path.bytes().any(|b| b == b'?' || b == b'#') && is_canonical(path)
}

/// Strip an optional `:port` from an authority (handles `[v6]:port`), no allocation. Case is
/// left alone (callers compare case-insensitively).
///
/// A single trailing dot of a fully qualified name is dropped as well (`lab.svc.:8443` gives
/// `lab.svc`), since `lab.svc.` and `lab.svc` name the same host. An authority that is not
/// well formed (an unclosed `[`, several colons outside brackets) is returned unchanged, so it
/// can only fail to match.
pub fn host(raw: &str) -> &str {
    let name = if raw.starts_with('[') {
        // IP literal: keep the brackets, drop whatever follows `]` (the `:port`).
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => return raw,
        }
    } else {
        match raw.split_once(':') {
            Some((_, port)) if port.contains(':') => return raw,
            Some((name, _)) => name,
            None => raw,
        }
    };
    match name.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() && !stripped.ends_with('.') => stripped,
        _ => name,
    }
}

/// The part of `raw` before any query or fragment, which must be origin-form.
fn strip_query(raw: &str) -> Result<&str, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let end = raw
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    Ok(&raw[..end])
}

/// ALPHA DIGIT `-` `.` `_` `~` (RFC 3986 §2.3): decoded wherever they arrive percent-encoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters that stay raw in a canonical path segment: unreserved, sub-delims, `:` and `@`
/// (RFC 3986 `pchar` without `pct-encoded`).
fn is_raw_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// What a decoded percent-encoded byte becomes in the canonical form.
fn classify_encoded(byte: u8) -> Result<Encoded, PathError> {
    match byte {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        b if is_control(b) => Err(PathError::EncodedControlCharacter),
        b if is_unreserved(b) => Ok(Encoded::Decode),
        _ => Ok(Encoded::Keep),
    }
}

enum Encoded {
    /// An unreserved character: written raw.
    Decode,
    /// Anything else that may be encoded: kept as `%XX` with upper-case hex.
    Keep,
}

/// Whether `path` (already without query or fragment) is exactly what [`rebuild`] would
/// produce. Conservative by construction: anything unusual answers `false` and goes to
/// [`rebuild`], which reports errors.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes.len() == 1 {
        return true;
    }
    // Each segment after a `/` must be non-empty, not `.` or `..`, and made of raw pchars and
    // kept encodings only. This also rules out `//` and a trailing `/`.
    for segment in path[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return false;
        }
        let seg = segment.as_bytes();
        let mut i = 0;
        while i < seg.len() {
            let b = seg[i];
            if b == b'%' {
                // Canonical encodings use upper-case hex digits only.
                let upper = |at: usize| seg.get(at).copied().filter(|b| !b.is_ascii_lowercase());
                let (Some(h), Some(l)) = (
                    upper(i + 1).and_then(hex_value),
                    upper(i + 2).and_then(hex_value),
                ) else {
                    return false;
                };
                if !matches!(classify_encoded(h << 4 | l), Ok(Encoded::Keep)) {
                    return false;
                }
                i += 3;
            } else if is_raw_pchar(b) && b != b';' {
                i += 1;
            } else {
                return false;
            }
        }
    }
    true
}

/// Build the canonical form of `path` (origin-form, without query or fragment).
fn rebuild(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len() + 1);
    // `path` starts with `/`, so the first piece of the split is empty: skip it.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(raw_segment) = segments.next() {
        if raw_segment.is_empty() {
            // Only a single trailing slash (or the root itself) may leave a segment empty.
            if segments.peek().is_some() {
                return Err(PathError::EmptySegment);
            }
            break;
        }
        let start = out.len();
        out.push('/');
        push_segment(&mut out, raw_segment.as_bytes())?;
        if matches!(&out[start + 1..], "." | "..") {
            return Err(PathError::DotSegment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Append the canonical form of one raw segment (no `/` in it) to `out`.
fn push_segment(out: &mut String, segment: &[u8]) -> Result<(), PathError> {
    let mut i = 0;
    while i < segment.len() {
        let b = segment[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    segment.get(i + 1).copied().and_then(hex_value),
                    segment.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match classify_encoded(decoded)? {
                    Encoded::Decode => out.push(char::from(decoded)),
                    Encoded::Keep => push_encoded(out, decoded),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b if is_control(b) => return Err(PathError::ControlCharacter),
            b if !b.is_ascii() => return Err(PathError::NonAscii),
            b if is_raw_pchar(b) => {
                out.push(char::from(b));
                i += 1;
            }
            // Printable ASCII a path may not carry raw (space, `"`, `<`, `>`, `[`, `]`, `^`,
            // `` ` ``, `{`, `|`, `}`): encode it, so `/a b` and `/a%20b` are one path.
            b => {
                push_encoded(out, b);
                i += 1;
            }
        }
    }
    Ok(())
}

fn push_encoded(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(byte >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(byte & 0x0f)]));
}

#[cfg(test)]
mod tests;
