//! Rate-limited warnings: a few log lines per kind of event per interval (one, unless a burst is
//! asked for), however often the event happens, with the number of lines left out since the
//! previous one.
//!
//! Anyone who can open a TCP connection can make a listener fail a handshake or a request
//! thousands of times a second; a warning per event would flood the log and its disk. Each
//! kind of event a caller can repeat gets its own [`Throttle`]; the code that logs asks
//! [`Throttle::admit`] first and, when admitted, puts the count of suppressed lines in the
//! line (`suppressed=N`). This module owns only that bookkeeping: it never formats or writes a
//! line itself, and never holds its lock for more than a few instructions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval of the listeners' throttled warnings: at most one line per kind per 10 s.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of repeatable warning; see the module documentation.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current interval began (its first line).
    window: Option<Instant>,
    /// Lines admitted in the current interval.
    written: u32,
    /// Events not admitted since the last line.
    suppressed: u64,
}

impl Throttle {
    /// At most `burst` lines (at least one) per `interval`.
    pub const fn new(interval: Duration, burst: u32) -> Throttle {
        Throttle {
            interval,
            burst: if burst == 0 { 1 } else { burst },
            state: Mutex::new(State {
                window: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// One event happened: `Some(n)` when its line is to be written now, `n` being the number
    /// of events of this kind left unlogged since the last line; `None` when it is left out
    /// (and counted for the next line).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new_window = state
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if new_window {
            state.window = Some(now);
            state.written = 0;
        }
        if state.written < self.burst {
            state.written += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for Throttle {
    /// One line per [`WARNING_INTERVAL`].
    fn default() -> Self {
        Throttle::new(WARNING_INTERVAL, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10), 1);
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        let mut admitted = Vec::new();
        // 1,279 events over 50 s, as an idle-connection flood made.
        for i in 1..1_279u64 {
            let at = start + Duration::from_millis(i * 50_000 / 1_279);
            if let Some(n) = throttle.admit_at(at) {
                admitted.push(n);
            }
        }
        // Five lines in 50 s (the first and one per 10 s), each counting ~255 left out.
        assert_eq!(admitted.len(), 4, "{admitted:?}");
        assert!(
            admitted.iter().all(|n| (200..300).contains(n)),
            "{admitted:?}"
        );
        // After a quiet interval, the next line comes at once and counts the rest: every
        // event is either a line or counted in one.
        let later = start + Duration::from_secs(120);
        let rest = throttle.admit_at(later).expect("due");
        assert_eq!(admitted.iter().sum::<u64>() + rest + 5, 1_279);
        assert_eq!(throttle.admit_at(later + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn a_burst_lets_a_few_distinct_events_through() {
        let throttle = Throttle::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(throttle.admit_at(at(0)), Some(0));
        assert_eq!(throttle.admit_at(at(100)), Some(0));
        assert_eq!(throttle.admit_at(at(200)), Some(0));
        assert_eq!(throttle.admit_at(at(300)), None);
        assert_eq!(throttle.admit_at(at(9_000)), None);
        // The next interval: its first line counts the two left out.
        assert_eq!(throttle.admit_at(at(10_000)), Some(2));
        assert_eq!(throttle.admit_at(at(10_100)), Some(0));
    }
}
