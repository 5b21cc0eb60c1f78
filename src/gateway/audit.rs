//! The command audit file: one JSON line per command metric, appended to
//! `audit.log` in the state directory by a thread of its own, so that no
//! write or sync of it runs on the async workers.
//!
//! Invariants:
//! - Lines are written in the order they were sent, each whole (one
//!   `write` of the line, the file opened for append).
//! - A line sent with `sync` (an accepted write, a node-control command)
//!   is fdatasync'ed before the next line is taken: what the audit says
//!   was done survives a power cut. [`AuditThread::send_synced`] says when
//!   that happened, so a write reaches the PLC only once its line is on
//!   the flash. Refusals are synced with the next synced line, or within a
//!   second. A new file's directory entry is synced when it is created.
//! - Size-based rotation: a line that would take the file past `max_size`
//!   first renames `audit.log` to `audit.log.1` (`.1` to `.2`, …, the
//!   oldest of `keep` dropped) and syncs the directory; the disk used is
//!   at most about `(keep + 1) × max_size`.
//! - An I/O error never stops the gateway: it is logged (once until the
//!   file works again) and counted in `spb_audit_errors_total`, and the
//!   journal still has the line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The audit file's name in the state directory.
pub const AUDIT_FILE: &str = "audit.log";

/// Where and how large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    pub path: PathBuf,
    pub max_size: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

/// The file itself (used by the thread; public for its tests).
pub struct AuditFile {
    opts: AuditOptions,
    file: Option<File>,
    size: u64,
    dirty: bool,
}

impl AuditFile {
    pub fn new(opts: AuditOptions) -> AuditFile {
        AuditFile {
            opts,
            file: None,
            size: 0,
            dirty: false,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let existed = self.opts.path.exists();
            let f = OpenOptions::new().create(true).append(true).open(&self.opts.path)?;
            if !existed {
                sync_dir(&self.opts.path)?;
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends `line` (rotating first when it would not fit), synced if asked.
    pub fn append(&mut self, line: &str, sync: bool) -> std::io::Result<()> {
        self.open()?;
        if self.size > 0 && self.size + line.len() as u64 > self.opts.max_size {
            self.rotate()?;
        }
        let f = self.open()?;
        f.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        self.dirty = true;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// fdatasync, when something was written since the last one.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if let (true, Some(f)) = (self.dirty, self.file.as_ref()) {
            f.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        self.file = None;
        let numbered = |n: u32| -> PathBuf {
            let mut p = self.opts.path.clone().into_os_string();
            p.push(format!(".{n}"));
            p.into()
        };
        if self.opts.keep == 0 {
            std::fs::remove_file(&self.opts.path)?;
        } else {
            for n in (1..self.opts.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.opts.path, numbered(1))?;
        }
        sync_dir(&self.opts.path)?;
        self.size = 0;
        Ok(())
    }
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// A line for the thread, and who waits for it to be synced.
struct Line {
    text: String,
    sync: bool,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// The thread that owns the file.
pub struct AuditThread {
    tx: Option<mpsc::Sender<Line>>,
    handle: Option<JoinHandle<()>>,
}

impl AuditThread {
    /// Starts the thread; `errors` counts failed writes.
    pub fn spawn(opts: AuditOptions, errors: Arc<AtomicU64>) -> std::io::Result<AuditThread> {
        let (tx, rx) = mpsc::channel::<Line>();
        let handle = std::thread::Builder::new().name("spb-audit".into()).spawn(move || {
            let path = opts.path.clone();
            let mut file = AuditFile::new(opts);
            let mut failing = false;
            let mut report = |r: std::io::Result<()>| match r {
                Ok(()) => {
                    failing = false;
                    Ok(())
                }
                Err(e) => {
                    errors.fetch_add(1, Relaxed);
                    if !failing {
                        tracing::error!(path = %path.display(), error = %e, "cannot write the command audit file (the journal keeps every line)");
                    }
                    failing = true;
                    Err(e.to_string())
                }
            };
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(line) => {
                        let r = report(file.append(&line.text, line.sync || line.done.is_some()));
                        if let Some(done) = line.done {
                            let _ = done.send(r);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = report(file.sync());
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let _ = report(file.sync());
        })?;
        Ok(AuditThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a line (newline included).
    pub fn send(&self, line: String, sync: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Line {
                text: line,
                sync,
                done: None,
            });
        }
    }

    /// Queues a line to be synced; the answer says when it is on the
    /// flash (or why it is not).
    pub fn send_synced(&self, line: String) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (done, rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Line {
                text: line,
                sync: true,
                done: Some(done),
            });
        }
        rx
    }
}

impl Drop for AuditThread {
    /// Writes and syncs what was sent, then ends the thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, max_size: u64, keep: u32) -> AuditOptions {
        AuditOptions {
            path: dir.join(AUDIT_FILE),
            max_size,
            keep,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spb-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn lines_are_appended_and_rotate_by_size_keeping_the_newest_files() {
        let dir = tmp("rotate");
        let mut f = AuditFile::new(opts(&dir, 100, 2));
        // 40 bytes a line: two fit in a file, the third rotates.
        for i in 0..7 {
            f.append(&format!("{i:039}\n"), i % 2 == 0).expect("append");
        }
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        assert_eq!(read("audit.log"), format!("{:039}\n", 6));
        assert_eq!(read("audit.log.1"), format!("{:039}\n{:039}\n", 4, 5));
        assert_eq!(read("audit.log.2"), format!("{:039}\n{:039}\n", 2, 3));
        assert!(!dir.join("audit.log.3").exists(), "only `keep` rotated files");
        // Reopened, it goes on from the file's size.
        let mut g = AuditFile::new(opts(&dir, 100, 2));
        g.append(&format!("{:039}\n", 7), true).expect("append");
        assert_eq!(read("audit.log"), format!("{:039}\n{:039}\n", 6, 7));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_thread_writes_every_line_in_order_before_it_ends() {
        let dir = tmp("thread");
        let errors = Arc::new(AtomicU64::new(0));
        let t = AuditThread::spawn(opts(&dir, 1 << 20, 3), errors.clone()).expect("spawn");
        for i in 0..100 {
            t.send(format!("{i}\n"), i % 10 == 0);
        }
        drop(t);
        let text = std::fs::read_to_string(dir.join(AUDIT_FILE)).expect("read");
        let want: String = (0..100).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(errors.load(Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_synced_line_is_answered_once_on_the_flash_and_a_failure_says_why() {
        let dir = tmp("synced");
        let errors = Arc::new(AtomicU64::new(0));
        let t = AuditThread::spawn(opts(&dir, 1 << 20, 3), errors.clone()).expect("spawn");
        let rx = t.send_synced("a\n".into());
        assert_eq!(rx.blocking_recv(), Ok(Ok(())));
        assert_eq!(std::fs::read_to_string(dir.join(AUDIT_FILE)).expect("read"), "a\n");
        drop(t);
        let bad = tmp("synced-bad");
        std::fs::create_dir_all(bad.join(AUDIT_FILE)).expect("mkdir");
        let t = AuditThread::spawn(opts(&bad, 1 << 20, 3), errors).expect("spawn");
        assert!(matches!(t.send_synced("b\n".into()).blocking_recv(), Ok(Err(_))));
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&bad);
    }

    #[test]
    fn a_file_that_cannot_be_written_is_counted_and_never_stops_anything() {
        let dir = tmp("unwritable");
        let errors = Arc::new(AtomicU64::new(0));
        // A directory where the file should be.
        std::fs::create_dir_all(dir.join(AUDIT_FILE)).expect("mkdir");
        let t = AuditThread::spawn(opts(&dir, 1 << 20, 3), errors.clone()).expect("spawn");
        t.send("x\n".into(), true);
        t.send("y\n".into(), true);
        drop(t);
        assert_eq!(errors.load(Relaxed), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
