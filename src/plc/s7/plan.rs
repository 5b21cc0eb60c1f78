//! Read planning: many tags into as few ReadVar requests as the negotiated
//! PDU allows.
//!
//! Invariants (property-tested below):
//! - Every request fits the PDU both ways: request bytes and the worst-case
//!   response bytes (with fill bytes) are at most `pdu`, and it holds at
//!   most `max_items` items.
//! - Tags of one area whose byte ranges touch or lie within `merge_gap`
//!   bytes of each other share one range; a range larger than one item can
//!   carry is split into several items, and put together again on read.
//! - Every byte of every tag is covered by exactly one item.
//! - An isolated tag gets a range of its own (after a merged range came back
//!   "out of range", so one bad tag cannot make its neighbours BAD).

use super::address::{Area, S7Address};
use super::codec::{self, Item};

/// What the PLC allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Negotiated PDU size.
    pub pdu: usize,
    /// Items per request (S7-300/400 take about 20).
    pub max_items: usize,
    /// Merge ranges separated by at most this many unused bytes: an extra
    /// item costs 12 request + 4 response bytes.
    pub merge_gap: usize,
}

/// A contiguous byte range of one area that one or more tags live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub area: Area,
    /// First byte (timers/counters: 2 × their number).
    pub start: u32,
    pub len: usize,
    /// Positions (in the planned tag list) of the tags inside.
    pub tags: Vec<usize>,
}

/// Part of a range that one item reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub range: usize,
    /// Offset of this piece in its range.
    pub offset: usize,
    pub item: Item,
}

/// The requests for one set of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ranges: Vec<Range>,
    pub requests: Vec<Vec<Piece>>,
    /// For each planned tag: its range and its offset in it.
    pub tags: Vec<(usize, usize)>,
}

fn plan_start(a: &S7Address) -> u32 {
    if a.area.is_timer_or_counter() {
        a.byte * 2
    } else {
        a.byte
    }
}

/// Plans reads of `tags`; `isolated(i)` keeps tag `i` in a range of its own.
pub fn plan(tags: &[S7Address], isolated: impl Fn(usize) -> bool, limits: Limits) -> Plan {
    let mut order: Vec<usize> = (0..tags.len()).collect();
    order.sort_by_key(|&i| (tags[i].area, plan_start(&tags[i]), tags[i].len()));
    let mut ranges: Vec<Range> = Vec::new();
    let mut where_: Vec<(usize, usize)> = vec![(0, 0); tags.len()];
    let mut open: Option<usize> = None;
    for i in order {
        let a = &tags[i];
        let (start, len) = (plan_start(a), a.len());
        let joinable = open.filter(|&r| {
            let r = &ranges[r];
            r.area == a.area && !isolated(i) && start as usize <= r.start as usize + r.len + limits.merge_gap
        });
        match joinable {
            Some(r) => {
                let range = &mut ranges[r];
                let end = (start as usize + len).max(range.start as usize + range.len);
                range.len = end - range.start as usize;
                range.tags.push(i);
                where_[i] = (r, (start - range.start) as usize);
            }
            None => {
                ranges.push(Range {
                    area: a.area,
                    start,
                    len,
                    tags: vec![i],
                });
                let r = ranges.len() - 1;
                where_[i] = (r, 0);
                open = (!isolated(i)).then_some(r);
            }
        }
    }
    // Largest item a response can carry; timers and counters come in 2-byte units.
    let max_item = limits
        .pdu
        .saturating_sub(codec::RESPONSE_OVERHEAD + codec::ITEM_HEADER)
        .max(2);
    let mut pieces = Vec::new();
    for (r, range) in ranges.iter().enumerate() {
        let unit = if range.area.is_timer_or_counter() { 2 } else { 1 };
        let max = max_item / unit * unit;
        let mut offset = 0;
        while offset < range.len {
            let len = (range.len - offset).min(max);
            let start = range.start + offset as u32;
            pieces.push(Piece {
                range: r,
                offset,
                item: Item {
                    area: range.area,
                    start: start / unit as u32,
                    len,
                },
            });
            offset += len;
        }
    }
    let mut requests: Vec<Vec<Piece>> = Vec::new();
    let mut response = codec::RESPONSE_OVERHEAD;
    for p in pieces {
        // Worst case: every item padded to even.
        let cost = p.item.response_len() + p.item.len % 2;
        let fits = requests.last().is_some_and(|req| {
            req.len() < limits.max_items
                && codec::read_request_len(req.len() + 1) <= limits.pdu
                && response + cost <= limits.pdu
        });
        if fits {
            response += cost;
            requests.last_mut().expect("fits implies a request").push(p);
        } else {
            response = codec::RESPONSE_OVERHEAD + cost;
            requests.push(vec![p]);
        }
    }
    Plan {
        ranges,
        requests,
        tags: where_,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::DataType;
    use proptest::prelude::*;

    fn addr(s: &str, dt: DataType) -> S7Address {
        S7Address::parse(s, dt).unwrap()
    }

    const PY_SNAP7: Limits = Limits {
        pdu: 480,
        max_items: 20,
        merge_gap: 16,
    };

    #[test]
    fn adjacent_tags_merge_into_one_item() {
        let tags = [
            addr("DB1.DBD0", DataType::Float),
            addr("DB1.DBW4", DataType::Int16),
            addr("DB1.DBX6.1", DataType::Boolean),
            addr("DB1.DBD8", DataType::Int32),
            addr("DB2.DBD0", DataType::Float),
            addr("MW10", DataType::UInt16),
        ];
        let p = plan(&tags, |_| false, PY_SNAP7);
        assert_eq!(p.requests.len(), 1);
        assert_eq!(p.ranges.len(), 3, "DB1 0..12, DB2 0..4, M 10..12");
        let (db1, offset) = p.tags[3];
        assert_eq!(
            (p.ranges[db1].area, p.ranges[db1].start, p.ranges[db1].len),
            (Area::Db(1), 0, 12)
        );
        assert_eq!(offset, 8);
    }

    #[test]
    fn far_apart_tags_do_not_merge_and_isolated_tags_stay_alone() {
        let tags = [addr("DB1.DBD0", DataType::Float), addr("DB1.DBD100", DataType::Float)];
        assert_eq!(plan(&tags, |_| false, PY_SNAP7).ranges.len(), 2);
        let near = [addr("DB1.DBD0", DataType::Float), addr("DB1.DBD4", DataType::Float)];
        assert_eq!(plan(&near, |_| false, PY_SNAP7).ranges.len(), 1);
        assert_eq!(plan(&near, |i| i == 1, PY_SNAP7).ranges.len(), 2);
    }

    #[test]
    fn a_range_larger_than_the_pdu_is_split_into_items() {
        let tags = [addr("DB1.DBD0:REAL[250]", DataType::FloatArray)]; // 1000 bytes
        let p = plan(&tags, |_| false, PY_SNAP7);
        let lens: Vec<usize> = p.requests.iter().flatten().map(|x| x.item.len).collect();
        assert_eq!(lens, [462, 462, 76], "480 - 14 - 4 = 462 bytes per item");
        assert_eq!(p.requests.len(), 3, "each full item fills a response");
    }

    #[test]
    fn a_bigger_pdu_packs_more_items_per_request() {
        let tags: Vec<S7Address> = (0..100)
            .map(|i| addr(&format!("DB{}.DBD0", i + 1), DataType::Float))
            .collect();
        assert_eq!(plan(&tags, |_| false, PY_SNAP7).requests.len(), 5, "20 items each");
        let unbounded = |pdu| Limits {
            pdu,
            max_items: 255,
            merge_gap: 16,
        };
        let at480 = plan(&tags, |_| false, unbounded(480));
        let at960 = plan(&tags, |_| false, unbounded(960));
        assert_eq!(at480.requests[0].len(), 39, "(480 - 12) / 12 request bytes per item");
        assert_eq!(at960.requests[0].len(), 79, "(960 - 12) / 12");
        assert_eq!((at480.requests.len(), at960.requests.len()), (3, 2));
    }

    proptest! {
        #[test]
        fn every_request_fits_and_every_tag_byte_is_read_once(
            specs in proptest::collection::vec((1u16..4, 0u32..2000, 0usize..5, 1u16..300), 1..120),
            pdu in prop_oneof![Just(240usize), Just(480), Just(960)],
            max_items in 1usize..30,
        ) {
            let tags: Vec<S7Address> = specs.iter().map(|&(db, byte, kind, n)| {
                let (ty, dt) = match kind {
                    0 => ("BYTE", DataType::UInt8Array),
                    1 => ("INT", DataType::Int16Array),
                    2 => ("REAL", DataType::FloatArray),
                    3 => ("LREAL", DataType::DoubleArray),
                    _ => ("BOOL", DataType::BooleanArray),
                };
                let s = if ty == "BOOL" { format!("DB{db}.DBX{byte}.3:BOOL[{n}]") } else { format!("DB{db}.DBB{byte}:{ty}[{n}]") };
                addr(&s, dt)
            }).collect();
            let limits = Limits { pdu, max_items, merge_gap: 16 };
            let p = plan(&tags, |i| i % 7 == 0, limits);
            let mut covered: Vec<Vec<u8>> = p.ranges.iter().map(|r| vec![0u8; r.len]).collect();
            for req in &p.requests {
                prop_assert!(req.len() <= max_items && !req.is_empty());
                prop_assert!(codec::read_request_len(req.len()) <= pdu);
                let resp: usize = codec::RESPONSE_OVERHEAD + req.iter().map(|x| x.item.response_len() + x.item.len % 2).sum::<usize>();
                prop_assert!(resp <= pdu, "response {} > pdu {}", resp, pdu);
                for piece in req {
                    for b in &mut covered[piece.range][piece.offset..piece.offset + piece.item.len] { *b += 1; }
                }
            }
            prop_assert!(covered.iter().flatten().all(|&c| c == 1));
            for (i, t) in tags.iter().enumerate() {
                let (r, off) = p.tags[i];
                prop_assert_eq!(p.ranges[r].area, t.area);
                prop_assert!(off + t.len() <= p.ranges[r].len);
                prop_assert_eq!(p.ranges[r].start + off as u32, t.byte);
            }
        }
    }
}
