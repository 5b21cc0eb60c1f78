//! What survives SIGKILL ("the default must survive SIGKILL with
//! nothing lost"), per storage engine and commit policy, in one run.
//!
//! `make bench-store-crash` (= `cargo bench --bench store_crash`). For each
//! mode a child process (this binary, `--child MODE DIR`) appends 300-byte
//! records with ids 0, 1, 2, ... as fast as it can and, after each append
//! *returns*, writes the id to a pipe: that is the moment the gateway would
//! consider a sample stored. The parent SIGKILLs the child at a random moment
//! (0.3-1.2 s in), reopens the store in this process and finds the highest
//! id present. Lost = last acknowledged id - highest id present (0 when all
//! acknowledged appends survived). Five kills per mode; the table gives the
//! appends/s the child reached, and the median and worst loss.
//!
//! Modes:
//! - `sled-group`: sled 0.34.7, flush every 100 appends (the groundwork default);
//! - `sled-batch`: sled, flush every 100 appends, the 100 acknowledged only
//!   once their flush returns (the producer waits for the group commit);
//! - `sled-each`: sled, flush after every append;
//! - `redb-durable`: redb 4, a durable commit every 100 appends (a batch is
//!   acknowledged when its commit returns);
//! - `redb-nondurable`: redb, a `Durability::None` commit per append and a
//!   durable one every 100;
//! - `log-write`: a plain append-only file, one `write(2)` per record
//!   (length + CRC32 + payload), `fdatasync` every 100: the page cache holds
//!   what the process wrote once `write` returns, so only a power cut can
//!   take the records since the last sync.
//!
//! A power cut is not simulated here; its window is the sync interval by
//! construction for every mode. Results: stdout and `target/bench-store-crash.md`.

use std::io::{BufRead, BufReader, Read, Write};

use redb::{ReadableDatabase, ReadableTable};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VALUE: [u8; 300] = [0x5a; 300];
const MODES: [&str; 6] = [
    "sled-group",
    "sled-batch",
    "sled-each",
    "redb-durable",
    "redb-nondurable",
    "log-write",
];
const KILLS: usize = 5;
const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("q");

fn ack(out: &mut std::fs::File, id: u64) {
    // One write per acknowledgement: the parent sees exactly what returned.
    let _ = out.write_all(format!("{id}\n").as_bytes());
}

fn child(mode: &str, dir: &Path) {
    // stdout as an unbuffered file, so an ack is in the pipe before the next append.
    let mut out = {
        use std::os::fd::FromRawFd;
        // SAFETY: fd 1 is this process's stdout, open for its whole life.
        unsafe { std::fs::File::from_raw_fd(1) }
    };
    match mode {
        "sled-group" | "sled-batch" | "sled-each" => {
            let db = sled::Config::new()
                .path(dir)
                .cache_capacity(4 << 20)
                .flush_every_ms(None)
                .open()
                .expect("open");
            let t = db.open_tree("q").expect("tree");
            let every = if mode == "sled-each" { 1 } else { 100 };
            for i in 0u64.. {
                t.insert(i.to_be_bytes(), &VALUE[..]).expect("insert");
                let flushed = (i + 1).is_multiple_of(every);
                if flushed {
                    db.flush().expect("flush");
                }
                match (mode, flushed) {
                    ("sled-batch", true) => (i + 1 - every..=i).for_each(|k| ack(&mut out, k)),
                    ("sled-batch", false) => {}
                    _ => ack(&mut out, i),
                }
            }
        }
        "redb-durable" | "redb-nondurable" => {
            let db = redb::Database::builder()
                .set_cache_size(4 << 20)
                .create(dir.join("q.redb"))
                .expect("open");
            let durable = mode == "redb-durable";
            let mut i = 0u64;
            loop {
                let batch = if durable { 100 } else { 1 };
                let mut w = db.begin_write().expect("begin");
                if !durable && !(i + 1).is_multiple_of(100) {
                    w.set_durability(redb::Durability::None).expect("durability");
                }
                {
                    let mut t = w.open_table(T).expect("table");
                    for k in 0..batch {
                        t.insert(i + k, &VALUE[..]).expect("insert");
                    }
                }
                w.commit().expect("commit");
                for k in 0..batch {
                    ack(&mut out, i + k);
                }
                i += batch;
            }
        }
        "log-write" => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("q.log"))
                .expect("open");
            let mut rec = Vec::with_capacity(8 + 8 + VALUE.len());
            for i in 0u64.. {
                rec.clear();
                let len = (8 + VALUE.len()) as u32;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&i.to_be_bytes());
                crc.update(&VALUE);
                rec.extend_from_slice(&len.to_be_bytes());
                rec.extend_from_slice(&crc.finalize().to_be_bytes());
                rec.extend_from_slice(&i.to_be_bytes());
                rec.extend_from_slice(&VALUE);
                f.write_all(&rec).expect("write");
                if (i + 1).is_multiple_of(100) {
                    f.sync_data().expect("fdatasync");
                }
                ack(&mut out, i);
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// The highest id present after the crash (None when the store is empty).
fn highest(mode: &str, dir: &Path) -> Option<u64> {
    match mode {
        "sled-group" | "sled-batch" | "sled-each" => {
            let db = sled::Config::new().path(dir).open().expect("reopen sled");
            let t = db.open_tree("q").expect("tree");
            t.last()
                .expect("last")
                .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().expect("8-byte key")))
        }
        "redb-durable" | "redb-nondurable" => {
            let db = redb::Database::create(dir.join("q.redb")).expect("reopen redb");
            let r = db.begin_read().expect("read");
            let t = match r.open_table(T) {
                Ok(t) => t,
                Err(_) => return None,
            };
            let last = t.last().expect("last").map(|(k, _)| k.value());
            last
        }
        _ => {
            // Records until the first torn or corrupt one.
            let mut data = Vec::new();
            std::fs::File::open(dir.join("q.log"))
                .and_then(|mut f| f.read_to_end(&mut data))
                .expect("read the log");
            let mut at = 0;
            let mut last = None;
            while at + 8 <= data.len() {
                let len = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_be_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
                let Some(body) = data.get(at + 8..at + 8 + len) else {
                    break;
                };
                if crc32fast::hash(body) != crc {
                    break;
                }
                last = Some(u64::from_be_bytes(body[..8].try_into().expect("8 bytes")));
                at += 8 + len;
            }
            last
        }
    }
}

struct Kill {
    rate: f64,
    lost: u64,
}

fn one_kill(mode: &str, seed: u64) -> Kill {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = Command::new(std::env::current_exe().expect("self"))
        .args(["--child", mode])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = c.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(id) = line.parse() {
                let _ = tx.send(id);
            }
        }
    });
    // A random moment 0.3-1.2 s after the first ack.
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("the child appends");
    let start = Instant::now();
    let wait = Duration::from_millis(300 + (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % 900);
    std::thread::sleep(wait);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = c.wait();
    reader.join().expect("reader");
    let last_acked = rx.try_iter().last().unwrap_or(first);
    let rate = (last_acked - first) as f64 / start.elapsed().as_secs_f64();
    let present = highest(mode, dir.path());
    let lost = match present {
        Some(h) if h >= last_acked => 0,
        Some(h) => last_acked - h,
        None => last_acked + 1,
    };
    Kill { rate, lost }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mut md = String::from(
        "| engine / commit policy | appends/s (acknowledged) | acknowledged then lost on SIGKILL: median | worst of 5 |\n|---|---|---|---|\n",
    );
    for mode in MODES {
        let mut kills: Vec<Kill> = (0..KILLS as u64).map(|s| one_kill(mode, s + 1)).collect();
        kills.sort_by_key(|k| k.lost);
        let mut rates: Vec<f64> = kills.iter().map(|k| k.rate).collect();
        rates.sort_by(f64::total_cmp);
        let line = format!(
            "| {mode} | {:.0} | {} | {} |\n",
            rates[rates.len() / 2],
            kills[kills.len() / 2].lost,
            kills[kills.len() - 1].lost
        );
        print!("{line}");
        md.push_str(&line);
    }
    std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-store-crash.md"),
        md,
    )
    .expect("write the table");
}
