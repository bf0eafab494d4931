//! The decision log: a bounded queue between the checks and one writer thread.
//!
//! A check that is to be logged reserves a queue slot with `try_reserve` (no waiting, no lock
//! other checks wait on); only with a slot in hand does it copy the fields it logs into a
//! [`DecisionRecord`]. When the queue is full the entry is dropped and counted in
//! `wardgate_decision_log_dropped_total`. The writer thread serialises each record as one JSON
//! line, batches whatever is queued, flushes when the queue runs dry, then sleeps 10 ms so that
//! checks queue entries without waking it one by one. A slow or blocked sink (a full pipe, a
//! stalled disk) stalls the writer and fills the queue, never a check.
//!
//! What a record may hold of a request is `super::redact`'s to say: the check copies the raw
//! values (each capped, so a client cannot grow the queue's memory or a line without bound) and
//! the policy that decided; the writer thread redacts them before anything is serialised.
//!
//! Allow decisions can be sampled (`sample_allows` in 0..=1, deterministic: exactly that
//! fraction of allows, evenly spread); denials are always offered to the queue.
//!
//! A file sink follows log rotation (`FollowedFile`): moved away or deleted, it is created again
//! at its path by the next write.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::{mpsc, oneshot};

use super::metrics::{self, MetricsError};
use super::redact::{cap, Redaction, Redactor};
use super::CheckEvent;
use crate::decision_log::{
    loggable_path, DecisionRecord, MAX_BREAK_GLASS_REASON, MAX_HOST, MAX_METHOD, MAX_PRINCIPAL,
    REDACTED,
};
use crate::policy::{Policy, Reason, Verdict};

/// Where decision-log entries go, as given to `--decision-log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogTarget {
    /// Not written at all.
    Off,
    /// Standard output (operational logs go to standard error).
    Stdout,
    /// A file, appended to and created with mode 0640 if missing. A FIFO works too; opening it
    /// waits until a reader has it open.
    File(PathBuf),
}

/// A `--decision-log` value that is neither `stdout`, `off` nor a path.
#[derive(Debug, thiserror::Error)]
#[error("expected stdout, off or a file path")]
pub struct DecisionLogTargetError;

impl FromStr for DecisionLogTarget {
    type Err = DecisionLogTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err(DecisionLogTargetError),
            "off" => Ok(DecisionLogTarget::Off),
            "stdout" | "-" => Ok(DecisionLogTarget::Stdout),
            path => Ok(DecisionLogTarget::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for DecisionLogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionLogTarget::Off => f.write_str("off"),
            DecisionLogTarget::Stdout => f.write_str("stdout"),
            DecisionLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An open decision-log sink and how to feed it.
pub struct DecisionLogConfig {
    /// Where the JSON lines go (wrapped in a buffer by the writer thread).
    pub sink: Box<dyn Write + Send>,
    /// What the sink is, for logs (`stdout`, a path).
    pub description: String,
    /// Queue capacity in entries (at least 1).
    pub queue: usize,
    /// Fraction of allow decisions logged, 0 to 1; denials are always logged.
    pub sample_allows: f64,
    /// What records may hold of a request.
    pub redaction: Redaction,
}

impl fmt::Debug for DecisionLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionLogConfig")
            .field("description", &self.description)
            .field("queue", &self.queue)
            .field("sample_allows", &self.sample_allows)
            .field("paths", &self.redaction.paths)
            .finish_non_exhaustive()
    }
}

impl DecisionLogConfig {
    /// Open `target`: `None` for [`DecisionLogTarget::Off`].
    pub fn open(
        target: &DecisionLogTarget,
        queue: usize,
        sample_allows: f64,
        redaction: Redaction,
    ) -> io::Result<Option<DecisionLogConfig>> {
        let sink: Box<dyn Write + Send> = match target {
            DecisionLogTarget::Off => return Ok(None),
            DecisionLogTarget::Stdout => Box::new(io::stdout()),
            DecisionLogTarget::File(path) => Box::new(FollowedFile::open(path)?),
        };
        Ok(Some(DecisionLogConfig {
            sink,
            description: target.to_string(),
            queue,
            sample_allows,
            redaction,
        }))
    }
}

/// How often a decision-log file checks that its path still names it.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// A decision-log file that follows rotation: when its path no longer names the open file (a
/// log rotator moved it away or deleted it), the next write, at most [`FOLLOW_EVERY`] later,
/// goes to a new file at the path, created as the first was. Truncation in place
/// (`copytruncate`) needs nothing: every write appends. If the new file cannot be opened,
/// writing goes on into the old one and the failure is logged (at most once per
/// [`FOLLOW_EVERY`]); so a rotator's mistake loses no entry.
struct FollowedFile {
    path: PathBuf,
    file: std::fs::File,
    /// Device and inode of `file`.
    identity: (u64, u64),
    checked: Instant,
}

impl FollowedFile {
    fn open(path: &Path) -> io::Result<FollowedFile> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        let meta = file.metadata()?;
        Ok(FollowedFile {
            path: path.to_path_buf(),
            file,
            identity: (meta.dev(), meta.ino()),
            checked: Instant::now(),
        })
    }

    /// Reopen the path if it no longer names the open file (checked once per [`FOLLOW_EVERY`]).
    fn follow(&mut self) {
        if self.checked.elapsed() < FOLLOW_EVERY {
            return;
        }
        self.checked = Instant::now();
        let moved = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) != self.identity)
            .unwrap_or(true);
        if !moved {
            return;
        }
        match FollowedFile::open(&self.path) {
            Ok(new) => {
                tracing::info!(path = %self.path.display(), "decision log rotated: writing to a new file");
                *self = new;
            }
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                "decision log was moved or deleted and cannot be created again; writing on to the old file"
            ),
        }
    }
}

impl Write for FollowedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.follow();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// How long the writer lets entries accumulate after draining the queue.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

enum Msg {
    Record(Pending),
    Close,
}

/// The text fields of a [`Pending`] entry, in the order they are stored.
#[derive(Clone, Copy)]
enum Field {
    RequestId,
    Source,
    SourceSegment,
    Destination,
    DestinationSegment,
    Method,
    Path,
    Host,
    Rule,
    BreakGlassReason,
}

const FIELDS: usize = 10;

/// Longest raw path copied into the queue; a longer one is logged truncated.
const MAX_PATH_COPY: usize = 8 * 1024;

/// Longest raw request id copied (it is hashed, so only its identity matters).
const MAX_REQUEST_ID_COPY: usize = 256;

/// A decision-log entry as a check queues it: every text field copied into one string (one
/// allocation on the check path), each capped; the writer thread redacts them and builds the
/// [`DecisionRecord`].
struct Pending {
    at: jiff::Timestamp,
    text: String,
    /// End of each field in `text`; a field starts where the previous one ends.
    ends: [u32; FIELDS],
    /// Bit per field: present (an absent field is not the same as an empty one).
    present: u16,
    decision: Verdict,
    reason: Reason,
    revision: Option<u64>,
    latency_us: u64,
    enforced: bool,
    /// The policy that decided, for the writer to redact the path by.
    policy: Option<Arc<Policy>>,
    /// Whether the raw path was longer than the copy.
    path_cut: bool,
    /// Whether the bundle's break-glass header was sent (`None`: the bundle has none).
    break_glass_header: Option<bool>,
}

/// A principal, or the marker when it is longer than any SPIFFE ID.
fn principal(value: Option<&str>) -> Option<&str> {
    value.map(|v| if v.len() > MAX_PRINCIPAL { REDACTED } else { v })
}

impl Pending {
    fn new(event: &CheckEvent<'_>) -> Pending {
        let d = event.decision;
        let r = event.request;
        let break_glass_reason = event
            .break_glass_reason
            .filter(|_| d.reason == Reason::BreakGlass);
        let path = loggable_path(r.path);
        let copied_path = cap(path, MAX_PATH_COPY);
        // A host with a port can be six bytes longer than a name; beyond that it is no name
        // the bundle can hold, and a method longer than the cap is no method it names.
        let host = if r.host.len() > MAX_HOST + 6 {
            REDACTED
        } else {
            r.host
        };
        let method = if r.method.len() > MAX_METHOD {
            REDACTED
        } else {
            r.method
        };
        let fields: [Option<&str>; FIELDS] = [
            event.request_id.map(|id| cap(id, MAX_REQUEST_ID_COPY)),
            principal(r.source),
            d.source_segment,
            principal(r.destination),
            d.destination_segment,
            Some(method),
            Some(copied_path),
            Some(host),
            d.rule,
            break_glass_reason.map(|reason| cap(reason, MAX_BREAK_GLASS_REASON)),
        ];
        let policy = event.policy;
        let break_glass_header = policy
            .and_then(|p| p.break_glass_header())
            .map(|h| r.headers.header(h).is_some());
        let length = fields.iter().flatten().map(|f| f.len()).sum();
        let mut pending = Pending {
            at: r.time,
            text: String::with_capacity(length),
            ends: [0; FIELDS],
            present: 0,
            decision: d.verdict,
            reason: d.reason,
            revision: event.revision,
            latency_us: u64::try_from(event.elapsed.as_micros()).unwrap_or(u64::MAX),
            enforced: event.enforced,
            policy: policy.cloned(),
            path_cut: copied_path.len() < path.len(),
            break_glass_header,
        };
        for (i, field) in fields.iter().enumerate() {
            if let Some(value) = field {
                pending.text.push_str(value);
                pending.present |= 1 << i;
            }
            // Fields come from one CheckRequest, far below 4 GiB together.
            pending.ends[i] = u32::try_from(pending.text.len()).unwrap_or(u32::MAX);
        }
        pending
    }

    fn get(&self, field: Field) -> Option<&str> {
        let i = field as usize;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize)
    }

    fn owned(&self, field: Field) -> Option<String> {
        self.get(field).map(str::to_owned)
    }

    fn record(&self, redactor: &mut Redactor) -> DecisionRecord {
        let policy = self.policy.as_ref();
        let rule = self.get(Field::Rule);
        let (path, form) = redactor.path(
            policy,
            rule,
            self.get(Field::Path).unwrap_or_default(),
            self.path_cut,
        );
        DecisionRecord {
            time: self.at.to_string(),
            request_id: self.get(Field::RequestId).map(|id| redactor.request_id(id)),
            source: self.owned(Field::Source),
            source_segment: self.owned(Field::SourceSegment),
            destination: self.owned(Field::Destination),
            destination_segment: self.owned(Field::DestinationSegment),
            method: redactor.method(policy, self.get(Field::Method).unwrap_or_default()),
            path,
            host: redactor.host(policy, self.get(Field::Host).unwrap_or_default()),
            decision: self.decision,
            reason: self.reason,
            rule: self.owned(Field::Rule),
            revision: self.revision,
            latency_us: self.latency_us,
            break_glass_reason: self.owned(Field::BreakGlassReason),
            enforced: self.enforced,
            path_form: Some(form),
            break_glass_header: self.break_glass_header,
        }
    }
}

/// Which allows to log: exactly `rate` of them, evenly spread, without a lock or an RNG.
#[derive(Debug)]
enum Sampler {
    All,
    None,
    /// Fixed-point accumulator: an allow is logged when adding `step` carries into bit 32.
    Fraction {
        step: u64,
        acc: AtomicU64,
    },
}

impl Sampler {
    fn new(rate: f64) -> Sampler {
        if rate.is_nan() || rate <= 0.0 {
            Sampler::None
        } else if rate >= 1.0 {
            Sampler::All
        } else {
            // In (0, 1): the product is below 2^32 and non-negative.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let step = (rate * 4_294_967_296.0) as u64;
            Sampler::Fraction {
                step: step.max(1),
                acc: AtomicU64::new(0),
            }
        }
    }

    fn take(&self) -> bool {
        match self {
            Sampler::All => true,
            Sampler::None => false,
            Sampler::Fraction { step, acc } => {
                let before = acc.fetch_add(*step, Ordering::Relaxed);
                (before >> 32) != (before.wrapping_add(*step) >> 32)
            }
        }
    }
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    sampler: Sampler,
    description: String,
    closed: AtomicBool,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

/// The decision log of one [`super::Telemetry`]; counters exist (at zero) even when it is off.
pub(super) struct DecisionLog {
    inner: Option<Inner>,
    dropped: IntCounter,
    sampled_out: IntCounter,
    depth: IntGauge,
}

impl fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("off"),
            Some(inner) => f
                .debug_struct("DecisionLog")
                .field("sink", &inner.description)
                .field("capacity", &inner.tx.max_capacity())
                .field("dropped", &self.dropped.get())
                .finish(),
        }
    }
}

impl DecisionLog {
    pub(super) fn new(
        registry: &Registry,
        config: Option<DecisionLogConfig>,
    ) -> Result<DecisionLog, MetricsError> {
        let dropped = metrics::counter(
            registry,
            "wardgate_decision_log_dropped_total",
            "Decision-log entries dropped because the queue was full (or the log was closed).",
        )?;
        let written = metrics::counter(
            registry,
            "wardgate_decision_log_written_total",
            "Decision-log entries written to the sink (counted when flushed).",
        )?;
        let write_errors = metrics::counter(
            registry,
            "wardgate_decision_log_write_errors_total",
            "Decision-log entries lost to an I/O error of the sink.",
        )?;
        let sampled_out = metrics::counter(
            registry,
            "wardgate_decision_log_sampled_out_total",
            "Allow decisions not logged because of --decision-log-sample-allows.",
        )?;
        let depth = metrics::int_gauge(
            registry,
            "wardgate_decision_log_queue_depth",
            "Decision-log entries waiting for the writer.",
        )?;
        let capacity = metrics::int_gauge(
            registry,
            "wardgate_decision_log_queue_capacity",
            "Capacity of the decision-log queue (0: the decision log is off).",
        )?;
        let paths = metrics::int_gauge_vec(
            registry,
            "wardgate_decision_log_paths",
            "Always 1 while the decision log is on; the mode label says how it writes request paths (redacted, full: as sent, which may identify patients, off).",
            &["mode"],
        )?;
        if let Some(config) = &config {
            paths
                .with_label_values(&[config.redaction.paths.as_str()])
                .set(1);
        }
        let inner = config.map(|config| {
            let queue = config.queue.max(1);
            capacity.set(i64::try_from(queue).unwrap_or(i64::MAX));
            let (tx, rx) = mpsc::channel(queue);
            let (done_tx, done_rx) = oneshot::channel();
            let writer = Writer {
                redactor: Redactor::new(config.redaction),
                written,
                write_errors,
                description: config.description.clone(),
                last_error_log: None,
                errors_since_log: 0,
            };
            let sink = config.sink;
            let spawned = std::thread::Builder::new()
                .name("wardgate-decision-log".into())
                .spawn(move || writer.run(rx, sink, done_tx));
            if let Err(error) = spawned {
                // The receiver is gone with the closure: every entry counts as dropped.
                tracing::error!(%error, "cannot start the decision-log writer thread");
            }
            Inner {
                tx,
                sampler: Sampler::new(config.sample_allows),
                description: config.description,
                closed: AtomicBool::new(false),
                done: Mutex::new(Some(done_rx)),
            }
        });
        Ok(DecisionLog {
            inner,
            dropped,
            sampled_out,
            depth,
        })
    }

    pub(super) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queue `event` for the log if sampling keeps it; drop and count it if the queue is full.
    pub(super) fn offer(&self, event: &CheckEvent<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        if event.decision.is_allow() && !inner.sampler.take() {
            self.sampled_out.inc();
            return;
        }
        if inner.closed.load(Ordering::Relaxed) {
            self.dropped.inc();
            return;
        }
        match inner.tx.try_reserve() {
            Ok(permit) => permit.send(Msg::Record(Pending::new(event))),
            Err(_) => self.dropped.inc(),
        }
    }

    pub(super) fn refresh_gauges(&self) {
        if let Some(inner) = &self.inner {
            let depth = inner.tx.max_capacity() - inner.tx.capacity();
            self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    pub(super) async fn close(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        inner.closed.store(true, Ordering::Relaxed);
        loop {
            match inner.tx.try_send(Msg::Close) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => break,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let done = inner
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let finished = match done {
            None => true,
            Some(done) => {
                let left = deadline.saturating_duration_since(Instant::now());
                matches!(tokio::time::timeout(left, done).await, Ok(Ok(())))
            }
        };
        if finished {
            tracing::info!(sink = %inner.description, "decision log flushed");
        } else {
            let pending = inner.tx.max_capacity() - inner.tx.capacity();
            tracing::error!(
                sink = %inner.description,
                pending,
                ?timeout,
                "decision log writer did not finish in time: queued entries are lost"
            );
        }
        finished
    }
}

/// The writer thread's state.
struct Writer {
    redactor: Redactor,
    written: IntCounter,
    write_errors: IntCounter,
    description: String,
    last_error_log: Option<Instant>,
    errors_since_log: u64,
}

impl Writer {
    fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        sink: Box<dyn Write + Send>,
        done: oneshot::Sender<()>,
    ) {
        let mut out = BufWriter::with_capacity(64 * 1024, sink);
        let mut line = Vec::with_capacity(512);
        // Entries handed to the buffer since the last flush; counted as written once flushed.
        let mut batch = 0u64;
        'receive: while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(pending) => {
                        line.clear();
                        let result =
                            serde_json::to_writer(&mut line, &pending.record(&mut self.redactor))
                                .map_err(io::Error::from)
                                .and_then(|()| {
                                    line.push(b'\n');
                                    out.write_all(&line)
                                });
                        match result {
                            Ok(()) => batch += 1,
                            Err(error) => self.failed(&error, 1),
                        }
                    }
                    Msg::Close => break 'receive,
                }
                next = rx.try_recv().ok();
            }
            // The queue ran dry: hand what we have to the sink.
            self.flush(&mut out, &mut batch);
            // Let entries accumulate for a moment. While this thread sleeps it has no waker
            // registered, so a check that queues an entry does not pay for waking it (a futex
            // call and a context switch, microseconds on a busy machine); the writer drains the
            // batch when it wakes. Idle, the thread blocks in `blocking_recv` and costs nothing.
            std::thread::sleep(BATCH_INTERVAL);
        }
        self.flush(&mut out, &mut batch);
        let _ = done.send(());
    }

    fn flush(&mut self, out: &mut impl Write, batch: &mut u64) {
        match out.flush() {
            Ok(()) => self.written.inc_by(*batch),
            Err(error) => self.failed(&error, *batch),
        }
        *batch = 0;
    }

    /// Count `entries` lost to an I/O error; log the first, then at most one summary every 10 s.
    fn failed(&mut self, error: &io::Error, entries: u64) {
        self.write_errors.inc_by(entries.max(1));
        self.errors_since_log += 1;
        let due = self
            .last_error_log
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::error!(
                sink = %self.description,
                %error,
                errors = self.errors_since_log,
                "cannot write the decision log"
            );
            self.last_error_log = Some(Instant::now());
            self.errors_since_log = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "off".parse::<DecisionLogTarget>().ok(),
            Some(DecisionLogTarget::Off)
        );
        assert_eq!(
            "stdout".parse::<DecisionLogTarget>().ok(),
            Some(DecisionLogTarget::Stdout)
        );
        assert_eq!(
            "/var/log/wardgate.jsonl".parse::<DecisionLogTarget>().ok(),
            Some(DecisionLogTarget::File("/var/log/wardgate.jsonl".into()))
        );
        assert!("".parse::<DecisionLogTarget>().is_err());
    }

    /// A rotator moves the file away (logrotate's `create` mode), then another deletes it: each
    /// time the lines written after the next check go to a new file at the path, and the moved
    /// file keeps what was written before it moved.
    #[test]
    fn a_rotated_or_deleted_log_file_is_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let mut log = FollowedFile::open(&path).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("decisions.jsonl.1")).unwrap();
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        log.write_all(b"two\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        log.write_all(b"three\n").unwrap();
        log.write_all(b"four\n").unwrap();
        log.flush().unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("decisions.jsonl.1"), "one\n");
        assert_eq!(read("decisions.jsonl"), "three\nfour\n");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(
            mode & !0o640,
            0,
            "created again with at most mode 0640, got {mode:o}"
        );
    }

    /// Truncated in place (`copytruncate`), the file is still the one the path names: writing
    /// goes on at its new end, without a hole.
    #[test]
    fn a_log_file_truncated_in_place_is_written_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let mut log = FollowedFile::open(&path).unwrap();
        log.write_all(b"before the copy\n").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        log.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn sampler_keeps_exactly_the_fraction() {
        for (rate, n, expect) in [
            (0.0, 1000, 0),
            (1.0, 1000, 1000),
            (0.5, 1000, 500),
            (0.1, 1000, 100),
            (0.25, 1000, 250),
            (0.001, 1000, 1),
        ] {
            let sampler = Sampler::new(rate);
            let kept = (0..n).filter(|_| sampler.take()).count();
            assert!(
                kept.abs_diff(expect) <= 1,
                "rate {rate}: kept {kept} of {n}, expected {expect}"
            );
        }
        assert!(matches!(Sampler::new(f64::NAN), Sampler::None));
        assert!(matches!(Sampler::new(7.0), Sampler::All));
    }
}
