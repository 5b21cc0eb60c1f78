//! A Sparkplug payload's envelope read straight off the protobuf wire:
//! timestamp, seq, how many metrics, and the bdSeq metric, without
//! decoding (or allocating) the metrics themselves.
//!
//! Invariants: [`Envelope::read`] allocates nothing and reads each byte at
//! most twice (once for a metric's frame, once more only for a metric that
//! could be bdSeq); a broken frame (a length past the end, a wire type
//! protobuf does not have, a varint of more than ten bytes) gives `None`,
//! never a guess. Its counts agree with what prost decodes (tested).

use super::BDSEQ;

/// What the envelope says (`None` fields were absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Envelope {
    pub timestamp: Option<u64>,
    pub seq: Option<u64>,
    /// Metrics in the payload (field 2), counted on the wire.
    pub metrics: usize,
    /// The value of the first metric named `bdSeq` with an integer value.
    pub bdseq: Option<u64>,
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One field: (number, wire type, varint value or the bytes of a
/// length-delimited one); fixed-width fields come back as bytes too.
fn field<'a>(b: &mut &'a [u8]) -> Option<(u64, u64, u64, &'a [u8])> {
    let key = varint(b)?;
    let (num, wt) = (key >> 3, key & 7);
    let take = |b: &mut &'a [u8], n: usize| -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    };
    match wt {
        0 => Some((num, wt, varint(b)?, &[])),
        1 => Some((num, wt, 0, take(b, 8)?)),
        2 => {
            let len = usize::try_from(varint(b)?).ok()?;
            Some((num, wt, 0, take(b, len)?))
        }
        5 => Some((num, wt, 0, take(b, 4)?)),
        _ => None,
    }
}

/// bdSeq's value if this metric is named `bdSeq` and has an integer value.
fn bdseq_of(mut m: &[u8]) -> Option<u64> {
    let (mut named, mut value) = (false, None);
    while !m.is_empty() {
        let (num, wt, v, bytes) = field(&mut m)?;
        match (num, wt) {
            (1, 2) => named = bytes == BDSEQ.as_bytes(),
            (10, 0) => value = Some(u64::from(v as u32)),
            (11, 0) => value = Some(v),
            _ => {}
        }
    }
    value.filter(|_| named)
}

impl Envelope {
    /// Reads the envelope of `payload`; `None` when its framing is broken.
    pub fn read(mut b: &[u8]) -> Option<Envelope> {
        let mut e = Envelope::default();
        while !b.is_empty() {
            let (num, wt, v, bytes) = field(&mut b)?;
            match (num, wt) {
                (1, 0) => e.timestamp = Some(v),
                (3, 0) => e.seq = Some(v),
                (2, 2) => {
                    e.metrics += 1;
                    if e.bdseq.is_none() {
                        e.bdseq = bdseq_of(bytes);
                    }
                }
                _ => {}
            }
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::{pb, Metric, Payload, Value};
    use proptest::prelude::*;
    use prost::Message;

    #[test]
    fn the_envelope_of_a_birth_has_its_seq_timestamp_metrics_and_bdseq() {
        let p = Payload {
            timestamp: Some(1_700_000_000_000),
            seq: Some(0),
            metrics: vec![
                Metric::new("Temp", Value::Double(1.0), 1),
                Metric::new(BDSEQ, Value::Int64(42), 1),
            ],
            ..Payload::default()
        }
        .encode()
        .expect("encodes");
        assert_eq!(
            Envelope::read(&p),
            Some(Envelope {
                timestamp: Some(1_700_000_000_000),
                seq: Some(0),
                metrics: 2,
                bdseq: Some(42)
            })
        );
    }

    #[test]
    fn broken_frames_give_none() {
        assert_eq!(Envelope::read(b""), Some(Envelope::default()));
        assert_eq!(Envelope::read(b"\x12\x05ab"), None, "a length past the end");
        assert_eq!(Envelope::read(b"\x0f"), None, "wire type 7");
        assert_eq!(
            Envelope::read(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
    }

    proptest! {
        /// Whatever bytes come in, the wire reader agrees with prost on what
        /// prost can decode, and never panics on the rest.
        #[test]
        fn agrees_with_prost(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = Envelope::read(&bytes);
            if let Ok(p) = pb::Payload::decode(bytes.as_slice()) {
                let e = e.expect("prost decoded it, so the framing is sound");
                prop_assert_eq!(e.metrics, p.metrics.len());
                prop_assert_eq!(e.seq, p.seq);
                prop_assert_eq!(e.timestamp, p.timestamp);
            }
        }

        #[test]
        fn agrees_with_prost_on_real_payloads(n in 0usize..50, seq in 0u64..256, bd in any::<i64>()) {
            let mut metrics: Vec<Metric> = (0..n).map(|i| Metric::new(format!("m{i}"), Value::Int32(i as i32), 1)).collect();
            metrics.push(Metric::new(BDSEQ, Value::Int64(bd), 1));
            let p = Payload { timestamp: Some(5), seq: Some(seq), metrics, ..Payload::default() }.encode().expect("encodes");
            let e = Envelope::read(&p).expect("sound");
            prop_assert_eq!((e.metrics, e.seq, e.bdseq), (n + 1, Some(seq), Some(bd as u64)));
        }
    }
}
