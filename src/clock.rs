//! The wall clock, read in one place. A leaf module: the sans-IO cores
//! never call it (they take `now` as an argument); the I/O shells do.

/// Wall clock in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
