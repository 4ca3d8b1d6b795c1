//! Reading `Accept-Encoding` (RFC 9110 §12.5.3): each listed coding with its weight, `*`
//! for any other, and `identity` acceptable unless the client rules it out.

use super::Coding;

/// Codings read from a request at most: a longer list is either an attack or a mistake,
/// and its tail changes nothing a real client needs.
const MAX_ENTRIES: usize = 32;

/// A weight in thousandths, as the `q` parameter's three decimals allow.
type Quality = u16;

const FULL: Quality = 1000;

/// What a request's `Accept-Encoding` accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acceptance {
    /// The request had the field (an empty one accepts `identity` alone).
    present: bool,
    codings: Vec<(Coding, Quality)>,
    identity: Option<Quality>,
    any: Option<Quality>,
}

impl Acceptance {
    /// Reads every `Accept-Encoding` line of a request, in order.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Acceptance {
        let mut acceptance = Acceptance::default();
        let mut seen = 0;
        for line in lines {
            acceptance.present = true;
            // A line that is not text accepts nothing more than identity.
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            for entry in line.split(',') {
                if seen == MAX_ENTRIES {
                    return acceptance;
                }
                let mut parts = entry.split(';');
                let token = parts.next().unwrap_or("").trim();
                if token.is_empty() {
                    continue;
                }
                seen += 1;
                let Some(quality) = quality(parts) else {
                    continue;
                };
                // The first mention of a coding counts; a repeat cannot raise it.
                if token == "*" {
                    acceptance.any.get_or_insert(quality);
                } else if token.eq_ignore_ascii_case("identity") {
                    acceptance.identity.get_or_insert(quality);
                } else if let Some(coding) = Coding::from_token(token) {
                    if !acceptance.codings.iter().any(|(c, _)| *c == coding) {
                        acceptance.codings.push((coding, quality));
                    }
                }
            }
        }
        acceptance
    }

    /// The weight the client gives `coding`: its own, else that of `*`, else none.
    fn quality(&self, coding: Coding) -> Quality {
        self.codings
            .iter()
            .find(|(c, _)| *c == coding)
            .map(|(_, q)| *q)
            .or(self.any)
            .unwrap_or(0)
    }

    /// Whether the client takes a body in `coding`. A request without the field is taken
    /// to want none: RFC 9110 allows any coding then, but clients that send nothing are
    /// the ones least likely to decode.
    pub fn accepts(&self, coding: Coding) -> bool {
        self.present && self.quality(coding) > 0
    }

    /// Whether the client takes an unencoded body: unless `identity;q=0`, or `*;q=0`
    /// without `identity` listed.
    pub fn accepts_identity(&self) -> bool {
        self.identity_quality() > 0
    }

    fn identity_quality(&self) -> Quality {
        self.identity.or(self.any).unwrap_or(FULL)
    }

    /// The coding to send, of those `offered` in the PoP's order of preference: the one
    /// the client weighs highest, the PoP's order breaking ties; `None` for identity, when
    /// the client accepts none of them or weighs identity higher than all of them.
    pub fn choose(&self, offered: impl IntoIterator<Item = Coding>) -> Option<Coding> {
        if !self.present {
            return None;
        }
        let mut best: Option<(Coding, Quality)> = None;
        for coding in offered {
            let q = self.quality(coding);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((coding, q));
            }
        }
        let (coding, q) = best?;
        // A tie with identity goes to the coding: fewer bytes for the same preference.
        (q >= self.identity_quality() || !self.accepts_identity()).then_some(coding)
    }
}

/// The weight among an entry's parameters: `q=` in any case, `0` to `1` with at most three
/// decimals; `None` when it is malformed, which makes the entry count for nothing. Other
/// parameters are ignored.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<Quality> {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        return parse_weight(value.trim());
    }
    Some(FULL)
}

fn parse_weight(value: &str) -> Option<Quality> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: Quality = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(FULL),
        _ => None,
    }
}

/// The coding to send for a request's `Accept-Encoding` lines; `None` for identity.
pub fn negotiate<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
    offered: &[Coding],
) -> Option<Coding> {
    Acceptance::parse(lines).choose(offered.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(value: &str) -> Option<Coding> {
        negotiate([value.as_bytes()], &Coding::ALL)
    }

    #[test]
    fn the_best_weighted_coding_wins_and_the_pops_order_breaks_ties() {
        assert_eq!(chosen("gzip, deflate, br"), Some(Coding::Brotli));
        assert_eq!(chosen("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(chosen("br;q=1, gzip;q=0.8"), Some(Coding::Brotli));
        assert_eq!(chosen("zstd;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(chosen("GZIP"), Some(Coding::Gzip));
        assert_eq!(chosen("x-gzip"), Some(Coding::Gzip));
        assert_eq!(chosen("gzip;Q=0.001, identity;q=0"), Some(Coding::Gzip));
        assert_eq!(chosen("gzip ; Q=1"), Some(Coding::Gzip));
        assert_eq!(chosen("*"), Some(Coding::Zstd));
        assert_eq!(chosen("*;q=0.5, br;q=0.4"), Some(Coding::Zstd));
        // Only what is offered.
        assert_eq!(
            negotiate([b"zstd, gzip".as_slice()], &[Coding::Gzip]),
            Some(Coding::Gzip)
        );
    }

    #[test]
    fn identity_when_nothing_else_is_accepted_or_it_is_preferred() {
        assert_eq!(chosen(""), None);
        assert_eq!(chosen("deflate, compress"), None);
        assert_eq!(chosen("identity"), None);
        assert_eq!(chosen("gzip;q=0"), None);
        assert_eq!(chosen("*;q=0"), None);
        assert_eq!(chosen("gzip;q=0.5, identity"), None);
        // A tie goes to the coding.
        assert_eq!(chosen("gzip, identity"), Some(Coding::Gzip));
        // Identity ruled out: the best coding, whatever its weight.
        assert_eq!(chosen("gzip;q=0.1, identity;q=0"), Some(Coding::Gzip));
        // No field at all: identity, though the RFC would allow any.
        assert_eq!(negotiate(std::iter::empty(), &Coding::ALL), None);
    }

    #[test]
    fn malformed_weights_count_for_nothing() {
        for value in [
            "gzip;q=2",
            "gzip;q=1.5",
            "gzip;q=0.0001",
            "gzip;q=-1",
            "gzip;q=abc",
            "gzip;q=",
            "gzip;q=.5",
        ] {
            assert_eq!(chosen(value), None, "{value}");
        }
        assert_eq!(chosen("gzip;q=1.000"), Some(Coding::Gzip));
        assert_eq!(chosen("gzip;level=9"), Some(Coding::Gzip));
    }

    #[test]
    fn a_repeated_coding_keeps_its_first_weight_and_lines_add_up() {
        assert_eq!(chosen("gzip;q=0, gzip"), None);
        assert_eq!(
            negotiate([b"gzip;q=0.5".as_slice(), b"br".as_slice()], &Coding::ALL),
            Some(Coding::Brotli)
        );
        // Past the bound, entries are not read.
        let long = format!("{}br", "deflate, ".repeat(MAX_ENTRIES));
        assert_eq!(chosen(&long), None);
        assert_eq!(negotiate([[0xff, b'g'].as_slice()], &Coding::ALL), None);
    }

    #[test]
    fn what_a_client_accepts_of_a_coding_the_core_chose() {
        let acceptance = Acceptance::parse([b"gzip, br;q=0".as_slice()]);
        assert!(acceptance.accepts(Coding::Gzip));
        assert!(!acceptance.accepts(Coding::Brotli));
        assert!(!acceptance.accepts(Coding::Zstd));
        assert!(acceptance.accepts_identity());
        assert!(!Acceptance::parse([b"*;q=0".as_slice()]).accepts_identity());
        assert!(!Acceptance::parse(std::iter::empty()).accepts(Coding::Gzip));
        assert!(Acceptance::parse(std::iter::empty()).accepts_identity());
    }
}
