//! The uplink's command API, sans-IO: who may write what, the request, the
//! value in the birth's datatype, and how a write ended.
//!
//! Invariants:
//! - Nobody writes unless `[commands] enabled` and an identity of the file
//!   is recognised: by an API token, stored only as its SHA-256 (compared
//!   in constant time), or by the name of a client certificate the HTTPS
//!   listener verified. Unrecognised → 401.
//! - A recognised identity writes only with the role `sparkplug_command`
//!   and only targets one of its `allow` patterns matches → else 403.
//! - A target is `group/node/device/metric` (the device empty for a node
//!   metric; a metric's own `/` are levels too); patterns use MQTT's
//!   wildcards: `+` one level, `#` (last) any number, at least zero.
//! - The value is converted to the datatype the last birth declared only
//!   where nothing is lost or guessed: a JSON integer to an integer type it
//!   fits or to a float; a JSON number with a fraction only to Float/Double;
//!   a string only to String/Text; a boolean only to Boolean. `"12"` for an
//!   Int32 metric and 3.7 for an Int16 are refused, as the edge would.
//! - Every size from outside is bounded before use: the body (16 KiB), each
//!   id and name (the uplink's name limit), a string value (4 KiB).

use std::time::Duration;

use thiserror::Error;

use crate::sparkplug::{DataType, Value};

/// The role an identity needs to write.
pub const COMMAND_ROLE: &str = "sparkplug_command";
/// The largest request body taken.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest string value written.
pub const MAX_TEXT_VALUE: usize = 4 * 1024;

/// One identity of `[[commands.identities]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    /// SHA-256 of its API token.
    pub token_sha256: Option<[u8; 32]>,
    /// The subject CN (or a DNS name) of its client certificate.
    pub certificate: Option<String>,
    pub roles: Vec<String>,
    /// Target patterns it may write.
    pub allow: Vec<String>,
}

/// The HTTPS listener of the command API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    pub listen: std::net::SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The CA whose client certificates name identities (`certificate`).
    pub client_ca: std::path::PathBuf,
}

/// `[commands]` of the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub enabled: bool,
    /// How long a command waits for the confirming DDATA (default 5s).
    pub timeout: Duration,
    pub identities: Vec<Identity>,
    /// `POST /commands` over HTTPS too, where client certificates count.
    pub https: Option<HttpsConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            timeout: Duration::from_secs(5),
            identities: Vec::new(),
            https: None,
        }
    }
}

/// Why a request is not carried out before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Denied {
    #[error("commands are disabled on this uplink ([commands] enabled = false)")]
    Disabled,
    #[error("unknown identity: no token or client certificate of [[commands.identities]]")]
    Unknown,
    #[error("identity '{0}' lacks the role sparkplug_command")]
    NoRole(String),
    #[error("identity '{identity}' may not write {target}")]
    OutsideAcl { identity: String, target: String },
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Denied {
    /// The HTTP status that goes with it.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Unknown => 401,
            Denied::Disabled | Denied::NoRole(_) | Denied::OutsideAcl { .. } => 403,
            Denied::Malformed(_) => 400,
        }
    }
}

/// A new API token: 32 random bytes from the system, as hex.
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    hex(&b)
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal, in time independent of where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Who is asking: the `Authorization: Bearer` token and/or the verified
/// client certificate's name.
pub fn authenticate<'a>(
    cfg: &'a ApiConfig,
    bearer: Option<&str>,
    certificate: Option<&str>,
) -> Result<&'a Identity, Denied> {
    if !cfg.enabled {
        return Err(Denied::Disabled);
    }
    let hash = bearer.map(token_hash);
    cfg.identities
        .iter()
        .find(|id| {
            let by_token = match (&id.token_sha256, &hash) {
                (Some(want), Some(got)) => same_hash(want, got),
                _ => false,
            };
            let by_cert = matches!((&id.certificate, certificate), (Some(want), Some(got)) if want == got);
            by_token || by_cert
        })
        .ok_or(Denied::Unknown)
}

/// What one request writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub group: String,
    pub node: String,
    pub device: Option<String>,
    pub metric: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.group,
            self.node,
            self.device.as_deref().unwrap_or(""),
            self.metric
        )
    }
}

/// Whether the identity may write `target` (module invariants).
pub fn authorize(id: &Identity, target: &Target) -> Result<(), Denied> {
    if !id.roles.iter().any(|r| r == COMMAND_ROLE) {
        return Err(Denied::NoRole(id.name.clone()));
    }
    let t = target.to_string();
    if id.allow.iter().any(|p| pattern_matches(p, &t)) {
        Ok(())
    } else {
        Err(Denied::OutsideAcl {
            identity: id.name.clone(),
            target: t,
        })
    }
}

/// MQTT topic-filter matching of `target` against `pattern`.
pub fn pattern_matches(pattern: &str, target: &str) -> bool {
    let mut t = target.split('/');
    for p in pattern.split('/') {
        match p {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            level => {
                if t.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// Whether a pattern is well formed (`#` only last and alone in its level,
/// `+` alone in its level, four levels at least unless it ends in `#`).
pub fn check_pattern(p: &str) -> Result<(), String> {
    let levels: Vec<&str> = p.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!("'{p}': '#' must be a whole level, and the last"));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!("'{p}': '+' must be a whole level"));
        }
    }
    if levels.len() < 4 && levels.last() != Some(&"#") {
        return Err(format!(
            "'{p}': a target is group/node/device/metric (device empty for a node metric), e.g. \"Plant1/+/oven/Setpoint\" or \"Plant1/#\""
        ));
    }
    Ok(())
}

/// A request: the target, the value as given, and its own timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub target: Target,
    pub value: serde_json::Value,
    pub timeout: Option<Duration>,
}

/// The JSON body of `POST /commands`:
/// `{"group","node","device"?,"metric","value","timeout_ms"?}`.
pub fn parse_request(body: &[u8], max_name: usize) -> Result<Request, Denied> {
    let bad = |s: String| Denied::Malformed(s);
    if body.len() > MAX_BODY {
        return Err(bad(format!("the body is over {MAX_BODY} bytes")));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    for k in obj.keys() {
        if !["group", "node", "device", "metric", "value", "timeout_ms"].contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown key '{}'; expected group, node, device, metric, value, timeout_ms",
                crate::sparkplug::pretty::prefix(k, 40)
            )));
        }
    }
    let text = |k: &str, required: bool| -> Result<Option<String>, Denied> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) if !required => Ok(None),
            None | Some(serde_json::Value::Null) => Err(bad(format!("'{k}' is required"))),
            Some(serde_json::Value::String(s)) if s.is_empty() && k != "metric" => Err(bad(format!("'{k}' is empty"))),
            Some(serde_json::Value::String(s)) if s.len() > max_name => {
                Err(bad(format!("'{k}' is longer than {max_name} bytes")))
            }
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("'{k}' must be a string"))),
        }
    };
    let target = Target {
        group: text("group", true)?.unwrap_or_default(),
        node: text("node", true)?.unwrap_or_default(),
        device: text("device", false)?,
        metric: text("metric", true)?.unwrap_or_default(),
    };
    if target.metric.is_empty() {
        return Err(bad("'metric' is empty".into()));
    }
    let value = obj
        .get("value")
        .cloned()
        .ok_or_else(|| bad("'value' is required".into()))?;
    let timeout = match obj.get("timeout_ms") {
        None => None,
        Some(t) => Some(Duration::from_millis(
            t.as_u64()
                .filter(|ms| (100..=60_000).contains(ms))
                .ok_or_else(|| bad("'timeout_ms' must be an integer from 100 to 60000".into()))?,
        )),
    };
    Ok(Request { target, value, timeout })
}

/// The value in the declared datatype (module invariants), or why not.
pub fn to_value(v: &serde_json::Value, declared: DataType) -> Result<Value, String> {
    use serde_json::Value as J;
    let refuse = || {
        let kind = match v {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Number(n) if n.is_i64() || n.is_u64() => "an integer",
            J::Number(_) => "a number with a fraction",
            J::String(_) => "a string",
            J::Array(_) => "an array",
            J::Object(_) => "an object",
        };
        format!("{kind} cannot be written to a {declared} metric: values are not converted")
    };
    let int =
        |n: &serde_json::Number| -> Option<i128> { n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)) };
    match (v, declared) {
        (J::Bool(b), DataType::Boolean) => Ok(Value::Boolean(*b)),
        (J::String(s), DataType::String | DataType::Text) => {
            if s.len() > MAX_TEXT_VALUE {
                return Err(format!("a string value longer than {MAX_TEXT_VALUE} bytes"));
            }
            Ok(if declared == DataType::Text {
                Value::Text(s.clone())
            } else {
                Value::String(s.clone())
            })
        }
        (J::Number(n), DataType::Float | DataType::Double) => {
            let x = n.as_f64().ok_or_else(refuse)?;
            let value = if declared == DataType::Float {
                Value::Float(x as f32)
            } else {
                Value::Double(x)
            };
            if declared == DataType::Float && !(x as f32).is_finite() {
                return Err(format!("{x} does not fit a Float metric"));
            }
            Ok(value)
        }
        (J::Number(n), dt) if dt.is_numeric() => {
            let i = int(n).ok_or_else(refuse)?;
            crate::plc::int_value(i, dt).ok_or_else(|| format!("{i} does not fit a {dt} metric"))
        }
        _ => Err(refuse()),
    }
}

/// How a command ended, as `sp_command_audit.outcome` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Refused,
    Sent,
    Confirmed,
    Failed,
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Sent => "sent",
            Outcome::Confirmed => "confirmed",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
        }
    }

    /// What the edge's `writeOutcome` property says.
    pub fn from_edge(word: &str) -> Outcome {
        match word {
            "confirmed" => Outcome::Confirmed,
            "refused" => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    /// The HTTP status of a request that ended so.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Confirmed | Outcome::Sent => 200,
            Outcome::Refused => 422,
            Outcome::Failed => 502,
            Outcome::Timeout => 504,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(roles: &[&str], allow: &[&str]) -> Identity {
        Identity {
            name: "mes".into(),
            token_sha256: Some(token_hash("s3cret-token")),
            certificate: Some("hmi-01".into()),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn target(device: Option<&str>, metric: &str) -> Target {
        Target {
            group: "Plant1".into(),
            node: "gw-01".into(),
            device: device.map(str::to_string),
            metric: metric.into(),
        }
    }

    #[test]
    fn identities_are_known_by_hashed_token_or_certificate_and_nothing_else() {
        let cfg = ApiConfig {
            enabled: true,
            identities: vec![id(&[COMMAND_ROLE], &["#"])],
            ..ApiConfig::default()
        };
        assert_eq!(
            authenticate(&cfg, Some("s3cret-token"), None).map(|i| &i.name[..]),
            Ok("mes")
        );
        assert_eq!(authenticate(&cfg, None, Some("hmi-01")).map(|i| &i.name[..]), Ok("mes"));
        assert_eq!(authenticate(&cfg, Some("s3cret-tokeN"), None), Err(Denied::Unknown));
        assert_eq!(authenticate(&cfg, None, Some("hmi-02")), Err(Denied::Unknown));
        assert_eq!(authenticate(&cfg, None, None), Err(Denied::Unknown));
        assert_eq!(Denied::Unknown.status(), 401);
        let off = ApiConfig { enabled: false, ..cfg };
        assert_eq!(authenticate(&off, Some("s3cret-token"), None), Err(Denied::Disabled));
    }

    #[test]
    fn writing_needs_the_role_and_a_matching_pattern() {
        let t = target(Some("oven"), "Recipe/Setpoint");
        assert!(matches!(
            authorize(&id(&["viewer"], &["#"]), &t),
            Err(Denied::NoRole(_))
        ));
        let ok = [
            "#",
            "Plant1/#",
            "Plant1/+/oven/#",
            "Plant1/gw-01/oven/Recipe/Setpoint",
            "+/+/+/+/+",
        ];
        for p in ok {
            assert_eq!(authorize(&id(&[COMMAND_ROLE], &[p]), &t), Ok(()), "{p}");
        }
        let no = ["Plant2/#", "Plant1/+/press/#", "Plant1/gw-01/oven/Recipe", "+/+/+/+"];
        for p in no {
            let e = authorize(&id(&[COMMAND_ROLE], &[p]), &t).expect_err(p);
            assert_eq!(e.status(), 403);
            assert_eq!(
                e.to_string(),
                "identity 'mes' may not write Plant1/gw-01/oven/Recipe/Setpoint"
            );
        }
        // A node metric has an empty device level.
        let node = target(None, "Node Control/Write Lock");
        assert!(pattern_matches("Plant1/gw-01//Node Control/#", &node.to_string()));
        assert!(!pattern_matches("Plant1/gw-01/oven/#", &node.to_string()));
    }

    #[test]
    fn malformed_patterns_are_named() {
        assert!(check_pattern("Plant1/#").is_ok());
        assert!(check_pattern("Plant1/+/oven/Setpoint").is_ok());
        assert!(check_pattern("Plant1/#/x").is_err());
        assert!(check_pattern("Plant1/gw+/oven/x").is_err());
        assert!(check_pattern("Plant1/gw-01").is_err());
    }

    #[test]
    fn values_are_converted_only_where_nothing_is_lost_or_guessed() {
        assert_eq!(to_value(&json!(12), DataType::Int32), Ok(Value::Int32(12)));
        assert_eq!(to_value(&json!(12), DataType::Float), Ok(Value::Float(12.0)));
        assert_eq!(to_value(&json!(182.5), DataType::Double), Ok(Value::Double(182.5)));
        assert_eq!(to_value(&json!(true), DataType::Boolean), Ok(Value::Boolean(true)));
        assert_eq!(to_value(&json!("A"), DataType::String), Ok(Value::String("A".into())));
        for (v, dt) in [
            (json!("12"), DataType::Int32),
            (json!(3.7), DataType::Int16),
            (json!(3.0), DataType::Int16),
            (json!(1), DataType::Boolean),
            (json!(true), DataType::Int32),
            (json!(null), DataType::Int32),
            (json!([1]), DataType::Int32),
            (json!(5), DataType::String),
        ] {
            let e = to_value(&v, dt).expect_err("refused");
            assert!(e.contains("values are not converted"), "{e}");
        }
        assert_eq!(
            to_value(&json!(70000), DataType::Int16),
            Err("70000 does not fit a Int16 metric".into())
        );
        assert!(to_value(&json!(-1), DataType::UInt8).is_err());
        assert!(to_value(&json!(1e300), DataType::Float).is_err());
        assert!(to_value(&json!("x".repeat(MAX_TEXT_VALUE + 1)), DataType::String).is_err());
    }

    #[test]
    fn a_request_is_bounded_and_its_errors_say_what_to_send() {
        let r = parse_request(
            br#"{"group":"Plant1","node":"gw-01","device":"oven","metric":"Setpoint","value":182.5,"timeout_ms":3000}"#,
            512,
        )
        .expect("valid");
        assert_eq!(r.target.to_string(), "Plant1/gw-01/oven/Setpoint");
        assert_eq!(r.timeout, Some(Duration::from_secs(3)));
        let node = parse_request(br#"{"group":"G","node":"N","metric":"M","value":true}"#, 512).expect("valid");
        assert_eq!(node.target.device, None);
        for (body, says) in [
            (&b"nope"[..], "not JSON"),
            (br#"[1]"#, "expected a JSON object"),
            (br#"{"group":"G","node":"N","metric":"M"}"#, "'value' is required"),
            (br#"{"node":"N","metric":"M","value":1}"#, "'group' is required"),
            (
                br#"{"group":"G","node":5,"metric":"M","value":1}"#,
                "'node' must be a string",
            ),
            (
                br#"{"group":"G","node":"N","metric":"M","value":1,"colour":1}"#,
                "unknown key 'colour'",
            ),
            (
                br#"{"group":"G","node":"N","metric":"M","value":1,"timeout_ms":0}"#,
                "'timeout_ms'",
            ),
        ] {
            let e = parse_request(body, 512).expect_err("malformed");
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(says), "{e}");
        }
        let long = format!(r#"{{"group":"{}","node":"N","metric":"M","value":1}}"#, "g".repeat(600));
        assert!(parse_request(long.as_bytes(), 512).is_err());
        assert!(parse_request(&vec![b' '; MAX_BODY + 1], 512).is_err());
    }

    #[test]
    fn a_token_hash_is_hex_sha256() {
        // `printf %s abc | sha256sum`
        assert_eq!(
            hex(&token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hash(&hex(&token_hash("abc"))), Some(token_hash("abc")));
        assert_eq!(parse_hash("xyz"), None);
    }
}
