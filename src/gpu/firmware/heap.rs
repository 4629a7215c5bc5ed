//! Tiler heaps (csf.md §1.8): a heap context and a list of chunks, all in
//! kernel memory of the heap's VM.
//!
//! - TILER_HEAP_CREATE checks `initial_chunk_count >= 1`, a page-aligned
//!   `chunk_size` in 128 KiB..=8 MiB (the current uAPI range) and
//!   `max_chunks >= initial_chunk_count`; at most
//!   [`FwConfig::max_heaps_per_vm`](super::FwConfig::max_heaps_per_vm)
//!   heaps live in one VM (EBUSY beyond, as Panthor's id allocator).
//! - The heap contexts of a VM share one kernel object of
//!   `max_heaps * stride` bytes, `stride` being 32 bytes rounded up to the
//!   L2 line size; a context is zeroed when its heap is created.
//! - Each chunk is its own zeroed kernel object. Its first 8 bytes are the
//!   chunk header `next = (next_chunk_va & !0xfff) | (chunk_size >> 12)`.
//!   The initial chunks form a list: each new chunk is put in front and
//!   points at the previous first one (the last points nowhere, `next` 0);
//!   the first chunk is what TILER_HEAP_CREATE returns.
//! - Growing (the TILER_OOM answer) adds one chunk, unlinked (the tiler
//!   links it), and answers its header value. It refuses with EBUSY when the
//!   heap already has `max_chunks` chunks or more render passes are in
//!   flight than `target_in_flight`; the documented answer to the tiler is
//!   then a chunk address of 0, which makes it wait for fragment jobs to
//!   release chunks or call the stream's tiler-OOM exception handler.
//! - The handle is `(vm_handle << 16) | heap_id`, heap ids from 1.

use std::collections::BTreeMap;

use vm_memory::GuestMemoryBackend;

use super::error::FwError;
use super::kmem::{KernelMemory, KernelObject};
use crate::gpu::mmu::{GpuVm, PAGE_SIZE};

/// Smallest chunk.
pub const MIN_CHUNK_SIZE: u32 = 128 << 10;
/// Largest chunk.
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;
/// Size of a heap context before padding to the L2 line.
pub const HEAP_CONTEXT_SIZE: u64 = 32;

/// TILER_HEAP_CREATE arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapCreate {
    /// The VM handle.
    pub vm: u32,
    /// Chunks allocated at creation (at least 1).
    pub initial_chunk_count: u32,
    /// Size of each chunk.
    pub chunk_size: u32,
    /// Most chunks the heap may grow to.
    pub max_chunks: u32,
    /// Render passes in flight above which growing is refused.
    pub target_in_flight: u32,
}

/// TILER_HEAP_CREATE results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInfo {
    /// The heap handle.
    pub handle: u32,
    /// GPU VA of the heap context.
    pub tiler_heap_ctx_gpu_va: u64,
    /// GPU VA of the first chunk.
    pub first_heap_chunk_gpu_va: u64,
}

impl HeapCreate {
    /// The argument checks of Panthor's heap creation.
    pub fn validate(&self) -> Result<(), FwError> {
        if self.initial_chunk_count == 0 {
            return Err(FwError::HeapArgs("initial_chunk_count must be at least 1"));
        }
        if u64::from(self.chunk_size) % PAGE_SIZE != 0
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
        {
            return Err(FwError::HeapArgs("chunk_size"));
        }
        if self.max_chunks < self.initial_chunk_count {
            return Err(FwError::HeapArgs("max_chunks below initial_chunk_count"));
        }
        Ok(())
    }
}

/// The header value that points at a chunk.
pub fn chunk_header(chunk_va: u64, chunk_size: u64) -> u64 {
    (chunk_va & !0xfff) | (chunk_size >> 12)
}

#[derive(Debug)]
struct Heap {
    ctx_va: u64,
    chunk_size: u64,
    max_chunks: u32,
    target_in_flight: u32,
    /// Chunks in allocation order; the last is the list head.
    chunks: Vec<KernelObject>,
}

/// The heaps of one VM.
#[derive(Debug, Default)]
pub(crate) struct HeapPool {
    contexts: Option<KernelObject>,
    stride: u64,
    heaps: BTreeMap<u32, Heap>,
}

impl HeapPool {
    /// Creates a heap (arguments already validated) with id in
    /// `1..=max_heaps`.
    pub fn create<M, K>(
        &mut self,
        kmem: &mut K,
        vm: &mut GpuVm,
        mem: &M,
        args: &HeapCreate,
        max_heaps: u32,
        l2_line: u64,
    ) -> Result<(u32, u64, u64), FwError>
    where
        M: GuestMemoryBackend + ?Sized,
        K: KernelMemory,
    {
        let id = (1..=max_heaps.min(0xffff))
            .find(|id| !self.heaps.contains_key(id))
            .ok_or(FwError::TooManyHeaps)?;
        if self.contexts.is_none() {
            let stride = HEAP_CONTEXT_SIZE.max(l2_line).next_power_of_two();
            let ctx = KernelObject::create(kmem, vm, mem, stride * u64::from(max_heaps))?;
            self.stride = stride;
            self.contexts = Some(ctx);
        }
        let base = self.contexts.as_ref().map_or(0, KernelObject::va);
        let ctx_va = base + self.stride * u64::from(id - 1);
        vm.write_bytes(mem, ctx_va, &vec![0u8; self.stride as usize])
            .map_err(FwError::KernelAccess)?;
        let mut heap = Heap {
            ctx_va,
            chunk_size: u64::from(args.chunk_size),
            max_chunks: args.max_chunks,
            target_in_flight: args.target_in_flight,
            chunks: Vec::new(),
        };
        for _ in 0..args.initial_chunk_count {
            if let Err(e) = add_chunk(kmem, vm, mem, &mut heap, true) {
                release_heap(kmem, vm, heap);
                return Err(e);
            }
        }
        let first = heap.chunks.last().map_or(0, KernelObject::va);
        self.heaps.insert(id, heap);
        Ok((id, ctx_va, first))
    }

    /// Destroys heap `id`.
    pub fn destroy<K: KernelMemory>(
        &mut self,
        kmem: &mut K,
        vm: &mut GpuVm,
        id: u32,
    ) -> Result<(), FwError> {
        let heap = self.heaps.remove(&id).ok_or(FwError::NoSuchHeap)?;
        release_heap(kmem, vm, heap);
        Ok(())
    }

    /// Grows the heap whose context is at `ctx_va` by one chunk and returns
    /// the header value of the new chunk.
    pub fn grow<M, K>(
        &mut self,
        kmem: &mut K,
        vm: &mut GpuVm,
        mem: &M,
        ctx_va: u64,
        renderpasses_in_flight: u32,
    ) -> Result<u64, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
        K: KernelMemory,
    {
        let heap = self
            .heaps
            .values_mut()
            .find(|h| h.ctx_va == ctx_va)
            .ok_or(FwError::NoSuchHeap)?;
        if renderpasses_in_flight > heap.target_in_flight
            || heap.chunks.len() >= heap.max_chunks as usize
        {
            return Err(FwError::HeapBusy);
        }
        add_chunk(kmem, vm, mem, heap, false)?;
        let head = heap.chunks.last().map_or(0, KernelObject::va);
        Ok(chunk_header(head, heap.chunk_size))
    }

    /// The chunk VAs of heap `id`, list head first.
    pub fn chunks(&self, id: u32) -> Option<Vec<u64>> {
        self.heaps
            .get(&id)
            .map(|h| h.chunks.iter().rev().map(KernelObject::va).collect())
    }

    /// Destroys every heap and the context array.
    pub fn clear<K: KernelMemory>(&mut self, kmem: &mut K, vm: &mut GpuVm) {
        for (_, heap) in std::mem::take(&mut self.heaps) {
            release_heap(kmem, vm, heap);
        }
        if let Some(ctx) = self.contexts.take() {
            ctx.release(kmem, vm);
        }
    }
}

/// Allocates a zeroed chunk; an initial chunk points at the previous head.
fn add_chunk<M, K>(
    kmem: &mut K,
    vm: &mut GpuVm,
    mem: &M,
    heap: &mut Heap,
    initial: bool,
) -> Result<(), FwError>
where
    M: GuestMemoryBackend + ?Sized,
    K: KernelMemory,
{
    let chunk = KernelObject::create(kmem, vm, mem, heap.chunk_size)?;
    if initial {
        if let Some(prev) = heap.chunks.last() {
            let header = chunk_header(prev.va(), heap.chunk_size);
            if let Err(f) = vm.write_u64(mem, chunk.va(), header) {
                chunk.release(kmem, vm);
                return Err(FwError::KernelAccess(f));
            }
        }
    }
    heap.chunks.push(chunk);
    Ok(())
}

fn release_heap<K: KernelMemory>(kmem: &mut K, vm: &mut GpuVm, heap: Heap) {
    for chunk in heap.chunks {
        chunk.release(kmem, vm);
    }
}
