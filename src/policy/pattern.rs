//! Segment-aware patterns for SPIFFE IDs and HTTP paths (the bundle format is in README.md).
//!
//! A pattern is a list of path segments, each a literal or `*` (exactly one segment), with an
//! optional final `**` (one or more further segments). SPIFFE ID patterns also carry a literal
//! trust domain. Matching compares whole segments, never raw string prefixes, so
//! `spiffe://td/ns/clinical/**` can never match `spiffe://td/ns/clinical-evil/x`.
//!
//! This module only parses and matches; it knows nothing of rules, segments or requests.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::normalize;
use crate::identity::MAX_TRUST_DOMAIN_LEN;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    /// This exact segment (shared with every pattern of the same compile that names it, see
    /// [`Strings`]).
    Literal(Arc<str>),
    /// `*`: any one segment.
    Any,
}

/// A parsed, validated pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// `Some(td)` for a SPIFFE ID pattern, `None` for an HTTP path pattern.
    trust_domain: Option<Arc<str>>,
    segments: Box<[Seg]>,
    /// Ends in `**`: one or more segments beyond `segments`.
    more: bool,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A SPIFFE pattern not starting with lowercase `spiffe://`.
    #[error("a SPIFFE ID pattern must start with `spiffe://`")]
    Scheme,
    /// Trust domain empty or with characters outside `[a-z0-9._-]`.
    #[error("trust domain `{0}` is not valid: it must be non-empty and use only lowercase letters, digits, `.`, `_` and `-` (wildcards are not allowed in the trust domain)")]
    TrustDomain(String),
    /// A trust domain longer than [`MAX_TRUST_DOMAIN_LEN`] bytes, which no SPIFFE ID can have.
    #[error("trust domain is {0} bytes long, over the SPIFFE limit of {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong(usize),
    /// A path pattern not starting with `/`.
    #[error("a path pattern must start with `/`")]
    NoLeadingSlash,
    /// An empty segment (`//` or a trailing `/`).
    #[error("empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    /// `.` or `..` as a segment.
    #[error("`.` and `..` segments are not allowed")]
    DotSegment,
    /// `**` anywhere but last.
    #[error("`**` may only be the last segment")]
    DoubleStarNotLast,
    /// `*` mixed with other characters inside one segment.
    #[error("`*` must stand for a whole segment (`{0}` mixes it with other characters)")]
    PartialWildcard(String),
    /// A character not allowed in a SPIFFE ID path segment.
    #[error("segment `{0}` has characters outside `[a-zA-Z0-9._-]`")]
    SpiffeSegmentChars(String),
    /// A path segment not in normalised form.
    #[error("segment `{0}` is not in normalised form (no query, `\\`, control characters, and percent-encoding only for reserved characters, in upper case)")]
    PathNotNormal(String),
    /// Longer than a SPIFFE ID may be.
    #[error("longer than 2048 bytes")]
    TooLong,
}

/// The copy of `value` already in `set`, else `value` itself, shared and added to it. Sets of
/// what a bundle wrote use the standard library's DoS-resistant hash.
pub(crate) fn intern<T, V>(set: &mut HashSet<Arc<T>>, value: V) -> Arc<T>
where
    T: ?Sized + Eq + Hash,
    V: Borrow<T> + Into<Arc<T>>,
{
    if let Some(known) = set.get(value.borrow()) {
        return Arc::clone(known);
    }
    let value: Arc<T> = value.into();
    set.insert(Arc::clone(&value));
    value
}

/// The strings of the patterns parsed with it, one copy of each: a bundle's thousands of SPIFFE
/// ID patterns repeat the same trust domain and the same few segments (`ns`, `sa`, namespaces),
/// so a compile parses them all with one of these.
#[derive(Debug, Default)]
pub(crate) struct Strings(HashSet<Arc<str>>);

impl Strings {
    /// The copy of `text` already held, else a new one, held from now on.
    fn get(&mut self, text: &str) -> Arc<str> {
        intern(&mut self.0, text)
    }
}

impl Pattern {
    /// Parse a SPIFFE ID pattern such as `spiffe://hospital.example/ns/clinical/**`.
    pub fn parse_spiffe(text: &str) -> Result<Pattern, PatternError> {
        Pattern::parse_spiffe_in(text, &mut Strings::default())
    }

    /// [`Pattern::parse_spiffe`], sharing its strings with the other patterns of `strings`.
    pub(crate) fn parse_spiffe_in(
        text: &str,
        strings: &mut Strings,
    ) -> Result<Pattern, PatternError> {
        if text.len() > 2048 {
            return Err(PatternError::TooLong);
        }
        let rest = text.strip_prefix("spiffe://").ok_or(PatternError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(PatternError::TrustDomainTooLong(td.len()));
        }
        if td.is_empty()
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(PatternError::TrustDomain(td.to_string()));
        }
        let (segments, more) = parse_segments(path, strings, |seg| {
            if seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                Ok(())
            } else {
                Err(PatternError::SpiffeSegmentChars(seg.to_string()))
            }
        })?;
        Ok(Pattern {
            trust_domain: Some(strings.get(td)),
            segments,
            more,
        })
    }

    /// Parse an HTTP path pattern such as `/results/*/pdf` or `/results/**`.
    pub fn parse_path(text: &str) -> Result<Pattern, PatternError> {
        Pattern::parse_path_in(text, &mut Strings::default())
    }

    /// [`Pattern::parse_path`], sharing its strings with the other patterns of `strings`.
    pub(crate) fn parse_path_in(
        text: &str,
        strings: &mut Strings,
    ) -> Result<Pattern, PatternError> {
        if !text.starts_with('/') {
            return Err(PatternError::NoLeadingSlash);
        }
        let path = if text == "/" { "" } else { text };
        let (segments, more) = parse_segments(path, strings, |seg| {
            let mut one = String::with_capacity(seg.len() + 1);
            one.push('/');
            one.push_str(seg);
            if normalize::is_normal(&one) {
                Ok(())
            } else {
                Err(PatternError::PathNotNormal(seg.to_string()))
            }
        })?;
        Ok(Pattern {
            trust_domain: None,
            segments,
            more,
        })
    }

    /// The trust domain of a SPIFFE ID pattern.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    pub(crate) fn segments(&self) -> &[Seg] {
        &self.segments
    }

    pub(crate) fn more(&self) -> bool {
        self.more
    }

    /// Whether the pattern matches a path given as `/`-separated segments after the leading
    /// `/` (an empty string is the root, with no segments).
    pub fn matches_path(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        if rest.is_empty() {
            self.matches_segments(std::iter::empty())
        } else {
            self.matches_segments(rest.split('/'))
        }
    }

    /// Whether the pattern matches a SPIFFE ID given as trust domain and path (`""` or `/a/b`).
    pub fn matches_id(&self, trust_domain: &str, path: &str) -> bool {
        self.trust_domain.as_deref() == Some(trust_domain) && self.matches_path(path)
    }

    /// [`Pattern::matches_path`] on a path already cut by [`split_segments`] (`[]` is the
    /// root): the request path is split once and matched against many patterns.
    #[inline]
    pub(crate) fn matches_split(&self, segs: &[&str]) -> bool {
        let want = self.segments();
        let len_ok = if self.more {
            segs.len() > want.len()
        } else {
            segs.len() == want.len()
        };
        len_ok
            && want.iter().zip(segs).all(|(w, s)| match w {
                Seg::Any => true,
                Seg::Literal(l) => **l == **s,
            })
    }

    fn matches_segments<'s>(&self, mut segs: impl Iterator<Item = &'s str>) -> bool {
        for want in self.segments.iter() {
            match (want, segs.next()) {
                (_, None) => return false,
                (Seg::Any, Some(_)) => {}
                (Seg::Literal(l), Some(s)) => {
                    if **l != *s {
                        return false;
                    }
                }
            }
        }
        let remaining = segs.next().is_some();
        remaining == self.more
    }

    /// Whether some input matches both patterns. Used to reject segments whose members overlap.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        if self.trust_domain != other.trust_domain {
            return false;
        }
        let prefix_ok = self
            .segments
            .iter()
            .zip(other.segments.iter())
            .all(|pair| match pair {
                (Seg::Literal(a), Seg::Literal(b)) => a == b,
                _ => true,
            });
        if !prefix_ok {
            return false;
        }
        let (n, m) = (self.segments.len(), other.segments.len());
        match (self.more, other.more) {
            (false, false) => n == m,
            (false, true) => n > m,
            (true, false) => m > n,
            (true, true) => true,
        }
    }

    /// Whether every input this pattern matches is also matched by `wider`.
    pub fn is_subset_of(&self, wider: &Pattern) -> bool {
        if self.trust_domain != wider.trust_domain {
            return false;
        }
        let (n, m) = (self.segments.len(), wider.segments.len());
        let len_ok = match (self.more, wider.more) {
            (false, false) => n == m,
            (false, true) => n > m,
            (true, false) => false,
            (true, true) => n >= m,
        };
        len_ok
            && self
                .segments
                .iter()
                .zip(wider.segments.iter())
                .all(|pair| match pair {
                    (_, Seg::Any) => true,
                    (Seg::Literal(a), Seg::Literal(b)) => a == b,
                    (Seg::Any, Seg::Literal(_)) => false,
                })
    }
}

/// Path segments looked at without spilling to the heap.
const INLINE_SEGMENTS: usize = 16;

/// The `/`-separated segments of `""` or `/a/b` (a plain byte scan: segments are short, and
/// `str::split`'s searcher costs more than it saves here).
#[inline]
pub(crate) fn split_segments(path: &str) -> smallvec::SmallVec<[&str; INLINE_SEGMENTS]> {
    let mut segs = smallvec::SmallVec::new();
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return segs;
    }
    let bytes = rest.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' {
            segs.push(&rest[start..i]);
            start = i + 1;
        }
    }
    segs.push(&rest[start..]);
    segs
}

fn parse_segments(
    path: &str,
    strings: &mut Strings,
    check: impl Fn(&str) -> Result<(), PatternError>,
) -> Result<(Box<[Seg]>, bool), PatternError> {
    let mut segments = Vec::new();
    let mut more = false;
    if path.is_empty() {
        return Ok((segments.into(), more));
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" => return Err(PatternError::EmptySegment),
            "." | ".." => return Err(PatternError::DotSegment),
            "**" if i + 1 == parts.len() => more = true,
            "**" => return Err(PatternError::DoubleStarNotLast),
            "*" => segments.push(Seg::Any),
            s if s.contains('*') => return Err(PatternError::PartialWildcard(s.to_string())),
            s => {
                check(s)?;
                segments.push(Seg::Literal(strings.get(s)));
            }
        }
    }
    Ok((segments.into(), more))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(td) = &self.trust_domain {
            write!(f, "spiffe://{td}")?;
        } else if self.segments.is_empty() && !self.more {
            return f.write_str("/");
        }
        for s in self.segments.iter() {
            match s {
                Seg::Literal(l) => write!(f, "/{l}")?,
                Seg::Any => f.write_str("/*")?,
            }
        }
        if self.more {
            f.write_str("/**")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: &str) -> Pattern {
        Pattern::parse_spiffe(p).expect("valid pattern")
    }

    #[test]
    fn spiffe_matching_is_segment_aware() {
        let p = id("spiffe://td/ns/clinical/**");
        assert!(p.matches_id("td", "/ns/clinical/sa/ehr"));
        assert!(p.matches_id("td", "/ns/clinical/x"));
        assert!(!p.matches_id("td", "/ns/clinical"));
        assert!(!p.matches_id("td", "/ns/clinical-evil/x"));
        assert!(!p.matches_id("other", "/ns/clinical/x"));
        let star = id("spiffe://td/ns/*/sa/ehr");
        assert!(star.matches_id("td", "/ns/a/sa/ehr"));
        assert!(!star.matches_id("td", "/ns/a/b/sa/ehr"));
        let exact = id("spiffe://td/a");
        assert!(exact.matches_id("td", "/a"));
        assert!(!exact.matches_id("td", "/a/b"));
        let bare = id("spiffe://td");
        assert!(bare.matches_id("td", ""));
        assert!(!bare.matches_id("td", "/a"));
        let all = id("spiffe://td/**");
        assert!(all.matches_id("td", "/a/b/c"));
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert_eq!(
            Pattern::parse_spiffe("SPIFFE://td/a"),
            Err(PatternError::Scheme)
        );
        assert!(matches!(
            Pattern::parse_spiffe("spiffe://TD/a"),
            Err(PatternError::TrustDomain(_))
        ));
        assert!(matches!(
            Pattern::parse_spiffe("spiffe://*/a"),
            Err(PatternError::TrustDomain(_))
        ));
        assert_eq!(
            Pattern::parse_spiffe("spiffe://td/**/a"),
            Err(PatternError::DoubleStarNotLast)
        );
        assert!(matches!(
            Pattern::parse_spiffe("spiffe://td/a*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert_eq!(
            Pattern::parse_spiffe("spiffe://td/a/"),
            Err(PatternError::EmptySegment)
        );
        assert_eq!(
            Pattern::parse_spiffe("spiffe://td/../a"),
            Err(PatternError::DotSegment)
        );
        assert!(matches!(
            Pattern::parse_spiffe("spiffe://td/a%20b"),
            Err(PatternError::SpiffeSegmentChars(_))
        ));
        assert_eq!(
            Pattern::parse_path("results"),
            Err(PatternError::NoLeadingSlash)
        );
        assert_eq!(
            Pattern::parse_path("/a//b"),
            Err(PatternError::EmptySegment)
        );
        assert!(matches!(
            Pattern::parse_path("/a?x=1"),
            Err(PatternError::PathNotNormal(_))
        ));
        assert!(matches!(
            Pattern::parse_path("/%7Euser"),
            Err(PatternError::PathNotNormal(_))
        ));
    }

    #[test]
    fn path_patterns() {
        let root = Pattern::parse_path("/").expect("root");
        assert!(root.matches_path("/"));
        assert!(!root.matches_path("/a"));
        let any = Pattern::parse_path("/**").expect("any");
        assert!(any.matches_path("/a"));
        assert!(!any.matches_path("/"));
        let r = Pattern::parse_path("/results/**").expect("results");
        assert!(r.matches_path("/results/1"));
        assert!(!r.matches_path("/results"));
        assert!(!r.matches_path("/resultsx/1"));
        assert_eq!(r.to_string(), "/results/**");
        assert_eq!(root.to_string(), "/");
    }

    #[test]
    fn overlap_and_subset() {
        let a = id("spiffe://td/ns/a/**");
        assert!(a.overlaps(&id("spiffe://td/ns/*/x")));
        assert!(!a.overlaps(&id("spiffe://td/ns/b/**")));
        assert!(!a.overlaps(&id("spiffe://td/ns/a")));
        assert!(a.overlaps(&id("spiffe://td/**")));
        assert!(!a.overlaps(&id("spiffe://other/ns/a/**")));
        assert!(id("spiffe://td/ns/a/x").is_subset_of(&a));
        assert!(!a.is_subset_of(&id("spiffe://td/ns/a/x")));
        assert!(a.is_subset_of(&id("spiffe://td/**")));
    }
}
