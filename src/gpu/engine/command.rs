//! What goes into the engine: the commands its thread executes, the
//! mailbox they wait in, their arguments (jobs and bind ops with their
//! sync operations) and the errors they report synchronously.

use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

use crate::gpu::firmware::{FwError, GroupCreate, GroupStatus, HeapCreate, HeapInfo, JobSubmit};
use crate::gpu::mmu::{BindError, BindOp, Bo, GuestRange, VmBindError, VmKey, VmState};
use crate::gpu::sync::{SyncError, SyncHandle, SyncKind, SyncState, WaitFlags};

/// `drm_panthor_sync_op.flags` bit 31: SIGNAL (clear: WAIT).
pub const SYNC_OP_SIGNAL: u32 = 1 << 31;
/// `drm_panthor_sync_op.flags` bits 7:0: the handle type.
pub const SYNC_OP_HANDLE_TYPE_MASK: u32 = 0xff;

/// One sync operation of a job or a bind op (`drm_panthor_sync_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOp {
    /// SIGNAL (true) or WAIT.
    pub signal: bool,
    /// The syncobj.
    pub handle: SyncHandle,
    /// The timeline point (0 for a binary syncobj).
    pub point: u64,
}

impl SyncOp {
    /// Decodes `{flags, handle, timeline_value}`: the handle type must be
    /// SYNCOBJ (0) or TIMELINE_SYNCOBJ (1), no flag but SIGNAL may be set,
    /// and a binary syncobj takes no timeline value.
    pub fn from_uapi(flags: u32, handle: u32, timeline_value: u64) -> Result<Self, EngineError> {
        let kind = SyncKind::from_panthor_handle_type(flags & SYNC_OP_HANDLE_TYPE_MASK)?;
        if flags & !(SYNC_OP_HANDLE_TYPE_MASK | SYNC_OP_SIGNAL) != 0 {
            return Err(EngineError::SyncOp("unknown sync op flags"));
        }
        if kind == SyncKind::Binary && timeline_value != 0 {
            return Err(EngineError::SyncOp("binary syncobj with a timeline value"));
        }
        Ok(Self {
            signal: flags & SYNC_OP_SIGNAL != 0,
            handle,
            point: timeline_value,
        })
    }

    /// A WAIT on `handle` at `point`.
    pub const fn wait(handle: SyncHandle, point: u64) -> Self {
        Self {
            signal: false,
            handle,
            point,
        }
    }

    /// A SIGNAL of `handle` at `point`.
    pub const fn signal(handle: SyncHandle, point: u64) -> Self {
        Self {
            signal: true,
            handle,
            point,
        }
    }
}

/// One GROUP_SUBMIT entry with its syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSubmit {
    /// The job.
    pub job: JobSubmit,
    /// Its WAITs (ordering only) and SIGNALs (completed with the job's
    /// result).
    pub syncs: Vec<SyncOp>,
    /// Echoed in the job's [`EngineEvent::JobDone`](super::EngineEvent::JobDone).
    pub user_data: u64,
}

/// The jobs of one GROUP_SUBMIT. Most submits carry one job, which then
/// reaches the engine thread without a heap allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submits {
    /// One job.
    One(QueueSubmit),
    /// Any number of jobs.
    Many(Vec<QueueSubmit>),
}

impl Default for Submits {
    fn default() -> Self {
        Submits::Many(Vec::new())
    }
}

impl Submits {
    /// Appends a job.
    pub fn push(&mut self, q: QueueSubmit) {
        match self {
            Submits::Many(v) if v.is_empty() => *self = Submits::One(q),
            Submits::Many(v) => v.push(q),
            Submits::One(_) => {
                if let Submits::One(first) = std::mem::take(self) {
                    *self = Submits::Many(vec![first, q]);
                }
            }
        }
    }

    /// The jobs, in order.
    pub fn as_slice(&self) -> &[QueueSubmit] {
        match self {
            Submits::One(q) => std::slice::from_ref(q),
            Submits::Many(v) => v,
        }
    }

    /// The jobs, in order, to change.
    pub fn as_mut_slice(&mut self) -> &mut [QueueSubmit] {
        match self {
            Submits::One(q) => std::slice::from_mut(q),
            Submits::Many(v) => v,
        }
    }
}

impl From<Vec<QueueSubmit>> for Submits {
    fn from(v: Vec<QueueSubmit>) -> Self {
        Submits::Many(v)
    }
}

impl IntoIterator for Submits {
    type Item = QueueSubmit;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<QueueSubmit>, std::vec::IntoIter<QueueSubmit>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Submits::One(q) => Some(q).into_iter().chain(Vec::new()),
            Submits::Many(v) => None.into_iter().chain(v),
        }
    }
}

/// One VM_BIND op with its syncs.
#[derive(Debug, Clone)]
pub struct BindRequest {
    /// The op, its BO looked up.
    pub op: BindOp,
    /// Its syncs (asynchronous binds only).
    pub syncs: Vec<SyncOp>,
}

/// How a VM_BIND runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// At once, op after op; the first failure stops the batch.
    Sync,
    /// Queued on the VM's bind queue; [`EngineEvent::BindDone`](super::EngineEvent::BindDone)
    /// carries `user_data` when the last op is done.
    Async {
        /// Echoed in the completion event.
        user_data: u64,
    },
}

/// Why the engine refused a command. Nothing changed when one is returned,
/// except for [`EngineError::Bind`] (synchronous binds stop at the failing
/// op).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    /// Refused by the firmware model.
    #[error(transparent)]
    Fw(#[from] FwError),
    /// A sync operation was refused by the syncobj table.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A synchronous VM_BIND stopped at an op (`completed` ops applied).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// An op of an asynchronous VM_BIND failed validation; none was queued.
    #[error("VM_BIND op {index}: {error}")]
    BindOp {
        /// Index of the refused op.
        index: usize,
        /// Why.
        error: VmBindError,
    },
    /// A malformed sync operation.
    #[error("invalid sync op: {0}")]
    SyncOp(&'static str),
    /// Too much work queued already (jobs of a queue or binds of a VM).
    #[error("too much work queued; retry later")]
    Busy,
    /// The engine thread is gone.
    #[error("the GPU engine is not running")]
    Gone,
}

impl EngineError {
    /// The errno to report to the guest.
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::Fw(e) => e.errno(),
            EngineError::Sync(e) => e.errno(),
            EngineError::Bind(e) => e.errno(),
            EngineError::BindOp { error, .. } => error.errno(),
            EngineError::SyncOp(_) => libc::EINVAL,
            EngineError::Busy => libc::EAGAIN,
            EngineError::Gone => libc::ENODEV,
        }
    }
}

/// Where a command's answer goes.
pub(crate) type Reply<T> = SyncSender<Result<T, EngineError>>;

/// A command for the engine thread.
pub(crate) enum Command {
    VmCreate {
        user_va_range: u64,
        reply: Reply<(u32, u64)>,
    },
    VmDestroy {
        vm: u32,
        reply: Reply<()>,
    },
    VmState {
        vm: u32,
        reply: Reply<VmState>,
    },
    VmKey {
        vm: u32,
        reply: Reply<VmKey>,
    },
    MapKernelMemory {
        vm: u32,
        bo: Arc<Bo>,
        va: u64,
        reply: Reply<()>,
    },
    VmBind {
        vm: u32,
        ops: Vec<BindRequest>,
        mode: BindMode,
        reply: Reply<()>,
    },
    GroupCreate {
        args: GroupCreate,
        reply: Reply<u32>,
    },
    GroupDestroy {
        group: u32,
        reply: Reply<()>,
    },
    GroupState {
        group: u32,
        reply: Reply<GroupStatus>,
    },
    GroupSubmit {
        group: u32,
        jobs: Submits,
        reply: Reply<()>,
    },
    /// GROUP_SUBMIT without an answer: a refusal comes out as
    /// [`EngineEvent::SubmitRejected`](super::EngineEvent::SubmitRejected).
    GroupSubmitPosted {
        group: u32,
        jobs: Submits,
    },
    HeapCreate {
        args: HeapCreate,
        reply: Reply<HeapInfo>,
    },
    HeapDestroy {
        handle: u32,
        reply: Reply<()>,
    },
    SyncCreate {
        kind: SyncKind,
        signaled: bool,
        reply: Reply<SyncHandle>,
    },
    SyncDestroy {
        handle: SyncHandle,
        reply: Reply<()>,
    },
    SyncSignal {
        handle: SyncHandle,
        point: u64,
        reply: Reply<()>,
    },
    SyncReset {
        handle: SyncHandle,
        reply: Reply<()>,
    },
    SyncQuery {
        handle: SyncHandle,
        reply: Reply<SyncState>,
    },
    SyncWait {
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
        user_data: u64,
        timeout_ns: Option<u64>,
        reply: Reply<()>,
    },
    MemoryChanged {
        reply: Reply<()>,
    },
    RevokeBo {
        bo: Arc<Bo>,
        kernel: Vec<GuestRange>,
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// The commands sent to the engine and not yet taken, in order. A send is
/// one uncontended lock; the engine takes everything queued at once.
/// Once the engine is torn down the mailbox is closed: what was queued is
/// dropped (a caller waiting for a reply sees its reply channel close) and
/// later sends are refused.
#[derive(Default)]
pub(crate) struct Mailbox(Mutex<MailboxState>);

#[derive(Default)]
struct MailboxState {
    queue: VecDeque<Command>,
    closed: bool,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Mailbox")
            .field("queued", &st.queue.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `cmd`; refused once the mailbox is closed.
    pub fn send(&self, cmd: Command) -> Result<(), EngineError> {
        let mut st = self.lock();
        if st.closed {
            return Err(EngineError::Gone);
        }
        st.queue.push_back(cmd);
        Ok(())
    }

    /// Moves every queued command to the end of `out`.
    pub fn take_all(&self, out: &mut VecDeque<Command>) {
        let mut st = self.lock();
        if out.is_empty() {
            std::mem::swap(&mut st.queue, out);
        } else {
            out.append(&mut st.queue);
        }
    }

    /// Refuses every later send and drops what is queued.
    pub fn close(&self) {
        let dropped = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        // Dropped outside the lock: a command's reply channel closes here.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};

    fn shutdown() -> (Command, Receiver<Result<(), EngineError>>) {
        let (reply, answer) = sync_channel(1);
        (Command::Shutdown { reply }, answer)
    }

    #[test]
    fn mailbox_hands_over_in_order_and_refuses_once_closed() {
        let m = Mailbox::default();
        let (a, answer_a) = shutdown();
        let (b, _answer_b) = shutdown();
        m.send(a).unwrap();
        m.send(b).unwrap();
        let mut out = VecDeque::new();
        m.take_all(&mut out);
        assert_eq!(out.len(), 2);
        // The first one sent comes out first: answering it reaches answer_a.
        if let Some(Command::Shutdown { reply }) = out.pop_front() {
            reply.send(Ok(())).unwrap();
        }
        assert!(answer_a.try_recv().unwrap().is_ok());
        // Queued, then closed: the waiting caller's channel closes.
        let (c, answer_c) = shutdown();
        m.send(c).unwrap();
        m.close();
        assert!(answer_c.recv().is_err());
        let (d, _) = shutdown();
        assert!(matches!(m.send(d), Err(EngineError::Gone)));
        m.take_all(&mut out);
        assert_eq!(out.len(), 1, "only the one taken before");
    }

    #[test]
    fn submits_keep_their_order_from_one_job_to_many() {
        let q = |user_data| QueueSubmit {
            job: JobSubmit::default(),
            syncs: Vec::new(),
            user_data,
        };
        let mut s = Submits::default();
        assert!(s.as_slice().is_empty());
        s.push(q(1));
        assert!(matches!(s, Submits::One(_)));
        s.push(q(2));
        s.push(q(3));
        s.as_mut_slice()[2].user_data = 30;
        let order: Vec<u64> = s.clone().into_iter().map(|j| j.user_data).collect();
        assert_eq!(order, vec![1, 2, 30]);
        assert_eq!(s.as_slice().len(), 3);
        let one: Vec<u64> = Submits::One(q(7))
            .into_iter()
            .map(|j| j.user_data)
            .collect();
        assert_eq!(one, vec![7]);
    }
}
