//! The gateway runtime: executes what the sans-IO cores decide.
//!
//! One task owns the [`EdgeSession`] (the Sparkplug protocol) and the
//! [`Forwarder`] (store-and-forward: what to keep, confirm and replay) and
//! runs a select loop over: the MQTT [`Link`]'s events, the pollers'
//! events, the store thread's reports, a 100 ms tick (debounced rebirths,
//! replay of stored data, status), and signals (SIGTERM/SIGINT: NDEATH,
//! DISCONNECT, exit 0; SIGHUP: reload). The durable store runs on its own
//! thread ([`StoreThread`]): no write, sync or read of the store runs on the
//! async workers.
//!
//! Invariants:
//! - At most one MQTT connection exists (the link's); the loop never waits
//!   on it: publishes are queued in order, and while more than the link's
//!   backlog bound waits, no new sample is taken and nothing is replayed.
//! - The Will is rebuilt by the session before every CONNECT; bdSeq is
//!   persisted (write, fsync, rename) as soon as a CONNECT is known to be sent.
//! - Every decision about stored data is the forwarder's; this loop only
//!   hands its operations to the store thread, in order, and its reports
//!   back (see `queue::forward` for the rules and their tests).
//! - A group commit happens as soon as no more samples are ready; a sample
//!   counts as stored once written (`spb_stored_samples_total`), and is
//!   synced within `store.flush_interval`.
//! - A reload that fails validation changes nothing and logs every error.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch as signal_watch};
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::config::{Config, Overrides};
use crate::mqtt::link::{Link, Sent};
use crate::mqtt::{MqttError, Server};
use crate::plc::poller::PollEvent;
use crate::queue::disk::QueueError;
use crate::queue::forward::{Forwarder, StoreOp};
use crate::queue::outbox::Encoded;
use crate::queue::thread::StoreThread;
use crate::queue::{LazyStore, Record};
use crate::sparkplug::edge::{EdgeAction, EdgeError, EdgeSession};
use crate::sparkplug::{pretty, Payload, QoS};
use crate::telemetry::logging::LogBudget;
use crate::telemetry::metrics::Telemetry;
use crate::telemetry::{http, systemd};

mod audit;
mod bdseq;
mod commands;
mod connection;
mod forwarding;
mod lifecycle;
mod report;
mod setup;
mod waiting;

pub use commands::RESTART_EXIT_STATUS;
use setup::{definitions, disk_options, edge_config, forwarder_options, node_metrics};
pub use setup::{preflight, watermark_topic, Preflight};

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
    #[error("a dry run needs {0}")]
    NotSetUp(crate::config::SetupNeeded),
}

/// The signals the gateway answers, installed once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, GatewayError> {
        let io = |e: std::io::Error| GatewayError::Io {
            what: "installing a handler for",
            path: "signals".into(),
            source: e,
        };
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
            hup: signal(SignalKind::hangup()).map_err(io)?,
        })
    }
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

struct Runtime {
    cfg: Config,
    opts: RunOptions,
    telemetry: Arc<Telemetry>,
    status: Arc<Mutex<String>>,
    session: EdgeSession,
    link: Link,
    /// The store-and-forward decisions; the store itself runs on `store`.
    fwd: Forwarder,
    store: Option<StoreThread>,
    /// Where the queue lives; removed at exit for a dry run.
    queue_dir: PathBuf,
    poll_tx: mpsc::Sender<PollEvent>,
    stop_pollers: signal_watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
    state_dir: PathBuf,
    store_log: report::StoreLog,
    /// Warnings about inbound messages: a flood costs 10 lines a second.
    inbound_log: LogBudget,
    /// Whether a write a host asks for may reach a PLC, and the write lock.
    guard: crate::commands::Guard,
    /// Each polled device's queue of accepted writes.
    writers: std::collections::HashMap<String, mpsc::Sender<crate::plc::poller::WriteRequest>>,
    /// The audit file's thread (none in a dry run).
    audit_file: Option<audit::AuditThread>,
    /// Accepted writes waiting for their audit line ([`commands::write_ahead`]).
    write_ahead: Option<mpsc::Sender<commands::WriteAhead>>,
    audit_budget: crate::commands::AuditBudget,
    /// `Node Control/Reboot` asked for a restart of the service.
    restart_requested: bool,
}

/// How the gateway ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Stopped,
    /// `Node Control/Reboot`: exit with [`RESTART_EXIT_STATUS`].
    RestartRequested,
}

/// Runs the gateway until SIGTERM/SIGINT (or a restart by command).
pub async fn run(cfg: Config, opts: RunOptions) -> Result<Exit, GatewayError> {
    let telemetry = Telemetry::new();
    let status = Arc::new(Mutex::new("starting".to_string()));
    let mut signals = Signals::install()?;
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
    // A dry run needs an identity (it names its topics) but no broker; a
    // service waits for what the file as installed lacks.
    let cfg = if opts.dry_run {
        if let Some(&n) = cfg
            .setup_needed()
            .iter()
            .find(|n| **n == crate::config::SetupNeeded::Identity)
        {
            return Err(GatewayError::NotSetUp(n));
        }
        cfg
    } else {
        let listen = cfg.telemetry.listen;
        match waiting::until_set_up(cfg, &opts, &telemetry, &status, &mut signals).await {
            Some(c) => {
                if c.telemetry.listen != listen {
                    tracing::warn!("[telemetry] listen changed: takes effect after a restart");
                }
                c
            }
            None => return Ok(Exit::Stopped),
        }
    };
    let state_dir = cfg.store.path.clone();
    if !opts.dry_run {
        std::fs::create_dir_all(&state_dir).map_err(|source| GatewayError::Io {
            what: "creating the state directory",
            path: state_dir.clone(),
            source,
        })?;
    }
    // A dry run has no broker: its link has no server and never connects.
    let servers = if opts.dry_run {
        Vec::new()
    } else {
        Server::prepare_all(&cfg.mqtt)?
    };
    let now = now_ms();
    let stored = if opts.dry_run { None } else { bdseq::load(&state_dir) };
    let session = EdgeSession::new(
        edge_config(&cfg, opts.dry_run),
        node_metrics(now, cfg.commands.write_lock, cfg.commands.reboot),
        definitions(&cfg, now),
        stored,
    )?;
    let guard = crate::commands::Guard::new(cfg.commands.guard());
    telemetry.write_locked.store(guard.locked().is_some(), Relaxed);
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
    telemetry.store_open.store(true, Relaxed);
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
    let audit_file = if opts.dry_run {
        None
    } else {
        let o = audit::AuditOptions {
            path: state_dir.join(audit::AUDIT_FILE),
            max_size: cfg.commands.audit_max_size,
            keep: cfg.commands.audit_keep,
        };
        Some(
            audit::AuditThread::spawn(o, telemetry.audit_errors.clone()).map_err(|source| GatewayError::Io {
                what: "starting the audit file's thread for",
                path: state_dir.join(audit::AUDIT_FILE),
                source,
            })?,
        )
    };
    let (poll_tx, mut poll_rx) = mpsc::channel(1024);
    let write_ahead = audit_file.as_ref().map(|_| {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(commands::write_ahead(rx, poll_tx.clone()));
        tx
    });
    let (stop_pollers, _) = signal_watch::channel(false);
    let link = Link::new(
        servers,
        cfg.mqtt.clone(),
        cfg.node.node_id.clone(),
        now ^ u64::from(std::process::id()),
    );
    let mut rt = Runtime {
        fwd,
        store: Some(store),
        queue_dir,
        cfg,
        opts,
        telemetry: telemetry.clone(),
        status,
        session,
        link,
        poll_tx,
        stop_pollers,
        pollers: Vec::new(),
        state_dir,
        store_log: report::StoreLog::default(),
        inbound_log: LogBudget::new(
            10,
            "warnings about inbound messages",
            "spb_rejected_messages_total and spb_commands_received_total",
        ),
        guard,
        writers: std::collections::HashMap::new(),
        write_ahead,
        audit_file,
        audit_budget: crate::commands::AuditBudget::new(commands::AUDIT_REFUSALS_PER_MINUTE),
        restart_requested: false,
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
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // While the link is backlogged, samples wait in the pollers' channel
        // (and then in the pollers): the broker sets the pace.
        let take_samples = !rt.link.backlogged();
        tokio::select! {
            ev = rt.link.next() => rt.on_link(ev),
            Some(ev) = poll_rx.recv(), if take_samples => rt.on_poll(ev),
            Some(report) = store_rx.recv() => rt.on_store(report),
            _ = tick.tick() => rt.on_tick().await,
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => rt.reload().await,
        }
        if rt.restart_requested {
            tracing::warn!("restarting the service, as Node Control/Reboot asked");
            break;
        }
        // Replay tops the link's queue up again as soon as it has drained
        // (a no-op when nothing is ready or the queue is full).
        if !rt.opts.dry_run {
            rt.replay(now_ms());
        }
        // Group commit once no more samples are ready (or per the policy).
        rt.fwd.maybe_commit(poll_rx.is_empty());
        rt.send_store_ops().await;
    }
    rt.shutdown(&mut store_rx).await;
    Ok(if rt.restart_requested {
        Exit::RestartRequested
    } else {
        Exit::Stopped
    })
}

impl Runtime {
    fn execute(&mut self, actions: Vec<EdgeAction>) {
        if self.opts.dry_run {
            self.dry_run_actions(actions);
            return;
        }
        for a in actions {
            match a {
                EdgeAction::PersistBdSeq(b) => bdseq::persist(&self.state_dir, b),
                EdgeAction::Subscribe(topics) => self.link.subscribe(topics, QoS::AtLeastOnce),
                EdgeAction::Publish(p) => {
                    let qos1 = p.qos == QoS::AtLeastOnce;
                    if self.publish(p) == Sent::Yes && qos1 {
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
                    let sent = self.publish(publish);
                    self.fwd.data(data, sent);
                }
                EdgeAction::Disconnect => {
                    self.telemetry.born.store(false, Relaxed);
                    self.link.disconnect();
                }
                EdgeAction::StoreHistorical { device, metrics } => self.fwd.historical(&Record { device, metrics }),
                EdgeAction::Command { device, metrics } => self.on_command(device, metrics),
                EdgeAction::NodeControl { metric, refused } => self.audit_node_control(metric, refused),
                EdgeAction::HostState { online, timestamp } => {
                    self.telemetry.primary_host_online.store(online, Relaxed);
                    tracing::info!(online, timestamp, "Primary Host STATE");
                    self.fwd.host_state(online, now_ms());
                }
                EdgeAction::Rejected { topic, reason } => {
                    self.telemetry.rejected_messages.fetch_add(1, Relaxed);
                    if !self.inbound_log.allow(now_ms()) {
                        continue;
                    }
                    tracing::warn!(topic = %pretty::prefix(&topic, 300), reason = %pretty::prefix(&reason, 500), "message rejected");
                }
                EdgeAction::SetWill(_) | EdgeAction::Connect { .. } => {}
            }
        }
        if self.fwd.marker_due(false) {
            self.send_marker();
        }
        self.update_gauges();
    }

    fn dry_run_actions(&mut self, actions: Vec<EdgeAction>) {
        for a in actions {
            match a {
                EdgeAction::Publish(p) | EdgeAction::Data { publish: p, .. } => {
                    if let Some(k) = p.kind {
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

    fn on_poll(&mut self, ev: PollEvent) {
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
            PollEvent::Written {
                ticket,
                outcome,
                read_back,
                at,
            } => {
                self.on_written(ticket, outcome, read_back, at);
                return;
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
            Ok(actions) => self.execute(actions),
            Err(e) => tracing::error!(error = %e, "poller and session disagree"),
        }
    }

    async fn on_tick(&mut self) {
        self.telemetry.mqtt_progress.fetch_add(1, Relaxed);
        if self.pollers.is_empty() {
            self.telemetry.poll_progress.fetch_add(1, Relaxed);
        }
        let now = now_ms();
        self.inbound_log.flush(now);
        // Sync if due, and try a new store if a failed one has waited; a
        // closed, healthy store is not woken for nothing.
        if self.fwd.store().needs_tick() {
            self.send_store(StoreOp::Tick).await;
        }
        self.fwd.tick(now, self.session.is_publishing());
        self.replay(now);
        if self.fwd.marker_due(true) {
            self.send_marker();
        }
        self.update_gauges();
    }

    fn update_gauges(&mut self) {
        let t = &self.telemetry;
        t.born.store(self.session.is_born(), Relaxed);
        t.bdseq.store(self.session.bdseq().into(), Relaxed);
        t.seq.store(u64::from(self.session.next_seq().wrapping_sub(1)), Relaxed);
        report::store_gauges(t, &self.fwd, self.store.is_some());
        if self.session.is_born() {
            self.set_status(format!(
                "born, bdSeq {}, queue {} samples",
                self.session.bdseq(),
                self.fwd.store().stats.metrics
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
}
