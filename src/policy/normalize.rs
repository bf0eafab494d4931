//! Request normalisation (DESIGN §5): the raw `:path` and `:authority` Envoy forwards, turned
//! into the one unambiguous form that rule patterns are matched against.
//!
//! This module owns the canonical form of a request path: query and fragment stripped,
//! percent-encoded unreserved characters decoded, every other percent-encoding kept with
//! upper-case hex digits, raw characters a URI path may not carry percent-encoded, repeated
//! slashes merged, `.` and `..` resolved, and no trailing slash. It also owns stripping the
//! port from an authority. It must never guess: whatever could be read two ways by wardgate and
//! by the upstream (an encoded `/` or `\`, a raw `\`, control characters, broken
//! percent-encoding, raw non-ASCII, `..` above the root) is a [`PathError`], which the policy
//! turns into a `bad_path` denial. It must never allocate when the path is already normal, and
//! never do I/O, log or panic: it is called on every request.

use std::borrow::Cow;

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
    /// A `..` segment that would climb above the root.
    #[error("path climbs above the root with `..`")]
    AboveRoot,
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
/// assert_eq!(normalize::path("/results/../admin/").unwrap(), "/admin");
/// assert!(matches!(normalize::path("/results/7?full=1"), Ok(Cow::Borrowed("/results/7"))));
/// assert!(normalize::path("/a%2Fb").is_err());
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
    // Start offsets in `out` of the segments kept so far, for `..` to pop.
    let mut starts: Vec<usize> = Vec::new();
    // `path` starts with `/`, so the first piece of the split is empty: skip it.
    for raw_segment in path.split('/').skip(1) {
        let start = out.len();
        out.push('/');
        push_segment(&mut out, raw_segment.as_bytes())?;
        match &out[start + 1..] {
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                let previous = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(previous);
            }
            _ => starts.push(start),
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> String {
        match path(raw) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("{raw:?} should normalise, got {e}"),
        }
    }

    fn err(raw: &str) -> PathError {
        match path(raw) {
            Ok(p) => panic!("{raw:?} should be rejected, got {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn normal_path_is_borrowed() {
        let raw = "/results/123/a~b-c_d.e%20f";
        assert!(matches!(path(raw), Ok(Cow::Borrowed(p)) if std::ptr::eq(p, raw)));
        assert!(is_normal(raw));
    }

    #[test]
    fn query_is_stripped_without_allocation() {
        assert!(matches!(
            path("/results/7?full=1&x=%zz"),
            Ok(Cow::Borrowed("/results/7"))
        ));
        assert!(!is_normal("/results/7?full=1"));
    }

    #[test]
    fn fragment_is_stripped() {
        assert_eq!(ok("/a/b#frag"), "/a/b");
        assert_eq!(ok("/a/b#frag?x"), "/a/b");
        assert_eq!(ok("/a/b?x#frag"), "/a/b");
        assert_eq!(ok("/a/../b?x=/../.."), "/b");
        assert!(!is_normal("/a#b"));
    }

    #[test]
    fn root() {
        assert!(matches!(path("/"), Ok(Cow::Borrowed("/"))));
        assert_eq!(ok("/?x"), "/");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("/./"), "/");
        assert_eq!(ok("/a/.."), "/");
        assert!(is_normal("/"));
    }

    #[test]
    fn dot_dot_resolves() {
        assert_eq!(ok("/results/../admin"), "/admin");
        assert_eq!(ok("/a/b/../../c"), "/c");
        assert_eq!(ok("/a/b/.."), "/a");
    }

    #[test]
    fn repeated_slashes_merge() {
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/a///b//c"), "/a/b/c");
    }

    #[test]
    fn single_dot_is_dropped() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/./a/."), "/a");
    }

    #[test]
    fn encoded_dots_are_decoded_then_resolved() {
        assert_eq!(ok("/a/b/%2e%2e/c"), "/a/c");
        assert_eq!(ok("/a/b/%2E%2e/"), "/a");
        assert_eq!(ok("/a/.%2e/c"), "/c");
        assert_eq!(ok("/a/%2e/c"), "/a/c");
        assert_eq!(ok("/a/%2e%2e%2e"), "/a/...");
    }

    #[test]
    fn above_root_is_rejected() {
        assert_eq!(err("/.."), PathError::AboveRoot);
        assert_eq!(err("/a/../.."), PathError::AboveRoot);
        assert_eq!(err("/a/%2e%2e/%2e%2e/.."), PathError::AboveRoot);
        assert_eq!(err("/%2E%2E/admin"), PathError::AboveRoot);
    }

    #[test]
    fn encoded_slash_is_rejected() {
        assert_eq!(err("/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err("/a%2fb"), PathError::EncodedSlash);
        // Even inside a segment that `..` would later remove.
        assert_eq!(err("/a%2F/../b"), PathError::EncodedSlash);
    }

    #[test]
    fn backslashes_are_rejected() {
        assert_eq!(err("/a%5cb"), PathError::EncodedBackslash);
        assert_eq!(err("/a%5Cb"), PathError::EncodedBackslash);
        assert_eq!(err("/a\\b"), PathError::Backslash);
        assert_eq!(err("/..\\admin"), PathError::Backslash);
    }

    #[test]
    fn control_characters_are_rejected() {
        assert_eq!(err("/a%00b"), PathError::EncodedControlCharacter);
        assert_eq!(err("/a%0ab"), PathError::EncodedControlCharacter);
        assert_eq!(err("/a%0D%0Ab"), PathError::EncodedControlCharacter);
        assert_eq!(err("/a%1Fb"), PathError::EncodedControlCharacter);
        assert_eq!(err("/a%7fb"), PathError::EncodedControlCharacter);
        assert_eq!(err("/a\0b"), PathError::ControlCharacter);
        assert_eq!(err("/a\tb"), PathError::ControlCharacter);
        assert_eq!(err("/a\nb"), PathError::ControlCharacter);
        assert_eq!(err("/a\x7fb"), PathError::ControlCharacter);
    }

    #[test]
    fn invalid_percent_encoding_is_rejected() {
        assert_eq!(err("/a%"), PathError::InvalidPercentEncoding);
        assert_eq!(err("/a%4"), PathError::InvalidPercentEncoding);
        assert_eq!(err("/a%4/b"), PathError::InvalidPercentEncoding);
        assert_eq!(err("/a%zz"), PathError::InvalidPercentEncoding);
        assert_eq!(err("/a%g0"), PathError::InvalidPercentEncoding);
        assert_eq!(err("/a%%41"), PathError::InvalidPercentEncoding);
    }

    #[test]
    fn raw_non_ascii_is_rejected() {
        assert_eq!(err("/caf\u{e9}"), PathError::NonAscii);
        assert_eq!(err("/admin;x/secret"), PathError::PathParameter);
        assert_eq!(ok("/a%3bb"), "/a%3Bb");
        assert_eq!(err("/\u{ff0f}admin"), PathError::NonAscii);
    }

    #[test]
    fn non_origin_forms_are_rejected() {
        assert_eq!(err(""), PathError::Empty);
        assert_eq!(err("*"), PathError::NotOriginForm);
        assert_eq!(err("?x"), PathError::NotOriginForm);
        assert_eq!(err("#x"), PathError::NotOriginForm);
        assert_eq!(err("admin"), PathError::NotOriginForm);
        assert_eq!(err("http://lab.svc/admin"), PathError::NotOriginForm);
        assert!(!is_normal(""));
        assert!(!is_normal("admin"));
    }

    #[test]
    fn unreserved_characters_are_decoded() {
        assert_eq!(ok("/a%7Eb"), "/a~b");
        assert_eq!(ok("/a%7eb"), "/a~b");
        assert_eq!(ok("/%41"), "/A");
        assert_eq!(ok("/%61%2D%5F%30"), "/a-_0");
        assert!(!is_normal("/%41"));
    }

    #[test]
    fn other_encodings_are_kept_upper_case() {
        assert!(matches!(path("/a%20b"), Ok(Cow::Borrowed("/a%20b"))));
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/100%25"), "/100%25");
        assert_eq!(ok("/a%3Bb"), "/a%3Bb");
        assert!(is_normal("/a%3Fb"));
        assert!(!is_normal("/a%3fb"));
    }

    #[test]
    fn raw_characters_not_allowed_in_a_path_are_encoded() {
        assert_eq!(ok("/a b"), "/a%20b");
        assert_eq!(ok("/a\"<>[]^`{|}"), "/a%22%3C%3E%5B%5D%5E%60%7B%7C%7D");
        assert!(!is_normal("/a b"));
    }

    #[test]
    fn sub_delims_colon_and_at_stay_raw() {
        // Every sub-delim but `;`, which is refused as an ambiguous path parameter.
        let raw = "/a!$&'()*+,=:@b";
        assert!(matches!(path(raw), Ok(Cow::Borrowed(p)) if p == raw));
        assert_eq!(path("/a;b"), Err(PathError::PathParameter));
    }

    #[test]
    fn trailing_slash_is_dropped() {
        assert_eq!(ok("/a/b/"), "/a/b");
        assert_eq!(ok("/admin/"), "/admin");
        assert_eq!(ok("/admin//"), "/admin");
        assert!(!is_normal("/admin/"));
    }

    #[test]
    fn host_strips_port() {
        assert_eq!(host("lab.clinical.svc"), "lab.clinical.svc");
        assert_eq!(host("lab.clinical.svc:8443"), "lab.clinical.svc");
        assert_eq!(host("Lab.Clinical.SVC:80"), "Lab.Clinical.SVC");
        assert_eq!(host("lab.svc:"), "lab.svc");
        assert_eq!(host("[::1]:8443"), "[::1]");
        assert_eq!(host("[::1]"), "[::1]");
        assert_eq!(host("[fe80::1%25eth0]:80"), "[fe80::1%25eth0]");
        assert_eq!(host("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(host(""), "");
        assert_eq!(host(":443"), "");
    }

    #[test]
    fn host_strips_one_trailing_dot() {
        assert_eq!(host("lab.svc."), "lab.svc");
        assert_eq!(host("lab.svc.:8443"), "lab.svc");
        assert_eq!(host("lab.svc.."), "lab.svc..");
        assert_eq!(host("."), ".");
    }

    #[test]
    fn malformed_host_is_left_alone() {
        assert_eq!(host("::1"), "::1");
        assert_eq!(host("[::1"), "[::1");
        assert_eq!(host("a:b:c"), "a:b:c");
    }

    /// The allocation-free check and the rebuilding path agree on every input.
    fn normalised_through_rebuild(raw: &str) -> Result<String, PathError> {
        strip_query(raw).and_then(rebuild)
    }

    proptest! {
        // No regression files: they would land in src/ beside this module.
        #![proptest_config(ProptestConfig {
            cases: 2048,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn normalisation_is_idempotent(raw in "/[ -~\t]{0,40}") {
            if let Ok(n) = path(&raw) {
                let again = path(&n);
                prop_assert!(
                    matches!(&again, Ok(Cow::Borrowed(p)) if *p == &*n),
                    "{raw:?} -> {n:?} -> {again:?}"
                );
                prop_assert!(is_normal(&n));
                for bad in ["//", "/./", "/../", "\\", "%2F", "%2f"] {
                    prop_assert!(!n.contains(bad), "{raw:?} -> {n:?} contains {bad:?}");
                }
                prop_assert!(n == "/" || !n.ends_with('/'));
                prop_assert!(!n.ends_with("/.") && !n.ends_with("/.."));
            }
        }

        #[test]
        fn focused_alphabet_is_idempotent(raw in "/[/.%aA2eEfFcC5?#]{0,24}") {
            if let Ok(n) = path(&raw) {
                prop_assert!(matches!(path(&n), Ok(Cow::Borrowed(p)) if p == &*n));
                prop_assert!(!n.contains("//") && !n.contains("/./") && !n.contains("/../"));
                prop_assert!(!n.contains("%2F") && !n.contains("\\"));
            }
        }

        #[test]
        fn fast_and_slow_paths_agree(raw in "/[ -~]{0,40}") {
            let fast = path(&raw).map(Cow::into_owned);
            prop_assert_eq!(fast, normalised_through_rebuild(&raw));
        }

        #[test]
        fn fast_and_slow_paths_agree_on_any_text(raw in "/\\PC{0,24}") {
            let fast = path(&raw).map(Cow::into_owned);
            prop_assert_eq!(fast, normalised_through_rebuild(&raw));
        }

        #[test]
        fn is_normal_matches_borrowed_identity(raw in "/[ -~]{0,30}") {
            let identity = matches!(path(&raw), Ok(Cow::Borrowed(p)) if p == raw);
            prop_assert_eq!(is_normal(&raw), identity);
        }
    }
}
