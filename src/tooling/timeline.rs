//! The reference year on which `analyze` and `diff` compare schedules: every schedule of the
//! bundles involved, and the elementary intervals on which each is constant.
//!
//! Schedules become sets of elementary intervals of a reference year (all of 2026 UTC): the
//! instants at which any schedule's window can open or close (its start, end and local
//! midnights, in every offset its zone uses, plus the zone's transitions) cut the year into
//! intervals on which every schedule is constant, and `Schedule::matches` itself labels each
//! interval. Emptiness and overlap of time sets are therefore exact over that year; membership of
//! a concrete instant always asks the schedule. This module never decides a request, and its
//! cost (boundaries times schedules) is charged to the analysis budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::tz::AmbiguousOffset;
use jiff::Timestamp;

use super::budget::{self, Budget, OverBudget, Refused};
use super::space::TimeSet;
use crate::policy::view::{RuleView, Schedule};
use crate::policy::Policy;

/// Start of the reference year over which time sets are compared.
pub(crate) const REFERENCE_START: &str = "2026-01-01T00:00:00Z";
/// End (exclusive) of the reference year.
pub(crate) const REFERENCE_END: &str = "2027-01-01T00:00:00Z";

/// The schedules of one or more policies, on a shared set of elementary intervals.
#[derive(Debug)]
pub(crate) struct TimeUniverse {
    starts: Vec<Timestamp>,
    schedules: Vec<Schedule>,
    keys: Vec<(u8, u16, u16, String)>,
    bits: Vec<Arc<[u64]>>,
}

fn key(s: &Schedule) -> (u8, u16, u16, String) {
    let (days, start, end, _, name) = s.parts();
    (days, start, end, name.to_string())
}

impl TimeUniverse {
    /// Collect every schedule of these policies and label the reference year's intervals.
    ///
    /// The cost grows with the distinct window boundaries per zone times the schedules; it is
    /// charged to `budget`, and the rule whose schedule pushed it over is named.
    pub(crate) fn new(policies: &[&Policy], budget: &Budget) -> Result<TimeUniverse, Refused> {
        let mut schedules: Vec<Schedule> = Vec::new();
        let mut keys: Vec<(u8, u16, u16, String)> = Vec::new();
        // Per schedule, the first rule that uses it (to name in a refusal).
        let mut sites: Vec<RuleView<'_>> = Vec::new();
        for p in policies {
            for r in p.view_rules().chain(p.view_break_glass()) {
                if let Some(s) = r.schedule {
                    budget
                        .work(budget::TEST * keys.len() as u64)
                        .map_err(|over| Refused::rule(&r, over))?;
                    let k = key(s);
                    if !keys.contains(&k) {
                        keys.push(k);
                        schedules.push(s.clone());
                        sites.push(r.clone());
                    }
                }
            }
        }
        let refused = |i: usize, over: OverBudget| match sites.get(i) {
            Some(r) => Refused::rule(r, over),
            None => Refused {
                at: String::new(),
                what: String::new(),
                over,
            },
        };
        let (y0, y1) = reference_year();
        let mut starts = vec![y0];
        // Per zone: the zone, the minutes of the day its windows turn at, and the last schedule
        // that added one (the one a refusal names).
        let mut by_zone: BTreeMap<String, (jiff::tz::TimeZone, Vec<u16>, usize)> = BTreeMap::new();
        for (i, s) in schedules.iter().enumerate() {
            let (_, start, end, tz, name) = s.parts();
            let entry = by_zone
                .entry(name.to_string())
                .or_insert_with(|| (tz.clone(), vec![0], i));
            for m in [start % 1440, end % 1440] {
                if !entry.1.contains(&m) {
                    entry.1.push(m);
                    entry.2 = i;
                }
            }
        }
        for (tz, minutes, culprit) in by_zone.values() {
            for t in tz.following(y0) {
                if t.timestamp() >= y1 {
                    break;
                }
                starts.push(t.timestamp());
            }
            let mut day = jiff::civil::date(2025, 12, 30);
            let last = jiff::civil::date(2027, 1, 2);
            while day <= last {
                budget
                    .work(budget::SCHEDULE_TEST * minutes.len() as u64)
                    .and_then(|()| budget.keep_bytes(32 * minutes.len() as u64))
                    .map_err(|over| refused(*culprit, over))?;
                for &m in minutes {
                    let dt = day.at((m / 60) as i8, (m % 60) as i8, 0, 0);
                    let offsets = match tz.to_ambiguous_timestamp(dt).offset() {
                        AmbiguousOffset::Unambiguous { offset } => vec![offset],
                        // A wall-clock time skipped by a transition: the window changes at the
                        // transition itself, which is already a boundary.
                        AmbiguousOffset::Gap { .. } => vec![],
                        AmbiguousOffset::Fold { before, after } => vec![before, after],
                    };
                    for o in offsets {
                        if let Ok(ts) = o.to_timestamp(dt) {
                            if ts >= y0 && ts < y1 {
                                starts.push(ts);
                            }
                        }
                    }
                }
                match day.tomorrow() {
                    Ok(d) => day = d,
                    Err(_) => break,
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let words = starts.len().div_ceil(64);
        let mut bits = Vec::with_capacity(schedules.len());
        for (i, s) in schedules.iter().enumerate() {
            budget
                .work(budget::SCHEDULE_TEST * starts.len() as u64)
                .and_then(|()| budget.keep_bytes(8 * words as u64))
                .map_err(|over| refused(i, over))?;
            let mut b = vec![0u64; words];
            for (i, t) in starts.iter().enumerate() {
                if s.matches(*t) {
                    b[i / 64] |= 1 << (i % 64);
                }
            }
            bits.push(Arc::from(b));
        }
        Ok(TimeUniverse {
            starts,
            schedules,
            keys,
            bits,
        })
    }

    fn atom(&self, s: &Schedule) -> Option<usize> {
        let k = key(s);
        self.keys.iter().position(|x| *x == k)
    }

    /// The set of instants a schedule matches.
    pub(crate) fn set_of(&self, s: &Schedule) -> TimeSet {
        match self.atom(s) {
            Some(i) => TimeSet {
                bits: Some(self.bits[i].clone()),
                n: self.starts.len() as u32,
                atoms: Some(vec![i as u32]),
            },
            // Not collected (cannot happen for schedules of the policies given to `new`).
            None => TimeSet::any(),
        }
    }

    /// Whether schedule `atom` matches instant `t` (asks the schedule itself).
    pub(crate) fn matches(&self, atom: u32, t: Timestamp) -> bool {
        self.schedules
            .get(atom as usize)
            .is_some_and(|s| s.matches(t))
    }

    /// Description of schedule `atom`, as traces print it.
    pub(crate) fn describe(&self, atom: u32) -> String {
        self.schedules
            .get(atom as usize)
            .map(Schedule::describe)
            .unwrap_or_default()
    }

    /// The first instant of interval `i`.
    pub(crate) fn instant(&self, i: usize) -> Timestamp {
        self.starts
            .get(i)
            .copied()
            .unwrap_or_else(|| reference_year().0)
    }
}

fn reference_year() -> (Timestamp, Timestamp) {
    let parse = |s: &str| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
    (parse(REFERENCE_START), parse(REFERENCE_END))
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    const ZONED: &str = r#"
version: 1
revision: 1
trust_domains: [td.example]
rules:
  - name: berlin
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [mon, wed, sun], hours: "22:00-06:00", timezone: Europe/Berlin}}
  - name: new-york
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [sun], hours: "01:30-02:30", timezone: America/New_York}}
  - name: kolkata
    from: ["spiffe://td.example/**"]
    when: {schedule: {hours: "09:07-17:53", timezone: Asia/Kolkata}}
  - name: lord-howe
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [sat, sun], hours: "01:45-02:15", timezone: Australia/Lord_Howe}}
  - name: utc
    from: ["spiffe://td.example/**"]
    when: {schedule: {days: [fri], hours: "23:59-24:00"}}
"#;

    /// The elementary intervals are complete: every schedule is constant on each, so the bits
    /// agree with `Schedule::matches` at every minute of the reference year (schedules and
    /// zone offsets are whole minutes), through every DST change of five zones.
    #[test]
    fn interval_bits_agree_with_matches_every_minute() {
        let policy = Policy::from_yaml_str("zoned.yaml", ZONED).expect("bundle");
        let time = TimeUniverse::new(&[&policy], &Budget::unlimited()).expect("budget");
        let (y0, y1) = reference_year();
        let mut t = y0;
        let mut i = 0usize;
        while t < y1 {
            while i + 1 < time.starts.len() && time.starts[i + 1] <= t {
                i += 1;
            }
            for (k, s) in time.schedules.iter().enumerate() {
                let bit = time.bits[k][i / 64] >> (i % 64) & 1 == 1;
                assert_eq!(bit, s.matches(t), "schedule {} at {t}", s.describe());
            }
            t += SignedDuration::from_mins(1);
        }
    }
}
