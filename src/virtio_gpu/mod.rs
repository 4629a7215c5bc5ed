//! The virtio-gpu device model: wire protocol ([`protocol`]), a request's
//! descriptor chain as bytes ([`chain`]), command handling ([`control`]),
//! the resource table ([`resources`]) and its guest backing access
//! ([`backing_io`]), fence ordering ([`fence`]) and the EDID generator
//! ([`edid`]).

pub mod backing_io;
pub mod chain;
pub mod control;
pub mod edid;
pub mod fence;
pub mod protocol;
pub mod resources;
