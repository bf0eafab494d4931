//! `when.schedule`: days of the week and a wall-clock window in a named IANA time zone.
//!
//! The window is wall-clock time in the zone, so it follows daylight-saving changes: 06:00–20:00
//! in Europe/Berlin is 06:00–20:00 local time in winter and in summer. A window whose end is
//! before its start crosses midnight and belongs to the day it starts on (`mon` with
//! `22:00-06:00` covers Monday 22:00 to Tuesday 06:00). The end is exclusive; `24:00` is allowed
//! as an end. Time zones come from jiff's bundled database, so no system tzdata is needed.
//! Matching never reads the clock: the instant comes with the request.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;

/// A compiled schedule.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Bit `n` set: weekday with `to_monday_zero_offset() == n` is included.
    days: u8,
    /// Minutes after local midnight, start inclusive.
    start: u16,
    /// Minutes after local midnight, end exclusive (1440 = midnight at the end of the day).
    end: u16,
    tz: TimeZone,
    tz_name: Box<str>,
}

const ALL_DAYS: u8 = 0b111_1111;

pub(crate) fn parse_day(text: &str) -> Option<u8> {
    let n = match text.to_ascii_lowercase().as_str() {
        "mon" | "monday" => 0,
        "tue" | "tuesday" => 1,
        "wed" | "wednesday" => 2,
        "thu" | "thursday" => 3,
        "fri" | "friday" => 4,
        "sat" | "saturday" => 5,
        "sun" | "sunday" => 6,
        _ => return None,
    };
    Some(1 << n)
}

fn parse_clock(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Parse `"HH:MM-HH:MM"` into (start, end) minutes.
pub(crate) fn parse_hours(text: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!("hours `{text}` must look like `06:00-20:00` (24-hour HH:MM-HH:MM; an end before the start crosses midnight)")
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let start = parse_clock(a).ok_or_else(bad)?;
    let end = parse_clock(b).ok_or_else(bad)?;
    if start == 1440 {
        return Err(format!("hours `{text}`: a window cannot start at 24:00"));
    }
    if start == end {
        return Err(format!(
            "hours `{text}` is an empty window (start equals end)"
        ));
    }
    Ok((start, end))
}

impl Schedule {
    /// Build a schedule; `days` is a bit set from [`parse_day`] (0 = every day).
    pub(crate) fn new(
        days: u8,
        hours: Option<(u16, u16)>,
        tz_name: Option<&str>,
    ) -> Result<Self, String> {
        let tz = match tz_name {
            Some(name) => TimeZone::get(name).map_err(|_| {
                format!("unknown time zone `{name}` (use an IANA name such as Europe/Berlin)")
            })?,
            None => TimeZone::UTC,
        };
        let (start, end) = hours.unwrap_or((0, 1440));
        Ok(Schedule {
            days: if days == 0 { ALL_DAYS } else { days },
            start,
            end,
            tz,
            tz_name: tz_name.unwrap_or("UTC").into(),
        })
    }

    /// Whether the schedule can never match (no day selected). Kept for analysis.
    #[allow(dead_code)] // reason: used by analysis tooling and tests
    pub(crate) fn never(&self) -> bool {
        self.days & ALL_DAYS == 0
    }

    /// The raw parts `(days bit set, start minute, end minute, zone, zone name)`, read by the
    /// analysis tooling through `policy::view` (it finds the instants where a window can open or
    /// close, then asks [`Schedule::matches`] itself).
    pub(crate) fn parts(&self) -> (u8, u16, u16, &TimeZone, &str) {
        (self.days, self.start, self.end, &self.tz, &self.tz_name)
    }

    fn has_day(&self, day: Weekday) -> bool {
        self.days & (1 << day.to_monday_zero_offset()) != 0
    }

    /// Whether the instant falls inside the window.
    pub(crate) fn matches(&self, at: jiff::Timestamp) -> bool {
        let local = self.tz.to_datetime(at);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let day = local.weekday();
        if self.start < self.end {
            self.has_day(day) && minute >= self.start && minute < self.end
        } else {
            (self.has_day(day) && minute >= self.start)
                || (self.has_day(day.previous()) && minute < self.end)
        }
    }

    /// A human description, for traces.
    pub(crate) fn describe(&self) -> String {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days: Vec<&str> = (0..7)
            .filter(|i| self.days & (1 << i) != 0)
            .map(|i| names[i])
            .collect();
        format!(
            "{} {:02}:{:02}-{:02}:{:02} {}",
            days.join(","),
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
            self.tz_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn weekdays() -> u8 {
        ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| parse_day(d).expect("day"))
            .fold(0, |a, b| a | b)
    }

    #[test]
    fn berlin_window_follows_dst() {
        let s = Schedule::new(weekdays(), Some((6 * 60, 20 * 60)), Some("Europe/Berlin"))
            .expect("schedule");
        // Winter (CET, UTC+1): 06:30 local = 05:30Z.
        assert!(s.matches(at("2026-03-27T05:30:00Z")));
        assert!(!s.matches(at("2026-03-27T04:30:00Z"))); // 05:30 local
                                                         // Summer (CEST, UTC+2) after the 2026-03-29 change: 06:30 local = 04:30Z.
        assert!(s.matches(at("2026-03-30T04:30:00Z")));
        assert!(!s.matches(at("2026-03-30T03:30:00Z"))); // 05:30 local
                                                         // 19:59 local is in, 20:00 local is out (end exclusive).
        assert!(s.matches(at("2026-03-30T17:59:00Z")));
        assert!(!s.matches(at("2026-03-30T18:00:00Z")));
        // Sunday is never in.
        assert!(!s.matches(at("2026-03-29T10:00:00Z")));
    }

    #[test]
    fn new_york_fall_back() {
        // 2026-11-01: clocks go from 02:00 EDT back to 01:00 EST. Window 01:00-02:00 local
        // matches both passes through 01:30.
        let s = Schedule::new(0, Some((60, 120)), Some("America/New_York")).expect("schedule");
        assert!(s.matches(at("2026-11-01T05:30:00Z"))); // 01:30 EDT
        assert!(s.matches(at("2026-11-01T06:30:00Z"))); // 01:30 EST
        assert!(!s.matches(at("2026-11-01T07:30:00Z"))); // 02:30 EST
    }

    #[test]
    fn midnight_crossing_belongs_to_start_day() {
        let mon = parse_day("mon").expect("mon");
        let s = Schedule::new(mon, Some((22 * 60, 6 * 60)), Some("UTC")).expect("schedule");
        assert!(s.matches(at("2026-11-23T22:30:00Z"))); // Monday 22:30
        assert!(s.matches(at("2026-11-24T05:59:00Z"))); // Tuesday 05:59
        assert!(!s.matches(at("2026-11-24T06:00:00Z"))); // Tuesday 06:00
        assert!(!s.matches(at("2026-11-24T22:30:00Z"))); // Tuesday 22:30
        assert!(!s.matches(at("2026-11-23T05:00:00Z"))); // Monday 05:00 (Sunday's night)
    }

    #[test]
    fn day_boundary() {
        let fri = parse_day("fri").expect("fri");
        let s = Schedule::new(fri, None, Some("Europe/Berlin")).expect("schedule");
        assert!(s.matches(at("2026-11-27T22:59:59Z"))); // Fri 23:59:59 CET
        assert!(!s.matches(at("2026-11-27T23:00:00Z"))); // Sat 00:00 CET
        assert!(!s.matches(at("2026-11-26T22:59:59Z"))); // Thu 23:59:59 CET
    }

    #[test]
    fn hours_syntax() {
        assert_eq!(parse_hours("06:00-20:00"), Ok((360, 1200)));
        assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
        assert!(parse_hours("6:00-20:00").is_err());
        assert!(parse_hours("06:00-25:00").is_err());
        assert!(parse_hours("06:00").is_err());
        assert!(parse_hours("06:00-06:00").is_err());
        assert!(Schedule::new(0, None, Some("Mars/Olympus")).is_err());
    }
}
