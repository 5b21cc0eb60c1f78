//! OEE (ISO 22400-2) from the plant floor: machines mapped to Sparkplug
//! metrics, shift calendars in the plant's time zone, and the figures per
//! machine, hour and shift, computed from sample timestamps.
//!
//! The path: a fact of a mapped metric is written with a mark
//! ([`OeeIndex::marks`], `oee_pending`) in its own transaction; the OEE
//! folder ([`pg`]) computes every interval the marks touch from the facts
//! with the sans-IO [`engine`], in the plant's [`shifts`] and [`tz`].

pub mod config;
pub mod engine;
pub mod pg;
pub mod report;
pub mod shifts;
pub mod tz;

use std::collections::HashMap;
use std::sync::Arc;

use super::rows::{FactRow, OeeMark};

/// Where a mapped metric lives (group, node, device) and whose it is.
type Owner = (String, String, String, Arc<str>);

/// Which facts belong to which machine: metric name → its owners, so a
/// fact costs one hash lookup.
#[derive(Debug, Default, Clone)]
pub struct OeeIndex {
    by_metric: HashMap<String, Vec<Owner>>,
}

impl OeeIndex {
    pub fn new(cfg: Option<&config::OeeConfig>) -> OeeIndex {
        let mut by_metric: HashMap<String, Vec<_>> = HashMap::new();
        for m in cfg.iter().flat_map(|o| &o.machines) {
            let machine: Arc<str> = Arc::from(m.name.as_str());
            for metric in m.metrics.values() {
                by_metric.entry(metric.clone()).or_default().push((
                    m.group.clone(),
                    m.node.clone(),
                    m.device.clone(),
                    machine.clone(),
                ));
            }
        }
        OeeIndex { by_metric }
    }

    pub fn is_empty(&self) -> bool {
        self.by_metric.is_empty()
    }

    /// The marks of `facts` that a machine maps.
    pub fn marks<'a>(&'a self, facts: &'a [FactRow]) -> impl Iterator<Item = OeeMark> + 'a {
        facts.iter().flat_map(move |f| {
            self.by_metric
                .get(&*f.metric)
                .into_iter()
                .flatten()
                .filter(|(g, n, d, _)| **g == *f.group && **n == *f.node && **d == *f.device)
                .map(|(_, _, _, machine)| OeeMark {
                    group: f.group.clone(),
                    node: f.node.clone(),
                    machine: machine.clone(),
                    ts_ms: f.ts_ms,
                })
        })
    }
}
