//! Sort-and-sweep interval checks: O(n log n), never pairwise, so a change
//! of a thousand entries (or an entry of thousands of breaks) stays cheap.
//!
//! Intervals are half-open `[start, end)`: touching ones do not overlap.
//! Each item that overlaps an item sorted before it is reported once, paired
//! with the earlier-sorted item that reaches furthest; pairs come back as
//! `(later index, earlier index)` by position in the payload, in path order.

/// An interval grouped by `key` (an agent id, or `()` for one entry's breaks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interval<K> {
    pub key: K,
    pub start: i64,
    pub end: i64,
    pub index: usize,
}

/// An override window with its type (0..3), for conflicts between types.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Typed {
    pub kind: usize,
    pub start: i64,
    pub end: i64,
    pub index: usize,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.max(b), a.min(b))
}

/// Overlapping intervals with the same key.
pub(crate) fn overlaps<K: Ord + Copy>(items: &mut [Interval<K>]) -> Vec<(usize, usize)> {
    items.sort_unstable_by(|a, b| {
        (a.key, a.start, a.end, a.index).cmp(&(b.key, b.start, b.end, b.index))
    });
    let mut found = Vec::new();
    // The interval of the current key that ends last so far.
    let mut reach: Option<(K, i64, usize)> = None;
    for it in items.iter() {
        match reach {
            Some((key, end, index)) if key == it.key => {
                if end > it.start {
                    found.push(pair(it.index, index));
                }
                if it.end > end {
                    reach = Some((key, it.end, it.index));
                }
            }
            _ => reach = Some((it.key, it.end, it.index)),
        }
    }
    found.sort_unstable();
    found
}

/// Overlapping windows of different types (same-type overlaps are fine).
pub(crate) fn conflicts(items: &mut [Typed]) -> Vec<(usize, usize)> {
    items.sort_unstable_by_key(|a| (a.start, a.end, a.index));
    let mut found = Vec::new();
    // Per type, the window that ends last so far.
    let mut reach: [Option<(i64, usize)>; 3] = [None; 3];
    for it in items.iter() {
        for (kind, r) in reach.iter().enumerate() {
            if let (true, Some((end, index))) = (kind != it.kind, r) {
                if *end > it.start {
                    found.push(pair(it.index, *index));
                }
            }
        }
        if let Some(r) = reach.get_mut(it.kind) {
            if r.is_none_or(|(end, _)| it.end > end) {
                *r = Some((it.end, it.index));
            }
        }
    }
    found.sort_unstable();
    found
}

/// Length of the union of `intervals` clipped to `[lo, hi)`.
pub(crate) fn union_length(intervals: &mut [(i64, i64)], lo: i64, hi: i64) -> i64 {
    intervals.sort_unstable();
    let mut total: i64 = 0;
    let mut current: Option<(i64, i64)> = None;
    for &(s, e) in intervals.iter() {
        let (s, e) = (s.max(lo), e.min(hi));
        if e <= s {
            continue;
        }
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total = total.saturating_add(ce - cs);
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total = total.saturating_add(ce - cs);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(start: i64, end: i64, index: usize) -> Interval<()> {
        Interval {
            key: (),
            start,
            end,
            index,
        }
    }

    #[test]
    fn touching_intervals_do_not_overlap() {
        assert!(overlaps(&mut [iv(0, 10, 0), iv(10, 20, 1)]).is_empty());
    }

    #[test]
    fn reports_later_index_against_the_earlier() {
        // Sorted order puts index 2 first; the pair is still (2, 0)... by index.
        assert_eq!(
            overlaps(&mut [iv(5, 15, 0), iv(30, 40, 1), iv(0, 10, 2)]),
            vec![(2, 0)]
        );
    }

    #[test]
    fn an_overlap_hidden_behind_a_long_interval_is_found() {
        // 1 does not overlap 2, but 0 reaches past both.
        let found = overlaps(&mut [iv(0, 100, 0), iv(10, 20, 1), iv(30, 40, 2)]);
        assert_eq!(found, vec![(1, 0), (2, 0)]);
    }

    #[test]
    fn keys_separate_groups() {
        let mut items = [
            Interval {
                key: "a",
                start: 0,
                end: 10,
                index: 0,
            },
            Interval {
                key: "b",
                start: 5,
                end: 15,
                index: 1,
            },
            Interval {
                key: "a",
                start: 9,
                end: 12,
                index: 2,
            },
        ];
        assert_eq!(overlaps(&mut items), vec![(2, 0)]);
    }

    #[test]
    fn conflicts_only_between_types() {
        let t = |kind, start, end, index| Typed {
            kind,
            start,
            end,
            index,
        };
        assert!(conflicts(&mut [t(0, 0, 10, 0), t(0, 5, 15, 1)]).is_empty());
        assert_eq!(
            conflicts(&mut [t(0, 0, 10, 0), t(1, 5, 15, 1)]),
            vec![(1, 0)]
        );
        assert!(conflicts(&mut [t(0, 0, 10, 0), t(1, 10, 15, 1)]).is_empty());
    }

    #[test]
    fn union_merges_and_clips() {
        let mut v = [(0, 10), (5, 20), (30, 40), (35, 36), (90, 200)];
        assert_eq!(union_length(&mut v, 0, 100), 20 + 10 + 10);
        assert_eq!(union_length(&mut [], 0, 100), 0);
    }
}
