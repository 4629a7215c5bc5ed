//! Fence completion of SUBMIT_3Ds that queued GPU work.
//!
//! A fenced SUBMIT_3D whose commands queued work (jobs, asynchronous bind
//! ops, syncobj waits) is held by the transport until all of that work has
//! completed. A [`WorkTracker`] counts the outstanding work of one such
//! SUBMIT_3D; the last completion, which happens on the GPU engine's
//! thread, hands the fence to a [`FenceSink`] (the device), which returns
//! the held descriptor chain in ring order.
//!
//! The count starts at one, a hold the transport drops with
//! [`WorkTracker::arm`] once it has queued the fence: work that completes
//! before the fence is queued can therefore never complete it early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::virtio_gpu::fence::Timeline;

/// Where completed fences go: implemented by the device, callable from any
/// thread.
pub trait FenceSink: Send + Sync {
    /// The work of the fenced command `fence_id` on `timeline` is done.
    fn complete(&self, timeline: Timeline, fence_id: u64);

    /// Several fences are done at once: the sink may return their chains
    /// together, with one used-ring notification.
    fn complete_many(&self, fences: &[(Timeline, u64)]) {
        for &(t, id) in fences {
            self.complete(t, id);
        }
    }
}

/// The outstanding work of one fenced SUBMIT_3D.
pub struct WorkTracker {
    outstanding: AtomicUsize,
    timeline: Timeline,
    fence_id: u64,
    sink: Arc<dyn FenceSink>,
}

impl std::fmt::Debug for WorkTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkTracker")
            .field("timeline", &self.timeline)
            .field("fence_id", &self.fence_id)
            .finish()
    }
}

impl WorkTracker {
    /// A tracker for fence `fence_id` on `timeline`, with the transport's
    /// hold taken.
    pub fn new(timeline: Timeline, fence_id: u64, sink: Arc<dyn FenceSink>) -> Arc<Self> {
        Arc::new(Self {
            outstanding: AtomicUsize::new(1),
            timeline,
            fence_id,
            sink,
        })
    }

    /// Makes a tracker nobody else holds new again, for fence `fence_id`
    /// on `timeline` (see `Completions::tracker`).
    pub fn reset(&mut self, timeline: Timeline, fence_id: u64, sink: &Arc<dyn FenceSink>) {
        *self.outstanding.get_mut() = 1;
        self.timeline = timeline;
        self.fence_id = fence_id;
        if !std::ptr::addr_eq(Arc::as_ptr(&self.sink), Arc::as_ptr(sink)) {
            self.sink = sink.clone();
        }
    }

    /// One more piece of work to wait for.
    pub fn add(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether anything besides the transport's hold is outstanding.
    pub fn has_work(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) > 1
    }

    /// One piece of work completed (or the transport dropped its hold).
    /// The last one completes the fence.
    pub fn done(&self) {
        if self.release() {
            self.sink.complete(self.timeline, self.fence_id);
        }
    }

    /// Drops one count without completing the fence; returns whether it
    /// was the last, in which case the caller must complete the fence
    /// (through [`WorkTracker::sink`], or the transport itself). A count
    /// already at zero stays there and reports `false`.
    pub fn release(&self) -> bool {
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok_and(|previous| previous == 1)
    }

    /// The fence this tracker completes.
    pub fn fence(&self) -> (Timeline, u64) {
        (self.timeline, self.fence_id)
    }

    /// Where its fence goes.
    pub fn sink(&self) -> &Arc<dyn FenceSink> {
        &self.sink
    }

    /// The transport queued the fence: drops its hold.
    pub fn arm(&self) {
        self.done();
    }
}
