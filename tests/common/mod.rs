//! Helpers shared by the integration tests: the Python venv with the
//! independent peers, and hex. Tests that need a peer fail (never skip) when
//! it is missing, with the command that installs it.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The venv interpreter that has the peers from `tests/interop/requirements.txt`.
/// `SPB_PYTHON` overrides; `make venv` (run by `.ci/run`) creates the default.
pub fn python() -> PathBuf {
    let p = std::env::var_os("SPB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    assert!(
        p.exists(),
        "the Python peers are not installed at {}: run `make venv` (the README test command does)",
        p.display()
    );
    p
}

/// Sends one JSON request to `tests/interop/pysparkplug_peer.py` and returns its answer.
pub fn pysparkplug(request: &serde_json::Value) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pysparkplug_peer.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the pysparkplug peer");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("peer runs");
    assert!(
        out.status.success(),
        "pysparkplug peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peer answers JSON")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

// ---------------------------------------------------------------------------
// Real peers on loopback: certificates, mosquitto, the pysparkplug peer, the gateway.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::Child;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// CPU ticks (utime + stime) and peak RSS in KiB (VmHWM) of a process, from /proc.
pub fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    (ticks, hwm)
}

/// Clock ticks per second (for [`proc_stat`]).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One HTTP GET to 127.0.0.1:`port` (status line, headers and body).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP listener");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// The value of series `name` (exactly, labels included) on the `/metrics`
/// page served at 127.0.0.1:`port`, if the page has it.
pub fn prom_value(port: u16, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    http_get(port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// A free TCP port on 127.0.0.1 (bound, then released), never the same one
/// twice in this process: tests run in parallel, and two peers handed one
/// port would race for it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test PKI: CA, broker certificate (localhost, 127.0.0.1), client
/// certificate, and a client certificate from a rogue CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA, to sign more certificates in a test.
    ca: (rcgen::CertificateParams, rcgen::KeyPair),
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = |cn: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let cert = p.self_signed(&key).expect("self-signed");
            (p, key, cert)
        };
        let (ca_p, ca_k, ca_c) = ca("spb-test-ca");
        let (rogue_p, rogue_k, rogue_c) = ca("spb-rogue-ca");
        let leaf = |names: Vec<String>, cn: &str, p: &rcgen::CertificateParams, k: &rcgen::KeyPair| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(names).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let issuer = rcgen::Issuer::from_params(p, k);
            (params.signed_by(&key, &issuer).expect("signed"), key)
        };
        let (server, server_k) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost", &ca_p, &ca_k);
        let (client, client_k) = leaf(vec!["gw-test".into()], "gw-test", &ca_p, &ca_k);
        let (rogue, rogue_client_k) = leaf(vec!["gw-test".into()], "gw-test", &rogue_p, &rogue_k);
        let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write pem");
        w("ca.pem", ca_c.pem());
        w("rogue-ca.pem", rogue_c.pem());
        w("server.pem", server.pem());
        w("server.key", server_k.serialize_pem());
        w("client.pem", client.pem());
        w("client.key", client_k.serialize_pem());
        w("rogue-client.pem", rogue.pem());
        w("rogue-client.key", rogue_client_k.serialize_pem());
        // Client keys as an installer leaves them (the gateway refuses a
        // key every user can read); the broker's key stays readable by
        // mosquitto, which may run as another user.
        for key in ["client.key", "rogue-client.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join(key), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        Pki { dir, ca: (ca_p, ca_k) }
    }

    /// A client certificate for `gw-test` signed by this CA and valid from
    /// `from` to `to` (seconds since the epoch): (cert path, key path).
    pub fn client_cert_valid(&self, label: &str, from: i64, to: i64) -> (String, String) {
        use std::os::unix::fs::PermissionsExt;
        let issuer = rcgen::Issuer::from_params(&self.ca.0, &self.ca.1);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["gw-test".to_string()]).expect("params");
        p.not_before = time::OffsetDateTime::from_unix_timestamp(from).expect("from");
        p.not_after = time::OffsetDateTime::from_unix_timestamp(to).expect("to");
        let cert = p.signed_by(&key, &issuer).expect("cert");
        let (c, k) = (
            self.dir.path().join(format!("{label}.pem")),
            self.dir.path().join(format!("{label}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        (c.display().to_string(), k.display().to_string())
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A private mosquitto: a plain listener and, with a PKI, an mTLS listener.
pub struct Broker {
    pub port: u16,
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start(pki: Option<&Pki>) -> Broker {
        Self::start_with(pki, "")
    }

    /// With more global options (e.g. `set_tcp_nodelay true`).
    pub fn start_with(pki: Option<&Pki>, options: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let tls_port = pki.map(|_| free_port());
        let mut conf = format!(
            "per_listener_settings true\npersistence false\nlog_type error\nlog_type warning\nlog_type notice\n{options}\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n"
        );
        if let (Some(pki), Some(tp)) = (pki, tls_port) {
            conf.push_str(&format!(
                "listener {tp} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
                 use_identity_as_username true\nallow_anonymous true\n",
                pki.path("ca.pem"),
                pki.path("server.pem"),
                pki.path("server.key")
            ));
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write conf");
        let mut b = Broker {
            port,
            tls_port,
            dir,
            child: None,
        };
        b.restart();
        b
    }

    /// A broker on the configuration `certs-example/make-certs.sh` writes
    /// (`conf`, its mTLS listener moved to a free loopback port, which
    /// becomes `port`; `tls_port` stays `None`).
    pub fn from_make_certs(conf: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        assert!(conf.contains("\nlistener 8883\n"), "{conf}");
        // Started as root, mosquitto would read the keys as user mosquitto.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        // A log file (flushed per line; stdout is block-buffered into a file).
        let file = dir.path().join("mosquitto-file.log");
        let conf = format!(
            "{user}persistence false\nlog_type all\nlog_dest file {}\n{}",
            file.display(),
            conf.replace("\nlistener 8883\n", &format!("\nlistener {port} 127.0.0.1\n"))
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write conf");
        let mut b = Broker {
            port,
            tls_port: None,
            dir,
            child: None,
        };
        b.restart();
        b
    }

    /// Starts (again) on the same ports.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (make deps)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
        if let Some(tp) = self.tls_port {
            wait_for_port(tp, Duration::from_secs(10));
        }
    }

    /// Sends the broker a signal (SIGSTOP hangs it, SIGCONT resumes it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).expect("signal");
        }
    }

    /// Kills the broker (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("mosquitto.log") + &read("mosquitto-file.log")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pysparkplug peer on the broker: every message it receives, decoded.
pub struct Peer {
    child: Child,
    rx: Receiver<serde_json::Value>,
    /// Received but not yet matched by a `wait_for` (e.g. while waiting for an ack).
    pending: std::collections::VecDeque<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Peer {
    pub fn start(port: u16) -> Peer {
        Self::start_as(port, None)
    }

    /// The peer as Primary Host `host`: STATE online after each (re)connect.
    pub fn start_host(port: u16, host: &str) -> Peer {
        Self::start_as(port, Some(host))
    }

    fn start_as(port: u16, host: Option<&str>) -> Peer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sparkplug_peer_mqtt.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .args(host)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pysparkplug MQTT peer");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut p = Peer {
            child,
            rx,
            pending: Default::default(),
            seen: Vec::new(),
        };
        p.wait_for("the peer subscribed", Duration::from_secs(15), |m| {
            m["subscribed"] == true
        });
        p
    }

    /// Waits for a message matching `pred`; everything received is kept in
    /// `seen`, and what does not match stays available to the next call.
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            let m = self.pending.remove(i).expect("index from position");
            self.pending.drain(..i);
            return m;
        }
        self.pending.clear();
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {what}; received: {:#?}",
                    self.seen.iter().rev().take(8).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects what arrives during `d`.
    pub fn collect(&mut self, d: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + d;
        let mut got: Vec<serde_json::Value> = self.pending.drain(..).collect();
        while let Ok(m) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(m.clone());
            got.push(m);
        }
        got
    }

    pub fn send(&mut self, cmd: serde_json::Value) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{cmd}").expect("send to peer");
        stdin.flush().expect("flush");
        let op = cmd["op"].clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the peer's ack");
            if m["ack"] == op {
                return;
            }
            self.seen.push(m.clone());
            self.pending.push_back(m);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the named metric in a decoded message.
pub fn metric<'a>(msg: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    msg["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no metric {name} in {msg}"))
}

/// A running spb-gateway with its own config file and state directory.
pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

impl Gateway {
    /// Starts the gateway on `config` (TOML text) with extra arguments.
    pub fn start(config: &str, args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tmp");
        Self::start_in(dir, config, args)
    }

    /// Starts with an existing state directory (to test restarts).
    pub fn start_in(dir: tempfile::TempDir, config: &str, args: &[&str]) -> Gateway {
        Self::start_with_env(dir, config, args, &[])
    }

    /// Starts with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, args: &[&str], env: &[(&str, String)]) -> Gateway {
        Self::start_bin(Path::new(env!("CARGO_BIN_EXE_spb-gateway")), dir, config, args, env)
    }

    /// Starts the gateway program `bin` (another build, for benchmarks side by side).
    pub fn start_bin(
        bin: &Path,
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Gateway {
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config).expect("write config");
        let stderr_path = dir.path().join(format!("gateway-{}.log", free_port()));
        let err = std::fs::File::create(&stderr_path).expect("log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start spb-gateway");
        Gateway {
            child,
            dir,
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "log never said {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).expect("signal");
    }

    /// Waits for exit and returns the status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "gateway did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, keeping the state directory for a restart.
    pub fn kill_keep_state(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway config whose only tag, `line/Count`, is the sim's `counter` on
/// a 10 ms scan: within one process its values are consecutive integers, so
/// a lost sample shows as a hole. `extra_node` goes into `[node]`, `extra` at
/// the end.
pub fn counter_config(group: &str, port: u16, extra_node: &str, extra: &str) -> String {
    format!(
        r#"[node]
group_id = "{group}"
node_id = "gw"
rebirth_debounce = "0s"
{extra_node}

[mqtt]
backoff_min = "100ms"
backoff_max = "500ms"
keepalive = "5s"
connect_timeout = "2s"

[[mqtt.servers]]
host = "127.0.0.1"
port = {port}

[telemetry]
listen = ""
log_format = "human"

[[devices]]
name = "line"
driver = "sim"
[devices.scan_classes]
fast = "10ms"
[[devices.tags]]
name = "Count"
address = "counter"
datatype = "UInt64"
scan_class = "fast"
{extra}
"#
    )
}

/// A test config with its telemetry listener (`listen = ""`) on `http`.
pub fn with_http(cfg: String, http: u16) -> String {
    cfg.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{http}\""))
}

/// A gateway config for tests: one sim device `press` scanning every 100 ms.
pub fn test_config(group: &str, node: &str, server: &str, extra_node: &str) -> String {
    format!(
        r#"[node]
group_id = "{group}"
node_id = "{node}"
rebirth_debounce = "0s"
{extra_node}

[mqtt]
backoff_min = "200ms"
backoff_max = "1s"
keepalive = "5s"
connect_timeout = "3s"

[[mqtt.servers]]
{server}

[telemetry]
listen = ""
log_format = "human"

[[devices]]
name = "press"
driver = "sim"
[devices.scan_classes]
fast = "100ms"
[[devices.tags]]
name = "Strokes"
address = "counter"
datatype = "UInt32"
scan_class = "fast"
[[devices.tags]]
name = "Pressure"
address = "sine(amplitude=20, offset=180, period=5s)"
datatype = "Float"
scan_class = "fast"
"#
    )
}

pub mod ddata;
pub mod pg;
pub mod plc;
pub mod powercut;
pub mod rogue;
pub mod sink_rows;
pub mod uplink;

/// Publishes `payload` with mosquitto_pub (QoS 1; `retain` as asked).
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).expect("payload");
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic, "-f"];
    let f = file.to_string_lossy().to_string();
    args.push(&f);
    if retain {
        args.push("-r");
    }
    let st = std::process::Command::new("mosquitto_pub")
        .args(&args)
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
}
