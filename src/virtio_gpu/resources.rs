//! The resource table: every virtio-gpu resource id the guest created, what
//! kind it is, which side owns its pixels or memory, and its guest backing.
//!
//! One table serves both worlds: 2D resources, whose pixels the display
//! component (rutabaga_gfx) owns, and 3D buffer or blob resources, whose
//! memory is the guest's own pages and which the native context turns into
//! GPU buffer objects. Guest backing is kept as guest-physical ranges and is
//! only ever accessed through vm-memory.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::protocol::MemEntry;

/// Limits that bound what one guest connection can make the daemon hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Resources alive at once.
    pub max_resources: usize,
    /// Entries in one backing list (QEMU uses the same cap).
    pub max_backing_entries: u32,
    /// Bytes of host memory all 2D resources together may use.
    pub max_host_2d_bytes: u64,
    /// Largest width or height of a 2D resource.
    pub max_2d_dimension: u32,
    /// Contexts alive at once.
    pub max_contexts: usize,
    /// Largest SUBMIT_3D command buffer.
    pub max_submit_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_resources: 16384,
            max_backing_entries: 16384,
            max_host_2d_bytes: 256 << 20,
            max_2d_dimension: 16384,
            max_contexts: 256,
            max_submit_bytes: 1 << 20,
        }
    }
}

/// Errors of resource bookkeeping; each maps to a virtio-gpu response code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourceError {
    /// Resource id 0, or an id that does not exist.
    #[error("invalid resource id {0}")]
    InvalidId(u32),
    /// The id is already taken.
    #[error("resource id {0} already exists")]
    Exists(u32),
    /// A quota would be exceeded.
    #[error("resource quota exceeded: {0}")]
    Quota(&'static str),
    /// A malformed argument.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A backing entry outside guest memory.
    #[error("backing entry {index} ({addr:#x}+{len:#x}) is outside guest memory")]
    BackingOutOfRange {
        /// Entry index.
        index: usize,
        /// Entry address.
        addr: u64,
        /// Entry length.
        len: u32,
    },
    /// The resource already has (or lacks) backing.
    #[error("resource {0}: {1}")]
    BackingState(u32, &'static str),
}

/// What a resource is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// A 2D image whose pixels live in the display component.
    TwoD {
        /// virtio-gpu format.
        format: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A 3D resource. Only buffers (target 0) with guest backing are
    /// accepted; in compat mode they are the GPU's buffer objects.
    Buffer {
        /// Size in bytes (`width` of the request).
        size: u32,
        /// Bind flags as given.
        bind: u32,
    },
    /// A blob resource backed by guest memory.
    Blob {
        /// `VIRTIO_GPU_BLOB_MEM_*`.
        blob_mem: u32,
        /// `VIRTIO_GPU_BLOB_FLAG_*`.
        blob_flags: u32,
        /// Context-defined id.
        blob_id: u64,
        /// Size in bytes.
        size: u64,
    },
}

/// Validated guest backing: guest-physical ranges in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backing {
    entries: Vec<(GuestAddress, u32)>,
    total: u64,
}

impl Backing {
    /// Validates `entries` against guest memory and the entry limit.
    pub fn new(
        entries: &[MemEntry],
        mem: &GuestMemoryMmap,
        limits: &Limits,
    ) -> Result<Backing, ResourceError> {
        if entries.len() > limits.max_backing_entries as usize {
            return Err(ResourceError::Quota("too many backing entries"));
        }
        let mut total: u64 = 0;
        let mut out = Vec::with_capacity(entries.len());
        for (index, e) in entries.iter().enumerate() {
            let out_of_range = ResourceError::BackingOutOfRange {
                index,
                addr: e.addr,
                len: e.length,
            };
            if e.length == 0 {
                return Err(ResourceError::Invalid("empty backing entry"));
            }
            let addr = GuestAddress(e.addr);
            if e.addr.checked_add(u64::from(e.length)).is_none()
                || !GuestMemoryBackend::check_range(mem, addr, e.length as usize)
            {
                return Err(out_of_range);
            }
            total = total
                .checked_add(u64::from(e.length))
                .ok_or(ResourceError::Invalid("backing size overflows"))?;
            out.push((addr, e.length));
        }
        Ok(Backing {
            entries: out,
            total,
        })
    }

    /// The ranges.
    pub fn entries(&self) -> &[(GuestAddress, u32)] {
        &self.entries
    }

    /// Total size in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// One resource.
#[derive(Debug)]
pub struct Resource {
    /// Id chosen by the guest.
    pub id: u32,
    /// Kind and shape.
    pub kind: ResourceKind,
    /// Guest backing, when attached.
    pub backing: Option<Backing>,
    /// UUID assigned on request.
    pub uuid: Option<[u8; 16]>,
    /// Contexts the resource is attached to.
    pub contexts: BTreeSet<u32>,
    /// Bytes of host memory this resource holds (2D pixels).
    pub host_bytes: u64,
}

/// All resources of one connection.
#[derive(Debug, Default)]
pub struct ResourceTable {
    map: BTreeMap<u32, Resource>,
    host_bytes: u64,
}

impl ResourceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live resources.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Host memory held by 2D resources.
    pub fn host_bytes(&self) -> u64 {
        self.host_bytes
    }

    /// Checks that `id` may be created now, holding `host_bytes` of host
    /// memory, without inserting it.
    pub fn check_new(
        &self,
        id: u32,
        host_bytes: u64,
        limits: &Limits,
    ) -> Result<(), ResourceError> {
        if id == 0 {
            return Err(ResourceError::InvalidId(0));
        }
        if self.map.contains_key(&id) {
            return Err(ResourceError::Exists(id));
        }
        if self.map.len() >= limits.max_resources {
            return Err(ResourceError::Quota("too many resources"));
        }
        let after = self
            .host_bytes
            .checked_add(host_bytes)
            .ok_or(ResourceError::Quota("host memory"))?;
        if after > limits.max_host_2d_bytes {
            return Err(ResourceError::Quota("host memory for 2D resources"));
        }
        Ok(())
    }

    /// Inserts a resource that passed [`ResourceTable::check_new`].
    pub fn insert(
        &mut self,
        kind: ResourceKind,
        id: u32,
        host_bytes: u64,
        backing: Option<Backing>,
    ) {
        self.host_bytes += host_bytes;
        self.map.insert(
            id,
            Resource {
                id,
                kind,
                backing,
                uuid: None,
                contexts: BTreeSet::new(),
                host_bytes,
            },
        );
    }

    /// Looks a resource up.
    pub fn get(&self, id: u32) -> Result<&Resource, ResourceError> {
        self.map.get(&id).ok_or(ResourceError::InvalidId(id))
    }

    /// Looks a resource up for change.
    pub fn get_mut(&mut self, id: u32) -> Result<&mut Resource, ResourceError> {
        self.map.get_mut(&id).ok_or(ResourceError::InvalidId(id))
    }

    /// Removes a resource and gives it back.
    pub fn remove(&mut self, id: u32) -> Result<Resource, ResourceError> {
        let r = self.map.remove(&id).ok_or(ResourceError::InvalidId(id))?;
        self.host_bytes -= r.host_bytes;
        Ok(r)
    }

    /// Ids of all resources.
    pub fn ids(&self) -> Vec<u32> {
        self.map.keys().copied().collect()
    }

    /// Iterates over the resources.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.map.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(2 << 20), 1 << 20),
        ])
        .unwrap()
    }

    fn entry(addr: u64, length: u32) -> MemEntry {
        MemEntry {
            addr,
            length,
            padding: 0,
        }
    }

    #[test]
    fn backing_rejects_bad_entries() {
        let m = mem();
        let l = Limits::default();
        assert!(Backing::new(&[entry(0, 4096)], &m, &l).is_ok());
        assert!(matches!(
            Backing::new(&[entry(u64::MAX - 10, 4096)], &m, &l),
            Err(ResourceError::BackingOutOfRange { .. })
        ));
        // Straddles the hole between the two regions.
        assert!(matches!(
            Backing::new(&[entry((1 << 20) - 4096, 8192)], &m, &l),
            Err(ResourceError::BackingOutOfRange { .. })
        ));
        assert!(matches!(
            Backing::new(&[entry(0, 0)], &m, &l),
            Err(ResourceError::Invalid(_))
        ));
        let too_many = vec![entry(0, 16); 16385];
        assert!(matches!(
            Backing::new(&too_many, &m, &l),
            Err(ResourceError::Quota(_))
        ));
    }

    #[test]
    fn table_quotas() {
        let l = Limits {
            max_resources: 2,
            max_host_2d_bytes: 100,
            ..Limits::default()
        };
        let mut t = ResourceTable::new();
        assert_eq!(t.check_new(0, 0, &l), Err(ResourceError::InvalidId(0)));
        t.check_new(1, 60, &l).unwrap();
        t.insert(ResourceKind::Buffer { size: 1, bind: 0 }, 1, 60, None);
        assert_eq!(t.check_new(1, 0, &l), Err(ResourceError::Exists(1)));
        assert!(matches!(
            t.check_new(2, 60, &l),
            Err(ResourceError::Quota(_))
        ));
        t.insert(ResourceKind::Buffer { size: 1, bind: 0 }, 2, 40, None);
        assert!(matches!(
            t.check_new(3, 0, &l),
            Err(ResourceError::Quota(_))
        ));
        t.remove(1).unwrap();
        assert_eq!(t.host_bytes(), 40);
        assert_eq!(t.remove(1).unwrap_err(), ResourceError::InvalidId(1));
    }
}
