//! Whatever a local client sends, the telemetry endpoint answers with one
//! well-formed HTTP/1.1 response and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::telemetry::http::{respond, Exposition};

struct Fixed;

impl Exposition for Fixed {
    fn ready(&self) -> (bool, String) {
        (false, "not ready: fuzz\n".into())
    }
    fn metrics(&self) -> String {
        "spb_fuzz 1\n".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let r = respond(&data[..data.len().min(8192)], &Fixed);
    let text = String::from_utf8(r).expect("responses are text");
    assert!(text.starts_with("HTTP/1.1 "));
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("a length");
    assert_eq!(len, body.len());
});
