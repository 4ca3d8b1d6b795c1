//! A little-endian byte writer and a bounds-checked reader for the disk tier's records.
//!
//! Every read is fallible on purpose: these bytes come from disk and may be truncated or
//! damaged, and a damaged entry must become a miss, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn time(&mut self, t: SystemTime) {
        let (secs, nanos) = split_time(t);
        self.u64(secs);
        self.u32(nanos);
    }

    pub fn bytes_fixed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(b);
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "record ends early: wanted {n} bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn time(&mut self) -> Result<SystemTime, String> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        join_time(secs, nanos).ok_or_else(|| "time out of range".to_string())
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

/// Seconds and nanoseconds since the epoch; times before it are stored as the epoch.
fn split_time(time: SystemTime) -> (u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (since.as_secs(), since.subsec_nanos())
}

fn join_time(secs: u64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;

    /// One value of each kind the records are made of.
    #[derive(Debug, Clone, PartialEq)]
    enum Field {
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        Time(u64, u32),
        Fixed([u8; 16]),
        Bytes(Vec<u8>),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            any::<u8>().prop_map(Field::U8),
            any::<u16>().prop_map(Field::U16),
            any::<u32>().prop_map(Field::U32),
            any::<u64>().prop_map(Field::U64),
            // Times a `SystemTime` holds on every platform; the reader's own range check is
            // exercised by the arbitrary-bytes property.
            (0u64..1 << 40, 0u32..1_000_000_000).prop_map(|(s, n)| Field::Time(s, n)),
            any::<[u8; 16]>().prop_map(Field::Fixed),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Field::Bytes),
        ]
    }

    fn write(out: &mut Writer, field: &Field) {
        match field {
            Field::U8(v) => out.u8(*v),
            Field::U16(v) => out.u16(*v),
            Field::U32(v) => out.u32(*v),
            Field::U64(v) => out.u64(*v),
            Field::Time(secs, nanos) => out.time(UNIX_EPOCH + Duration::new(*secs, *nanos)),
            Field::Fixed(v) => out.bytes_fixed(v),
            Field::Bytes(v) => out.bytes(v),
        }
    }

    /// Reads a field of the same kind as `like`.
    fn read(input: &mut Reader, like: &Field) -> Result<Field, String> {
        Ok(match like {
            Field::U8(_) => Field::U8(input.u8()?),
            Field::U16(_) => Field::U16(input.u16()?),
            Field::U32(_) => Field::U32(input.u32()?),
            Field::U64(_) => Field::U64(input.u64()?),
            Field::Time(..) => {
                let (secs, nanos) = split_time(input.time()?);
                Field::Time(secs, nanos)
            }
            Field::Fixed(_) => Field::Fixed(input.array()?),
            Field::Bytes(_) => Field::Bytes(input.bytes()?.to_vec()),
        })
    }

    fn encoded(fields: &[Field]) -> Vec<u8> {
        let mut out = Writer::default();
        for field in fields {
            write(&mut out, field);
        }
        out.into_inner()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn fields_read_back_as_they_were_written(
            fields in proptest::collection::vec(field(), 0..16),
        ) {
            let bytes = encoded(&fields);
            let mut input = Reader::new(&bytes);
            for field in &fields {
                prop_assert_eq!(&read(&mut input, field).expect("reads back"), field);
            }
            prop_assert_eq!(input.remaining(), 0);
        }

        #[test]
        fn a_record_cut_anywhere_fails_to_read_without_panicking(
            fields in proptest::collection::vec(field(), 1..8),
        ) {
            let bytes = encoded(&fields);
            for cut in 0..bytes.len() {
                let mut input = Reader::new(&bytes[..cut]);
                let all: Result<Vec<Field>, String> =
                    fields.iter().map(|f| read(&mut input, f)).collect();
                prop_assert!(all.is_err(), "a cut at {} of {} read whole", cut, bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_read_as_any_fields_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            kinds in proptest::collection::vec(field(), 0..16),
        ) {
            let mut input = Reader::new(&bytes);
            for kind in &kinds {
                let before = input.remaining();
                let _ = read(&mut input, kind);
                prop_assert!(input.remaining() <= before);
            }
        }

        #[test]
        fn a_declared_length_past_the_end_is_an_error(
            len in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assume!(len as usize > tail.len());
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let mut input = Reader::new(&bytes);
            prop_assert!(input.bytes().is_err());
        }
    }
}
