//! Reading a decision log for `wardgate replay`: one line at a time, in bounded memory.
//!
//! Owns what counts as a readable line and why a line is skipped. A line is held only while it is
//! parsed, and never beyond [`MAX_LINE_BYTES`] (the rest of a longer line is read past, not
//! kept), so a log of any size, or a file that is not a log at all, is read in constant memory.
//! Blank lines are not counted. This module must never stop at a bad line (it is skipped with its
//! reason) and never decide anything.

use std::io::{BufRead, ErrorKind};

use crate::decision_log::DecisionRecord;

/// Longest line read as a record. A decision record is well under 10 KiB (SPIFFE IDs are at most
/// 2,048 bytes, a break-glass reason at most 256); anything longer is not one.
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024;

/// One non-blank line of the log.
pub(crate) enum Line {
    /// A decision record.
    Record(Box<DecisionRecord>),
    /// Not a decision record, and why.
    Skipped(String),
}

/// Reads decision records from `inner`, one line at a time.
pub(crate) struct LogReader<R> {
    inner: R,
    buf: Vec<u8>,
    line: usize,
}

impl<R: BufRead> LogReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        LogReader {
            inner,
            buf: Vec::with_capacity(1024),
            line: 0,
        }
    }

    /// The next non-blank line with its 1-based number, `None` at the end of the log. An `Err`
    /// is a read error of the file itself (the log cannot be read further).
    pub(crate) fn next_line(&mut self) -> std::io::Result<Option<(usize, Line)>> {
        loop {
            self.buf.clear();
            let Some((complete, too_long)) = self.read_bounded()? else {
                return Ok(None);
            };
            self.line += 1;
            if too_long {
                return Ok(Some((
                    self.line,
                    Line::Skipped(format!(
                        "longer than {MAX_LINE_BYTES} bytes: not a decision record"
                    )),
                )));
            }
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let parsed = match std::str::from_utf8(text) {
                Err(e) => Line::Skipped(format!("not UTF-8 text ({e})")),
                Ok(t) => match serde_json::from_str::<DecisionRecord>(t) {
                    Ok(r) => Line::Record(Box::new(r)),
                    Err(e) => Line::Skipped(why_not_a_record(t, &e, complete)),
                },
            };
            return Ok(Some((self.line, parsed)));
        }
    }

    /// Read one line into `buf`, keeping at most [`MAX_LINE_BYTES`]: `(ended with a newline,
    /// was longer than the bound)`, or `None` at the end of the input.
    fn read_bounded(&mut self) -> std::io::Result<Option<(bool, bool)>> {
        let mut seen = false;
        let mut too_long = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(seen.then_some((false, too_long)));
            }
            seen = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buf.len());
            if let Some(part) = chunk.get(..take.min(room)) {
                self.buf.extend_from_slice(part);
            }
            if take > room {
                too_long = true;
            }
            self.inner.consume(take);
            if done {
                return Ok(Some((true, too_long)));
            }
        }
    }
}

/// Why `line` is not a decision record, in words a user can act on.
fn why_not_a_record(line: &str, e: &serde_json::Error, complete: bool) -> String {
    let cut = if complete {
        ""
    } else {
        " (the last line has no newline: a record still being written?)"
    };
    if looks_like_envoy_access_log(line) {
        return format!("an Envoy access log line, not a decision record{cut}");
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(o)) if ENVOY_FIELDS.iter().any(|f| o.contains_key(*f)) => {
            format!("an Envoy access log line (JSON format), not a decision record: {e}{cut}")
        }
        Ok(serde_json::Value::Object(_)) => {
            format!("a JSON object but not a decision record: {e}{cut}")
        }
        Ok(_) => format!("JSON but not an object: not a decision record{cut}"),
        Err(_) => format!("not JSON: {e}{cut}"),
    }
}

/// Fields of Envoy's access log (command operators as JSON keys, as its documentation and most
/// configurations name them) that a decision record never has.
const ENVOY_FIELDS: [&str; 6] = [
    // The shipped sidecar configs' names (deploy/envoy): `flags` is %RESPONSE_FLAGS%.
    "flags",
    "response_code",
    "upstream_host",
    "upstream_cluster",
    "bytes_received",
    "response_flags",
];

/// Whether `line` has the shape of Envoy's default access log format:
/// `[START_TIME] "METHOD PATH PROTOCOL" CODE ...`.
pub(crate) fn looks_like_envoy_access_log(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((time, rest)) = rest.split_once("] \"") else {
        return false;
    };
    let method = rest.split(' ').next().unwrap_or_default();
    time.starts_with(|c: char| c.is_ascii_digit())
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
}
