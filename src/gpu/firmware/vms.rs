//! The VMs of a context: handles as VM_CREATE returns them, and VM objects
//! that outlive their handle while groups still use them.
//!
//! VM_DESTROY frees the handle at once (it can be reused), unmaps the user
//! range and destroys the VM's tiler heaps, as Panthor does; groups created
//! on the VM keep a reference, so the VM object (its kernel window, with
//! their rings and sync objects) lives until the last of them goes. Their
//! later accesses to user memory fault.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::FwError;
use super::heap::HeapPool;
use crate::gpu::mmu::{BindOp, GpuVm, MappedQuota, VmKey, VmLimits};
use crate::idmap::IdMap;

/// One VM object.
#[derive(Debug)]
pub(crate) struct VmEntry {
    pub vm: GpuVm,
    /// The handle, until VM_DESTROY.
    pub handle: Option<u32>,
    /// Groups using the VM.
    pub users: u32,
    pub heaps: HeapPool,
}

/// The VM table.
#[derive(Debug)]
pub(crate) struct Vms {
    entries: IdMap<VmKey, VmEntry>,
    handles: BTreeMap<u32, VmKey>,
    max: u32,
    /// Bytes of user mappings of all the VMs.
    quota: Arc<MappedQuota>,
}

impl Vms {
    pub fn new(max: u32, max_mapped_bytes: u64) -> Self {
        Self {
            entries: IdMap::default(),
            handles: BTreeMap::new(),
            // Tiler heap handles carry the VM handle in 16 bits.
            max: max.min(0xffff),
            quota: MappedQuota::new(max_mapped_bytes),
        }
    }

    /// VM_CREATE: the lowest free handle in `1..=max`.
    pub fn create(&mut self, user_va_range: u64, limits: VmLimits) -> Result<u32, FwError> {
        let handle = (1..=self.max)
            .find(|h| !self.handles.contains_key(h))
            .ok_or(FwError::TooManyVms(self.max))?;
        let mut vm = GpuVm::new(user_va_range, limits)?;
        vm.set_quota(self.quota.clone());
        let key = vm.key();
        self.entries.insert(
            key,
            VmEntry {
                vm,
                handle: Some(handle),
                users: 0,
                heaps: HeapPool::default(),
            },
        );
        self.handles.insert(handle, key);
        Ok(handle)
    }

    pub fn key(&self, handle: u32) -> Result<VmKey, FwError> {
        self.handles
            .get(&handle)
            .copied()
            .ok_or(FwError::NoSuchVm(handle))
    }

    /// Every VM object, with or without a handle.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (VmKey, &mut VmEntry)> {
        self.entries.iter_mut().map(|(&k, e)| (k, e))
    }

    pub fn get(&self, key: VmKey) -> Option<&VmEntry> {
        self.entries.get(&key)
    }

    pub fn get_mut(&mut self, key: VmKey) -> Option<&mut VmEntry> {
        self.entries.get_mut(&key)
    }

    pub fn by_handle_mut(&mut self, handle: u32) -> Result<&mut VmEntry, FwError> {
        let key = self.key(handle)?;
        self.entries.get_mut(&key).ok_or(FwError::NoSuchVm(handle))
    }

    /// A group starts using the VM.
    pub fn acquire(&mut self, key: VmKey) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.users += 1;
        }
    }

    /// A group stops using the VM; the object goes once it has neither
    /// users nor a handle. Returns whether it went.
    pub fn release(&mut self, key: VmKey) -> bool {
        if let Some(e) = self.entries.get_mut(&key) {
            e.users = e.users.saturating_sub(1);
            if e.users == 0 && e.handle.is_none() {
                self.entries.remove(&key);
                return true;
            }
        }
        false
    }

    /// VM_DESTROY: frees the handle and unmaps the user range. The caller
    /// destroys the heaps first (it holds the kernel-memory allocator).
    /// Returns the VM's key if the object went too (no group used it).
    pub fn destroy(&mut self, handle: u32) -> Result<Option<VmKey>, FwError> {
        let key = self
            .handles
            .remove(&handle)
            .ok_or(FwError::NoSuchVm(handle))?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.handle = None;
            let user: Vec<(u64, u64)> =
                e.vm.mappings()
                    .filter(|m| !m.kernel)
                    .map(|m| (m.va, m.size))
                    .collect();
            for (va, size) in user {
                // UNMAP of a validated user range never fails.
                let _ = e.vm.bind(&[BindOp::Unmap { va, size }]);
            }
            if e.users == 0 {
                self.entries.remove(&key);
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Every VM object (for teardown).
    pub fn keys(&self) -> Vec<VmKey> {
        self.entries.keys().copied().collect()
    }
}
