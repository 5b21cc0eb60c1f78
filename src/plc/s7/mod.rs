//! Siemens S7 over classic S7comm (ISO-on-TCP, port 102), on our own sans-IO
//! codec ([`codec`]) rather than the `s7-client` crate: that crate returns one
//! byte for typed reads, has no M/T/C areas, does not split at the negotiated
//! PDU and spins when the PLC hangs up (measured in BENCHMARKS.md, "S7
//! clients"). The I/O here is a thin loop: send a frame, read frames until
//! the last fragment, hand the bytes to the codec.
//!
//! Invariants:
//! - One TCP connection per PLC, one job in flight at a time, each request's
//!   answer matched by PDU reference.
//! - Reads are planned once per tag set ([`plan`]) against the negotiated PDU
//!   and cached; a merged range that comes back "out of range" is re-read tag
//!   by tag in the same scan and kept apart afterwards, so a bad tag is BAD
//!   alone.
//! - Any I/O or framing error drops the connection (the next call reopens
//!   it); a per-item error never does.
//! - Writes go one item per request (every S7 server accepts that); a single
//!   BOOL is written as one bit, never as its whole byte.
//! - What the PLC can make us hold is bounded: an answer's fragments are
//!   joined up to the negotiated PDU plus [`PDU_SLACK`] bytes and at most
//!   [`MAX_FRAGMENTS`] fragments; past either the answer is a
//!   [`S7Error::Oversized`], the connection is dropped and the poller counts
//!   a protocol violation. A TPKT frame is at most 65,535 bytes by its own
//!   length field.

pub mod address;
pub mod codec;
pub mod plan;

use std::collections::HashMap;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sparkplug::{DataType, Value};
use address::S7Address;
use codec::{CodecError, Item, ItemError};
use plan::{Limits, Plan};

/// Why talking to the PLC failed (the connection is dropped).
#[derive(Debug, Error)]
pub enum S7Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("the PLC closed the connection")]
    Closed,
    #[error("the PLC granted a PDU of {0} bytes; at least 240 are needed")]
    TinyPdu(u16),
    #[error("the PLC's answer grew past {max} bytes in {fragments} fragments without its last fragment (the negotiated PDU is {pdu}): not an S7 server, connection dropped")]
    Oversized { max: usize, fragments: usize, pdu: u16 },
}

impl S7Error {
    /// Whether the PLC broke the protocol's bounds (not a network failure).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, S7Error::Oversized { .. })
    }
}

/// Joins the COTP data fragments of one answer (sans-IO): at most the
/// negotiated PDU plus [`PDU_SLACK`] bytes in at most [`MAX_FRAGMENTS`]
/// fragments, else [`S7Error::Oversized`].
#[derive(Debug)]
pub struct Reassembly {
    pdu: u16,
    max: usize,
    fragments: usize,
    joined: Vec<u8>,
}

impl Reassembly {
    pub fn new(negotiated_pdu: u16) -> Reassembly {
        Reassembly {
            pdu: negotiated_pdu,
            max: usize::from(negotiated_pdu) + PDU_SLACK,
            fragments: 0,
            joined: Vec::new(),
        }
    }

    /// Takes one TPKT frame; the whole S7 PDU once its last fragment came.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, S7Error> {
        let (part, last) = codec::s7_payload(frame)?;
        self.fragments += 1;
        if self.joined.len() + part.len() > self.max || (!last && self.fragments >= MAX_FRAGMENTS) {
            return Err(S7Error::Oversized {
                max: self.max,
                fragments: self.fragments,
                pdu: self.pdu,
            });
        }
        self.joined.extend_from_slice(part);
        Ok(last.then(|| std::mem::take(&mut self.joined)))
    }
}

/// Bytes an answer may exceed the negotiated PDU by (its own headers).
pub const PDU_SLACK: usize = 64;
/// Fragments one answer may arrive in.
pub const MAX_FRAGMENTS: usize = 64;

/// How to reach one PLC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S7Options {
    /// `host:port`.
    pub addr: String,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    /// PDU size to ask for; the PLC may grant less.
    pub pdu_size: u16,
    pub max_items: usize,
}

impl S7Options {
    /// Remote TSAP for `rack`/`slot` with connection type PG (1), OP (2) or basic (3).
    pub fn tsap_for(conn_type: u8, rack: u8, slot: u8) -> u16 {
        (u16::from(conn_type) << 8) | u16::from(rack * 0x20 + slot)
    }
}

/// An open, negotiated connection.
pub struct Connection {
    stream: TcpStream,
    /// The PDU size the PLC granted.
    pub pdu: u16,
    next_ref: u16,
    /// The PDU asked for, until the PLC grants one.
    asked: u16,
    buf: Vec<u8>,
    /// Requests sent on this connection (setup included).
    pub requests: u64,
}

impl Connection {
    /// TCP connect, COTP connection, Setup Communication.
    pub async fn open(o: &S7Options) -> Result<Connection, S7Error> {
        let stream = TcpStream::connect(&o.addr).await.map_err(|source| S7Error::Connect {
            addr: o.addr.clone(),
            source,
        })?;
        stream.set_nodelay(true)?;
        let mut c = Connection {
            stream,
            pdu: 0,
            next_ref: 0,
            asked: o.pdu_size,
            buf: Vec::with_capacity(1024),
            requests: 0,
        };
        c.stream
            .write_all(&codec::connect_request(o.local_tsap, o.remote_tsap))
            .await?;
        let frame = c.frame().await?;
        codec::parse_connect_confirm(&frame)?;
        let pdu = c.exchange(|r| codec::setup_request(r, o.pdu_size)).await?;
        let granted = codec::parse_setup(&pdu, c.next_ref)?;
        if granted < 240 {
            return Err(S7Error::TinyPdu(granted));
        }
        c.pdu = granted;
        Ok(c)
    }

    /// Reads one TPKT frame.
    async fn frame(&mut self) -> Result<Vec<u8>, S7Error> {
        self.buf.clear();
        self.buf.resize(4, 0);
        self.read_exact(0..4).await?;
        let len = codec::frame_len(&self.buf)?.unwrap_or(4);
        self.buf.resize(len.max(4), 0);
        self.read_exact(4..len.max(4)).await?;
        Ok(std::mem::take(&mut self.buf))
    }

    async fn read_exact(&mut self, range: std::ops::Range<usize>) -> Result<(), S7Error> {
        match self.stream.read_exact(&mut self.buf[range]).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(S7Error::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the request built for the next PDU reference and returns the
    /// S7 PDU of the answer (fragments joined).
    pub async fn exchange(&mut self, build: impl FnOnce(u16) -> Vec<u8>) -> Result<Vec<u8>, S7Error> {
        self.next_ref = self.next_ref.wrapping_add(1).max(1);
        let req = build(self.next_ref);
        self.requests += 1;
        self.stream.write_all(&req).await?;
        let negotiated = if self.pdu == 0 { self.asked } else { self.pdu };
        let mut joined = Reassembly::new(negotiated);
        loop {
            let frame = self.frame().await?;
            if let Some(pdu) = joined.push(&frame)? {
                return Ok(pdu);
            }
        }
    }

    /// Reads `items` in one request.
    pub async fn read(&mut self, items: &[Item]) -> Result<Vec<Result<Vec<u8>, ItemError>>, S7Error> {
        let pdu = self.exchange(|r| codec::read_request(r, items)).await?;
        Ok(codec::parse_read(&pdu, self.next_ref, items)?)
    }

    /// Writes `bytes` at `item` (one bit when `bit` is set), split at the PDU.
    pub async fn write(&mut self, item: Item, bit: Option<u8>, bytes: &[u8]) -> Result<Result<(), ItemError>, S7Error> {
        let max = (self.pdu as usize)
            .saturating_sub(codec::write_request_len(0) - 7)
            .max(2);
        let unit = if item.area.is_timer_or_counter() { 2 } else { 1 };
        let max = max / unit * unit;
        let mut offset = 0;
        loop {
            let n = (bytes.len() - offset).min(max);
            let part = Item {
                area: item.area,
                start: item.start + (offset / unit) as u32,
                len: n,
            };
            let chunk = &bytes[offset..offset + n];
            let pdu = self.exchange(|r| codec::write_request(r, &part, bit, chunk)).await?;
            if let Err(e) = codec::parse_write(&pdu, self.next_ref)? {
                return Ok(Err(e));
            }
            offset += n;
            if offset >= bytes.len() {
                return Ok(Ok(()));
            }
        }
    }
}

/// The S7 driver of one device.
pub struct S7Driver {
    opts: S7Options,
    /// Parsed address and Sparkplug type per tag (an address that does not
    /// parse is reported as that tag's error on every read).
    tags: Vec<(Result<S7Address, String>, DataType)>,
    conn: Option<Connection>,
    /// Plans by the exact set of tags read (scan classes make few distinct
    /// sets), all made for the PDU size `plans_pdu`.
    plans: HashMap<Vec<usize>, Plan>,
    plans_pdu: u16,
    isolated: Vec<bool>,
}

impl S7Driver {
    /// A driver for tags given as text (tools and tests); one that does not
    /// parse is reported as that tag's error on every read.
    pub fn new(opts: S7Options, tags: impl IntoIterator<Item = (String, DataType)>) -> S7Driver {
        let tags = tags
            .into_iter()
            .map(|(a, dt)| (S7Address::parse(&a, dt).map_err(|e| e.to_string()), dt));
        S7Driver::with_parsed(opts, tags)
    }

    /// A driver for tags the configuration already parsed.
    pub fn with_parsed(
        opts: S7Options,
        tags: impl IntoIterator<Item = (Result<S7Address, String>, DataType)>,
    ) -> S7Driver {
        let tags: Vec<_> = tags.into_iter().collect();
        let isolated = vec![false; tags.len()];
        S7Driver {
            opts,
            tags,
            conn: None,
            plans: HashMap::new(),
            plans_pdu: 0,
            isolated,
        }
    }

    /// The granted PDU size while connected.
    pub fn pdu(&self) -> Option<u16> {
        self.conn.as_ref().map(|c| c.pdu)
    }

    /// Requests sent on the current connection (setup included).
    pub fn requests(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.requests)
    }

    /// Opens a fresh connection (dropping any old one).
    pub async fn connect(&mut self) -> Result<(), S7Error> {
        self.conn = None;
        self.conn = Some(Connection::open(&self.opts).await?);
        Ok(())
    }

    /// Reads the tags at `indices`. The outer error means the connection is
    /// gone; inner errors are per tag.
    pub async fn read(&mut self, indices: &[usize]) -> Result<Vec<Result<Value, String>>, S7Error> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let result = self.read_connected(indices).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn read_connected(&mut self, indices: &[usize]) -> Result<Vec<Result<Value, String>>, S7Error> {
        let mut out: Vec<Option<Result<Value, String>>> = vec![None; indices.len()];
        // Tags whose address does not parse never reach the PLC.
        let valid: Vec<usize> = (0..indices.len())
            .filter(|&k| match &self.tags.get(indices[k]) {
                Some((Ok(_), _)) => true,
                Some((Err(e), _)) => {
                    out[k] = Some(Err(e.clone()));
                    false
                }
                None => {
                    out[k] = Some(Err(format!("no tag {}", indices[k])));
                    false
                }
            })
            .collect();
        let tag_ids: Vec<usize> = valid.iter().map(|&k| indices[k]).collect();
        let results = self.read_tags(&tag_ids, true).await?;
        for (k, r) in valid.into_iter().zip(results) {
            out[k] = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("not read".into())))
            .collect())
    }

    /// Reads valid tags `ids`; `retry` re-reads tags of failed merged ranges alone.
    async fn read_tags(&mut self, ids: &[usize], retry: bool) -> Result<Vec<Result<Value, String>>, S7Error> {
        let pdu = self.conn.as_ref().ok_or(S7Error::Closed)?.pdu;
        // A reconnect may grant another PDU size: plans are per size.
        if pdu != self.plans_pdu {
            self.plans.clear();
            self.plans_pdu = pdu;
        }
        let limits = Limits {
            pdu: pdu as usize,
            max_items: self.opts.max_items,
            merge_gap: 16,
        };
        let addrs: Vec<S7Address> = ids
            .iter()
            .map(|&i| *self.tags[i].0.as_ref().expect("only valid tags are planned"))
            .collect();
        if !self.plans.contains_key(ids) {
            let isolated = &self.isolated;
            let p = plan::plan(&addrs, |k| isolated[ids[k]], limits);
            if self.plans.len() >= 64 {
                self.plans.clear();
            }
            self.plans.insert(ids.to_vec(), p);
        }
        let p = &self.plans[ids];
        let mut bufs: Vec<Result<Vec<u8>, ItemError>> = p.ranges.iter().map(|r| Ok(vec![0; r.len])).collect();
        let conn = self.conn.as_mut().ok_or(S7Error::Closed)?;
        for req in &p.requests {
            let items: Vec<Item> = req.iter().map(|x| x.item).collect();
            let answers = conn.read(&items).await?;
            for (piece, answer) in req.iter().zip(answers) {
                match (answer, &mut bufs[piece.range]) {
                    (Ok(bytes), Ok(buf)) => buf[piece.offset..piece.offset + bytes.len()].copy_from_slice(&bytes),
                    (Err(e), slot) => *slot = Err(e),
                    (Ok(_), Err(_)) => {}
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut again = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let (r, off) = p.tags[k];
            let a = &addrs[k];
            match &bufs[r] {
                Ok(buf) => out.push(a.decode(&buf[off..off + a.len()], self.tags[id].1)),
                Err(e) if retry && !e.object_missing() && p.ranges[r].tags.len() > 1 => {
                    again.push(k);
                    out.push(Err(e.to_string()));
                }
                Err(e) => out.push(Err(format!("{a}: {e}"))),
            }
        }
        if !again.is_empty() {
            for &k in &again {
                self.isolated[ids[k]] = true;
            }
            self.plans.clear();
            let retry_ids: Vec<usize> = again.iter().map(|&k| ids[k]).collect();
            tracing::info!(
                tags = retry_ids.len(),
                "a merged S7 range failed; reading its tags one by one"
            );
            let second = Box::pin(self.read_tags(&retry_ids, false)).await?;
            for (k, r) in again.into_iter().zip(second) {
                out[k] = r;
            }
        }
        Ok(out)
    }

    /// Writes `value` to tag `index`: the inner error is the tag's (bad value,
    /// refused by the PLC), the outer one the connection's.
    pub async fn write(&mut self, index: usize, value: &Value) -> Result<Result<(), String>, S7Error> {
        let Some((Ok(a), _)) = self.tags.get(index).cloned() else {
            return Ok(Err(format!("tag {index} has no usable S7 address")));
        };
        if self.conn.is_none() {
            self.connect().await?;
        }
        // As for reads: any I/O error, here or in the read-before-write, drops the connection.
        let result = self.write_connected(&a, value).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn write_connected(&mut self, a: &S7Address, value: &Value) -> Result<Result<(), String>, S7Error> {
        // A BOOL array shares its bytes with other bits: read, modify, write.
        let current = if a.ty == address::S7Type::Bool && a.array {
            self.raw(a).await?
        } else {
            None
        };
        let bytes = match a.encode(value, current.as_deref()) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let item = Item {
            area: a.area,
            start: a.byte,
            len: bytes.len(),
        };
        let bit = a.is_bit().then_some(a.bit);
        let conn = self.conn.as_mut().ok_or(S7Error::Closed)?;
        Ok(conn.write(item, bit, &bytes).await?.map_err(|e| format!("{a}: {e}")))
    }

    /// The raw bytes of `a` as they are now.
    async fn raw(&mut self, a: &S7Address) -> Result<Option<Vec<u8>>, S7Error> {
        let conn = self.conn.as_mut().ok_or(S7Error::Closed)?;
        let item = Item {
            area: a.area,
            start: a.byte,
            len: a.len(),
        };
        Ok(conn.read(&[item]).await?.pop().and_then(Result::ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(last: bool, n: usize) -> Vec<u8> {
        let mut f = vec![3, 0, 0, 0, 0x02, 0xF0, if last { 0x80 } else { 0 }];
        f.extend(std::iter::repeat_n(0x55, n));
        let len = f.len() as u16;
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn fragments_are_joined_up_to_the_negotiated_pdu_and_no_further() {
        let mut r = Reassembly::new(240);
        assert_eq!(r.push(&fragment(false, 200)).expect("ok"), None);
        assert_eq!(r.push(&fragment(true, 104)).expect("ok").map(|p| p.len()), Some(304));
        let mut r = Reassembly::new(240);
        r.push(&fragment(false, 300)).expect("ok");
        assert!(matches!(
            r.push(&fragment(false, 5)),
            Err(S7Error::Oversized {
                max: 304,
                fragments: 2,
                pdu: 240
            })
        ));
        // Empty fragments that never end are cut off by count.
        let mut r = Reassembly::new(240);
        let err = (0..MAX_FRAGMENTS).find_map(|_| r.push(&fragment(false, 0)).err());
        assert!(
            matches!(
                err,
                Some(S7Error::Oversized {
                    fragments: MAX_FRAGMENTS,
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
