//! Asynchronous work of a native context and the engine event handler.
//!
//! Each command that queues work (GROUP_SUBMIT, asynchronous VM_BIND,
//! SYNCOBJ_WAIT) registers one [`Work`] before it hands the work to the
//! engine. The engine reports the completions of each service pass
//! together, on the thread that ran the pass, through [`on_events`], which
//! finishes the work: it writes the completion record and the asynchronous
//! error fields of the response memory, then drops the work's count on the
//! SUBMIT_3D's [`WorkTracker`], completing the fences of the pass together
//! ([`Completions`]) once nothing else holds them. The handler never takes
//! the device state lock, so the worker may wait for the engine while
//! holding it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::fences::{FenceSink, WorkTracker};
use super::rspmem::RspMem;

use crate::gpu::engine::{EngineError, EngineEvent};
use crate::gpu::firmware::FwEvent;
use crate::gpu::sync::FenceResult;
use crate::slab::Slab;
use crate::uapi::native::{GroupSubmitRsp, RspHdr};
use crate::virtio_gpu::fence::Timeline;

/// Bits of a `user_data` that index an element of one command's work.
pub const INDEX_BITS: u32 = 16;

/// What a piece of work counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Jobs of a GROUP_SUBMIT.
    Jobs,
    /// Ops of an asynchronous VM_BIND (one event for all).
    Bind {
        /// Ops queued.
        ops: usize,
    },
    /// A SYNCOBJ_WAIT.
    Wait {
        /// Ends at the first point (wait-any).
        any: bool,
    },
}

/// The outstanding work of one command.
#[derive(Debug)]
pub struct Work {
    /// The kind.
    pub kind: WorkKind,
    /// Response memory registered when the command ran.
    pub rsp: Option<Arc<RspMem>>,
    /// Offset of the completion record, if the command has a response.
    pub record: Option<u64>,
    /// Offset of SYNCOBJ_WAIT's `first_signaled`, if any.
    pub first_signaled: Option<u64>,
    /// Events still expected.
    pub remaining: usize,
    /// First error (negative errno), or 0.
    pub result: i32,
    /// Seqno of the command.
    pub seqno: u32,
    /// The fence tracker of its SUBMIT_3D.
    pub tracker: Option<Arc<WorkTracker>>,
    /// The command's response is written, or it has none: completion may
    /// be reported.
    pub armed: bool,
    /// All events arrived before the response was written.
    pub finished: bool,
    /// Index of the element whose event came last.
    pub last_index: u32,
    /// The engine refused the command after its response was written
    /// (a GROUP_SUBMIT posted without waiting): `result` is its `ret`.
    pub rejected: bool,
}

/// The first fatal fault of a group.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupFault {
    /// The exception code.
    pub exception_type: u32,
    /// The faulting VA of an MMU fault, else 0.
    pub fault_va: u64,
}

/// State shared by a context and its engine's event handler.
#[derive(Debug, Default)]
pub struct AsyncState {
    /// Outstanding work by id (`user_data >> INDEX_BITS`).
    pub works: Slab<Work>,
    /// Jobs not completed.
    pub jobs_in_flight: usize,
    /// Asynchronous bind ops not applied.
    pub binds_in_flight: usize,
    /// Waits pending.
    pub waits: usize,
    /// First fatal fault per engine group handle.
    pub faults: HashMap<u32, GroupFault>,
}

/// A cloneable handle on the shared state.
#[derive(Debug, Clone, Default)]
pub struct Shared(pub Arc<Mutex<AsyncState>>);

impl Shared {
    /// Locks it.
    pub fn lock(&self) -> MutexGuard<'_, AsyncState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The response of work `id` is written: from now on its completion
    /// may overwrite the record. Reports it at once if it already ended.
    pub fn arm<M: vm_memory::GuestMemoryBackend + ?Sized>(&self, id: u64, mem: &M) {
        let w = {
            let mut st = self.lock();
            match st.works.get_mut(id) {
                Some(w) if w.finished => st.works.remove(id),
                Some(w) => {
                    w.armed = true;
                    None
                }
                None => None,
            }
        };
        if let Some(w) = w {
            finalize(w, mem, None);
        }
    }

    /// Removes a work that could not be queued; if it was still registered
    /// its tracker count is dropped (the caller had added it).
    pub fn cancel(&self, id: u64) {
        let w = {
            let mut st = self.lock();
            let w = st.works.remove(id);
            if let Some(w) = &w {
                uncount(&mut st, w);
            }
            w
        };
        if let Some(t) = w.and_then(|w| w.tracker) {
            t.done();
        }
    }
}

pub(super) fn uncount(st: &mut AsyncState, w: &Work) {
    match w.kind {
        WorkKind::Jobs => st.jobs_in_flight = st.jobs_in_flight.saturating_sub(w.remaining),
        WorkKind::Bind { ops } => st.binds_in_flight = st.binds_in_flight.saturating_sub(ops),
        WorkKind::Wait { .. } => st.waits = st.waits.saturating_sub(1),
    }
}

fn errno_of(result: FenceResult) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => -e.abs(),
    }
}

/// Fences whose last work ended during the engine thread's current
/// service pass; [`Completions::flush`] completes them together at the end
/// of the pass, so the device returns their chains with one notification.
///
/// The trackers of completed fences are kept (up to [`SPARE_TRACKERS`])
/// and handed out again by [`Completions::tracker`], so a fenced submit
/// does not allocate one.
#[derive(Default)]
pub struct Completions {
    done: Mutex<Vec<Arc<WorkTracker>>>,
    spare: Mutex<Vec<Arc<WorkTracker>>>,
}

/// Completed trackers kept for reuse.
pub const SPARE_TRACKERS: usize = 256;

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions").finish_non_exhaustive()
    }
}

impl Completions {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<WorkTracker>>> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spare(&self) -> MutexGuard<'_, Vec<Arc<WorkTracker>>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tracker for fence `fence_id` on `timeline`: a kept one if any
    /// (nothing else holds it any more), else a new one. `stock` is the
    /// caller's own supply of kept trackers: when it runs out, it takes
    /// every kept one under one lock, so most calls take no lock.
    pub fn tracker(
        &self,
        stock: &mut Vec<Arc<WorkTracker>>,
        timeline: Timeline,
        fence_id: u64,
        sink: &Arc<dyn FenceSink>,
    ) -> Arc<WorkTracker> {
        if stock.is_empty() {
            std::mem::swap(&mut *self.spare(), stock);
        }
        if let Some(mut t) = stock.pop() {
            if let Some(inner) = Arc::get_mut(&mut t) {
                inner.reset(timeline, fence_id, sink);
                return t;
            }
        }
        WorkTracker::new(timeline, fence_id, sink.clone())
    }

    /// Keeps the trackers nothing else holds for reuse (the others, and
    /// any beyond [`SPARE_TRACKERS`], are dropped).
    pub fn keep(&self, trackers: impl IntoIterator<Item = Arc<WorkTracker>>) {
        let mut spare = self.spare();
        for t in trackers {
            if spare.len() < SPARE_TRACKERS && Arc::strong_count(&t) == 1 {
                spare.push(t);
            }
        }
    }

    /// Completes every fence collected: one sink call per run of trackers
    /// sharing a sink (in practice one call).
    pub fn flush(&self) {
        let mut done = self.lock();
        if done.is_empty() {
            return;
        }
        let mut fences = Vec::with_capacity(done.len());
        let mut i = 0;
        while i < done.len() {
            let sink = done[i].sink().clone();
            let same =
                |t: &Arc<WorkTracker>| std::ptr::addr_eq(Arc::as_ptr(t.sink()), Arc::as_ptr(&sink));
            fences.clear();
            while i < done.len() && same(&done[i]) {
                fences.push(done[i].fence());
                i += 1;
            }
            sink.complete_many(&fences);
        }
        self.keep(done.drain(..));
    }
}

/// The errno a guest sees for an engine refusal.
pub fn engine_errno(e: EngineError) -> i32 {
    match e.errno() {
        x if x == libc::EAGAIN => libc::EBUSY,
        x if x == libc::ENODEV => libc::EIO,
        x => x,
    }
}

/// Handles the engine events of one service pass (on the thread that ran
/// the pass), in order, under one lock of the shared state; then writes
/// the results of the work they finished and completes the fences that
/// work held, together (see [`Completions::flush`]). Empties `events`.
pub fn on_events(
    shared: &Shared,
    mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    batch: &Completions,
    events: &mut Vec<EngineEvent>,
) {
    // Sized for the pass up front: growing them a push at a time cost
    // more than the rest of the handler.
    let mut finished = Vec::with_capacity(events.len());
    {
        let mut st = shared.lock();
        for ev in events.drain(..) {
            if let Some(w) = on_event(&mut st, ev) {
                finished.push(w);
            }
        }
    }
    let mut done = Vec::with_capacity(finished.len());
    for w in finished {
        finalize_with(w, mem, &mut done);
    }
    if !done.is_empty() {
        batch.lock().append(&mut done);
    }
    batch.flush();
}

/// Applies one engine event to the shared state; returns the work it
/// finished, if its response is already written (armed).
fn on_event(st: &mut AsyncState, ev: EngineEvent) -> Option<Work> {
    match &ev {
        EngineEvent::JobDone {
            group,
            queue,
            seqno,
            result,
            ..
        } => log::debug!("job done: group {group} queue {queue} seqno {seqno}: {result:?}"),
        EngineEvent::BindDone { vm, result, .. } => {
            log::debug!("bind done: vm {vm}: {result:?}")
        }
        _ => {}
    }
    let (user_data, result) = match ev {
        EngineEvent::JobDone {
            user_data, result, ..
        }
        | EngineEvent::BindDone {
            user_data, result, ..
        }
        | EngineEvent::SyncWaitDone { user_data, result } => (user_data, result),
        EngineEvent::SubmitRejected {
            user_data, error, ..
        } => {
            let id = user_data >> INDEX_BITS;
            let w = st.works.get_mut(id)?;
            let never_queued = std::mem::take(&mut w.remaining);
            w.result = -engine_errno(error);
            w.rejected = true;
            let armed = w.armed;
            if !armed {
                // The worker rewrites the response after its own.
                w.finished = true;
            }
            st.jobs_in_flight = st.jobs_in_flight.saturating_sub(never_queued);
            return if armed { st.works.remove(id) } else { None };
        }
        EngineEvent::Firmware(fw) => {
            let (group, fault) = match fw {
                FwEvent::CsFatal { group, fault, .. } => (
                    group,
                    GroupFault {
                        exception_type: u32::from(fault.exception_code),
                        fault_va: 0,
                    },
                ),
                FwEvent::MmuFault { group, fault, .. } => (
                    group,
                    GroupFault {
                        exception_type: u32::from(fault.exception_code),
                        fault_va: fault.va,
                    },
                ),
                _ => return None,
            };
            st.faults.entry(group).or_insert(fault);
            return None;
        }
    };
    let id = user_data >> INDEX_BITS;
    let index = (user_data & ((1 << INDEX_BITS) - 1)) as u32;
    let ret = errno_of(result);
    let w = st.works.get_mut(id)?;
    if w.result == 0 {
        w.result = ret;
    }
    w.remaining = w.remaining.saturating_sub(1);
    w.last_index = index;
    let kind = w.kind;
    let done = w.remaining == 0 || matches!(kind, WorkKind::Wait { any: true });
    let armed = w.armed;
    if done && !armed {
        // The response is not written yet: the worker reports it.
        w.finished = true;
    }
    if kind == WorkKind::Jobs {
        st.jobs_in_flight = st.jobs_in_flight.saturating_sub(1);
    }
    if !done || !armed {
        return None;
    }
    let w = st.works.remove(id)?;
    match w.kind {
        WorkKind::Bind { ops } => st.binds_in_flight = st.binds_in_flight.saturating_sub(ops),
        WorkKind::Wait { .. } => st.waits = st.waits.saturating_sub(1),
        WorkKind::Jobs => st.jobs_in_flight = st.jobs_in_flight.saturating_sub(w.remaining),
    }
    Some(w)
}

/// [`finalize`] with guest memory taken from `mem` only if the work has
/// something to write (most jobs have not: no record, no error).
fn finalize_with(
    w: Work,
    mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    done: &mut Vec<Arc<WorkTracker>>,
) {
    let writes = w.rsp.is_some()
        && (w.rejected || w.first_signaled.is_some() || w.record.is_some() || w.result != 0);
    if writes {
        finalize(w, &*mem.memory(), Some(done));
    } else {
        release(w, Some(done));
    }
}

/// Writes the results of finished work, then drops its fence count: at
/// once, or into `batch` on the engine thread.
fn finalize<M: vm_memory::GuestMemoryBackend + ?Sized>(
    w: Work,
    m: &M,
    done: Option<&mut Vec<Arc<WorkTracker>>>,
) {
    if w.rejected {
        // The command failed after all: its response, record and error
        // fields become what a synchronous refusal writes.
        if let Some(rsp) = &w.rsp {
            if let Some(off) = w.record {
                let hdr = RspHdr::for_response::<GroupSubmitRsp>(w.result);
                rsp.write(m, off.saturating_sub(8), hdr.as_slice());
                rsp.complete_record(m, off, w.result);
            }
            rsp.command_failed(m, w.seqno, w.result);
        }
    } else if let Some(rsp) = &w.rsp {
        if let Some(fs) = w.first_signaled {
            rsp.write(m, fs, &w.last_index.to_le_bytes());
        }
        if let Some(off) = w.record {
            rsp.complete_record(m, off, w.result);
        }
        if w.result != 0 {
            rsp.async_error(m, w.seqno, w.result);
        }
    }
    release(w, done);
}

/// Drops finished work's fence count: at once, or, on the engine's side,
/// into `done` (trackers whose fence is now due, completed together with
/// [`Completions::flush`]).
fn release(w: Work, done: Option<&mut Vec<Arc<WorkTracker>>>) {
    if let Some(t) = w.tracker {
        match done {
            Some(d) => {
                if t.release() {
                    d.push(t);
                }
            }
            None => t.done(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the fences it is given.
    #[derive(Default)]
    struct Record(Mutex<Vec<(Timeline, u64)>>);

    impl FenceSink for Record {
        fn complete(&self, timeline: Timeline, fence_id: u64) {
            self.0.lock().unwrap().push((timeline, fence_id));
        }
    }

    const T: Timeline = Timeline::Ring {
        ctx_id: 1,
        ring_idx: 2,
    };

    #[test]
    fn completed_trackers_are_reused_once_nothing_holds_them() {
        let record = Arc::new(Record::default());
        let sink: Arc<dyn FenceSink> = record.clone();
        let c = Completions::default();
        let mut stock = Vec::new();
        let a = c.tracker(&mut stock, T, 1, &sink);
        let held = c.tracker(&mut stock, T, 2, &sink);
        let kept_elsewhere = held.clone();
        for t in [a.clone(), held] {
            assert!(t.release(), "only the transport's hold was taken");
            c.lock().push(t);
        }
        drop(a);
        c.flush();
        assert_eq!(*record.0.lock().unwrap(), vec![(T, 1), (T, 2)]);
        // Fence 1's tracker is kept; fence 2's is still held elsewhere.
        assert_eq!(c.spare().len(), 1);
        let again = c.tracker(&mut stock, T, 3, &sink);
        assert_eq!(again.fence(), (T, 3));
        assert!(again.release(), "count back at one");
        assert!(!Arc::ptr_eq(&again, &kept_elsewhere));
        assert!(c.spare().is_empty() && stock.is_empty());
        // With nothing kept, a new one.
        let fresh = c.tracker(&mut stock, T, 4, &sink);
        assert_eq!(fresh.fence(), (T, 4));
        // A tracker given back while something still holds it is not kept.
        let held = fresh.clone();
        c.keep([fresh]);
        assert!(c.spare().is_empty());
        c.keep([held]);
        assert_eq!(c.spare().len(), 1);
    }
}
