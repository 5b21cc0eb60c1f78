//! The library's layering, checked on its source: which top-level module
//! may use which (docs/ARCHITECTURE.md, "Layers"). A `use crate::x` that
//! points upward, or closes a cycle, fails here with the file that does it.
//! Unit-test modules (`#[cfg(test)] mod tests`) may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module, lowest first, with what it may use. Everything not listed
/// for a module is forbidden to it.
const LAYERS: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("units", &[]),
    ("backoff", &[]),
    ("sparkplug", &[]),
    ("commands", &["sparkplug"]),
    ("mqtt", &["clock", "backoff", "sparkplug"]),
    ("plc", &["clock", "units", "backoff", "sparkplug", "commands"]),
    ("queue", &["mqtt", "sparkplug"]),
    ("telemetry", &["clock", "plc", "sparkplug"]),
    (
        "config",
        &["units", "sparkplug", "commands", "mqtt", "plc", "telemetry"],
    ),
    (
        "gateway",
        &[
            "clock",
            "backoff",
            "sparkplug",
            "commands",
            "mqtt",
            "plc",
            "queue",
            "telemetry",
            "config",
        ],
    ),
    (
        "uplink",
        &[
            "clock",
            "backoff",
            "sparkplug",
            "commands",
            "mqtt",
            "plc",
            "telemetry",
            "config",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<name>` paths used by the non-test code of `text`.
fn uses(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // `spb_crate::…` or `$crate::…` are not ours.
        let before = code[..i].chars().next_back();
        if !name.is_empty() && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            out.insert(name);
        }
    }
    out
}

/// Top-level module → (used module → a file that uses it).
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.iter().next().and_then(|c| c.to_str()).unwrap_or_default();
        if first == "bin" || first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&f).expect("read");
        for used in uses(&text) {
            if used != module {
                g.entry(module.clone())
                    .or_default()
                    .entry(used)
                    .or_insert_with(|| f.clone());
            }
        }
        g.entry(module).or_default();
    }
    g
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, used) in graph() {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!("module {module} has no place in LAYERS: add it"));
            continue;
        };
        for (u, file) in used {
            if !ok.contains(&u.as_str()) {
                wrong.push(format!(
                    "{} uses crate::{u}, which {module} may not use",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_layers_themselves_have_no_cycle() {
    // Each module may only use modules listed before it: a cycle is impossible.
    for (i, (module, may)) in LAYERS.iter().enumerate() {
        for m in *may {
            let below = LAYERS[..i].iter().any(|(n, _)| n == m);
            assert!(below, "{module} may use {m}, which is not below it");
        }
    }
}

#[test]
fn the_checker_sees_an_upward_use() {
    let found =
        uses("use crate::gateway::run;\nfn f() { spb_crate::x(); }\n#[cfg(test)]\nmod tests { use crate::uplink; }");
    assert_eq!(found, BTreeSet::from(["gateway".to_string()]));
}
