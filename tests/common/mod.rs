//! Shared helpers of the integration tests: start the daemon binary and
//! connect a virtio-gpu test driver to it.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use vhost_user_mali::testvmm::gpu_driver::{DaemonProcess, GpuDriver};

/// The daemon binary built by cargo for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vhost-user-mali"))
}

/// Starts the daemon with extra arguments.
pub fn daemon(args: &[&str]) -> DaemonProcess {
    DaemonProcess::spawn(binary(), args).expect("daemon starts")
}

/// Connects a driver accepting `features`.
pub fn driver(d: &DaemonProcess, features: u64) -> GpuDriver {
    GpuDriver::connect(&d.socket, features).expect("driver connects")
}

/// Stops the daemon with SIGTERM and checks it exited cleanly without a
/// panic in its log.
pub fn finish(mut d: DaemonProcess) -> String {
    let code = d.terminate(Duration::from_secs(10));
    let log = d.log();
    assert!(!log.contains("panicked"), "daemon panicked:\n{log}");
    assert_eq!(code.ok(), Some(0), "daemon exit; log:\n{log}");
    assert!(!d.socket.exists(), "socket removed on exit");
    log
}
