//! sled 0.34.7 vs redb 4 for the store-and-forward queue, side by side in one
//! run, each in its own process so its resident memory is its own.
//!
//! `make bench-store-engines` (= `cargo bench --bench store_engines`). Each
//! child: RSS before and after opening (the engine's fixed cost, which the
//! gateway pays even when nothing is stored), 200k appends of 300-byte values
//! with u64 big-endian keys and a commit/flush every 100, then a drain (read
//! the first key and remove it, commit every 100), and the directory size
//! after each phase. Results: stdout and `target/bench-store-engines.md`.

use std::time::Instant;

const N: u64 = 200_000;
const VALUE: [u8; 300] = [0x5a; 300];

fn rss_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                let m = e.metadata().expect("metadata");
                if m.is_dir() {
                    dir_bytes(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    })
}

struct Result {
    open_mib: f64,
    append_per_s: f64,
    drain_per_s: f64,
    disk_full: u64,
    disk_drained: u64,
    peak_mib: f64,
}

fn sled_run(dir: &std::path::Path) -> Result {
    let before = rss_kib("VmRSS:");
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(4 << 20)
        .flush_every_ms(None)
        .open()
        .expect("open");
    let t = db.open_tree("q").expect("tree");
    let open_mib = (rss_kib("VmRSS:") - before) / 1024.0;
    let s = Instant::now();
    for i in 0..N {
        t.insert(i.to_be_bytes(), &VALUE[..]).expect("insert");
        if i % 100 == 99 {
            db.flush().expect("flush");
        }
    }
    db.flush().expect("flush");
    let append_per_s = N as f64 / s.elapsed().as_secs_f64();
    let disk_full = dir_bytes(dir);
    let s = Instant::now();
    let mut n = 0u64;
    while let Some((k, _)) = t.first().expect("first") {
        t.remove(k).expect("remove");
        n += 1;
        if n.is_multiple_of(100) {
            db.flush().expect("flush");
        }
    }
    db.flush().expect("flush");
    Result {
        open_mib,
        append_per_s,
        drain_per_s: n as f64 / s.elapsed().as_secs_f64(),
        disk_full,
        disk_drained: dir_bytes(dir),
        peak_mib: rss_kib("VmHWM:") / 1024.0,
    }
}

fn redb_run(dir: &std::path::Path) -> Result {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("q");
    let before = rss_kib("VmRSS:");
    let db = redb::Database::builder()
        .set_cache_size(4 << 20)
        .create(dir.join("q.redb"))
        .expect("open");
    let open_mib = (rss_kib("VmRSS:") - before) / 1024.0;
    let s = Instant::now();
    let mut i = 0u64;
    while i < N {
        let w = db.begin_write().expect("begin");
        {
            let mut t = w.open_table(T).expect("table");
            for _ in 0..100 {
                t.insert(i, &VALUE[..]).expect("insert");
                i += 1;
            }
        }
        w.commit().expect("commit");
    }
    let append_per_s = N as f64 / s.elapsed().as_secs_f64();
    let disk_full = dir_bytes(dir);
    let s = Instant::now();
    let mut n = 0u64;
    loop {
        let w = db.begin_write().expect("begin");
        let mut done = false;
        {
            let mut t = w.open_table(T).expect("table");
            for _ in 0..100 {
                if t.pop_first().expect("pop").is_none() {
                    done = true;
                    break;
                }
                n += 1;
            }
        }
        w.commit().expect("commit");
        if done {
            break;
        }
    }
    Result {
        open_mib,
        append_per_s,
        drain_per_s: n as f64 / s.elapsed().as_secs_f64(),
        disk_full,
        disk_drained: dir_bytes(dir),
        peak_mib: rss_kib("VmHWM:") / 1024.0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let engine = &args[i + 1];
        let dir = tempfile::tempdir().expect("tmp");
        let r = if engine == "sled" {
            sled_run(dir.path())
        } else {
            redb_run(dir.path())
        };
        println!(
            "| {engine} | {:.1} MiB | {:.0} | {:.0} | {:.0} B | {:.1} MiB | {:.1} MiB |",
            r.open_mib,
            r.append_per_s,
            r.drain_per_s,
            r.disk_full as f64 / N as f64,
            r.disk_drained as f64 / 1048576.0,
            r.peak_mib
        );
        return;
    }
    let exe = std::env::current_exe().expect("exe");
    let mut rows = Vec::new();
    for engine in ["sled", "redb"] {
        let out = std::process::Command::new(&exe)
            .args(["--child", engine])
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let table = format!(
        "| engine | RSS added by opening | appends/s (commit per 100) | drain/s (commit per 100) | disk per record | disk after drain | peak RSS |\n|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-store-engines.md"),
        table,
    )
    .expect("write");
}
