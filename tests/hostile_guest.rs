//! A hostile guest, over the real socket: malformed descriptor chains,
//! out-of-range indices and sizes, random requests, dead displays, and
//! resource and connection soaks. After every attack the daemon must still
//! answer, must not spin, and must not have panicked (checked when each
//! test stops it).
//!
//! The bug classes are those of the project's hardening reference; each
//! test names the class it covers.

mod common;

use std::time::{Duration, Instant};

use vhost_user_mali::testvmm::cpu::cpu_ticks_during;
use vhost_user_mali::testvmm::gpu_driver::*;
use vhost_user_mali::testvmm::{Buf, DisplayBehaviour, DisplayConfig, VmmConfig};
use vhost_user_mali::virtio_gpu::protocol::*;
use vm_memory::{ByteValued, GuestAddress};

const HDR: usize = std::mem::size_of::<CtrlHdr>();
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// What the harness fills response buffers with before a request.
const POISON: u8 = 0x5a;

/// The device still answers a normal request on the control queue.
fn still_answers(g: &mut GpuDriver) {
    let info = g.display_info().expect("device still answers");
    assert_eq!(info.hdr.type_, cmd::RESP_OK_DISPLAY_INFO);
}

/// Class 8: chains the device cannot use are consumed and answered, and the
/// queue keeps working.
#[test]
fn malformed_chains_are_consumed_and_answered() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let t = Duration::from_secs(5);
    let req = g.alloc(4096).unwrap();
    g.vmm
        .write_guest(req, hdr(cmd::GET_DISPLAY_INFO).as_slice())
        .unwrap();
    let resp = g.alloc(4096).unwrap();

    // No writable descriptor: nothing can be answered, but the chain
    // returns with length 0.
    let q = g.vmm.queue(CONTROLQ);
    let h = q.add_chain(&[Buf::readable(req, HDR as u32)]).unwrap();
    q.kick_always().unwrap();
    let u = q.wait_for(h, t).expect("returned");
    assert_eq!(u.len, 0);

    // No readable descriptor: an ERR_UNSPEC answer.
    let h = q.add_chain(&[Buf::writable(resp, 64)]).unwrap();
    q.kick_always().unwrap();
    let u = q.wait_for(h, t).expect("returned");
    assert_eq!(u.len as usize, HDR);
    let r = g.vmm.read_guest(resp, HDR).unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_ERR_UNSPEC);

    // A header split over three descriptors is a valid request.
    let q = g.vmm.queue(CONTROLQ);
    let h = q
        .add_chain(&[
            Buf::readable(req, 5),
            Buf::readable(GuestAddress(req.0 + 5), 11),
            Buf::readable(GuestAddress(req.0 + 16), 8),
            Buf::writable(resp, 408),
        ])
        .unwrap();
    q.kick_always().unwrap();
    assert_eq!(q.wait_for(h, t).unwrap().len, 408);

    // A readable descriptor outside guest memory.
    let h = q
        .add_chain(&[
            Buf::readable(GuestAddress(1 << 40), 24),
            Buf::writable(resp, 64),
        ])
        .unwrap();
    q.kick_always().unwrap();
    assert!(q.wait_for(h, t).is_some());
    // A writable descriptor whose end wraps the address space.
    let h = q
        .add_chain(&[
            Buf::readable(req, HDR as u32),
            Buf::writable(GuestAddress(u64::MAX - 8), 64),
        ])
        .unwrap();
    q.kick_always().unwrap();
    assert_eq!(q.wait_for(h, t).unwrap().len, 0);
    // A request shorter than a header.
    let h = q
        .add_chain(&[Buf::readable(req, 4), Buf::writable(resp, 64)])
        .unwrap();
    q.kick_always().unwrap();
    assert_eq!(q.wait_for(h, t).unwrap().len as usize, HDR);
    still_answers(&mut g);

    // Raw descriptors: a loop (next points at itself), zero lengths, an
    // indirect table with a bad length and a nested indirect.
    let size = g.vmm.queue(CONTROLQ).size();
    let table = g.alloc(4096).unwrap();
    let q = g.vmm.queue(CONTROLQ);
    q.reset_bookkeeping();
    let base = size - 8;
    q.write_raw_descriptor(base, req.0, HDR as u32, F_NEXT, base)
        .unwrap();
    q.write_raw_descriptor(base + 1, req.0, 0, F_NEXT, base + 2)
        .unwrap();
    q.write_raw_descriptor(base + 2, resp.0, 0, F_WRITE, 0)
        .unwrap();
    q.write_raw_descriptor(base + 3, table.0, 15, F_INDIRECT, 0)
        .unwrap();
    q.write_raw_descriptor_at(table, table.0, 32, F_INDIRECT, 0)
        .unwrap();
    q.write_raw_descriptor(base + 4, table.0, 16, F_INDIRECT, 0)
        .unwrap();
    // A next index beyond the table.
    q.write_raw_descriptor(base + 5, req.0, HDR as u32, F_NEXT, 0xffff)
        .unwrap();
    for head in [base, base + 1, base + 3, base + 4, base + 5] {
        q.push_raw_avail(head).unwrap();
    }
    q.kick_always().unwrap();
    let used = q.wait_used_many(5, t);
    assert_eq!(used.len(), 5, "every bad chain returned: {used:?}");
    q.reset_bookkeeping();
    still_answers(&mut g);

    // A head index outside the queue cannot be returned; the daemon logs it
    // and keeps serving.
    let q = g.vmm.queue(CONTROLQ);
    q.push_raw_avail(size + 3).unwrap();
    q.kick_always().unwrap();
    assert!(q.wait_used(Duration::from_millis(300)).is_none());
    q.reset_bookkeeping();
    still_answers(&mut g);
    drop(g);
    common::finish(d);
}

/// Class 8: an avail index the device cannot trust breaks only that queue:
/// no spinning, and the next connection works.
#[test]
fn wild_avail_index_does_not_spin() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    still_answers(&mut g);
    let q = g.vmm.queue(CONTROLQ);
    let idx = q.avail_idx();
    q.set_avail_idx_raw(idx.wrapping_add(5000)).unwrap();
    q.kick_always().unwrap();
    let ticks =
        cpu_ticks_during(d.pid().unwrap(), "vring_worker", Duration::from_millis(500)).unwrap();
    assert!(ticks <= 5, "worker used {ticks} ticks in 500 ms: spinning");
    // Kicking again re-checks once and stops again.
    g.vmm.queue(CONTROLQ).kick_always().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(g);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    still_answers(&mut g);
    drop(g);
    let log = common::finish(d);
    assert!(log.contains("is broken"), "the broken queue is logged");
}

/// Classes 2 and 3: responses never carry bytes the device did not mean to
/// write, and never spill past the writable area.
#[test]
fn responses_are_exact_and_bounded() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    // A response area too small for the answer gets nothing at all.
    let p = g
        .vmm
        .submit(CONTROLQ, hdr(cmd::GET_DISPLAY_INFO).as_slice(), 100)
        .unwrap();
    let area = p.response;
    g.vmm.kick(CONTROLQ).unwrap();
    let r = g.vmm.complete(p, Duration::from_secs(5)).unwrap();
    assert!(r.is_empty());
    let mem = g.vmm.read_guest(area, 100).unwrap();
    assert!(mem.iter().all(|b| *b == POISON), "nothing written");
    // A larger area than needed: only the response is written, the rest
    // keeps the poison.
    let p = g
        .vmm
        .submit(CONTROLQ, hdr(cmd::GET_DISPLAY_INFO).as_slice(), 1000)
        .unwrap();
    let area = p.response;
    g.vmm.kick(CONTROLQ).unwrap();
    let r = g.vmm.complete(p, Duration::from_secs(5)).unwrap();
    assert_eq!(r.len(), std::mem::size_of::<RespDisplayInfo>());
    let mem = g.vmm.read_guest(area, 1000).unwrap();
    assert!(mem[r.len()..].iter().all(|b| *b == POISON));
    // Error responses are a clean header: no stray flags or padding.
    let mut req = hdr(0x0999);
    req.padding = [0xff; 3];
    req.ctx_id = 77;
    let r = g.ctrl(&req, 64).unwrap();
    let h = resp_hdr(&r).unwrap();
    assert_eq!(
        h,
        CtrlHdr {
            type_: cmd::RESP_ERR_UNSPEC,
            ..CtrlHdr::default()
        }
    );
    drop(g);
    common::finish(d);
}

/// Class 1 and 6: index and size fields at their extremes.
#[test]
fn extreme_fields_are_refused() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    use cmd::*;
    // Backing lists: too many entries, entries missing, wrapping and
    // out-of-memory addresses.
    assert_eq!(g.create_2d(1, 16, 16).unwrap(), RESP_OK_NODATA);
    let attach = |n| ResourceAttachBacking {
        hdr: hdr(RESOURCE_ATTACH_BACKING),
        resource_id: 1,
        nr_entries: n,
    };
    assert_eq!(
        g.ctrl_code(&attach(u32::MAX)).unwrap(),
        RESP_ERR_OUT_OF_MEMORY
    );
    assert_eq!(g.ctrl_code(&attach(16385)).unwrap(), RESP_ERR_OUT_OF_MEMORY);
    assert_eq!(g.ctrl_code(&attach(4)).unwrap(), RESP_ERR_INVALID_PARAMETER);
    for (addr, len) in [(u64::MAX - 100, 4096u32), (1 << 44, 4096), (0, 0)] {
        assert_eq!(
            g.attach_backing(1, &[(GuestAddress(addr), len)]).unwrap(),
            RESP_ERR_INVALID_PARAMETER,
            "{addr:#x}+{len:#x}"
        );
    }
    // Blob sizes and scanout geometry that would overflow.
    let mem = g.alloc(8192).unwrap();
    let mut blob = with_tail(
        &ResourceCreateBlob {
            hdr: hdr(RESOURCE_CREATE_BLOB),
            resource_id: 2,
            blob_mem: VIRTIO_GPU_BLOB_MEM_GUEST,
            blob_flags: 0,
            nr_entries: 1,
            blob_id: 0,
            size: u64::MAX,
        },
        MemEntry {
            addr: mem.0,
            length: 8192,
            padding: 0,
        }
        .as_slice(),
    );
    assert_eq!(
        g.ctrl_code_bytes(&blob).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    blob[48..56].copy_from_slice(&8192u64.to_le_bytes());
    assert_eq!(g.ctrl_code_bytes(&blob).unwrap(), RESP_OK_NODATA);
    let sb = SetScanoutBlob {
        hdr: hdr(SET_SCANOUT_BLOB),
        r: Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        },
        scanout_id: 0,
        resource_id: 2,
        width: u32::MAX,
        height: u32::MAX,
        format: format::B8G8R8X8_UNORM,
        padding: 0,
        strides: [u32::MAX, 0, 0, 0],
        offsets: [u32::MAX, 0, 0, 0],
    };
    assert_eq!(g.ctrl_code(&sb).unwrap(), RESP_ERR_INVALID_PARAMETER);
    let sb2 = SetScanoutBlob {
        scanout_id: u32::MAX,
        ..sb
    };
    assert_eq!(g.ctrl_code(&sb2).unwrap(), RESP_ERR_INVALID_SCANOUT_ID);
    let map = ResourceMapBlob {
        hdr: hdr(RESOURCE_MAP_BLOB),
        resource_id: 2,
        padding: 0,
        offset: u64::MAX,
    };
    assert_eq!(g.ctrl_code(&map).unwrap(), RESP_ERR_UNSPEC);
    // Context ids and rings.
    assert_eq!(g.ctx_create(u32::MAX, 6, "max").unwrap(), RESP_OK_NODATA);
    let mut h = fenced(SUBMIT_3D, u32::MAX, 1, Some(64));
    let r = g.submit_3d(h, &[0u8; 16]).unwrap();
    assert_eq!(r, RESP_ERR_INVALID_PARAMETER);
    h.ring_idx = 255;
    assert_eq!(
        g.submit_3d(h, &[0u8; 16]).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    drop(g);
    common::finish(d);
}

/// A small deterministic generator for the random-request test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Classes 1, 3, 5, 6: thousands of random requests, some well-formed
/// headers with random bodies, some pure noise. Every one is answered and
/// the daemon survives.
#[test]
fn random_requests_are_all_answered() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let codes: Vec<u32> = (0x100..=0x10d)
        .chain(0x200..=0x209)
        .chain([0x300, 0x301, 0, 0xffff_ffff])
        .collect();
    let mut answered = 0;
    for i in 0..3000 {
        let len = (rng.next() % 200) as usize;
        let mut req: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= HDR && i % 4 != 0 {
            let code = codes[(rng.next() % codes.len() as u64) as usize];
            req[0..4].copy_from_slice(&code.to_le_bytes());
            // Small ids make hits on live objects likely.
            req[16..20].copy_from_slice(&((rng.next() % 4) as u32).to_le_bytes());
            if len >= 28 {
                req[24..28].copy_from_slice(&((rng.next() % 4) as u32).to_le_bytes());
            }
        }
        let queue = if i % 10 == 0 { CURSORQ } else { CONTROLQ };
        let resp_len = (rng.next() % 2048) as usize;
        let empty = req.is_empty() && resp_len == 0;
        if empty {
            continue;
        }
        g.raw(queue, &req, resp_len)
            .expect("every request is answered");
        answered += 1;
    }
    assert!(answered > 2500);
    still_answers(&mut g);
    drop(g);
    common::finish(d);
}

/// Class 12: a display frontend that stops answering or stops reading never
/// stalls the queues.
#[test]
fn dead_display_does_not_stall_queues() {
    for behaviour in [DisplayBehaviour::Silent, DisplayBehaviour::Stalled] {
        let d = common::daemon(&[]);
        let mut g = common::driver(&d, ALL_GPU_FEATURES);
        let cfg = DisplayConfig {
            behaviour,
            ..DisplayConfig::default()
        };
        let _peer = g.vmm.gpu_socket_with(cfg).unwrap();
        let start = Instant::now();
        still_answers(&mut g);
        assert!(start.elapsed() < Duration::from_secs(2));
        // Many full-screen flushes to a display that takes nothing: the
        // daemon drops what the display cannot take instead of queueing
        // copies of every frame.
        let (w, h) = (1024u32, 768u32);
        let bytes = w * h * 4;
        assert_eq!(g.create_2d(1, w, h).unwrap(), cmd::RESP_OK_NODATA);
        let mem = g.alloc(u64::from(bytes)).unwrap();
        assert_eq!(
            g.attach_backing(1, &[(mem, bytes)]).unwrap(),
            cmd::RESP_OK_NODATA
        );
        let full = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        let ss = SetScanout {
            hdr: hdr(cmd::SET_SCANOUT),
            r: full,
            scanout_id: 0,
            resource_id: 1,
        };
        assert_eq!(g.ctrl_code(&ss).unwrap(), cmd::RESP_OK_NODATA);
        let flush = ResourceFlush {
            hdr: hdr(cmd::RESOURCE_FLUSH),
            r: full,
            resource_id: 1,
            padding: 0,
        };
        let rss0 = d.rss_kib().unwrap();
        let start = Instant::now();
        for _ in 0..200 {
            assert_eq!(g.ctrl_code(&flush).unwrap(), cmd::RESP_OK_NODATA);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "flushes took {:?}",
            start.elapsed()
        );
        let rss1 = d.rss_kib().unwrap();
        assert!(
            rss1 < rss0 + 64 * 1024,
            "{behaviour:?}: RSS grew from {rss0} KiB to {rss1} KiB holding frames"
        );
        drop(g);
        // The connection ends even though the display thread may be stuck.
        let mut g = common::driver(&d, ALL_GPU_FEATURES);
        still_answers(&mut g);
        drop(g);
        common::finish(d);
    }
}

/// Class 12: a kick before the memory table is set is ignored, not fatal.
#[test]
fn kick_without_memory_table() {
    let d = common::daemon(&[]);
    let g = GpuDriver::connect_with(
        &d.socket,
        VmmConfig::default()
            .with_device_features(ALL_GPU_FEATURES)
            .without_mem_table(),
    );
    drop(g);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    still_answers(&mut g);
    drop(g);
    common::finish(d);
}

/// Class 4 and 5: create/destroy loops, objects destroyed while in use, and
/// many connections; memory, descriptors and threads stay flat.
#[test]
fn soak_resources_and_connections() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    use cmd::*;
    let mem = g.alloc(64 * 64 * 4).unwrap();
    let warm = |g: &mut GpuDriver, rounds: u32| {
        for i in 0..rounds {
            let id = 100 + (i % 7);
            assert_eq!(g.create_2d(id, 64, 64).unwrap(), RESP_OK_NODATA);
            assert_eq!(
                g.attach_backing(id, &[(mem, 64 * 64 * 4)]).unwrap(),
                RESP_OK_NODATA
            );
            assert_eq!(g.ctx_create(id, 0, "soak").unwrap(), RESP_OK_NODATA);
            let att = ResourceOnly {
                hdr: ctx_hdr(CTX_ATTACH_RESOURCE, id),
                resource_id: id,
                padding: 0,
            };
            assert_eq!(g.ctrl_code(&att).unwrap(), RESP_OK_NODATA);
            let ss = SetScanout {
                hdr: hdr(SET_SCANOUT),
                r: Rect {
                    x: 0,
                    y: 0,
                    width: 64,
                    height: 64,
                },
                scanout_id: 0,
                resource_id: id,
            };
            assert_eq!(g.ctrl_code(&ss).unwrap(), RESP_OK_NODATA);
            // Unref while attached to a context and scanned out, then
            // destroy the context that still lists it.
            let unref = ResourceOnly {
                hdr: hdr(RESOURCE_UNREF),
                resource_id: id,
                padding: 0,
            };
            assert_eq!(g.ctrl_code(&unref).unwrap(), RESP_OK_NODATA);
            assert_eq!(
                g.ctrl_code(&ctx_hdr(CTX_DESTROY, id)).unwrap(),
                RESP_OK_NODATA
            );
        }
    };
    warm(&mut g, 200);
    let rss0 = d.rss_kib().unwrap();
    warm(&mut g, 2000);
    let rss1 = d.rss_kib().unwrap();
    assert!(
        rss1 < rss0 + 2048,
        "RSS grew from {rss0} KiB to {rss1} KiB over 2000 create/destroy rounds"
    );
    drop(g);

    // Connections: descriptors and threads return to where they were.
    let cycle = |d: &vhost_user_mali::testvmm::gpu_driver::DaemonProcess| {
        let mut g = common::driver(d, ALL_GPU_FEATURES);
        assert_eq!(g.create_2d(1, 32, 32).unwrap(), RESP_OK_NODATA);
        assert_eq!(g.ctx_create(1, 0, "c").unwrap(), RESP_OK_NODATA);
        drop(g);
    };
    for _ in 0..5 {
        cycle(&d);
    }
    std::thread::sleep(Duration::from_millis(200));
    let fds0 = d.open_fds().unwrap();
    let threads0 = d.threads().unwrap();
    let rss0 = d.rss_kib().unwrap();
    for _ in 0..300 {
        cycle(&d);
    }
    std::thread::sleep(Duration::from_millis(200));
    let fds1 = d.open_fds().unwrap();
    let threads1 = d.threads().unwrap();
    let rss1 = d.rss_kib().unwrap();
    assert_eq!(fds1, fds0, "file descriptors leak across connections");
    assert_eq!(threads1, threads0, "threads leak across connections");
    assert!(rss1 < rss0 + 4096, "RSS grew from {rss0} to {rss1} KiB");
    common::finish(d);
}
