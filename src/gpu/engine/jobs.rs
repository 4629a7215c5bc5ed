//! GROUP_SUBMIT jobs before they reach the firmware: one FIFO per group
//! queue, as drm_sched keeps one entity per queue. A job leaves its FIFO
//! for the firmware once it is at the head and all its WAITs are
//! signalled, so jobs of one queue reach the ring in submission order.

use std::collections::{BTreeMap, VecDeque};

use crate::gpu::firmware::JobSubmit;
use crate::gpu::sync::SignalToken;
use crate::idmap::IdMap;

/// A group queue: (group handle, queue index).
pub(crate) type QueueKey = (u32, u32);

/// A job the engine still holds.
pub(crate) struct HeldJob {
    pub job: JobSubmit,
    pub user_data: u64,
    /// WAITs not yet signalled.
    pub waits: usize,
    pub signals: Vec<SignalToken>,
}

/// The FIFOs, and how many jobs of each queue are outstanding (held here
/// or in the firmware), which bounds them.
#[derive(Default)]
pub(crate) struct JobQueues {
    fifos: BTreeMap<QueueKey, VecDeque<u64>>,
    held: IdMap<u64, (QueueKey, HeldJob)>,
    outstanding: IdMap<QueueKey, usize>,
}

impl JobQueues {
    /// Jobs of `key` not completed yet.
    pub fn outstanding(&self, key: QueueKey) -> usize {
        self.outstanding.get(&key).copied().unwrap_or(0)
    }

    /// Appends a job to its queue's FIFO.
    pub fn push(&mut self, key: QueueKey, id: u64, job: HeldJob) {
        self.fifos.entry(key).or_default().push_back(id);
        self.held.insert(id, (key, job));
        *self.outstanding.entry(key).or_default() += 1;
    }

    /// One WAIT of job `id` was signalled; returns its queue.
    pub fn satisfy(&mut self, id: u64) -> Option<QueueKey> {
        let (key, job) = self.held.get_mut(&id)?;
        job.waits = job.waits.saturating_sub(1);
        Some(*key)
    }

    /// Takes the head of a FIFO if nothing holds it back.
    pub fn pop_ready(&mut self, key: QueueKey) -> Option<HeldJob> {
        let fifo = self.fifos.get_mut(&key)?;
        let head = *fifo.front()?;
        if self.held.get(&head).is_some_and(|(_, j)| j.waits > 0) {
            return None;
        }
        fifo.pop_front();
        // An emptied FIFO stays (with its buffer) for the queue's next job;
        // `take` drops it with its group.
        self.held.remove(&head).map(|(_, j)| j)
    }

    /// A job of `key` completed or was cancelled.
    pub fn done(&mut self, key: QueueKey) {
        if let Some(n) = self.outstanding.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.outstanding.remove(&key);
            }
        }
    }

    /// Removes the held jobs of `group` (all of them for `None`), FIFO
    /// order per queue. Their outstanding counts stay until [`done`].
    ///
    /// [`done`]: JobQueues::done
    pub fn take(&mut self, group: Option<u32>) -> Vec<(QueueKey, HeldJob)> {
        let keys: Vec<QueueKey> = self
            .fifos
            .keys()
            .copied()
            .filter(|k| group.is_none_or(|g| k.0 == g))
            .collect();
        let mut out = Vec::new();
        for key in keys {
            for id in self.fifos.remove(&key).unwrap_or_default() {
                if let Some((_, job)) = self.held.remove(&id) {
                    out.push((key, job));
                }
            }
        }
        out
    }
}
