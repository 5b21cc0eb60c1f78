//! The bdSeq that survives restarts: the value for the next CONNECT,
//! written to `bdseq` in the state directory.
//!
//! Invariants: a save is durable before it returns (write a temporary file,
//! fsync, rename, fsync the directory), so a crash right after a CONNECT
//! never reuses the bdSeq of the Will that CONNECT registered; a corrupt
//! file is reported and the count starts again from 0.

use std::path::Path;

/// Reads the persisted bdSeq (the value for the next CONNECT).
pub fn load(dir: &Path) -> Option<u8> {
    let path = dir.join("bdseq");
    let text = std::fs::read_to_string(&path).ok()?;
    match text.trim().parse::<u8>() {
        Ok(b) => Some(b),
        Err(_) => {
            tracing::error!(path = %path.display(), "bdSeq file is corrupt; starting from 0");
            None
        }
    }
}

/// Persists the bdSeq durably: write a temporary file, fsync, rename.
pub fn save(dir: &Path, value: u8) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("bdseq.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("bdseq"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves `value` before going on, its fsync run with the worker handed over
/// to the runtime's other tasks (pollers and the HTTP endpoint go on).
pub fn persist(dir: &Path, value: u8) {
    let save = || save(dir, value);
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let saved = if multi {
        tokio::task::block_in_place(save)
    } else {
        save()
    };
    if let Err(e) = saved {
        tracing::error!(error = %e, dir = %dir.display(), "cannot persist bdSeq");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_bdseq_is_loaded_and_a_corrupt_file_starts_from_none() {
        let dir = std::env::temp_dir().join(format!("spb-bdseq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(load(&dir), None, "no file yet");
        save(&dir, 255).expect("save");
        assert_eq!(load(&dir), Some(255));
        assert!(!dir.join("bdseq.tmp").exists(), "renamed into place");
        std::fs::write(dir.join("bdseq"), "not a number").expect("write");
        assert_eq!(load(&dir), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
