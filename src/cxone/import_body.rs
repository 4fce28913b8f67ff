//! The `POST .../schedules/import` body, written byte for byte as
//! serialising [`crate::domain::ImportPayload`] would: the CXone JSON shape
//! of an import lives here and nowhere else.
//!
//! A batch keeps each change's delivery rather than its entries; at import
//! time the entries are copied from the delivery's body where it holds them
//! exactly as they serialise ([`EntryLocator`]), and serialised again
//! otherwise ([`ImportBody::push_entries`]).

use crate::{
    domain::{ConflictResolution, ScheduleEntry, ValidationMode},
    substring::find,
};

const BODY_HEAD: &[u8] = br#"{"scheduleEntries":["#;

/// Where a delivery's body holds a change's entries exactly as the import
/// body writes them, comma-joined (compact JSON, fields in the contract's
/// order, as a publisher serialising its own types writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntriesAt {
    at: u32,
    len: u32,
}

/// An import body being written: entries first, then the batch's settings.
pub struct ImportBody(Vec<u8>);

impl ImportBody {
    /// An empty body with room for about `entries` entries.
    pub fn with_capacity(entries: usize) -> ImportBody {
        let mut body = Vec::with_capacity(BODY_HEAD.len() + 192 * entries + 128);
        body.extend_from_slice(BODY_HEAD);
        ImportBody(body)
    }

    /// Appends entries, serialised.
    pub fn push_entries(&mut self, entries: &[ScheduleEntry]) {
        append_entries(&mut self.0, entries);
    }

    /// Appends the entries that `at` marks in `source` (a delivery's body),
    /// copied: the same bytes [`ImportBody::push_entries`] would write.
    pub fn push_copied(&mut self, source: &[u8], at: EntriesAt) {
        append_span(&mut self.0, source, (at.at, at.len));
    }

    /// The finished body, ready to post.
    pub fn finish(
        self,
        mode: ValidationMode,
        conflict: ConflictResolution,
        calendar_id: &str,
    ) -> Vec<u8> {
        finish_body(self.0, mode, conflict, calendar_id)
    }
}

fn append_entries(body: &mut Vec<u8>, entries: &[ScheduleEntry]) {
    for entry in entries {
        if body.len() > BODY_HEAD.len() {
            body.push(b',');
        }
        serde_json::to_writer(&mut *body, entry).expect("a schedule entry serialises");
    }
}

/// Where `body` holds `entries` byte for byte as [`append_entries`] writes
/// them as a body's first entries (comma-joined): then copying those bytes
/// ([`append_span`]) builds the same import body as serialising the
/// entries. `scratch` is reused; the serialised form is `append_entries`'s
/// own output, so the two cannot drift apart.
fn entries_span(
    body: &[u8],
    entries: &[ScheduleEntry],
    scratch: &mut Vec<u8>,
) -> Option<(u32, u32)> {
    scratch.clear();
    scratch.extend_from_slice(BODY_HEAD);
    append_entries(scratch, entries);
    let needle = &scratch[BODY_HEAD.len()..];
    let at = find(body, needle)?;
    Some((u32::try_from(at).ok()?, u32::try_from(needle.len()).ok()?))
}

/// Finds changes' entries in their bodies ([`entries_span`]), and stops
/// looking, but for one change in [`EntryLocator::RETRY_EVERY`], once
/// [`EntryLocator::GIVE_UP_AFTER`] in a row were not there: a publisher
/// whose bodies never hold them so (sorted keys, say) would otherwise pay
/// for a serialisation and a search per change and gain nothing.
#[derive(Default)]
pub struct EntryLocator {
    scratch: Vec<u8>,
    misses: u32,
    skipped: u32,
}

impl EntryLocator {
    const GIVE_UP_AFTER: u32 = 32;
    const RETRY_EVERY: u32 = 256;

    /// Where `body` holds `entries` as the import body writes them, if it does.
    pub fn locate(&mut self, body: &[u8], entries: &[ScheduleEntry]) -> Option<EntriesAt> {
        self.span(body, entries)
            .map(|(at, len)| EntriesAt { at, len })
    }

    fn span(&mut self, body: &[u8], entries: &[ScheduleEntry]) -> Option<(u32, u32)> {
        if self.misses >= Self::GIVE_UP_AFTER {
            self.skipped += 1;
            if self.skipped < Self::RETRY_EVERY {
                return None;
            }
            self.skipped = 0;
        }
        let span = entries_span(body, entries, &mut self.scratch);
        self.misses = if span.is_some() {
            0
        } else {
            self.misses.saturating_add(1)
        };
        span
    }
}

/// Appends the entries `span` of `source` marks, as [`append_entries`] would.
fn append_span(body: &mut Vec<u8>, source: &[u8], (at, len): (u32, u32)) {
    if len == 0 {
        return;
    }
    if body.len() > BODY_HEAD.len() {
        body.push(b',');
    }
    let at = at as usize;
    body.extend_from_slice(&source[at..at + len as usize]);
}

fn finish_body(
    mut body: Vec<u8>,
    mode: ValidationMode,
    conflict: ConflictResolution,
    calendar_id: &str,
) -> Vec<u8> {
    body.extend_from_slice(br#"],"validationMode":"#);
    serde_json::to_writer(&mut body, &mode).expect("an enum serialises");
    body.extend_from_slice(br#","conflictResolution":"#);
    serde_json::to_writer(&mut body, &conflict).expect("an enum serialises");
    body.extend_from_slice(br#","targetCalendarId":"#);
    serde_json::to_writer(&mut body, calendar_id).expect("a string serialises");
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AvailabilityOverride, Break, ImportPayload, OverrideType};

    fn entry(agent: &str, with_extras: bool) -> ScheduleEntry {
        ScheduleEntry {
            agent_id: agent.into(),
            start_date_time: "2024-01-15T08:00:00.000+01:00".into(),
            end_date_time: "2024-01-15T16:00:00Z".into(),
            breaks: if with_extras {
                vec![Break {
                    start_offset_minutes: 240,
                    duration_minutes: 30,
                }]
            } else {
                vec![]
            },
            availability_overrides: if with_extras {
                vec![AvailabilityOverride {
                    kind: OverrideType::Unavailable,
                    reason: Some("TRAINING \"q\"".into()),
                    start: None,
                    end: None,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn the_incremental_body_is_the_serialised_payload() {
        let changes = [
            vec![entry("a", true)],
            vec![entry("b", false), entry("c\u{e9}", true)],
        ];
        let mut body = BODY_HEAD.to_vec();
        for c in &changes {
            append_entries(&mut body, c);
        }
        let body = finish_body(
            body,
            ValidationMode::Lenient,
            ConflictResolution::AutoResolve,
            "cal-\"1\"",
        );
        let payload = ImportPayload {
            schedule_entries: changes.concat(),
            validation_mode: ValidationMode::Lenient,
            conflict_resolution: ConflictResolution::AutoResolve,
            target_calendar_id: "cal-\"1\"".into(),
        };
        assert_eq!(
            String::from_utf8(body).unwrap(),
            String::from_utf8(serde_json::to_vec(&payload).unwrap()).unwrap()
        );
    }

    /// Entries copied from a body build the same import body as entries
    /// serialised, and are copied only when the body holds them exactly so.
    #[test]
    fn entries_are_copied_from_bodies_that_hold_them_as_serialised() {
        let limits = crate::domain::Limits::default();
        let meta = crate::domain::MessageMeta::default();
        let parse = |body: &str| {
            crate::domain::parse_change(body.as_bytes(), &meta, &limits, ValidationMode::Strict)
                .unwrap_or_else(|r| panic!("{body}: {}", r.summary()))
        };
        let e1 = r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","breaks":[{"startOffsetMinutes":240,"durationMinutes":30}]}"#;
        let e2 = r#"{"agentId":"b\u00e9","startDateTime":"2024-01-15T08:00:00+01:00","endDateTime":"2024-01-15T09:00:00+01:00","availabilityOverrides":[{"type":"UNAVAILABLE","reason":"TRAINING","start":"2024-01-15T08:00:00+01:00","end":"2024-01-15T08:30:00+01:00"}]}"#;
        let wrap = |entries: &str| {
            format!(r#"{{"changeId":"c","calendarId":"cal","entries":[{entries}]}}"#)
        };
        // (body, entries copied?)
        let cases = [
            (wrap(e1), true),
            // The escaped name serialises as "bé": parsed again.
            (wrap(&format!("{e1},{e2}")), false),
            (
                wrap(&format!("{e1},{}", e2.replace("b\\u00e9", "b\u{e9}"))),
                true,
            ),
            // Keys sorted (as a serde_json::Value writes them), spaces, an
            // unknown field, an empty list: parsed again.
            (
                wrap(
                    r#"{"agentId":"a","endDateTime":"2024-01-15T16:00:00Z","startDateTime":"2024-01-15T08:00:00Z"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId": "a", "startDateTime": "2024-01-15T08:00:00Z", "endDateTime": "2024-01-15T16:00:00Z"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","note":"x"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","breaks":[]}"#,
                ),
                false,
            ),
        ];
        let mut scratch = Vec::new();
        let (mut copied, mut serialised) = (BODY_HEAD.to_vec(), BODY_HEAD.to_vec());
        for (body, expect_copy) in &cases {
            let change = parse(body);
            let span = entries_span(body.as_bytes(), &change.entries, &mut scratch);
            assert_eq!(span.is_some(), *expect_copy, "{body}");
            match span {
                Some(span) => append_span(&mut copied, body.as_bytes(), span),
                None => append_entries(&mut copied, &change.entries),
            }
            append_entries(&mut serialised, &change.entries);
        }
        assert_eq!(
            String::from_utf8(copied).unwrap(),
            String::from_utf8(serialised).unwrap()
        );
    }

    #[test]
    fn the_copier_stops_looking_where_entries_are_never_found_and_tries_again_now_and_then() {
        let entries = vec![entry("a", false)];
        let found = format!(
            r#"{{"entries":[{}]}}"#,
            String::from_utf8(serde_json::to_vec(&entries[0]).unwrap()).unwrap()
        );
        let mut c = EntryLocator::default();
        for _ in 0..EntryLocator::GIVE_UP_AFTER {
            assert!(c.span(b"{}", &entries).is_none());
        }
        // Given up: even a body that holds them is not searched...
        for _ in 1..EntryLocator::RETRY_EVERY {
            assert!(c.span(found.as_bytes(), &entries).is_none());
        }
        // ...but for one in RETRY_EVERY, and a find starts over.
        assert!(c.span(found.as_bytes(), &entries).is_some());
        assert!(c.span(found.as_bytes(), &entries).is_some());
        assert!(c.span(b"{}", &entries).is_none());
        assert!(c.span(found.as_bytes(), &entries).is_some());
    }
}
