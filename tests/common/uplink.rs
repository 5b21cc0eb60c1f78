//! The uplink binary on a config file of its own, and an MQTT probe that
//! publishes what a test forges and counts what it sees.
#![cfg(feature = "uplink")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The uplink binary on a config file of its own.
pub struct Uplink {
    pub child: Child,
    _dir: tempfile::TempDir,
    pub log: std::path::PathBuf,
    pub http: u16,
}

impl Uplink {
    pub fn start(broker: u16, db_url: &str, extra_db: &str) -> Uplink {
        Uplink::start_on(
            &format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {broker}\n"),
            db_url,
            extra_db,
        )
    }

    /// With its own `[[mqtt.servers]]` tables.
    pub fn start_on(servers: &str, db_url: &str, extra_db: &str) -> Uplink {
        Uplink::start_env(servers, db_url, extra_db, &[], &[])
    }

    /// With arguments and environment variables of its own (e.g. systemd's).
    pub fn start_env(servers: &str, db_url: &str, extra_db: &str, args: &[&str], env: &[(&str, String)]) -> Uplink {
        let dir = tempfile::tempdir().expect("tmp");
        let http = super::free_port();
        let cfg = dir.path().join("uplink.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[host]
host_id = "scada"
reorder_timeout = "1s"
[mqtt]
backoff_min = "100ms"
backoff_max = "500ms"
keepalive = "5s"
{servers}
[database]
backend = "postgres"
url = "{db_url}"
batch_max_latency = "50ms"
rollup_interval = "100ms"
{extra_db}
[telemetry]
listen = "127.0.0.1:{http}"
log_format = "human"
"#
            ),
        )
        .expect("config");
        let log = dir.path().join("uplink.log");
        let child = Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start spb-uplink");
        let mut u = Uplink {
            child,
            _dir: dir,
            log,
            http,
        };
        let deadline = Instant::now() + T;
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            if let Some(s) = u.child.try_wait().expect("status") {
                panic!("spb-uplink exited ({s}):\n{}", u.log());
            }
            assert!(Instant::now() < deadline, "no HTTP listener:\n{}", u.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        u
    }

    /// The configuration file it was started with (a test may edit it and
    /// send SIGHUP).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("uplink.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metric(&self, name: &str) -> f64 {
        super::prom_value(self.http, name).unwrap_or_else(|| panic!("no {name}:\n{}", self.log()))
    }

    pub fn wait_until(&self, what: &str, mut ok: impl FnMut(&Uplink) -> bool) {
        let deadline = Instant::now() + T;
        while !ok(self) {
            assert!(Instant::now() < deadline, "{what} never happened:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test-side MQTT client (rumqttc on a runtime of its own) that publishes
/// and records what arrives on its subscriptions.
pub struct Probe {
    rt: tokio::runtime::Runtime,
    client: rumqttc::AsyncClient,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Probe {
    pub fn start(port: u16, subscribe: &str) -> Probe {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = rt.block_on(async {
            let mut o = rumqttc::MqttOptions::new(format!("probe-{}", super::free_port()), "127.0.0.1", port);
            o.set_max_packet_size(16 << 20, 16 << 20);
            let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
            let g = got.clone();
            tokio::spawn(async move {
                while let Ok(ev) = el.poll().await {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                        g.lock().expect("lock").push(p.topic.clone());
                    }
                }
            });
            client
                .subscribe(subscribe, rumqttc::QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            client
        });
        std::thread::sleep(Duration::from_millis(300));
        Probe { rt, client, got }
    }

    pub fn publish(&self, p: &spb::sparkplug::Publish) {
        self.rt.block_on(async {
            self.client
                .publish(p.topic.clone(), rumqttc::QoS::AtLeastOnce, false, p.payload.clone())
                .await
                .expect("publish")
        });
    }

    pub fn count(&self, topic: &str) -> usize {
        self.got.lock().expect("lock").iter().filter(|t| *t == topic).count()
    }
}
