//! Human units in the config file: sizes such as `512MiB` and durations such as `30s`.
//!
//! Both deserialize from a string (or a bare integer, read as bytes or seconds), so that an
//! operator never has to count zeros, and both reject anything ambiguous with a message that
//! says which forms are accepted.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A byte count written as `512MiB`, `64KiB`, `1GB`, `4096` or `4096B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration written as `250ms`, `30s`, `5m`, `1h`, `7d` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `<number><unit>`; units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB,
    /// GiB, TiB (powers of 1024), case-insensitive on the prefix letter.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (text, value, unit) =
            split_number_and_unit(text, "size", "such as 64KiB, 512MiB or 1GiB")?;
        let multiplier: u64 = match unit {
            "" | "B" | "b" => 1,
            "KB" | "kB" | "kb" => 1_000,
            "MB" | "mb" => 1_000_000,
            "GB" | "gb" => 1_000_000_000,
            "TB" | "tb" => 1_000_000_000_000,
            "KiB" | "kib" | "Ki" => 1 << 10,
            "MiB" | "mib" | "Mi" => 1 << 20,
            "GiB" | "gib" | "Gi" => 1 << 30,
            "TiB" | "tib" | "Ti" => 1 << 40,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB, GiB, TiB)"
                ))
            }
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }

    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    /// Parses `<number><unit>` with units ms, s, m, h, d; a bare number is seconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (text, value, unit) =
            split_number_and_unit(text, "duration", "such as 250ms, 30s, 5m or 1h")?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h, d)"
                ))
            }
        };
        value
            .checked_mul(millis_per_unit)
            .map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }
}

/// Splits `12 MiB` into (the trimmed text, 12, "MiB"); `what` and `examples` word the error.
fn split_number_and_unit<'a>(
    text: &'a str,
    what: &str,
    examples: &str,
) -> Result<(&'a str, u64, &'a str), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid {what} {text:?}: expected a number with a unit {examples}"
        ));
    }
    let value = number
        .parse()
        .map_err(|_| format!("invalid {what} {text:?}: number too large"))?;
    Ok((text, value, unit.trim()))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as 64KiB, 512MiB or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom("a size cannot be negative"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        ByteSize::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 250ms, 30s, 5m or a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
        Ok(HumanDuration(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
        u64::try_from(v)
            .map(|s| HumanDuration(Duration::from_secs(s)))
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
        HumanDuration::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SIZE_UNITS: [(&str, u64); 9] = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];

    const DURATION_UNITS: [(&str, u64); 5] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn sizes_print_and_parse_back_to_themselves(bytes in any::<u64>()) {
            prop_assert_eq!(ByteSize::parse(&ByteSize(bytes).to_string()), Ok(ByteSize(bytes)));
        }

        #[test]
        fn a_size_in_any_unit_is_its_product_or_too_large(
            n in prop_oneof![any::<u64>(), 0u64..100_000],
            unit in proptest::sample::select(&SIZE_UNITS[..]),
            space in any::<bool>(),
        ) {
            let text = format!("{n}{}{}", if space { " " } else { "" }, unit.0);
            match n.checked_mul(unit.1) {
                Some(bytes) => prop_assert_eq!(ByteSize::parse(&text), Ok(ByteSize(bytes))),
                None => prop_assert!(ByteSize::parse(&text).is_err()),
            }
        }

        #[test]
        fn durations_print_and_parse_back_to_themselves(millis in any::<u64>()) {
            let duration = HumanDuration(Duration::from_millis(millis));
            prop_assert_eq!(HumanDuration::parse(&duration.to_string()), Ok(duration));
        }

        #[test]
        fn a_duration_in_any_unit_is_its_product_or_too_large(
            n in prop_oneof![any::<u64>(), 0u64..100_000],
            unit in proptest::sample::select(&DURATION_UNITS[..]),
        ) {
            let text = format!("{n}{}", unit.0);
            match n.checked_mul(unit.1) {
                Some(ms) => prop_assert_eq!(
                    HumanDuration::parse(&text),
                    Ok(HumanDuration(Duration::from_millis(ms)))
                ),
                None => prop_assert!(HumanDuration::parse(&text).is_err()),
            }
        }

        #[test]
        fn arbitrary_text_never_panics_either_parser(text in "\\PC{0,40}") {
            let _ = ByteSize::parse(&text);
            let _ = HumanDuration::parse(&text);
        }

        #[test]
        fn text_near_the_format_never_panics_either_parser(
            text in "[ 0-9]{0,25}[ a-zA-Z]{0,4}",
        ) {
            let _ = ByteSize::parse(&text);
            let _ = HumanDuration::parse(&text);
        }
    }

    #[test]
    fn sizes_parse_in_both_unit_families() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65_536)));
        assert_eq!(ByteSize::parse("1GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("10 MiB"), Ok(ByteSize(10 << 20)));
    }

    #[test]
    fn sizes_reject_garbage() {
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("-1").is_err());
        assert!(ByteSize::parse("99999999999999TiB").is_err());
    }

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            HumanDuration::parse("250ms"),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!(
            HumanDuration::parse("30s"),
            Ok(HumanDuration(Duration::from_secs(30)))
        );
        assert_eq!(
            HumanDuration::parse("5m"),
            Ok(HumanDuration(Duration::from_secs(300)))
        );
        assert_eq!(
            HumanDuration::parse("2"),
            Ok(HumanDuration(Duration::from_secs(2)))
        );
        assert!(HumanDuration::parse("1.5s").is_err());
        assert!(HumanDuration::parse("soon").is_err());
        assert!(HumanDuration::parse("3 fortnights").is_err());
    }
}
