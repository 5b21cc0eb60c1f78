//! spb-gateway: a Sparkplug B 3.0 edge node for S7 and Logix PLCs, and the
//! `spb-uplink` Primary Host that persists what edges publish.
//!
//! The protocol core ([`sparkplug`]) is sans-IO: it never touches a socket, a
//! clock or a file. The binaries in `src/bin/` own all I/O and execute the
//! actions the core returns.
//!
//! ```
//! use spb::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};
//! use spb::sparkplug::{Metric, Payload, Value};
//!
//! let now = 1_700_000_000_000;
//! let mut edge = EdgeSession::new(
//!     EdgeConfig {
//!         group_id: "Plant1".into(),
//!         node_id: "gw-01".into(),
//!         primary_host_id: None,
//!         server_count: 1,
//!         rebirth_debounce_ms: 5_000,
//!         aliases: true,
//!         max_data_metrics: 500,
//!         limits: Default::default(),
//!     },
//!     vec![],
//!     vec![DeviceDef { name: "press".into(), metrics: vec![Metric::new("Temp", Value::Float(20.0), now)] }],
//!     None, // no bdSeq persisted yet: start at 0
//! )?;
//! edge.device_online(now, "press")?;
//! edge.begin_connect(now); // SetWill(NDEATH bdSeq 0), Connect { server: 0 }
//! let actions = edge.connected(now); // PersistBdSeq(1), Subscribe, NBIRTH, DBIRTH
//! let EdgeAction::Publish(nbirth) = &actions[2] else { unreachable!() };
//! assert_eq!(nbirth.topic, "spBv1.0/Plant1/NBIRTH/gw-01");
//! assert_eq!(Payload::decode(&nbirth.payload)?.seq, Some(0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod backoff;
pub mod clock;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod mqtt;
pub mod plc;
pub mod queue;
pub mod sparkplug;
pub mod telemetry;
pub mod units;
#[cfg(feature = "uplink")]
pub mod uplink;
