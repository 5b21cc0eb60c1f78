//! Independent PLC peers on loopback (docs/PEERS.md): python-snap7's and
//! node-snap7's S7 servers, cpppo's Logix simulator, and the peers' own
//! clients (python-snap7, pylogix) to check what we wrote. A missing peer
//! fails the test with the command that installs it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::python;

/// Starts a server peer with `spawn(port)` and waits until *it* listens: a
/// child that exits (its port was taken after all) is retried on a fresh port
/// when `fixed` is false, or on the same port after a pause when it is.
fn start_listening(port: u16, fixed: bool, spawn: impl Fn(u16) -> Child) -> (Child, u16) {
    let mut port = port;
    for _ in 0..5 {
        let mut child = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut up_since: Option<Instant> = None;
        let alive = loop {
            if let Ok(Some(_)) = child.try_wait() {
                break false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Still alive a moment after the port answers: the port is its own.
                match up_since {
                    Some(t) if t.elapsed() > Duration::from_millis(300) => break true,
                    Some(_) => {}
                    None => up_since = Some(Instant::now()),
                }
            }
            assert!(Instant::now() < deadline, "the peer on port {port} never listened");
            std::thread::sleep(Duration::from_millis(50));
        };
        if alive {
            return (child, port);
        }
        let _ = child.wait();
        if fixed {
            std::thread::sleep(Duration::from_millis(500));
        } else {
            port = super::free_port();
        }
    }
    panic!("the peer could not start (last port {port})");
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(name)
}

/// `node_modules` of the node peers (`make node-peers`, run by `make test`).
pub fn node_modules() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-peers/node_modules");
    assert!(
        p.join("node-snap7/build/Release/node_snap7.node").exists(),
        "node-snap7 is not built at {}: run `make node-peers` (the README test command does)",
        p.display()
    );
    p
}

/// Which S7 server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S7Impl {
    /// python-snap7 3.3 (pure Python; PDU 480).
    Python,
    /// node-snap7 (the Snap7 C++ library; PDU 960).
    Node,
}

/// A simulator process on a loopback port, restartable on the same port;
/// killed on drop. [`S7Server`] and [`Cpppo`] make them.
pub struct ServerPeer {
    pub port: u16,
    spawn: Box<dyn Fn(u16) -> Child>,
    child: Option<Child>,
}

impl ServerPeer {
    fn start(spawn: impl Fn(u16) -> Child + 'static) -> ServerPeer {
        let mut s = ServerPeer {
            port: super::free_port(),
            spawn: Box::new(spawn),
            child: None,
        };
        s.launch(false);
        s
    }

    /// Starts the simulator again on the same port.
    pub fn restart(&mut self) {
        self.launch(true);
    }

    fn launch(&mut self, same_port: bool) {
        self.kill();
        let (child, port) = start_listening(self.port, same_port, &self.spawn);
        self.child = Some(child);
        self.port = port;
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S7 server peer.
pub struct S7Server;

impl S7Server {
    pub fn start(kind: S7Impl) -> ServerPeer {
        Self::start_holding(kind, &[])
    }

    /// python-snap7 whose data blocks `hold` take a write and put their old
    /// bytes back before answering, as a PLC program holding its own value.
    pub fn start_holding(kind: S7Impl, hold: &[u16]) -> ServerPeer {
        let hold: Vec<String> = hold.iter().map(u16::to_string).collect();
        assert!(
            hold.is_empty() || kind == S7Impl::Python,
            "only the python-snap7 peer holds blocks"
        );
        ServerPeer::start(move |port| {
            let mut cmd = match kind {
                S7Impl::Python => {
                    let mut c = Command::new(python());
                    c.arg(script("s7_peer.py")).arg("server");
                    c
                }
                S7Impl::Node => {
                    let mut c = Command::new("node");
                    c.env("NODE_PATH", node_modules()).arg(script("snap7_node_server.js"));
                    c
                }
            };
            cmd.arg(port.to_string())
                .args(&hold)
                .stdout(Stdio::null())
                .spawn()
                .expect("start the S7 server peer")
        })
    }
}

/// A line-JSON peer client process (python-snap7's or pylogix's).
pub struct PeerClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PeerClient {
    fn spawn(script_name: &str, port: u16) -> PeerClient {
        let mut child = Command::new(python())
            .arg(script(script_name))
            .arg("client")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the peer client");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        PeerClient { child, stdin, stdout }
    }

    /// python-snap7's client connected to `port` (rack 0, slot 1).
    pub fn snap7(port: u16) -> PeerClient {
        Self::spawn("s7_peer.py", port)
    }

    /// pylogix connected to a Logix simulator on `port`.
    pub fn pylogix(port: u16) -> PeerClient {
        Self::spawn("logix_peer.py", port)
    }

    /// One request, one answer; an `error` answer fails the test.
    pub fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        writeln!(self.stdin, "{req}").expect("write to the peer client");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the peer's answer");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer answered {line:?} to {req}: {e}"));
        assert!(v.get("error").is_none(), "peer client failed {req}: {v}");
        v
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// cpppo's EtherNet/IP Logix simulator.
pub struct Cpppo;

impl Cpppo {
    /// With `tags`, e.g. `Counter=DINT`.
    pub fn start(tags: &[&str]) -> ServerPeer {
        Self::start_with(&[], tags)
    }

    /// With server options, e.g. `["--route-path", "\"1/2\""]` (a ControlLogix CPU in slot 2).
    pub fn start_with(options: &[&str], tags: &[&str]) -> ServerPeer {
        let options: Vec<String> = options.iter().map(|t| t.to_string()).collect();
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        ServerPeer::start(move |port| {
            Command::new(python())
                .args([
                    "-m",
                    "cpppo.server.enip",
                    "-a",
                    &format!("127.0.0.1:{port}"),
                    "--no-print",
                ])
                .args(&options)
                .args(&tags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cpppo")
        })
    }
}

/// A TCP port that accepts connections and never answers: a PLC that hangs
/// (the loopback stand-in for an unroutable address).
pub struct SilentPlc {
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl SilentPlc {
    pub fn start() -> SilentPlc {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().map_while(Result::ok) {
                held.push(s);
            }
        });
        SilentPlc { port, _thread: thread }
    }
}

/// Polls `f` until it returns `Some`, or fails after `within`.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
