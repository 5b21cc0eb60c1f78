//! Tag discovery for the technician: what a PLC has, printed as TOML ready
//! to paste into `[[devices.tags]]`.
//!
//! - Logix controllers list their tags (Symbol Object, through
//!   `rust-ethernet-ip`): names, types and array sizes become tag entries with
//!   the matching Sparkplug datatype; program tags are listed per program.
//! - Classic S7comm has no symbol browse, so S7 discovery probes: which DBs
//!   answer (one-byte reads, 20 DBs per request) and how large each is (a
//!   binary search on "address out of range", all DBs in lockstep), plus the
//!   sizes of M, I and Q. The template lists each DB with its size and
//!   commented example addresses.
//!
//! Invariants: discovery only reads; every probe is bounded by the caller's
//! timeout; a DB that answers "out of range" at byte 0 is reported as empty.

use std::fmt::Write as _;

use thiserror::Error;

use super::s7::address::Area;
use super::s7::codec::Item;
use super::s7::{Connection, S7Error, S7Options};
use crate::sparkplug::DataType;

/// Discovery failed as a whole.
#[derive(Debug, Error)]
pub enum DiscoverError {
    #[error("S7: {0}")]
    S7(#[from] S7Error),
    #[error("Logix: {0}")]
    Logix(String),
}

/// What an S7 CPU has, by probing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S7Inventory {
    pub pdu: u16,
    /// (DB number, size in bytes), ascending.
    pub dbs: Vec<(u16, u32)>,
    pub merker: u32,
    pub inputs: u32,
    pub outputs: u32,
}

/// Probes DB1..=`max_db` and the M/I/Q areas.
pub async fn s7(opts: &S7Options, max_db: u16) -> Result<S7Inventory, DiscoverError> {
    let mut c = Connection::open(opts).await?;
    let per = opts.max_items.clamp(1, 20);
    let mut present = Vec::new();
    let numbers: Vec<u16> = (1..=max_db).collect();
    for group in numbers.chunks(per) {
        let items: Vec<Item> = group
            .iter()
            .map(|&n| Item {
                area: Area::Db(n),
                start: 0,
                len: 1,
            })
            .collect();
        for (&n, r) in group.iter().zip(c.read(&items).await?) {
            match r {
                Ok(_) => present.push(n),
                Err(e) if e.0 == 0x05 => present.push(n),
                Err(_) => {}
            }
        }
    }
    let mut areas: Vec<Area> = present.iter().map(|&n| Area::Db(n)).collect();
    areas.extend([Area::Merker, Area::Inputs, Area::Outputs]);
    let sizes = sizes(&mut c, &areas, per).await?;
    let n = present.len();
    Ok(S7Inventory {
        pdu: c.pdu,
        dbs: present.into_iter().zip(sizes[..n].iter().copied()).collect(),
        merker: sizes[n],
        inputs: sizes[n + 1],
        outputs: sizes[n + 2],
    })
}

/// The size of each area: the first byte offset that reads "out of range"
/// (0 for an area that does not answer at all), found by binary search.
async fn sizes(c: &mut Connection, areas: &[Area], per: usize) -> Result<Vec<u32>, S7Error> {
    // Invariant per area: byte `lo - 1` reads (or lo == 0), byte `hi` does not.
    let mut lo = vec![0u32; areas.len()];
    let mut hi = vec![65_536u32; areas.len()];
    loop {
        let open: Vec<usize> = (0..areas.len()).filter(|&i| lo[i] < hi[i]).collect();
        if open.is_empty() {
            return Ok(lo);
        }
        for group in open.chunks(per) {
            let items: Vec<Item> = group
                .iter()
                .map(|&i| Item {
                    area: areas[i],
                    start: (lo[i] + hi[i]) / 2,
                    len: 1,
                })
                .collect();
            for (&i, r) in group.iter().zip(c.read(&items).await?) {
                let mid = (lo[i] + hi[i]) / 2;
                if r.is_ok() {
                    lo[i] = mid + 1;
                } else {
                    hi[i] = mid;
                }
            }
        }
    }
}

/// The TOML template for an S7 inventory.
pub fn s7_template(inv: &S7Inventory, address: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# S7 at {address}: PDU {} bytes, {} data blocks; M {} bytes, I {} bytes, Q {} bytes.",
        inv.pdu,
        inv.dbs.len(),
        inv.merker,
        inv.inputs,
        inv.outputs
    );
    let _ = writeln!(
        s,
        "# Classic S7comm cannot list symbols: name the values you need from the TIA Portal\n\
         # DB view (offsets need \"Optimized block access\" off). Uncomment and edit:\n"
    );
    let _ = writeln!(
        s,
        "[[devices]]\nname = \"plc\"\ndriver = \"s7\"\naddress = \"{address}\"\n"
    );
    for (n, size) in &inv.dbs {
        let _ = writeln!(s, "# DB{n}: {size} bytes");
        if *size >= 4 {
            let _ = writeln!(
                s,
                "# [[devices.tags]]\n# name = \"DB{n}/Value0\"\n# address = \"DB{n}.DBD0\"        # REAL with Float, DINT with Int32\n# datatype = \"Float\"\n"
            );
        } else if *size >= 1 {
            let _ = writeln!(
                s,
                "# [[devices.tags]]\n# name = \"DB{n}/Bit0\"\n# address = \"DB{n}.DBX0.0\"\n# datatype = \"Boolean\"\n"
            );
        }
    }
    s
}

/// One Logix tag as the controller lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogixTagInfo {
    /// Full name (`Counter`, `Program:Main.Speed`).
    pub name: String,
    /// The CIP type name (`DINT`, `REAL`, a UDT name).
    pub type_name: String,
    /// Array dimensions (empty for a scalar).
    pub dims: Vec<u32>,
}

/// Lists controller tags and the tags of every program.
pub async fn logix(addr: &str, slot: Option<u8>) -> Result<Vec<LogixTagInfo>, DiscoverError> {
    use rust_ethernet_ip::EipClient;
    let e = |e: rust_ethernet_ip::EtherNetIpError| DiscoverError::Logix(e.to_string());
    let mut c = match slot {
        Some(s) => EipClient::with_route_path(addr, super::logix::backplane(s)).await,
        None => EipClient::connect(addr).await,
    }
    .map_err(e)?;
    let controller = c.discover_tags_detailed().await.map_err(|x| {
        DiscoverError::Logix(format!(
            "the controller did not list its tags ({x}); a simulator may not implement the Symbol Object"
        ))
    })?;
    let mut out = Vec::new();
    let mut programs = Vec::new();
    for t in controller {
        if let Some(p) = t.name.strip_prefix("Program:") {
            programs.push(p.to_string());
            continue;
        }
        out.push(LogixTagInfo {
            name: t.name,
            type_name: t.data_type_name,
            dims: t.dimensions,
        });
    }
    for p in programs {
        for t in c.discover_program_tags(&p).await.map_err(e)? {
            let name = if t.name.starts_with("Program:") {
                t.name
            } else {
                format!("Program:{p}.{}", t.name)
            };
            out.push(LogixTagInfo {
                name,
                type_name: t.data_type_name,
                dims: t.dimensions,
            });
        }
    }
    Ok(out)
}

/// The Sparkplug datatype for a Logix type name (None: not one metric, e.g. a UDT).
pub fn logix_datatype(type_name: &str) -> Option<DataType> {
    Some(match type_name.to_ascii_uppercase().as_str() {
        "BOOL" => DataType::Boolean,
        "SINT" => DataType::Int8,
        "INT" => DataType::Int16,
        "DINT" => DataType::Int32,
        "LINT" => DataType::Int64,
        "USINT" => DataType::UInt8,
        "UINT" => DataType::UInt16,
        "UDINT" => DataType::UInt32,
        "ULINT" => DataType::UInt64,
        "REAL" => DataType::Float,
        "LREAL" => DataType::Double,
        "STRING" => DataType::String,
        _ => return None,
    })
}

fn array_of(dt: DataType) -> Option<DataType> {
    Some(match dt {
        DataType::Boolean => DataType::BooleanArray,
        DataType::Int8 => DataType::Int8Array,
        DataType::Int16 => DataType::Int16Array,
        DataType::Int32 => DataType::Int32Array,
        DataType::Int64 => DataType::Int64Array,
        DataType::UInt8 => DataType::UInt8Array,
        DataType::UInt16 => DataType::UInt16Array,
        DataType::UInt32 => DataType::UInt32Array,
        DataType::UInt64 => DataType::UInt64Array,
        DataType::Float => DataType::FloatArray,
        DataType::Double => DataType::DoubleArray,
        _ => return None,
    })
}

/// Ready-to-paste `[[devices.tags]]` for listed Logix tags; UDTs and other
/// types that are not one metric are listed as comments to expand by member.
pub fn logix_toml(tags: &[LogixTagInfo]) -> String {
    let mut s = String::new();
    for t in tags {
        let metric = t.name.replace("Program:", "").replace('.', "/");
        let dt = logix_datatype(&t.type_name);
        let elements: u32 = t.dims.iter().copied().filter(|d| *d > 0).product();
        match (dt, t.dims.is_empty()) {
            (Some(dt), true) => {
                let _ = writeln!(
                    s,
                    "[[devices.tags]]\nname = \"{metric}\"\naddress = \"{}\"\ndatatype = \"{dt}\"\n",
                    t.name
                );
            }
            (Some(dt), false) if t.dims.len() == 1 && array_of(dt).is_some() => {
                let adt = array_of(dt).expect("checked above");
                let _ = writeln!(
                    s,
                    "[[devices.tags]]\nname = \"{metric}\"\naddress = \"{}[0]{{{elements}}}\"\ndatatype = \"{adt}\"\n",
                    t.name
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "# {} : {}{} — not one metric; add its members as {}.<member>\n",
                    t.name,
                    t.type_name,
                    if t.dims.is_empty() {
                        String::new()
                    } else {
                        format!("{:?}", t.dims)
                    },
                    t.name
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_logix_tags_become_tags_that_the_config_accepts() {
        let tags = vec![
            LogixTagInfo {
                name: "Counter".into(),
                type_name: "DINT".into(),
                dims: vec![],
            },
            LogixTagInfo {
                name: "Temps".into(),
                type_name: "REAL".into(),
                dims: vec![10],
            },
            LogixTagInfo {
                name: "Program:Main.Speed".into(),
                type_name: "REAL".into(),
                dims: vec![],
            },
            LogixTagInfo {
                name: "Motor".into(),
                type_name: "MOTOR_UDT".into(),
                dims: vec![],
            },
        ];
        let toml = logix_toml(&tags);
        assert!(
            toml.contains("address = \"Temps[0]{10}\"\ndatatype = \"FloatArray\""),
            "{toml}"
        );
        assert!(
            toml.contains("name = \"Main/Speed\"\naddress = \"Program:Main.Speed\""),
            "{toml}"
        );
        assert!(toml.contains("# Motor : MOTOR_UDT"), "{toml}");
        let cfg = format!(
            "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[mqtt.servers]]\nhost = \"h\"\n[[devices]]\nname = \"d\"\ndriver = \"logix\"\naddress = \"10.0.0.1\"\n{toml}"
        );
        let c = crate::config::Config::parse("discovered.toml", &cfg).expect("the pasted tags are valid");
        assert_eq!(c.devices[0].tags.len(), 3);
    }
}
