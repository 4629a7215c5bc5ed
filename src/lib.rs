//! vhost-user-mali: a vhost-user virtio-gpu backend whose GPU is an emulated
//! Mali-like device with CSF firmware.
//!
//! Module map:
//! - [`daemon`]: the connection loop, signals and sandbox.
//! - [`device`]: the `VhostUserBackend` (features, config space, queue events).
//! - [`virtio_gpu`]: the virtio-gpu wire protocol, command handling, resources
//!   and fence rings.
//! - [`display`]: 2D resources and scanout, and the QEMU display socket.
//! - [`native`]: the CSF native context reached through SUBMIT_3D.
//! - [`gpu`]: the emulated GPU (MMU, VM_BIND, CS interpreter, firmware).
//! - [`uapi`]: the guest-facing protocol types shared with guest tools.
//! - [`idmap`]: fast hash maps for ids the device allocates.
//! - [`guest_bytes`]: small copies to and from guest memory.
//! - [`guest`]: guest-side helpers (the virtgpu DRM uAPI), used by the guest
//!   programs shipped with the crate.
//! - [`testvmm`]: an in-process vhost-user front end used by the integration
//!   tests and the benchmarks.

pub mod daemon;
pub mod device;
pub mod display;
pub mod gpu;
pub mod guest;
pub mod guest_bytes;
pub mod idmap;
pub mod log_limit;
pub mod native;
pub mod slab;
pub mod testvmm;
pub mod uapi;
pub mod virtio_gpu;
