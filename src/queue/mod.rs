//! Store-and-forward: samples that could not be published wait here, oldest
//! first, and are replayed as historical after the next birth.
//!
//! This module is the seam the gateway uses. Today's implementation,
//! [`MemoryStore`], is bounded by bytes and drops the oldest record when full
//! (with an ERROR log and a counter), but it does not survive a restart: the
//! durable sled queue with delivery watermarks (issue #5) replaces it behind
//! the same interface.
//!
//! Invariants: FIFO order; `bytes()` never exceeds the bound after `push`
//! returns; every dropped metric is counted.

pub mod disk;

use std::collections::VecDeque;

use crate::sparkplug::Metric;

/// Samples of one device (or of the node) that wait to be replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub device: Option<String>,
    pub metrics: Vec<Metric>,
}

impl Record {
    /// An estimate of the memory a record holds, for the byte bound.
    pub fn size(&self) -> usize {
        64 + self.device.as_ref().map_or(0, String::len)
            + self
                .metrics
                .iter()
                .map(|m| 96 + m.name.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// A bounded FIFO of records in memory.
#[derive(Debug)]
pub struct MemoryStore {
    queue: VecDeque<Record>,
    bytes: usize,
    max_bytes: usize,
    metrics: usize,
}

/// What `push` had to drop to stay within bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub records: usize,
    pub metrics: usize,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        MemoryStore {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            metrics: 0,
        }
    }

    /// Appends; drops the oldest records while over the bound.
    pub fn push(&mut self, r: Record) -> Dropped {
        self.bytes += r.size();
        self.metrics += r.metrics.len();
        self.queue.push_back(r);
        let mut dropped = Dropped::default();
        while self.bytes > self.max_bytes && self.queue.len() > 1 {
            if let Some(old) = self.queue.pop_front() {
                self.bytes -= old.size();
                self.metrics -= old.metrics.len();
                dropped.records += 1;
                dropped.metrics += old.metrics.len();
            }
        }
        dropped
    }

    /// Takes the oldest record.
    pub fn pop(&mut self) -> Option<Record> {
        let r = self.queue.pop_front()?;
        self.bytes -= r.size();
        self.metrics -= r.metrics.len();
        Some(r)
    }

    /// Puts a record back at the head (it could not be replayed yet).
    pub fn unpop(&mut self, r: Record) {
        self.bytes += r.size();
        self.metrics += r.metrics.len();
        self.queue.push_front(r);
    }

    pub fn len_metrics(&self) -> usize {
        self.metrics
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::Value;

    fn rec(v: i32) -> Record {
        Record {
            device: Some("d".into()),
            metrics: vec![Metric::new("m", Value::Int32(v), 0)],
        }
    }

    #[test]
    fn fifo_order_and_unpop_restores_the_head() {
        let mut s = MemoryStore::new(1 << 20);
        s.push(rec(1));
        s.push(rec(2));
        let head = s.pop().expect("one");
        s.unpop(head);
        assert_eq!(s.pop(), Some(rec(1)));
        assert_eq!(s.pop(), Some(rec(2)));
        assert_eq!((s.pop(), s.bytes(), s.len_metrics()), (None, 0, 0));
    }

    #[test]
    fn full_store_drops_the_oldest_and_counts_them() {
        let one = rec(0).size();
        let mut s = MemoryStore::new((one * 3) as u64);
        let mut dropped = 0;
        for v in 0..10 {
            dropped += s.push(rec(v)).metrics;
        }
        assert_eq!(dropped, 7);
        assert!(s.bytes() <= one * 3);
        assert_eq!(s.pop(), Some(rec(7)));
    }
}
