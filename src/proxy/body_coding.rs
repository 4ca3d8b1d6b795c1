//! The state of one response's coding, kept in the request's context: the coding planned
//! from `Accept-Encoding`, and the encoder or decoder its body goes through, holding one of
//! the PoP's bounded slots for the work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::encoding::{Acceptance, Coding, DecodeError, Decoder, Encoder};
use crate::metrics;

/// The coding decided for a request's response.
#[derive(Debug)]
pub(super) struct CodingPlan {
    /// What the PoP sends when it encodes; `None`: identity.
    pub chosen: Option<Coding>,
    /// Everything the client takes, for a body the core encoded itself.
    acceptance: Acceptance,
}

impl CodingPlan {
    pub fn new(chosen: Option<Coding>, acceptance: Acceptance) -> CodingPlan {
        CodingPlan { chosen, acceptance }
    }

    /// Whether the client takes a body in `coding`.
    pub fn accepts(&self, coding: Coding) -> bool {
        self.acceptance.accepts(coding)
    }

    /// The `Accept-Encoding` selecting value of the stored variant this request wants.
    pub fn variant(&self) -> &'static str {
        self.chosen.map_or("identity", Coding::as_str)
    }
}

/// Bodies being coded at once, shared by every listener: those filling the cache, and those
/// passing to one client, each bounded by `compression.max_concurrent`.
#[derive(Debug, Default)]
pub struct CodingSlots {
    pub(super) filling: SlotPool,
    pub(super) passing: SlotPool,
}

/// One bounded count of bodies being coded.
#[derive(Debug, Default)]
pub struct SlotPool(Arc<AtomicUsize>);

/// One body's place among those being coded; given back when dropped.
pub(super) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SlotPool {
    pub(super) fn take(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }
}

/// The work on one response body, and its slot.
pub(super) struct BodyWork {
    kind: Work,
    _slot: Slot,
}

enum Work {
    Encode(Encoder),
    Decode(Decoder),
}

impl BodyWork {
    pub(super) fn encode(encoder: Encoder, slot: Slot) -> BodyWork {
        BodyWork {
            kind: Work::Encode(encoder),
            _slot: slot,
        }
    }

    pub(super) fn decode(decoder: Decoder, slot: Slot) -> BodyWork {
        BodyWork {
            kind: Work::Decode(decoder),
            _slot: slot,
        }
    }

    /// `encode` or `decode`, and the coding.
    pub(super) fn what(&self) -> (&'static str, Coding) {
        match &self.kind {
            Work::Encode(e) => ("encode", e.coding()),
            Work::Decode(d) => ("decode", d.coding()),
        }
    }

    /// The next piece of the body coded; the end of the body finishes the coding. Counted
    /// in `edgecache_coded_bytes_total`.
    pub(super) fn code(&mut self, input: &[u8], end: bool) -> Result<Bytes, CodingFailure> {
        let mut out = BytesMut::new();
        let result = self.kind.push(input, &mut out).and_then(|()| {
            if end {
                self.kind.finish(&mut out)?;
            }
            Ok(())
        });
        let (operation, coding) = self.what();
        let m = metrics::get();
        for (side, bytes) in [("in", input.len()), ("out", out.len())] {
            m.coded_bytes
                .with_label_values(&[operation, coding.as_str(), side])
                .inc_by(bytes as u64);
        }
        result.map(|()| out.freeze())
    }
}

impl Work {
    /// Codes the next piece of the body into `out`.
    fn push(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), CodingFailure> {
        let coded = match self {
            Work::Encode(e) => e.encode(input)?,
            Work::Decode(d) => d.decode(input)?,
        };
        out.extend_from_slice(&coded);
        Ok(())
    }

    /// Ends the coding: the rest of the output into `out`.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), CodingFailure> {
        let rest = match self {
            Work::Encode(e) => e.finish()?,
            Work::Decode(d) => d.finish()?,
        };
        out.extend_from_slice(&rest);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CodingFailure {
    #[error(transparent)]
    Encode(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl CodingFailure {
    /// The reason counted in `edgecache_coding_skipped_total`.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            CodingFailure::Decode(DecodeError::TooLarge { .. }) => "too_large",
            _ => "corrupt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = SlotPool::default();
        let first = slots.take(2).expect("first");
        let second = slots.take(2).expect("second");
        assert!(slots.take(2).is_none());
        drop(first);
        let third = slots.take(2).expect("a slot given back");
        drop((second, third));
        assert_eq!(slots.0.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_body_is_encoded_piece_by_piece_and_a_bomb_fails_as_too_large() {
        let slots = SlotPool::default();
        let mut work = BodyWork::encode(
            Encoder::new(Coding::Gzip, 6, None).expect("encoder"),
            slots.take(1).expect("slot"),
        );
        let mut encoded = Vec::new();
        encoded.extend_from_slice(&work.code(&[0u8; 100_000], false).expect("piece"));
        encoded.extend_from_slice(&work.code(&[0u8; 100_000], true).expect("end"));
        drop(work);
        let mut work = BodyWork::decode(
            Decoder::new(Coding::Gzip, 150_000).expect("decoder"),
            slots.take(1).expect("the slot was given back"),
        );
        let failure = work.code(&encoded, true).expect_err("past the bound");
        assert_eq!(failure.reason(), "too_large");
    }
}
