//! The uplink's HTTP routes: `/health`, `/ready` and `/metrics` from its
//! stats, and `POST /commands`, which checks who asks and what (the
//! sans-IO rules of [`super::commands`]) and hands an allowed write to the
//! MQTT loop, which owns the Primary Host session, then waits for its
//! answer.
//!
//! Invariants:
//! - Identity and permission are decided here, before anything reaches
//!   the loop; a request that is denied goes to the loop only to be
//!   audited, and the loop bounds how many denials a second it writes.
//! - The answer is JSON with the outcome, whatever happens; a loop that
//!   does not answer within the request's timeout (plus 2 s) is a 504.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::commands::{authenticate, authorize, parse_request, ApiConfig, Denied, Request, Target};
use super::stats::Stats;
use crate::telemetry::http::{Answer, Exposition};

/// What the HTTP side hands to the MQTT loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// Refused by identity or permission, or malformed: to audit.
    Denied {
        requested_by: String,
        target: Option<Target>,
        value: Option<String>,
        reason: String,
    },
    /// An allowed write: the loop checks it against the birth, sends it and
    /// answers (status, JSON) once it ends.
    Write {
        identity: String,
        request: Request,
        reply: oneshot::Sender<(u16, String)>,
    },
}

/// The uplink's routes.
pub struct UplinkExposition {
    pub stats: Arc<Stats>,
    /// `[commands]`, replaced by a reload (SIGHUP).
    pub api: std::sync::RwLock<ApiConfig>,
    pub tx: mpsc::Sender<ApiRequest>,
    /// The longest id or name taken (`[limits] max_name_bytes`).
    pub max_name: usize,
}

/// The JSON of an answer that carries only an outcome and its reason.
pub fn answer(outcome: &str, reason: &str) -> String {
    json!({ "outcome": outcome, "reason": reason }).to_string() + "\n"
}

impl Exposition for UplinkExposition {
    fn ready(&self) -> (bool, String) {
        self.stats.ready()
    }

    fn metrics(&self) -> String {
        self.stats.metrics()
    }

    fn exchange_timeout(&self) -> Duration {
        // The longest a request may ask to wait (60 s), and a margin.
        Duration::from_secs(65)
    }

    fn post(&self, path: &str, bearer: Option<String>, certificate: Option<String>, body: Vec<u8>) -> Option<Answer> {
        if path != "/commands" {
            return None;
        }
        let cfg = self.api.read().map_or_else(|e| e.into_inner().clone(), |a| a.clone());
        let (tx, max_name) = (self.tx.clone(), self.max_name);
        Some(Box::pin(async move {
            let parsed = parse_request(&body, max_name);
            let (target, value) = match &parsed {
                Ok(r) => (Some(r.target.clone()), Some(r.value.to_string())),
                Err(_) => (None, None),
            };
            let denied = |requested_by: String, d: Denied| {
                // Audited when the loop has room; a flood is counted there.
                let _ = tx.try_send(ApiRequest::Denied {
                    requested_by,
                    target: target.clone(),
                    value: value.clone(),
                    reason: d.to_string(),
                });
                (d.status(), answer("refused", &d.to_string()))
            };
            let identity = match authenticate(&cfg, bearer.as_deref(), certificate.as_deref()) {
                Ok(i) => i.clone(),
                Err(d) => return denied("unauthenticated".into(), d),
            };
            let request = match parsed {
                Ok(r) => r,
                Err(d) => return denied(identity.name, d),
            };
            if let Err(d) = authorize(&identity, &request.target) {
                return denied(identity.name, d);
            }
            let wait = request.timeout.unwrap_or(cfg.timeout) + Duration::from_secs(2);
            let (reply, rx) = oneshot::channel();
            let write = ApiRequest::Write {
                identity: identity.name,
                request,
                reply,
            };
            if tx.send(write).await.is_err() {
                return (503, answer("refused", "the uplink is stopping"));
            }
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => r,
                _ => (504, answer("timeout", "the uplink did not answer in time")),
            }
        }))
    }
}
