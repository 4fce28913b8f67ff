//! A substring search for short needles that are new on every call.

/// Where `needle` first occurs in `haystack`.
///
/// `memchr::memmem::find` builds a searcher for its needle on every call,
/// which costs more than the search itself here: the needles are new each
/// time (ids, a change's serialised entries) and the haystacks are bodies
/// of a few hundred bytes, searched for every delivery. The needle's first byte is looked for with `memchr` and the rest compared;
/// after [`FIND_CANDIDATES`] places that start alike but differ, the
/// searcher takes over, so a body built to defeat this costs no more than
/// before.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, _)) = needle.split_first() else {
        return Some(0);
    };
    let last_start = haystack.len().checked_sub(needle.len())?;
    for (tried, at) in memchr::memchr_iter(first, &haystack[..=last_start]).enumerate() {
        if haystack[at..at + needle.len()] == *needle {
            return Some(at);
        }
        if tried + 1 == FIND_CANDIDATES {
            return memchr::memmem::find(&haystack[at + 1..], needle).map(|i| at + 1 + i);
        }
    }
    None
}

/// See [`find`].
const FIND_CANDIDATES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_agrees_with_memmem() {
        // Many places start like the needle: the searcher takes over.
        let alike = format!("{}abd", "ab".repeat(3 * FIND_CANDIDATES));
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"abc", b""),
            (b"", b"a"),
            (b"ab", b"abc"),
            (b"abc", b"abc"),
            (b"xabcabd", b"abd"),
            (b"aaaa", b"aaa"),
            (b"{\"a\":1,\"entries\":[{\"x\":1}]}", b"{\"x\":1}"),
            (b"{\"a\":1}", b"{\"x\":1}"),
            (alike.as_bytes(), b"abd"),
            (alike.as_bytes(), b"abe"),
        ];
        for (haystack, needle) in cases {
            assert_eq!(
                find(haystack, needle),
                memchr::memmem::find(haystack, needle),
                "{:?} in {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(haystack)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn find_agrees_with_memmem_on_any_input(
            haystack in proptest::collection::vec(b'a'..=b'c', 0..300),
            needle in proptest::collection::vec(b'a'..=b'c', 0..6),
        ) {
            proptest::prop_assert_eq!(
                find(&haystack, &needle),
                memchr::memmem::find(&haystack, &needle)
            );
        }
    }
}
