//! A PLC device and its tags, as `[[devices]]` describes them. The
//! configuration module reads and checks them; the drivers and the poller
//! only consume them, so nothing here depends on the file's syntax.

use std::time::Duration;

use super::logix::LogixTag;
use super::s7::address::S7Address;
use super::sim::Signal;
use crate::sparkplug::DataType;
use crate::units::PlcAddress;

/// The scan class of a tag that names none.
pub const DEFAULT_SCAN_CLASS: &str = "default";

/// The PLC protocol of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// The built-in simulator (demo, load tests).
    Sim,
    /// Siemens S7 over classic S7comm (PUT/GET), port 102.
    S7,
    /// Allen-Bradley Logix over EtherNet/IP (CIP), port 44818.
    Logix,
}

impl DriverKind {
    /// The TCP port used when `address` names none.
    pub fn default_port(self) -> u16 {
        match self {
            DriverKind::Sim => 0,
            DriverKind::S7 => 102,
            DriverKind::Logix => 44818,
        }
    }
}

/// `[devices.s7]`: how to reach an S7 CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S7DeviceConfig {
    pub rack: u8,
    pub slot: u8,
    /// Local and remote TSAP (derived from rack/slot and the connection type
    /// unless set, e.g. for LOGO! or an ET200SP CPU).
    pub local_tsap: u16,
    pub remote_tsap: u16,
    /// PDU size asked for; the CPU may grant less.
    pub pdu_size: u16,
    /// Items per ReadVar request.
    pub max_items: usize,
}

impl Default for S7DeviceConfig {
    fn default() -> Self {
        S7DeviceConfig {
            rack: 0,
            slot: 1,
            local_tsap: 0x0100,
            remote_tsap: 0x0101,
            pdu_size: 960,
            max_items: 20,
        }
    }
}

/// `[devices.logix]`: how to reach a Logix controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogixDeviceConfig {
    /// ControlLogix: the controller's slot in the chassis (route path
    /// backplane, slot). None for CompactLogix/Micro800 (no routing).
    pub slot: Option<u8>,
    /// Tags per Multiple Service Packet.
    pub batch_size: usize,
}

impl Default for LogixDeviceConfig {
    fn default() -> Self {
        LogixDeviceConfig {
            slot: None,
            batch_size: 20,
        }
    }
}

/// `[[devices]]`: one PLC, one Sparkplug device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub name: String,
    pub driver: DriverKind,
    /// Where the PLC listens (none for the simulator).
    pub address: Option<PlcAddress>,
    pub enabled: bool,
    /// Named scan periods; tags pick one (default class `default` = 1s).
    pub scan_classes: Vec<(String, Duration)>,
    /// A read that takes longer counts as failed.
    pub timeout: Duration,
    /// Consecutive failed scans before the device is declared dead (DDEATH).
    pub fail_after: u32,
    pub tags: Vec<TagConfig>,
    pub sim: SimDeviceConfig,
    pub s7: S7DeviceConfig,
    pub logix: LogixDeviceConfig,
    /// Reconnect backoff after a failed connection: from `backoff_min`,
    /// doubling with jitter up to `backoff_max` (the circuit breaker: a dead
    /// PLC costs one attempt per period, never a busy loop).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl DeviceConfig {
    /// A device with every default and no tags (for tools such as `discover`).
    pub fn minimal(name: &str, driver: DriverKind) -> DeviceConfig {
        DeviceConfig {
            name: name.to_string(),
            driver,
            address: None,
            enabled: true,
            scan_classes: vec![(DEFAULT_SCAN_CLASS.to_string(), Duration::from_secs(1))],
            timeout: Duration::from_secs(2),
            fail_after: 3,
            tags: Vec::new(),
            sim: SimDeviceConfig::default(),
            s7: S7DeviceConfig::default(),
            logix: LogixDeviceConfig::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// `host:port` of the PLC (the driver's default port when none is given).
    pub fn socket_address(&self) -> Option<String> {
        let a = self.address.as_ref()?;
        Some(a.socket_address(self.driver.default_port()))
    }
}

/// `[devices.sim]`: options of the built-in simulator.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimDeviceConfig {
    /// Generate this many extra tags (`Gen/Tag 000001`…) for load tests.
    pub generate: u32,
    /// Their signal (default `random_walk(step=0.5)`).
    pub generate_signal: Option<Signal>,
    pub generate_datatype: Option<DataType>,
    pub generate_scan_class: Option<String>,
    /// Simulated outages: unreachable for `unreachable_for` every `unreachable_every`.
    pub unreachable_every: Option<Duration>,
    pub unreachable_for: Duration,
    pub seed: u64,
    /// `[devices.sim.machine]`: a production machine the tags read with `machine(…)`.
    pub machine: Option<super::machine::MachineParams>,
}

/// Where a tag's value lives, parsed for its device's driver when the
/// configuration is read: a driver never meets an address it cannot use.
#[derive(Debug, Clone, PartialEq)]
pub enum TagAddress {
    /// The simulator's signal (`counter`, `sine(period=10s)`, …), shared by
    /// the tags generated from one.
    Sim(std::sync::Arc<Signal>),
    /// `DB1.DBD0`, `MW10`, `I0.1`, …
    S7(S7Address),
    /// `Line1_Temp`, `Program:Main.Speed`, `Counts[3]`, `Status.5`, …
    /// (boxed: the 100k planned tags of a large device stay 16 bytes each)
    Logix(Box<LogixTag>),
}

/// `[[devices.tags]]`: one PLC value, one Sparkplug metric.
#[derive(Debug, Clone, PartialEq)]
pub struct TagConfig {
    pub name: String,
    pub address: TagAddress,
    pub datatype: DataType,
    pub scan_class: String,
    /// Report only when the value moved at least this much (absolute).
    pub deadband: f64,
    /// …or at least this percent of the last reported value.
    pub deadband_percent: f64,
    /// `writable = true` and what it accepts (`min`, `max`, `allowed`,
    /// `max_rate`, `cooldown`); None: NCMD/DCMD cannot write it.
    pub write: Option<crate::commands::TagGuard>,
}
