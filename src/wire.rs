//! Leaf helpers on HTTP bytes, shared by the proxy, the cache, the media chain and the places:
//! the length a message states, the one spelling of a host, the media type a name implies,
//! the time an HTTP date names.
//! It imports nothing of ours, so any part may use it without an arrow back.

/// The body length a `Content-Length` header states, if it states one plainly.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `raw` (a `Host` value or an authority) in the form the key uses.
pub fn normalize_host(raw: &str, tls: bool) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains(['@', '/', ' ', '\\']) {
        return None;
    }
    let mut host = raw.to_ascii_lowercase();
    let default_port = if tls { ":443" } else { ":80" };
    if host.ends_with(default_port) && !host.ends_with("]") {
        host.truncate(host.len() - default_port.len());
    }
    if let Some(stripped) = host.strip_suffix('.') {
        host = stripped.to_string();
    }
    let host = host.replace(".:", ":");
    if host.is_empty() {
        return None;
    }
    Some(host)
}

/// The media type a file name implies; Mastodon's media are images, video and audio.
pub fn content_type_for(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The time an HTTP date names (RFC 9110 §5.6.7), in any of its three formats: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`, a two-digit year more than 50 years ahead being in
/// the past century) and asctime (`Sun Nov  6 08:49:37 1994`). Names are matched without
/// regard to case and the day name is not checked against the date, as recipients are asked
/// to be lenient there; anything else off the grammar (other zones, one-digit hours, extra
/// spaces) is no date.
pub fn http_date(value: &str) -> Option<std::time::SystemTime> {
    let value = value.to_ascii_lowercase();
    let (day_name, rest) = value.split_once(' ')?;
    let (year, month, day, time) = if let Some(short) = day_name.strip_suffix(',') {
        if DAYS.contains(&short) {
            imf_fixdate(rest)?
        } else if LONG_DAYS.contains(&short) {
            rfc850(rest)?
        } else {
            return None;
        }
    } else if DAYS.contains(&day_name) {
        asctime(rest)?
    } else {
        return None;
    };
    to_time(year, month, day, time)
}

/// Year, month, day and (hour, minute, second), as a date spells them.
type CivilTime = (i64, u32, u32, (u32, u32, u32));

/// `DD Mon YYYY HH:MM:SS gmt`
fn imf_fixdate(rest: &str) -> Option<CivilTime> {
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "gmt"] = parts.as_slice() else {
        return None;
    };
    Some((
        digits(year, 4)?.into(),
        month_number(month)?,
        digits(day, 2)?,
        clock(time)?,
    ))
}

/// `DD-Mon-YY HH:MM:SS gmt`
fn rfc850(rest: &str) -> Option<CivilTime> {
    let parts: Vec<&str> = rest.split(' ').collect();
    let [date, time, "gmt"] = parts.as_slice() else {
        return None;
    };
    let date: Vec<&str> = date.split('-').collect();
    let [day, month, year] = date.as_slice() else {
        return None;
    };
    let two_digit = i64::from(digits(year, 2)?);
    let this_year = 1970 + unix_now_secs() / (365 * 86_400 + 21_600);
    let mut year = this_year / 100 * 100 + two_digit;
    if year > this_year + 50 {
        year -= 100;
    }
    Some((year, month_number(month)?, digits(day, 2)?, clock(time)?))
}

/// `Mon DD HH:MM:SS YYYY`, the day padded with a space (`Nov  6`).
fn asctime(rest: &str) -> Option<CivilTime> {
    let (month, rest) = rest.split_once(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(padded) => (padded.get(..1)?, padded.get(1..)?),
        None => (rest.get(..2)?, rest.get(2..)?),
    };
    let rest = rest.strip_prefix(' ')?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [time, year] = parts.as_slice() else {
        return None;
    };
    let day = if day.len() == 1 {
        digits(day, 1)?
    } else {
        digits(day, 2)?
    };
    Some((
        digits(year, 4)?.into(),
        month_number(month)?,
        day,
        clock(time)?,
    ))
}

fn month_number(name: &str) -> Option<u32> {
    let index = MONTHS.iter().position(|m| *m == name)?;
    u32::try_from(index + 1).ok()
}

/// Exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `HH:MM:SS`
fn clock(text: &str) -> Option<(u32, u32, u32)> {
    let parts: Vec<&str> = text.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let (h, m, s) = (digits(h, 2)?, digits(m, 2)?, digits(s, 2)?);
    (h < 24 && m < 60 && s <= 60).then_some((h, m, s))
}

fn to_time(
    year: i64,
    month: u32,
    day: u32,
    (hour, minute, second): (u32, u32, u32),
) -> Option<std::time::SystemTime> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day == 0 || day > *days_in_month.get(usize::try_from(month).ok()? - 1)? {
        return None;
    }
    // Days from 1970-01-01 (the civil-from-days algorithm run backwards).
    let (y, m) = if month <= 2 {
        (year - 1, i64::from(month) + 9)
    } else {
        (year, i64::from(month) - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    let epoch = std::time::UNIX_EPOCH;
    match u64::try_from(seconds) {
        Ok(after) => epoch.checked_add(std::time::Duration::from_secs(after)),
        Err(_) => epoch.checked_sub(std::time::Duration::from_secs(seconds.unsigned_abs())),
    }
}

fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_length_is_a_length() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_str(value).expect("value"),
            );
            content_length(&headers)
        };
        assert_eq!(with("42"), Some(42));
        assert_eq!(with(" 42 "), Some(42));
        assert_eq!(with("-1"), None);
        assert_eq!(with("4 2"), None);
        assert_eq!(content_length(&http::HeaderMap::new()), None);
    }

    #[test]
    fn hosts_take_one_spelling() {
        assert_eq!(
            normalize_host("Example.Social.:443", true).as_deref(),
            Some("example.social")
        );
        assert_eq!(
            normalize_host("example.social:80", true).as_deref(),
            Some("example.social:80")
        );
        assert_eq!(normalize_host("[::1]:443", true).as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a@b", false), None);
        assert_eq!(normalize_host(" ", false), None);
    }

    #[test]
    fn names_imply_their_media_type() {
        assert_eq!(content_type_for("a/b.JPG"), "image/jpeg");
        assert_eq!(content_type_for("clip.mp4"), "video/mp4");
        assert_eq!(content_type_for("noextension"), "application/octet-stream");
    }

    #[test]
    fn http_dates_in_all_three_formats_and_nothing_else() {
        let at = |text: &str| {
            http_date(text).map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            })
        };
        // RFC 9110's own example, three ways.
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "SUN, 06 NOV 1994 08:49:37 gmt",
            // The day name is not checked against the date.
            "Mon, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(at(text), Some(784_111_777), "{text}");
        }
        assert_eq!(at("Tue, 19 Jan 2038 14:14:08 GMT"), Some(2_147_523_248));
        assert_eq!(at("Sun, 21 Nov 2286 04:46:39 GMT"), Some(10_000_039_599));
        assert_eq!(
            at("Thu Aug 18 02:01:18 2050"),
            at("Thu, 18 Aug 2050 02:01:18 GMT")
        );
        assert_eq!(
            at("Thursday, 18-Aug-50 02:01:18 GMT"),
            at("Thu, 18 Aug 2050 02:01:18 GMT")
        );
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            at("Tue, 29 Feb 2028 00:00:00 GMT").map(|s| s % 86_400),
            Some(0)
        );
        for bad in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:00:00 GMT",
            "Xyz, 18 Aug 2050 02:01:18 GMT",
            "0",
            "",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }
}
