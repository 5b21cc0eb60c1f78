//! Durations, sizes and network addresses as people write them in a
//! configuration file (`"500ms"`, `"30s"`, `"64KiB"`, `"192.168.10.30:102"`).
//! A leaf: it depends on nothing in the crate, so the configuration and the
//! drivers can both use it.
//!
//! Invariant: an address is parsed once, into a type that cannot hold a bad
//! one ([`PlcAddress`]: a valid host, a port in 1..=65535), and a refusal
//! says what to write instead.

use std::time::Duration;

/// `500ms`, `30s`, `5m`, `1h`, `2d`, or a bare number of seconds (`"60"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. \"500ms\", \"30s\", \"5m\", \"1h\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}': use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64KiB`, `256MiB`, `1GiB`, `10MB`, `500kB`, `4096B`, or a bare number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. \"64KiB\", \"256MiB\", \"1GiB\""))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}': use B, KiB, MiB, GiB, kB, MB or GB"
            ))
        }
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=1e18).contains(&v) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v as u64)
}

/// Why `host` is not a host name, IPv4 or IPv6 address, with what to write
/// instead (a scheme or a port written into it, a dotted quad out of range).
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty: write the host name or IP address".into());
    }
    if let Some((scheme, _)) = host.split_once("://") {
        return Err(format!(
            "'{host}' has a scheme ('{scheme}://'): write the host alone (TLS is chosen by its own table, the port by `port`)"
        ));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if host.contains(':') {
        return Err(format!(
            "'{host}' has a ':' in it: write the host alone and its port as `port`"
        ));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("'{host}' is not an IPv4 address (four numbers 0 to 255)"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.trim_end_matches('.').split('.').all(ok_label) {
        return Err(format!(
            "'{host}' is not a host name (letters, digits and '-' between dots) or an IP address"
        ));
    }
    Ok(())
}

/// A PLC's network address as written (`host`, `host:port`, an IPv6
/// address, `[IPv6]:port`), parsed: the host is valid, the port, if given,
/// is in 1..=65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlcAddress {
    /// A host name, IPv4 or IPv6 address (without brackets).
    pub host: String,
    pub port: Option<u16>,
}

impl PlcAddress {
    /// Parses `address`; why not, with what to write instead.
    pub fn parse(address: &str) -> Result<PlcAddress, String> {
        let a = address.trim();
        if a.contains("://") {
            check_host(a)?;
        }
        let (host, port) = if let Some(rest) = a.strip_prefix('[') {
            match rest.split_once("]:") {
                Some((h, p)) => (h, Some(p)),
                None => (rest.trim_end_matches(']'), None),
            }
        } else if a.matches(':').count() == 1 {
            let (h, p) = a.split_once(':').expect("one ':'");
            (h, Some(p))
        } else {
            (a, None)
        };
        let port = match port {
            None => None,
            Some("") => {
                return Err(format!(
                    "'{address}' ends in ':' without a port: write host or host:port"
                ))
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("'{address}': port '{p}' is not a number from 1 to 65535")),
            },
        };
        check_host(host).map_err(|e| {
            if host.is_empty() {
                format!("'{address}' has no host before the port")
            } else {
                e
            }
        })?;
        Ok(PlcAddress {
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` to connect to (`[v6]:port` for IPv6), `default_port`
    /// when the address names none.
    pub fn socket_address(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

impl std::fmt::Display for PlcAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.port, self.host.contains(':')) {
            (Some(p), true) => write!(f, "[{}]:{p}", self.host),
            (Some(p), false) => write!(f, "{}:{p}", self.host),
            (None, _) => f.write_str(&self.host),
        }
    }
}
