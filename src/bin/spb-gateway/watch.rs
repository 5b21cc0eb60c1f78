//! `spb-gateway watch`: a decoded live view of the Sparkplug traffic on a
//! broker, for technicians. It is passive: it tracks births with a
//! [`HostSession`] to resolve aliases and datatypes, but publishes nothing
//! (no STATE, no rebirth requests).
//!
//! Output: one line per message, then one indented line per metric, e.g.
//! `DDATA Plant1/gw-01/press seq 7` / `  Temperature (alias 1) Float = 21.5 @…`.

use std::io::Write;
use std::time::Duration;

use spb::clock::now_ms;
use spb::config::{MqttConfig, ServerConfig};
use spb::mqtt::link::{Link, LinkEvent};
use spb::mqtt::{MqttError, Server};
use spb::sparkplug::host::{HostConfig, HostEvent, HostLimits, HostSession};
use spb::sparkplug::{pretty, QoS};

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub server: ServerConfig,
    pub filter: String,
    /// Stop after this many messages (0 = never).
    pub count: u64,
    /// Stop after this long (None = never).
    pub duration: Option<Duration>,
    /// Ask nodes whose birth we have not seen for one (publishes NCMD Rebirth).
    pub rebirth: bool,
}

/// Text from the broker as a terminal may show it: control characters
/// (an escape sequence in a forged metric name, a carriage return that
/// overwrites a line) are written as `\u{..}`; line breaks stay.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Prints what the host session made of a message, terminal-safe.
fn print_events(
    out: &mut impl Write,
    events: Vec<HostEvent>,
    waiting: &mut std::collections::HashSet<String>,
    rebirth: bool,
) {
    let mut text = Vec::new();
    write_events(&mut text, events, waiting, rebirth);
    let _ = out.write_all(terminal_safe(&String::from_utf8_lossy(&text)).as_bytes());
}

fn write_events(
    out: &mut impl Write,
    events: Vec<HostEvent>,
    waiting: &mut std::collections::HashSet<String>,
    rebirth: bool,
) {
    for ev in events {
        if let HostEvent::Quarantine { topic, reason, .. } = &ev {
            // DATA of a node whose birth happened before we subscribed: say so
            // once per node rather than once per message.
            if reason.contains("before NBIRTH") {
                let parts: Vec<&str> = topic.split('/').collect();
                let node = format!("{}/{}", parts.get(1).unwrap_or(&""), parts.get(3).unwrap_or(&""));
                if waiting.insert(node.clone()) {
                    let what = if rebirth {
                        "requesting a rebirth"
                    } else {
                        "restart the node or run watch with --rebirth"
                    };
                    let _ = writeln!(
                        out,
                        "… {node}: its birth came before we subscribed, DATA cannot be decoded yet ({what})"
                    );
                }
                continue;
            }
        }
        if let HostEvent::NodeBirth { group, node, .. } = &ev {
            waiting.remove(&format!("{group}/{node}"));
        }
        let _ = match ev {
            HostEvent::NodeBirth {
                group,
                node,
                bdseq,
                metrics,
                ..
            } => writeln!(out, "NBIRTH {group}/{node} bdSeq {bdseq}, {} metrics", metrics.len()).and_then(|_| {
                metrics
                    .iter()
                    .try_for_each(|m| writeln!(out, "  {}", pretty::metric_line(m)))
            }),
            HostEvent::DeviceBirth {
                group,
                node,
                device,
                metrics,
                ..
            } => writeln!(out, "DBIRTH {group}/{node}/{device}, {} metrics", metrics.len()).and_then(|_| {
                metrics
                    .iter()
                    .try_for_each(|m| writeln!(out, "  {}", pretty::metric_line(m)))
            }),
            HostEvent::Data {
                group,
                node,
                device,
                seq,
                metrics,
                names,
                ..
            } => {
                let (kind, path) = match &device {
                    Some(d) => ("DDATA", format!("{group}/{node}/{d}")),
                    None => ("NDATA", format!("{group}/{node}")),
                };
                writeln!(out, "{kind} {path} seq {seq}").and_then(|_| {
                    metrics
                        .iter()
                        .zip(names)
                        .try_for_each(|(m, n)| writeln!(out, "  {}", pretty::metric_line_named(m, &n)))
                })
            }
            HostEvent::NodeDeath {
                group,
                node,
                cause,
                stale,
                ..
            } => {
                writeln!(out, "NDEATH {group}/{node} ({cause:?}): {} metrics STALE", stale.len())
            }
            HostEvent::DeviceDeath {
                group,
                node,
                device,
                stale,
                ..
            } => {
                writeln!(out, "DDEATH {group}/{node}/{device}: {} metrics STALE", stale.len())
            }
            HostEvent::DeathIgnored { group, node, bdseq } => {
                writeln!(
                    out,
                    "NDEATH {group}/{node} bdSeq {bdseq:?} ignored: does not match the current birth"
                )
            }
            HostEvent::SequenceError {
                group,
                node,
                expected,
                got,
            } => {
                writeln!(out, "!! {group}/{node}: expected seq {expected}, got {got}")
            }
            HostEvent::Quarantine { topic, reason, .. } => writeln!(out, "!! {topic}: {reason}"),
            HostEvent::Command { seen, by_this_host } => {
                let kind = if seen.device.is_some() { "DCMD" } else { "NCMD" };
                let path = match &seen.device {
                    Some(d) => format!("{}/{}/{d}", seen.group, seen.node),
                    None => format!("{}/{}", seen.group, seen.node),
                };
                let by = if by_this_host { " (sent by this watch)" } else { "" };
                writeln!(out, "{kind} {path}, {} metrics{by}", seen.writes.len()).and_then(|_| {
                    seen.writes.iter().try_for_each(|w| {
                        let value = w.value.as_deref().unwrap_or("(no value)");
                        match &w.verdict {
                            Ok(()) => writeln!(
                                out,
                                "  {} = {}",
                                pretty::prefix(&w.metric, 200),
                                pretty::prefix(value, 200)
                            ),
                            Err(why) => writeln!(
                                out,
                                "  {} = {} (an edge refuses it: {why})",
                                pretty::prefix(&w.metric, 200),
                                pretty::prefix(value, 200)
                            ),
                        }
                    })
                })
            }
            HostEvent::RebirthRequested { .. }
            | HostEvent::Publish(_)
            | HostEvent::Subscribe(_)
            | HostEvent::Disconnect => Ok(()),
        };
    }
}

/// Connects, subscribes and prints until stopped; after a lost or failed
/// connection it tries again, with the link's backoff.
pub async fn run(opts: WatchOptions) -> Result<(), MqttError> {
    let mqtt_cfg = MqttConfig {
        servers: vec![opts.server.clone()],
        keepalive: Duration::from_secs(30),
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(10),
        max_packet_size: 16 * 1024 * 1024,
        connect_timeout: Duration::from_secs(10),
    };
    let servers = Server::prepare_all(&mqtt_cfg)?;
    let label = servers[0].label();
    let client_id = format!("spb-watch-{}", std::process::id());
    // Reorder timeout 0: a watcher shows gaps at once rather than holding messages.
    let mut host = HostSession::new(HostConfig {
        host_id: client_id.clone(),
        subscriptions: vec![],
        reorder_timeout_ms: 0,
        rebirth_min_interval_ms: 10_000,
        limits: HostLimits::default(),
    })
    .expect("the generated watcher id is a valid host id");
    let mut link = Link::new(servers, mqtt_cfg, client_id, now_ms());
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    let mut waiting = std::collections::HashSet::new();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, link.next()).await.ok(),
                None => Some(link.next().await),
            }
        };
        let Some(ev) = next.await else { return Ok(()) };
        match ev {
            LinkEvent::Reconnect => {
                link.connect(None, None);
            }
            LinkEvent::Connected { .. } => {
                eprintln!("watching {} on {label}", opts.filter);
                link.subscribe(vec![opts.filter.clone()], QoS::AtMostOnce);
            }
            LinkEvent::Message(p) => {
                if p.topic.starts_with("spBv1.0/STATE/") {
                    let line = format!("STATE {} {}\n", p.topic, String::from_utf8_lossy(&p.payload));
                    let _ = stdout.write_all(terminal_safe(&line).as_bytes());
                } else {
                    let events = host.handle_message(now_ms(), &p.topic, &p.payload);
                    if opts.rebirth {
                        for ev in &events {
                            if let HostEvent::Publish(req) = ev {
                                link.publish(req.clone());
                            }
                        }
                    }
                    print_events(&mut stdout, events, &mut waiting, opts.rebirth);
                }
                let _ = stdout.flush();
                seen += 1;
                if opts.count > 0 && seen >= opts.count {
                    return Ok(());
                }
            }
            LinkEvent::Closed(c) => eprintln!("{}", c.why),
            LinkEvent::Sent(_) | LinkEvent::Acked(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_the_broker_cannot_drive_the_terminal() {
        assert_eq!(terminal_safe("Temp = 21.5\n"), "Temp = 21.5\n");
        assert_eq!(
            terminal_safe("\u{1b}[2JTemp\rX\u{9b}31m\n"),
            "\\u{1b}[2JTemp\\u{d}X\\u{9b}31m\n"
        );
    }
}
