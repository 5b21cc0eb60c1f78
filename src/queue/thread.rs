//! The durable store on its own thread, so that `write`, `fdatasync`,
//! `statvfs`, the manifest's rename and reads during a replay never run on
//! the async runtime's workers.
//!
//! The runtime sends [`StoreOp`]s on a bounded channel (a slow disk slows
//! the runtime down instead of growing a queue in memory) and receives one
//! [`StoreReport`] per operation, in order, on an unbounded channel that is
//! bounded in practice by the operations in flight: the thread never waits
//! for the runtime, so the two cannot wait on each other.
//!
//! Invariants: operations run one at a time in the order sent, so a
//! confirmation or a read always sees every append sent before it; a sample
//! is reported stored only after its write returned ("acknowledged means on
//! disk", synced within `store.flush_interval`); dropping the handle closes
//! the channel, and the thread flushes the store and ends.

use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::disk::{DiskOptions, QueueError};
use super::forward::{execute, Store, StoreOp, StoreReport, StoreSnapshot};
use super::outbox::Encoded;
use super::{Dropped, LazyStore, Record};

/// Operations sent and not yet taken by the thread.
const CHANNEL: usize = 64;

impl Store for LazyStore {
    fn append(&mut self, records: &[Encoded]) -> Result<(u64, Dropped), QueueError> {
        self.append_encoded(records)
    }
    fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError> {
        LazyStore::confirm_through(self, id)
    }
    fn read(&mut self, cursor: Option<u64>, max: usize, max_samples: u64) -> Result<Vec<(u64, Record)>, QueueError> {
        self.read_batch(cursor, max, max_samples)
    }
    fn tick(&mut self) -> Result<(), QueueError> {
        self.retry_if_due();
        LazyStore::tick(self)
    }
    fn flush(&mut self) -> Result<(), QueueError> {
        LazyStore::flush(self)
    }
    fn set_options(&mut self, opts: DiskOptions) {
        LazyStore::set_options(self, opts)
    }
    fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            stats: self.stats(),
            unsynced_samples: self.unsynced_metrics(),
            file_bytes: self.file_bytes(),
            limit: self.limit(),
            max_bytes: self.max_bytes(),
            failure: self.failure().map(str::to_string),
            oldest_ms: self.oldest_timestamp(),
        }
    }
}

/// The runtime's end of the store thread.
pub struct StoreThread {
    tx: Option<mpsc::Sender<StoreOp>>,
    join: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Moves `store` to a new thread; its reports arrive on the receiver.
    pub fn spawn(mut store: LazyStore) -> std::io::Result<(StoreThread, mpsc::UnboundedReceiver<StoreReport>)> {
        let (tx, mut rx) = mpsc::channel::<StoreOp>(CHANNEL);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let join = std::thread::Builder::new().name("spb-store".into()).spawn(move || {
            while let Some(op) = rx.blocking_recv() {
                // The runtime may be gone (shutting down): the store still runs the op.
                let _ = report_tx.send(execute(&mut store, op));
            }
            if let Err(e) = store.flush() {
                tracing::error!(error = %e, "could not flush the store at exit");
            }
        })?;
        Ok((
            StoreThread {
                tx: Some(tx),
                join: Some(join),
            },
            report_rx,
        ))
    }

    /// Hands `op` to the thread, waiting while it has [`CHANNEL`] queued.
    /// False when the thread is gone (it panicked).
    pub async fn send(&self, op: StoreOp) -> bool {
        match &self.tx {
            Some(tx) => tx.send(op).await.is_ok(),
            None => false,
        }
    }
}

/// Dropping the handle closes the channel and waits for the thread to run
/// what was sent, flush and end.
impl Drop for StoreThread {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(j) = self.join.take() {
            if j.join().is_err() {
                tracing::error!("the store thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::{Metric, Value};

    fn enc(v: i32) -> Encoded {
        Encoded::of(&Record {
            device: None,
            metrics: vec![Metric::new("m", Value::Int32(v), 5)],
        })
    }

    #[tokio::test]
    async fn operations_run_in_order_off_the_runtime_and_report_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LazyStore::open(dir.path().join("q"), DiskOptions::default()).expect("open");
        let (t, mut reports) = StoreThread::spawn(store).expect("spawn");
        assert!(t.send(StoreOp::Append(vec![enc(1), enc(2)])).await);
        assert!(
            t.send(StoreOp::Read {
                epoch: 3,
                cursor: None,
                max_records: 10,
                max_samples: 10
            })
            .await
        );
        assert!(t.send(StoreOp::ConfirmThrough(1)).await);
        let first = reports.recv().await.expect("report");
        assert!(matches!(
            first.reply,
            super::super::forward::StoreReply::Appended { samples: 2, .. }
        ));
        assert_eq!(first.snapshot.stats.records, 2);
        let second = reports.recv().await.expect("report");
        let super::super::forward::StoreReply::Batch { epoch: 3, records } = second.reply else {
            panic!("{second:?}")
        };
        assert_eq!(records.len(), 2, "the read sees the append sent before it");
        let third = reports.recv().await.expect("report");
        assert_eq!(third.snapshot.stats.records, 0, "drained");
        drop(t);
        assert!(!dir.path().join("q").exists(), "a drained store is deleted");
    }
}
