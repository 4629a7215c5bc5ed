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
/// or in the firmware), which bounds them. A job that waits for nothing,
/// the usual case, costs no lookup besides its queue's.
#[derive(Default)]
pub(crate) struct JobQueues {
    queues: BTreeMap<QueueKey, Fifo>,
    /// Held jobs with WAITs not yet signalled: their queue and how many.
    waiting: IdMap<u64, (QueueKey, usize)>,
}

/// One queue's held jobs, in submission order.
#[derive(Default)]
struct Fifo {
    jobs: VecDeque<(u64, HeldJob)>,
    /// Jobs held here or in the firmware, not completed yet.
    outstanding: usize,
    /// The group is gone ([`JobQueues::take`]): the entry goes with the
    /// last outstanding job.
    closed: bool,
}

impl JobQueues {
    /// Jobs of `key` not completed yet.
    pub fn outstanding(&self, key: QueueKey) -> usize {
        self.queues.get(&key).map_or(0, |f| f.outstanding)
    }

    /// Appends a job to its queue's FIFO.
    pub fn push(&mut self, key: QueueKey, id: u64, job: HeldJob) {
        if job.waits > 0 {
            self.waiting.insert(id, (key, job.waits));
        }
        let f = self.queues.entry(key).or_default();
        f.closed = false;
        f.jobs.push_back((id, job));
        f.outstanding += 1;
    }

    /// Counts a job of `key` that goes to the firmware without being held,
    /// if the FIFO holds nothing (else the job must queue behind it).
    pub fn start_if_idle(&mut self, key: QueueKey) -> bool {
        let f = self.queues.entry(key).or_default();
        if !f.jobs.is_empty() {
            return false;
        }
        f.closed = false;
        f.outstanding += 1;
        true
    }

    /// One WAIT of job `id` was signalled; returns its queue.
    pub fn satisfy(&mut self, id: u64) -> Option<QueueKey> {
        let (key, waits) = self.waiting.get_mut(&id)?;
        let key = *key;
        *waits = waits.saturating_sub(1);
        if *waits == 0 {
            self.waiting.remove(&id);
        }
        Some(key)
    }

    /// Takes the head of a FIFO if nothing holds it back.
    pub fn pop_ready(&mut self, key: QueueKey) -> Option<HeldJob> {
        let f = self.queues.get_mut(&key)?;
        let &(head, _) = f.jobs.front()?;
        if !self.waiting.is_empty() && self.waiting.contains_key(&head) {
            return None;
        }
        // An emptied FIFO stays (with its buffer) for the queue's next job.
        f.jobs.pop_front().map(|(_, j)| j)
    }

    /// A job of `key` completed or was cancelled.
    pub fn done(&mut self, key: QueueKey) {
        if let Some(f) = self.queues.get_mut(&key) {
            f.outstanding = f.outstanding.saturating_sub(1);
            if f.closed && f.outstanding == 0 && f.jobs.is_empty() {
                self.queues.remove(&key);
            }
        }
    }

    /// Removes the held jobs of `group` (all of them for `None`), FIFO
    /// order per queue. Their outstanding counts stay until [`done`]; the
    /// group's entries go with the last of them.
    ///
    /// [`done`]: JobQueues::done
    pub fn take(&mut self, group: Option<u32>) -> Vec<(QueueKey, HeldJob)> {
        let mut out = Vec::new();
        self.queues.retain(|&key, f| {
            if group.is_some_and(|g| key.0 != g) {
                return true;
            }
            for (id, job) in f.jobs.drain(..) {
                self.waiting.remove(&id);
                out.push((key, job));
            }
            f.closed = true;
            f.outstanding > 0
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user_data: u64, waits: usize) -> HeldJob {
        HeldJob {
            job: JobSubmit::default(),
            user_data,
            waits,
            signals: Vec::new(),
        }
    }

    #[test]
    fn a_waiting_head_holds_its_queue_until_signalled() {
        let mut q = JobQueues::default();
        let k = (1, 0);
        q.push(k, 10, job(10, 2));
        q.push(k, 11, job(11, 0));
        assert_eq!(q.outstanding(k), 2);
        assert!(q.pop_ready(k).is_none());
        assert_eq!(q.satisfy(10), Some(k));
        assert!(q.pop_ready(k).is_none(), "one WAIT left");
        assert_eq!(q.satisfy(10), Some(k));
        assert_eq!(q.satisfy(10), None, "nothing left to signal");
        assert_eq!(q.pop_ready(k).map(|j| j.user_data), Some(10));
        assert_eq!(q.pop_ready(k).map(|j| j.user_data), Some(11));
        assert!(q.pop_ready(k).is_none());
        q.done(k);
        q.done(k);
        assert_eq!(q.outstanding(k), 0);
        // A live queue keeps its entry (and buffer) for its next job.
        assert!(q.queues.contains_key(&k));
    }

    #[test]
    fn a_job_starts_unheld_only_behind_an_empty_fifo() {
        let mut q = JobQueues::default();
        let k = (1, 0);
        assert!(q.start_if_idle(k));
        assert_eq!(q.outstanding(k), 1, "counted while in the firmware");
        q.push(k, 2, job(2, 1));
        assert!(!q.start_if_idle(k), "a held job is ahead");
        assert!(q.start_if_idle((1, 1)), "another queue is not held up");
        assert_eq!(q.satisfy(2), Some(k));
        assert_eq!(q.pop_ready(k).map(|j| j.user_data), Some(2));
        assert!(q.start_if_idle(k));
        assert_eq!(q.outstanding(k), 3);
        for _ in 0..3 {
            q.done(k);
        }
        assert_eq!(q.outstanding(k), 0);
    }

    #[test]
    fn a_taken_group_goes_with_its_last_outstanding_job() {
        let mut q = JobQueues::default();
        let (a, b, other) = ((1, 0), (1, 1), (2, 0));
        q.push(a, 1, job(1, 0));
        q.push(b, 2, job(2, 1));
        q.push(b, 3, job(3, 0));
        q.push(other, 4, job(4, 0));
        // Job 1 is in the firmware.
        assert!(q.pop_ready(a).is_some());
        let taken: Vec<u64> = q.take(Some(1)).iter().map(|(_, j)| j.user_data).collect();
        assert_eq!(taken, vec![2, 3]);
        assert!(q.waiting.is_empty());
        assert_eq!(q.satisfy(2), None);
        // Cancelled jobs and the running one complete.
        q.done(b);
        q.done(b);
        assert!(!q.queues.contains_key(&b));
        assert!(q.queues.contains_key(&a));
        q.done(a);
        assert!(!q.queues.contains_key(&a));
        assert_eq!(q.outstanding(other), 1, "another group is untouched");
    }
}
