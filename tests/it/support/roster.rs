//! The roster AUTO_RESOLVE yields, computed independently of the simulator.

use std::collections::HashMap;

use chrono::DateTime;
use cxone_schedule_worker::domain::ScheduleEntry;

/// A stored shift: agent, start and end instants, start and end as written.
type Shift = (String, i64, i64, String, String);

/// Per calendar, entry by entry in publish order, the agent's overlapping
/// shifts are removed, then the entry is stored.
#[derive(Default)]
pub struct RosterModel {
    calendars: HashMap<String, Vec<Shift>>,
}

impl RosterModel {
    pub fn apply(&mut self, calendar: &str, entries: &[(&str, &str, &str)]) {
        let shifts = self.calendars.entry(calendar.to_owned()).or_default();
        for (agent, start, end) in entries {
            let s = instant(start);
            let e = instant(end);
            shifts.retain(|(a, ss, se, _, _)| !(a == agent && *ss < e && s < *se));
            shifts.push((
                (*agent).to_owned(),
                s,
                e,
                (*start).to_owned(),
                (*end).to_owned(),
            ));
        }
    }

    pub fn calendars(&self) -> Vec<String> {
        let mut c: Vec<String> = self.calendars.keys().cloned().collect();
        c.sort();
        c
    }

    /// `(agent, start, end)` sorted by agent then start.
    pub fn expected(&self, calendar: &str) -> Vec<(String, String, String)> {
        let mut v = self.calendars.get(calendar).cloned().unwrap_or_default();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v.into_iter().map(|(a, _, _, s, e)| (a, s, e)).collect()
    }
}

/// The simulator's shifts in the model's shape.
pub fn actual(shifts: &[ScheduleEntry]) -> Vec<(String, String, String)> {
    shifts
        .iter()
        .map(|e| {
            (
                e.agent_id.clone(),
                e.start_date_time.clone(),
                e.end_date_time.clone(),
            )
        })
        .collect()
}

fn instant(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}
