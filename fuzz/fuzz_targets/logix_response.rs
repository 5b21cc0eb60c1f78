//! A Logix controller's answers are outside input that rust-ethernet-ip
//! parses: through our wrapper, against a peer that answers every request
//! with fuzzer-chosen bodies (in a well-formed or lying EtherNet/IP
//! header), a read ends in values, per-tag errors or a connection error
//! within the deadline, never a panic or an abort. The encapsulation
//! length is 16 bits, so no answer can make the crate allocate more than
//! 64 KiB at once.
#![no_main]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spb::plc::logix::LogixDriver;
use spb::sparkplug::DataType;

/// The answers for the current input: (status, declared length or None for
/// the true one, body).
static ANSWERS: Mutex<Vec<(u32, Option<u16>, Vec<u8>)>> = Mutex::new(Vec::new());
static PORT: OnceLock<u16> = OnceLock::new();

fn peer() -> u16 {
    *PORT.get_or_init(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                std::thread::spawn(move || {
                    let mut n = 0;
                    loop {
                        let mut head = [0u8; 24];
                        if s.read_exact(&mut head).is_err() {
                            return;
                        }
                        let len = u16::from_le_bytes([head[2], head[3]]) as usize;
                        let mut body = vec![0u8; len];
                        if s.read_exact(&mut body).is_err() {
                            return;
                        }
                        let answer = ANSWERS.lock().expect("lock").get(n).cloned();
                        let Some((status, declared, data)) = answer else { return };
                        n += 1;
                        let mut reply = head;
                        let dl = declared.unwrap_or(data.len() as u16);
                        reply[2..4].copy_from_slice(&dl.to_le_bytes());
                        if n == 1 && head[4..8] == [0; 4] {
                            reply[4..8].copy_from_slice(&[1, 0, 0, 0]); // a session handle
                        }
                        reply[8..12].copy_from_slice(&status.to_le_bytes());
                        if s.write_all(&reply).and_then(|()| s.write_all(&data)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    })
}

fuzz_target!(|data: &[u8]| {
    // Answers: 1 byte flags, 2 bytes length, then the body.
    let mut answers = Vec::new();
    let mut rest = data;
    while let [flags, hi, lo, tail @ ..] = rest {
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (body, next) = tail.split_at(n);
        let status = if flags & 0x01 != 0 { u32::from(*flags) } else { 0 };
        let declared = (flags & 0x02 != 0).then(|| u16::from(*hi) << 8 | u16::from(*lo));
        answers.push((status, declared, body.to_vec()));
        rest = next;
    }
    *ANSWERS.lock().expect("lock") = answers;
    let port = peer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut d = LogixDriver::new(
        format!("127.0.0.1:{port}"),
        None,
        4,
        [
            ("Counter".to_string(), DataType::Int32),
            ("Temps[0]{4}".to_string(), DataType::FloatArray),
            ("Name".to_string(), DataType::String),
            ("Flags.3".to_string(), DataType::Boolean),
        ],
    );
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_millis(200), d.read(&[0, 1, 2, 3])).await;
    });
});
