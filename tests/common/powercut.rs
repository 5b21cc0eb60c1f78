//! The power-cut file system (`tests/powercut/powercut_fs.py`, FUSE) as a
//! test peer: mount it, run something on it, SIGKILL that, and [`cut`] —
//! the unmount keeps only what was synced (the model is in the script's
//! docstring and docs/ROBUSTNESS.md); the next [`mount`] starts from that.
//!
//! [`cut`]: PowerCutFs::cut
//! [`mount`]: PowerCutFs::mount

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PowerCutFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
    child: Option<Child>,
    cuts: u32,
}

fn mounted(mnt: &Path) -> bool {
    let want = mnt.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

impl PowerCutFs {
    /// An empty file system, not yet mounted.
    pub fn new() -> PowerCutFs {
        let dir = tempfile::tempdir().expect("tmp");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mountpoint");
        PowerCutFs {
            dir,
            mnt,
            child: None,
            cuts: 0,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// How many cuts so far.
    pub fn cuts(&self) -> u32 {
        self.cuts
    }

    /// Mounts it (from what the last cut kept); `seed` decides which
    /// unsynced writes the next cut keeps.
    pub fn mount(&mut self, seed: u64) {
        assert!(self.child.is_none(), "already mounted");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/powercut_fs.py");
        let log = std::fs::File::create(self.dir.path().join(format!("fs-{}.log", self.cuts))).expect("log");
        let mut child = Command::new(super::python())
            .arg(script)
            .arg(self.dir.path().join("image.pickle"))
            .arg(&self.mnt)
            .arg(seed.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the power-cut file system");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(&self.mnt) {
            if let Some(status) = child.try_wait().expect("status") {
                panic!(
                    "the power-cut file system did not mount ({status}): it needs /dev/fuse, libfuse2 (`make test` \
                     installs it) and root or a FUSE-capable user namespace:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the power-cut file system never mounted:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The file system's own log (stderr) since it was created.
    pub fn log(&self) -> String {
        (0..=self.cuts)
            .filter_map(|i| std::fs::read_to_string(self.dir.path().join(format!("fs-{i}.log"))).ok())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The power cut: unmounts (whatever ran on it must be dead: kill it
    /// first), keeping only what was synced.
    pub fn cut(&mut self) {
        let mut child = self.child.take().expect("mounted");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("umount").arg(&self.mnt).output().expect("umount");
            if out.status.success() {
                break;
            }
            // The killed process's files may still be closing.
            assert!(
                Instant::now() < deadline,
                "cannot unmount the power-cut file system: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "the power-cut file system failed ({status}):\n{}",
            self.log()
        );
        self.cuts += 1;
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
