//! Tests of path and host normalisation, including an RFC 3986 oracle for allowed paths.

use super::*;
use crate::policy::normalize::rfc3986;
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
    // Dot-segments in the query are data, not path.
    assert_eq!(ok("/a/b?x=/../.."), "/a/b");
    assert!(!is_normal("/a#b"));
}

#[test]
fn root() {
    assert!(matches!(path("/"), Ok(Cow::Borrowed("/"))));
    assert_eq!(ok("/?x"), "/");
    assert_eq!(err("//"), PathError::EmptySegment);
    assert_eq!(err("/./"), PathError::DotSegment);
    assert_eq!(err("/a/.."), PathError::DotSegment);
    assert!(is_normal("/"));
}

#[test]
fn dot_dot_is_rejected() {
    // An RFC 3986 upstream resolves these; wardgate refuses to guess which resource is meant.
    assert_eq!(err("/results/../admin"), PathError::DotSegment);
    assert_eq!(err("/a/b/../../c"), PathError::DotSegment);
    assert_eq!(err("/a/b/.."), PathError::DotSegment);
    assert_eq!(err("/.."), PathError::DotSegment);
    assert_eq!(err("/a/../.."), PathError::DotSegment);
}

#[test]
fn empty_segments_are_rejected() {
    // `/admin//../public/x` is `/admin/public/x` to an RFC 3986 upstream and `/public/x` to
    // one that merges slashes first: refused, not merged.
    assert_eq!(err("/admin//../public/x"), PathError::EmptySegment);
    assert_eq!(err("//admin"), PathError::EmptySegment);
    assert_eq!(err("/a///b//c"), PathError::EmptySegment);
    assert_eq!(err("/a//b"), PathError::EmptySegment);
}

#[test]
fn single_dot_is_rejected() {
    assert_eq!(err("/a/./b"), PathError::DotSegment);
    assert_eq!(err("/./a"), PathError::DotSegment);
    assert_eq!(err("/a/."), PathError::DotSegment);
    assert_eq!(err("/a/./"), PathError::DotSegment);
}

#[test]
fn encoded_dot_segments_are_rejected_in_any_case() {
    // An upstream that does not decode `%2e` reads these as literal segments under `/a`.
    for raw in [
        "/a/b/%2e%2e/c",
        "/a/b/%2E%2e/",
        "/a/.%2e/c",
        "/a/%2e./c",
        "/a/%2E./c",
        "/a/.%2E",
        "/a/%2e/c",
        "/a/%2E",
        "/%2E%2E/admin",
        "/a/%2e%2e/%2e%2e/..",
    ] {
        assert_eq!(err(raw), PathError::DotSegment, "{raw}");
    }
    // Three dots, or dots with other characters, are an ordinary segment.
    assert_eq!(ok("/a/%2e%2e%2e"), "/a/...");
    assert_eq!(ok("/a/..."), "/a/...");
    assert_eq!(ok("/a/.well-known/%2ehidden"), "/a/.well-known/.hidden");
    assert_eq!(ok("/a/b.."), "/a/b..");
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
    assert_eq!(ok("/admin/?x"), "/admin");
    // Only a single trailing slash: a second one is an empty segment in between.
    assert_eq!(err("/admin//"), PathError::EmptySegment);
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

#[test]
fn oracle_reads_the_rfc_examples() {
    // RFC 3986 §5.2.4's own examples, so the oracle is checked before it judges anything.
    assert_eq!(rfc3986::remove_dot_segments("/a/b/c/./../../g"), "/a/g");
    assert_eq!(rfc3986::remove_dot_segments("mid/content=5/../6"), "mid/6");
    // The review's walk-around: `..` removes the empty segment, not `admin`.
    assert_eq!(
        rfc3986::remove_dot_segments("/admin//../public/x"),
        "/admin/public/x"
    );
    assert_eq!(rfc3986::decode_unreserved("/a/%2E%2e/%2F%41"), "/a/../%2FA");
    assert_ne!(rfc3986::resource("/a%3Ab"), rfc3986::resource("/a:b"));
    assert_eq!(rfc3986::resource("/a%7eb/"), rfc3986::resource("/a~b"));
}

/// Whether an upstream's reading of `raw` names the resource wardgate decided on (the shared
/// oracle in `rfc3986`, which the fuzz target `path_normalize` runs too).
fn upstream_agrees(raw: &str, decided: &str) -> Result<(), TestCaseError> {
    rfc3986::upstream_agrees(raw, decided).map_err(TestCaseError::fail)
}

/// Raw paths built from pieces that make dot-segments and empty segments likely.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "B",
        "",
        ".",
        "..",
        "...",
        "%2e",
        "%2E",
        ".%2e",
        "%2e.",
        "%2E%2e",
        "%2e%2e%2e",
        "..a",
        ".b",
        "%41",
        "%7e",
        "a%2Fb",
        "x y",
        "%3a",
        ":",
        "%5c",
    ]);
    (
        prop::collection::vec(piece, 0..7),
        prop::sample::select(vec!["", "/", "?x=/../a", "#/..", "/?q"]),
    )
        .prop_map(|(pieces, tail)| format!("/{}{tail}", pieces.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn allowed_paths_name_one_resource_for_every_upstream(raw in tricky_path()) {
        if let Ok(decided) = path(&raw) {
            upstream_agrees(&raw, &decided)?;
        }
    }

    #[test]
    fn allowed_printable_paths_name_one_resource(raw in "/[ -~]{0,40}") {
        if let Ok(decided) = path(&raw) {
            upstream_agrees(&raw, &decided)?;
        }
    }

    #[test]
    fn allowed_dot_and_slash_paths_name_one_resource(raw in "/[/.%2eEaA]{0,24}") {
        if let Ok(decided) = path(&raw) {
            upstream_agrees(&raw, &decided)?;
        }
    }
}
