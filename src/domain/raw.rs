//! One-pass, lenient, borrowing deserialization of a change or import payload.
//!
//! Serde's derived structs stop at the first type error; the contract wants
//! every error. So every known field is read into a [`Scalar`] or [`List`]
//! that records what JSON type was there, and the rules in `validate.rs`
//! decide what is wrong. Strings borrow from the body unless they contain
//! escapes. Breaks and overrides of all entries live in two flat arenas so
//! an entry costs no allocation of its own.
//!
//! Unknown fields and the contents of wrongly typed fields are skipped with
//! [`IgnoredAny`], which serde_json walks iteratively: deep nesting cannot
//! overflow the stack, and the known structure is at most five levels deep.

use std::{borrow::Cow, fmt, ops::Range};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The JSON type of a value, for "is a number; expected a string" messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub(crate) fn described(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// A field that should hold a JSON scalar, as found.
#[derive(Debug, Default)]
pub(crate) enum Scalar<'a> {
    #[default]
    Absent,
    Null,
    Bool,
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    /// `None` when absent. JSON `null` is reported as [`Kind::Null`]; callers
    /// treat it like absence (see docs/validation.md).
    pub(crate) fn kind(&self) -> Option<Kind> {
        Some(match self {
            Scalar::Absent => return None,
            Scalar::Null => Kind::Null,
            Scalar::Bool => Kind::Bool,
            Scalar::I64(_) | Scalar::U64(_) | Scalar::F64(_) => Kind::Number,
            Scalar::Str(_) => Kind::String,
            Scalar::Array => Kind::Array,
            Scalar::Object => Kind::Object,
        })
    }

    /// Absent or `null`: both mean "not given".
    pub(crate) fn is_unset(&self) -> bool {
        matches!(self, Scalar::Absent | Scalar::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integral JSON number in range.
    /// `30.0` counts (JSON does not distinguish it from `30`); `30.5`, `1e300`
    /// and strings do not.
    pub(crate) fn as_integer(&self) -> Option<i64> {
        match *self {
            Scalar::I64(v) => Some(v),
            Scalar::U64(v) => i64::try_from(v).ok(),
            // -2^63 is exact in f64 and 2^63 is the first value out of range,
            // so the cast below never saturates.
            Scalar::F64(v)
                if v.fract() == 0.0 && (i64::MIN as f64..-(i64::MIN as f64)).contains(&v) =>
            {
                Some(v as i64)
            }
            _ => None,
        }
    }

    /// A short rendering of the value for messages.
    pub(crate) fn shown(&self) -> String {
        match self {
            Scalar::Absent => "absent".to_owned(),
            Scalar::Null => "null".to_owned(),
            Scalar::Bool => "a boolean".to_owned(),
            Scalar::I64(v) => v.to_string(),
            Scalar::U64(v) => v.to_string(),
            Scalar::F64(v) => v.to_string(),
            Scalar::Str(s) => show_str(s),
            Scalar::Array => "an array".to_owned(),
            Scalar::Object => "an object".to_owned(),
        }
    }
}

/// A string quoted and escaped for a message, cut at 80 characters so a
/// hostile megabyte-long value cannot bloat an error event.
pub(crate) fn show_str(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", s.get(..cut).unwrap_or_default()),
    }
}

/// A field that should hold an array of objects, as found.
#[derive(Clone, Debug, Default)]
pub(crate) enum List {
    #[default]
    Absent,
    /// Not an array (including `null`).
    Wrong(Kind),
    /// `stored` indexes the arena; `total` counts every element, including
    /// any not stored because the change already had too many.
    Items { stored: Range<usize>, total: usize },
}

/// An array element that should be an object.
#[derive(Debug)]
pub(crate) enum Item<T> {
    Wrong(Kind),
    Obj(T),
}

#[derive(Debug, Default)]
pub(crate) struct RawBreak<'a> {
    pub start_offset_minutes: Scalar<'a>,
    pub duration_minutes: Scalar<'a>,
}

#[derive(Debug, Default)]
pub(crate) struct RawOverride<'a> {
    pub kind: Scalar<'a>,
    pub reason: Scalar<'a>,
    pub start: Scalar<'a>,
    pub end: Scalar<'a>,
}

#[derive(Debug, Default)]
pub(crate) struct RawEntry<'a> {
    pub agent_id: Scalar<'a>,
    pub start: Scalar<'a>,
    pub end: Scalar<'a>,
    pub breaks: List,
    pub overrides: List,
}

/// Top-level fields of both document shapes; an import fills `calendar_id`
/// from `targetCalendarId` and `entries` from `scheduleEntries`.
#[derive(Debug, Default)]
pub(crate) struct RawTop<'a> {
    pub schema_version: Scalar<'a>,
    pub change_id: Scalar<'a>,
    pub calendar_id: Scalar<'a>,
    pub occurred_at: Scalar<'a>,
    pub source: Scalar<'a>,
    pub validation_mode: Scalar<'a>,
    pub conflict_resolution: Scalar<'a>,
    pub minimum_capacity_minutes: Scalar<'a>,
    pub entries: List,
}

/// Which document is being read: the field names differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Change,
    Import,
}

#[derive(Debug, Default)]
pub(crate) struct Arenas<'a> {
    pub entries: Vec<Item<RawEntry<'a>>>,
    pub breaks: Vec<Item<RawBreak<'a>>>,
    pub overrides: Vec<Item<RawOverride<'a>>>,
}

impl Arenas<'_> {
    fn clear(&mut self) {
        self.entries.clear();
        self.breaks.clear();
        self.overrides.clear();
    }
}

// One per document, never moved around: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Root<'a> {
    Object(RawTop<'a>),
    NotObject(Kind),
}

#[derive(Debug)]
pub(crate) struct Doc<'a> {
    pub root: Root<'a>,
    pub arenas: Arenas<'a>,
}

/// Reads `text` (already known to be UTF-8) in one pass. Only JSON syntax
/// errors (including trailing characters) fail; type errors are recorded.
/// At most `max_entries` entries are stored; more are only counted.
pub(crate) fn parse_doc(
    text: &str,
    shape: Shape,
    max_entries: usize,
) -> Result<Doc<'_>, serde_json::Error> {
    // Sized up front from the body so the arenas rarely reallocate; the
    // guess (an entry takes a few hundred bytes) is capped by the entry limit.
    let guess = (text.len() / 256).min(max_entries).min(4096);
    let mut arenas = Arenas {
        entries: Vec::with_capacity(guess),
        breaks: Vec::with_capacity(guess),
        overrides: Vec::with_capacity(guess),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let root = RootSeed {
        shape,
        max_entries,
        arenas: &mut arenas,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Doc { root, arenas })
}

/// Visitor methods for the JSON types a visitor does not expect: record the
/// type and skip the value.
macro_rules! wrong_scalars {
    ($wrong:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrong(Kind::Bool))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrong(Kind::Number))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrong(Kind::Number))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrong(Kind::Number))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrong(Kind::String))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrong(Kind::Null))
        }
    };
}

macro_rules! wrong_seq {
    ($wrong:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($wrong(Kind::Array))
        }
    };
}

macro_rules! wrong_map {
    ($wrong:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($wrong(Kind::Object))
        }
    };
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    wrong_seq!(|_| Scalar::Array);
    wrong_map!(|_| Scalar::Object);
}

/// Maps an object key to its index in `names`, or `None` for an unknown key,
/// without allocating (escaped keys are compared from serde_json's scratch).
struct KeySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == v))
    }
}

const BREAK_FIELDS: &[&str] = &["startOffsetMinutes", "durationMinutes"];
const OVERRIDE_FIELDS: &[&str] = &["type", "reason", "start", "end"];
const ENTRY_FIELDS: &[&str] = &[
    "agentId",
    "startDateTime",
    "endDateTime",
    "breaks",
    "availabilityOverrides",
];
const CHANGE_FIELDS: &[&str] = &[
    "schemaVersion",
    "changeId",
    "calendarId",
    "occurredAt",
    "source",
    "validationMode",
    "conflictResolution",
    "minimumCapacityMinutes",
    "entries",
];
const IMPORT_FIELDS: &[&str] = &[
    "scheduleEntries",
    "validationMode",
    "conflictResolution",
    "targetCalendarId",
];

/// Reads an element that should be an object of `T`'s fields.
trait FromFields<'de>: Sized {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

impl<'de> FromFields<'de> for RawBreak<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut b = RawBreak::default();
        while let Some(key) = map.next_key_seed(KeySeed(BREAK_FIELDS))? {
            match key {
                Some(0) => b.start_offset_minutes = map.next_value()?,
                Some(1) => b.duration_minutes = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(b)
    }
}

impl<'de> FromFields<'de> for RawOverride<'de> {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut o = RawOverride::default();
        while let Some(key) = map.next_key_seed(KeySeed(OVERRIDE_FIELDS))? {
            match key {
                Some(0) => o.kind = map.next_value()?,
                Some(1) => o.reason = map.next_value()?,
                Some(2) => o.start = map.next_value()?,
                Some(3) => o.end = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(o)
    }
}

impl<'de, T: FromFields<'de>> de::Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor(std::marker::PhantomData))
    }
}

struct ItemVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: FromFields<'de>> Visitor<'de> for ItemVisitor<T> {
    type Value = Item<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    wrong_scalars!(Item::Wrong);
    wrong_seq!(Item::Wrong);
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map).map(Item::Obj)
    }
}

/// An array of break or override objects, appended to an arena.
struct ListSeed<'s, T> {
    arena: &'s mut Vec<Item<T>>,
}

impl<'de, T: FromFields<'de>> DeserializeSeed<'de> for ListSeed<'_, T> {
    type Value = List;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: FromFields<'de>> Visitor<'de> for ListSeed<'_, T> {
    type Value = List;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    wrong_scalars!(List::Wrong);
    wrong_map!(List::Wrong);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let start = self.arena.len();
        while let Some(item) = seq.next_element::<Item<T>>()? {
            self.arena.push(item);
        }
        let end = self.arena.len();
        Ok(List::Items {
            stored: start..end,
            total: end - start,
        })
    }
}

struct EntrySeed<'s, 'de> {
    breaks: &'s mut Vec<Item<RawBreak<'de>>>,
    overrides: &'s mut Vec<Item<RawOverride<'de>>>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, 'de> {
    type Value = Item<RawEntry<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_, 'de> {
    type Value = Item<RawEntry<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    wrong_scalars!(Item::Wrong);
    wrong_seq!(Item::Wrong);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut e = RawEntry::default();
        while let Some(key) = map.next_key_seed(KeySeed(ENTRY_FIELDS))? {
            match key {
                Some(0) => e.agent_id = map.next_value()?,
                Some(1) => e.start = map.next_value()?,
                Some(2) => e.end = map.next_value()?,
                Some(3) => {
                    e.breaks = map.next_value_seed(ListSeed {
                        arena: &mut *self.breaks,
                    })?
                }
                Some(4) => {
                    e.overrides = map.next_value_seed(ListSeed {
                        arena: &mut *self.overrides,
                    })?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Item::Obj(e))
    }
}

struct EntriesSeed<'s, 'de> {
    max_entries: usize,
    arenas: &'s mut Arenas<'de>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, 'de> {
    type Value = List;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, 'de> {
    type Value = List;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    wrong_scalars!(List::Wrong);
    wrong_map!(List::Wrong);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // A repeated `entries` key replaces the earlier one (last wins), so
        // its stored items are dropped rather than accumulated.
        self.arenas.clear();
        let mut total = 0usize;
        loop {
            let more = if total < self.max_entries {
                let seed = EntrySeed {
                    breaks: &mut self.arenas.breaks,
                    overrides: &mut self.arenas.overrides,
                };
                match seq.next_element_seed(seed)? {
                    Some(item) => {
                        self.arenas.entries.push(item);
                        true
                    }
                    None => false,
                }
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                break;
            }
            total = total.saturating_add(1);
        }
        Ok(List::Items {
            stored: 0..self.arenas.entries.len(),
            total,
        })
    }
}

struct RootSeed<'s, 'de> {
    shape: Shape,
    max_entries: usize,
    arenas: &'s mut Arenas<'de>,
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_, 'de> {
    type Value = Root<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RootSeed<'_, 'de> {
    type Value = Root<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    wrong_scalars!(Root::NotObject);
    wrong_seq!(Root::NotObject);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut t = RawTop::default();
        match self.shape {
            Shape::Change => {
                while let Some(key) = map.next_key_seed(KeySeed(CHANGE_FIELDS))? {
                    match key {
                        Some(0) => t.schema_version = map.next_value()?,
                        Some(1) => t.change_id = map.next_value()?,
                        Some(2) => t.calendar_id = map.next_value()?,
                        Some(3) => t.occurred_at = map.next_value()?,
                        Some(4) => t.source = map.next_value()?,
                        Some(5) => t.validation_mode = map.next_value()?,
                        Some(6) => t.conflict_resolution = map.next_value()?,
                        Some(7) => t.minimum_capacity_minutes = map.next_value()?,
                        Some(8) => {
                            t.entries = map.next_value_seed(EntriesSeed {
                                max_entries: self.max_entries,
                                arenas: &mut *self.arenas,
                            })?
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
            }
            Shape::Import => {
                while let Some(key) = map.next_key_seed(KeySeed(IMPORT_FIELDS))? {
                    match key {
                        Some(0) => {
                            t.entries = map.next_value_seed(EntriesSeed {
                                max_entries: self.max_entries,
                                arenas: &mut *self.arenas,
                            })?
                        }
                        Some(1) => t.validation_mode = map.next_value()?,
                        Some(2) => t.conflict_resolution = map.next_value()?,
                        Some(3) => t.calendar_id = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
            }
        }
        Ok(Root::Object(t))
    }
}
