//! MMU faults: access types, fault kinds and their Mali exception codes.
//!
//! A [`Fault`] carries what the firmware model needs to report an MMU fault
//! the way the hardware does in AS_FAULTSTATUS / AS_FAULTADDRESS: the
//! exception code (bits 7:0), the access type (bits 9:8) and the faulting VA.
//!
//! Codes (Panthor's exception table):
//! - TRANSLATION_FAULT_n (0xc0 + n): the walk met an invalid entry at LPAE
//!   level n (0 = the 512 GiB level, 3 = the page level).
//! - PERM_FAULT_n (0xc8 + n): a write to a READONLY leaf, or an instruction
//!   fetch from a NOEXEC leaf; n is the level of the leaf (2 for a block,
//!   3 for a page).
//! - ADDR_SIZE_FAULT_IN (0xe0): the VA does not fit in 48 bits.
//! - ADDR_SIZE_FAULT_OUTn (0xe4 + n): the leaf at level n points beyond the
//!   40-bit output address size.
//! - GPU_BUS_FAULT (0x80): the translated guest-physical address is not
//!   backed by guest memory (any more).
//! - Misaligned sync-object access: the hardware's code for this is not
//!   public, so DATA_INVALID_FAULT (0x58) stands for it.

/// Mali exception codes used by the MMU.
pub mod exception {
    /// TRANSLATION_FAULT at level 0; add the level for levels 1-3.
    pub const TRANSLATION_FAULT_0: u8 = 0xc0;
    /// PERM_FAULT at level 0; add the level for levels 1-3.
    pub const PERM_FAULT_0: u8 = 0xc8;
    /// The input (virtual) address is too wide.
    pub const ADDR_SIZE_FAULT_IN: u8 = 0xe0;
    /// The output address of a level-0 leaf is too wide; add the level.
    pub const ADDR_SIZE_FAULT_OUT_0: u8 = 0xe4;
    /// Bus fault: the physical access failed.
    pub const GPU_BUS_FAULT: u8 = 0x80;
    /// Used for misaligned sync-object accesses.
    pub const DATA_INVALID_FAULT: u8 = 0x58;
}

/// The kind of memory access, with the AS_FAULTSTATUS access-type encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Atomic read-modify-write (sync objects). Needs write permission.
    Atomic,
    /// Instruction fetch by a shader. Needs the leaf to be executable.
    ///
    /// Command-stream fetch is *not* an execute access: Panthor maps ring
    /// buffers NOEXEC and the command-stream frontend still reads them, so
    /// the interpreter fetches its instructions as [`Access::Read`].
    Execute,
    /// Data read.
    Read,
    /// Data write. Needs the leaf to be writable.
    Write,
}

impl Access {
    /// AS_FAULTSTATUS ACCESS_TYPE (bits 9:8): ATOMIC 0, EX 1, READ 2,
    /// WRITE 3.
    pub const fn fault_status_code(self) -> u32 {
        match self {
            Access::Atomic => 0,
            Access::Execute => 1,
            Access::Read => 2,
            Access::Write => 3,
        }
    }

    /// Whether the access needs a writable leaf.
    pub const fn writes(self) -> bool {
        matches!(self, Access::Atomic | Access::Write)
    }
}

/// Why an access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// An invalid entry at this LPAE level.
    Translation {
        /// 0..=3.
        level: u8,
    },
    /// The leaf at this level forbids the access.
    Permission {
        /// 2 (block) or 3 (page).
        level: u8,
    },
    /// The VA does not fit in 48 bits.
    AddressSizeIn,
    /// The output address of the leaf at this level is too wide.
    AddressSizeOut {
        /// 2 (block) or 3 (page).
        level: u8,
    },
    /// The guest-physical address is not backed by guest memory.
    Bus,
    /// A sync-object access that is not naturally aligned.
    Alignment,
}

impl FaultKind {
    /// The Mali exception code of this fault.
    pub const fn exception_code(self) -> u8 {
        match self {
            FaultKind::Translation { level } => exception::TRANSLATION_FAULT_0 + (level & 3),
            FaultKind::Permission { level } => exception::PERM_FAULT_0 + (level & 3),
            FaultKind::AddressSizeIn => exception::ADDR_SIZE_FAULT_IN,
            FaultKind::AddressSizeOut { level } => exception::ADDR_SIZE_FAULT_OUT_0 + (level & 3),
            FaultKind::Bus => exception::GPU_BUS_FAULT,
            FaultKind::Alignment => exception::DATA_INVALID_FAULT,
        }
    }
}

/// A faulting GPU memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("GPU MMU fault 0x{exception_code:02x} ({kind:?}) on {access:?} at VA 0x{va:x}")]
pub struct Fault {
    /// Mali exception code (AS_FAULTSTATUS bits 7:0).
    pub exception_code: u8,
    /// The faulting GPU VA (AS_FAULTADDRESS).
    pub va: u64,
    /// The access that faulted.
    pub access: Access,
    /// The decoded reason.
    pub kind: FaultKind,
}

impl Fault {
    /// A fault of `kind` for `access` at `va`.
    pub const fn new(kind: FaultKind, va: u64, access: Access) -> Self {
        Self {
            exception_code: kind.exception_code(),
            va,
            access,
            kind,
        }
    }

    /// The AS_FAULTSTATUS value: exception type in bits 7:0 and access type
    /// in bits 9:8 (source id left zero).
    pub const fn fault_status(&self) -> u32 {
        self.exception_code as u32 | (self.access.fault_status_code() << 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_exception_table() {
        let t = |level| FaultKind::Translation { level }.exception_code();
        assert_eq!([t(0), t(1), t(2), t(3)], [0xc0, 0xc1, 0xc2, 0xc3]);
        let p = |level| FaultKind::Permission { level }.exception_code();
        assert_eq!([p(0), p(1), p(2), p(3)], [0xc8, 0xc9, 0xca, 0xcb]);
        assert_eq!(FaultKind::AddressSizeIn.exception_code(), 0xe0);
        let o = |level| FaultKind::AddressSizeOut { level }.exception_code();
        assert_eq!([o(0), o(1), o(2), o(3)], [0xe4, 0xe5, 0xe6, 0xe7]);
        assert_eq!(FaultKind::Bus.exception_code(), 0x80);
        assert_eq!(FaultKind::Alignment.exception_code(), 0x58);
    }

    #[test]
    fn fault_status_packs_access_type() {
        let f = Fault::new(FaultKind::Permission { level: 3 }, 0x1000, Access::Write);
        assert_eq!(f.exception_code, 0xcb);
        assert_eq!(f.fault_status(), 0x3cb);
        assert_eq!(
            Fault::new(FaultKind::Translation { level: 0 }, 0, Access::Atomic).fault_status(),
            0xc0
        );
        assert_eq!(Access::Execute.fault_status_code(), 1);
        assert_eq!(Access::Read.fault_status_code(), 2);
        assert!(Access::Atomic.writes() && !Access::Read.writes());
        assert!(f.to_string().contains("0xcb"));
    }
}
