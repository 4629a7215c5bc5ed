//! The CSF command-stream instruction set.
