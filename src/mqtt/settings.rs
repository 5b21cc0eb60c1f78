//! The MQTT link's settings, as `[mqtt]` and `[[mqtt.servers]]` describe
//! them. The configuration module reads and checks them; this module and
//! its users only consume them, so the link never depends on the file's
//! syntax.

use std::path::PathBuf;
use std::time::Duration;

/// `[mqtt]`: the brokers, walked in order.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub servers: Vec<ServerConfig>,
    pub keepalive: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_packet_size: u64,
    /// How long a connection attempt may take (TCP, TLS, CONNACK).
    pub connect_timeout: Duration,
}

/// `[[mqtt.servers]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Overrides `[mqtt] keepalive` for this server.
    pub keepalive: Option<Duration>,
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// A plain-MQTT server with no credentials and the defaults of the file.
    pub fn plain(host: &str, port: u16) -> ServerConfig {
        ServerConfig {
            host: host.to_string(),
            port,
            client_id: None,
            username: None,
            password: None,
            keepalive: None,
            tls: None,
        }
    }
}

/// `[mqtt.servers.tls]`: CA pinning and the client certificate for mTLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The only CA trusted for the broker's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Also trust the public web PKI roots (off by default: pin the plant CA).
    pub system_roots: bool,
    /// Client certificate chain (PEM) and its key (PKCS#8, RSA or SEC1 EC, PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to check in the broker certificate (default: `host`).
    pub server_name: Option<String>,
}
