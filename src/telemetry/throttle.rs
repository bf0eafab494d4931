//! Rate-limited warnings: one log line per kind of event per interval, however often the event
//! happens, with the number of lines left out since the previous one.
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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was admitted.
    last: Option<Instant>,
    /// Events since then that were not admitted.
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: Mutex::new(State {
                last: None,
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
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WARNING_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
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
        assert!(admitted.iter().all(|n| (200..300).contains(n)), "{admitted:?}");
        // After a quiet interval, the next line comes at once and counts the rest: every
        // event is either a line or counted in one.
        let later = start + Duration::from_secs(120);
        let rest = throttle.admit_at(later).expect("due");
        assert_eq!(admitted.iter().sum::<u64>() + rest + 5, 1_279);
        assert_eq!(throttle.admit_at(later + Duration::from_secs(11)), Some(0));
    }
}
