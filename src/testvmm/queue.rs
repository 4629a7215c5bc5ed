//! The driver side of a split virtqueue living in guest memory.
//!
//! [`DriverQueue`] plays the part a guest driver plays: it owns the
//! descriptor table, writes the available ring, reads the used ring, kicks the
//! device through the kick eventfd and sleeps on the call eventfd. Layout
//! (virtio 1.x split ring, little-endian):
//!
//! ```text
//! descriptor table  N x { u64 addr, u32 len, u16 flags, u16 next }
//! available ring    u16 flags, u16 idx, u16 ring[N], u16 used_event
//! used ring         u16 flags, u16 idx, { u32 id, u32 len } ring[N], u16 avail_event
//! ```
//!
//! Memory ordering follows a real driver: descriptors and the ring slot are
//! written first, then a release fence and a release store publish the new
//! available index; a full fence separates that store from reading the
//! device's `avail_event` (or `flags`) when deciding whether to kick, and
//! separates writing `used_event` from re-checking the used index before
//! sleeping, so no notification can be lost. All guest accesses go through
//! vm-memory, bounds-checked.
//!
//! Besides the well-behaved path ([`DriverQueue::add_chain`],
//! [`DriverQueue::kick`], [`DriverQueue::wait_used`]) the queue offers raw
//! access for hostile tests: arbitrary descriptors, arbitrary heads in the
//! available ring and arbitrary available indexes. Raw writes bypass the
//! free-descriptor bookkeeping; completions of heads the queue did not hand
//! out are still reported and counted as stray.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::Error;

/// Size of one split-ring descriptor in bytes.
pub const DESCRIPTOR_SIZE: u64 = 16;

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`true`) or device-readable (`false`).
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            write: true,
        }
    }
}

/// An element the device put in the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the completed chain, as the device wrote it.
    pub id: u32,
    /// Number of bytes the device says it wrote into the chain.
    pub len: u32,
}

/// Where one queue's rings live in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc_table: GuestAddress,
    /// Available ring (2-byte aligned).
    pub avail_ring: GuestAddress,
    /// Used ring (4-byte aligned).
    pub used_ring: GuestAddress,
    /// Area holding one indirect table per descriptor, used by
    /// [`DriverQueue::add_indirect_chain`].
    pub indirect_pool: GuestAddress,
    /// Maximum entries in one pooled indirect table.
    pub indirect_max: u16,
}

impl RingLayout {
    /// Bytes taken by a descriptor table of `size` entries.
    pub fn desc_table_bytes(size: u16) -> u64 {
        DESCRIPTOR_SIZE * u64::from(size)
    }

    /// Bytes taken by an available ring of `size` entries (with used_event).
    pub fn avail_ring_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// Bytes taken by a used ring of `size` entries (with avail_event).
    pub fn used_ring_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }

    /// Bytes taken by the indirect pool.
    pub fn indirect_pool_bytes(size: u16, indirect_max: u16) -> u64 {
        u64::from(size) * u64::from(indirect_max) * DESCRIPTOR_SIZE
    }
}

/// How [`DriverQueue`] bounds its sleeps on the call eventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// `epoll_wait` with the remaining time as its timeout: exact deadlines,
    /// but the kernel arms and cancels a high-resolution timer on every
    /// sleep, which costs a fraction of a microsecond per round trip.
    Precise,
    /// `epoll_wait` without a timeout, while a timer thread waking every
    /// given period writes the call eventfd once an armed deadline has
    /// passed. No timer per sleep; deadlines are late by up to one period.
    /// Meant for latency benchmarks.
    Coarse(Duration),
}

/// The timer thread of [`WaitMode::Coarse`].
struct Ticker {
    tick: Duration,
    base: Instant,
    /// Armed deadline in nanoseconds after `base`; 0 when disarmed.
    deadline: Arc<AtomicU64>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(call: EventFd, tick: Duration) -> Result<Self, Error> {
        let tick = tick.max(Duration::from_micros(100));
        let base = Instant::now();
        let deadline = Arc::new(AtomicU64::new(0));
        let quit = Arc::new(AtomicBool::new(false));
        let (d, q) = (deadline.clone(), quit.clone());
        let thread = std::thread::Builder::new()
            .name("testvmm-ticker".into())
            .spawn(move || {
                while !q.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    let at = d.load(Ordering::Acquire);
                    if at != 0 && base.elapsed().as_nanos() >= u128::from(at) {
                        // Wake the waiter; it sees the deadline has passed.
                        let _ = call.write(1);
                    }
                }
            })
            .map_err(Error::Io)?;
        Ok(Ticker {
            tick,
            base,
            deadline,
            quit,
            thread: Some(thread),
        })
    }

    fn arm(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
        self.deadline.store(ns, Ordering::Release);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Release);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `true` if a notification is due: the event index lies in the window of
/// indexes `(old, new]` just published (virtio spec, `vring_need_event`).
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Adds `off` to `base`, failing instead of wrapping.
fn offset(base: GuestAddress, off: u64) -> Result<GuestAddress, Error> {
    // A match rather than ok_or: this is on every ring access, and the error
    // value should only be built when needed.
    match base.checked_add(off) {
        Some(a) => Ok(a),
        None => Err(Error::Guest(
            vm_memory::GuestMemoryError::InvalidGuestAddress(base),
        )),
    }
}

/// The driver side of one split virtqueue. See the [module docs](self).
pub struct DriverQueue {
    index: usize,
    layout: RingLayout,
    mem: GuestMemoryMmap,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    epoll: Epoll,
    /// Stack of free descriptor indexes.
    free: Vec<u16>,
    /// Host-side copy of each descriptor's `next` link in chains we built.
    links: Vec<u16>,
    /// Descriptors held by the chain whose head is the index; 0 = not in flight.
    chain_len: Vec<u16>,
    next_avail: Wrapping<u16>,
    kicked_at: Wrapping<u16>,
    last_used: Wrapping<u16>,
    /// Completions read while waiting for a particular head.
    stash: VecDeque<UsedElem>,
    stray: u64,
    kicks: u64,
    suppressed_kicks: u64,
    ticker: Option<Ticker>,
}

impl std::fmt::Debug for DriverQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverQueue")
            .field("index", &self.index)
            .field("layout", &self.layout)
            .field("event_idx", &self.event_idx)
            .field("free", &self.free.len())
            .field("next_avail", &self.next_avail.0)
            .field("last_used", &self.last_used.0)
            .finish()
    }
}

impl DriverQueue {
    /// Builds queue `index` over `layout`, zeroing its rings, with fresh
    /// non-blocking kick and call eventfds.
    pub(crate) fn new(
        index: usize,
        layout: RingLayout,
        mem: GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<Self, Error> {
        let size = layout.size;
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::InvalidConfig(format!("queue size {size}")));
        }
        for (addr, len) in [
            (layout.desc_table, RingLayout::desc_table_bytes(size)),
            (layout.avail_ring, RingLayout::avail_ring_bytes(size)),
            (layout.used_ring, RingLayout::used_ring_bytes(size)),
        ] {
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
            mem.write_slice(&zeros, addr)?;
        }
        let flags = libc::EFD_NONBLOCK | libc::EFD_CLOEXEC;
        let kick = EventFd::new(flags).map_err(Error::Io)?;
        let call = EventFd::new(flags).map_err(Error::Io)?;
        let epoll = Epoll::new().map_err(Error::Io)?;
        epoll
            .ctl(
                ControlOperation::Add,
                call.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(Error::Io)?;
        Ok(DriverQueue {
            index,
            layout,
            mem,
            event_idx,
            kick,
            call,
            epoll,
            free: (0..size).rev().collect(),
            links: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            next_avail: Wrapping(0),
            kicked_at: Wrapping(0),
            last_used: Wrapping(0),
            stash: VecDeque::new(),
            stray: 0,
            kicks: 0,
            suppressed_kicks: 0,
            ticker: None,
        })
    }

    /// The queue's index on the device.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Where the rings live.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated for this queue.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The kick eventfd (the one sent in SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the one sent in SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Free descriptors left.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains handed to the device and not yet seen in the used ring.
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&n| n != 0).count()
    }

    /// The available index as published by this driver.
    pub fn avail_idx(&self) -> u16 {
        self.next_avail.0
    }

    /// The used index up to which this driver has consumed completions.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used.0
    }

    /// The used index as the device last published it.
    pub fn device_used_idx(&self) -> Result<u16, Error> {
        let addr = offset(self.layout.used_ring, 2)?;
        Ok(u16::from_le(self.mem.load(addr, Ordering::Acquire)?))
    }

    /// The device's `avail_event` field (meaningful with EVENT_IDX).
    pub fn avail_event(&self) -> Result<u16, Error> {
        let addr = offset(self.layout.used_ring, 4 + 8 * u64::from(self.layout.size))?;
        Ok(u16::from_le(self.mem.load(addr, Ordering::Acquire)?))
    }

    /// Completions whose head this queue had not handed out (or had already
    /// seen completed): a device bug, or the result of raw writes.
    pub fn stray_completions(&self) -> u64 {
        self.stray
    }

    /// Kicks actually sent, and kicks skipped because the device suppressed
    /// them.
    pub fn kick_counts(&self) -> (u64, u64) {
        (self.kicks, self.suppressed_kicks)
    }

    fn desc_addr(&self, index: u16) -> Result<GuestAddress, Error> {
        offset(self.layout.desc_table, u64::from(index) * DESCRIPTOR_SIZE)
    }

    fn write_desc_at(
        &self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), Error> {
        self.mem
            .write_obj(Descriptor::new(addr, len, flags, next), at)?;
        Ok(())
    }

    fn take_free(&mut self, needed: usize) -> Result<(), Error> {
        if needed > self.free.len() {
            return Err(Error::QueueFull {
                needed,
                free: self.free.len(),
            });
        }
        Ok(())
    }

    fn pop_free(&mut self) -> Result<u16, Error> {
        match self.free.pop() {
            Some(i) => Ok(i),
            None => Err(Error::QueueFull { needed: 1, free: 0 }),
        }
    }

    /// Writes `head` into the next available-ring slot and publishes the new
    /// available index.
    fn publish(&mut self, head: u16) -> Result<(), Error> {
        let slot = self.next_avail.0 % self.layout.size;
        let slot_addr = offset(self.layout.avail_ring, 4 + 2 * u64::from(slot))?;
        self.mem.store(head.to_le(), slot_addr, Ordering::Relaxed)?;
        self.next_avail += Wrapping(1);
        // The descriptors and the ring slot must be visible before the index.
        fence(Ordering::Release);
        let idx_addr = offset(self.layout.avail_ring, 2)?;
        self.mem
            .store(self.next_avail.0.to_le(), idx_addr, Ordering::Release)?;
        Ok(())
    }

    /// Adds a chain of buffers (device-readable ones first, by convention)
    /// and publishes it. Does not kick. Returns the head descriptor index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        if bufs.is_empty() {
            return Err(Error::EmptyChain);
        }
        self.take_free(bufs.len())?;
        let head = self.pop_free()?;
        let mut cur = head;
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let next = if last { 0 } else { self.pop_free()? };
            let mut flags = 0u16;
            if b.write {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = self.desc_addr(cur)?;
            self.write_desc_at(at, b.addr.raw_value(), b.len, flags, next)?;
            self.links[usize::from(cur)] = next;
            cur = next;
        }
        // bufs.len() <= free descriptors <= queue size, so this fits.
        self.chain_len[usize::from(head)] = u16::try_from(bufs.len()).unwrap_or(u16::MAX);
        self.publish(head)?;
        Ok(head)
    }

    /// Adds a chain made of one INDIRECT descriptor whose table (from the
    /// queue's indirect pool) holds `bufs`. Works whether or not
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated, so tests can check that a
    /// device rejects it when it was not. Returns the head.
    pub fn add_indirect_chain(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        if bufs.len() > usize::from(self.layout.indirect_max) {
            return Err(Error::IndirectTooLong {
                len: bufs.len(),
                max: usize::from(self.layout.indirect_max),
            });
        }
        self.take_free(1)?;
        let slot = self.free.last().copied().unwrap_or(0);
        let table = offset(
            self.layout.indirect_pool,
            u64::from(slot) * u64::from(self.layout.indirect_max) * DESCRIPTOR_SIZE,
        )?;
        self.add_indirect_chain_at(table, bufs)
    }

    /// Like [`add_indirect_chain`](Self::add_indirect_chain), with the
    /// indirect table written at `table`, anywhere in guest memory (for
    /// example straddling two regions).
    pub fn add_indirect_chain_at(
        &mut self,
        table: GuestAddress,
        bufs: &[Buf],
    ) -> Result<u16, Error> {
        if bufs.is_empty() {
            return Err(Error::EmptyChain);
        }
        let n = u16::try_from(bufs.len()).map_err(|_| Error::IndirectTooLong {
            len: bufs.len(),
            max: usize::from(u16::MAX),
        })?;
        self.take_free(1)?;
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let mut flags = 0u16;
            if b.write {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = if last {
                0
            } else {
                flags |= VRING_DESC_F_NEXT as u16;
                // k + 1 < n <= u16::MAX
                (k + 1) as u16
            };
            let at = offset(table, k as u64 * DESCRIPTOR_SIZE)?;
            self.write_desc_at(at, b.addr.raw_value(), b.len, flags, next)?;
        }
        let head = self.pop_free()?;
        let at = self.desc_addr(head)?;
        self.write_desc_at(
            at,
            table.raw_value(),
            u32::from(n) * DESCRIPTOR_SIZE as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        )?;
        self.links[usize::from(head)] = 0;
        self.chain_len[usize::from(head)] = 1;
        self.publish(head)?;
        Ok(head)
    }

    /// Notifies the device unless it asked not to be: with EVENT_IDX, only if
    /// its `avail_event` lies among the entries published since the last
    /// kick; without, only if the used ring's NO_NOTIFY flag is clear.
    /// Returns whether the kick eventfd was written.
    pub fn kick(&mut self) -> Result<bool, Error> {
        let new = self.next_avail.0;
        let old = self.kicked_at.0;
        self.kicked_at = self.next_avail;
        // The available index store must be globally visible before we read
        // the device's suppression state, or both sides could go to sleep.
        fence(Ordering::SeqCst);
        let needed = if self.event_idx {
            need_event(self.avail_event()?, new, old)
        } else {
            let flags: u16 = u16::from_le(self.mem.load(self.layout.used_ring, Ordering::Relaxed)?);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if needed {
            self.kick.write(1).map_err(Error::Io)?;
            self.kicks += 1;
        } else {
            self.suppressed_kicks += 1;
        }
        Ok(needed)
    }

    /// Writes the kick eventfd regardless of any suppression.
    pub fn kick_always(&mut self) -> Result<(), Error> {
        self.kicked_at = self.next_avail;
        self.kick.write(1).map_err(Error::Io)?;
        self.kicks += 1;
        Ok(())
    }

    /// Returns the chain's descriptors to the free list, or counts a stray
    /// completion.
    fn retire(&mut self, id: u32) {
        let len = usize::try_from(id)
            .ok()
            .and_then(|i| self.chain_len.get(i).copied())
            .unwrap_or(0);
        if len == 0 {
            self.stray += 1;
            return;
        }
        // len != 0 implies id < size <= u16::MAX
        let head = id as u16;
        let mut cur = head;
        for _ in 0..len {
            self.free.push(cur);
            cur = self.links[usize::from(cur)];
        }
        self.chain_len[usize::from(head)] = 0;
    }

    /// Reads the next used element from the ring itself, if the device
    /// published one.
    fn poll_ring(&mut self) -> Option<UsedElem> {
        let used_idx = match self.device_used_idx() {
            Ok(v) => v,
            Err(e) => {
                log::error!("queue {}: cannot read used index: {e}", self.index);
                return None;
            }
        };
        if used_idx == self.last_used.0 {
            return None;
        }
        let slot = self.last_used.0 % self.layout.size;
        let elem = offset(self.layout.used_ring, 4 + 8 * u64::from(slot)).and_then(|at| {
            let id: u32 = self.mem.read_obj(at)?;
            let len: u32 = self.mem.read_obj(offset(at, 4)?)?;
            Ok(UsedElem {
                id: u32::from_le(id),
                len: u32::from_le(len),
            })
        });
        match elem {
            Ok(e) => {
                self.last_used += Wrapping(1);
                self.retire(e.id);
                Some(e)
            }
            Err(e) => {
                log::error!("queue {}: cannot read used element: {e}", self.index);
                None
            }
        }
    }

    /// Returns a completion if one is ready, without blocking.
    pub fn try_used(&mut self) -> Option<UsedElem> {
        if let Some(e) = self.stash.pop_front() {
            return Some(e);
        }
        self.poll_ring()
    }

    /// Asks the device (EVENT_IDX) to notify on the next used entry, then
    /// re-checks the ring so a completion that raced with the request is not
    /// missed.
    fn arm_and_poll(&mut self) -> Option<UsedElem> {
        if self.event_idx {
            let at = offset(self.layout.avail_ring, 4 + 2 * u64::from(self.layout.size));
            match at {
                Ok(at) => {
                    if let Err(e) = self
                        .mem
                        .store(self.last_used.0.to_le(), at, Ordering::Relaxed)
                    {
                        log::error!("queue {}: cannot write used_event: {e}", self.index);
                    }
                }
                Err(e) => log::error!("queue {}: {e}", self.index),
            }
            fence(Ordering::SeqCst);
        }
        self.poll_ring()
    }

    /// Sleeps on the call eventfd until it fires or `deadline` passes.
    /// Returns `false` once the deadline has passed.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let remaining = deadline - now;
        let timeout_ms = match &self.ticker {
            Some(t) => {
                t.arm(deadline);
                -1
            }
            // Round up so a sub-millisecond remainder still sleeps.
            None => remaining.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        let mut events = [EpollEvent::default(); 1];
        let r = self.epoll.wait(timeout_ms, &mut events);
        if let Some(t) = &self.ticker {
            t.disarm();
        }
        match r {
            Ok(n) if n > 0 => {
                // Non-blocking: a racing reader or an empty counter is fine.
                let _ = self.call.read();
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("queue {}: epoll_wait: {e}", self.index);
                // Avoid spinning on a persistent error: give up this round.
                std::thread::sleep(Duration::from_millis(1).min(remaining));
            }
        }
        true
    }

    /// Chooses how waits are bounded; see [`WaitMode`].
    pub fn set_wait_mode(&mut self, mode: WaitMode) -> Result<(), Error> {
        self.ticker = match mode {
            WaitMode::Precise => None,
            WaitMode::Coarse(tick) => Some(Ticker::start(
                self.call.try_clone().map_err(Error::Io)?,
                tick,
            )?),
        };
        Ok(())
    }

    /// The current [`WaitMode`].
    pub fn wait_mode(&self) -> WaitMode {
        match &self.ticker {
            None => WaitMode::Precise,
            Some(t) => WaitMode::Coarse(t.tick),
        }
    }

    /// Waits up to `timeout` for the next completion, sleeping on the call
    /// eventfd (never spinning).
    pub fn wait_used(&mut self, timeout: Duration) -> Option<UsedElem> {
        // Completions already there need no clock reading.
        if let Some(e) = self.try_used() {
            return Some(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.arm_and_poll() {
                return Some(e);
            }
            if !self.sleep_until(deadline) {
                return None;
            }
            if let Some(e) = self.try_used() {
                return Some(e);
            }
        }
    }

    /// Waits up to `timeout` for the chain with head `head` to complete.
    /// Other completions read meanwhile are kept for
    /// [`try_used`](Self::try_used) and later waits.
    pub fn wait_for(&mut self, head: u16, timeout: Duration) -> Option<UsedElem> {
        let want = u32::from(head);
        if let Some(pos) = self.stash.iter().position(|e| e.id == want) {
            return self.stash.remove(pos);
        }
        // The clock is read only if we have to sleep.
        let mut deadline = None;
        loop {
            while let Some(e) = self.poll_ring() {
                if e.id == want {
                    return Some(e);
                }
                self.stash.push_back(e);
            }
            if let Some(e) = self.arm_and_poll() {
                if e.id == want {
                    return Some(e);
                }
                self.stash.push_back(e);
                continue;
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + timeout);
            if !self.sleep_until(d) {
                return None;
            }
        }
    }

    /// Waits until `count` completions have been collected or `timeout`
    /// passes; returns what arrived.
    pub fn wait_used_many(&mut self, count: usize, timeout: Duration) -> Vec<UsedElem> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            if let Some(e) = self.try_used() {
                out.push(e);
                continue;
            }
            if let Some(e) = self.arm_and_poll() {
                out.push(e);
                continue;
            }
            if !self.sleep_until(deadline) {
                break;
            }
        }
        out
    }

    /// Writes descriptor `index` of the table verbatim. Bypasses the
    /// free-descriptor bookkeeping.
    pub fn write_raw_descriptor(
        &mut self,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), Error> {
        if index >= self.layout.size {
            return Err(Error::DescriptorIndex {
                index,
                size: self.layout.size,
            });
        }
        let at = self.desc_addr(index)?;
        self.write_desc_at(at, addr, len, flags, next)
    }

    /// Writes a descriptor verbatim at any guest address (an indirect table
    /// entry, say).
    pub fn write_raw_descriptor_at(
        &mut self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), Error> {
        self.write_desc_at(at, addr, len, flags, next)
    }

    /// Puts any `head` (even one >= the queue size) in the next available
    /// slot and publishes it. Does not kick.
    pub fn push_raw_avail(&mut self, head: u16) -> Result<(), Error> {
        self.publish(head)
    }

    /// Stores `idx` as the available index verbatim (for example far beyond
    /// the entries actually written). Does not kick.
    pub fn set_avail_idx_raw(&mut self, idx: u16) -> Result<(), Error> {
        self.next_avail = Wrapping(idx);
        fence(Ordering::Release);
        let at = offset(self.layout.avail_ring, 2)?;
        self.mem.store(idx.to_le(), at, Ordering::Release)?;
        Ok(())
    }

    /// Marks every descriptor free and forgets completions not yet read,
    /// for tests that mixed raw writes with the bookkeeping path.
    pub fn reset_bookkeeping(&mut self) {
        self.free = (0..self.layout.size).rev().collect();
        self.chain_len.iter_mut().for_each(|n| *n = 0);
        self.stash.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testvmm::memory::{create_guest_memory, MemoryLayout};

    fn queue(event_idx: bool) -> DriverQueue {
        let mem = create_guest_memory(&MemoryLayout::single(0x40000)).unwrap();
        let layout = RingLayout {
            size: 8,
            desc_table: GuestAddress(0x1000),
            avail_ring: GuestAddress(0x2000),
            used_ring: GuestAddress(0x3000),
            indirect_pool: GuestAddress(0x4000),
            indirect_max: 4,
        };
        DriverQueue::new(0, layout, mem, event_idx).unwrap()
    }

    /// Plays the device: completes the next available chain with `len`.
    fn device_complete(q: &DriverQueue, len: u32) -> u16 {
        let mem = &q.mem;
        let used_idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
        let slot = used_idx % 8;
        let head: u16 = mem
            .read_obj(GuestAddress(0x2004 + 2 * u64::from(slot)))
            .unwrap();
        let at = 0x3004 + 8 * u64::from(slot);
        mem.write_obj(u32::from(head), GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 4)).unwrap();
        mem.write_obj(used_idx.wrapping_add(1), GuestAddress(0x3002))
            .unwrap();
        head
    }

    #[test]
    fn need_event_matches_spec_examples() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 8, 2));
        assert!(!need_event(9, 8, 2));
        assert!(need_event(u16::MAX, 1, u16::MAX - 1));
    }

    #[test]
    fn chain_is_written_linked_and_freed() {
        let mut q = queue(false);
        let head = q
            .add_chain(&[
                Buf::readable(GuestAddress(0x10000), 10),
                Buf::writable(GuestAddress(0x11000), 20),
            ])
            .unwrap();
        assert_eq!(head, 0);
        assert_eq!(q.free_descriptors(), 6);
        let d0: Descriptor = q.mem.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(d0.addr(), GuestAddress(0x10000));
        assert!(d0.has_next());
        assert_eq!(d0.next(), 1);
        let d1: Descriptor = q.mem.read_obj(GuestAddress(0x1010)).unwrap();
        assert!(d1.is_write_only());
        assert!(!d1.has_next());
        let avail_idx: u16 = q.mem.read_obj(GuestAddress(0x2002)).unwrap();
        assert_eq!(avail_idx, 1);
        assert!(q.try_used().is_none());
        device_complete(&q, 7);
        assert_eq!(q.try_used(), Some(UsedElem { id: 0, len: 7 }));
        assert_eq!(q.free_descriptors(), 8);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn full_queue_is_reported() {
        let mut q = queue(false);
        let bufs = [Buf::readable(GuestAddress(0x10000), 1); 5];
        q.add_chain(&bufs).unwrap();
        assert!(matches!(
            q.add_chain(&bufs),
            Err(Error::QueueFull { needed: 5, free: 3 })
        ));
        assert!(matches!(q.add_chain(&[]), Err(Error::EmptyChain)));
    }

    #[test]
    fn indirect_chain_uses_one_descriptor() {
        let mut q = queue(false);
        let head = q
            .add_indirect_chain(&[
                Buf::readable(GuestAddress(0x10000), 4),
                Buf::writable(GuestAddress(0x11000), 4),
            ])
            .unwrap();
        assert_eq!(q.free_descriptors(), 7);
        let d: Descriptor = q
            .desc_addr(head)
            .and_then(|a| Ok(q.mem.read_obj(a)?))
            .unwrap();
        assert!(d.refers_to_indirect_table());
        assert_eq!(d.len(), 32);
        let table_entry: Descriptor = q.mem.read_obj(d.addr()).unwrap();
        assert_eq!(table_entry.next(), 1);
        assert!(matches!(
            q.add_indirect_chain(&[Buf::readable(GuestAddress(0), 1); 5]),
            Err(Error::IndirectTooLong { len: 5, max: 4 })
        ));
    }

    #[test]
    fn kick_respects_event_idx_and_no_notify() {
        let mut q = queue(true);
        q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        assert!(q.kick().unwrap());
        assert_eq!(q.kick_fd().read().unwrap(), 1);
        // Device says: wake me only when avail idx passes 5.
        q.mem.write_obj(5u16, GuestAddress(0x3004 + 8 * 8)).unwrap();
        q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        assert!(!q.kick().unwrap());
        for _ in 0..4 {
            q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
                .unwrap();
        }
        assert!(q.kick().unwrap());

        let mut q = queue(false);
        q.mem
            .write_obj(VRING_USED_F_NO_NOTIFY as u16, GuestAddress(0x3000))
            .unwrap();
        q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        assert!(!q.kick().unwrap());
        q.kick_always().unwrap();
        assert_eq!(q.kick_counts(), (1, 1));
    }

    #[test]
    fn wait_times_out_and_sets_used_event() {
        let mut q = queue(true);
        q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        let t = Instant::now();
        assert!(q.wait_used(Duration::from_millis(20)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(20));
        let used_event: u16 = q.mem.read_obj(GuestAddress(0x2004 + 2 * 8)).unwrap();
        assert_eq!(used_event, 0);
    }

    #[test]
    fn coarse_wait_mode_still_times_out() {
        let mut q = queue(false);
        q.set_wait_mode(WaitMode::Coarse(Duration::from_millis(5)))
            .unwrap();
        assert_eq!(q.wait_mode(), WaitMode::Coarse(Duration::from_millis(5)));
        let t = Instant::now();
        assert!(q.wait_used(Duration::from_millis(20)).is_none());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        q.add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        device_complete(&q, 3);
        q.call_fd().write(1).unwrap();
        assert_eq!(q.wait_used(Duration::from_secs(1)).unwrap().len, 3);
        q.set_wait_mode(WaitMode::Precise).unwrap();
        assert_eq!(q.wait_mode(), WaitMode::Precise);
    }

    #[test]
    fn wait_for_stashes_other_completions() {
        let mut q = queue(false);
        let a = q
            .add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        let b = q
            .add_chain(&[Buf::readable(GuestAddress(0x10000), 1)])
            .unwrap();
        device_complete(&q, 1);
        device_complete(&q, 2);
        assert_eq!(
            q.wait_for(b, Duration::from_millis(10)).unwrap().id,
            u32::from(b)
        );
        assert_eq!(q.try_used().unwrap().id, u32::from(a));
        assert!(q.try_used().is_none());
    }

    #[test]
    fn raw_access_and_stray_completions() {
        let mut q = queue(false);
        q.write_raw_descriptor(3, 0x10000, 4, 0, 0).unwrap();
        assert!(q.write_raw_descriptor(8, 0, 0, 0, 0).is_err());
        q.push_raw_avail(3).unwrap();
        q.push_raw_avail(1000).unwrap();
        assert_eq!(q.avail_idx(), 2);
        device_complete(&q, 0);
        assert_eq!(q.try_used().unwrap().id, 3);
        assert_eq!(q.stray_completions(), 1);
        q.set_avail_idx_raw(500).unwrap();
        let idx: u16 = q.mem.read_obj(GuestAddress(0x2002)).unwrap();
        assert_eq!(idx, 500);
    }
}
