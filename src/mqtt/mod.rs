//! The broker connection: the servers' settings and TLS, the options of a
//! CONNECT (the Will rewritten before each one), errors explained in plant
//! terms; [`link::Link`] keeps one connection at a time with them.
//!
//! Invariants: clean session always ([tck-id-principles-persistence-clean-session-311]);
//! max packet size from the config, never rumqttc's 10 KiB default (a real NBIRTH
//! is larger); one connection at a time
//! ([tck-id-operational-behavior-primary-application-state-with-multiple-servers-single-server]);
//! events of an old connection are told apart from the current one by its id.

pub mod link;
pub mod settings;
pub mod tls;
pub mod watermark;

use std::sync::Arc;

use rumqttc::{ConnectionError, Event, LastWill, MqttOptions, TlsConfiguration, Transport};
use thiserror::Error;

use crate::sparkplug::Publish;
use settings::{MqttConfig, ServerConfig};

/// Why a server's settings cannot be used.
#[derive(Debug, Error)]
pub enum MqttError {
    #[error("mqtt.servers[{index}] ({host}:{port}): {source}")]
    Tls {
        index: usize,
        host: String,
        port: u16,
        source: tls::TlsError,
    },
}

/// What a connection's event-loop task reports.
#[derive(Debug)]
enum ConnEvent {
    Event(u64, Event),
    Closed(u64, ConnectionError),
}

/// A server with its TLS configuration built once.
#[derive(Clone)]
pub struct Server {
    pub cfg: ServerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    /// Checks and prepares every configured server (TLS files are read here,
    /// so a bad certificate fails at startup with its key and path).
    pub fn prepare_all(cfg: &MqttConfig) -> Result<Vec<Server>, MqttError> {
        cfg.servers
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let tls = match &s.tls {
                    None => None,
                    Some(t) => Some(
                        tls::client_config(t, rustls::pki_types::UnixTime::now()).map_err(|source| MqttError::Tls {
                            index,
                            host: s.host.clone(),
                            port: s.port,
                            source,
                        })?,
                    ),
                };
                Ok(Server { cfg: s.clone(), tls })
            })
            .collect()
    }

    /// What is wrong with the client certificate's validity now (logged at
    /// each connect; the connect is tried anyway, the broker decides), with
    /// the clock's reading when it cannot be trusted (a box without an RTC).
    pub fn certificate_problem(&self, now: rustls::pki_types::UnixTime) -> Option<String> {
        let tls = self.cfg.tls.as_ref()?;
        let (problem, _) = tls::certificate_problem(tls, now, 0).ok()?;
        let problem = problem?;
        Some(if tls::clock_is_plausible(now.as_secs()) {
            problem
        } else {
            format!(
                "{problem}; the system clock says {} (not set yet: no real-time clock or NTP?)",
                tls::format_time(now.as_secs())
            )
        })
    }

    /// `host:port` for logs.
    pub fn label(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }
}

/// The largest inbound packet read off the connection (16 MiB). Beyond it
/// rumqttc closes the connection; a broker limit at or under this
/// (mosquitto's `max_packet_size`) keeps any client from sending one.
pub const INBOUND_TRANSPORT_MAX: usize = 16 * 1024 * 1024;

/// Options for one CONNECT with `will` as the Last Will.
fn options(server: &Server, mqtt: &MqttConfig, default_client_id: &str, will: Option<&Publish>) -> MqttOptions {
    let id = server
        .cfg
        .client_id
        .clone()
        .unwrap_or_else(|| default_client_id.to_string());
    let mut o = MqttOptions::new(id, server.cfg.host.clone(), server.cfg.port);
    o.set_keep_alive(server.cfg.keepalive.unwrap_or(mqtt.keepalive));
    o.set_clean_session(true);
    let max = usize::try_from(mqtt.max_packet_size).unwrap_or(usize::MAX);
    // Inbound, rumqttc drops the connection over its limit, and a retained
    // message over it would be sent again on every reconnect: read anything
    // up to INBOUND_TRANSPORT_MAX, and let the caller drop and count what
    // its own limit refuses (the connection stays up).
    o.set_max_packet_size(max.max(INBOUND_TRANSPORT_MAX), max);
    o.set_request_channel_capacity(4096);
    o.set_inflight(100);
    if let (Some(u), p) = (&server.cfg.username, &server.cfg.password) {
        o.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(w) = will {
        o.set_last_will(LastWill::new(
            w.topic.clone(),
            w.payload.clone(),
            link::qos(w.qos),
            w.retain,
        ));
    }
    if let Some(tls) = &server.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    o
}

/// Whether the CONNECT packet had left when the connection failed (so the
/// Will with this bdSeq was registered and the next CONNECT needs a new one).
fn connect_was_sent(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(_) | ConnectionError::NotConnAck(_) | ConnectionError::MqttState(_)
    )
}

/// A one-line explanation of a connection error, with a hint where we have one.
fn explain(server: &Server, e: &ConnectionError) -> String {
    let text = e.to_string();
    let hint = if text.contains("CertificateRequired") || text.contains("certificate required") {
        " (the broker requires a client certificate: set tls.cert and tls.key)"
    } else if text.contains("UnknownIssuer") {
        " (the broker's certificate is not signed by the configured tls.ca)"
    } else if text.contains("NotValidForName") {
        " (the broker's certificate does not name this host: check host or tls.server_name)"
    } else if text.contains("Expired") {
        " (a certificate has expired)"
    } else if text.contains("BadCertificate") || text.contains("bad certificate") || text.contains("UnknownCA") {
        " (the broker refused our client certificate: is it signed by the broker's CA?)"
    } else if text.contains("Connection refused (os error") {
        " (nothing listens there: is the broker running, host and port right?)"
    } else if matches!(e, ConnectionError::ConnectionRefused(_)) {
        " (the broker refused the CONNECT: check username/password or ACLs)"
    } else if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
        " (the port does not speak TLS: plain MQTT port with tls configured?)"
    } else {
        ""
    };
    let scheme = if server.tls.is_some() { "mqtts" } else { "mqtt" };
    format!("{scheme}://{}: {text}{hint}", server.label())
}
