//! The smallest HTTP/1.1 client `spb-uplink command` needs: one POST to the
//! uplink's own listener (plain HTTP, as the listener speaks), blocking.
//!
//! Invariants: the answer is read whole up to 1 MiB and no longer than
//! `wait`; a URL other than `http://host:port` is refused by name.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest answer read.
const MAX_ANSWER: u64 = 1 << 20;

/// POSTs `body` (JSON) to `url` + `path` with a bearer `token` (none when
/// empty); the status and the body of the answer.
pub fn post(url: &str, path: &str, token: &str, body: &str, wait: Duration) -> Result<(u16, String), String> {
    let hostport = url
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| format!("'{url}': give the uplink's listener as http://HOST:PORT"))?;
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("a malformed answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("an answer without a status")?;
    Ok((status, body.to_string()))
}
