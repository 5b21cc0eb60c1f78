//! The lease task of scale-out on PostgreSQL: a connection of its own that
//! every `lease_ttl / 3` renews this instance's membership and leases,
//! reads every lease, applies what [`super::scale::decide`] says and tells
//! the MQTT loop what it holds now ([`LeaseNews`]).
//!
//! Invariants:
//! - Expiry is on the database's clock (`now()`), never an instance's.
//! - A lease is taken only when free (no holder, or expired), with its
//!   previous holder's `safe_through_ms` read in the same statement.
//! - While the database cannot be reached the leases are kept for at most
//!   `lease_ttl` after their last renewal, then reported lost: another
//!   instance may have them by then, and this one must stop publishing
//!   STATE (its rows are fenced in any case).
//! - An instance is a member, and holds groups, only while connected to the
//!   broker: cut off, it gives its groups up at once to one that receives
//!   them (and has kept their rows).
//! - On [`LeaseTask::release_all`] (a clean stop) every lease is given up
//!   at once with the final `safe_through`, so the others need not wait
//!   for the expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::scale::{decide, LeaseRow, ScaleConfig, ScaleError, STATE_LEASE};

/// What one round found: the leases held now, those just taken (with the
/// previous holder's `safe_through`), and every lease's `safe_through`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseNews {
    pub held: BTreeSet<String>,
    pub taken: Vec<(String, i64)>,
    pub safe_through: BTreeMap<String, i64>,
    /// Live instances, this one included.
    pub members: usize,
    /// Another live instance's database is behind (its backlog past
    /// `offline_after_rows`): the STATE owner declares the host offline.
    pub others_behind: bool,
}

/// The lease connection and what it last held.
pub struct LeaseTask {
    url: String,
    cfg: ScaleConfig,
    client: Option<(Client, tokio::task::JoinHandle<()>)>,
    held: BTreeSet<String>,
    last_renewed: Option<Instant>,
}

impl LeaseTask {
    pub fn new(url: String, cfg: ScaleConfig) -> LeaseTask {
        LeaseTask {
            url,
            cfg,
            client: None,
            held: BTreeSet::new(),
            last_renewed: None,
        }
    }

    fn names(&self) -> Vec<String> {
        let mut v = self.cfg.groups.clone();
        v.push(STATE_LEASE.to_string());
        v
    }

    fn ttl_ms(&self) -> f64 {
        self.cfg.lease_ttl.as_secs_f64() * 1000.0
    }

    async fn client(&mut self) -> Result<&mut Client, ScaleError> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let c = super::postgres::connect(&self.url)
                .await
                .map_err(|e| ScaleError::Connect(e.to_string()))?;
            self.client = Some(c);
        }
        Ok(&mut self.client.as_mut().expect("connected above").0)
    }

    /// One round: renew, read, take and give up; what is held after it.
    /// An instance counts as a member only while `connected` to the broker;
    /// `behind` is its own backlog's verdict.
    pub async fn round(
        &mut self,
        safe_through_ms: i64,
        connected: bool,
        behind: bool,
    ) -> Result<LeaseNews, ScaleError> {
        let (me, names, ttl) = (self.cfg.instance.clone(), self.names(), self.ttl_ms());
        let groups = self.cfg.groups.clone();
        let c = self.client().await?;
        if connected {
            c.execute(
                "INSERT INTO sp_uplink_member (instance, expires_at, behind) VALUES ($1, now() + $2 * interval '1 millisecond', $3)
                 ON CONFLICT (instance) DO UPDATE SET expires_at = EXCLUDED.expires_at, behind = EXCLUDED.behind",
                &[&me, &ttl, &behind],
            )
            .await?;
        } else {
            c.execute("DELETE FROM sp_uplink_member WHERE instance = $1", &[&me])
                .await?;
        }
        c.execute(
            "INSERT INTO sp_uplink_lease (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            &[&names],
        )
        .await?;
        let renewed: BTreeSet<String> = c
            .query(
                "UPDATE sp_uplink_lease SET expires_at = now() + $3 * interval '1 millisecond', safe_through_ms = $4
                 WHERE holder = $1 AND name = ANY($2) AND expires_at > now() RETURNING name",
                &[&me, &names, &ttl, &safe_through_ms],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = c
            .query_one(
                "SELECT count(*), coalesce(bool_or(behind AND instance <> $1), false) FROM sp_uplink_member WHERE expires_at > now()",
                &[&me],
            )
            .await?;
        let (members, others_behind): (i64, bool) = (row.get(0), row.get(1));
        let rows: Vec<LeaseRow> = c
            .query(
                "SELECT name, holder, expires_at > now(), safe_through_ms FROM sp_uplink_lease WHERE name = ANY($1)",
                &[&names],
            )
            .await?
            .iter()
            .map(|r| LeaseRow {
                name: r.get(0),
                holder: r.get(1),
                live: r.get(2),
                safe_through_ms: r.get(3),
            })
            .collect();
        let round = decide(&me, &groups, &rows, members.max(1) as usize, connected);
        let mut news = LeaseNews {
            held: renewed,
            members: members.max(1) as usize,
            others_behind,
            ..LeaseNews::default()
        };
        for name in &round.release {
            c.execute(
                "UPDATE sp_uplink_lease SET expires_at = now(), safe_through_ms = $3 WHERE name = $2 AND holder = $1",
                &[&me, name, &safe_through_ms],
            )
            .await?;
            news.held.remove(name);
            if connected {
                tracing::info!(lease = %name, "lease given up for another instance");
            } else {
                tracing::warn!(lease = %name, "lease given up: not connected to the broker, another instance writes the group");
            }
        }
        for name in &round.take {
            // The previous holder's writes in flight end first (they hold
            // the lock shared); any later one reads the lease as taken.
            let tx = c.transaction().await?;
            tx.execute(super::postgres::LEASE_LOCK, &[name]).await?;
            let got = tx
                .query_opt(
                    "UPDATE sp_uplink_lease SET holder = $1, expires_at = now() + $3 * interval '1 millisecond',
                         epoch = epoch + 1, taken_at = now()
                     WHERE name = $2 AND (holder IS NULL OR expires_at <= now()) RETURNING safe_through_ms",
                    &[&me, name, &ttl],
                )
                .await?;
            tx.commit().await?;
            if let Some(r) = got {
                let safe: i64 = r.get(0);
                news.held.insert(name.clone());
                news.taken.push((name.clone(), safe));
            }
        }
        news.safe_through = rows.into_iter().map(|r| (r.name, r.safe_through_ms)).collect();
        self.held = news.held.clone();
        self.last_renewed = Some(Instant::now());
        Ok(news)
    }

    /// A round that failed: the leases are kept until `lease_ttl` after the
    /// last renewal, then reported lost.
    pub fn failed(&mut self, e: &ScaleError) -> Option<LeaseNews> {
        tracing::error!(error = %e, "lease round failed; retrying");
        if let Some((c, _)) = &self.client {
            if c.is_closed() {
                self.client = None;
            }
        }
        let expired = self.last_renewed.is_none_or(|t| t.elapsed() >= self.cfg.lease_ttl);
        if expired && !self.held.is_empty() {
            self.held.clear();
            return Some(LeaseNews::default());
        }
        None
    }

    /// Gives every lease up now with `safe_through_ms`, and the membership.
    pub async fn release_all(&mut self, safe_through_ms: i64) -> Result<(), ScaleError> {
        let me = self.cfg.instance.clone();
        let c = self.client().await?;
        c.execute(
            "UPDATE sp_uplink_lease SET expires_at = now(), safe_through_ms = $2 WHERE holder = $1 AND expires_at > now()",
            &[&me, &safe_through_ms],
        )
        .await?;
        c.execute("DELETE FROM sp_uplink_member WHERE instance = $1", &[&me])
            .await?;
        self.held.clear();
        Ok(())
    }
}

/// Runs rounds every `renew_every` until `stop`, sending each round's news;
/// on `stop` gives every lease up with the `safe_through` then current.
pub async fn run(
    mut task: LeaseTask,
    safe_through: Arc<AtomicU64>,
    stats: Arc<super::stats::Stats>,
    tx: tokio::sync::mpsc::Sender<LeaseNews>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let every = task.cfg.renew_every().max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let safe = safe_through.load(Relaxed) as i64;
                let (connected, behind) = (stats.connected.load(Relaxed), stats.behind.swap(false, Relaxed));
                let news = match task.round(safe, connected, behind).await {
                    Ok(n) => Some(n),
                    Err(e) => task.failed(&e),
                };
                if let Some(n) = news {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
            }
            _ = &mut stop => break,
        }
    }
    let safe = safe_through.load(Relaxed) as i64;
    match tokio::time::timeout(Duration::from_secs(5), task.release_all(safe)).await {
        Ok(Ok(())) => tracing::info!("leases given up"),
        Ok(Err(e)) => tracing::warn!(error = %e, "leases not given up; they expire on their own"),
        Err(_) => tracing::warn!("leases not given up within 5 s; they expire on their own"),
    }
}
