//! The daemon: the listening socket, the connection loop and clean shutdown.
//!
//! The daemon outlives its guests. Each vhost-user connection (a QEMU start,
//! or a reconnect after QEMU restarts) gets a fresh [`GpuDevice`] and
//! `VhostUserDaemon`; when the connection ends, both are dropped, which stops
//! the vring worker and frees every resource, context and 2D image the
//! connection owned. A [`Shutdown`] handle (driven by SIGINT/SIGTERM in the
//! binary) ends the loop from another thread.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::GpuDevice;
use crate::virtio_gpu::control::GpuConfig;

/// Errors that stop the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The socket path cannot be used.
    #[error("socket path {path}: {reason}")]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Binding the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Creating the per-connection device failed.
    #[error("cannot create the device: {0}")]
    Device(io::Error),
    /// The vhost-user library failed outside a connection.
    #[error("vhost-user: {0}")]
    VhostUser(String),
}

/// What the daemon serves.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The unix socket the frontend connects to.
    pub socket_path: PathBuf,
    /// Device settings.
    pub gpu: GpuConfig,
}

/// Ends a running daemon from any thread.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    requested: AtomicBool,
    listener_fd: AtomicI32,
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Shutdown {
    /// A handle with nothing to stop yet.
    pub fn new() -> Self {
        let s = Shutdown::default();
        s.inner.listener_fd.store(-1, Ordering::SeqCst);
        s
    }

    /// Whether shutdown was requested.
    pub fn requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Requests shutdown: wakes the blocked accept and closes the current
    /// connection.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        let fd = self.inner.listener_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: shutdown(2) on a descriptor only changes socket state;
            // the daemon keeps the listener open until it has seen the flag,
            // so `fd` still names the listening socket.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        if let Some(h) = self
            .inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
    }

    fn set_connection(&self, h: Option<ShutdownHandle>) {
        *self
            .inner
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = h;
        if self.requested() {
            self.request();
        }
    }
}

/// Prepares `path` for binding: refuses anything that is not a socket,
/// refuses a socket another process still serves, and removes a stale one.
pub fn prepare_socket_path(path: &Path) -> Result<(), DaemonError> {
    let bad = |reason: String| DaemonError::SocketPath {
        path: path.to_path_buf(),
        reason,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(bad(format!(
            "directory {} does not exist",
            parent.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bad(e.to_string())),
        Ok(m) if !m.file_type().is_socket() => Err(bad(
            "exists and is not a socket; refusing to replace it".into(),
        )),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(bad("another process is serving this socket".into()));
            }
            info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| bad(format!("removing stale socket: {e}")))
        }
    }
}

/// Binds the socket, after [`prepare_socket_path`].
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    prepare_socket_path(path)?;
    UnixListener::bind(path).map_err(|source| DaemonError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves connections on `listener` until `shutdown` is requested. Returns
/// the number of connections served.
pub fn serve(
    listener: UnixListener,
    cfg: &DaemonConfig,
    shutdown: &Shutdown,
) -> Result<u64, DaemonError> {
    let mut listener = Listener::from(listener);
    shutdown
        .inner
        .listener_fd
        .store(listener.as_raw_fd(), Ordering::SeqCst);
    let mut served = 0u64;
    while !shutdown.requested() {
        let device = Arc::new(GpuDevice::new(cfg.gpu.clone()).map_err(DaemonError::Device)?);
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-mali".to_string(),
            device.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| DaemonError::VhostUser(e.to_string()))?;
        if let Err(e) = daemon.start(&mut listener) {
            if shutdown.requested() {
                break;
            }
            // A frontend that hangs up during the handshake must not stop
            // the daemon; anything else is fatal.
            warn!("connection setup failed: {e}");
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        served += 1;
        info!("frontend connected (connection {served})");
        shutdown.set_connection(daemon.shutdown_handle());
        let result = daemon.wait();
        shutdown.set_connection(None);
        device.stop_worker();
        drop(daemon);
        device.close_handed_out_fds();
        match result {
            Ok(()) => info!(
                "connection {served} closed after {} requests",
                device.commands_handled()
            ),
            Err(e) if shutdown.requested() => info!("connection {served} stopped: {e}"),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!(
                "connection {served} closed by the frontend after {} requests",
                device.commands_handled()
            ),
            Err(e) => error!("connection {served} ended with an error: {e}"),
        }
    }
    shutdown.inner.listener_fd.store(-1, Ordering::SeqCst);
    drop(listener);
    let _ = std::fs::remove_file(&cfg.socket_path);
    info!("daemon stopped after {served} connection(s)");
    Ok(served)
}

/// The QEMU arguments that attach a guest to a daemon on `socket`.
pub fn qemu_args(socket: &Path) -> String {
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on \
         -machine q35,memory-backend=mem -m 1G \
         -chardev socket,id=vgpu,path={} \
         -device vhost-user-gpu-pci,chardev=vgpu",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_checks() {
        let dir = std::env::temp_dir().join(format!("vum-daemon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(prepare_socket_path(&file).is_err());
        assert!(prepare_socket_path(&dir.join("missing/sock")).is_err());

        let sock = dir.join("sock");
        let live = UnixListener::bind(&sock).unwrap();
        assert!(
            prepare_socket_path(&sock).is_err(),
            "a live socket is in use"
        );
        drop(live); // leaves a stale socket file behind
        assert!(sock.exists());
        prepare_socket_path(&sock).unwrap();
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
