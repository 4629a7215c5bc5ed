//! The test VMM against the echo back end, over real unix sockets.
//!
//! Every wait has a short timeout so a broken case fails fast.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::gpu_message::{GpuBackendReq, VhostUserGpuScanout};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_user_mali::testvmm::cpu::cpu_ticks_during;
use vhost_user_mali::testvmm::echo::{echo_config_pattern, ECHO_CONFIG_SIZE};
use vhost_user_mali::testvmm::{
    spawn_echo_daemon, spawn_echo_daemon_with, Buf, EchoConfig, EchoDaemon, Error, MemoryLayout,
    TestVmm, VmmConfig, F_EVENT_IDX, F_INDIRECT_DESC, F_PROTOCOL_FEATURES, F_VERSION_1,
};
use vhost_user_mali::testvmm::{DisplayConfig, ScanoutInfo};
use vm_memory::GuestAddress;

const T: Duration = Duration::from_secs(2);

/// A private directory for sockets, removed on drop.
struct SockDir(PathBuf);

impl SockDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "testvmm-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        SockDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("echo.sock")
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(name: &str, config: VmmConfig) -> (SockDir, EchoDaemon, TestVmm) {
    let dir = SockDir::new(name);
    let daemon = spawn_echo_daemon(dir.sock()).unwrap();
    let vmm = TestVmm::connect(dir.sock(), config).unwrap();
    (dir, daemon, vmm)
}

#[test]
fn handshake_negotiates_transport_and_protocol_features() {
    let (_dir, daemon, vmm) = start("handshake", VmmConfig::default());
    let want = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | F_PROTOCOL_FEATURES;
    assert_eq!(vmm.features(), want);
    assert_eq!(daemon.backend().acked_features(), want);
    let pf = vmm.protocol_features();
    assert!(pf.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(pf.contains(VhostUserProtocolFeatures::REPLY_ACK));
    assert!(pf.contains(VhostUserProtocolFeatures::MQ));
    assert!(vmm.need_reply());
    assert_eq!(vmm.num_queues(), 2);
}

#[test]
fn request_round_trip_returns_exactly_what_was_written() {
    let (_dir, _daemon, mut vmm) = start("roundtrip", VmmConfig::default());
    assert_eq!(vmm.request(0, b"hello", 64, T).unwrap(), b"hello");
    // A short response buffer truncates the echo.
    assert_eq!(vmm.request(0, b"truncate me", 8, T).unwrap(), b"truncate");
    // The cursor queue echoes too.
    assert_eq!(vmm.request(1, &[7u8; 300], 300, T).unwrap(), vec![7u8; 300]);
    // A request with no writable part completes with length 0.
    assert_eq!(vmm.request(0, b"x", 0, T).unwrap(), b"");
    // Many sequential round trips recycle the I/O arena and descriptors.
    for i in 0..1000u32 {
        let msg = i.to_le_bytes();
        assert_eq!(vmm.request(0, &msg, 4, T).unwrap(), msg);
    }
    assert_eq!(vmm.queue(0).free_descriptors(), 256);
}

#[test]
fn sixty_four_requests_in_flight_per_kick() {
    let (_dir, daemon, mut vmm) = start("inflight", VmmConfig::default());
    for round in 0..10u8 {
        let pending: Vec<_> = (0..64u8)
            .map(|i| vmm.submit(0, &[round, i, 0xab], 16).unwrap())
            .collect();
        assert_eq!(vmm.queue(0).in_flight(), 64);
        vmm.kick(0).unwrap();
        // Collect in reverse order: completions for others are stashed.
        for (i, p) in pending.into_iter().enumerate().rev() {
            assert_eq!(vmm.complete(p, T).unwrap(), [round, i as u8, 0xab]);
        }
        assert_eq!(vmm.queue(0).in_flight(), 0);
    }
    assert_eq!(daemon.stats().chains, 640);
    assert_eq!(daemon.stats().bad_chains, 0);
}

#[test]
fn indirect_descriptors_are_echoed() {
    let (_dir, daemon, mut vmm) = start("indirect", VmmConfig::default());
    let a = vmm.alloc(3, 1).unwrap();
    let b = vmm.alloc(5, 1).unwrap();
    let out1 = vmm.alloc(4, 1).unwrap();
    let out2 = vmm.alloc(16, 1).unwrap();
    vmm.write_guest(a, b"abc").unwrap();
    vmm.write_guest(b, b"defgh").unwrap();
    let q = vmm.queue(0);
    let head = q
        .add_indirect_chain(&[
            Buf::readable(a, 3),
            Buf::readable(b, 5),
            Buf::writable(out1, 4),
            Buf::writable(out2, 16),
        ])
        .unwrap();
    assert_eq!(q.free_descriptors(), 255);
    q.kick().unwrap();
    let used = q.wait_used(T).unwrap();
    assert_eq!((used.id, used.len), (u32::from(head), 8));
    assert_eq!(vmm.read_guest(out1, 4).unwrap(), b"abcd");
    assert_eq!(vmm.read_guest(out2, 4).unwrap(), b"efgh");
    assert_eq!(daemon.stats().bad_chains, 0);
}

fn pipelined_traffic(vmm: &mut TestVmm, batches: usize, per_batch: usize) {
    for batch in 0..batches {
        let pending: Vec<_> = (0..per_batch)
            .map(|i| {
                let bytes = ((batch * per_batch + i) as u32).to_le_bytes();
                (bytes, vmm.submit(0, &bytes, 4).unwrap())
            })
            .collect();
        vmm.kick(0).unwrap();
        for (bytes, p) in pending {
            assert_eq!(vmm.complete(p, T).unwrap(), bytes);
        }
    }
}

#[test]
fn event_idx_on() {
    let (_dir, daemon, mut vmm) = start("evidx-on", VmmConfig::default());
    assert!(vmm.queue(0).event_idx());
    pipelined_traffic(&mut vmm, 50, 17);
    let s = daemon.stats();
    assert_eq!(s.chains, 50 * 17);
    // With EVENT_IDX the device signals at most once per wake-up.
    assert!(s.notifications <= s.events, "{s:?}");
}

#[test]
fn event_idx_off() {
    let (_dir, daemon, mut vmm) = start("evidx-off", VmmConfig::default().without_event_idx());
    assert_eq!(vmm.features() & F_EVENT_IDX, 0);
    assert!(!vmm.queue(0).event_idx());
    pipelined_traffic(&mut vmm, 50, 17);
    assert_eq!(daemon.stats().chains, 50 * 17);
}

#[test]
fn config_space_get_and_set() {
    let (_dir, _daemon, mut vmm) = start("config", VmmConfig::default());
    let pattern = echo_config_pattern();
    assert_eq!(vmm.get_config(0, ECHO_CONFIG_SIZE as u32).unwrap(), pattern);
    assert_eq!(vmm.get_config(8, 4).unwrap(), &pattern[8..12]);
    vmm.set_config(4, &[0xee, 0xff]).unwrap();
    assert_eq!(
        vmm.get_config(3, 4).unwrap(),
        [pattern[3], 0xee, 0xff, pattern[6]]
    );
    // Out of range: the back end answers with an empty payload.
    // Out of range: the back end refuses, and the connection survives.
    let t0 = Instant::now();
    let r = vmm.get_config(60, 8);
    assert!(
        matches!(
            r,
            Err(Error::Rejected {
                op: "GET_CONFIG",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(vmm.get_config(0, 1).unwrap(), [pattern[0]]);
    assert_eq!(vmm.request(0, b"still", 5, T).unwrap(), b"still");
}

#[test]
fn config_needs_the_protocol_feature() {
    let config = VmmConfig::default().with_protocol_features(VhostUserProtocolFeatures::REPLY_ACK);
    let (_dir, _daemon, mut vmm) = start("noconfig", config);
    assert!(matches!(vmm.get_config(0, 4), Err(Error::NotNegotiated(_))));
    // Without MQ and CONFIG the data path still works.
    assert_eq!(vmm.request(0, b"ok", 2, T).unwrap(), b"ok");
}

#[test]
fn disconnect_then_reconnect_to_a_new_daemon() {
    let dir = SockDir::new("reconnect");
    let mut first = spawn_echo_daemon(dir.sock()).unwrap();
    let mut vmm = TestVmm::connect(dir.sock(), VmmConfig::default()).unwrap();
    for _ in 0..3 {
        vmm.request(0, b"q0", 2, T).unwrap();
    }
    vmm.request(1, b"q1", 2, T).unwrap();
    assert_eq!(vmm.disconnect().unwrap(), vec![3, 1]);
    first.wait(T).unwrap();

    let second = spawn_echo_daemon(dir.sock()).unwrap();
    let mut vmm = TestVmm::connect(dir.sock(), VmmConfig::default()).unwrap();
    assert_eq!(vmm.request(0, b"again", 5, T).unwrap(), b"again");
    assert_eq!(second.stats().chains, 1);
    drop(vmm);
    drop(second);
}

#[test]
fn stop_and_restart_a_queue_resumes_at_the_base() {
    let (_dir, _daemon, mut vmm) = start("restart", VmmConfig::default());
    vmm.request(0, b"a", 1, T).unwrap();
    vmm.request(0, b"b", 1, T).unwrap();
    assert_eq!(vmm.stop_queue(0).unwrap(), 2);
    // While stopped, nothing completes, and the wait is bounded.
    let p = vmm.submit(0, b"c", 1).unwrap();
    vmm.queue(0).kick_always().unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        vmm.complete(p, Duration::from_millis(50)),
        Err(Error::Timeout { queue: 0, .. })
    ));
    assert!(t0.elapsed() < Duration::from_secs(1));
    vmm.start_queue(0).unwrap();
    // The device resumes at base 2 and finds the pending request.
    assert_eq!(vmm.complete(p, T).unwrap(), b"c");
}

#[test]
fn chains_straddling_memory_regions() {
    let mib = 1u64 << 20;
    // Two regions with a hole: descriptors of one chain in different regions.
    let mut config =
        VmmConfig::default().with_memory(MemoryLayout::split(&[4 * mib, 4 * mib], 64 << 10));
    config.io_arena_size = mib;
    let (_dir, daemon, mut vmm) = start("straddle-hole", config);
    let in0 = vmm.alloc_in_region(0, 4, 8).unwrap();
    let in1 = vmm.alloc_in_region(1, 4, 8).unwrap();
    let out1 = vmm.alloc_in_region(1, 5, 8).unwrap();
    let out0 = vmm.alloc_in_region(0, 3, 8).unwrap();
    assert!(in1.0 >= 4 * mib + (64 << 10));
    vmm.write_guest(in0, b"0123").unwrap();
    vmm.write_guest(in1, b"4567").unwrap();
    let q = vmm.queue(0);
    q.add_chain(&[
        Buf::readable(in0, 4),
        Buf::readable(in1, 4),
        Buf::writable(out1, 5),
        Buf::writable(out0, 3),
    ])
    .unwrap();
    q.kick().unwrap();
    assert_eq!(q.wait_used(T).unwrap().len, 8);
    assert_eq!(vmm.read_guest(out1, 5).unwrap(), b"01234");
    assert_eq!(vmm.read_guest(out0, 3).unwrap(), b"567");

    // A buffer running into the hole is malformed: completed with length 0.
    let edge = GuestAddress(4 * mib - 4);
    let out = vmm.alloc(8, 8).unwrap();
    let q = vmm.queue(0);
    let head = q
        .add_chain(&[Buf::readable(edge, 8), Buf::writable(out, 8)])
        .unwrap();
    q.kick().unwrap();
    let used = q.wait_used(T).unwrap();
    assert_eq!((used.id, used.len), (u32::from(head), 0));
    assert_eq!(daemon.stats().bad_chains, 1);
    // The queue keeps working afterwards.
    assert_eq!(vmm.request(0, b"fine", 4, T).unwrap(), b"fine");
}

#[test]
fn buffer_straddling_adjacent_regions() {
    let mib = 1u64 << 20;
    let mut config = VmmConfig::default().with_memory(MemoryLayout::split(&[2 * mib, 2 * mib], 0));
    config.io_arena_size = mib / 2;
    let (_dir, daemon, mut vmm) = start("straddle-adjacent", config);
    let input = GuestAddress(2 * mib - 16);
    let data: Vec<u8> = (0..32u8).collect();
    vmm.write_guest(input, &data).unwrap();
    let out = vmm.alloc_in_region(1, 32, 8).unwrap();
    let q = vmm.queue(1);
    q.add_chain(&[Buf::readable(input, 32), Buf::writable(out, 32)])
        .unwrap();
    q.kick().unwrap();
    assert_eq!(q.wait_used(T).unwrap().len, 32);
    assert_eq!(vmm.read_guest(out, 32).unwrap(), data);
    assert_eq!(daemon.stats().bad_chains, 0);
}

#[test]
fn memory_table_can_be_sent_again() {
    let (_dir, _daemon, mut vmm) = start("memtable", VmmConfig::default());
    vmm.request(0, b"before", 6, T).unwrap();
    vmm.set_mem_table_again().unwrap();
    assert_eq!(vmm.request(0, b"after", 5, T).unwrap(), b"after");
}

#[test]
fn memory_table_can_come_late() {
    let (_dir, _daemon, mut vmm) = start("latemem", VmmConfig::default().without_mem_table());
    // The control plane works without guest memory; queues need it.
    assert!(vmm.get_config(0, 4).is_ok());
    vmm.set_mem_table_again().unwrap();
    vmm.start_queue(0).unwrap();
    assert_eq!(vmm.request(0, b"late", 4, T).unwrap(), b"late");
}

#[test]
fn raw_bad_head_does_not_wedge_the_echo() {
    let (_dir, _daemon, mut vmm) = start("rawhead", VmmConfig::default());
    let q = vmm.queue(0);
    q.push_raw_avail(1000).unwrap();
    q.kick_always().unwrap();
    // A head outside the table cannot be returned; nothing completes.
    assert!(q.wait_used(Duration::from_millis(50)).is_none());
    assert_eq!(vmm.request(0, b"alive", 5, T).unwrap(), b"alive");
}

#[test]
fn a_wild_avail_index_breaks_only_its_queue_and_nothing_spins() {
    let (_dir, daemon, mut vmm) = start("wildidx", VmmConfig::default());
    vmm.request(0, b"a", 1, T).unwrap();
    let q = vmm.queue(0);
    let idx = q.avail_idx().wrapping_add(1000);
    q.set_avail_idx_raw(idx).unwrap();
    q.kick_always().unwrap();
    let window = Duration::from_millis(300);
    let used = cpu_ticks_during(std::process::id(), "vring_worker", window).unwrap();
    // 300 ms is 30 ticks at 100 Hz; a spinning worker would use them all.
    assert!(used < 15, "{used} ticks of CPU in 300 ms");
    assert!(daemon.stats().bad_rings >= 1);
    // The other queue is unaffected.
    assert_eq!(vmm.request(1, b"b", 1, T).unwrap(), b"b");
}

#[test]
fn gpu_socket_reaches_the_back_end_and_the_display_answers() {
    let (_dir, daemon, mut vmm) = start("gpusock", VmmConfig::default());
    let peer = vmm
        .gpu_socket_with(DisplayConfig {
            scanouts: vec![ScanoutInfo::new(1280, 800), ScanoutInfo::new(640, 480)],
            ..DisplayConfig::default()
        })
        .unwrap();
    let display = daemon.backend().display().expect("socket handed over");
    let info = display.get_display_info().unwrap();
    assert_eq!(
        (info.pmodes[0].r.width, info.pmodes[0].r.height),
        (1280, 800)
    );
    assert_eq!(info.pmodes[1].enabled, 1);
    display
        .set_scanout(&VhostUserGpuScanout {
            scanout_id: 1,
            width: 640,
            height: 480,
        })
        .unwrap();
    let m = peer.next_message_of(GpuBackendReq::SCANOUT, T).unwrap();
    assert_eq!(m.scanout().unwrap().scanout_id, 1);
    // The data path is unaffected.
    assert_eq!(vmm.request(0, b"x", 1, T).unwrap(), b"x");
}

#[test]
fn refused_gpu_socket_is_reported() {
    let dir = SockDir::new("gpusock-refused");
    let _daemon = spawn_echo_daemon_with(
        dir.sock(),
        EchoConfig {
            accept_gpu_socket: false,
            ..EchoConfig::default()
        },
    )
    .unwrap();
    let mut vmm = TestVmm::connect(dir.sock(), VmmConfig::default()).unwrap();
    match vmm.gpu_socket() {
        Err(Error::Rejected { op, .. }) => assert_eq!(op, "GPU_SET_SOCKET"),
        other => panic!("unexpected {other:?}"),
    }
    // vhost-user-backend drops the connection after any refused request.
    assert!(vmm.stop_queue(0).is_err());
}

#[test]
fn connect_gives_up_when_nobody_listens() {
    let dir = SockDir::new("nobody");
    let t0 = Instant::now();
    let r = TestVmm::connect(
        dir.sock(),
        VmmConfig::default().with_connect_timeout(Duration::from_millis(100)),
    );
    assert!(matches!(r, Err(Error::Connect { .. })));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_silent_back_end_times_out_the_control_plane() {
    let dir = SockDir::new("silent");
    let listener = std::os::unix::net::UnixListener::bind(dir.sock()).unwrap();
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let t0 = Instant::now();
    let r = TestVmm::connect(
        dir.sock(),
        VmmConfig::default().with_control_timeout(Duration::from_millis(100)),
    );
    assert!(
        matches!(
            r,
            Err(Error::ControlTimeout {
                op: "GET_FEATURES",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    drop(holder.join().unwrap());
}

#[test]
fn asynchronous_mode_without_need_reply() {
    let (_dir, _daemon, mut vmm) = start("noack", VmmConfig::default().without_need_reply());
    assert!(!vmm.need_reply());
    assert_eq!(vmm.request(0, b"async", 5, T).unwrap(), b"async");
}

#[test]
fn single_queue_small_ring() {
    let dir = SockDir::new("small");
    let _daemon = spawn_echo_daemon_with(
        dir.sock(),
        EchoConfig {
            num_queues: 1,
            ..EchoConfig::default()
        },
    )
    .unwrap();
    // Asking for more queues than the device has fails cleanly.
    let err = TestVmm::connect(dir.sock(), VmmConfig::default().with_queues(2)).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");

    let dir = SockDir::new("small2");
    let _daemon = spawn_echo_daemon_with(
        dir.sock(),
        EchoConfig {
            num_queues: 1,
            ..EchoConfig::default()
        },
    )
    .unwrap();
    let mut vmm = TestVmm::connect(
        dir.sock(),
        VmmConfig::default().with_queues(1).with_queue_size(8),
    )
    .unwrap();
    // Wrap the ring indexes many times.
    for i in 0..100u32 {
        // Each request takes two descriptors: four fill the ring.
        let pending: Vec<_> = (0..4u32)
            .map(|j| vmm.submit(0, &(i * 4 + j).to_le_bytes(), 4).unwrap())
            .collect();
        assert!(matches!(
            vmm.submit(0, b"no room", 8),
            Err(Error::QueueFull { .. })
        ));
        vmm.kick(0).unwrap();
        for (j, p) in pending.into_iter().enumerate() {
            assert_eq!(
                vmm.complete(p, T).unwrap(),
                (i * 4 + j as u32).to_le_bytes()
            );
        }
    }
}
