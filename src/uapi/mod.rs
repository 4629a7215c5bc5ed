//! Guest-facing protocol types: everything a guest driver or guest program
//! must agree on with the daemon. The daemon, the tests and the guest tools
//! share these definitions; nothing here depends on the host side.

pub mod capset;
pub mod native;
