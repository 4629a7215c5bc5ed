//! The DRM capset (`VIRTIO_GPU_CAPSET_DRM`, id 6) that announces the emulated
//! CSF GPU to the guest.
//!
//! The layout follows virglrenderer's DRM native-context convention: a common
//! header (`wire_format_version`, a driver version triple and `context_type`)
//! followed by data specific to the context type. Guests pick the native
//! context by comparing `context_type` with [`CONTEXT_TYPE_MALI_CSF`].

use vm_memory::ByteValued;

/// virtio-gpu capset id of DRM native contexts.
pub const CAPSET_ID_DRM: u32 = 6;

/// Context type of the emulated Mali CSF GPU.
///
/// virglrenderer uses small integers (1..=5 for msm, amdgpu, asahi, ...);
/// this value is the ASCII tag `"mali"` read as a little-endian `u32`, far
/// away from that range so the two can never collide.
pub const CONTEXT_TYPE_MALI_CSF: u32 = u32::from_le_bytes(*b"mali");

/// Version of the native-context wire format described in `docs/protocol.md`.
pub const WIRE_FORMAT_VERSION: u32 = 1;

/// Capset version reported by GET_CAPSET_INFO (`max_version`).
pub const CAPSET_VERSION: u32 = 0;

/// Panthor uAPI version the native context mirrors (major, minor, patch).
pub const PANTHOR_VERSION: (u32, u32, u32) = (1, 5, 0);

/// The capset payload returned by GET_CAPSET for [`CAPSET_ID_DRM`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrmCapset {
    /// [`WIRE_FORMAT_VERSION`].
    pub wire_format_version: u32,
    /// Mirrored Panthor uAPI major version.
    pub version_major: u32,
    /// Mirrored Panthor uAPI minor version.
    pub version_minor: u32,
    /// Mirrored Panthor uAPI patch level.
    pub version_patchlevel: u32,
    /// [`CONTEXT_TYPE_MALI_CSF`].
    pub context_type: u32,
    /// Must be zero.
    pub pad: u32,
    /// GPU_ID register of the emulated model (Panthor `gpu_info.gpu_id`).
    pub gpu_id: u32,
    /// GPU revision (Panthor `gpu_info.gpu_rev`).
    pub gpu_rev: u32,
    /// CSF interface id (Panthor `gpu_info.csf_id`).
    pub csf_id: u32,
    /// MMU features: VA bits in bits `7:0`, PA bits in bits `15:8`.
    pub mmu_features: u32,
    /// Bitmask of present shader cores.
    pub shader_present: u64,
    /// Bitmask of present tiler units.
    pub tiler_present: u64,
    /// Size of the request shared-memory the context expects, in bytes
    /// (0 when the guest may choose).
    pub max_request_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

// SAFETY: `DrmCapset` is `repr(C)`, made only of integers, and has no padding
// (checked by the size assertion below), so any byte pattern is valid.
unsafe impl ByteValued for DrmCapset {}

const _: () = assert!(std::mem::size_of::<DrmCapset>() == 64);

impl DrmCapset {
    /// Whether a capset read from the device announces this project's GPU.
    pub fn is_mali_csf(&self) -> bool {
        self.context_type == CONTEXT_TYPE_MALI_CSF
            && self.wire_format_version == WIRE_FORMAT_VERSION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // virglrenderer's context types are 1..=5.
    const _: () = assert!(CONTEXT_TYPE_MALI_CSF > 5);

    #[test]
    fn context_type_spells_mali() {
        assert_eq!(&CONTEXT_TYPE_MALI_CSF.to_le_bytes(), b"mali");
    }
}
