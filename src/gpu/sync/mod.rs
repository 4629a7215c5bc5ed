//! Device-side sync objects of one context: binary and timeline syncobjs,
//! the fences behind them, and the waiters those fences release.
//!
//! # Model
//!
//! The table follows Linux's `drm_syncobj`, seen from inside the device:
//!
//! - A **binary** syncobj points at zero or one fence. Signalling it (or
//!   attaching a pending signal to it) *replaces* that fence; a wait uses the
//!   fence current at the time of the wait. [`SyncTable::reset`] drops the
//!   fence.
//! - A **timeline** syncobj is a chain of points with strictly increasing
//!   numbers, like a `dma_fence_chain`. A point is signalled once its own
//!   fence *and every earlier point's* fence are signalled, so the
//!   timeline's value is the highest point up to which every point has
//!   completed: it advances through contiguous completed points, and a point
//!   that completes before an earlier one becomes visible only when the
//!   earlier one completes too. Waiting for point `N` is satisfied when the
//!   value is `>= N`. Waiting for point 0 means "the latest point", as a
//!   binary wait through the timeline ioctls does.
//! - A fence is pending, signalled, or signalled with an error (a positive
//!   errno). A waiter gets the result of the fence it waits on: for a
//!   binary syncobj the fence current when it waited; for a timeline wait on
//!   `N`, the first point `>= N` (the chain node `dma_fence_chain_find_seqno`
//!   would return). Errors of earlier points do not fold into later ones,
//!   just as a chain node does not inherit its predecessors' errors.
//!
//! # Pending signals and waiters
//!
//! The engine attaches a *pending signal* when it accepts work that will
//! signal a point on completion ([`SyncTable::add_pending_signal`]) and
//! later resolves it with [`SyncTable::complete`]. A point that is
//! signalled or has a pending signal is *materialised*; waiting for an
//! unmaterialised point fails with `EINVAL`, as Panthor's in-sync lookup
//! does, unless the wait carries [`WaitFlags::WAIT_FOR_SUBMIT`].
//!
//! A waiter is any value the engine chooses (a job id, a bind id...). It is
//! stored in the table and handed back, with its result, by the call that
//! satisfies it ([`SyncTable::signal`], [`SyncTable::complete`],
//! [`SyncTable::destroy`], [`SyncTable::clear`]). Waiters are indexed by the
//! fence or point they wait on, so releasing costs time in proportion to the
//! waiters released, never a scan of the table. Nothing here blocks or
//! polls.
//!
//! # Destruction
//!
//! A fence outlives the handle that pointed at it, as a fence reference
//! taken at submit time outlives `drm_syncobj_destroy`: waiters on a
//! materialised point keep waiting and are released normally when the
//! pending signal completes. Waiters that depend on the syncobj itself
//! (WAIT_FOR_SUBMIT waiters whose point had not materialised) can never be
//! satisfied once it is gone and are released at once with `ENOENT`.
//! Completing a pending signal whose syncobj was destroyed releases the
//! waiters of that fence and otherwise does nothing.
//! [`SyncTable::clear`] (context teardown) releases every waiter with
//! `ECANCELED` and forgets every pending signal.
//!
//! The table has no clock. A WAIT_FOR_SUBMIT waiter whose point never
//! materialises stays recorded until its syncobj is destroyed or the table
//! cleared; bounding that wait in time (the kernel uses 5 s for its own
//! WAIT_FOR_SUBMIT lookups) is the caller's job.
//!
//! # Bounds
//!
//! Handles are allocated lowest-free-first from 1 (like the kernel's idr), up
//! to [`SyncLimits::max_syncobjs`]. Points that are pending or completed
//! out of order, and waiters, are counted table-wide against
//! [`SyncLimits::max_points`] and [`SyncLimits::max_waiters`]; each
//! timeline also remembers the results of its last [`HISTORY_LEN`]
//! completed points so that late waiters still see their errors. Exceeding a
//! limit fails with `ENOMEM` and changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::idmap::IdMap;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// Guest handle of a syncobj. Handle 0 is never allocated.
pub type SyncHandle = u32;

/// The outcome of a fence: `Ok(())` when it signalled normally, `Err(errno)`
/// (a positive errno, `1..=4095`) when it signalled with an error.
pub type FenceResult = Result<(), i32>;

/// Largest errno a fence may carry (the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;

/// Completed points whose results a timeline remembers for late waiters.
/// A wait on an older point succeeds with `Ok`, as the kernel's stub fence
/// for a garbage-collected chain node does.
pub const HISTORY_LEN: usize = 64;

/// Kind of a syncobj, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// One fence at a time; points must be 0.
    Binary,
    /// A chain of increasing points.
    Timeline,
}

impl SyncKind {
    /// Decodes a Panthor sync-op handle type (`flags\[7:0\]`): 0 is
    /// `SYNCOBJ`, 1 is `TIMELINE_SYNCOBJ`.
    pub fn from_panthor_handle_type(handle_type: u32) -> Result<SyncKind, SyncError> {
        match handle_type {
            0 => Ok(SyncKind::Binary),
            1 => Ok(SyncKind::Timeline),
            other => Err(SyncError::InvalidHandleType(other)),
        }
    }
}

/// Flags of a wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitFlags {
    /// Accept a point that has not materialised yet and wait for it to be
    /// submitted, then signalled (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT`).
    pub wait_for_submit: bool,
}

impl WaitFlags {
    /// Bit of `wait_for_submit` in the DRM encoding.
    pub const WAIT_FOR_SUBMIT: u32 = 1 << 1;

    /// Flags of a plain wait: the point must have materialised.
    pub const NONE: WaitFlags = WaitFlags {
        wait_for_submit: false,
    };

    /// Flags of a wait that may precede the signal's submission.
    pub const FOR_SUBMIT: WaitFlags = WaitFlags {
        wait_for_submit: true,
    };

    /// Decodes the DRM bit encoding; any bit other than
    /// [`WaitFlags::WAIT_FOR_SUBMIT`] is `EINVAL`.
    pub fn from_bits(bits: u32) -> Result<WaitFlags, SyncError> {
        if bits & !Self::WAIT_FOR_SUBMIT != 0 {
            return Err(SyncError::InvalidFlags(bits));
        }
        Ok(WaitFlags {
            wait_for_submit: bits & Self::WAIT_FOR_SUBMIT != 0,
        })
    }
}

/// State of one fence as [`SyncTable::query`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceStatus {
    /// No fence: nothing was submitted (binary syncobj created unsignalled,
    /// or reset).
    Unsubmitted,
    /// A pending signal is attached and has not completed.
    Pending,
    /// Signalled without error.
    Signaled,
    /// Signalled with this errno.
    Error(i32),
}

/// What [`SyncTable::query`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// A binary syncobj and the status of its current fence.
    Binary(FenceStatus),
    /// A timeline syncobj.
    Timeline {
        /// Highest point up to which every point has signalled.
        value: u64,
        /// Highest point that has materialised (signalled or pending);
        /// `value <= last_submitted`.
        last_submitted: u64,
    },
}

/// A waiter handed back by the table, with the result of what it waited on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released<W> {
    /// The value given to [`SyncTable::wait`].
    pub waiter: W,
    /// `Ok(())`, or the errno the fence carried (`ENOENT` when the syncobj
    /// was destroyed before the point materialised, `ECANCELED` on
    /// [`SyncTable::clear`]).
    pub result: FenceResult,
}

/// What [`SyncTable::wait`] did with a waiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome<W> {
    /// The point had already signalled: the waiter is handed straight back.
    Ready(Released<W>),
    /// The waiter is recorded and will be handed back by a later call.
    Queued,
}

/// Proof that a pending signal is attached; resolved exactly once by
/// [`SyncTable::complete`]. Dropping it without completing leaves the point
/// pending for ever, which breaks the rule that every fence signals.
#[must_use = "a pending signal must be completed"]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SignalToken {
    id: u64,
}

impl SignalToken {
    /// A number that identifies the pending signal (unique in the process),
    /// for logs and traces.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Token ids are unique across every table of the process, so a token can
/// never resolve a pending signal of another table by accident.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn next_token_id() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Resource limits of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncLimits {
    /// Most syncobjs alive at once; handles stay in `1..=max_syncobjs`.
    pub max_syncobjs: u32,
    /// Most pending signals plus timeline points completed out of order.
    pub max_points: usize,
    /// Most waiters recorded at once.
    pub max_waiters: usize,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_syncobjs: 4096,
            max_points: 16384,
            max_waiters: 16384,
        }
    }
}

/// Why an operation on the table was refused. Nothing changed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SyncError {
    /// The handle is 0 or names no syncobj.
    #[error("no syncobj with handle {0}")]
    NoSuchHandle(SyncHandle),
    /// The table already holds its maximum number of syncobjs.
    #[error("too many syncobjs (limit {max})")]
    TooManySyncobjs {
        /// The limit.
        max: u32,
    },
    /// The table already holds its maximum number of points.
    #[error("too many pending or out-of-order points (limit {max})")]
    TooManyPoints {
        /// The limit.
        max: usize,
    },
    /// The table already holds its maximum number of waiters.
    #[error("too many waiters (limit {max})")]
    TooManyWaiters {
        /// The limit.
        max: usize,
    },
    /// A non-zero point was given for a binary syncobj.
    #[error("binary syncobj {handle} used with point {point} (must be 0)")]
    BinaryPoint {
        /// The syncobj.
        handle: SyncHandle,
        /// The offending point.
        point: u64,
    },
    /// A timeline signal did not name a point above every existing one.
    #[error("timeline {handle}: point {point} is not above the last point {last}")]
    PointNotIncreasing {
        /// The syncobj.
        handle: SyncHandle,
        /// The offending point.
        point: u64,
        /// The highest point already materialised.
        last: u64,
    },
    /// A wait named a point that has neither signalled nor has a pending
    /// signal, without WAIT_FOR_SUBMIT.
    #[error("syncobj {handle}: point {point} has not materialised")]
    NotMaterialised {
        /// The syncobj.
        handle: SyncHandle,
        /// The point.
        point: u64,
    },
    /// Reset was asked of a timeline syncobj.
    #[error("syncobj {0} is a timeline and cannot be reset")]
    ResetTimeline(SyncHandle),
    /// An error result carried a value that is not an errno in `1..=4095`.
    #[error("invalid fence error {0}")]
    InvalidErrno(i32),
    /// Unknown wait flags.
    #[error("invalid wait flags {0:#x}")]
    InvalidFlags(u32),
    /// Unknown sync-op handle type.
    #[error("invalid syncobj handle type {0}")]
    InvalidHandleType(u32),
}

impl SyncError {
    /// The errno to report (positive), matching what `drm_syncobj` and
    /// Panthor return for the same mistake: `ENOENT` for an unknown handle,
    /// `ENOMEM` when a limit is hit, `EINVAL` for everything else.
    pub fn errno(&self) -> i32 {
        match self {
            SyncError::NoSuchHandle(_) => libc::ENOENT,
            SyncError::TooManySyncobjs { .. }
            | SyncError::TooManyPoints { .. }
            | SyncError::TooManyWaiters { .. } => libc::ENOMEM,
            SyncError::BinaryPoint { .. }
            | SyncError::PointNotIncreasing { .. }
            | SyncError::NotMaterialised { .. }
            | SyncError::ResetTimeline(_)
            | SyncError::InvalidErrno(_)
            | SyncError::InvalidFlags(_)
            | SyncError::InvalidHandleType(_) => libc::EINVAL,
        }
    }
}

/// Checks that an error result carries a real errno.
fn validate_result(result: FenceResult) -> Result<FenceResult, SyncError> {
    match result {
        Err(e) if !(1..=MAX_ERRNO).contains(&e) => Err(SyncError::InvalidErrno(e)),
        r => Ok(r),
    }
}

/// The engine's results are trusted but still normalised: anything that is
/// not an errno becomes `EIO`, so waiters always see a valid code.
fn normalise_result(result: FenceResult) -> FenceResult {
    match result {
        Err(e) if !(1..=MAX_ERRNO).contains(&e) => Err(libc::EIO),
        r => r,
    }
}

/// Internal identity of a syncobj; unlike handles, never reused.
type ObjId = u64;

/// The fence a binary syncobj points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinaryFence {
    None,
    Done(FenceResult),
    Pending(u64),
}

#[derive(Debug)]
struct Binary<W> {
    fence: BinaryFence,
    /// WAIT_FOR_SUBMIT waiters that arrived while `fence` was `None`.
    submit_waiters: Vec<W>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PointState {
    Pending(u64),
    Done(FenceResult),
}

#[derive(Debug)]
struct Timeline<W> {
    /// Every point `<= value` has signalled.
    value: u64,
    /// Highest point materialised (`>= value`).
    head: u64,
    /// Points above `value`: pending, or completed out of order.
    points: BTreeMap<u64, PointState>,
    /// Waiters by requested point (always `> value`).
    waiters: BTreeMap<u64, Vec<W>>,
    /// Results of the last completed points, in increasing order.
    history: VecDeque<(u64, FenceResult)>,
    /// Completed points `<= history_floor` are forgotten.
    history_floor: u64,
}

#[derive(Debug)]
enum Obj<W> {
    Binary(Binary<W>),
    Timeline(Timeline<W>),
}

#[derive(Debug)]
struct ObjEntry<W> {
    /// `None` once destroyed (the entry then only lives on to release
    /// waiters on its materialised points).
    handle: Option<SyncHandle>,
    obj: Obj<W>,
}

/// A pending signal: where its completion lands.
#[derive(Debug)]
enum PendingTarget<W> {
    /// A binary fence, with the waiters that wait on it.
    Binary { waiters: Vec<W> },
    /// A timeline point.
    Timeline { point: u64 },
}

#[derive(Debug)]
struct Pending<W> {
    obj: ObjId,
    target: PendingTarget<W>,
}

/// The syncobjs of one context; see the module documentation.
#[derive(Debug)]
pub struct SyncTable<W> {
    limits: SyncLimits,
    handles: HashMap<SyncHandle, ObjId>,
    /// Handles below `next_handle` that are free again.
    free_handles: BTreeSet<SyncHandle>,
    next_handle: SyncHandle,
    objects: IdMap<ObjId, ObjEntry<W>>,
    next_obj: ObjId,
    pending: IdMap<u64, Pending<W>>,
    /// Timeline points completed out of order (counted with `pending`).
    out_of_order: usize,
    waiter_count: usize,
}

impl<W> Default for SyncTable<W> {
    fn default() -> Self {
        SyncTable::new(SyncLimits::default())
    }
}

impl<W> SyncTable<W> {
    /// An empty table with these limits.
    pub fn new(limits: SyncLimits) -> SyncTable<W> {
        SyncTable {
            limits,
            handles: HashMap::new(),
            free_handles: BTreeSet::new(),
            next_handle: 1,
            objects: IdMap::default(),
            next_obj: 0,
            pending: IdMap::default(),
            out_of_order: 0,
            waiter_count: 0,
        }
    }

    /// The limits the table was created with.
    pub fn limits(&self) -> SyncLimits {
        self.limits
    }

    /// Number of live syncobjs (handles).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether no syncobj is alive.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Number of waiters currently recorded.
    pub fn waiter_count(&self) -> usize {
        self.waiter_count
    }

    /// Number of points counted against [`SyncLimits::max_points`]
    /// (pending signals plus timeline points completed out of order).
    pub fn point_count(&self) -> usize {
        self.pending.len() + self.out_of_order
    }

    /// Kind of the syncobj `handle`.
    pub fn kind(&self, handle: SyncHandle) -> Result<SyncKind, SyncError> {
        Ok(match &self.entry(handle)?.obj {
            Obj::Binary(_) => SyncKind::Binary,
            Obj::Timeline(_) => SyncKind::Timeline,
        })
    }

    /// Creates a syncobj. A binary one created `signaled` starts with a
    /// signalled fence; for a timeline the flag is accepted and changes
    /// nothing (its value starts at 0 either way, as a timeline query of a
    /// syncobj created signalled reports on Linux).
    pub fn create(&mut self, kind: SyncKind, signaled: bool) -> Result<SyncHandle, SyncError> {
        let max = self.limits.max_syncobjs;
        if self.handles.len() >= max as usize {
            return Err(SyncError::TooManySyncobjs { max });
        }
        // Lowest-free allocation with fewer than `max` live handles keeps
        // handles within 1..=max.
        let (handle, next_handle) = match self.free_handles.first() {
            Some(&h) => (h, self.next_handle),
            None => (
                self.next_handle,
                self.next_handle
                    .checked_add(1)
                    .ok_or(SyncError::TooManySyncobjs { max })?,
            ),
        };
        let obj = match kind {
            SyncKind::Binary => Obj::Binary(Binary {
                fence: if signaled {
                    BinaryFence::Done(Ok(()))
                } else {
                    BinaryFence::None
                },
                submit_waiters: Vec::new(),
            }),
            SyncKind::Timeline => Obj::Timeline(Timeline {
                value: 0,
                head: 0,
                points: BTreeMap::new(),
                waiters: BTreeMap::new(),
                history: VecDeque::new(),
                history_floor: 0,
            }),
        };
        self.free_handles.remove(&handle);
        self.next_handle = next_handle;
        let id = self.next_obj;
        self.next_obj = self.next_obj.wrapping_add(1);
        self.objects.insert(
            id,
            ObjEntry {
                handle: Some(handle),
                obj,
            },
        );
        self.handles.insert(handle, id);
        Ok(handle)
    }

    /// Destroys a syncobj and frees its handle.
    ///
    /// Returns the waiters that can no longer be satisfied (those waiting
    /// with WAIT_FOR_SUBMIT for a point that had not materialised), each
    /// with `ENOENT`. Waiters on materialised points stay queued and are
    /// released when those points complete; completing a pending signal of
    /// a destroyed syncobj is harmless.
    pub fn destroy(&mut self, handle: SyncHandle) -> Result<Vec<Released<W>>, SyncError> {
        let id = self.lookup(handle)?;
        self.handles.remove(&handle);
        self.free_handle(handle);
        let mut released = Vec::new();
        let Some(mut entry) = self.objects.remove(&id) else {
            return Ok(released);
        };
        match &mut entry.obj {
            Obj::Binary(b) => {
                release_all(
                    &mut released,
                    std::mem::take(&mut b.submit_waiters),
                    Err(libc::ENOENT),
                );
            }
            Obj::Timeline(t) => {
                // Waiters above the head wait for a point that can no longer
                // be submitted.
                if let Some(first) = t.head.checked_add(1) {
                    let orphaned = t.waiters.split_off(&first);
                    for (_, list) in orphaned {
                        release_all(&mut released, list, Err(libc::ENOENT));
                    }
                }
                if !t.waiters.is_empty() {
                    entry.handle = None;
                    self.objects.insert(id, entry);
                } else {
                    self.out_of_order -= count_done(&t.points);
                }
            }
        }
        self.waiter_count -= released.len();
        Ok(released)
    }

    /// Signals a point now.
    ///
    /// Binary: `point` must be 0; the fence is replaced by one signalled
    /// with `result`. Timeline: `point` must be above every point already
    /// materialised; it signals once every earlier point has. Returns the
    /// waiters this released.
    pub fn signal(
        &mut self,
        handle: SyncHandle,
        point: u64,
        result: FenceResult,
    ) -> Result<Vec<Released<W>>, SyncError> {
        let result = validate_result(result)?;
        self.check_signal(handle, point)?;
        let id = self.lookup(handle)?;
        let mut released = Vec::new();
        let Some(entry) = self.objects.get_mut(&id) else {
            return Err(SyncError::NoSuchHandle(handle));
        };
        match &mut entry.obj {
            Obj::Binary(b) => {
                b.fence = BinaryFence::Done(result);
                release_all(&mut released, std::mem::take(&mut b.submit_waiters), result);
            }
            Obj::Timeline(t) => {
                // The point is stored only while an earlier one is pending.
                if !t.points.is_empty()
                    && self.pending.len() + self.out_of_order >= self.limits.max_points
                {
                    return Err(SyncError::TooManyPoints {
                        max: self.limits.max_points,
                    });
                }
                t.head = point;
                t.points.insert(point, PointState::Done(result));
                self.out_of_order += 1;
                self.out_of_order -= fold(t, &mut released);
            }
        }
        self.waiter_count -= released.len();
        Ok(released)
    }

    /// Checks, without changing anything, that [`SyncTable::signal`] or
    /// [`SyncTable::add_pending_signal`] would accept `point` on `handle`
    /// (limits aside).
    pub fn check_signal(&self, handle: SyncHandle, point: u64) -> Result<(), SyncError> {
        match &self.entry(handle)?.obj {
            Obj::Binary(_) if point != 0 => Err(SyncError::BinaryPoint { handle, point }),
            Obj::Binary(_) => Ok(()),
            Obj::Timeline(t) if point <= t.head => Err(SyncError::PointNotIncreasing {
                handle,
                point,
                last: t.head,
            }),
            Obj::Timeline(_) => Ok(()),
        }
    }

    /// Attaches a pending signal: the point materialises now and signals
    /// when the returned token is passed to [`SyncTable::complete`].
    ///
    /// Binary: `point` must be 0 and the syncobj's fence becomes the
    /// pending one (WAIT_FOR_SUBMIT waiters move onto it). Timeline: `point`
    /// must be above every point already materialised.
    pub fn add_pending_signal(
        &mut self,
        handle: SyncHandle,
        point: u64,
    ) -> Result<SignalToken, SyncError> {
        self.check_signal(handle, point)?;
        if self.point_count() >= self.limits.max_points {
            return Err(SyncError::TooManyPoints {
                max: self.limits.max_points,
            });
        }
        let id = self.lookup(handle)?;
        let Some(entry) = self.objects.get_mut(&id) else {
            return Err(SyncError::NoSuchHandle(handle));
        };
        let token = next_token_id();
        let target = match &mut entry.obj {
            Obj::Binary(b) => {
                b.fence = BinaryFence::Pending(token);
                PendingTarget::Binary {
                    waiters: std::mem::take(&mut b.submit_waiters),
                }
            }
            Obj::Timeline(t) => {
                t.head = point;
                t.points.insert(point, PointState::Pending(token));
                PendingTarget::Timeline { point }
            }
        };
        self.pending.insert(token, Pending { obj: id, target });
        Ok(SignalToken { id: token })
    }

    /// Resolves a pending signal with the work's result (`Err(errno)` for a
    /// failure; a value outside `1..=4095` is reported as `EIO`). Returns
    /// the waiters this released, in point order. A token whose syncobj was
    /// destroyed, or that [`SyncTable::clear`] forgot, releases only what
    /// still waits on its fence.
    pub fn complete(&mut self, token: SignalToken, result: FenceResult) -> Vec<Released<W>> {
        let result = normalise_result(result);
        let mut released = Vec::new();
        let Some(pending) = self.pending.remove(&token.id) else {
            return released;
        };
        match pending.target {
            PendingTarget::Binary { waiters } => {
                release_all(&mut released, waiters, result);
                if let Some(ObjEntry {
                    obj: Obj::Binary(b),
                    ..
                }) = self.objects.get_mut(&pending.obj)
                {
                    if b.fence == BinaryFence::Pending(token.id) {
                        b.fence = BinaryFence::Done(result);
                    }
                }
            }
            PendingTarget::Timeline { point } => {
                let mut drop_obj = false;
                if let Some(ObjEntry {
                    handle,
                    obj: Obj::Timeline(t),
                }) = self.objects.get_mut(&pending.obj)
                {
                    if let Some(state) = t.points.get_mut(&point) {
                        if *state == PointState::Pending(token.id) {
                            *state = PointState::Done(result);
                            self.out_of_order += 1;
                            self.out_of_order -= fold(t, &mut released);
                        }
                    }
                    if handle.is_none() && t.waiters.is_empty() {
                        self.out_of_order -= count_done(&t.points);
                        drop_obj = true;
                    }
                }
                if drop_obj {
                    self.objects.remove(&pending.obj);
                }
            }
        }
        self.waiter_count -= released.len();
        released
    }

    /// Waits for `point` of `handle` (0 for a binary syncobj; for a
    /// timeline, 0 means its latest point).
    ///
    /// If the point has signalled, the waiter comes straight back as
    /// [`WaitOutcome::Ready`]. If it has materialised (or `flags` allows
    /// waiting for submission), the waiter is recorded and returned later
    /// by the call that signals the point. Otherwise the wait fails with
    /// [`SyncError::NotMaterialised`]. On error the waiter is dropped.
    pub fn wait(
        &mut self,
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
        waiter: W,
    ) -> Result<WaitOutcome<W>, SyncError> {
        let id = self.lookup(handle)?;
        let room = self.waiter_count < self.limits.max_waiters;
        let max_waiters = self.limits.max_waiters;
        let Some(entry) = self.objects.get_mut(&id) else {
            return Err(SyncError::NoSuchHandle(handle));
        };
        let full = || SyncError::TooManyWaiters { max: max_waiters };
        match &mut entry.obj {
            Obj::Binary(b) => {
                if point != 0 {
                    return Err(SyncError::BinaryPoint { handle, point });
                }
                match b.fence {
                    BinaryFence::Done(result) => {
                        return Ok(WaitOutcome::Ready(Released { waiter, result }));
                    }
                    BinaryFence::None if !flags.wait_for_submit => {
                        return Err(SyncError::NotMaterialised { handle, point });
                    }
                    BinaryFence::None => {
                        if !room {
                            return Err(full());
                        }
                        b.submit_waiters.push(waiter);
                    }
                    BinaryFence::Pending(token) => {
                        let Some(Pending {
                            target: PendingTarget::Binary { waiters },
                            ..
                        }) = self.pending.get_mut(&token)
                        else {
                            // A binary fence only points at a live pending
                            // binary signal; treat anything else as
                            // signalled rather than strand the waiter.
                            return Ok(WaitOutcome::Ready(Released {
                                waiter,
                                result: Ok(()),
                            }));
                        };
                        if !room {
                            return Err(full());
                        }
                        waiters.push(waiter);
                    }
                }
            }
            Obj::Timeline(t) => {
                let target = if point == 0 {
                    if t.head == 0 {
                        if !flags.wait_for_submit {
                            return Err(SyncError::NotMaterialised { handle, point });
                        }
                        // Wait for whatever point comes first.
                        1
                    } else {
                        t.head
                    }
                } else {
                    point
                };
                if target <= t.value {
                    let result = t.completed_result(target);
                    return Ok(WaitOutcome::Ready(Released { waiter, result }));
                }
                if target > t.head && !flags.wait_for_submit {
                    return Err(SyncError::NotMaterialised { handle, point });
                }
                if !room {
                    return Err(full());
                }
                t.waiters.entry(target).or_default().push(waiter);
            }
        }
        self.waiter_count += 1;
        Ok(WaitOutcome::Queued)
    }

    /// Checks, without changing anything, that [`SyncTable::wait`] would
    /// accept this wait (limits aside).
    pub fn check_wait(
        &self,
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
    ) -> Result<(), SyncError> {
        match &self.entry(handle)?.obj {
            Obj::Binary(_) if point != 0 => Err(SyncError::BinaryPoint { handle, point }),
            Obj::Binary(b) if b.fence == BinaryFence::None && !flags.wait_for_submit => {
                Err(SyncError::NotMaterialised { handle, point })
            }
            Obj::Timeline(t) if !flags.wait_for_submit && (point > t.head || t.head == 0) => {
                Err(SyncError::NotMaterialised { handle, point })
            }
            _ => Ok(()),
        }
    }

    /// Whether `point` of `handle` has materialised (signalled or pending).
    pub fn is_materialised(&self, handle: SyncHandle, point: u64) -> Result<bool, SyncError> {
        match self.check_wait(handle, point, WaitFlags::NONE) {
            Ok(()) => Ok(true),
            Err(SyncError::NotMaterialised { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops a binary syncobj's fence (`DRM_IOCTL_SYNCOBJ_RESET`). Waiters
    /// already on that fence keep waiting on it. Timelines cannot be reset:
    /// their value only moves forward.
    pub fn reset(&mut self, handle: SyncHandle) -> Result<(), SyncError> {
        let id = self.lookup(handle)?;
        match self.objects.get_mut(&id).map(|e| &mut e.obj) {
            Some(Obj::Binary(b)) => {
                b.fence = BinaryFence::None;
                Ok(())
            }
            Some(Obj::Timeline(_)) => Err(SyncError::ResetTimeline(handle)),
            None => Err(SyncError::NoSuchHandle(handle)),
        }
    }

    /// Reports the state of a syncobj.
    pub fn query(&self, handle: SyncHandle) -> Result<SyncState, SyncError> {
        Ok(match &self.entry(handle)?.obj {
            Obj::Binary(b) => SyncState::Binary(b.status()),
            Obj::Timeline(t) => SyncState::Timeline {
                value: t.value,
                last_submitted: t.head,
            },
        })
    }

    /// Status of one point: for a binary syncobj (point 0) its current
    /// fence; for a timeline, what a waiter on `point` would see now
    /// (`Unsubmitted` if it has not materialised).
    pub fn point_status(&self, handle: SyncHandle, point: u64) -> Result<FenceStatus, SyncError> {
        match &self.entry(handle)?.obj {
            Obj::Binary(_) if point != 0 => Err(SyncError::BinaryPoint { handle, point }),
            Obj::Binary(b) => Ok(b.status()),
            Obj::Timeline(t) => {
                let target = if point == 0 { t.head } else { point };
                Ok(if t.head == 0 || target > t.head {
                    FenceStatus::Unsubmitted
                } else if target <= t.value {
                    match t.completed_result(target) {
                        Ok(()) => FenceStatus::Signaled,
                        Err(e) => FenceStatus::Error(e),
                    }
                } else {
                    FenceStatus::Pending
                })
            }
        }
    }

    /// Forgets a recorded waiter (its wait timed out), wherever it waits.
    /// Returns whether it was found. Linear in the waiters of the table.
    pub fn remove_waiter(&mut self, waiter: &W) -> bool
    where
        W: PartialEq,
    {
        fn take<W: PartialEq>(list: &mut Vec<W>, waiter: &W) -> bool {
            match list.iter().position(|w| w == waiter) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            }
        }
        let mut found = None;
        for (&id, entry) in self.objects.iter_mut() {
            let hit = match &mut entry.obj {
                Obj::Binary(b) => take(&mut b.submit_waiters, waiter),
                Obj::Timeline(t) => {
                    let mut hit = None;
                    for (&p, list) in t.waiters.iter_mut() {
                        if take(list, waiter) {
                            hit = Some(p);
                            break;
                        }
                    }
                    if let Some(p) = hit {
                        if t.waiters.get(&p).is_some_and(Vec::is_empty) {
                            t.waiters.remove(&p);
                        }
                    }
                    hit.is_some()
                }
            };
            if hit {
                found = Some(id);
                break;
            }
        }
        if found.is_none() {
            for pending in self.pending.values_mut() {
                if let PendingTarget::Binary { waiters } = &mut pending.target {
                    if take(waiters, waiter) {
                        found = Some(pending.obj);
                        break;
                    }
                }
            }
        }
        let Some(id) = found else {
            return false;
        };
        self.waiter_count = self.waiter_count.saturating_sub(1);
        // A destroyed timeline lives on only for its waiters.
        let idle = self.objects.get(&id).is_some_and(|e| {
            e.handle.is_none() && matches!(&e.obj, Obj::Timeline(t) if t.waiters.is_empty())
        });
        if idle {
            if let Some(ObjEntry {
                obj: Obj::Timeline(t),
                ..
            }) = self.objects.remove(&id)
            {
                self.out_of_order -= count_done(&t.points);
            }
        }
        true
    }

    /// Context teardown: destroys every syncobj, forgets every pending
    /// signal (later [`SyncTable::complete`] calls do nothing) and returns
    /// every waiter with `ECANCELED`.
    pub fn clear(&mut self) -> Vec<Released<W>> {
        let mut released = Vec::new();
        for (_, entry) in self.objects.drain() {
            match entry.obj {
                Obj::Binary(b) => {
                    release_all(&mut released, b.submit_waiters, Err(libc::ECANCELED))
                }
                Obj::Timeline(t) => {
                    for (_, list) in t.waiters {
                        release_all(&mut released, list, Err(libc::ECANCELED));
                    }
                }
            }
        }
        for (_, pending) in self.pending.drain() {
            if let PendingTarget::Binary { waiters } = pending.target {
                release_all(&mut released, waiters, Err(libc::ECANCELED));
            }
        }
        self.handles.clear();
        self.free_handles.clear();
        self.next_handle = 1;
        self.out_of_order = 0;
        self.waiter_count = 0;
        released
    }

    fn lookup(&self, handle: SyncHandle) -> Result<ObjId, SyncError> {
        self.handles
            .get(&handle)
            .copied()
            .ok_or(SyncError::NoSuchHandle(handle))
    }

    fn entry(&self, handle: SyncHandle) -> Result<&ObjEntry<W>, SyncError> {
        let id = self.lookup(handle)?;
        self.objects.get(&id).ok_or(SyncError::NoSuchHandle(handle))
    }

    fn free_handle(&mut self, handle: SyncHandle) {
        // Keep `next_handle` as low as possible so the free set stays small:
        // freeing the top handle shrinks the range instead.
        if handle.checked_add(1) == Some(self.next_handle) {
            self.next_handle = handle;
            while let Some(&top) = self.free_handles.last() {
                if top.checked_add(1) != Some(self.next_handle) {
                    break;
                }
                self.free_handles.remove(&top);
                self.next_handle = top;
            }
        } else {
            self.free_handles.insert(handle);
        }
    }
}

impl<W> Binary<W> {
    fn status(&self) -> FenceStatus {
        match self.fence {
            BinaryFence::None => FenceStatus::Unsubmitted,
            BinaryFence::Pending(_) => FenceStatus::Pending,
            BinaryFence::Done(Ok(())) => FenceStatus::Signaled,
            BinaryFence::Done(Err(e)) => FenceStatus::Error(e),
        }
    }
}

impl<W> Timeline<W> {
    /// Result a waiter on `target <= value` sees: that of the first
    /// completed point `>= target`, or `Ok` if it is older than the history.
    fn completed_result(&self, target: u64) -> FenceResult {
        if target <= self.history_floor {
            return Ok(());
        }
        let idx = self.history.partition_point(|&(p, _)| p < target);
        self.history.get(idx).map_or(Ok(()), |&(_, r)| r)
    }

    fn remember(&mut self, point: u64, result: FenceResult) {
        if self.history.len() >= HISTORY_LEN {
            if let Some((old, _)) = self.history.pop_front() {
                self.history_floor = old;
            }
        }
        self.history.push_back((point, result));
    }
}

/// Advances a timeline's value through its contiguous completed points and
/// releases the waiters they satisfy. Returns how many completed points it
/// folded (they no longer count as out of order).
fn fold<W>(t: &mut Timeline<W>, released: &mut Vec<Released<W>>) -> usize {
    let mut folded = 0;
    while let Some(entry) = t.points.first_entry() {
        let PointState::Done(result) = *entry.get() else {
            break;
        };
        let point = *entry.key();
        entry.remove();
        folded += 1;
        t.value = point;
        t.remember(point, result);
        while let Some(waiting) = t.waiters.first_entry() {
            if *waiting.key() > point {
                break;
            }
            release_all(released, waiting.remove(), result);
        }
    }
    folded
}

fn count_done(points: &BTreeMap<u64, PointState>) -> usize {
    points
        .values()
        .filter(|s| matches!(s, PointState::Done(_)))
        .count()
}

fn release_all<W>(out: &mut Vec<Released<W>>, waiters: Vec<W>, result: FenceResult) {
    out.extend(
        waiters
            .into_iter()
            .map(|waiter| Released { waiter, result }),
    );
}
