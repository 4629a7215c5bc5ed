//! The emulated Mali-like GPU: its MMU and VM_BIND engine, the command-stream
//! instruction set and interpreter, and the CSF firmware model.
//!
//! This part of the crate is independent of the virtio transport.

pub mod cs;
pub mod engine;
pub mod firmware;
pub mod interp;
pub mod mmu;
pub mod model;
pub mod sync;
