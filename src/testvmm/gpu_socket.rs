//! QEMU's display side of the vhost-user-gpu socket.
//!
//! After VHOST_USER_GPU_SET_SOCKET the back end talks to the front end's
//! display over a separate stream socket with its own small protocol
//! (QEMU's `docs/interop/vhost-user-gpu.rst`; request codes as in the vhost
//! crate's `gpu_message.rs`): every message is a header
//! `{u32 request, u32 flags, u32 size}` followed by `size` payload bytes,
//! native-endian; replies carry flag `0x4`. Some requests expect a reply
//! (GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO, GET_EDID, DMABUF_UPDATE), the
//! others do not.
//!
//! [`GpuSocketPeer`] runs a thread that reads every message, answers the ones
//! that need answers from its [`DisplayConfig`] and records all of them for
//! the test ([`GpuSocketPeer::next_message`]). [`DisplayBehaviour`] makes it
//! slow, silent or stalled, to check that a device never lets a dead display
//! wedge its queues.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::gpu_message::{
    GpuBackendReq, VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuDMABUFScanout,
    VhostUserGpuDMABUFScanout2, VhostUserGpuEdidRequest, VhostUserGpuScanout, VhostUserGpuUpdate,
    VirtioGpuDisplayOne, VirtioGpuRect, VirtioGpuRespDisplayInfo, VirtioGpuRespGetEdid,
    VIRTIO_GPU_MAX_SCANOUTS,
};
use virtio_bindings::virtio_gpu::{
    virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID as RESP_ERR_INVALID_SCANOUT_ID,
    virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO as RESP_OK_DISPLAY_INFO,
    virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID as RESP_OK_EDID,
};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Display-protocol feature bit: the front end answers GET_EDID.
///
/// The spec defines EDID as bit 0 and DMABUF2 as bit 1. (vhost 0.18's
/// `VhostUserGpuProtocolFeatures` declares them with the values 0 and 1,
/// i.e. as bit numbers, so its `EDID` is an empty mask: use these instead.)
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// Display-protocol feature bit: the front end accepts DMABUF_SCANOUT2.
pub const GPU_PROTOCOL_F_DMABUF2: u64 = 1 << 1;

/// Reply flag in the display-protocol header.
const GPU_FLAG_REPLY: u32 = 0x4;
/// Largest payload accepted (a full 4K UPDATE is 32 MiB).
const MAX_PAYLOAD: u32 = 64 << 20;
/// Polling period of the peer thread, bounding how fast it notices stop.
const TICK: Duration = Duration::from_millis(10);
/// How long a partially received message may take to arrive in full.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One display (scanout) as the front end reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanoutInfo {
    /// Preferred width.
    pub width: u32,
    /// Preferred height.
    pub height: u32,
    /// Position of the display.
    pub x: u32,
    /// Position of the display.
    pub y: u32,
    /// Whether the user enabled it.
    pub enabled: bool,
}

impl ScanoutInfo {
    /// An enabled display of the given size at (0, 0).
    pub fn new(width: u32, height: u32) -> Self {
        ScanoutInfo {
            width,
            height,
            x: 0,
            y: 0,
            enabled: true,
        }
    }
}

/// How the simulated display answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DisplayBehaviour {
    /// Answer every request at once.
    #[default]
    Responsive,
    /// Wait this long before each answer.
    Delayed(Duration),
    /// Keep reading and recording, never answer: a display that is gone.
    Silent,
    /// Stop reading the socket altogether: the back end's writes pile up in
    /// the socket buffer and eventually block.
    Stalled,
}

/// What the simulated display offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayConfig {
    /// Displays reported by GET_DISPLAY_INFO (at most 16 are reported).
    pub scanouts: Vec<ScanoutInfo>,
    /// Protocol features answered to GET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// EDID blob for every scanout; `None` synthesises one per scanout.
    pub edid: Option<Vec<u8>>,
    /// Initial behaviour.
    pub behaviour: DisplayBehaviour,
}

impl Default for DisplayConfig {
    /// One enabled 1024x768 display, EDID and DMABUF2 offered, responsive.
    fn default() -> Self {
        DisplayConfig {
            scanouts: vec![ScanoutInfo::new(1024, 768)],
            protocol_features: GPU_PROTOCOL_F_EDID | GPU_PROTOCOL_F_DMABUF2,
            edid: None,
            behaviour: DisplayBehaviour::Responsive,
        }
    }
}

/// A message the back end sent on the display socket.
#[derive(Debug)]
pub struct GpuMessage {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// A file descriptor that came with it (DMABUF_SCANOUT*).
    pub fd: Option<File>,
    /// Whether the peer sent a reply.
    pub answered: bool,
}

impl GpuMessage {
    /// The request, if its code is one the protocol defines.
    pub fn kind(&self) -> Option<GpuBackendReq> {
        GpuBackendReq::try_from(self.request).ok()
    }

    /// The payload's leading bytes as `T`, if the payload is long enough.
    pub fn body<T: ByteValued + Default>(&self) -> Option<T> {
        let mut v = T::default();
        let n = std::mem::size_of::<T>();
        let src = self.payload.get(..n)?;
        v.as_mut_slice().copy_from_slice(src);
        Some(v)
    }

    /// Payload bytes after the leading `T`.
    fn after<T>(&self) -> &[u8] {
        self.payload
            .get(std::mem::size_of::<T>()..)
            .unwrap_or_default()
    }

    fn body_if<T: ByteValued + Default>(&self, kinds: &[GpuBackendReq]) -> Option<T> {
        let k = self.kind()?;
        if kinds.contains(&k) {
            self.body()
        } else {
            None
        }
    }

    /// SCANOUT: scanout id and size.
    pub fn scanout(&self) -> Option<VhostUserGpuScanout> {
        self.body_if(&[GpuBackendReq::SCANOUT])
    }

    /// UPDATE: the rectangle and its pixel data.
    pub fn update(&self) -> Option<(VhostUserGpuUpdate, &[u8])> {
        let u = self.body_if(&[GpuBackendReq::UPDATE])?;
        Some((u, self.after::<VhostUserGpuUpdate>()))
    }

    /// CURSOR_POS or CURSOR_POS_HIDE: the position.
    pub fn cursor_pos(&self) -> Option<VhostUserGpuCursorPos> {
        self.body_if(&[GpuBackendReq::CURSOR_POS, GpuBackendReq::CURSOR_POS_HIDE])
    }

    /// CURSOR_UPDATE: position, hot spot and the 64x64 image.
    pub fn cursor_update(&self) -> Option<(VhostUserGpuCursorUpdate, &[u8])> {
        let c = self.body_if(&[GpuBackendReq::CURSOR_UPDATE])?;
        Some((c, self.after::<VhostUserGpuCursorUpdate>()))
    }

    /// DMABUF_SCANOUT: the scanout description.
    pub fn dmabuf_scanout(&self) -> Option<VhostUserGpuDMABUFScanout> {
        self.body_if(&[GpuBackendReq::DMABUF_SCANOUT])
    }

    /// DMABUF_SCANOUT2: the scanout description with modifier.
    pub fn dmabuf_scanout2(&self) -> Option<VhostUserGpuDMABUFScanout2> {
        self.body_if(&[GpuBackendReq::DMABUF_SCANOUT2])
    }

    /// DMABUF_UPDATE: the updated rectangle.
    pub fn dmabuf_update(&self) -> Option<VhostUserGpuUpdate> {
        self.body_if(&[GpuBackendReq::DMABUF_UPDATE])
    }

    /// GET_EDID: the scanout asked about.
    pub fn edid_request(&self) -> Option<u32> {
        self.body_if::<VhostUserGpuEdidRequest>(&[GpuBackendReq::GET_EDID])
            .map(|r| r.scanout_id)
    }

    /// SET_PROTOCOL_FEATURES: the features the back end enabled.
    pub fn set_protocol_features(&self) -> Option<u64> {
        self.body_if::<u64>(&[GpuBackendReq::SET_PROTOCOL_FEATURES])
    }
}

struct PeerState {
    messages: VecDeque<GpuMessage>,
    behaviour: DisplayBehaviour,
    config: DisplayConfig,
    acked_protocol_features: Option<u64>,
    errors: Vec<String>,
    closed: bool,
    stop: bool,
    received: u64,
}

struct PeerShared {
    state: Mutex<PeerState>,
    cond: Condvar,
}

impl PeerShared {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// QEMU's end of the display socket. See the [module docs](self).
///
/// Dropping it (or [`hang_up`](Self::hang_up)) closes the socket.
pub struct GpuSocketPeer {
    shared: Arc<PeerShared>,
    socket: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GpuSocketPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("GpuSocketPeer")
            .field("queued", &st.messages.len())
            .field("behaviour", &st.behaviour)
            .field("closed", &st.closed)
            .finish()
    }
}

impl GpuSocketPeer {
    /// Starts serving the display protocol on `socket` (our end of the pair
    /// whose other end went to the back end).
    pub fn start(socket: UnixStream, config: DisplayConfig) -> std::io::Result<Self> {
        socket.set_read_timeout(Some(READ_TIMEOUT))?;
        let shared = Arc::new(PeerShared {
            state: Mutex::new(PeerState {
                messages: VecDeque::new(),
                behaviour: config.behaviour,
                config,
                acked_protocol_features: None,
                errors: Vec::new(),
                closed: false,
                stop: false,
                received: 0,
            }),
            cond: Condvar::new(),
        });
        let reader = socket.try_clone()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("testvmm-display".into())
            .spawn(move || serve(&s, reader))?;
        Ok(GpuSocketPeer {
            shared,
            socket,
            thread: Some(thread),
        })
    }

    /// The next message, waiting up to `timeout` for one.
    pub fn next_message(&self, timeout: Duration) -> Option<GpuMessage> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(m) = st.messages.pop_front() {
                return Some(m);
            }
            let now = Instant::now();
            if now >= deadline || st.closed {
                return None;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The next message of kind `kind`, discarding others, waiting up to
    /// `timeout`.
    pub fn next_message_of(&self, kind: GpuBackendReq, timeout: Duration) -> Option<GpuMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.next_message(left)?;
            if m.kind() == Some(kind) {
                return Some(m);
            }
        }
    }

    /// Takes every message received so far.
    pub fn drain(&self) -> Vec<GpuMessage> {
        self.shared.lock().messages.drain(..).collect()
    }

    /// Total messages received.
    pub fn received(&self) -> u64 {
        self.shared.lock().received
    }

    /// Changes how the display answers from now on.
    pub fn set_behaviour(&self, behaviour: DisplayBehaviour) {
        self.shared.lock().behaviour = behaviour;
        self.shared.cond.notify_all();
    }

    /// Changes the displays reported by later GET_DISPLAY_INFO answers.
    pub fn set_scanouts(&self, scanouts: Vec<ScanoutInfo>) {
        self.shared.lock().config.scanouts = scanouts;
    }

    /// Features the back end enabled with SET_PROTOCOL_FEATURES, if it did.
    pub fn acked_protocol_features(&self) -> Option<u64> {
        self.shared.lock().acked_protocol_features
    }

    /// Whether the socket is closed (the back end hung up, a malformed
    /// message arrived, or [`hang_up`](Self::hang_up) was called).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Protocol violations seen (malformed or oversized messages).
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().errors.clone()
    }

    /// Writes raw bytes to the back end (unsolicited or malformed replies).
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.socket).write_all(bytes)
    }

    /// Closes the display socket and stops the peer thread.
    pub fn hang_up(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            st.closed = true;
        }
        self.shared.cond.notify_all();
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GpuSocketPeer {
    fn drop(&mut self) {
        self.hang_up();
    }
}

/// Builds a minimal EDID 1.4 base block whose preferred (first detailed)
/// timing is `width` x `height`, with a valid checksum.
pub fn synthesize_edid(width: u32, height: u32) -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "TVM" in the packed 5-bit form, big-endian.
    let id: u16 = ((b'T' - b'@') as u16) << 10 | ((b'V' - b'@') as u16) << 5 | (b'M' - b'@') as u16;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[18] = 1;
    e[19] = 4;
    e[20] = 0x80; // digital input
    let (w, h) = (width.min(4095), height.min(4095));
    let (hblank, vblank) = (160u32, 45u32);
    let clock_10khz = ((w + hblank) * (h + vblank) * 60 / 10_000).clamp(1, u32::from(u16::MAX));
    let d = &mut e[54..72];
    d[0..2].copy_from_slice(&(clock_10khz as u16).to_le_bytes());
    d[2] = (w & 0xff) as u8;
    d[3] = (hblank & 0xff) as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8;
    d[5] = (h & 0xff) as u8;
    d[6] = (vblank & 0xff) as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8;
    let sum = e[..127].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// Reads one message. `Ok(None)` means the back end closed the socket
/// cleanly between messages.
fn read_message(sock: &UnixStream) -> std::io::Result<Option<GpuMessage>> {
    let mut hdr = [0u8; 12];
    let mut got = 0;
    let mut fd = None;
    while got < hdr.len() {
        let (n, f) = sock
            .recv_with_fd(&mut hdr[got..])
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        if f.is_some() {
            fd = f;
        }
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let field = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let size = field(8);
    if size > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message {} with a {size}-byte payload", field(0)),
        ));
    }
    let mut payload = vec![0u8; size as usize];
    (&mut &*sock).read_exact(&mut payload)?;
    Ok(Some(GpuMessage {
        request: field(0),
        flags: field(4),
        payload,
        fd,
        answered: false,
    }))
}

/// The reply body for `msg`, or `None` if the request takes no reply.
fn reply_for(msg: &GpuMessage, st: &mut PeerState) -> Option<Vec<u8>> {
    match msg.kind()? {
        GpuBackendReq::GET_PROTOCOL_FEATURES => {
            Some(st.config.protocol_features.to_ne_bytes().to_vec())
        }
        GpuBackendReq::SET_PROTOCOL_FEATURES => {
            st.acked_protocol_features = msg.set_protocol_features();
            None
        }
        GpuBackendReq::GET_DISPLAY_INFO => {
            let mut info = VirtioGpuRespDisplayInfo::default();
            info.hdr.type_ = RESP_OK_DISPLAY_INFO;
            for (slot, s) in info
                .pmodes
                .iter_mut()
                .zip(st.config.scanouts.iter().take(VIRTIO_GPU_MAX_SCANOUTS))
            {
                *slot = VirtioGpuDisplayOne {
                    r: VirtioGpuRect {
                        x: s.x,
                        y: s.y,
                        width: s.width,
                        height: s.height,
                    },
                    enabled: u32::from(s.enabled),
                    flags: 0,
                };
            }
            Some(info.as_slice().to_vec())
        }
        GpuBackendReq::GET_EDID => {
            let mut resp = VirtioGpuRespGetEdid::default();
            let scanout = msg
                .edid_request()
                .and_then(|id| st.config.scanouts.get(id as usize).copied());
            match scanout {
                Some(s) => {
                    let blob = st
                        .config
                        .edid
                        .clone()
                        .unwrap_or_else(|| synthesize_edid(s.width, s.height));
                    let n = blob.len().min(resp.edid.len());
                    resp.edid[..n].copy_from_slice(&blob[..n]);
                    resp.size = n as u32;
                    resp.hdr.type_ = RESP_OK_EDID;
                }
                None => resp.hdr.type_ = RESP_ERR_INVALID_SCANOUT_ID,
            }
            Some(resp.as_slice().to_vec())
        }
        GpuBackendReq::DMABUF_UPDATE => Some(Vec::new()),
        _ => None,
    }
}

fn send_reply(sock: &UnixStream, request: u32, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&request.to_ne_bytes());
    out.extend_from_slice(&GPU_FLAG_REPLY.to_ne_bytes());
    out.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    out.extend_from_slice(body);
    (&mut &*sock).write_all(&out)
}

/// Sleeps `d` in ticks, returning early (`false`) if asked to stop.
fn sleep_unless_stopped(shared: &PeerShared, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut st = shared.lock();
    loop {
        if st.stop {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        st = shared
            .cond
            .wait_timeout(st, deadline - now)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

fn close_with(shared: &PeerShared, error: Option<String>) {
    let mut st = shared.lock();
    if let Some(e) = error {
        st.errors.push(e);
    }
    st.closed = true;
    drop(st);
    shared.cond.notify_all();
}

/// The peer thread: read, answer per behaviour, record.
fn serve(shared: &PeerShared, sock: UnixStream) {
    let epoll = match Epoll::new().and_then(|ep| {
        ep.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(ep)
    }) {
        Ok(ep) => ep,
        Err(e) => return close_with(shared, Some(format!("epoll: {e}"))),
    };
    let mut events = [EpollEvent::default(); 1];
    loop {
        let behaviour = {
            let st = shared.lock();
            if st.stop {
                return;
            }
            st.behaviour
        };
        if behaviour == DisplayBehaviour::Stalled {
            sleep_unless_stopped(shared, TICK);
            continue;
        }
        match epoll.wait(TICK.as_millis() as i32, &mut events) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return close_with(shared, Some(format!("epoll_wait: {e}"))),
        }
        let mut msg = match read_message(&sock) {
            Ok(Some(m)) => m,
            Ok(None) => return close_with(shared, None),
            Err(e) => return close_with(shared, Some(format!("read: {e}"))),
        };
        let reply = {
            let mut st = shared.lock();
            st.received += 1;
            reply_for(&msg, &mut st)
        };
        if let Some(body) = reply {
            let send = match behaviour {
                DisplayBehaviour::Responsive => true,
                DisplayBehaviour::Delayed(d) => sleep_unless_stopped(shared, d),
                DisplayBehaviour::Silent | DisplayBehaviour::Stalled => false,
            };
            if send {
                if let Err(e) = send_reply(&sock, msg.request, &body) {
                    // The back end went away; record the message, then stop.
                    let mut st = shared.lock();
                    st.messages.push_back(msg);
                    drop(st);
                    return close_with(shared, Some(format!("reply: {e}")));
                }
                msg.answered = true;
            }
        }
        shared.lock().messages.push_back(msg);
        shared.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::message::VhostUserU64;
    use vhost::vhost_user::GpuBackend;

    fn pair(config: DisplayConfig) -> (GpuBackend, GpuSocketPeer) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            GpuBackend::from_stream(a),
            GpuSocketPeer::start(b, config).unwrap(),
        )
    }

    #[test]
    fn answers_what_the_vhost_crate_asks() {
        let (backend, peer) = pair(DisplayConfig {
            scanouts: vec![ScanoutInfo::new(800, 600), ScanoutInfo::new(1920, 1080)],
            ..DisplayConfig::default()
        });
        let f = backend.get_protocol_features().unwrap();
        assert_eq!({ f.value }, GPU_PROTOCOL_F_EDID | GPU_PROTOCOL_F_DMABUF2);
        backend
            .set_protocol_features(&VhostUserU64::new(GPU_PROTOCOL_F_EDID))
            .unwrap();
        let info = backend.get_display_info().unwrap();
        assert_eq!(info.hdr.type_, RESP_OK_DISPLAY_INFO);
        assert_eq!(info.pmodes[1].r.width, 1920);
        assert_eq!(info.pmodes[1].enabled, 1);
        assert_eq!(info.pmodes[2].enabled, 0);
        let edid = backend
            .get_edid(&VhostUserGpuEdidRequest { scanout_id: 0 })
            .unwrap();
        assert_eq!(edid.hdr.type_, RESP_OK_EDID);
        assert_eq!(edid.size, 128);
        assert_eq!(
            edid.edid[..128].iter().fold(0u8, |a, &b| a.wrapping_add(b)),
            0
        );
        let bad = backend
            .get_edid(&VhostUserGpuEdidRequest { scanout_id: 7 })
            .unwrap();
        assert_eq!(bad.hdr.type_, RESP_ERR_INVALID_SCANOUT_ID);
        backend
            .update_dmabuf_scanout(&VhostUserGpuUpdate::default())
            .unwrap();
        let upd = VhostUserGpuUpdate {
            scanout_id: 1,
            x: 2,
            y: 3,
            width: 2,
            height: 1,
        };
        backend.update_scanout(&upd, &[9u8; 8]).unwrap();
        backend
            .set_scanout(&VhostUserGpuScanout {
                scanout_id: 0,
                width: 640,
                height: 480,
            })
            .unwrap();

        let t = Duration::from_secs(2);
        assert_eq!(
            peer.next_message(t).unwrap().kind(),
            Some(GpuBackendReq::GET_PROTOCOL_FEATURES)
        );
        assert_eq!(
            peer.next_message(t).unwrap().set_protocol_features(),
            Some(GPU_PROTOCOL_F_EDID)
        );
        assert_eq!(peer.acked_protocol_features(), Some(GPU_PROTOCOL_F_EDID));
        let upd_msg = peer.next_message_of(GpuBackendReq::UPDATE, t).unwrap();
        let (u, data) = upd_msg.update().unwrap();
        assert_eq!(u, upd);
        assert_eq!(data, &[9u8; 8]);
        assert!(!upd_msg.answered);
        let s = peer.next_message(t).unwrap().scanout().unwrap();
        assert_eq!((s.width, s.height), (640, 480));
        assert!(peer.next_message(Duration::from_millis(20)).is_none());
        assert!(peer.errors().is_empty());
    }

    #[test]
    fn silent_display_records_but_does_not_answer() {
        let (backend, peer) = pair(DisplayConfig {
            behaviour: DisplayBehaviour::Silent,
            ..DisplayConfig::default()
        });
        let t = std::thread::spawn(move || backend.get_display_info().is_err());
        let m = peer
            .next_message_of(GpuBackendReq::GET_DISPLAY_INFO, Duration::from_secs(2))
            .unwrap();
        assert!(!m.answered);
        // Hanging up unblocks the back end's read with an error.
        drop(peer);
        assert!(t.join().unwrap());
    }

    #[test]
    fn delayed_display_answers_late() {
        let (backend, peer) = pair(DisplayConfig {
            behaviour: DisplayBehaviour::Delayed(Duration::from_millis(50)),
            ..DisplayConfig::default()
        });
        let start = Instant::now();
        backend.get_display_info().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
        peer.set_behaviour(DisplayBehaviour::Responsive);
        backend.get_display_info().unwrap();
        assert_eq!(peer.received(), 2);
    }

    #[test]
    fn stalled_display_blocks_the_sender_until_hang_up() {
        let (backend, mut peer) = pair(DisplayConfig {
            behaviour: DisplayBehaviour::Stalled,
            ..DisplayConfig::default()
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            let upd = VhostUserGpuUpdate {
                width: 128,
                height: 128,
                ..VhostUserGpuUpdate::default()
            };
            let pixels = vec![0u8; 128 * 128 * 4];
            let mut sent = 0u32;
            while backend.update_scanout(&upd, &pixels).is_ok() {
                sent += 1;
                let _ = tx.send(sent);
            }
            sent
        });
        // The socket buffer fills and the sender stops making progress.
        let mut last = 0;
        while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
            last = n;
            assert!(n < 10_000, "the sender never blocked");
        }
        assert!(!sender.is_finished());
        peer.hang_up();
        let sent = sender.join().unwrap();
        assert!(sent >= last);
    }

    #[test]
    fn back_end_hang_up_is_seen() {
        let (backend, peer) = pair(DisplayConfig::default());
        drop(backend);
        assert!(peer.next_message(Duration::from_secs(2)).is_none());
        assert!(peer.is_closed());
    }
}
