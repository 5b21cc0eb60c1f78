//! The durable queue under real crashes: a writer process appends
//! batches with `DiskQueue::append_batch` and reports each batch once the
//! call has returned; it is SIGKILLed at a random moment, 20 times in a row
//! against the same store. After every kill the store reopens, and every
//! acknowledged record is there, in order, with none corrupt.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spb::queue::disk::{DiskOptions, DiskQueue};
use spb::queue::Record;
use spb::sparkplug::{Metric, Value};

const DIR_VAR: &str = "SPB_QUEUE_CRASH_DIR";

fn record(n: u64) -> Record {
    Record {
        device: Some("press".into()),
        metrics: (0..5)
            .map(|k| Metric::new(format!("Tag {k}"), Value::UInt64(n * 5 + k), 1_700_000_000_000 + n))
            .collect(),
    }
}

/// The writer: runs only when the parent test starts this binary with the
/// store's directory in the environment.
#[test]
#[ignore = "the child process of every_acknowledged_batch_survives_sigkill_20_times_in_a_row"]
fn crash_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else { return };
    let mut q = DiskQueue::open(std::path::Path::new(&dir), DiskOptions::default()).expect("open");
    let mut n = 0u64;
    loop {
        let batch: Vec<Record> = (n..n + 50).map(record).collect();
        let (first, dropped) = q.append_batch(&batch).expect("append");
        assert_eq!(dropped.records, 0, "the store is large enough for this test");
        println!("ACK {first} {}", first + 49);
        n += 50;
    }
}

#[test]
fn every_acknowledged_batch_survives_sigkill_20_times_in_a_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut acked: Vec<u64> = Vec::new();
    for kill in 0..20u64 {
        let mut child = Command::new(std::env::current_exe().expect("self"))
            .args([
                "--ignored",
                "--exact",
                "crash_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let mut parts = line.strip_prefix("ACK ").into_iter().flat_map(|l| l.split(' '));
                if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
                    if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                        let _ = tx.send((a, b));
                    }
                }
            }
        });
        // Kill at a random moment after the first acknowledged batch.
        let (a, b) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer acknowledges");
        acked.extend(a..=b);
        let started = Instant::now();
        let wait = Duration::from_millis(50 + (kill * 7919 + 13) % 400);
        while started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        let _ = child.wait();
        reader.join().expect("reader");
        for (a, b) in rx.try_iter() {
            acked.extend(a..=b);
        }

        let mut q = DiskQueue::open(dir.path(), DiskOptions::default()).expect("reopen after SIGKILL");
        let present: Vec<u64> = q
            .read_after(None, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|(id, r)| {
                assert_eq!(r.metrics.len(), 5, "record {id} comes back whole");
                id
            })
            .collect();
        assert!(present.windows(2).all(|w| w[0] < w[1]), "FIFO order after kill {kill}");
        let set: std::collections::HashSet<u64> = present.iter().copied().collect();
        let missing: Vec<&u64> = acked.iter().filter(|id| !set.contains(id)).take(5).collect();
        assert!(
            missing.is_empty(),
            "kill {kill}: acknowledged records lost, e.g. {missing:?} ({} acknowledged, {} present)",
            acked.len(),
            present.len()
        );
        assert_eq!(q.stats().corrupt_records, 0, "kill {kill}: nothing corrupt");
    }
    assert!(acked.len() >= 20 * 50, "every run acknowledged at least one batch");
}
