//! A minimal HTTP/1.1 endpoint for `/health`, `/ready` and `/metrics`, and
//! the POST routes a program adds (the uplink's `/commands`).
//!
//! Why not hyper: three GET routes and one POST do not justify its weight
//! on the board binary. Invariants: one request per connection
//! (`Connection: close`), request heads larger than 8 KiB are dropped, a
//! request head must arrive within [`HEADER_TIMEOUT`] and the whole
//! exchange end within the program's exchange timeout (5 s by default); a
//! POST needs a `Content-Length` of at most [`MAX_POST_BODY`] (else 411 or
//! 413, before the body is read); any other path is 404, any other method
//! 405. The GET routes only read the shared telemetry.
//!
//! It cannot take the process down with it: at most [`MAX_CONNECTIONS`]
//! are served at once (one more is told `503` and closed at once, so a
//! flood of clients holds few descriptors), and an accept that fails (out
//! of descriptors) backs off from 50 ms to 1 s instead of spinning.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest POST body taken.
pub const MAX_POST_BODY: usize = 16 * 1024;

/// A POST route's answer, when it is ready: status and JSON body.
pub type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = (u16, String)> + Send>>;

use super::metrics::Telemetry;

/// What a program exposes on the three routes.
pub trait Exposition: Send + Sync + 'static {
    /// `/ready`: whether ready, and the body (a first line, then details).
    fn ready(&self) -> (bool, String);
    /// `/metrics`: the Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `POST path` with the `Authorization: Bearer` token, the name of the
    /// client certificate a TLS listener verified, and the body; `None`: no
    /// such route (404).
    fn post(
        &self,
        _path: &str,
        _bearer: Option<String>,
        _certificate: Option<String>,
        _body: Vec<u8>,
    ) -> Option<Answer> {
        None
    }
    /// How long one exchange may take in all (POST routes may wait).
    fn exchange_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// The gateway's telemetry and its one-line status.
pub struct GatewayExposition {
    pub telemetry: Arc<Telemetry>,
    pub status: Arc<std::sync::Mutex<String>>,
}

impl Exposition for GatewayExposition {
    fn ready(&self) -> (bool, String) {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let store = self.telemetry.store_summary(crate::clock::now_ms());
        let ready = self.telemetry.ready();
        let word = if ready { "ready" } else { "not ready" };
        (ready, format!("{word}: {s}\n{store}\n"))
    }

    fn metrics(&self) -> String {
        self.telemetry.render()
    }
}

/// Serves plain HTTP for ever (module invariants).
pub async fn serve<E: Exposition>(listener: TcpListener, exposition: Arc<E>) {
    serve_with(listener, exposition, |s| async move { Ok((s, None)) }).await
}

/// Serves for ever, each connection first through `handshake` (e.g.
/// TLS), which gives the stream to speak HTTP on and the verified client
/// certificate's name; the handshake counts toward the exchange's time.
pub async fn serve_with<E, S, F, Fut>(listener: TcpListener, exposition: Arc<E>, handshake: F)
where
    E: Exposition,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<(S, Option<String>)>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(50);
                stream
            }
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "telemetry: accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Answered and closed here, without a task: a flood holds no
            // descriptor beyond this line.
            let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";
            let _ = stream.try_write(busy);
            drop(stream);
            continue;
        };
        let e = exposition.clone();
        let shake = handshake(stream);
        tokio::spawn(async move {
            let exchange = async {
                // The handshake, like the request head, must come at once.
                let (stream, certificate) = tokio::time::timeout(HEADER_TIMEOUT, shake)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                handle(stream, certificate, &*e).await
            };
            let _ = tokio::time::timeout(e.exchange_timeout(), exchange).await;
            drop(permit);
        });
    }
}

async fn handle<E: Exposition, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    certificate: Option<String>,
    e: &E,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    let head = async {
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            if n == buf.len() {
                return Ok(false);
            }
            let read = stream.read(&mut buf[n..]).await?;
            if read == 0 {
                return Ok(false);
            }
            n += read;
        }
        Ok::<bool, std::io::Error>(true)
    };
    if !matches!(tokio::time::timeout(HEADER_TIMEOUT, head).await, Ok(Ok(true))) {
        return Ok(());
    }
    if buf.starts_with(b"POST ") {
        let resp = post(&mut stream, &buf[..n], certificate, e).await?;
        stream.write_all(&resp).await?;
        return stream.shutdown().await;
    }
    let resp = respond(&buf[..n], e);
    stream.write_all(&resp).await?;
    stream.shutdown().await
}

/// A POST: the body (bounded by its declared length), then the route.
async fn post<E: Exposition, S: AsyncRead + Unpin>(
    stream: &mut S,
    got: &[u8],
    certificate: Option<String>,
    e: &E,
) -> std::io::Result<Vec<u8>> {
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&got[..end]);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let json = |code: u16, msg: &str| response(code, "application/json", &format!("{{\"error\":{msg:?}}}\n"));
    let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) else {
        return Ok(json(411, "a Content-Length is required"));
    };
    if len > MAX_POST_BODY {
        return Ok(json(413, &format!("the body is over {MAX_POST_BODY} bytes")));
    }
    let mut body = got[end..].to_vec();
    body.truncate(len);
    // The body, like the head, must come at once: a slow sender holds no slot.
    let read_body = async {
        while body.len() < len {
            let mut chunk = vec![0u8; len - body.len()];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(false);
            }
            body.extend_from_slice(&chunk[..read]);
        }
        Ok::<bool, std::io::Error>(true)
    };
    if !matches!(tokio::time::timeout(HEADER_TIMEOUT, read_body).await, Ok(Ok(true))) {
        return Ok(json(400, "the body did not arrive whole within 2 s"));
    }
    let bearer = header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
    });
    Ok(match e.post(&path, bearer, certificate, body) {
        Some(answer) => {
            let (code, body) = answer.await;
            response(code, "application/json", &body)
        }
        None => json(404, "not found: POST /commands"),
    })
}

/// A whole response.
fn response(code: u16, ctype: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The whole response to a request head (sans-IO: any bytes in, a
/// well-formed HTTP/1.1 response out).
pub fn respond<E: Exposition>(head: &[u8], e: &E) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", "/health") => (200, "text/plain", "ok\n".to_string()),
        ("GET", "/ready") => match e.ready() {
            (true, body) => (200, "text/plain", body),
            (false, body) => (503, "text/plain", body),
        },
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", e.metrics()),
        ("GET", _) => (
            404,
            "text/plain",
            "not found: try /health, /ready, /metrics\n".to_string(),
        ),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    response(code, ctype, &body)
}
