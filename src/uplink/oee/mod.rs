//! OEE (ISO 22400-2) from the plant floor: machines mapped to Sparkplug
//! metrics, shift calendars in the plant's time zone, and the figures per
//! machine, hour and shift, computed from sample timestamps.

pub mod config;
pub mod engine;
pub mod shifts;
pub mod tz;
