//! The uplink runtime: executes what the sans-IO [`HostSession`] decides and
//! hands the rows to a writer task.
//!
//! One task owns the session and runs a select loop over the current MQTT
//! connection's events, a 50 ms tick (reorder timeouts, batch latency,
//! backlog check), the reconnect timer and SIGTERM/SIGINT. Each writer task
//! owns a database connection; with PostgreSQL a folder task on a connection
//! of its own keeps the rollups current every `rollup_interval`.
//!
//! Invariants:
//! - Every message on `spBv1.0/…` is logged raw before the session sees it.
//! - A batch is handed to the writer whole; the writer retries it with
//!   backoff until the database takes it (facts are idempotent, so a retry
//!   after an unknown outcome writes nothing twice).
//! - The backlog (rows handed over, not yet committed) is bounded: past
//!   `offline_after_rows` this host publishes STATE offline and the edges
//!   store on their own flash (docs/ARCHITECTURE.md decision 4); once the backlog
//!   is empty again it publishes STATE online. Past `backlog_max_rows` or
//!   `backlog_max_bytes` new rows are dropped, counted and logged at ERROR,
//!   never silently; half of `backlog_max_bytes` declares STATE offline
//!   like `offline_after_rows` does.
//! - A command of the API (`POST /commands`, allowed by [`super::api`]) is
//!   checked against the target's last birth (online, declared, a value of
//!   its datatype) before anything is sent, sent with a request id the edge
//!   echoes on the DDATA that reports its outcome, and answered when that
//!   DDATA arrives or its timeout passes. `sp_command_audit` gets a row when
//!   it is refused or sent, replaced by its outcome (confirmed, failed,
//!   refused by the edge, timeout).
//! - With `[scale]` ([`super::scale`]): rows of the groups this instance
//!   holds go to the writers, the rest to the standby, and the DATA of
//!   groups held elsewhere waits undecoded; a group taken is written from
//!   what was kept before anything newer of it. STATE and its Will go on a
//!   connection of its own, opened only while the STATE lease is held; a
//!   command (a rebirth request) goes to a group only from its holder.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::api::{answer, ApiRequest, UplinkExposition};
use super::commands::{to_value, Outcome, Request};
use super::config::{Backend, UplinkConfig};
use super::mssql::MssqlSink;
use super::postgres::PgSink;
use super::rows::{storable, Batch, CommandRow};
use super::scale::{ScaleConfig, Shared};
use super::stats::Stats;
use super::writer::{self, Pending, Queue, Writers};
use crate::clock::now_ms;
use crate::mqtt::link::{Link, LinkEvent};
use crate::mqtt::{MqttError, Server};
use crate::sparkplug::host::{HostConfig, HostError, HostEvent, HostSession};
use crate::sparkplug::{PropertySet, PropertyValue, QoS, Value};
use crate::telemetry::http;
use crate::telemetry::logging::LogBudget;

/// Why the uplink could not start.
#[derive(Debug, Error)]
pub enum UplinkError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("host session: {0}")]
    Host(#[from] HostError),
    #[error("telemetry.listen {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("installing a signal handler: {0}")]
    Signal(std::io::Error),
    #[error("commands.https: {0}")]
    Https(String),
}

/// Runs the uplink until SIGTERM/SIGINT; SIGHUP reads `path` again and
/// applies what can change while running ([`Loop::reload`]).
pub async fn run(cfg: UplinkConfig, dry_run: bool, path: Option<std::path::PathBuf>) -> Result<(), UplinkError> {
    let stats = Arc::new(Stats::default());
    for w in database_transport_warnings(&cfg.database) {
        tracing::warn!("{w}");
    }
    let (api_tx, mut api_rx) = tokio::sync::mpsc::channel(64);
    let mut api: Option<Arc<UplinkExposition>> = None;
    if let Some(addr) = cfg.telemetry.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| UplinkError::Bind { addr, source })?;
        tracing::info!(%addr, commands = cfg.commands.enabled, "health and metrics on http://{addr}/metrics");
        let exposition = UplinkExposition {
            stats: stats.clone(),
            api: std::sync::RwLock::new(cfg.commands.clone()),
            tx: api_tx,
            max_name: cfg.limits.max_name_bytes,
        };
        let exposition = Arc::new(exposition);
        if let Some(https) = &cfg.commands.https {
            serve_https(https, exposition.clone()).await?;
        }
        api = Some(exposition.clone());
        tokio::spawn(http::serve(listener, exposition));
    } else {
        drop(api_tx);
    }
    let servers = Server::prepare_all(&cfg.mqtt)?;
    // Scale-out shares the groups with other instances; a dry run writes
    // nothing and takes no lease.
    let scale = cfg.scale.clone().filter(|_| !dry_run);
    let shared = scale.as_ref().map(|s| Arc::new(Shared::new(s)));
    let fence = scale.as_ref().zip(shared.as_ref()).map(|(s, sh)| writer::Fence {
        instance: s.instance.clone(),
        shared: sh.clone(),
    });
    let mut session = HostSession::new(HostConfig {
        host_id: cfg.host.host_id.clone(),
        subscriptions: match &scale {
            Some(s) => s.subscriptions(),
            None => cfg.host.subscriptions.clone(),
        },
        reorder_timeout_ms: cfg.host.reorder_timeout.as_millis() as u64,
        rebirth_min_interval_ms: cfg.host.rebirth_min_interval.as_millis() as u64,
        limits: cfg.limits,
    })?;
    // One writer per connection; each node's rows always go to the same one,
    // so per-node order holds and writers never contend for a row.
    let count = if dry_run { 1 } else { cfg.database.writers };
    let (db, st) = (cfg.database.clone(), stats.clone());
    if dry_run {
        stats.db_ok.store(true, Relaxed);
    }
    let start: Box<dyn Fn(Queue) -> tokio::task::JoinHandle<()> + Send> = Box::new(move |q| {
        let (db, st, f) = (db.clone(), st.clone(), fence.clone());
        match (dry_run, db.backend) {
            (true, _) => tokio::spawn(dry_writer(q, st)),
            (false, Backend::Postgres) => tokio::spawn(writer::writer::<PgSink>(db, q, st, f)),
            (false, Backend::Mssql) => tokio::spawn(writer::writer::<MssqlSink>(db, q, st, f)),
        }
    });
    let writers = Writers::start(count, stats.clone(), start);
    // Both databases fold their rollups from a pending log, apart from the
    // writes; partitions ahead and the retention run on a connection of their own.
    let (fold_stop, folder) = background(&cfg, dry_run, &stats, Task::Fold);
    let (retain_stop, retainer) = background(&cfg, dry_run, &stats, Task::Retain);
    // OEE is computed on PostgreSQL (the SQL Server folder is to come: its
    // marks wait in oee_pending).
    let mut oee = start_oee_folder(&cfg, dry_run, &stats);
    let mut sighup = signal(SignalKind::hangup()).map_err(UplinkError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(UplinkError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(UplinkError::Signal)?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client_id = match &scale {
        Some(s) => format!("spb-uplink-{}-{}", cfg.host.host_id, s.instance),
        None => format!("spb-uplink-{}", cfg.host.host_id),
    };
    let link = Link::new(servers.clone(), cfg.mqtt.clone(), client_id, now_ms());
    let (news_tx, news_rx) = tokio::sync::mpsc::channel(16);
    let scale_rt = match (scale, shared) {
        (Some(c), Some(shared)) => {
            let safe_through = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (stop, rx) = tokio::sync::oneshot::channel();
            let task = super::scale_pg::LeaseTask::new(cfg.database.url.clone(), c.clone());
            tracing::info!(instance = %c.instance, groups = ?c.groups, "scale-out: sharing the groups under leases");
            let handle = tokio::spawn(super::scale_pg::run(
                task,
                safe_through.clone(),
                stats.clone(),
                news_tx,
                rx,
            ));
            Some(ScaleRt {
                shared,
                held: std::collections::BTreeSet::new(),
                others_behind: false,
                deferred: super::scale::DeferredLog::new(c.standby_max_bytes / 2, c.clock_margin),
                safe_through,
                servers,
                stop: Some(stop),
                task: Some(handle),
                cfg: c,
            })
        }
        _ => None,
    };
    let mut rt = Loop {
        cfg,
        stats,
        link,
        batch: Batch::default(),
        batch_since: None,
        writers,
        rate_window: (Instant::now(), 0),
        quarantine_log: LogBudget::new(10, "quarantine warnings", "spb_uplink_quarantined_total"),
        waiting: std::collections::HashMap::new(),
        next_request: 0,
        denials: LogBudget::new(
            10,
            "refused API requests",
            "spb_uplink_commands_total{outcome=\"refused\"}",
        ),
        oee_index: super::oee::OeeIndex::default(),
        batch_since_ms: 0,
        scale: scale_rt,
        state_link: None,
        news: news_rx,
    };
    rt.oee_index = super::oee::OeeIndex::new(rt.cfg.oee.as_ref());
    crate::telemetry::systemd::ready("uplink started");
    let ticks = rt.stats.clone();
    tokio::spawn(crate::telemetry::systemd::watchdog_while(
        move || ticks.loop_ticks.load(Relaxed),
        "the MQTT loop",
    ));
    tracing::info!(host = %rt.cfg.host.host_id, dry_run, "spb-uplink {} started", env!("CARGO_PKG_VERSION"));
    loop {
        tokio::select! {
            ev = rt.link.next() => rt.on_link(&mut session, ev),
            ev = next_event(&mut rt.state_link) => rt.on_state_link(&mut session, ev),
            Some(news) = rt.news.recv() => rt.on_news(&mut session, news),
            _ = tick.tick() => rt.on_tick(&mut session),
            Some(req) = api_rx.recv() => rt.on_api(&mut session, req),
            _ = sighup.recv() => match &path {
                Some(p) => rt.reload(p, api.as_deref(), &mut oee, dry_run).await,
                None => tracing::warn!("SIGHUP: no configuration file to read again"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("shutting down");
    rt.expire_commands(u64::MAX, "the uplink stopped before the edge reported the outcome");
    rt.flush();
    let events = session.shutdown(now_ms());
    rt.execute(&mut session, events);
    // STATE offline and the DISCONNECT leave before the writers are awaited.
    for link in [Some(&mut rt.link), rt.state_link.as_mut()].into_iter().flatten() {
        if link.is_open() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !matches!(link.next().await, LinkEvent::Closed(_)) {}
            })
            .await;
        }
    }
    // The writers end once every batch handed to them is committed (bounded wait).
    let Loop { writers, scale, .. } = rt;
    if !writers.finish(Duration::from_secs(30)).await {
        tracing::error!("the database did not take the last batches within 30 s; they are lost");
    }
    // Everything received is committed: the leases go to the others now.
    if let Some(mut s) = scale {
        s.safe_through.store(now_ms(), Relaxed);
        if let Some(stop) = s.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = s.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
    // The rollups, current with everything written (bounded wait; what is
    // not folded stays pending for the next start).
    let _ = fold_stop.send(());
    if let Some(f) = folder {
        let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
    }
    oee.stop().await;
    let _ = retain_stop.send(());
    if let Some(r) = retainer {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A database task beside the writers, each on a connection of its own.
#[derive(Clone, Copy)]
enum Task {
    Fold,
    Retain,
}

/// Starts `task` for the configured backend (nothing in a dry run), and
/// the sender that stops it.
fn background(
    cfg: &UplinkConfig,
    dry_run: bool,
    stats: &Arc<Stats>,
    task: Task,
) -> (tokio::sync::oneshot::Sender<()>, Option<tokio::task::JoinHandle<()>>) {
    let (stop, rx) = tokio::sync::oneshot::channel();
    let (db, st) = (cfg.database.clone(), stats.clone());
    let handle = match (dry_run, db.backend, task) {
        (true, ..) => None,
        (false, Backend::Postgres, Task::Fold) => Some(tokio::spawn(writer::folder::<PgSink>(db, st, rx))),
        (false, Backend::Mssql, Task::Fold) => Some(tokio::spawn(writer::folder::<MssqlSink>(db, st, rx))),
        (false, Backend::Postgres, Task::Retain) => Some(tokio::spawn(writer::retainer::<PgSink>(db, st, rx))),
        (false, Backend::Mssql, Task::Retain) => Some(tokio::spawn(writer::retainer::<MssqlSink>(db, st, rx))),
    };
    (stop, handle)
}

/// What the database connection strings give up of a verified, encrypted
/// transport, one sentence each (WARN at start, and `--check-config`).
pub fn database_transport_warnings(db: &super::config::DatabaseConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (key, url) in [
        ("database.url", Some(&db.url)),
        ("database.owner_url", db.owner_url.as_ref()),
    ] {
        let Some(url) = url else { continue };
        match db.backend {
            Backend::Mssql => out.extend(
                super::mssql::transport_warnings(url)
                    .into_iter()
                    .map(|w| format!("{key}: {w}")),
            ),
            Backend::Postgres => {
                if let Ok((_, tls)) = super::pg_tls::split(url) {
                    use super::pg_tls::SslMode;
                    let w = match tls.mode {
                        SslMode::Disable => Some("sslmode=disable: the data travels in clear"),
                        SslMode::Prefer | SslMode::Require => Some(
                            "the server's certificate is not verified (sslmode prefer or require): set sslmode=verify-full and sslrootcert",
                        ),
                        SslMode::VerifyCa | SslMode::VerifyFull => None,
                    };
                    // A server on this machine is reached over loopback only.
                    let local = url.contains("127.0.0.1") || url.contains("localhost") || url.contains("host=/");
                    if let Some(w) = w.filter(|_| !local) {
                        out.push(format!("{key}: {w}"));
                    }
                }
            }
        }
    }
    out
}

/// The OEE folder task and the sender that stops it.
struct OeeFolder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OeeFolder {
    /// Stops it after its current fold (bounded wait).
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(f) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
        }
    }
}

/// The OEE folder of `cfg`, if it has machines (PostgreSQL only).
fn start_oee_folder(cfg: &UplinkConfig, dry_run: bool, stats: &Arc<Stats>) -> OeeFolder {
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = match (&cfg.oee, dry_run, cfg.database.backend) {
        (Some(o), false, Backend::Postgres) if !o.machines.is_empty() => Some(tokio::spawn(writer::oee_folder(
            cfg.database.clone(),
            Arc::new(o.clone()),
            stats.clone(),
            rx,
        ))),
        // OEE is computed on PostgreSQL (the SQL Server folder is to come:
        // its marks wait in oee_pending).
        (Some(o), false, Backend::Mssql) if !o.machines.is_empty() => {
            tracing::warn!("[oee] is computed on PostgreSQL only in this version: the marks are kept in oee_pending");
            None
        }
        _ => None,
    };
    OeeFolder { stop: Some(stop), task }
}

/// Scale-out's part of the loop: the leases held and the standby.
struct ScaleRt {
    cfg: ScaleConfig,
    shared: Arc<Shared>,
    /// The leases held, as the lease task last said.
    held: std::collections::BTreeSet<String>,
    /// Another instance's database is behind (the STATE owner acts on it).
    others_behind: bool,
    /// DATA of groups held elsewhere, not decoded unless this instance
    /// takes the group.
    deferred: super::scale::DeferredLog,
    /// Everything received before this instant (ms) is committed.
    safe_through: Arc<std::sync::atomic::AtomicU64>,
    /// For the STATE connection, opened when the identity is taken.
    servers: Vec<Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The next event of a connection that may not be open (never, then).
async fn next_event(link: &mut Option<Link>) -> LinkEvent {
    match link {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

struct Loop {
    cfg: UplinkConfig,
    stats: Arc<Stats>,
    link: Link,
    batch: Batch,
    batch_since: Option<Instant>,
    writers: Writers,
    /// Start of the current one-second window of `messages_per_second`, and
    /// the message count then.
    rate_window: (Instant, u64),
    /// Quarantine warnings: a flood of bad messages is not a flood of lines.
    quarantine_log: LogBudget,
    /// Commands of the API sent and waiting for their outcome, by request id.
    waiting: std::collections::HashMap<String, Waiting>,
    next_request: u64,
    /// Refused API requests audited at most 10 a second (all counted).
    denials: LogBudget,
    /// Which facts an OEE machine maps.
    oee_index: super::oee::OeeIndex,
    /// When the first message of `batch` arrived (ms), for `safe_through`.
    batch_since_ms: u64,
    /// Scale-out, when `[scale]` is configured.
    scale: Option<ScaleRt>,
    /// Scale-out: the STATE connection, while this instance holds the identity.
    state_link: Option<Link>,
    news: tokio::sync::mpsc::Receiver<super::scale_pg::LeaseNews>,
}

/// A command of the API on its way: its audit row (as sent) and who waits.
struct Waiting {
    row: CommandRow,
    reply: tokio::sync::oneshot::Sender<(u16, String)>,
    deadline_ms: u64,
    sent: Instant,
}

impl Loop {
    /// SIGHUP: reads the file again. An invalid file changes nothing (its
    /// errors are logged); a valid one applies `[commands]` (but its HTTPS
    /// listener) and `[oee]` at once, and names every other section that
    /// changed: those take a restart.
    async fn reload(
        &mut self,
        path: &std::path::Path,
        api: Option<&UplinkExposition>,
        oee: &mut OeeFolder,
        dry_run: bool,
    ) {
        let new = match UplinkConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("SIGHUP: {} is not valid; nothing changed:\n{e}", path.display());
                return;
            }
        };
        let mut applied = Vec::new();
        let mut restart = Vec::new();
        if new.commands != self.cfg.commands {
            if new.commands.https != self.cfg.commands.https {
                restart.push("commands.https_*");
            }
            let commands = super::commands::ApiConfig {
                https: self.cfg.commands.https.clone(),
                ..new.commands.clone()
            };
            if let Some(api) = api {
                match api.api.write() {
                    Ok(mut a) => *a = commands.clone(),
                    Err(e) => *e.into_inner() = commands.clone(),
                }
            }
            self.cfg.commands = commands;
            applied.push("[commands]");
        }
        if new.oee != self.cfg.oee {
            oee.stop().await;
            self.cfg.oee = new.oee.clone();
            self.oee_index = super::oee::OeeIndex::new(self.cfg.oee.as_ref());
            if let Ok(mut m) = self.stats.oee_mapping.lock() {
                let names: Vec<&str> = self
                    .cfg
                    .oee
                    .iter()
                    .flat_map(|o| o.machines.iter().map(|m| m.name.as_str()))
                    .collect();
                m.retain(|machine, _| names.contains(&machine.as_str()));
            }
            *oee = start_oee_folder(&self.cfg, dry_run, &self.stats);
            applied.push("[oee]");
        }
        for (name, changed) in [
            ("[host]", new.host != self.cfg.host),
            ("[mqtt]", new.mqtt != self.cfg.mqtt),
            ("[database]", new.database != self.cfg.database),
            ("[limits]", new.limits != self.cfg.limits),
            ("[telemetry]", new.telemetry != self.cfg.telemetry),
        ] {
            if changed {
                restart.push(name);
            }
        }
        self.stats.reloads.fetch_add(1, Relaxed);
        tracing::info!(
            applied = %if applied.is_empty() { "nothing".to_string() } else { applied.join(", ") },
            "SIGHUP: {} read again",
            path.display()
        );
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed in the file but take effect only after a restart",
                restart.join(", ")
            );
        }
    }

    fn on_link(&mut self, session: &mut HostSession, ev: LinkEvent) {
        match ev {
            LinkEvent::Reconnect if self.scale.is_some() => {
                // STATE and its Will travel on the STATE connection.
                self.link.connect(None, None);
            }
            LinkEvent::Reconnect => {
                let will = session.begin_connect(now_ms());
                self.link.connect(None, Some(&will));
            }
            LinkEvent::Connected { .. } => {
                self.stats.connected.store(true, Relaxed);
                let server = self.link.server().map(Server::label).unwrap_or_default();
                tracing::info!(%server, "connected");
                // Still catching up, the session's STATE birth says offline.
                let events = session.connected();
                self.execute(session, events);
            }
            LinkEvent::Message(p) => {
                let now = now_ms();
                if p.topic.starts_with("spBv1.0/") {
                    self.stats.messages.fetch_add(1, Relaxed);
                    if self.defer(session, &p.topic, &p.payload, now) {
                        return;
                    }
                    if self.batch_since.is_none() {
                        self.batch_since = Some(Instant::now());
                        self.batch_since_ms = now;
                    }
                    self.batch.add_raw(&p.topic, &p.payload, now);
                }
                let events = session.handle_message(now, &p.topic, &p.payload);
                self.execute(session, events);
                if self.batch.len() >= self.cfg.database.batch_max_rows {
                    self.flush();
                }
            }
            LinkEvent::Sent(_) | LinkEvent::Acked(_) => {}
            LinkEvent::Closed(c) => {
                self.stats.connected.store(false, Relaxed);
                if c.was_connected {
                    tracing::warn!(error = %c.why, "connection lost");
                    // What was deferred precedes the deaths the loss makes.
                    let groups = self.scale.as_ref().map(|s| s.cfg.groups.clone()).unwrap_or_default();
                    for g in &groups {
                        self.undefer(session, g, None);
                    }
                    if self.scale.is_some() {
                        // With scale-out the other instances still receive:
                        // this one's loss is not the nodes' death. What it
                        // received is written as its leases say; its groups
                        // go to the others (the lease round gives them up),
                        // and the session keeps its births, so the groups
                        // can come back to it without a rebirth.
                        self.flush();
                        if let Some(s) = &mut self.scale {
                            s.held.retain(|l| l == super::scale::STATE_LEASE);
                        }
                    } else {
                        let events = session.connection_lost(now_ms());
                        self.execute(session, events);
                    }
                } else {
                    tracing::error!(error = %c.why, "connection failed");
                }
            }
        }
    }

    fn execute(&mut self, session: &mut HostSession, events: Vec<HostEvent>) {
        let now = now_ms();
        for ev in events {
            match &ev {
                HostEvent::Subscribe(topics) => self.link.subscribe(topics.clone(), QoS::AtLeastOnce),
                HostEvent::Publish(p) => self.publish(session, p.clone()),
                HostEvent::Disconnect => {
                    self.link.disconnect();
                    if let Some(l) = &mut self.state_link {
                        l.disconnect();
                    }
                }
                HostEvent::Command { seen, by_this_host } => {
                    let by = if *by_this_host {
                        self.cfg.host.host_id.clone()
                    } else {
                        "another MQTT client".to_string()
                    };
                    self.audit(seen, now, &by);
                }
                HostEvent::RebirthRequested { group, node, reason } => {
                    self.stats.rebirths.fetch_add(1, Relaxed);
                    tracing::warn!(%group, %node, %reason, "rebirth requested");
                }
                HostEvent::SequenceError {
                    group,
                    node,
                    expected,
                    got,
                } => {
                    self.stats.sequence_errors.fetch_add(1, Relaxed);
                    tracing::warn!(%group, %node, expected, got, "sequence error");
                }
                // The guard spends the log budget: over it, the arm below is skipped.
                HostEvent::Quarantine { topic, reason, .. } if self.quarantine_log.allow(now) => {
                    let topic = crate::uplink::rows::prefix(topic, 300);
                    tracing::warn!(%topic, %reason, "payload quarantined");
                }
                HostEvent::DeathIgnored { group, node, bdseq } => {
                    tracing::info!(%group, %node, ?bdseq, "NDEATH of an older session ignored");
                }
                HostEvent::Data { metrics, .. } if !self.waiting.is_empty() => self.outcomes(metrics, now),
                HostEvent::NodeBirth {
                    group, node, metrics, ..
                } => self.check_oee_mapping(group, node, "", metrics),
                HostEvent::DeviceBirth {
                    group,
                    node,
                    device,
                    metrics,
                    ..
                } => self.check_oee_mapping(group, node, device, metrics),
                _ => {}
            }
            let before = self.batch.quarantine.len();
            let facts_before = self.batch.facts.len();
            self.batch.add_event(&ev, now);
            self.mark_oee(facts_before);
            // Rows no database could hold are quarantined as they are made.
            let added = &self.batch.quarantine[before..];
            self.stats.quarantined.fetch_add(added.len() as u64, Relaxed);
            if let (false, Some(q)) = (matches!(ev, HostEvent::Quarantine { .. }), added.first()) {
                if !self.quarantine_log.allow(now) {
                    continue;
                }
                tracing::warn!(topic = %crate::uplink::rows::prefix(&q.topic, 300), reason = %q.reason, rows = added.len(),
                    "rows quarantined (the first one's reason)");
            }
        }
        self.stats.online_nodes.store(session.online_nodes() as u64, Relaxed);
        self.stats.tracked_nodes.store(session.tracked_nodes() as u64, Relaxed);
        self.stats
            .rebirths_suppressed
            .store(session.rebirths_suppressed(), Relaxed);
    }

    /// Records a command in `sp_command_audit`, with the log line an operator greps for.
    fn audit(&mut self, cmd: &crate::sparkplug::host::CommandSeen, now: u64, requested_by: &str) {
        // One line per command message, however many metrics it holds.
        let refused = cmd.writes.iter().filter(|w| w.verdict.is_err()).count();
        let first: Vec<String> = cmd
            .writes
            .iter()
            .take(3)
            .map(|w| {
                let metric = crate::uplink::rows::prefix(&w.metric, 80);
                let value = w.value.as_deref().map_or("", |v| crate::uplink::rows::prefix(v, 80));
                match &w.verdict {
                    Ok(()) => format!("{metric}={value}"),
                    Err(why) => format!("{metric}={value} (refused: {})", crate::uplink::rows::prefix(why, 160)),
                }
            })
            .collect();
        let (group, node) = (
            crate::uplink::rows::prefix(&cmd.group, 80),
            crate::uplink::rows::prefix(&cmd.node, 80),
        );
        let device = cmd.device.as_deref().map(|d| crate::uplink::rows::prefix(d, 80));
        if refused == 0 {
            tracing::info!(%group, %node, device = ?device, metrics = cmd.writes.len(), first = ?first, %requested_by, "command");
        } else {
            tracing::warn!(%group, %node, device = ?device, metrics = cmd.writes.len(), refused, first = ?first,
                %requested_by, "command an edge must refuse");
        }
        self.stats.commands_audited.fetch_add(cmd.writes.len() as u64, Relaxed);
        self.batch_since.get_or_insert_with(Instant::now);
        self.batch.add_command(cmd, now, requested_by);
    }

    /// A birth against the OEE machines mapped to its node or device: a
    /// mapping it refutes is said (ERROR, once per change) and the machine
    /// is not computed until a birth fits.
    fn check_oee_mapping(&mut self, group: &str, node: &str, device: &str, metrics: &[crate::sparkplug::Metric]) {
        let Some(oee) = &self.cfg.oee else { return };
        let declared: Vec<(&str, crate::sparkplug::DataType)> = metrics
            .iter()
            .filter_map(|m| Some((m.name.as_deref()?, m.datatype)))
            .collect();
        for m in oee
            .machines
            .iter()
            .filter(|m| m.group == group && m.node == node && m.device == device)
        {
            let problems = m.check_birth(&declared);
            let Ok(mut map) = self.stats.oee_mapping.lock() else {
                return;
            };
            let before = map.get(&m.name).cloned().unwrap_or_default();
            if problems == before {
                continue;
            }
            if problems.is_empty() {
                tracing::info!(machine = %m.name, "OEE mapping fits the birth again: computed");
                map.remove(&m.name);
            } else {
                for p in &problems {
                    tracing::error!(machine = %m.name, "OEE mapping refused: {p}; not computed until fixed");
                }
                map.insert(m.name.clone(), problems);
            }
        }
    }

    /// A new fact of a metric an OEE machine maps marks its time for the
    /// OEE folder (written with the fact, in the same transaction).
    fn mark_oee(&mut self, facts_before: usize) {
        if self.oee_index.is_empty() {
            return;
        }
        let marks: Vec<_> = self.oee_index.marks(&self.batch.facts[facts_before..]).collect();
        self.batch.oee.extend(marks);
    }

    /// A request of the API: audit a denial, or check, send and wait.
    fn on_api(&mut self, session: &mut HostSession, req: ApiRequest) {
        let now = now_ms();
        match req {
            ApiRequest::Denied {
                requested_by,
                target,
                value,
                reason,
            } => {
                self.stats.api_commands[0].fetch_add(1, Relaxed);
                if !self.denials.allow(now) {
                    return;
                }
                tracing::warn!(target: "spb::audit", %requested_by, target = ?target.as_ref().map(ToString::to_string), %reason, "command refused");
                let t = target.unwrap_or(super::commands::Target {
                    group: String::new(),
                    node: String::new(),
                    device: None,
                    metric: String::new(),
                });
                let mut row = command_row(now, &requested_by, &t, value);
                (row.outcome, row.accepted, row.reason) = ("refused", false, storable(&reason).into_owned());
                self.add_command_row(row);
            }
            ApiRequest::Write {
                identity,
                request,
                reply,
            } => self.send_write(session, now, identity, request, reply),
        }
    }

    fn send_write(
        &mut self,
        session: &mut HostSession,
        now: u64,
        identity: String,
        request: Request,
        reply: tokio::sync::oneshot::Sender<(u16, String)>,
    ) {
        let Request { target, value, timeout } = request;
        let mut row = command_row(now, &identity, &target, Some(value.to_string()));
        let sent = self.check_and_send(session, now, &target, &value);
        let id = match sent {
            Ok(id) => id,
            Err((status, reason)) => {
                self.stats.api_commands[0].fetch_add(1, Relaxed);
                tracing::warn!(target: "spb::audit", requested_by = %identity, target = %target, %reason, "command refused");
                (row.outcome, row.accepted, row.reason) = ("refused", false, storable(&reason).into_owned());
                let _ = reply.send((status, answer("refused", &reason)));
                self.add_command_row(row);
                return;
            }
        };
        self.stats.api_commands[1].fetch_add(1, Relaxed);
        tracing::info!(target: "spb::audit", requested_by = %identity, target = %target, request = %id, "command sent");
        row.request_id = Some(id.clone());
        row.sent_ms = Some(now as i64);
        row.reason = "sent; waiting for the edge's outcome".into();
        self.add_command_row(row.clone());
        let wait = timeout.unwrap_or(self.cfg.commands.timeout);
        self.waiting.insert(
            id,
            Waiting {
                row,
                reply,
                deadline_ms: now + wait.as_millis() as u64,
                sent: Instant::now(),
            },
        );
    }

    /// Checks a write against the target's last birth and publishes it;
    /// its request id, or the HTTP status and reason of the refusal.
    fn check_and_send(
        &mut self,
        session: &mut HostSession,
        now: u64,
        target: &super::commands::Target,
        value: &serde_json::Value,
    ) -> Result<String, (u16, String)> {
        if !self.link.is_connected() {
            return Err((503, "the uplink is not connected to the broker".into()));
        }
        let (g, n, d, m) = (&target.group, &target.node, target.device.as_deref(), &target.metric);
        let declared = session.declared(g, n, d, m).map_err(|e| match e {
            HostError::NodeOffline { .. } | HostError::DeviceOffline { .. } => (409, e.to_string()),
            e => (422, e.to_string()),
        })?;
        let value = to_value(value, declared).map_err(|e| (422, e))?;
        self.next_request += 1;
        let id = format!("{}-{now}-{}", self.cfg.host.host_id, self.next_request);
        let mut props = PropertySet::default();
        props.set(
            crate::commands::REQUEST_PROPERTY,
            PropertyValue::new(Value::String(id.clone())),
        );
        let publish = session
            .write_command(now, g, n, d, m, value, props)
            .map_err(|e| (422, e.to_string()))?;
        self.link.publish(publish);
        Ok(id)
    }

    /// DATA metrics that report the outcome of a command this host sent.
    fn outcomes(&mut self, metrics: &[crate::sparkplug::Metric], now: u64) {
        use crate::commands::{OUTCOME_PROPERTY, REASON_PROPERTY, REQUEST_PROPERTY};
        for m in metrics {
            let Some(p) = &m.properties else { continue };
            let text = |k: &str| match p.get(k).and_then(|v| v.value.as_ref()) {
                Some(Value::String(s)) | Some(Value::Text(s)) => Some(s.clone()),
                _ => None,
            };
            let Some(w) = text(REQUEST_PROPERTY).and_then(|id| self.waiting.remove(&id)) else {
                continue;
            };
            let outcome = Outcome::from_edge(&text(OUTCOME_PROPERTY).unwrap_or_default());
            let reason = text(REASON_PROPERTY).unwrap_or_else(|| "read back equal".into());
            let value = m.value.as_ref().map(crate::commands::shown);
            self.finish(w, outcome, &reason, value, m.timestamp.unwrap_or(now));
        }
    }

    /// Ends a waiting command: its audit row replaced, its caller answered.
    fn finish(&mut self, w: Waiting, outcome: Outcome, reason: &str, value: Option<String>, at: u64) {
        let Waiting {
            mut row, reply, sent, ..
        } = w;
        let i = match outcome {
            Outcome::Refused => 0,
            Outcome::Sent => 1,
            Outcome::Confirmed => 2,
            Outcome::Failed => 3,
            Outcome::Timeout => 4,
        };
        self.stats.api_commands[i].fetch_add(1, Relaxed);
        if outcome != Outcome::Timeout {
            self.stats.command_round_trip.observe(sent.elapsed());
        }
        row.outcome = outcome.as_str();
        row.accepted = outcome == Outcome::Confirmed;
        row.reason = storable(reason).into_owned();
        if outcome != Outcome::Timeout {
            row.confirmed_value = value.as_deref().map(|v| storable(v).into_owned());
            row.confirmed_ms = Some(at as i64);
        }
        tracing::info!(target: "spb::audit", requested_by = %row.requested_by, request = ?row.request_id,
            outcome = outcome.as_str(), %reason, value = ?row.confirmed_value, "command ended");
        let body = serde_json::json!({
            "outcome": outcome.as_str(),
            "request": row.request_id,
            "reason": reason,
            "value": row.confirmed_value,
            "round_trip_ms": sent.elapsed().as_secs_f64() * 1000.0,
        })
        .to_string()
            + "\n";
        let _ = reply.send((outcome.status(), body));
        self.add_command_row(row);
    }

    /// Commands past their deadline (all, at shutdown) end as timeouts.
    fn expire_commands(&mut self, now: u64, reason: &str) {
        let due: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now || now == u64::MAX)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(w) = self.waiting.remove(&id) {
                self.finish(w, Outcome::Timeout, reason, None, now_ms());
            }
        }
    }

    fn add_command_row(&mut self, row: CommandRow) {
        self.stats.commands_audited.fetch_add(1, Relaxed);
        if self.batch_since.is_none() {
            self.batch_since = Some(Instant::now());
            self.batch_since_ms = now_ms();
        }
        self.batch.commands.push(row);
    }

    /// Scale-out: a DATA message of a group held elsewhere is kept as it
    /// came, undecoded (true); before a birth or death of such a node what
    /// was kept of it is decoded, so the session's view stays in order.
    fn defer(&mut self, session: &mut HostSession, topic: &str, payload: &[u8], now: u64) -> bool {
        let Some(s) = &mut self.scale else { return false };
        let mut parts = topic.splitn(5, '/');
        let (Some(_), Some(group), Some(kind), Some(node)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if group == super::scale::STATE_LEASE || s.held.contains(group) {
            return false;
        }
        match kind {
            "NDATA" | "DDATA" => {
                let seq = crate::sparkplug::wire::Envelope::read(payload)
                    .and_then(|e| e.seq)
                    .and_then(|q| u8::try_from(q).ok());
                let dropped = s.deferred.keep(super::scale::Deferred {
                    group: group.to_string(),
                    node: node.to_string(),
                    topic: topic.to_string(),
                    payload: payload.to_vec(),
                    received_ms: now,
                    seq,
                });
                if dropped > 0 {
                    self.stats.standby_dropped.fetch_add(dropped, Relaxed);
                    if self.quarantine_log.allow(now) {
                        tracing::error!(
                            messages = dropped,
                            standby_max_bytes = s.cfg.standby_max_bytes,
                            "standby full: the oldest messages of groups held elsewhere dropped"
                        );
                    }
                }
                true
            }
            "NBIRTH" | "DBIRTH" | "NDEATH" | "DDEATH" => {
                let (group, node) = (group.to_string(), node.to_string());
                self.undefer(session, &group, Some(&node));
                false
            }
            _ => false,
        }
    }

    /// Decodes what was deferred of `group` (one node, or all), in arrival order.
    fn undefer(&mut self, session: &mut HostSession, group: &str, node: Option<&str>) -> usize {
        let Some(s) = &mut self.scale else { return 0 };
        let kept = s.deferred.take(group, node);
        let n = kept.len();
        for d in kept {
            if self.batch_since.is_none() {
                self.batch_since = Some(Instant::now());
                self.batch_since_ms = d.received_ms;
            }
            self.batch_since_ms = self.batch_since_ms.min(d.received_ms);
            self.batch.add_raw(&d.topic, &d.payload, d.received_ms);
            let events = session.handle_message(now_ms(), &d.topic, &d.payload);
            self.execute(session, events);
        }
        n
    }

    /// Publishes what the session decided. With scale-out, STATE goes on
    /// the STATE connection (nowhere without the identity) and a command
    /// to a group only from the instance that holds it.
    fn publish(&mut self, session: &HostSession, p: crate::sparkplug::Publish) {
        let Some(s) = &self.scale else {
            self.link.publish(p);
            return;
        };
        if p.topic == session.state_topic() {
            if let Some(l) = self.state_link.as_ref().filter(|l| l.is_connected()) {
                l.publish(p);
            }
            return;
        }
        let group = p.topic.split('/').nth(1).unwrap_or_default();
        if s.held.contains(group) {
            self.link.publish(p);
        }
    }

    /// The STATE connection's events (scale-out, while the identity is held).
    fn on_state_link(&mut self, session: &mut HostSession, ev: LinkEvent) {
        let Some(l) = &mut self.state_link else { return };
        match ev {
            LinkEvent::Reconnect => {
                let will = session.begin_connect(now_ms());
                l.connect(None, Some(&will));
            }
            LinkEvent::Connected { .. } => {
                tracing::info!("STATE connection up: this instance speaks for the host");
                l.publish(session.state_birth());
            }
            LinkEvent::Closed(c) => {
                let held = self
                    .scale
                    .as_ref()
                    .is_some_and(|s| s.held.contains(super::scale::STATE_LEASE));
                if !held {
                    // Given up cleanly: no Will, the new holder speaks now.
                    self.state_link = None;
                } else if c.was_connected {
                    tracing::warn!(error = %c.why, "STATE connection lost");
                }
            }
            LinkEvent::Message(_) | LinkEvent::Sent(_) | LinkEvent::Acked(_) => {}
        }
    }

    /// A round of the lease task: rows of newly taken groups written from
    /// the standby first, the STATE connection opened or closed, the
    /// standby pruned by each holder's progress.
    fn on_news(&mut self, session: &mut HostSession, news: super::scale_pg::LeaseNews) {
        use super::scale::STATE_LEASE;
        let Some(s) = &self.scale else { return };
        let before = s.held.clone();
        if !news.taken.is_empty() {
            // Rows of the group that arrived so far go to the standby,
            // behind the kept ones: the replay keeps each node's order.
            self.flush();
        }
        let Some(s) = &mut self.scale else { return };
        s.held = news.held.clone();
        s.others_behind = news.others_behind;
        let (shared, mqtt, host) = (s.shared.clone(), self.cfg.mqtt.clone(), self.cfg.host.host_id.clone());
        let (instance, servers) = (s.cfg.instance.clone(), s.servers.clone());
        for (lease, safe) in &news.taken {
            self.stats.leases_taken.fetch_add(1, Relaxed);
            tracing::info!(%lease, previous_safe_through_ms = safe, "lease taken");
            if lease == STATE_LEASE {
                let id = format!("spb-uplink-{host}-{instance}-state");
                self.state_link = Some(Link::new(servers.clone(), mqtt.clone(), id, now_ms()));
                continue;
            }
            let kept = shared.standby().take(lease);
            let rows: usize = kept.iter().map(|(_, b)| b.len()).sum();
            for (from_ms, b) in kept {
                self.hand(b, Instant::now(), from_ms);
            }
            // Then what arrived undecoded, in order, before anything newer.
            let messages = self.undefer(session, lease, None);
            self.flush();
            if rows + messages > 0 {
                tracing::info!(%lease, rows, messages, "writing the rows and messages kept while another instance held the group");
            }
        }
        for lost in before.difference(&news.held) {
            tracing::warn!(lease = %lost, "lease no longer held");
            if lost == STATE_LEASE {
                if let Some(l) = &mut self.state_link {
                    l.disconnect();
                }
            }
        }
        {
            let mut standby = shared.standby();
            for (lease, safe) in &news.safe_through {
                if !news.held.contains(lease) {
                    standby.prune(lease, *safe);
                    if let Some(s) = &mut self.scale {
                        for (node, seq) in s.deferred.prune(lease, *safe) {
                            session.skip_to(lease, &node, seq);
                        }
                    }
                }
            }
            let deferred = self
                .scale
                .as_ref()
                .map_or((0, 0), |s| (s.deferred.len(), s.deferred.bytes()));
            self.stats.standby_rows.store(standby.rows(), Relaxed);
            self.stats.deferred_messages.store(deferred.0 as u64, Relaxed);
            self.stats.standby_bytes.store(standby.bytes() + deferred.1, Relaxed);
        }
        let groups = news.held.iter().filter(|l| *l != STATE_LEASE).count();
        self.stats.leases_held.store(groups as u64, Relaxed);
        self.stats.state_owner.store(news.held.contains(STATE_LEASE), Relaxed);
        self.stats.scale_members.store(news.members as u64, Relaxed);
        if before != news.held {
            tracing::info!(held = ?news.held, instances = news.members, "leases");
        }
    }

    /// Hands the current batch to the writer (with scale-out, the rows of
    /// groups held elsewhere to the standby).
    fn flush(&mut self) {
        let Some(since) = self.batch_since.take() else { return };
        let mut batch = std::mem::take(&mut self.batch);
        if let Some(s) = &self.scale {
            let now = now_ms();
            let others: Vec<String> = batch.leases().into_iter().filter(|l| !s.held.contains(l)).collect();
            if !others.is_empty() {
                let mut parts = batch.split_by(others.len() + 1, |k| {
                    if matches!(k, super::rows::RowKey::Api(..)) {
                        return 0;
                    }
                    others.iter().position(|o| o == k.lease()).map_or(0, |i| i + 1)
                });
                let mut standby = s.shared.standby();
                let mut dropped = 0;
                for (lease, part) in others.iter().zip(parts.drain(1..)) {
                    dropped += standby.keep(lease, self.batch_since_ms, now, part);
                }
                if dropped > 0 {
                    self.stats.standby_dropped.fetch_add(dropped, Relaxed);
                    tracing::error!(
                        rows = dropped,
                        standby_max_bytes = s.cfg.standby_max_bytes,
                        "standby full: the oldest rows of groups held elsewhere dropped"
                    );
                }
                self.stats.standby_rows.store(standby.rows(), Relaxed);
                self.stats.standby_bytes.store(standby.bytes(), Relaxed);
                batch = parts.pop().unwrap_or_default();
            }
        }
        self.hand(batch, since, self.batch_since_ms);
    }

    /// Hands `batch` (its first row arrived at `since`, `since_ms`) to the
    /// writers, each node to its own, within the backlog's bounds.
    fn hand(&mut self, batch: Batch, since: Instant, since_ms: u64) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        let backlog = self.stats.backlog_rows.load(Relaxed);
        // Each writer's part with its size, counted once: the writer gives
        // back exactly what was added here.
        let parts: Vec<(Batch, u64)> = batch
            .split(self.writers.len())
            .into_iter()
            .map(|p| {
                let b = p.approx_bytes();
                (p, b)
            })
            .collect();
        let bytes: u64 = parts.iter().map(|(_, b)| b).sum();
        let backlog_bytes = self.stats.backlog_bytes.load(Relaxed);
        if backlog + n > self.cfg.database.backlog_max_rows as u64
            || backlog_bytes + bytes > self.cfg.database.backlog_max_bytes
        {
            self.stats.dropped_rows.fetch_add(n, Relaxed);
            tracing::error!(
                rows = n,
                bytes,
                backlog,
                backlog_bytes,
                backlog_max_rows = self.cfg.database.backlog_max_rows,
                backlog_max_bytes = self.cfg.database.backlog_max_bytes,
                "backlog full while the database is behind: rows dropped"
            );
            return;
        }
        self.stats.backlog_rows.fetch_add(n, Relaxed);
        self.stats.backlog_bytes.fetch_add(bytes, Relaxed);
        for (i, (part, bytes)) in parts.into_iter().enumerate() {
            if !part.is_empty() {
                if let Some(s) = &self.scale {
                    s.shared.inflight().add(since_ms);
                }
                self.writers.send(
                    i,
                    Pending {
                        batch: part,
                        since,
                        since_ms,
                        bytes,
                    },
                );
            }
        }
    }

    fn on_tick(&mut self, session: &mut HostSession) {
        self.stats.loop_ticks.fetch_add(1, Relaxed);
        let (since, count) = self.rate_window;
        if since.elapsed() >= Duration::from_secs(1) {
            let now = self.stats.messages.load(Relaxed);
            let rate = (now - count) as f64 / since.elapsed().as_secs_f64();
            self.stats.messages_per_second.store(rate.round() as u64, Relaxed);
            self.rate_window = (Instant::now(), now);
        }
        self.writers.supervise();
        self.quarantine_log.flush(now_ms());
        self.denials.flush(now_ms());
        if !self.waiting.is_empty() {
            self.expire_commands(now_ms(), "no outcome from the edge within the timeout");
        }
        let events = session.tick(now_ms());
        self.execute(session, events);
        if let Some(s) = &self.scale {
            let open = self.batch_since.map(|_| self.batch_since_ms);
            let safe = s.shared.inflight().safe_through(open, now_ms());
            s.safe_through.store(safe, Relaxed);
        }
        if self
            .batch_since
            .is_some_and(|t| t.elapsed() >= self.cfg.database.batch_max_latency)
        {
            self.flush();
        }
        // Decision 4: declare STATE offline while the database is far behind.
        let backlog = self.stats.backlog_rows.load(Relaxed) as usize;
        let offline = self.stats.declared_offline.load(Relaxed);
        // Half the byte bound counts like offline_after_rows.
        let heavy = self.stats.backlog_bytes.load(Relaxed) >= self.cfg.database.backlog_max_bytes / 2;
        // With scale-out the STATE owner speaks for every instance.
        let others = self.scale.as_ref().is_some_and(|s| s.others_behind);
        // Latched until the lease round reads it: behind at any tick since.
        if backlog >= self.cfg.database.offline_after_rows || heavy {
            self.stats.behind.store(true, Relaxed);
        }
        if !offline && (backlog >= self.cfg.database.offline_after_rows || heavy || others) {
            tracing::error!(
                backlog,
                offline_after_rows = self.cfg.database.offline_after_rows,
                "the database is behind: STATE offline, the edges store until it catches up"
            );
            self.stats.declared_offline.store(true, Relaxed);
            let p = session.declare_offline();
            self.publish(session, p);
        } else if offline && backlog == 0 && !heavy && !others && self.stats.db_ok.load(Relaxed) {
            tracing::info!("caught up: STATE online");
            self.stats.declared_offline.store(false, Relaxed);
            let p = session.declare_online();
            self.publish(session, p);
        }
    }
}

/// The command API over HTTPS: the client certificate's CN (verified
/// against `https_client_ca`) names the identity; a token works as well.
async fn serve_https(
    https: &super::commands::HttpsConfig,
    exposition: Arc<UplinkExposition>,
) -> Result<(), UplinkError> {
    let tls = crate::mqtt::tls::server_config(&https.cert, &https.key, &https.client_ca)
        .map_err(|e| UplinkError::Https(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(https.listen)
        .await
        .map_err(|source| UplinkError::Bind {
            addr: https.listen,
            source,
        })?;
    tracing::info!(addr = %https.listen, "command API on https://{}/commands", https.listen);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(http::serve_with(listener, exposition, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let stream = acceptor.accept(tcp).await?;
            let cn = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::mqtt::tls::subject_cn(c.as_ref()));
            Ok((stream, cn))
        }
    }));
    Ok(())
}

/// `--dry-run`: decode and log, write nothing.
async fn dry_writer(queue: Queue, stats: Arc<Stats>) {
    let mut rx = queue.lock().await;
    while let Some(p) = rx.recv().await {
        let b = &p.batch;
        tracing::info!(
            raw = b.raw.len(),
            facts = b.facts.len(),
            states = b.states.len(),
            catalog = b.catalog.len(),
            quarantine = b.quarantine.len(),
            "dry run, would write"
        );
        for f in b.facts.iter().take(3) {
            tracing::info!(
                group = %f.group, node = %f.node, device = %f.device, metric = %f.metric, ts = f.ts_ms,
                historical = f.is_historical, "fact"
            );
        }
        stats.backlog_rows.fetch_sub(b.len() as u64, Relaxed);
        stats.backlog_bytes.fetch_sub(p.bytes, Relaxed);
    }
}

/// An audit row of a command of the API, before its outcome.
fn command_row(now: u64, requested_by: &str, t: &super::commands::Target, value: Option<String>) -> CommandRow {
    let target = [
        t.group.as_str(),
        t.node.as_str(),
        t.device.as_deref().unwrap_or_default(),
        t.metric.as_str(),
    ];
    let value = value.map(|v| crate::sparkplug::pretty::prefix(&v, 4096).to_string());
    CommandRow {
        from_api: true,
        ..CommandRow::new(now as i64, target, value.as_deref(), requested_by)
    }
}
