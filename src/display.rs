//! 2D resources and scanout.
//!
//! Pixels of 2D resources live in rutabaga_gfx's 2D component. `Rutabaga` is
//! not `Send`, so it is kept in thread-local storage of the vring worker
//! thread that serves the connection; all 2D calls come from that thread and
//! the state dies with it when the connection ends.
//!
//! When QEMU hands over its display socket (VHOST_USER_GPU_SET_SOCKET), a
//! display thread owns it: the queue worker never waits for QEMU. It sends
//! SCANOUT, UPDATE and cursor messages through a bounded channel (an update
//! that does not fit is dropped and counted; the next flush repaints) and
//! reads the frontend's display geometry into a cache that GET_DISPLAY_INFO
//! answers from. Without a socket the device runs headless.

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};
use rutabaga_gfx::{
    ResourceCreate3D, Rutabaga, RutabagaBuilder, RutabagaComponentType, RutabagaFenceHandler,
    RutabagaIovec, Transfer3D,
};
use thiserror::Error;
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuScanout, VhostUserGpuUpdate,
    VirtioGpuRespDisplayInfo,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;
use vm_memory::{GuestMemory, GuestMemoryMmap, Permissions};

use crate::virtio_gpu::protocol::{DisplayOne, Rect, VIRTIO_GPU_MAX_SCANOUTS};
use crate::virtio_gpu::resources::Backing;

/// Errors of the 2D and display path.
#[derive(Debug, Error)]
pub enum DisplayError {
    /// rutabaga_gfx refused the operation.
    #[error("rutabaga_gfx: {0}")]
    Rutabaga(String),
    /// Guest memory named by a backing is not mapped.
    #[error("backing is not in guest memory")]
    BadBacking,
}

fn rutabaga_err(e: impl std::fmt::Display) -> DisplayError {
    DisplayError::Rutabaga(e.to_string())
}

thread_local! {
    static PIXELS: RefCell<Option<Rutabaga>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's rutabaga instance, creating it on first use.
fn with_rutabaga<T>(
    f: impl FnOnce(&mut Rutabaga) -> Result<T, DisplayError>,
) -> Result<T, DisplayError> {
    PIXELS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let fence_handler = RutabagaFenceHandler::new(|_| {});
            let r = RutabagaBuilder::new(0, fence_handler)
                .set_default_component(RutabagaComponentType::Rutabaga2D)
                .build()
                .map_err(rutabaga_err)?;
            *slot = Some(r);
        }
        match slot.as_mut() {
            Some(r) => f(r),
            None => Err(DisplayError::Rutabaga("not initialised".into())),
        }
    })
}

/// Drops this thread's rutabaga instance and every 2D resource in it.
pub fn reset_thread_pixels() {
    PIXELS.with(|cell| cell.borrow_mut().take());
}

/// Bytes per pixel of every supported 2D format.
pub const BYTES_PER_PIXEL: u32 = 4;

/// Creates the pixel store of a 2D resource.
pub fn create_2d(id: u32, format: u32, width: u32, height: u32) -> Result<(), DisplayError> {
    with_rutabaga(|r| {
        r.resource_create_3d(
            id,
            ResourceCreate3D {
                target: 2, // a 2D texture
                format,
                bind: 0,
                width,
                height,
                depth: 1,
                array_size: 1,
                last_level: 0,
                nr_samples: 0,
                flags: 0,
            },
        )
        .map_err(rutabaga_err)
    })
}

/// Drops the pixel store of a 2D resource.
pub fn unref_2d(id: u32) {
    if let Err(e) = with_rutabaga(|r| r.unref_resource(id).map_err(rutabaga_err)) {
        debug!("unref of 2D resource {id}: {e}");
    }
}

/// Points the 2D component at the guest pages of `backing`. The iovecs are
/// host addresses of the current guest memory mapping; `mem` must stay
/// mapped while they are attached (the caller keeps the memory snapshot
/// alive and re-attaches after a memory table change).
pub fn attach_backing_2d(
    id: u32,
    backing: &Backing,
    mem: &GuestMemoryMmap,
) -> Result<(), DisplayError> {
    let mut iovecs = Vec::with_capacity(backing.entries().len());
    for &(addr, len) in backing.entries() {
        let slices = mem
            .get_slices(addr, len as usize, Permissions::Read)
            .map_err(|_| DisplayError::BadBacking)?;
        for slice in slices {
            let slice = slice.map_err(|_| DisplayError::BadBacking)?;
            iovecs.push(RutabagaIovec {
                base: slice.ptr_guard_mut().as_ptr().cast(),
                len: slice.len(),
            });
        }
    }
    with_rutabaga(|r| r.attach_backing(id, iovecs).map_err(rutabaga_err))
}

/// Detaches guest pages from a 2D resource.
pub fn detach_backing_2d(id: u32) {
    if let Err(e) = with_rutabaga(|r| r.detach_backing(id).map_err(rutabaga_err)) {
        debug!("detach of 2D resource {id}: {e}");
    }
}

/// Copies `rect` from the guest backing into the resource. `src_offset` is
/// the byte offset of the backing that corresponds to pixel (0, 0), which
/// the caller derived from the request's offset.
pub fn transfer_to_host_2d(id: u32, rect: Rect, src_offset: u64) -> Result<(), DisplayError> {
    let t = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, src_offset);
    with_rutabaga(|r| r.transfer_write(0, id, t, None).map_err(rutabaga_err))
}

/// Reads `rect` of a 2D resource of `res_width` pixels per row into a
/// tightly packed buffer (`rect.width * 4` bytes per row). The caller has
/// checked that `rect` lies inside the resource.
pub fn read_rect_2d(id: u32, res_width: u32, rect: Rect) -> Result<Vec<u8>, DisplayError> {
    let stride = u64::from(res_width) * u64::from(BYTES_PER_PIXEL);
    let rows = u64::from(rect.y) + u64::from(rect.height);
    let scratch_len = usize::try_from(stride * rows).map_err(rutabaga_err)?;
    let mut scratch = vec![0u8; scratch_len];
    let t = Transfer3D {
        stride: u32::try_from(stride).map_err(rutabaga_err)?,
        ..Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0)
    };
    with_rutabaga(|r| {
        r.transfer_read(0, id, t, Some(IoSliceMut::new(&mut scratch)))
            .map_err(rutabaga_err)
    })?;
    let row_bytes = rect.width as usize * BYTES_PER_PIXEL as usize;
    let mut out = Vec::with_capacity(row_bytes * rect.height as usize);
    for row in 0..rect.height as usize {
        let start = (rect.y as usize + row) * stride as usize + rect.x as usize * 4;
        out.extend_from_slice(&scratch[start..start + row_bytes]);
    }
    Ok(out)
}

/// A message for the frontend's display.
#[derive(Debug)]
pub enum DisplayMsg {
    /// A scanout changed size (0 x 0 disables it).
    Scanout(VhostUserGpuScanout),
    /// New pixels for part of a scanout.
    Update(VhostUserGpuUpdate, Vec<u8>),
    /// Cursor moved.
    CursorPos(VhostUserGpuCursorPos),
    /// Cursor hidden.
    CursorHide(VhostUserGpuCursorPos),
    /// New cursor image (64 x 64 ARGB).
    CursorUpdate(VhostUserGpuCursorUpdate, Box<[u8; 64 * 64 * 4]>),
    /// Ask the frontend for its display geometry again.
    RefreshInfo,
}

#[derive(Default)]
struct InfoCache {
    info: Option<VirtioGpuRespDisplayInfo>,
}

/// The link to QEMU's display: a thread that owns the GPU socket.
pub struct FrontendDisplay {
    tx: SyncSender<DisplayMsg>,
    cache: Arc<(Mutex<InfoCache>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    dropped: u64,
    /// Pixel bytes queued for the display thread and not yet sent.
    queued_bytes: Arc<AtomicUsize>,
}

/// Messages queued for the display thread at most.
const DISPLAY_QUEUE_DEPTH: usize = 256;
/// Pixel bytes queued for the display thread at most: a display that does
/// not keep up must not make the daemon hold copies of every flush.
const DISPLAY_QUEUE_BYTES: usize = 32 << 20;

impl FrontendDisplay {
    /// Starts the display thread on `backend`.
    pub fn start(backend: GpuBackend) -> std::io::Result<FrontendDisplay> {
        let (tx, rx) = sync_channel(DISPLAY_QUEUE_DEPTH);
        let cache = Arc::new((Mutex::new(InfoCache::default()), Condvar::new()));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let thread_cache = cache.clone();
        let thread_bytes = queued_bytes.clone();
        let thread = std::thread::Builder::new()
            .name("vum-display".into())
            .spawn(move || display_thread(backend, rx, thread_cache, thread_bytes))?;
        Ok(FrontendDisplay {
            tx,
            cache,
            thread: Some(thread),
            dropped: 0,
            queued_bytes,
        })
    }

    /// Queues a message without blocking. A full queue, or pixels beyond
    /// the byte budget, drop it.
    pub fn send(&mut self, msg: DisplayMsg) {
        let bytes = msg.pixel_bytes();
        let over_budget = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(bytes).filter(|n| *n <= DISPLAY_QUEUE_BYTES)
            })
            .is_err();
        let result = if over_budget {
            Err(TrySendError::Full(msg))
        } else {
            self.tx.try_send(msg)
        };
        if result.is_err() && !over_budget {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        match result {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    warn!(
                        "display frontend is not keeping up: {} messages dropped",
                        self.dropped
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The frontend's display geometry, waiting at most `wait` for the first
    /// answer. `None` when the frontend has not answered.
    pub fn display_info(
        &mut self,
        wait: Duration,
    ) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        let (lock, cv) = &*self.cache;
        let guard = lock.lock().ok()?;
        let (guard, _) = cv
            .wait_timeout_while(guard, wait, |c| c.info.is_none())
            .ok()?;
        let info = guard.info?;
        drop(guard);
        self.send(DisplayMsg::RefreshInfo);
        let mut out = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (o, p) in out.iter_mut().zip(info.pmodes.iter()) {
            o.r = Rect {
                x: p.r.x,
                y: p.r.y,
                width: p.r.width,
                height: p.r.height,
            };
            o.enabled = p.enabled;
            o.flags = p.flags;
        }
        Some(out)
    }
}

impl Drop for FrontendDisplay {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it is not waiting for
        // QEMU. A frontend that never answers would keep it blocked: it is
        // detached rather than joined so a connection can always end.
        let (tx, _) = sync_channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl DisplayMsg {
    /// Bytes of pixel data the message carries.
    fn pixel_bytes(&self) -> usize {
        match self {
            DisplayMsg::Update(_, data) => data.len(),
            DisplayMsg::CursorUpdate(_, data) => data.len(),
            _ => 0,
        }
    }
}

fn display_thread(
    backend: GpuBackend,
    rx: Receiver<DisplayMsg>,
    cache: Arc<(Mutex<InfoCache>, Condvar)>,
    queued_bytes: Arc<AtomicUsize>,
) {
    // The device generates its own EDID and never sends dmabufs, so it
    // acknowledges none of the display protocol's optional features.
    match backend.get_protocol_features() {
        Ok(_) => {
            if let Err(e) = backend.set_protocol_features(&VhostUserU64::new(0)) {
                warn!("display socket: SET_PROTOCOL_FEATURES failed: {e}");
            }
        }
        Err(e) => warn!("display socket: GET_PROTOCOL_FEATURES failed: {e}"),
    }
    let refresh = |cache: &Arc<(Mutex<InfoCache>, Condvar)>| match backend.get_display_info() {
        Ok(info) => {
            let (lock, cv) = &**cache;
            if let Ok(mut c) = lock.lock() {
                c.info = Some(info);
            }
            cv.notify_all();
            true
        }
        Err(e) => {
            warn!("display socket: GET_DISPLAY_INFO failed: {e}");
            false
        }
    };
    if !refresh(&cache) {
        return;
    }
    info!("display frontend connected");
    for msg in rx {
        queued_bytes.fetch_sub(msg.pixel_bytes(), Ordering::AcqRel);
        let r = match &msg {
            DisplayMsg::Scanout(s) => backend.set_scanout(s),
            DisplayMsg::Update(u, data) => backend.update_scanout(u, data),
            DisplayMsg::CursorPos(p) => backend.cursor_pos(p),
            DisplayMsg::CursorHide(p) => backend.cursor_pos_hide(p),
            DisplayMsg::CursorUpdate(u, data) => backend.cursor_update(u, data),
            DisplayMsg::RefreshInfo => {
                refresh(&cache);
                Ok(())
            }
        };
        if let Err(e) = r {
            warn!("display socket closed: {e}");
            return;
        }
    }
    debug!("display thread done");
}
