//! The GPU MMU: page tables, translation and the VM_BIND engine.
