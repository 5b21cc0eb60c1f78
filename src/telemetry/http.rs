//! A minimal HTTP/1.1 endpoint for `/health`, `/ready` and `/metrics`.
//!
//! Why not hyper: three GET routes do not justify its weight on the board
//! binary. Invariants: one request per connection (`Connection: close`),
//! requests larger than 8 KiB or slower than 5 s are dropped, any other path is
//! 404, any other method 405. It only reads the shared telemetry.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Telemetry;

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, status: Arc<std::sync::Mutex<String>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let t = telemetry.clone();
        let s = status.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &t, &s)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, t: &Telemetry, status: &std::sync::Mutex<String>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            return Ok(());
        }
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Ok(());
        }
        n += read;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", "/health") => (200, "text/plain", "ok\n".to_string()),
        ("GET", "/ready") => {
            let s = status.lock().map(|s| s.clone()).unwrap_or_default();
            let store = t.store_summary(crate::plc::poller::now_ms());
            if t.ready() {
                (200, "text/plain", format!("ready: {s}\n{store}\n"))
            } else {
                (503, "text/plain", format!("not ready: {s}\n{store}\n"))
            }
        }
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", t.render()),
        ("GET", _) => (
            404,
            "text/plain",
            "not found: try /health, /ready, /metrics\n".to_string(),
        ),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
