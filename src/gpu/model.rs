//! GPU model table: the identity the emulated GPU reports through DEV_QUERY.
//!
//! Panthor answers `DRM_IOCTL_PANTHOR_DEV_QUERY` with four payloads, all
//! mirrored here as plain `#[repr(C)]` structs that any byte pattern can
//! fill ([`ByteValued`]) and whose layout is checked at compile time:
//!
//! | query type | payload |
//! |---|---|
//! | `GPU_INFO` (0) | [`GpuInfo`] (`drm_panthor_gpu_info`, 112 bytes) |
//! | `CSIF_INFO` (1) | [`CsifInfo`] (`drm_panthor_csif_info`, 24 bytes) |
//! | `TIMESTAMP_INFO` (2) | [`TimestampInfo`] (`drm_panthor_timestamp_info`, 24 bytes) |
//! | `GROUP_PRIORITIES_INFO` (3) | [`GroupPrioritiesInfo`] (`drm_panthor_group_priorities_info`, 4 bytes) |
//!
//! All integers are little-endian on the wire (the guest and the emulated GPU
//! are both little-endian Arm parts; the host is assumed little-endian too).
//!
//! A [`GpuModel`] bundles the static part of those answers for one product.
//! [`GpuModel::g610`] is the Mali-G610 MC4 found on Rockchip RK3588 boards;
//! where each value comes from is noted next to it.

use vm_memory::ByteValued;

/// `drm_panthor_gpu_info.selected_coherency` / coherency protocol: ACE-Lite.
pub const COHERENCY_ACE_LITE: u32 = 0;
/// Coherency protocol: full ACE.
pub const COHERENCY_ACE: u32 = 1;
/// Coherency protocol: none (the GPU is not I/O coherent with the CPU).
pub const COHERENCY_NONE: u32 = 31;

/// Group priority LOW (`PANTHOR_GROUP_PRIORITY_LOW`).
pub const GROUP_PRIORITY_LOW: u8 = 0;
/// Group priority MEDIUM.
pub const GROUP_PRIORITY_MEDIUM: u8 = 1;
/// Group priority HIGH (needs CAP_SYS_NICE or DRM master on Linux).
pub const GROUP_PRIORITY_HIGH: u8 = 2;
/// Group priority REALTIME (needs CAP_SYS_NICE or DRM master on Linux).
pub const GROUP_PRIORITY_REALTIME: u8 = 3;

/// The `GPU_INFO` payload: `struct drm_panthor_gpu_info`, field for field.
///
/// Every field but the last one is a copy of a GPU register read at probe
/// time; `selected_coherency` and `gpu_features` come from newer uAPI
/// revisions (older guests read a zero `pad0` there, or stop before
/// `gpu_features` because DEV_QUERY copies `min(size, 112)` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuInfo {
    /// GPU_ID: arch major \[31:28\], arch minor \[27:24\], arch rev \[23:20\],
    /// product major \[19:16\], version major \[15:12\], version minor \[11:4\],
    /// version status \[3:0\].
    pub gpu_id: u32,
    /// GPU_REVID.
    pub gpu_rev: u32,
    /// GPU_CSF_ID: CSHW major \[31:26\], minor \[25:20\], rev \[19:16\];
    /// MCU major \[15:10\], minor \[9:4\], rev \[3:0\].
    pub csf_id: u32,
    /// L2_FEATURES; bits \[7:0\] are log2 of the cache line size.
    pub l2_features: u32,
    /// TILER_FEATURES: bin size and hierarchy levels.
    pub tiler_features: u32,
    /// MEM_FEATURES: coherent core group, L2 slice count.
    pub mem_features: u32,
    /// MMU_FEATURES: VA bits \[7:0\], PA bits \[15:8\].
    pub mmu_features: u32,
    /// THREAD_FEATURES: registers per core \[21:0\], max tasks per core
    /// \[31:24\] (as Mesa decodes it).
    pub thread_features: u32,
    /// THREAD_MAX_THREADS: threads per core.
    pub max_threads: u32,
    /// THREAD_MAX_WORKGROUP_SIZE.
    pub thread_max_workgroup_size: u32,
    /// THREAD_MAX_BARRIER_SIZE.
    pub thread_max_barrier_size: u32,
    /// COHERENCY_FEATURES: bit per supported protocol (see `COHERENCY_*`).
    pub coherency_features: u32,
    /// TEXTURE_FEATURES_0..3: supported compressed texture formats.
    pub texture_features: [u32; 4],
    /// AS_PRESENT: bitmask of MMU address spaces.
    pub as_present: u32,
    /// Coherency protocol the driver selected (`COHERENCY_*`); `pad0` in
    /// uAPI revisions before 1.7.
    pub selected_coherency: u32,
    /// SHADER_PRESENT: bitmask of shader cores.
    pub shader_present: u64,
    /// L2_PRESENT: bitmask of L2 slices.
    pub l2_present: u64,
    /// TILER_PRESENT: bitmask of tiler units.
    pub tiler_present: u64,
    /// CORE_FEATURES; bits \[7:0\] are the product variant Mesa matches on.
    pub core_features: u32,
    /// Must be zero.
    pub pad: u32,
    /// GPU_FEATURES (arch 11 and later; zero before).
    pub gpu_features: u64,
}

// SAFETY: `GpuInfo` is `repr(C)` and made only of `u32`, `u64` and a `u32`
// array; the size and alignment assertions below show it has no hidden
// padding, so every byte pattern is a valid value.
unsafe impl ByteValued for GpuInfo {}

const _: () = assert!(std::mem::size_of::<GpuInfo>() == 112);
const _: () = assert!(std::mem::align_of::<GpuInfo>() == 8);

impl GpuInfo {
    /// GPU_ID arch major.
    pub fn arch_major(&self) -> u32 {
        self.gpu_id >> 28
    }

    /// GPU_ID arch minor.
    pub fn arch_minor(&self) -> u32 {
        (self.gpu_id >> 24) & 0xf
    }

    /// GPU_ID arch revision.
    pub fn arch_rev(&self) -> u32 {
        (self.gpu_id >> 20) & 0xf
    }

    /// GPU_ID product major.
    pub fn product_major(&self) -> u32 {
        (self.gpu_id >> 16) & 0xf
    }

    /// GPU_ID version major (the "rX" of rXpY).
    pub fn version_major(&self) -> u32 {
        (self.gpu_id >> 12) & 0xf
    }

    /// GPU_ID version minor (the "pY" of rXpY).
    pub fn version_minor(&self) -> u32 {
        (self.gpu_id >> 4) & 0xff
    }

    /// GPU_ID version status.
    pub fn version_status(&self) -> u32 {
        self.gpu_id & 0xf
    }

    /// Width of a GPU virtual address, from MMU_FEATURES.
    pub fn va_bits(&self) -> u32 {
        self.mmu_features & 0xff
    }

    /// Width of a physical address the GPU MMU can output, from MMU_FEATURES.
    pub fn pa_bits(&self) -> u32 {
        (self.mmu_features >> 8) & 0xff
    }

    /// L2 cache line size in bytes (from L2_FEATURES\[7:0\]); `None` if the
    /// register holds a shift too large to be a line size.
    pub fn l2_line_size(&self) -> Option<u32> {
        1u32.checked_shl(self.l2_features & 0xff)
    }

    /// Number of shader cores (bits set in SHADER_PRESENT).
    pub fn shader_core_count(&self) -> u32 {
        self.shader_present.count_ones()
    }

    /// Number of MMU address spaces (bits set in AS_PRESENT), AS0 included.
    pub fn address_space_count(&self) -> u32 {
        self.as_present.count_ones()
    }

    /// CSF_ID CSHW (command stream hardware) version `(major, minor, rev)`.
    pub fn cshw_version(&self) -> (u32, u32, u32) {
        (
            self.csf_id >> 26,
            (self.csf_id >> 20) & 0x3f,
            (self.csf_id >> 16) & 0xf,
        )
    }

    /// CSF_ID MCU version `(major, minor, rev)`.
    pub fn mcu_version(&self) -> (u32, u32, u32) {
        (
            (self.csf_id >> 10) & 0x3f,
            (self.csf_id >> 4) & 0x3f,
            self.csf_id & 0xf,
        )
    }

    /// Marketing name, derived from `(arch_major, product_major)` and the
    /// shader core count the way Panthor names the part at probe time.
    ///
    /// The "Immortalis" names, which also need the ray-tracing feature bit,
    /// are not distinguished: such parts are reported under their Mali
    /// name. Unknown ids give `"Mali-Unknown"`.
    pub fn product_name(&self) -> &'static str {
        let cores = self.shader_core_count();
        match (self.arch_major(), self.product_major()) {
            (10, 2) => "Mali-G710",
            (10, 3) => "Mali-G510",
            (10, 4) => "Mali-G310",
            (10, 7) => "Mali-G610",
            (11, 2) if cores >= 7 => "Mali-G715",
            (11, 2) | (11, 3) => "Mali-G615",
            (12, 0) if cores >= 6 => "Mali-G720",
            (12, 0) | (12, 1) => "Mali-G620",
            (13, 0) if cores >= 6 => "Mali-G725",
            (13, 0) | (13, 1) => "Mali-G625",
            _ => "Mali-Unknown",
        }
    }
}

/// The `CSIF_INFO` payload: `struct drm_panthor_csif_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsifInfo {
    /// Number of command stream group slots the firmware exposes (Panthor
    /// clamps it to at most 16 so that resident groups get distinct
    /// priorities).
    pub csg_slot_count: u32,
    /// Number of command streams per group.
    pub cs_slot_count: u32,
    /// Size of a command stream's register file.
    pub cs_reg_count: u32,
    /// Number of scoreboard slots per command stream.
    pub scoreboard_slot_count: u32,
    /// Number of registers at the top of the register file
    /// (`[cs_reg_count - n, cs_reg_count)`) that the kernel's job wrapper
    /// clobbers.
    pub unpreserved_cs_reg_count: u32,
    /// Must be zero.
    pub pad: u32,
}

// SAFETY: `CsifInfo` is `repr(C)` and made only of `u32`; the size assertion
// below shows it has no padding, so every byte pattern is a valid value.
unsafe impl ByteValued for CsifInfo {}

const _: () = assert!(std::mem::size_of::<CsifInfo>() == 24);

/// The `TIMESTAMP_INFO` payload (uAPI 1.1): `struct
/// drm_panthor_timestamp_info` in its original 24-byte form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimestampInfo {
    /// Frequency of the GPU timestamp counter, in Hz.
    pub timestamp_frequency: u64,
    /// Counter value when the query was answered.
    pub current_timestamp: u64,
    /// Offset the GPU adds to the system counter (TIMESTAMP_OFFSET).
    pub timestamp_offset: u64,
}

// SAFETY: `TimestampInfo` is `repr(C)` and made only of `u64`; the size
// assertion below shows it has no padding, so every byte pattern is valid.
unsafe impl ByteValued for TimestampInfo {}

const _: () = assert!(std::mem::size_of::<TimestampInfo>() == 24);

/// The `GROUP_PRIORITIES_INFO` payload (uAPI 1.2): `struct
/// drm_panthor_group_priorities_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupPrioritiesInfo {
    /// Bit `i` set: priority `i` (`GROUP_PRIORITY_*`) may be used by this
    /// client in GROUP_CREATE.
    pub allowed_mask: u8,
    /// Must be zero.
    pub pad: [u8; 3],
}

// SAFETY: `GroupPrioritiesInfo` is `repr(C)` and made only of `u8`; the size
// assertion below shows it has no padding, so every byte pattern is valid.
unsafe impl ByteValued for GroupPrioritiesInfo {}

const _: () = assert!(std::mem::size_of::<GroupPrioritiesInfo>() == 4);

/// One emulated GPU product: everything DEV_QUERY reports that does not
/// change while the device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuModel {
    /// Short name used on the command line (`--gpu-model`).
    pub cli_name: &'static str,
    /// The `GPU_INFO` answer.
    pub gpu_info: GpuInfo,
    /// The `CSIF_INFO` answer.
    pub csif_info: CsifInfo,
    /// Timestamp counter frequency, in Hz, reported in `TIMESTAMP_INFO`.
    pub timestamp_frequency: u64,
    /// Group priorities an ordinary client may use.
    pub priorities_unprivileged: u8,
    /// Group priorities a privileged client (CAP_SYS_NICE or DRM master)
    /// may use.
    pub priorities_privileged: u8,
}

/// Constructor of one model.
type ModelFn = fn() -> GpuModel;

/// The models [`GpuModel::by_name`] knows, by command-line name.
const MODELS: &[(&str, ModelFn)] = &[("g610", GpuModel::g610)];

impl GpuModel {
    /// Mali-G610 MC4 as on Rockchip RK3588 (arch 10.8, product 7, r0p0
    /// status 5, four shader cores).
    ///
    /// Sources of the values:
    /// - GPU_ID, L2/tiler/mem/MMU features, AS_PRESENT, SHADER/L2/TILER
    ///   present: the RK3588 boot log lines Panthor prints (`mali-g610 id
    ///   0xa867 major 0x0 minor 0x0 status 0x5`, `L2:0x7120306 Tiler:0x809
    ///   Mem:0x301 MMU:0x2830 AS:0xff`, `shader_present=0x50005
    ///   l2_present=0x1 tiler_present=0x1`).
    /// - CSF_ID, THREAD_FEATURES, max threads, workgroup and barrier sizes,
    ///   COHERENCY_FEATURES and TEXTURE_FEATURES_0: the values Mesa's
    ///   panfrost drm-shim reports as "dumped from a G610".
    /// - TEXTURE_FEATURES_1..3, GPU_REVID, CORE_FEATURES: zero. CORE_FEATURES
    ///   \[7:0\] is the variant Mesa matches on, and Mesa lists the G610 as
    ///   variant 0; the other two are plausible choices.
    /// - selected_coherency: NONE, because the RK3588 GPU is not
    ///   DMA-coherent with the CPUs. gpu_features: zero (arch 11+ only).
    /// - CSIF: 8 CSG slots with 8 streams each (the fallback a vendor-kernel
    ///   Mesa fork hard-codes, and what the drm-shim dump shows), 96 CS
    ///   registers, 8 scoreboards and 4 unpreserved registers (the v10
    ///   values Panthor and Mesa use).
    /// - Timestamp frequency: 24 MHz, the RK3588 architected timer, which
    ///   Panthor reports as the GPU timestamp frequency.
    /// - Priorities: LOW and MEDIUM for ordinary clients, all four for
    ///   privileged ones, as Panthor decides.
    pub fn g610() -> GpuModel {
        GpuModel {
            cli_name: "g610",
            gpu_info: GpuInfo {
                gpu_id: 0xa867_0005,
                gpu_rev: 0,
                csf_id: 0x040a_0412,
                l2_features: 0x0712_0306,
                tiler_features: 0x809,
                mem_features: 0x301,
                mmu_features: 0x2830,
                thread_features: 0x0401_0000,
                max_threads: 2048,
                thread_max_workgroup_size: 1024,
                thread_max_barrier_size: 1024,
                coherency_features: 0,
                texture_features: [0xc1ff_ff9e, 0, 0, 0],
                as_present: 0xff,
                selected_coherency: COHERENCY_NONE,
                shader_present: 0x50005,
                l2_present: 0x1,
                tiler_present: 0x1,
                core_features: 0,
                pad: 0,
                gpu_features: 0,
            },
            csif_info: CsifInfo {
                csg_slot_count: 8,
                cs_slot_count: 8,
                cs_reg_count: 96,
                scoreboard_slot_count: 8,
                unpreserved_cs_reg_count: 4,
                pad: 0,
            },
            timestamp_frequency: 24_000_000,
            priorities_unprivileged: (1 << GROUP_PRIORITY_LOW) | (1 << GROUP_PRIORITY_MEDIUM),
            priorities_privileged: (1 << GROUP_PRIORITY_LOW)
                | (1 << GROUP_PRIORITY_MEDIUM)
                | (1 << GROUP_PRIORITY_HIGH)
                | (1 << GROUP_PRIORITY_REALTIME),
        }
    }

    /// Looks a model up by its command-line name (ASCII case-insensitive;
    /// the marketing name, e.g. `"Mali-G610"`, is accepted too).
    pub fn by_name(name: &str) -> Option<GpuModel> {
        MODELS
            .iter()
            .map(|(_, make)| make())
            .find(|m| m.cli_name.eq_ignore_ascii_case(name) || m.name().eq_ignore_ascii_case(name))
    }

    /// Command-line names of every known model, for `--help` and
    /// validation.
    pub fn names() -> impl Iterator<Item = &'static str> {
        MODELS.iter().map(|(name, _)| *name)
    }

    /// Marketing name, e.g. `"Mali-G610"` (see [`GpuInfo::product_name`]).
    pub fn name(&self) -> &'static str {
        self.gpu_info.product_name()
    }

    /// GPU_ID arch major (10 for the G610).
    pub fn arch_major(&self) -> u32 {
        self.gpu_info.arch_major()
    }

    /// GPU_ID arch minor (8 for the G610).
    pub fn arch_minor(&self) -> u32 {
        self.gpu_info.arch_minor()
    }

    /// GPU_ID product major (7 for the G610).
    pub fn product_major(&self) -> u32 {
        self.gpu_info.product_major()
    }

    /// GPU virtual address width in bits.
    pub fn va_bits(&self) -> u32 {
        self.gpu_info.va_bits()
    }

    /// GPU physical address width in bits.
    pub fn pa_bits(&self) -> u32 {
        self.gpu_info.pa_bits()
    }

    /// Path of the CSF firmware a Linux driver would load for this part
    /// (`arm/mali/arch<major>.<minor>/mali_csffw.bin`).
    pub fn firmware_path(&self) -> String {
        format!(
            "arm/mali/arch{}.{}/mali_csffw.bin",
            self.arch_major(),
            self.arch_minor()
        )
    }

    /// The `TIMESTAMP_INFO` answer for a counter value read now.
    pub fn timestamp_info(&self, current_timestamp: u64, timestamp_offset: u64) -> TimestampInfo {
        TimestampInfo {
            timestamp_frequency: self.timestamp_frequency,
            current_timestamp,
            timestamp_offset,
        }
    }

    /// The `GROUP_PRIORITIES_INFO` answer for a client.
    pub fn group_priorities_info(&self, privileged: bool) -> GroupPrioritiesInfo {
        GroupPrioritiesInfo {
            allowed_mask: if privileged {
                self.priorities_privileged
            } else {
                self.priorities_unprivileged
            },
            pad: [0; 3],
        }
    }

    /// Whether a client may create a group with `priority`.
    pub fn priority_allowed(&self, priority: u8, privileged: bool) -> bool {
        let mask = self.group_priorities_info(privileged).allowed_mask;
        priority < 8 && mask & (1 << priority) != 0
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn gpu_info_layout_matches_uapi() {
        assert_eq!(offset_of!(GpuInfo, gpu_id), 0);
        assert_eq!(offset_of!(GpuInfo, gpu_rev), 4);
        assert_eq!(offset_of!(GpuInfo, csf_id), 8);
        assert_eq!(offset_of!(GpuInfo, l2_features), 12);
        assert_eq!(offset_of!(GpuInfo, tiler_features), 16);
        assert_eq!(offset_of!(GpuInfo, mem_features), 20);
        assert_eq!(offset_of!(GpuInfo, mmu_features), 24);
        assert_eq!(offset_of!(GpuInfo, thread_features), 28);
        assert_eq!(offset_of!(GpuInfo, max_threads), 32);
        assert_eq!(offset_of!(GpuInfo, thread_max_workgroup_size), 36);
        assert_eq!(offset_of!(GpuInfo, thread_max_barrier_size), 40);
        assert_eq!(offset_of!(GpuInfo, coherency_features), 44);
        assert_eq!(offset_of!(GpuInfo, texture_features), 48);
        assert_eq!(offset_of!(GpuInfo, as_present), 64);
        assert_eq!(offset_of!(GpuInfo, selected_coherency), 68);
        assert_eq!(offset_of!(GpuInfo, shader_present), 72);
        assert_eq!(offset_of!(GpuInfo, l2_present), 80);
        assert_eq!(offset_of!(GpuInfo, tiler_present), 88);
        assert_eq!(offset_of!(GpuInfo, core_features), 96);
        assert_eq!(offset_of!(GpuInfo, pad), 100);
        assert_eq!(offset_of!(GpuInfo, gpu_features), 104);
        assert_eq!(std::mem::size_of::<GpuInfo>(), 112);
    }

    #[test]
    fn small_payload_layouts_match_uapi() {
        assert_eq!(offset_of!(CsifInfo, csg_slot_count), 0);
        assert_eq!(offset_of!(CsifInfo, cs_slot_count), 4);
        assert_eq!(offset_of!(CsifInfo, cs_reg_count), 8);
        assert_eq!(offset_of!(CsifInfo, scoreboard_slot_count), 12);
        assert_eq!(offset_of!(CsifInfo, unpreserved_cs_reg_count), 16);
        assert_eq!(offset_of!(CsifInfo, pad), 20);
        assert_eq!(offset_of!(TimestampInfo, timestamp_frequency), 0);
        assert_eq!(offset_of!(TimestampInfo, current_timestamp), 8);
        assert_eq!(offset_of!(TimestampInfo, timestamp_offset), 16);
        assert_eq!(offset_of!(GroupPrioritiesInfo, allowed_mask), 0);
        assert_eq!(offset_of!(GroupPrioritiesInfo, pad), 1);
    }

    #[test]
    fn gpu_info_bytes_are_little_endian_fields() {
        let info = GpuModel::g610().gpu_info;
        let bytes = info.as_slice();
        assert_eq!(bytes.len(), 112);
        assert_eq!(&bytes[0..4], &0xa867_0005u32.to_le_bytes());
        assert_eq!(&bytes[72..80], &0x50005u64.to_le_bytes());
        let back = GpuInfo::from_slice(bytes).copied();
        assert_eq!(back, Some(info));
    }

    #[test]
    fn g610_decodes() {
        let m = GpuModel::g610();
        assert_eq!(m.name(), "Mali-G610");
        assert_eq!(m.arch_major(), 10);
        assert_eq!(m.arch_minor(), 8);
        assert_eq!(m.gpu_info.arch_rev(), 6);
        assert_eq!(m.product_major(), 7);
        assert_eq!(m.gpu_info.version_major(), 0);
        assert_eq!(m.gpu_info.version_minor(), 0);
        assert_eq!(m.gpu_info.version_status(), 5);
        assert_eq!(m.va_bits(), 48);
        assert_eq!(m.pa_bits(), 40);
        assert_eq!(m.gpu_info.l2_line_size(), Some(64));
        assert_eq!(m.gpu_info.shader_core_count(), 4);
        assert_eq!(m.gpu_info.address_space_count(), 8);
        assert_eq!(m.firmware_path(), "arm/mali/arch10.8/mali_csffw.bin");
        // Mesa matches the top 16 bits with arch rev masked: 0xa807.
        assert_eq!((m.gpu_info.gpu_id >> 16) & 0xff0f, 0xa807);
        assert_eq!(m.gpu_info.core_features & 0xff, 0);
    }

    #[test]
    fn g610_satisfies_mesa_thread_asserts() {
        // Mesa's panthor backend asserts that all four thread properties it
        // derives are non-zero.
        let g = GpuModel::g610().gpu_info;
        assert_ne!(g.thread_max_workgroup_size, 0);
        assert_ne!(g.max_threads, 0);
        assert_ne!(g.thread_features >> 24, 0);
        assert_ne!(g.thread_features & 0x3f_ffff, 0);
    }

    #[test]
    fn g610_csif_and_priorities() {
        let m = GpuModel::g610();
        assert_eq!(m.csif_info.csg_slot_count, 8);
        assert_eq!(m.csif_info.cs_slot_count, 8);
        assert_eq!(m.csif_info.cs_reg_count, 96);
        assert_eq!(m.csif_info.scoreboard_slot_count, 8);
        assert_eq!(m.csif_info.unpreserved_cs_reg_count, 4);
        assert_eq!(m.group_priorities_info(false).allowed_mask, 0b0011);
        assert_eq!(m.group_priorities_info(true).allowed_mask, 0b1111);
        assert!(m.priority_allowed(GROUP_PRIORITY_MEDIUM, false));
        assert!(!m.priority_allowed(GROUP_PRIORITY_HIGH, false));
        assert!(m.priority_allowed(GROUP_PRIORITY_REALTIME, true));
        assert!(!m.priority_allowed(200, true));
        let ts = m.timestamp_info(1234, 5);
        assert_eq!(ts.timestamp_frequency, 24_000_000);
        assert_eq!(ts.current_timestamp, 1234);
        assert_eq!(ts.timestamp_offset, 5);
    }

    #[test]
    fn csf_id_decodes() {
        let g = GpuModel::g610().gpu_info;
        assert_eq!(g.cshw_version(), (1, 0, 10));
        assert_eq!(g.mcu_version(), (1, 1, 2));
    }

    #[test]
    fn by_name_finds_models() {
        assert_eq!(GpuModel::by_name("g610"), Some(GpuModel::g610()));
        assert_eq!(GpuModel::by_name("G610"), Some(GpuModel::g610()));
        assert_eq!(GpuModel::by_name("mali-g610"), Some(GpuModel::g610()));
        assert_eq!(GpuModel::by_name("g710"), None);
        assert_eq!(GpuModel::by_name(""), None);
        let names: Vec<_> = GpuModel::names().collect();
        assert_eq!(names, ["g610"]);
        for name in names {
            assert!(GpuModel::by_name(name).is_some());
        }
    }

    #[test]
    fn product_names_follow_the_panthor_table() {
        let named = |gpu_id: u32, shader_present: u64| {
            GpuInfo {
                gpu_id,
                shader_present,
                ..GpuInfo::default()
            }
            .product_name()
        };
        assert_eq!(named(0xa002_0000, 0xf), "Mali-G710");
        assert_eq!(named(0xa004_0000, 0x1), "Mali-G310");
        assert_eq!(named(0xb002_0000, 0x7f), "Mali-G715");
        assert_eq!(named(0xb002_0000, 0x3f), "Mali-G615");
        assert_eq!(named(0xc000_0000, 0x3f), "Mali-G720");
        assert_eq!(named(0xc000_0000, 0x1f), "Mali-G620");
        assert_eq!(named(0xd001_0000, 0x3), "Mali-G625");
        assert_eq!(named(0x9000_0000, 0x3), "Mali-Unknown");
    }

    #[test]
    fn odd_register_values_do_not_panic() {
        let g = GpuInfo {
            l2_features: 0xff,
            mmu_features: u32::MAX,
            csf_id: u32::MAX,
            gpu_id: u32::MAX,
            ..GpuInfo::default()
        };
        assert_eq!(g.l2_line_size(), None);
        assert_eq!(g.va_bits(), 0xff);
        assert_eq!(g.product_name(), "Mali-Unknown");
        let _ = (g.cshw_version(), g.mcu_version());
    }
}
