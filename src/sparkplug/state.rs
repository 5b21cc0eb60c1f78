//! The Primary Host STATE payload: UTF-8 JSON `{"online":bool,"timestamp":u64}`
//! ([tck-id-host-topic-phid-birth-payload], [tck-id-host-topic-phid-death-payload]).
//!
//! Invariant: `HostState::parse(&s.to_json()) == Ok(s)`. Pre-3.0 peers published
//! the bare strings `ONLINE`/`OFFLINE`; those have no timestamp and are rejected
//! with an error saying so, because the timestamp ordering rule cannot hold for them.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a STATE payload was not understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    #[error("STATE payload is the pre-3.0 string '{0}', which has no timestamp")]
    Legacy(String),
    #[error("STATE payload is not {{\"online\":bool,\"timestamp\":u64}}: {0}")]
    Json(String),
}

/// A host application's declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    pub online: bool,
    /// Milliseconds since the Unix epoch, UTC.
    pub timestamp: u64,
}

impl HostState {
    /// The JSON bytes to publish.
    pub fn to_json(&self) -> Vec<u8> {
        format!("{{\"online\":{},\"timestamp\":{}}}", self.online, self.timestamp).into_bytes()
    }

    /// Parses a received STATE payload.
    pub fn parse(payload: &[u8]) -> Result<HostState, StateError> {
        let trimmed = payload.trim_ascii();
        if trimmed.eq_ignore_ascii_case(b"ONLINE") || trimmed.eq_ignore_ascii_case(b"OFFLINE") {
            return Err(StateError::Legacy(String::from_utf8_lossy(trimmed).into_owned()));
        }
        serde_json::from_slice(payload).map_err(|e| StateError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [tck-id-host-topic-phid-birth-payload] [tck-id-host-topic-phid-death-payload]
    #[test]
    fn state_json_round_trips() {
        let s = HostState {
            online: true,
            timestamp: 1_700_000_000_123,
        };
        assert_eq!(s.to_json(), br#"{"online":true,"timestamp":1700000000123}"#.to_vec());
        assert_eq!(HostState::parse(&s.to_json()), Ok(s));
    }

    #[test]
    fn legacy_and_malformed_state_are_errors() {
        assert!(matches!(HostState::parse(b"ONLINE"), Err(StateError::Legacy(_))));
        assert!(matches!(
            HostState::parse(b"{\"online\":true}"),
            Err(StateError::Json(_))
        ));
        assert!(matches!(HostState::parse(b"\xff"), Err(StateError::Json(_))));
    }
}
