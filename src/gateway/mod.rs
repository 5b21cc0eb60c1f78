//! The gateway runtime: executes what the sans-IO cores decide.
//!
//! One task owns the [`EdgeSession`] (the Sparkplug protocol) and the
//! [`Forwarder`] (store-and-forward: what to keep, confirm and replay) and
//! runs a select loop over: the current MQTT connection's events, the
//! pollers' events, the store thread's reports, a 100 ms tick (debounced
//! rebirths, replay of stored data, status), the reconnect timer, and
//! signals (SIGTERM/SIGINT: NDEATH, DISCONNECT, exit 0; SIGHUP: reload).
//! The durable store runs on its own thread ([`StoreThread`]): no write,
//! sync or read of the store runs on the async workers.
//!
//! Invariants:
//! - At most one MQTT connection exists; events of a previous one are ignored.
//! - The Will is rebuilt by the session before every CONNECT; bdSeq is
//!   persisted (write, fsync, rename) as soon as a CONNECT is known to be sent.
//! - Every decision about stored data is the forwarder's; this loop only
//!   hands its operations to the store thread, in order, and its reports
//!   back (see `queue::forward` for the rules and their tests).
//! - A group commit happens as soon as no more samples are ready; a sample
//!   counts as stored once written (`spb_stored_samples_total`), and is
//!   synced within `store.flush_interval`.
//! - A reload that fails validation changes nothing and logs every error.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet};
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch as signal_watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Rng;
use crate::clock::now_ms;
use crate::config::{Config, Overrides};
use crate::mqtt::{self, ConnEvent, MqttError, Server};
use crate::plc::poller::{self, PollEvent};
use crate::queue::disk::{DiskOptions, QueueError};
use crate::queue::forward::{Forwarder, ForwarderOptions, Notice, Replayed, Sent, StoreOp, StoreReport};
use crate::queue::outbox::{Encoded, OutboxOptions};
use crate::queue::thread::StoreThread;
use crate::queue::{LazyStore, Record};
use crate::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeError, EdgeSession};
use crate::sparkplug::topic::{MessageType, Topic};
use crate::sparkplug::{pretty, Metric, Payload, Publish, Value};
use crate::telemetry::metrics::Telemetry;
use crate::telemetry::{http, systemd};

pub mod watch;

/// What `--check-config` finds beyond the file's syntax and keys: what
/// would fail at start or at the first connect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks that `cfg` can run: every server's TLS files read, the key
/// matches its certificate, the client certificate is valid now (with a
/// clock before 2020 only a warning: a box without a real-time clock) and
/// not about to expire (a warning within 30 days), and every birth fits
/// `mqtt.max_packet_size` (a birth cannot be split). `at_boot` (the unit's
/// `ExecStartPre`) makes a certificate's validity a warning: the gateway
/// then polls and stores while it cannot connect, instead of not starting.
pub fn preflight(cfg: &Config, now_ms: u64, at_boot: bool) -> Preflight {
    let mut out = Preflight::default();
    let now = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
    for (i, s) in cfg.mqtt.servers.iter().enumerate() {
        let Some(t) = &s.tls else { continue };
        if let Err(e) = mqtt::tls::client_config(t, now) {
            out.errors.push(format!("mqtt.servers[{i}].{e}"));
            continue;
        }
        match mqtt::tls::certificate_problem(t, now, 30) {
            Ok((Some(problem), _)) if at_boot => out.warnings.push(format!(
                "mqtt.servers[{i}].tls.cert: {problem}: the gateway starts, polls and stores, but cannot connect until it is replaced"
            )),
            Ok((Some(problem), _)) if mqtt::tls::clock_is_plausible(now.as_secs()) => {
                out.errors.push(format!("mqtt.servers[{i}].tls.cert: {problem}"))
            }
            Ok((Some(problem), _)) => out.warnings.push(format!(
                "mqtt.servers[{i}].tls.cert: {problem}; the system clock says {} (not set yet?)",
                mqtt::tls::format_time(now.as_secs())
            )),
            Ok((None, Some(soon))) => out.warnings.push(format!("mqtt.servers[{i}].tls.cert: {soon}")),
            Ok((None, None)) => {}
            Err(e) => out.errors.push(format!("mqtt.servers[{i}].{e}")),
        }
    }
    // The births, as the session would publish them at a connect.
    let mut ecfg = edge_config(cfg, true);
    ecfg.limits.max_packet_bytes = usize::MAX;
    match EdgeSession::new(ecfg, node_metrics(now_ms), definitions(cfg, now_ms), None) {
        Ok(mut session) => {
            let mut actions = Vec::new();
            for d in cfg.devices.iter().filter(|d| d.enabled) {
                let _ = session.device_online(now_ms, &d.name);
            }
            actions.extend(session.begin_connect(now_ms));
            actions.extend(session.connected(now_ms));
            for p in actions.iter().filter_map(EdgeAction::publish) {
                let bytes = p.topic.len() + p.payload.len() + crate::sparkplug::edge::PUBLISH_OVERHEAD;
                if bytes as u64 > cfg.mqtt.max_packet_size {
                    out.errors.push(format!(
                        "mqtt.max_packet_size: the birth {} is {bytes} bytes, more than {} (a birth holds every metric and cannot be split): raise it, and the broker's limit",
                        p.topic, cfg.mqtt.max_packet_size
                    ));
                }
            }
        }
        Err(e) => out.errors.push(format!("sparkplug session: {e}")),
    }
    out
}

/// The store's options from `[store]`.
fn disk_options(cfg: &Config) -> DiskOptions {
    DiskOptions {
        max_bytes: cfg.store.max_bytes,
        sync_interval: cfg.store.flush_interval,
        sync_records: cfg.store.flush_records,
    }
}

/// Why the gateway could not start or had to stop.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("sparkplug session: {0}")]
    Session(#[from] EdgeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("telemetry.listen {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where the configuration came from, for SIGHUP reloads.
    pub config_path: Option<PathBuf>,
    /// Command-line overrides, re-applied after a reload.
    pub overrides: Overrides,
    /// Poll and log what would be published; connect to no broker.
    pub dry_run: bool,
    /// Do not poll PLCs (the node is born without devices online).
    pub disable_plc: bool,
}

/// The gateway's software version, published in NBIRTH.
const VERSION_METRIC: &str = "Properties/Software Version";

fn node_metrics(now: u64) -> Vec<Metric> {
    vec![Metric::new(
        VERSION_METRIC,
        Value::String(format!("spb-gateway {}", env!("CARGO_PKG_VERSION"))),
        now,
    )]
}

fn definitions(cfg: &Config, now: u64) -> Vec<DeviceDef> {
    cfg.devices
        .iter()
        .filter(|d| d.enabled)
        .map(|d| DeviceDef {
            name: d.name.clone(),
            metrics: poller::declarations(d, now),
        })
        .collect()
}

fn edge_config(cfg: &Config, dry_run: bool) -> EdgeConfig {
    EdgeConfig {
        group_id: cfg.node.group_id.clone(),
        node_id: cfg.node.node_id.clone(),
        // A dry run has no broker, so it cannot see the host's STATE.
        primary_host_id: if dry_run {
            None
        } else {
            cfg.node.primary_host_id.clone()
        },
        server_count: cfg.mqtt.servers.len().max(1),
        rebirth_debounce_ms: cfg.node.rebirth_debounce.as_millis() as u64,
        aliases: cfg.node.aliases,
        max_data_metrics: cfg.node.max_data_metrics,
        limits: crate::sparkplug::edge::EdgeLimits {
            max_command_metrics: cfg.commands.max_metrics,
            state_max_skew_ms: cfg.node.state_max_skew.as_millis() as u64,
            max_packet_bytes: usize::try_from(cfg.mqtt.max_packet_size).unwrap_or(usize::MAX),
        },
    }
}

/// The forwarder's options from `[store]`. The host window only matters
/// with a Primary Host to watch; without one nothing is retained.
fn forwarder_options(cfg: &Config) -> ForwarderOptions {
    let s = &cfg.store;
    let window = if cfg.node.primary_host_id.is_some() {
        s.host_window
    } else {
        Duration::ZERO
    };
    ForwarderOptions {
        outbox: OutboxOptions {
            host_window_ms: window.as_millis() as u64,
            host_window_bytes: usize::try_from(s.host_window_max_bytes).unwrap_or(usize::MAX),
            ..OutboxOptions::default()
        },
        replay_rate: s.replay_rate,
        flush_records: s.flush_records as usize,
        ..ForwarderOptions::default()
    }
}

/// The topic of the watermark markers: outside `spBv1.0/`, so Sparkplug
/// applications never see them (the broker's ACL must allow publishing it).
pub fn watermark_topic(group: &str, node: &str) -> String {
    format!("spb-gateway/watermark/{group}/{node}")
}

/// Reads the persisted bdSeq (the value for the next CONNECT).
fn load_bdseq(dir: &Path) -> Option<u8> {
    let path = dir.join("bdseq");
    let text = std::fs::read_to_string(&path).ok()?;
    match text.trim().parse::<u8>() {
        Ok(b) => Some(b),
        Err(_) => {
            tracing::error!(path = %path.display(), "bdSeq file is corrupt; starting from 0");
            None
        }
    }
}

/// Persists the bdSeq durably: write a temporary file, fsync, rename.
fn save_bdseq(dir: &Path, value: u8) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("bdseq.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("bdseq"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Limits a repeated ERROR line to one per 10 s that sums what it stood for:
/// a full disk must be loud, not 100 lines a second.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    /// Samples and occurrences since the last line.
    samples: u64,
    times: u64,
}

impl Throttle {
    fn note(&mut self, samples: u64, log: impl FnOnce(u64, u64)) {
        self.samples += samples;
        self.times += 1;
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        log(self.samples, self.times);
        self.last = Some(Instant::now());
        self.samples = 0;
        self.times = 0;
    }
}

struct Runtime {
    cfg: Config,
    opts: RunOptions,
    telemetry: Arc<Telemetry>,
    status: Arc<Mutex<String>>,
    session: EdgeSession,
    servers: Vec<Server>,
    /// The store-and-forward decisions; the store itself runs on `store`.
    fwd: Forwarder,
    store: Option<StoreThread>,
    /// Where the queue lives; removed at exit for a dry run.
    queue_dir: PathBuf,
    client: Option<AsyncClient>,
    conn_id: u64,
    connack: bool,
    closing: bool,
    attempt: u32,
    reconnect_at: Option<Instant>,
    conn_tx: mpsc::Sender<ConnEvent>,
    poll_tx: mpsc::Sender<PollEvent>,
    stop_pollers: signal_watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
    rng: Rng,
    state_dir: PathBuf,
    /// Log lines for store errors and drops, at most one per 10 s each.
    store_errors: Throttle,
    store_full: Throttle,
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), GatewayError> {
    let telemetry = Telemetry::new();
    let status = Arc::new(Mutex::new("starting".to_string()));
    let state_dir = cfg.store.path.clone();
    if !opts.dry_run {
        std::fs::create_dir_all(&state_dir).map_err(|source| GatewayError::Io {
            what: "creating the state directory",
            path: state_dir.clone(),
            source,
        })?;
    }
    let servers = if opts.dry_run {
        Vec::new()
    } else {
        Server::prepare_all(&cfg.mqtt)?
    };
    let now = now_ms();
    let defs = definitions(&cfg, now);
    let stored = if opts.dry_run { None } else { load_bdseq(&state_dir) };
    let session = EdgeSession::new(edge_config(&cfg, opts.dry_run), node_metrics(now), defs, stored)?;
    if let Some(addr) = cfg.telemetry.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        tracing::info!(%addr, "health and metrics on http://{addr}/metrics");
        let exposition = http::GatewayExposition {
            telemetry: telemetry.clone(),
            status: status.clone(),
        };
        tokio::spawn(http::serve(listener, Arc::new(exposition)));
    }
    // The durable store-and-forward queue: samples that could not be
    // published survive a restart. A dry run keeps its queue in a temporary
    // directory and removes it at exit. It is opened, and then runs, on
    // its own thread.
    let queue_dir = if opts.dry_run {
        std::env::temp_dir().join(format!("spb-gateway-dry-run-{}", std::process::id()))
    } else {
        state_dir.join("queue")
    };
    let (dir, disk) = (queue_dir.clone(), disk_options(&cfg));
    let store = tokio::task::spawn_blocking(move || LazyStore::open(dir, disk))
        .await
        .map_err(|e| QueueError::Encode(format!("opening the store: {e}")))??;
    let snapshot = crate::queue::forward::Store::snapshot(&store);
    if snapshot.stats.records > 0 {
        tracing::info!(
            samples = snapshot.stats.metrics,
            "stored samples from before the restart will be replayed"
        );
    }
    let fwd = Forwarder::new(forwarder_options(&cfg), snapshot);
    let (store, mut store_rx) = StoreThread::spawn(store).map_err(|source| GatewayError::Io {
        what: "starting the store's thread for",
        path: queue_dir.clone(),
        source,
    })?;
    let (conn_tx, mut conn_rx) = mpsc::channel(4096);
    let (poll_tx, mut poll_rx) = mpsc::channel(1024);
    let (stop_pollers, _) = signal_watch::channel(false);
    let mut rt = Runtime {
        fwd,
        store: Some(store),
        queue_dir,
        cfg,
        opts,
        telemetry: telemetry.clone(),
        status,
        session,
        servers,
        client: None,
        conn_id: 0,
        connack: false,
        closing: false,
        attempt: 0,
        reconnect_at: Some(Instant::now()),
        conn_tx,
        poll_tx,
        stop_pollers,
        pollers: Vec::new(),
        rng: Rng::new(now ^ u64::from(std::process::id())),
        state_dir,
        store_errors: Throttle::default(),
        store_full: Throttle::default(),
    };
    rt.update_gauges();
    rt.start_pollers();
    tokio::spawn(systemd::watchdog(telemetry.clone()));
    systemd::ready(&format!(
        "{} devices, {}",
        rt.cfg.devices.iter().filter(|d| d.enabled).count(),
        if rt.opts.dry_run { "dry run" } else { "connecting" }
    ));
    tracing::info!(
        group = %rt.cfg.node.group_id, node = %rt.cfg.node.node_id, bdseq = rt.session.bdseq(),
        dry_run = rt.opts.dry_run, "spb-gateway {} started", env!("CARGO_PKG_VERSION")
    );
    let io = |e: std::io::Error| GatewayError::Io {
        what: "installing a handler for",
        path: "signals".into(),
        source: e,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(io)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io)?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reconnect = async {
            match rt.reconnect_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(ev) = conn_rx.recv() => rt.on_conn_event(ev).await,
            Some(ev) = poll_rx.recv() => rt.on_poll(ev).await,
            Some(report) = store_rx.recv() => rt.on_store(report).await,
            _ = tick.tick() => rt.on_tick().await,
            _ = reconnect => rt.start_connect(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => rt.reload().await,
        }
        // Group commit once no more samples are ready (or per the policy).
        rt.fwd.maybe_commit(poll_rx.is_empty());
        rt.send_store_ops().await;
    }
    rt.shutdown(&mut conn_rx, &mut store_rx).await;
    Ok(())
}

impl Runtime {
    fn start_pollers(&mut self) {
        if self.opts.disable_plc {
            tracing::warn!("--disable-plc: not polling any PLC");
            return;
        }
        let _ = self.stop_pollers.send(false);
        let enabled: Vec<_> = self.cfg.devices.iter().filter(|d| d.enabled).cloned().collect();
        self.telemetry
            .retain_devices(&enabled.iter().map(|d| d.name.as_str()).collect::<Vec<_>>());
        for d in enabled {
            let stats = self.telemetry.device(&d.name);
            let handle = tokio::spawn(poller::run(
                d,
                self.poll_tx.clone(),
                stats,
                self.stop_pollers.subscribe(),
            ));
            self.pollers.push(handle);
        }
    }

    async fn stop_all_pollers(&mut self) {
        let _ = self.stop_pollers.send(true);
        for h in self.pollers.drain(..) {
            let _ = h.await;
        }
    }

    fn start_connect(&mut self) {
        self.reconnect_at = None;
        if self.opts.dry_run {
            // No broker: behave as if connected, and log instead of publishing.
            let now = now_ms();
            let _ = self.session.begin_connect(now);
            let actions = self.session.connected(now);
            self.telemetry.connected.store(true, Relaxed);
            self.dry_run_actions(actions);
            return;
        }
        let now = now_ms();
        let actions = self.session.begin_connect(now);
        let mut will = None;
        let mut server = 0;
        for a in actions {
            match a {
                EdgeAction::SetWill(w) => will = Some(w),
                EdgeAction::Connect { server: s } => server = s,
                other => tracing::debug!(?other, "unexpected action before connect"),
            }
        }
        let Some(srv) = self.servers.get(server).cloned() else {
            tracing::error!("no MQTT server configured");
            return;
        };
        self.conn_id += 1;
        self.connack = false;
        self.closing = false;
        if let Some(problem) = srv.certificate_problem(rustls::pki_types::UnixTime::now()) {
            tracing::warn!(server = %srv.label(), "tls.cert: {problem}: connecting anyway (the broker decides); polling and storing go on");
        }
        let opts = mqtt::options(&srv, &self.cfg.mqtt, &self.cfg.node.node_id, will.as_ref());
        tracing::info!(server = %srv.label(), bdseq = self.session.bdseq(), attempt = self.attempt, "connecting");
        self.set_status(format!("connecting to {}", srv.label()));
        self.client = Some(mqtt::connect(
            opts,
            self.cfg.mqtt.connect_timeout,
            self.conn_id,
            self.conn_tx.clone(),
        ));
    }

    fn schedule_reconnect(&mut self) {
        let wait = crate::backoff::delay(
            self.cfg.mqtt.backoff_min,
            self.cfg.mqtt.backoff_max,
            self.attempt.saturating_add(1),
            self.rng.next_u64(),
        );
        self.reconnect_at = Some(Instant::now() + wait);
        self.attempt = self.attempt.saturating_add(1);
    }

    async fn on_conn_event(&mut self, ev: ConnEvent) {
        self.telemetry.mqtt_progress.fetch_add(1, Relaxed);
        match ev {
            ConnEvent::Event(id, _) | ConnEvent::Closed(id, _) if id != self.conn_id => {}
            ConnEvent::Event(_, Event::Incoming(Packet::ConnAck(_))) => {
                self.connack = true;
                self.attempt = 0;
                self.telemetry.connects.fetch_add(1, Relaxed);
                self.telemetry.connected.store(true, Relaxed);
                let server = self
                    .servers
                    .get(self.session.server())
                    .map(Server::label)
                    .unwrap_or_default();
                tracing::info!(%server, bdseq = self.session.bdseq(), "connected");
                self.fwd.connected();
                let actions = self.session.connected(now_ms());
                self.execute(actions).await;
            }
            ConnEvent::Event(_, Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                if p.payload.len() as u64 > self.cfg.commands.max_message_size {
                    // Dropped here, the connection kept: only commands and
                    // STATE arrive, and neither is ever this large.
                    self.telemetry.rejected_messages.fetch_add(1, Relaxed);
                    self.telemetry.oversized_messages.fetch_add(1, Relaxed);
                    tracing::warn!(topic = %pretty::prefix(&topic, 300), bytes = p.payload.len(),
                        max_message_size = self.cfg.commands.max_message_size, retained = p.retain,
                        "inbound message over commands.max_message_size dropped");
                    return;
                }
                let actions = self.session.handle_delivery(now_ms(), &topic, &p.payload, p.retain);
                // An NBIRTH answering a command (not STATE) is a rebirth.
                if !topic.starts_with("spBv1.0/STATE/")
                    && actions
                        .iter()
                        .filter_map(EdgeAction::publish)
                        .any(|p| p.topic.contains("/NBIRTH/"))
                {
                    self.telemetry.rebirths.fetch_add(1, Relaxed);
                }
                if topic.starts_with("spBv1.0/STATE/") {
                    self.note_host_state(&p.payload);
                }
                self.execute(actions).await;
            }
            ConnEvent::Event(_, Event::Outgoing(Outgoing::Publish(pkid))) => self.fwd.outgoing_publish(pkid),
            ConnEvent::Event(_, Event::Incoming(Packet::PubAck(ack))) => {
                self.fwd.puback(ack.pkid, now_ms());
                self.update_gauges();
            }
            ConnEvent::Event(..) => {}
            ConnEvent::Closed(_, e) => self.on_closed(e),
        }
    }

    fn note_host_state(&mut self, payload: &[u8]) {
        if let Ok(s) = crate::sparkplug::state::HostState::parse(payload) {
            self.telemetry.primary_host_online.store(s.online, Relaxed);
            tracing::info!(online = s.online, timestamp = s.timestamp, "Primary Host STATE");
        }
        self.fwd.host_state(self.session.host_online(), now_ms());
    }

    /// Publishes a QoS 1 marker after everything sent so far.
    async fn send_marker(&mut self) {
        let Some(c) = &self.client else { return };
        let topic = watermark_topic(&self.cfg.node.group_id, &self.cfg.node.node_id);
        match c
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, Vec::<u8>::new())
            .await
        {
            Ok(()) => self.fwd.marker_sent(),
            Err(e) => tracing::debug!(error = %e, "marker not sent (connection closing)"),
        }
    }

    fn on_closed(&mut self, e: ConnectionError) {
        self.client = None;
        self.telemetry.connected.store(false, Relaxed);
        self.telemetry.born.store(false, Relaxed);
        let server = self.servers.get(self.session.server()).cloned();
        let why = server
            .as_ref()
            .map(|s| mqtt::explain(s, &e))
            .unwrap_or_else(|| e.to_string());
        // What the broker has not provably read goes to the store.
        self.fwd.connection_lost();
        if self.closing {
            // We disconnected on purpose (host offline, next server); the
            // session already walked on.
            self.closing = false;
            tracing::info!("disconnected; moving to the next server");
        } else if self.connack {
            self.telemetry.connection_failures.fetch_add(1, Relaxed);
            tracing::warn!(error = %why, "connection lost");
            self.session.connection_lost();
        } else {
            self.telemetry.connection_failures.fetch_add(1, Relaxed);
            tracing::error!(error = %why, "connection failed");
            if mqtt::connect_was_sent(&e) {
                for a in self.session.connect_sent() {
                    if let EdgeAction::PersistBdSeq(b) = a {
                        self.persist_bdseq(b);
                    }
                }
            }
            self.session.connect_failed();
        }
        self.set_status(format!("disconnected: {why}"));
        self.schedule_reconnect();
    }

    /// Persists the bdSeq before going on (it must survive a crash right
    /// after the CONNECT). Its fsync runs with the worker handed over to
    /// the runtime's other tasks, so pollers and the HTTP endpoint go on.
    fn persist_bdseq(&self, b: u8) {
        let save = || save_bdseq(&self.state_dir, b);
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let saved = if multi {
            tokio::task::block_in_place(save)
        } else {
            save()
        };
        if let Err(e) = saved {
            tracing::error!(error = %e, dir = %self.state_dir.display(), "cannot persist bdSeq");
        }
    }

    async fn execute(&mut self, actions: Vec<EdgeAction>) {
        if self.opts.dry_run {
            self.dry_run_actions(actions);
            return;
        }
        for a in actions {
            match a {
                EdgeAction::PersistBdSeq(b) => self.persist_bdseq(b),
                EdgeAction::Subscribe(topics) => {
                    if let Some(c) = &self.client {
                        let filters = topics
                            .into_iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t, rumqttc::QoS::AtLeastOnce));
                        if let Err(e) = c.subscribe_many(filters).await {
                            tracing::error!(error = %e, "subscribe failed");
                        }
                    }
                }
                EdgeAction::Publish(p) => {
                    let qos1 = p.qos == crate::sparkplug::QoS::AtLeastOnce;
                    if self.publish(p).await == Sent::Yes && qos1 {
                        self.fwd.other_qos1_sent();
                    }
                }
                EdgeAction::Data {
                    publish,
                    device,
                    samples,
                    count,
                    oldest_ms,
                } => {
                    let data = Encoded {
                        device,
                        samples: count as u64,
                        payload: samples,
                        oldest_ms,
                    };
                    let sent = self.publish(publish).await;
                    self.fwd.data(data, sent);
                }
                EdgeAction::Disconnect => {
                    self.closing = true;
                    self.telemetry.born.store(false, Relaxed);
                    if let Some(c) = &self.client {
                        let _ = c.disconnect().await;
                    }
                }
                EdgeAction::StoreHistorical { device, metrics } => self.fwd.historical(&Record { device, metrics }),
                EdgeAction::Command { device, metrics } => {
                    self.telemetry.commands_received.fetch_add(1, Relaxed);
                    // One line per command, however many metrics: the count and the first three.
                    let first: Vec<String> = metrics
                        .iter()
                        .take(3)
                        .map(|m| pretty::prefix(&pretty::metric_line(m), 200).to_string())
                        .collect();
                    tracing::warn!(
                        device = device.as_deref().unwrap_or("(node)"), metrics = metrics.len(), first = ?first,
                        "write request refused: command write-back is disabled ([commands] enabled = false)"
                    );
                }
                EdgeAction::Rejected { topic, reason } => {
                    self.telemetry.rejected_messages.fetch_add(1, Relaxed);
                    tracing::warn!(topic = %pretty::prefix(&topic, 300), reason = %pretty::prefix(&reason, 500), "message rejected");
                }
                EdgeAction::SetWill(_) | EdgeAction::Connect { .. } => {}
            }
        }
        if self.fwd.marker_due(false) {
            self.send_marker().await;
        }
        self.update_gauges();
    }

    /// Publishes; what became of it.
    async fn publish(&mut self, p: Publish) -> Sent {
        let kind = Topic::parse(&p.topic).ok().and_then(|t| t.kind());
        let Some(c) = &self.client else { return Sent::Closed };
        let len = p.payload.len();
        if (len + p.topic.len() + crate::sparkplug::edge::PUBLISH_OVERHEAD) as u64 > self.cfg.mqtt.max_packet_size {
            // DATA is split by the session to fit; a birth cannot be split
            // (it must hold every metric): say what to change. The
            // connection is fine: this is no connection loss.
            tracing::error!(
                topic = %p.topic, bytes = len, max_packet_size = self.cfg.mqtt.max_packet_size,
                "message larger than mqtt.max_packet_size: raise it (the broker's limit too)"
            );
            return Sent::TooLarge;
        }
        if kind == Some(MessageType::NBirth) {
            tracing::info!(topic = %p.topic, bdseq = self.session.bdseq(), "NBIRTH");
        }
        match mqtt::publish(c, p).await {
            Ok(()) => {
                if let Some(k) = kind {
                    self.telemetry.published(k, len);
                }
                Sent::Yes
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed (connection closing)");
                Sent::Closed
            }
        }
    }

    /// Hands the forwarder's operations to the store's thread, in order,
    /// and logs what the forwarder noticed.
    async fn send_store_ops(&mut self) {
        for op in self.fwd.take_ops() {
            self.send_store(op).await;
        }
        self.log_notices();
    }

    async fn send_store(&mut self, op: StoreOp) {
        let sent = match &self.store {
            Some(t) => t.send(op).await,
            None => false,
        };
        if !sent {
            // The thread is gone (it panicked): nothing more can be stored.
            tracing::error!("the store's thread is gone: nothing more can be stored or replayed");
            self.store = None;
        }
    }

    fn log_notices(&mut self) {
        for n in self.fwd.take_notices() {
            match n {
                Notice::StoreFailed { samples, error } => {
                    // The first write error that closed the store says what to do.
                    if self.store_errors.last.is_none() && self.fwd.store().failure.is_some() {
                        tracing::error!(
                            "the store failed a write: a new one is tried in 10 s (what the failed one holds is kept and merged \
                             back at the next start); live data is still published, samples that cannot be stored are dropped \
                             and counted; /ready says 503 meanwhile: free disk space under store.path"
                        );
                    }
                    self.store_errors.note(samples, |dropped, times| {
                        tracing::error!(error = %error, dropped, times, "could not store samples");
                    });
                }
                Notice::StoreFull {
                    samples,
                    limit,
                    max_bytes,
                } => self.store_full.note(samples, |dropped, times| {
                    if limit < max_bytes {
                        tracing::error!(
                            dropped,
                            times,
                            max_bytes,
                            limit,
                            "disk nearly full: the store was bounded to what fits and dropped the oldest samples"
                        );
                    } else {
                        tracing::error!(dropped, times, max_bytes, "store full: dropped the oldest samples");
                    }
                }),
                Notice::HostOffline { samples } => tracing::warn!(
                    samples, window = ?self.cfg.store.host_window,
                    "Primary Host offline: storing the samples it may have missed, to replay them"
                ),
                Notice::Unreplayable { samples, error } => {
                    tracing::error!(error = %error, dropped = samples, "stored samples cannot be replayed")
                }
                // Logged where the publish was refused.
                Notice::TooLarge { .. } => {}
                Notice::StoreError { what, error } => tracing::error!(error = %error, "cannot {what} the store"),
            }
        }
    }

    /// A report from the store's thread.
    async fn on_store(&mut self, report: StoreReport) {
        self.fwd.on_store(report);
        self.replay(now_ms()).await;
        self.update_gauges();
    }

    fn dry_run_actions(&mut self, actions: Vec<EdgeAction>) {
        for a in actions {
            match a {
                EdgeAction::Publish(p) | EdgeAction::Data { publish: p, .. } => {
                    let kind = Topic::parse(&p.topic).ok().and_then(|t| t.kind());
                    if let Some(k) = kind {
                        self.telemetry.published(k, p.payload.len());
                    }
                    // DATA omits datatypes; decode the envelope for the log line.
                    let summary = match Payload::decode(&p.payload) {
                        Ok(d) => pretty::payload_lines(&d),
                        Err(_) => format!("{} bytes", p.payload.len()),
                    };
                    tracing::info!(topic = %p.topic, "dry run, would publish: {summary}");
                }
                EdgeAction::StoreHistorical { device, metrics } => self.fwd.historical(&Record { device, metrics }),
                other => tracing::debug!(?other, "dry run"),
            }
        }
        self.telemetry.born.store(self.session.is_born(), Relaxed);
    }

    async fn on_poll(&mut self, ev: PollEvent) {
        self.telemetry.poll_progress.fetch_add(1, Relaxed);
        let now = now_ms();
        let result = match ev {
            PollEvent::Online {
                device,
                samples,
                complete: true,
            } => self.session.device_online_samples(now, &device, samples),
            PollEvent::Online {
                device,
                samples,
                complete: false,
            } => self.session.preload_samples(&device, samples).map(|()| Vec::new()),
            PollEvent::Offline { device, reason } => {
                tracing::warn!(%device, %reason, "device offline");
                self.session.device_offline(now, &device)
            }
            PollEvent::Samples { device, samples } => {
                let n = samples.len() as u64;
                let r = self.session.update_samples(now, Some(&device), samples);
                if self.session.is_publishing() {
                    self.telemetry.data_metrics.fetch_add(n, Relaxed);
                }
                r
            }
        };
        match result {
            Ok(actions) => self.execute(actions).await,
            Err(e) => tracing::error!(error = %e, "poller and session disagree"),
        }
    }

    async fn on_tick(&mut self) {
        self.telemetry.mqtt_progress.fetch_add(1, Relaxed);
        if self.pollers.is_empty() {
            self.telemetry.poll_progress.fetch_add(1, Relaxed);
        }
        let now = now_ms();
        // Sync if due, and try a new store if a failed one has waited; a
        // closed, healthy store is not woken for nothing.
        if self.fwd.store().needs_tick() {
            self.send_store(StoreOp::Tick).await;
        }
        self.fwd.tick(now, self.session.is_publishing());
        self.replay(now).await;
        if self.fwd.marker_due(true) {
            self.send_marker().await;
        }
        self.update_gauges();
    }

    /// Replays the stored records the forwarder has ready, as far as its
    /// window and rate allow. It runs on the tick and as the store's reads
    /// arrive, so live data, handled between them, never waits behind the
    /// backlog.
    async fn replay(&mut self, now: u64) {
        if !self.session.is_publishing() {
            return;
        }
        while let Some((id, r)) = self.fwd.next_replay() {
            let n = r.metrics.len() as u64;
            let actions = match self.session.replay(now, r.device.as_deref(), r.metrics) {
                Ok(actions) => actions,
                Err(EdgeError::NotPublishing) => {
                    self.fwd.replayed(id, n, Replayed::Stopped);
                    return;
                }
                Err(e) => {
                    self.fwd.replayed(id, n, Replayed::Unreplayable(e.to_string()));
                    continue;
                }
            };
            let mut too_large = 0;
            for a in actions {
                match a {
                    EdgeAction::Publish(p) => match self.publish(p).await {
                        Sent::Yes => {}
                        // The session splits DATA to fit: nothing to retry;
                        // counted, deleted with the next confirmation.
                        Sent::TooLarge => too_large = n,
                        // The connection is going: the record stays stored
                        // and is replayed on the next one.
                        Sent::Closed => {
                            self.fwd.replayed(id, n, Replayed::Stopped);
                            return;
                        }
                    },
                    other => self.execute(vec![other]).await,
                }
            }
            self.fwd.replayed(id, n, Replayed::Sent { too_large });
        }
    }

    fn update_gauges(&mut self) {
        let t = &self.telemetry;
        t.born.store(self.session.is_born(), Relaxed);
        t.bdseq.store(self.session.bdseq().into(), Relaxed);
        t.seq.store(u64::from(self.session.next_seq().wrapping_sub(1)), Relaxed);
        let c = self.fwd.counts();
        t.stored_samples.store(c.stored, Relaxed);
        t.dropped_samples.store(c.dropped, Relaxed);
        t.confirmed_samples.store(c.confirmed, Relaxed);
        t.replayed_samples.store(c.replayed, Relaxed);
        t.replay_rate.store(self.fwd.replay_rate(), Relaxed);
        let o = self.fwd.outbox();
        t.unconfirmed_samples.store(o.unconfirmed, Relaxed);
        t.retained_samples.store(o.retained, Relaxed);
        let s = self.fwd.store();
        t.store_failed
            .store(s.failure.is_some() || self.store.is_none(), Relaxed);
        let q = s.stats;
        t.queue_depth.store(q.metrics, Relaxed);
        t.queue_records.store(q.records, Relaxed);
        t.queue_bytes.store(q.bytes, Relaxed);
        t.corrupt_records.store(q.corrupt_records, Relaxed);
        t.synced_samples.store(q.synced_metrics, Relaxed);
        t.unsynced_samples.store(s.unsynced_samples, Relaxed);
        t.store_bytes_written.store(q.bytes_written, Relaxed);
        t.store_syncs.store(q.syncs, Relaxed);
        t.store_file_bytes.store(s.file_bytes, Relaxed);
        t.queue_oldest_ms.store(s.oldest_ms.unwrap_or(0), Relaxed);
        if self.session.is_born() {
            self.set_status(format!(
                "born, bdSeq {}, queue {} samples",
                self.session.bdseq(),
                q.metrics
            ));
        }
    }

    fn set_status(&self, s: String) {
        if let Ok(mut st) = self.status.lock() {
            if *st != s {
                systemd::status(&s);
                *st = s;
            }
        }
    }

    /// SIGHUP: re-read the file; on success apply it, rebirthing if the tag set changed.
    async fn reload(&mut self) {
        let Some(path) = self.opts.config_path.clone() else {
            tracing::warn!("SIGHUP ignored: no configuration file to reload");
            return;
        };
        let mut cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration:\n{e}");
                return;
            }
        };
        if let Err(e) = cfg.apply(&self.opts.overrides) {
            tracing::error!("reload refused: {e}");
            return;
        }
        let now = now_ms();
        let old = definitions(&self.cfg, now);
        let new = definitions(&cfg, now);
        let same_tags = old.len() == new.len()
            && old.iter().zip(&new).all(|(a, b)| {
                a.name == b.name
                    && a.metrics.len() == b.metrics.len()
                    && a.metrics
                        .iter()
                        .zip(&b.metrics)
                        .all(|(x, y)| x.name == y.name && x.datatype == y.datatype)
            });
        // Stop the pollers first and deliver what they already read: no sample is lost.
        self.stop_all_pollers().await;
        let identity_changed = cfg.node != self.cfg.node;
        if cfg.mqtt != self.cfg.mqtt || identity_changed {
            tracing::warn!("[node] or [mqtt] changed: takes effect after a restart");
        }
        let node = self.cfg.node.clone();
        let mqtt_cfg = self.cfg.mqtt.clone();
        // What the forwarder queued goes first, under the options it was queued with.
        self.send_store_ops().await;
        self.send_store(StoreOp::SetOptions(disk_options(&cfg))).await;
        self.cfg = cfg;
        self.cfg.node = node;
        self.cfg.mqtt = mqtt_cfg;
        self.fwd.set_options(forwarder_options(&self.cfg));
        if !same_tags {
            match self.session.redefine(now, node_metrics(now), new) {
                Ok(actions) => {
                    tracing::info!("configuration reloaded: tag set changed, rebirth");
                    self.telemetry.rebirths.fetch_add(1, Relaxed);
                    self.execute(actions).await;
                }
                Err(e) => tracing::error!(error = %e, "reload could not redefine the session"),
            }
        } else {
            tracing::info!("configuration reloaded: same tag set, no rebirth");
        }
        self.start_pollers();
    }

    /// NDEATH, DISCONNECT, and wait (briefly) for both to leave; then the
    /// store is flushed and its thread ends.
    async fn shutdown(
        &mut self,
        conn_rx: &mut mpsc::Receiver<ConnEvent>,
        store_rx: &mut mpsc::UnboundedReceiver<StoreReport>,
    ) {
        tracing::info!("shutting down");
        systemd::stopping();
        self.stop_all_pollers().await;
        let actions = self.session.shutdown(now_ms());
        if self.opts.dry_run {
            self.dry_run_actions(actions);
        } else {
            let had_connection = self.client.is_some();
            if had_connection && self.connack {
                // Let a last marker confirm what was sent, so that little is
                // stored to be replayed (as duplicates) after the restart.
                if self.fwd.marker_due(true) {
                    self.send_marker().await;
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.fwd.markers_pending() > 0 && self.client.is_some() {
                    match tokio::time::timeout_at(deadline, conn_rx.recv()).await {
                        Ok(Some(ev)) => self.on_conn_event(ev).await,
                        _ => break,
                    }
                }
            }
            self.execute(actions).await;
            if had_connection {
                let id = self.conn_id;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(ev) = conn_rx.recv().await {
                        if matches!(ev, ConnEvent::Closed(i, _) if i == id) {
                            break;
                        }
                    }
                })
                .await;
            }
            self.fwd.connection_lost();
        }
        self.fwd.commit();
        self.send_store_ops().await;
        self.send_store(StoreOp::Flush).await;
        if let Some(t) = self.store.take() {
            // Joining waits for every operation sent: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || drop(t)).await;
        }
        while let Ok(report) = store_rx.try_recv() {
            self.fwd.on_store(report);
        }
        self.log_notices();
        if self.opts.dry_run {
            let _ = std::fs::remove_dir_all(&self.queue_dir);
        }
        tracing::info!(stored = self.fwd.store().stats.metrics, "stopped");
    }
}
