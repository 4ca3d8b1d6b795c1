//! Unit tests of `s3`, kept beside it so the code reads on its own.

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_ranged_answer_spans_its_body_length_without_overflowing(
        first in any::<u64>(),
        last in any::<u64>(),
        total in any::<u64>(),
        body_len in any::<u64>(),
    ) {
        let value = format!("bytes {first}-{last}/{total}");
        match span_of(Some(&value), body_len) {
            Some((whole, Some((from, to)))) => {
                prop_assert_eq!(whole, total);
                prop_assert_eq!(from, first);
                prop_assert_eq!(u128::from(to - from) + 1, u128::from(body_len));
            }
            Some((whole, None)) => {
                prop_assert_eq!(body_len, 0);
                prop_assert_eq!(whole, 0);
            }
            None => prop_assert!(u128::from(first) + u128::from(body_len) > 1 << 64),
        }
    }

    #[test]
    fn arbitrary_content_ranges_never_panic(value in "\\PC{0,40}", body_len in any::<u64>()) {
        let _ = span_of(Some(&value), body_len);
    }
}

#[test]
fn an_answer_without_a_content_range_is_the_whole_object() {
    assert_eq!(span_of(None, 10), Some((10, None)));
    assert_eq!(span_of(Some("bytes */10"), 10), Some((10, None)));
    assert_eq!(span_of(Some("bytes 5-9/10"), 5), Some((10, Some((5, 9)))));
}

#[test]
fn a_range_ending_past_the_largest_length_is_refused_without_panicking() {
    let value = format!("bytes {}-0/0", u64::MAX);
    assert_eq!(span_of(Some(&value), 2), None);
}
