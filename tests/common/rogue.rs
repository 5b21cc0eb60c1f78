//! Rogue PLC peers: servers that speak just enough of a protocol to be
//! connected to, then answer as a broken or hostile device would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// An S7 server that accepts the COTP connection and Setup Communication
/// (granting a 240-byte PDU), then answers every request with COTP data
/// fragments that never carry the last-unit bit, as long as the client
/// reads them. Counts the bytes it managed to send.
pub struct EndlessS7 {
    pub port: u16,
    pub sent: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Accepts connections on a free loopback port until `stop`, each served
/// by `handle` on a thread of its own.
fn serve(handle: impl Fn(TcpStream, Arc<AtomicBool>) + Send + Sync + 'static) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let handle = Arc::new(handle);
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || loop {
        if st.load(Relaxed) {
            return;
        }
        let Ok((s, _)) = listener.accept() else {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        };
        let _ = s.set_nonblocking(false);
        let (h, st) = (handle.clone(), st.clone());
        std::thread::spawn(move || h(s, st));
    });
    (port, stop)
}

fn read_tpkt(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn tpkt(body: &[u8]) -> Vec<u8> {
    let len = (body.len() + 4) as u16;
    let mut out = vec![3, 0, (len >> 8) as u8, len as u8];
    out.extend_from_slice(body);
    out
}

impl EndlessS7 {
    pub fn start() -> EndlessS7 {
        let sent = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (s2, c2) = (sent.clone(), connections.clone());
        let (port, stop) = serve(move |mut s, stop| {
            c2.fetch_add(1, Relaxed);
            let sent = s2.clone();
            // COTP connection request → connection confirm.
            if read_tpkt(&mut s).is_none() {
                return;
            }
            let _ = s.write_all(&tpkt(&[
                0x11, 0xD0, 0, 1, 0, 1, 0, 0xC0, 1, 0x0A, 0xC1, 2, 1, 0, 0xC2, 2, 1, 2,
            ]));
            // Setup Communication → ack data granting 240 bytes.
            let Some(req) = read_tpkt(&mut s) else { return };
            let pdu_ref = [req.get(7).copied().unwrap_or(0), req.get(8).copied().unwrap_or(0)];
            let mut ack = vec![
                0x02, 0xF0, 0x80, 0x32, 0x03, 0, 0, pdu_ref[0], pdu_ref[1], 0, 8, 0, 0, 0, 0,
            ];
            ack.extend_from_slice(&[0xF0, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0xF0]);
            let _ = s.write_all(&tpkt(&ack));
            // Every request: fragments of 1,000 bytes, never the last one.
            while read_tpkt(&mut s).is_some() {
                let mut frag = vec![0x02, 0xF0, 0x00];
                frag.extend(std::iter::repeat_n(0x55, 1_000));
                let frame = tpkt(&frag);
                while !stop.load(Relaxed) {
                    if s.write_all(&frame).is_err() {
                        return;
                    }
                    sent.fetch_add(frame.len() as u64, Relaxed);
                }
            }
        });
        EndlessS7 {
            port,
            sent,
            connections,
            stop,
        }
    }
}

impl Drop for EndlessS7 {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// An EtherNet/IP server that registers a session, then answers every
/// request with a header announcing 65,535 bytes and that many bytes of
/// garbage: the most one answer can make a client hold.
pub struct GarbageLogix {
    pub port: u16,
    pub answers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl GarbageLogix {
    pub fn start() -> GarbageLogix {
        let answers = Arc::new(AtomicU64::new(0));
        let a2 = answers.clone();
        let (port, stop) = serve(move |mut s, stop| {
            let answers = a2.clone();
            let mut first = true;
            while !stop.load(Relaxed) {
                let mut head = [0u8; 24];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                let len = u16::from_le_bytes([head[2], head[3]]) as usize;
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let mut reply = head;
                let body: Vec<u8> = if first {
                    // RegisterSession: protocol version 1, no options, a handle.
                    reply[4..8].copy_from_slice(&[7, 0, 0, 0]);
                    vec![1, 0, 0, 0]
                } else {
                    (0..65_535u32)
                        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                        .collect()
                };
                first = false;
                reply[2..4].copy_from_slice(&(body.len() as u16).to_le_bytes());
                if s.write_all(&reply).and_then(|()| s.write_all(&body)).is_err() {
                    return;
                }
                answers.fetch_add(1, Relaxed);
            }
        });
        GarbageLogix { port, answers, stop }
    }
}

impl Drop for GarbageLogix {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
