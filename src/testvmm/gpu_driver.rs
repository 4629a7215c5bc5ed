//! A virtio-gpu driver on top of [`TestVmm`]: builds requests from the
//! project's wire types, sends them on the control or cursor queue and
//! decodes the responses. Also starts the daemon under test, either as a
//! child process (the real binary, for integration tests) or on a thread in
//! this process (for benchmarks).

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{ByteValued, GuestAddress};

use super::{Error, TestVmm, VmmConfig};
use crate::daemon::{self, DaemonConfig, Shutdown};
use crate::virtio_gpu::control::GpuConfig;
use crate::virtio_gpu::protocol::*;

/// Queue index of the control queue.
pub const CONTROLQ: usize = 0;
/// Queue index of the cursor queue.
pub const CURSORQ: usize = 1;

/// Every virtio-gpu feature bit the device may offer.
pub const ALL_GPU_FEATURES: u64 = (1 << VIRTIO_GPU_F_VIRGL)
    | (1 << VIRTIO_GPU_F_EDID)
    | (1 << VIRTIO_GPU_F_RESOURCE_UUID)
    | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
    | (1 << VIRTIO_GPU_F_CONTEXT_INIT);

/// The features stock QEMU 10 passes to the guest (compat mode).
pub const COMPAT_GPU_FEATURES: u64 =
    (1 << VIRTIO_GPU_F_VIRGL) | (1 << VIRTIO_GPU_F_EDID) | (1 << VIRTIO_GPU_F_RESOURCE_UUID);

/// A control header for `type_`.
pub fn hdr(type_: u32) -> CtrlHdr {
    CtrlHdr {
        type_,
        ..CtrlHdr::default()
    }
}

/// A control header for `type_` on context `ctx_id`.
pub fn ctx_hdr(type_: u32, ctx_id: u32) -> CtrlHdr {
    CtrlHdr {
        type_,
        ctx_id,
        ..CtrlHdr::default()
    }
}

/// A fenced header; `ring` selects a context ring (FLAG_INFO_RING_IDX).
pub fn fenced(type_: u32, ctx_id: u32, fence_id: u64, ring: Option<u8>) -> CtrlHdr {
    let mut h = ctx_hdr(type_, ctx_id);
    h.flags = VIRTIO_GPU_FLAG_FENCE;
    h.fence_id = fence_id;
    if let Some(r) = ring {
        h.flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
        h.ring_idx = r;
    }
    h
}

/// Concatenates a request struct and trailing bytes.
pub fn with_tail<T: ByteValued>(req: &T, tail: &[u8]) -> Vec<u8> {
    let mut v = req.as_slice().to_vec();
    v.extend_from_slice(tail);
    v
}

/// Decodes the header at the start of a response.
pub fn resp_hdr(bytes: &[u8]) -> Option<CtrlHdr> {
    let n = std::mem::size_of::<CtrlHdr>();
    let mut h = CtrlHdr::default();
    h.as_mut_slice().copy_from_slice(bytes.get(..n)?);
    Some(h)
}

/// Decodes a whole response struct.
pub fn resp_as<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    v.as_mut_slice().copy_from_slice(bytes.get(..n)?);
    Some(v)
}

/// The response code of `bytes` (0 when the device wrote nothing).
pub fn resp_type(bytes: &[u8]) -> u32 {
    resp_hdr(bytes).map(|h| h.type_).unwrap_or(0)
}

/// A virtio-gpu driver over a [`TestVmm`].
pub struct GpuDriver {
    /// The underlying front end, for raw access.
    pub vmm: TestVmm,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl GpuDriver {
    /// Connects to the daemon at `socket`, accepting the GPU features in
    /// `gpu_features` (plus the transport features the harness supports).
    pub fn connect(socket: &Path, gpu_features: u64) -> Result<GpuDriver, Error> {
        Self::connect_with(
            socket,
            VmmConfig::default().with_device_features(gpu_features),
        )
    }

    /// Connects with an explicit harness configuration.
    pub fn connect_with(socket: &Path, cfg: VmmConfig) -> Result<GpuDriver, Error> {
        Ok(GpuDriver {
            vmm: TestVmm::connect(socket, cfg)?,
            timeout: Duration::from_secs(5),
        })
    }

    /// Sends raw request bytes on `queue` and returns the response bytes.
    pub fn raw(&mut self, queue: usize, req: &[u8], resp_len: usize) -> Result<Vec<u8>, Error> {
        self.vmm.request(queue, req, resp_len, self.timeout)
    }

    /// Sends a control request and returns the whole response.
    pub fn ctrl<T: ByteValued>(&mut self, req: &T, resp_len: usize) -> Result<Vec<u8>, Error> {
        self.raw(CONTROLQ, req.as_slice(), resp_len)
    }

    /// Sends a control request whose answer has no payload; returns the
    /// response code.
    pub fn ctrl_code<T: ByteValued>(&mut self, req: &T) -> Result<u32, Error> {
        Ok(resp_type(&self.ctrl(req, std::mem::size_of::<CtrlHdr>())?))
    }

    /// Sends request bytes with trailing data; returns the response code.
    pub fn ctrl_code_bytes(&mut self, req: &[u8]) -> Result<u32, Error> {
        Ok(resp_type(&self.raw(
            CONTROLQ,
            req,
            std::mem::size_of::<CtrlHdr>(),
        )?))
    }

    /// GET_DISPLAY_INFO.
    pub fn display_info(&mut self) -> Result<RespDisplayInfo, Error> {
        let r = self.ctrl(
            &hdr(cmd::GET_DISPLAY_INFO),
            std::mem::size_of::<RespDisplayInfo>(),
        )?;
        resp_as(&r).ok_or(Error::Protocol("short display info".into()))
    }

    /// RESOURCE_CREATE_2D; returns the response code.
    pub fn create_2d(&mut self, id: u32, width: u32, height: u32) -> Result<u32, Error> {
        self.ctrl_code(&ResourceCreate2d {
            hdr: hdr(cmd::RESOURCE_CREATE_2D),
            resource_id: id,
            format: format::B8G8R8X8_UNORM,
            width,
            height,
        })
    }

    /// RESOURCE_CREATE_3D of a buffer of `size` bytes.
    pub fn create_buffer(&mut self, ctx: u32, id: u32, size: u32) -> Result<u32, Error> {
        self.ctrl_code(&ResourceCreate3d {
            hdr: ctx_hdr(cmd::RESOURCE_CREATE_3D, ctx),
            resource_id: id,
            target: 0,
            format: 0,
            bind: 0,
            width: size,
            height: 1,
            depth: 1,
            array_size: 1,
            ..Default::default()
        })
    }

    /// Allocates `len` bytes of guest memory (page aligned).
    pub fn alloc(&mut self, len: u64) -> Result<GuestAddress, Error> {
        self.vmm.alloc(len, 4096)
    }

    /// RESOURCE_ATTACH_BACKING with the given ranges.
    pub fn attach_backing(
        &mut self,
        id: u32,
        ranges: &[(GuestAddress, u32)],
    ) -> Result<u32, Error> {
        let req = ResourceAttachBacking {
            hdr: hdr(cmd::RESOURCE_ATTACH_BACKING),
            resource_id: id,
            nr_entries: ranges.len() as u32,
        };
        let mut tail = Vec::new();
        for (a, l) in ranges {
            tail.extend_from_slice(
                MemEntry {
                    addr: a.0,
                    length: *l,
                    padding: 0,
                }
                .as_slice(),
            );
        }
        self.ctrl_code_bytes(&with_tail(&req, &tail))
    }

    /// CTX_CREATE with `context_init` (the capset id in the low byte).
    pub fn ctx_create(&mut self, ctx: u32, context_init: u32, name: &str) -> Result<u32, Error> {
        let mut req = CtxCreate {
            hdr: ctx_hdr(cmd::CTX_CREATE, ctx),
            nlen: name.len().min(64) as u32,
            context_init,
            ..Default::default()
        };
        let n = name.len().min(64);
        req.debug_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.ctrl_code(&req)
    }

    /// A guest blob (`VIRTIO_GPU_BLOB_MEM_GUEST`) of `size` bytes on
    /// context `ctx` (which it is attached to), backed by fresh zeroed
    /// guest memory; returns the response code and the backing address.
    pub fn create_guest_blob(
        &mut self,
        ctx: u32,
        id: u32,
        size: u64,
    ) -> Result<(u32, GuestAddress), Error> {
        let addr = self.alloc(size)?;
        self.vmm.write_guest(addr, &vec![0u8; size as usize])?;
        let req = ResourceCreateBlob {
            hdr: ctx_hdr(cmd::RESOURCE_CREATE_BLOB, ctx),
            resource_id: id,
            blob_mem: VIRTIO_GPU_BLOB_MEM_GUEST,
            blob_flags: 0,
            nr_entries: 1,
            blob_id: 0,
            size,
        };
        let entry = MemEntry {
            addr: addr.0,
            length: size as u32,
            padding: 0,
        };
        Ok((
            self.ctrl_code_bytes(&with_tail(&req, entry.as_slice()))?,
            addr,
        ))
    }

    /// A 3D buffer resource of `size` bytes with fresh zeroed guest
    /// backing, attached to context `ctx` (compat mode's BOs); returns the
    /// last response code and the backing address.
    pub fn create_backed_buffer(
        &mut self,
        ctx: u32,
        id: u32,
        size: u32,
    ) -> Result<(u32, GuestAddress), Error> {
        let addr = self.alloc(u64::from(size))?;
        self.vmm.write_guest(addr, &vec![0u8; size as usize])?;
        let mut code = self.create_buffer(ctx, id, size)?;
        if code == cmd::RESP_OK_NODATA {
            code = self.attach_backing(id, &[(addr, size)])?;
        }
        if code == cmd::RESP_OK_NODATA {
            code = self.ctrl_code(&ResourceOnly {
                hdr: ctx_hdr(cmd::CTX_ATTACH_RESOURCE, ctx),
                resource_id: id,
                padding: 0,
            })?;
        }
        Ok((code, addr))
    }

    /// SUBMIT_3D of `data` with header `h` (whose type is set here).
    pub fn submit_3d(&mut self, mut h: CtrlHdr, data: &[u8]) -> Result<u32, Error> {
        h.type_ = cmd::SUBMIT_3D;
        let req = CmdSubmit {
            hdr: h,
            size: data.len() as u32,
            num_in_fences: 0,
        };
        self.ctrl_code_bytes(&with_tail(&req, data))
    }
}

/// The daemon binary running as a child process on a private socket.
pub struct DaemonProcess {
    child: Option<Child>,
    /// The socket it listens on.
    pub socket: PathBuf,
    dir: PathBuf,
    log_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `binary --socket-path <tmp>/gpu.sock <args>` and waits until
    /// the socket exists.
    pub fn spawn(binary: &Path, args: &[&str]) -> Result<DaemonProcess, Error> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vum-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::Io)?;
        let socket = dir.join("gpu.sock");
        let log_path = dir.join("daemon.log");
        let log = File::create(&log_path).map_err(Error::Io)?;
        let log2 = log.try_clone().map_err(Error::Io)?;
        let child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(Error::Io)?;
        let mut d = DaemonProcess {
            child: Some(child),
            socket,
            dir,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.socket.exists() {
            if Instant::now() > deadline || d.exited() {
                return Err(Error::Protocol(format!(
                    "daemon did not create its socket; log:\n{}",
                    d.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Number of open file descriptors of the daemon (from /proc).
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid()?;
        Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
    }

    /// Resident set size of the daemon in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Number of threads of the daemon (from /proc).
    pub fn threads(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("Threads:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit. Returns the
    /// exit code, or an error if it had to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Result<i32, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Protocol("daemon already reaped".into()));
        };
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Protocol("daemon ignored SIGTERM".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon's connection loop on a thread of this process.
pub struct InProcessDaemon {
    /// The socket it listens on.
    pub socket: PathBuf,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl InProcessDaemon {
    /// Binds a private socket and serves it with `gpu` settings.
    pub fn start(gpu: GpuConfig) -> Result<InProcessDaemon, Error> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vum-inproc-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::Io)?;
        let socket = dir.join("gpu.sock");
        let listener: UnixListener =
            daemon::bind(&socket).map_err(|e| Error::Protocol(e.to_string()))?;
        let cfg = DaemonConfig {
            socket_path: socket.clone(),
            gpu,
        };
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("vum-daemon".into())
            .spawn(move || {
                if let Err(e) = daemon::serve(listener, &cfg, &sd) {
                    log::error!("in-process daemon: {e}");
                }
            })
            .map_err(Error::Io)?;
        Ok(InProcessDaemon {
            socket,
            shutdown,
            thread: Some(thread),
            dir,
        })
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        self.shutdown.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
