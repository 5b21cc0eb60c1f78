//! Sans-IO S7comm: the frames of the classic PUT/GET access path (TPKT,
//! COTP connection request and data, Setup Communication, ReadVar, WriteVar).
//! No sockets here: functions build request bytes and parse response bytes.
//!
//! Invariants:
//! - Every parser checks lengths before indexing: a short or lying frame is a
//!   [`CodecError`], never a panic (fuzzed by `fuzz_targets/s7_response`).
//! - A response is matched to its request by PDU reference; a mismatch is an
//!   error (the connection is out of step and must be reopened).
//! - Per-item return codes stay per item: one missing DB yields an
//!   [`ItemError`] for its items, the other items of the PDU are still good.

use thiserror::Error;

use super::address::Area;

/// A frame that cannot be understood; the connection must be reopened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("not a TPKT frame (first bytes {0:02x?})")]
    Tpkt(Vec<u8>),
    #[error("frame too short: {what} needs {need} bytes, got {got}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("unexpected COTP PDU type 0x{0:02x}")]
    Cotp(u8),
    #[error("the PLC refused the connection (COTP disconnect): check rack/slot or TSAPs")]
    Disconnect,
    #[error("not an S7 PDU (protocol id 0x{0:02x})")]
    Protocol(u8),
    #[error("unexpected S7 PDU type {0}")]
    PduType(u8),
    #[error("answer to PDU {got}, expected {expected}")]
    PduRef { expected: u16, got: u16 },
    #[error("the PLC refused the request: error class 0x{class:02x} code 0x{code:02x} ({})", header_error_text(*class, *code))]
    Refused { class: u8, code: u8 },
    #[error("answer is for function 0x{got:02x}, expected 0x{expected:02x}")]
    Function { expected: u8, got: u8 },
    #[error("answer has {got} items, expected {expected}")]
    ItemCount { expected: usize, got: usize },
    #[error("item {index}: {got} bytes returned, {expected} asked")]
    ItemLength { index: usize, expected: usize, got: usize },
}

/// One item the PLC refused (maps to BAD quality for its tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("S7 item error 0x{code:02x}: {text}", code = .0, text = item_error_text(*.0))]
pub struct ItemError(pub u8);

impl ItemError {
    /// The whole area (DB) is missing: no split of the item can help.
    pub fn object_missing(self) -> bool {
        self.0 == 0x0A
    }
}

fn item_error_text(code: u8) -> &'static str {
    match code {
        0x01 => "hardware fault",
        0x03 => "access denied (PUT/GET not allowed, or an optimized block)",
        0x05 => "address out of range",
        0x06 => "data type not supported",
        0x07 => "data type inconsistent",
        0x0A => "object does not exist (no such DB)",
        _ => "unknown item error",
    }
}

fn header_error_text(class: u8, code: u8) -> &'static str {
    match (class, code) {
        (0x81, 0x04) => "function not supported or context not allowed",
        (0x85, 0x00) => "PDU size exceeded",
        (0x87, 0x04) => "invalid item count",
        (0xD6, _) | (0xD2, _) => "protection: access denied",
        _ => "see the S7 error class table",
    }
}

const TPKT_VERSION: u8 = 3;
/// TPKT (4) + COTP DT (3).
const DATA_HEADER: usize = 7;
const ROSCTR_JOB: u8 = 1;
const ROSCTR_ACK: u8 = 2;
const ROSCTR_ACK_DATA: u8 = 3;
const FN_SETUP: u8 = 0xF0;
const FN_READ: u8 = 0x04;
const FN_WRITE: u8 = 0x05;
/// Bytes of a read or write response outside its items: S7 ack header (12) + function and count (2).
pub const RESPONSE_OVERHEAD: usize = 14;
/// Bytes of a read request outside its items: S7 job header (10) + function and count (2).
pub const REQUEST_OVERHEAD: usize = 12;
/// One S7ANY item in a request.
pub const ITEM_SPEC: usize = 12;
/// Return code, transport size and length before an item's data.
pub const ITEM_HEADER: usize = 4;

/// The total length of the TPKT frame starting `buf`, once its header is in.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if buf[0] != TPKT_VERSION {
        return Err(CodecError::Tpkt(buf[..4].to_vec()));
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len < DATA_HEADER - 2 {
        return Err(CodecError::Tpkt(buf[..4].to_vec()));
    }
    Ok(Some(len))
}

fn tpkt(body: &[u8]) -> Vec<u8> {
    let len = (body.len() + 4) as u16;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&[TPKT_VERSION, 0, (len >> 8) as u8, len as u8]);
    out.extend_from_slice(body);
    out
}

/// COTP connection request (class 0, TPDU size 1024) with the two TSAPs.
pub fn connect_request(local_tsap: u16, remote_tsap: u16) -> Vec<u8> {
    let [lh, ll] = local_tsap.to_be_bytes();
    let [rh, rl] = remote_tsap.to_be_bytes();
    tpkt(&[
        0x11, // length indicator: 17 bytes follow
        0xE0, // CR
        0x00, 0x00, // destination reference
        0x00, 0x01, // source reference
        0x00, // class 0
        0xC0, 0x01, 0x0A, // TPDU size 2^10
        0xC1, 0x02, lh, ll, // calling (local) TSAP
        0xC2, 0x02, rh, rl, // called (remote) TSAP
    ])
}

/// Checks a COTP connection confirm.
pub fn parse_connect_confirm(frame: &[u8]) -> Result<(), CodecError> {
    need(frame, 6, "COTP CC")?;
    match frame[5] {
        0xD0 => Ok(()),
        0x80 => Err(CodecError::Disconnect),
        t => Err(CodecError::Cotp(t)),
    }
}

fn need(b: &[u8], n: usize, what: &'static str) -> Result<(), CodecError> {
    if b.len() < n {
        Err(CodecError::Short {
            what,
            need: n,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

/// The S7 PDU inside a COTP data frame, and whether it is the last fragment.
pub fn s7_payload(frame: &[u8]) -> Result<(&[u8], bool), CodecError> {
    need(frame, DATA_HEADER, "COTP DT")?;
    match frame[5] {
        0xF0 => Ok((&frame[DATA_HEADER..], frame[6] & 0x80 != 0)),
        0x80 => Err(CodecError::Disconnect),
        t => Err(CodecError::Cotp(t)),
    }
}

fn job(pdu_ref: u16, param: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(3 + 10 + param.len() + data.len());
    body.extend_from_slice(&[0x02, 0xF0, 0x80]); // COTP DT, last data unit
    body.extend_from_slice(&[0x32, ROSCTR_JOB, 0, 0]);
    body.extend_from_slice(&pdu_ref.to_be_bytes());
    body.extend_from_slice(&(param.len() as u16).to_be_bytes());
    body.extend_from_slice(&(data.len() as u16).to_be_bytes());
    body.extend_from_slice(param);
    body.extend_from_slice(data);
    tpkt(&body)
}

/// Setup Communication asking for `pdu_size` and one job at a time each way.
pub fn setup_request(pdu_ref: u16, pdu_size: u16) -> Vec<u8> {
    let [h, l] = pdu_size.to_be_bytes();
    job(pdu_ref, &[FN_SETUP, 0x00, 0x00, 0x01, 0x00, 0x01, h, l], &[])
}

/// A parsed ack: parameter and data sections.
struct Ack<'a> {
    param: &'a [u8],
    data: &'a [u8],
}

fn parse_ack(pdu: &[u8], pdu_ref: u16) -> Result<Ack<'_>, CodecError> {
    need(pdu, 10, "S7 header")?;
    if pdu[0] != 0x32 {
        return Err(CodecError::Protocol(pdu[0]));
    }
    let rosctr = pdu[1];
    let header = match rosctr {
        ROSCTR_ACK_DATA | ROSCTR_ACK => 12,
        t => return Err(CodecError::PduType(t)),
    };
    need(pdu, header, "S7 ack header")?;
    let got = u16::from_be_bytes([pdu[4], pdu[5]]);
    if got != pdu_ref {
        return Err(CodecError::PduRef { expected: pdu_ref, got });
    }
    let (class, code) = (pdu[10], pdu[11]);
    if class != 0 || code != 0 {
        return Err(CodecError::Refused { class, code });
    }
    let plen = u16::from_be_bytes([pdu[6], pdu[7]]) as usize;
    let dlen = u16::from_be_bytes([pdu[8], pdu[9]]) as usize;
    need(pdu, header + plen + dlen, "S7 parameter and data")?;
    Ok(Ack {
        param: &pdu[header..header + plen],
        data: &pdu[header + plen..header + plen + dlen],
    })
}

/// The PDU size the PLC granted.
pub fn parse_setup(pdu: &[u8], pdu_ref: u16) -> Result<u16, CodecError> {
    let ack = parse_ack(pdu, pdu_ref)?;
    need(ack.param, 8, "setup parameters")?;
    if ack.param[0] != FN_SETUP {
        return Err(CodecError::Function {
            expected: FN_SETUP,
            got: ack.param[0],
        });
    }
    Ok(u16::from_be_bytes([ack.param[6], ack.param[7]]))
}

/// One S7ANY item: `len` bytes from `start` (timers/counters: `len / 2`
/// elements from number `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub area: Area,
    pub start: u32,
    pub len: usize,
}

impl Item {
    fn spec(&self, bit: Option<u8>) -> [u8; ITEM_SPEC] {
        let (transport, count, address) = match (self.area, bit) {
            (Area::Timers, _) => (0x1D, self.len / 2, self.start),
            (Area::Counters, _) => (0x1C, self.len / 2, self.start),
            (_, Some(b)) => (0x01, 1, self.start * 8 + b as u32),
            (_, None) => (0x02, self.len, self.start * 8),
        };
        let [ch, cl] = (count as u16).to_be_bytes();
        let [dh, dl] = self.area.db().to_be_bytes();
        let [_, a2, a1, a0] = address.to_be_bytes();
        [
            0x12,
            0x0A,
            0x10,
            transport,
            ch,
            cl,
            dh,
            dl,
            self.area.code(),
            a2,
            a1,
            a0,
        ]
    }

    /// Bytes this item adds to a read response, without the padding.
    pub fn response_len(&self) -> usize {
        ITEM_HEADER + self.len
    }
}

/// ReadVar for `items`.
pub fn read_request(pdu_ref: u16, items: &[Item]) -> Vec<u8> {
    let mut param = Vec::with_capacity(2 + items.len() * ITEM_SPEC);
    param.extend_from_slice(&[FN_READ, items.len() as u8]);
    for it in items {
        param.extend_from_slice(&it.spec(None));
    }
    job(pdu_ref, &param, &[])
}

/// Bytes a read request for `n` items takes.
pub fn read_request_len(n: usize) -> usize {
    REQUEST_OVERHEAD + n * ITEM_SPEC
}

/// The data of each item, or the PLC's error for it.
pub fn parse_read(pdu: &[u8], pdu_ref: u16, items: &[Item]) -> Result<Vec<Result<Vec<u8>, ItemError>>, CodecError> {
    let ack = parse_ack(pdu, pdu_ref)?;
    need(ack.param, 2, "read parameters")?;
    if ack.param[0] != FN_READ {
        return Err(CodecError::Function {
            expected: FN_READ,
            got: ack.param[0],
        });
    }
    if ack.param[1] as usize != items.len() {
        return Err(CodecError::ItemCount {
            expected: items.len(),
            got: ack.param[1] as usize,
        });
    }
    let mut data = ack.data;
    let mut out = Vec::with_capacity(items.len());
    for (index, it) in items.iter().enumerate() {
        need(data, ITEM_HEADER, "read item header")?;
        let (code, transport) = (data[0], data[1]);
        let raw_len = u16::from_be_bytes([data[2], data[3]]) as usize;
        // Lengths are in bits for BIT/BYTE/INT transports, in bytes for the others.
        let len = match transport {
            0x03..=0x05 => raw_len.div_ceil(8),
            _ => raw_len,
        };
        if code != 0xFF {
            out.push(Err(ItemError(code)));
            // A refused item carries no data, whatever its length field says
            // (Snap7's server repeats the asked length, CPUs send 0).
            data = &data[ITEM_HEADER..];
            continue;
        }
        need(data, ITEM_HEADER + len, "read item data")?;
        if len != it.len {
            return Err(CodecError::ItemLength {
                index,
                expected: it.len,
                got: len,
            });
        }
        out.push(Ok(data[ITEM_HEADER..ITEM_HEADER + len].to_vec()));
        data = skip_fill(&data[ITEM_HEADER + len..], len, index + 1 < items.len());
    }
    Ok(out)
}

/// Items are padded to an even length, except the last.
fn skip_fill(data: &[u8], len: usize, more: bool) -> &[u8] {
    if more && len % 2 == 1 && !data.is_empty() {
        &data[1..]
    } else {
        data
    }
}

/// WriteVar of one item. `bit` writes a single bit (`bytes` = [0|1]) so that
/// the neighbouring bits of the byte are left alone.
pub fn write_request(pdu_ref: u16, item: &Item, bit: Option<u8>, bytes: &[u8]) -> Vec<u8> {
    let mut param = Vec::with_capacity(2 + ITEM_SPEC);
    param.extend_from_slice(&[FN_WRITE, 1]);
    param.extend_from_slice(&item.spec(bit));
    let mut data = Vec::with_capacity(ITEM_HEADER + bytes.len());
    let (transport, len) = match (item.area, bit) {
        (Area::Timers | Area::Counters, _) => (0x09, bytes.len()),
        (_, Some(_)) => (0x03, 1),
        (_, None) => (0x04, bytes.len() * 8),
    };
    data.extend_from_slice(&[0x00, transport]);
    data.extend_from_slice(&(len as u16).to_be_bytes());
    data.extend_from_slice(bytes);
    job(pdu_ref, &param, &data)
}

/// Bytes a one-item write request of `n` data bytes takes.
pub fn write_request_len(n: usize) -> usize {
    REQUEST_OVERHEAD + ITEM_SPEC + ITEM_HEADER + n
}

/// The PLC's answer to a one-item write.
pub fn parse_write(pdu: &[u8], pdu_ref: u16) -> Result<Result<(), ItemError>, CodecError> {
    let ack = parse_ack(pdu, pdu_ref)?;
    need(ack.param, 2, "write parameters")?;
    if ack.param[0] != FN_WRITE {
        return Err(CodecError::Function {
            expected: FN_WRITE,
            got: ack.param[0],
        });
    }
    need(ack.data, 1, "write item result")?;
    Ok(match ack.data[0] {
        0xFF => Ok(()),
        code => Err(ItemError(code)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request_carries_tpdu_size_and_both_tsaps() {
        assert_eq!(
            connect_request(0x0100, 0x0102),
            [
                3, 0, 0, 22, // TPKT, 22 bytes
                0x11, 0xE0, 0, 0, 0, 1, 0, // CR, refs, class 0
                0xC0, 1, 0x0A, // TPDU size 1024
                0xC1, 2, 0x01, 0x00, // local TSAP
                0xC2, 2, 0x01, 0x02, // remote TSAP: PG, rack 0, slot 2
            ]
        );
    }

    #[test]
    fn read_request_encodes_s7any_items_with_bit_addresses() {
        let items = [
            Item {
                area: Area::Db(1),
                start: 2,
                len: 4,
            },
            Item {
                area: Area::Merker,
                start: 10,
                len: 2,
            },
        ];
        let r = read_request(7, &items);
        assert_eq!(r.len(), 7 + read_request_len(2));
        assert_eq!(
            &r[7..],
            [
                0x32, 1, 0, 0, 0, 7, 0, 26, 0, 0, // job, ref 7, 26 param bytes, no data
                4, 2, // ReadVar, 2 items
                0x12, 0x0A, 0x10, 0x02, 0, 4, 0, 1, 0x84, 0, 0, 16, // DB1, 4 bytes from byte 2 (bit 16)
                0x12, 0x0A, 0x10, 0x02, 0, 2, 0, 0, 0x83, 0, 0, 80, // M, 2 bytes from byte 10
            ]
        );
    }

    #[test]
    fn read_response_keeps_item_errors_per_item_and_skips_fill_bytes() {
        let items = [
            Item {
                area: Area::Db(1),
                start: 0,
                len: 1,
            },
            Item {
                area: Area::Db(9),
                start: 0,
                len: 2,
            },
            Item {
                area: Area::Db(1),
                start: 4,
                len: 2,
            },
        ];
        let pdu = [
            0x32, 3, 0, 0, 0, 5, 0, 2, 0, 16, 0, 0, // ack data, ref 5, 2 param, 16 data
            4, 3, // ReadVar, 3 items
            0xFF, 4, 0, 8, 0xAB, 0x00, // 1 byte (8 bits) + fill
            0x0A, 0, 0, 0, // DB9 does not exist
            0xFF, 4, 0, 16, 0x12, 0x34, // 2 bytes
            0x00, // (trailing byte some servers send; ignored)
        ];
        let r = parse_read(&pdu[..pdu.len() - 1], 5, &items).unwrap();
        assert_eq!(r, vec![Ok(vec![0xAB]), Err(ItemError(0x0A)), Ok(vec![0x12, 0x34])]);
    }

    #[test]
    fn a_refused_item_carries_no_data_even_when_its_length_says_so() {
        // Snap7's server: `0a 00 00 04` with no data bytes behind it.
        let items = [
            Item {
                area: Area::Db(1),
                start: 0,
                len: 4,
            },
            Item {
                area: Area::Db(9),
                start: 0,
                len: 4,
            },
            Item {
                area: Area::Db(3),
                start: 56,
                len: 10,
            },
        ];
        let pdu = [
            0x32, 3, 0, 0, 0, 2, 0, 2, 0, 16, 0, 0, 4, 3, // ack data, 3 items
            0xFF, 4, 0, 32, 0, 0, 0, 42, // 4 bytes
            0x0A, 0, 0, 4, // no DB9; length 4, no data
            0x05, 0, 0, 4, // out of range; length 4, no data
        ];
        let r = parse_read(&pdu, 2, &items).unwrap();
        assert_eq!(
            r,
            vec![Ok(vec![0, 0, 0, 42]), Err(ItemError(0x0A)), Err(ItemError(0x05))]
        );
    }

    #[test]
    fn a_header_error_or_wrong_reference_is_a_connection_error() {
        let refused = [0x32, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0x85, 0x00];
        assert_eq!(
            parse_read(&refused, 1, &[]),
            Err(CodecError::Refused { class: 0x85, code: 0 })
        );
        let ok = [0x32, 3, 0, 0, 0, 2, 0, 2, 0, 0, 0, 0, 4, 0];
        assert_eq!(parse_read(&ok, 1, &[]), Err(CodecError::PduRef { expected: 1, got: 2 }));
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        let pdu = [0x32, 3, 0, 0, 0, 1, 0, 2, 0, 10, 0, 0, 4, 1, 0xFF, 4, 0, 64];
        let items = [Item {
            area: Area::Db(1),
            start: 0,
            len: 8,
        }];
        assert!(matches!(parse_read(&pdu, 1, &items), Err(CodecError::Short { .. })));
        for n in 0..pdu.len() {
            let _ = parse_read(&pdu[..n], 1, &items);
            let _ = parse_setup(&pdu[..n], 1);
            let _ = parse_write(&pdu[..n], 1);
        }
    }

    #[test]
    fn bit_write_uses_the_bit_transport_and_bit_address() {
        let item = Item {
            area: Area::Outputs,
            start: 1,
            len: 1,
        };
        let w = write_request(3, &item, Some(7), &[1]);
        assert_eq!(
            &w[17..],
            [
                5, 1, // WriteVar, 1 item
                0x12, 0x0A, 0x10, 0x01, 0, 1, 0, 0, 0x82, 0, 0, 15, // BIT, Q, bit address 1*8+7
                0, 3, 0, 1, 1, // BIT transport, 1 bit, value 1
            ]
        );
    }

    #[test]
    fn setup_answer_gives_the_negotiated_pdu() {
        let pdu = [0x32, 3, 0, 0, 0, 9, 0, 8, 0, 0, 0, 0, 0xF0, 0, 0, 1, 0, 1, 0x01, 0xE0];
        assert_eq!(parse_setup(&pdu, 9), Ok(480));
    }
}
