//! Every virtio-gpu command over a real vhost-user socket, against the
//! daemon binary: success paths, error paths and the display channel.

mod common;

use std::time::Duration;

use vhost_user_mali::testvmm::gpu_driver::*;
use vhost_user_mali::uapi::capset::{DrmCapset, CAPSET_ID_DRM};
use vhost_user_mali::uapi::native::{NativeCmdHdr, NATIVE_CMD_NOP};
use vhost_user_mali::virtio_gpu::protocol::*;
use vm_memory::{ByteValued, GuestAddress};

const HDR: usize = std::mem::size_of::<CtrlHdr>();

fn nop_cmds(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.extend_from_slice(
            NativeCmdHdr {
                cmd: NATIVE_CMD_NOP,
                len: 16,
                seqno: i,
                rsp_off: 0,
            }
            .as_slice(),
        );
    }
    v
}

#[test]
fn config_space_matches_capset_info() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let offered = g.vmm.offered_features();
    for bit in [
        VIRTIO_GPU_F_VIRGL,
        VIRTIO_GPU_F_EDID,
        VIRTIO_GPU_F_RESOURCE_UUID,
        VIRTIO_GPU_F_RESOURCE_BLOB,
        VIRTIO_GPU_F_CONTEXT_INIT,
    ] {
        assert_ne!(offered & (1 << bit), 0, "feature {bit} offered");
    }
    assert_ne!(offered & (1 << 32), 0, "VERSION_1");
    let cfg = g.vmm.get_config(0, 16).unwrap();
    let mut c = VirtioGpuConfig::default();
    c.as_mut_slice().copy_from_slice(&cfg);
    assert_eq!(c.num_scanouts, 1);
    assert_eq!(c.num_capsets, 1);
    assert_eq!(c.events_read, 0);
    // Out-of-range config reads do not crash the daemon.
    let _ = g.vmm.get_config(12, 8);
    // events_clear is accepted (nothing is pending), other writes are
    // ignored, and the read-only fields do not change.
    g.vmm.set_config(4, &1u32.to_le_bytes()).unwrap();
    g.vmm.set_config(8, &7u32.to_le_bytes()).unwrap();
    assert_eq!(g.vmm.get_config(0, 16).unwrap(), cfg);
    for i in 0..c.num_capsets {
        let r = g
            .ctrl(
                &GetCapsetInfo {
                    hdr: hdr(cmd::GET_CAPSET_INFO),
                    capset_index: i,
                    padding: 0,
                },
                64,
            )
            .unwrap();
        let info: RespCapsetInfo = resp_as(&r).unwrap();
        assert_eq!(r.len(), std::mem::size_of::<RespCapsetInfo>());
        assert_eq!(info.hdr.type_, cmd::RESP_OK_CAPSET_INFO);
        assert_eq!(info.capset_id, CAPSET_ID_DRM);
        assert_eq!(
            info.capset_max_size as usize,
            std::mem::size_of::<DrmCapset>()
        );
    }
    let r = g
        .ctrl(
            &GetCapsetInfo {
                hdr: hdr(cmd::GET_CAPSET_INFO),
                capset_index: c.num_capsets,
                padding: 0,
            },
            64,
        )
        .unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_ERR_INVALID_PARAMETER);
    assert_eq!(r.len(), HDR, "an error response is exactly a header");
    drop(g);
    common::finish(d);
}

#[test]
fn capset_announces_the_mali_context() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let req = GetCapset {
        hdr: hdr(cmd::GET_CAPSET),
        capset_id: CAPSET_ID_DRM,
        capset_version: 0,
    };
    let r = g.ctrl(&req, 4096).unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_OK_CAPSET);
    assert_eq!(r.len(), HDR + std::mem::size_of::<DrmCapset>());
    let cap: DrmCapset = resp_as(&r[HDR..]).unwrap();
    assert!(cap.is_mali_csf());
    assert_eq!(cap.gpu_id, 0xa867_0005);
    assert_eq!(cap.pad, 0);

    for (id, ver) in [(5, 0), (0, 0), (CAPSET_ID_DRM, 1), (u32::MAX, u32::MAX)] {
        let bad = GetCapset {
            capset_id: id,
            capset_version: ver,
            ..req
        };
        assert_eq!(g.ctrl_code(&bad).unwrap(), cmd::RESP_ERR_INVALID_PARAMETER);
    }
    // A response area too small for the capset gets nothing rather than a
    // truncated capset, and the queue keeps working.
    let r = g.ctrl(&req, HDR + 8).unwrap();
    assert!(r.is_empty());
    assert_eq!(g.ctrl(&req, 4096).unwrap().len(), HDR + 64);
    drop(g);
    common::finish(d);
}

#[test]
fn display_info_and_edid_headless() {
    let d = common::daemon(&["--width", "1024", "--height", "768", "--scanouts", "2"]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let info = g.display_info().unwrap();
    assert_eq!(info.hdr.type_, cmd::RESP_OK_DISPLAY_INFO);
    assert_eq!(info.pmodes[0].enabled, 1);
    assert_eq!(
        (info.pmodes[0].r.width, info.pmodes[0].r.height),
        (1024, 768)
    );
    assert_eq!(info.pmodes[1].enabled, 0);
    assert!(info.pmodes[2..].iter().all(|m| *m == DisplayOne::default()));

    for scanout in 0..2 {
        let r = g
            .ctrl(
                &GetEdid {
                    hdr: hdr(cmd::GET_EDID),
                    scanout,
                    padding: 0,
                },
                std::mem::size_of::<RespEdid>(),
            )
            .unwrap();
        let e: RespEdid = resp_as(&r).unwrap();
        assert_eq!(e.hdr.type_, cmd::RESP_OK_EDID);
        assert_eq!(e.size, 128);
        assert_eq!(&e.edid[..8], &[0, 255, 255, 255, 255, 255, 255, 0]);
        assert_eq!(e.edid[..128].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert!(e.edid[128..].iter().all(|b| *b == 0), "no stale bytes");
    }
    let bad = GetEdid {
        hdr: hdr(cmd::GET_EDID),
        scanout: 2,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&bad).unwrap(), cmd::RESP_ERR_INVALID_SCANOUT_ID);
    drop(g);

    // Without the EDID feature the command is refused.
    let mut g = common::driver(&d, 1 << VIRTIO_GPU_F_VIRGL);
    let req = GetEdid {
        hdr: hdr(cmd::GET_EDID),
        scanout: 0,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&req).unwrap(), cmd::RESP_ERR_UNSPEC);
    drop(g);
    common::finish(d);
}

/// Writes a w x h image whose pixel (x, y) is `x | y << 16` into fresh
/// guest memory, split into 4 KiB backing entries in reverse order.
fn scattered_image(g: &mut GpuDriver, w: u32, h: u32) -> Vec<(GuestAddress, u32)> {
    let bytes = (w * h * 4) as usize;
    let mut img = Vec::with_capacity(bytes);
    for y in 0..h {
        for x in 0..w {
            img.extend_from_slice(&(x | (y << 16)).to_le_bytes());
        }
    }
    let pages = bytes.div_ceil(4096);
    let base = g.alloc((pages * 4096) as u64).unwrap();
    // Backing entry i is page (pages - 1 - i) of the allocation.
    let mut ranges = Vec::new();
    for i in 0..pages {
        let page = GuestAddress(base.0 + ((pages - 1 - i) * 4096) as u64);
        let chunk = &img[i * 4096..((i + 1) * 4096).min(bytes)];
        g.vmm.write_guest(page, chunk).unwrap();
        ranges.push((page, chunk.len() as u32));
    }
    ranges
}

fn pixel(x: u32, y: u32) -> [u8; 4] {
    (x | (y << 16)).to_le_bytes()
}

#[test]
fn two_d_scanout_reaches_the_display_socket() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let peer = g.vmm.gpu_socket().unwrap();
    // GET_DISPLAY_INFO now reports what the frontend display says.
    let info = g.display_info().unwrap();
    assert_eq!(info.pmodes[0].enabled, 1);
    assert!(info.pmodes[0].r.width > 0);

    let (w, h) = (64u32, 48u32);
    assert_eq!(g.create_2d(1, w, h).unwrap(), cmd::RESP_OK_NODATA);
    let ranges = scattered_image(&mut g, w, h);
    assert_eq!(g.attach_backing(1, &ranges).unwrap(), cmd::RESP_OK_NODATA);
    let t = TransferToHost2d {
        hdr: hdr(cmd::TRANSFER_TO_HOST_2D),
        r: Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        },
        offset: 0,
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&t).unwrap(), cmd::RESP_OK_NODATA);
    let ss = SetScanout {
        hdr: hdr(cmd::SET_SCANOUT),
        r: Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        },
        scanout_id: 0,
        resource_id: 1,
    };
    assert_eq!(g.ctrl_code(&ss).unwrap(), cmd::RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::SCANOUT,
            Duration::from_secs(5),
        )
        .expect("SCANOUT message");
    let s = m.scanout().unwrap();
    assert_eq!((s.scanout_id, s.width, s.height), (0, w, h));

    let flush = ResourceFlush {
        hdr: hdr(cmd::RESOURCE_FLUSH),
        r: Rect {
            x: 8,
            y: 4,
            width: 10,
            height: 3,
        },
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&flush).unwrap(), cmd::RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::UPDATE,
            Duration::from_secs(5),
        )
        .expect("UPDATE message");
    let (u, data) = m.update().unwrap();
    assert_eq!((u.x, u.y, u.width, u.height), (8, 4, 10, 3));
    assert_eq!(data.len(), 10 * 3 * 4);
    for row in 0..3 {
        for col in 0..10 {
            let off = (row * 10 + col) * 4;
            assert_eq!(&data[off..off + 4], &pixel(8 + col as u32, 4 + row as u32));
        }
    }

    // A partial transfer with the rectangle's own offset updates only it.
    let new_px = 0xdead_beefu32.to_le_bytes();
    let (x, y) = (5u32, 7u32);
    let off = u64::from(y * w * 4 + x * 4);
    // Find the guest page that holds `off` (entries are 4 KiB, in order).
    let (page, _) = ranges[(off / 4096) as usize];
    g.vmm
        .write_guest(GuestAddress(page.0 + off % 4096), &new_px)
        .unwrap();
    let t1 = TransferToHost2d {
        r: Rect {
            x,
            y,
            width: 1,
            height: 1,
        },
        offset: off,
        ..t
    };
    assert_eq!(g.ctrl_code(&t1).unwrap(), cmd::RESP_OK_NODATA);
    let f1 = ResourceFlush {
        r: Rect {
            x,
            y,
            width: 1,
            height: 1,
        },
        ..flush
    };
    assert_eq!(g.ctrl_code(&f1).unwrap(), cmd::RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::UPDATE,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(m.update().unwrap().1, &new_px);

    // Unref disables the scanout.
    let unref = ResourceOnly {
        hdr: hdr(cmd::RESOURCE_UNREF),
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&unref).unwrap(), cmd::RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::SCANOUT,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(m.scanout().unwrap().width, 0);
    drop(g);
    common::finish(d);
}

#[test]
fn two_d_errors() {
    let d = common::daemon(&["--max-2d-memory", "1"]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let c2d = |id, format, width, height| ResourceCreate2d {
        hdr: hdr(cmd::RESOURCE_CREATE_2D),
        resource_id: id,
        format,
        width,
        height,
    };
    let fmt = format::B8G8R8A8_UNORM;
    use cmd::*;
    for (req, want) in [
        (c2d(0, fmt, 4, 4), RESP_ERR_INVALID_RESOURCE_ID),
        (c2d(1, 0, 4, 4), RESP_ERR_INVALID_PARAMETER),
        (c2d(1, fmt, 0, 4), RESP_ERR_INVALID_PARAMETER),
        (c2d(1, fmt, 65535, 65535), RESP_ERR_INVALID_PARAMETER),
        (c2d(1, fmt, u32::MAX, u32::MAX), RESP_ERR_INVALID_PARAMETER),
        (c2d(1, fmt, 1024, 1024), RESP_ERR_OUT_OF_MEMORY), // 4 MiB > 1 MiB quota
        (c2d(1, fmt, 16, 16), RESP_OK_NODATA),
        (c2d(1, fmt, 16, 16), RESP_ERR_INVALID_RESOURCE_ID),
    ] {
        assert_eq!(g.ctrl_code(&req).unwrap(), want, "{req:?}");
    }
    let rect = Rect {
        x: 0,
        y: 0,
        width: 16,
        height: 16,
    };
    // Commands naming a missing resource.
    let t = TransferToHost2d {
        hdr: hdr(TRANSFER_TO_HOST_2D),
        r: rect,
        offset: 0,
        resource_id: 9,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&t).unwrap(), RESP_ERR_INVALID_RESOURCE_ID);
    let ro = |type_, id| ResourceOnly {
        hdr: hdr(type_),
        resource_id: id,
        padding: 0,
    };
    for c in [
        RESOURCE_UNREF,
        RESOURCE_DETACH_BACKING,
        RESOURCE_ASSIGN_UUID,
    ] {
        assert_eq!(
            g.ctrl_code(&ro(c, 9)).unwrap(),
            RESP_ERR_INVALID_RESOURCE_ID
        );
    }
    // Transfer without backing, then with a backing too small.
    let t = TransferToHost2d {
        resource_id: 1,
        ..t
    };
    assert_eq!(g.ctrl_code(&t).unwrap(), RESP_ERR_UNSPEC);
    let mem = g.alloc(4096).unwrap();
    assert_eq!(g.attach_backing(1, &[(mem, 512)]).unwrap(), RESP_OK_NODATA);
    assert_eq!(g.attach_backing(1, &[(mem, 512)]).unwrap(), RESP_ERR_UNSPEC);
    assert_eq!(g.ctrl_code(&t).unwrap(), RESP_ERR_INVALID_PARAMETER);
    // Rectangles outside the resource, with overflow.
    for r in [
        Rect {
            x: 1,
            y: 0,
            width: 16,
            height: 1,
        },
        Rect {
            x: u32::MAX,
            y: 0,
            width: 2,
            height: 1,
        },
        Rect {
            x: 0,
            y: 8,
            width: 1,
            height: u32::MAX,
        },
    ] {
        let t2 = TransferToHost2d { r, ..t };
        assert_eq!(g.ctrl_code(&t2).unwrap(), RESP_ERR_INVALID_PARAMETER);
        let ss = SetScanout {
            hdr: hdr(SET_SCANOUT),
            r,
            scanout_id: 0,
            resource_id: 1,
        };
        assert_eq!(g.ctrl_code(&ss).unwrap(), RESP_ERR_INVALID_PARAMETER);
        let f = ResourceFlush {
            hdr: hdr(RESOURCE_FLUSH),
            r,
            resource_id: 1,
            padding: 0,
        };
        assert_eq!(g.ctrl_code(&f).unwrap(), RESP_ERR_INVALID_PARAMETER);
    }
    // Offset that wraps.
    let t3 = TransferToHost2d {
        offset: u64::MAX - 3,
        r: Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        },
        ..t
    };
    assert_eq!(g.ctrl_code(&t3).unwrap(), RESP_ERR_INVALID_PARAMETER);
    // Scanout ids.
    for id in [1u32, 16, u32::MAX] {
        let ss = SetScanout {
            hdr: hdr(SET_SCANOUT),
            r: rect,
            scanout_id: id,
            resource_id: 1,
        };
        assert_eq!(g.ctrl_code(&ss).unwrap(), RESP_ERR_INVALID_SCANOUT_ID);
    }
    assert_eq!(
        g.ctrl_code(&ro(RESOURCE_DETACH_BACKING, 1)).unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(
        g.ctrl_code(&ro(RESOURCE_DETACH_BACKING, 1)).unwrap(),
        RESP_ERR_UNSPEC
    );
    // Unknown command codes.
    assert_eq!(g.ctrl_code(&hdr(0x0199)).unwrap(), RESP_ERR_UNSPEC);
    assert_eq!(g.ctrl_code(&hdr(0)).unwrap(), RESP_ERR_UNSPEC);
    drop(g);
    common::finish(d);
}

#[test]
fn uuid_map_blob_and_blob_scanout() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let peer = g.vmm.gpu_socket().unwrap();
    use cmd::*;
    let (w, h) = (32u32, 8u32);
    let ranges = scattered_image(&mut g, w, h);
    let blob = |id, blob_mem, size, n: usize| {
        let req = ResourceCreateBlob {
            hdr: hdr(RESOURCE_CREATE_BLOB),
            resource_id: id,
            blob_mem,
            blob_flags: VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE,
            nr_entries: n as u32,
            blob_id: 0,
            size,
        };
        let mut tail = Vec::new();
        for (a, l) in &ranges[..n] {
            tail.extend_from_slice(
                MemEntry {
                    addr: a.0,
                    length: *l,
                    padding: 0,
                }
                .as_slice(),
            );
        }
        with_tail(&req, &tail)
    };
    let size = u64::from(w * h * 4);
    assert_eq!(
        g.ctrl_code_bytes(&blob(7, VIRTIO_GPU_BLOB_MEM_GUEST, size, ranges.len()))
            .unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(
        g.ctrl_code_bytes(&blob(8, VIRTIO_GPU_BLOB_MEM_HOST3D, size, ranges.len()))
            .unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        g.ctrl_code_bytes(&blob(8, VIRTIO_GPU_BLOB_MEM_GUEST, size + 1, ranges.len()))
            .unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        g.ctrl_code_bytes(&blob(8, VIRTIO_GPU_BLOB_MEM_GUEST, 0, 1))
            .unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    // UUIDs are stable per resource and distinct between resources.
    let ro = |type_, id| ResourceOnly {
        hdr: hdr(type_),
        resource_id: id,
        padding: 0,
    };
    let u1: RespResourceUuid = resp_as(&g.ctrl(&ro(RESOURCE_ASSIGN_UUID, 7), 64).unwrap()).unwrap();
    let u2: RespResourceUuid = resp_as(&g.ctrl(&ro(RESOURCE_ASSIGN_UUID, 7), 64).unwrap()).unwrap();
    assert_eq!(u1.hdr.type_, RESP_OK_RESOURCE_UUID);
    assert_eq!(u1.uuid, u2.uuid);
    assert_eq!(g.create_2d(9, 4, 4).unwrap(), RESP_OK_NODATA);
    let u3: RespResourceUuid = resp_as(&g.ctrl(&ro(RESOURCE_ASSIGN_UUID, 9), 64).unwrap()).unwrap();
    assert_ne!(u1.uuid, u3.uuid);
    // No host-visible region: mapping is refused cleanly.
    let map = ResourceMapBlob {
        hdr: hdr(RESOURCE_MAP_BLOB),
        resource_id: 7,
        padding: 0,
        offset: 0,
    };
    assert_eq!(g.ctrl_code(&map).unwrap(), RESP_ERR_UNSPEC);
    assert_eq!(
        g.ctrl_code(&ro(RESOURCE_UNMAP_BLOB, 7)).unwrap(),
        RESP_ERR_UNSPEC
    );
    assert_eq!(
        g.ctrl_code(&ResourceMapBlob {
            resource_id: 99,
            ..map
        })
        .unwrap(),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    // Scan the blob out and flush part of it.
    let sb = SetScanoutBlob {
        hdr: hdr(SET_SCANOUT_BLOB),
        r: Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        },
        scanout_id: 0,
        resource_id: 7,
        width: w,
        height: h,
        format: format::B8G8R8X8_UNORM,
        padding: 0,
        strides: [w * 4, 0, 0, 0],
        offsets: [0; 4],
    };
    assert_eq!(g.ctrl_code(&sb).unwrap(), RESP_OK_NODATA);
    let too_big = SetScanoutBlob {
        height: h + 1,
        ..sb
    };
    assert_eq!(g.ctrl_code(&too_big).unwrap(), RESP_ERR_INVALID_PARAMETER);
    let flush = ResourceFlush {
        hdr: hdr(RESOURCE_FLUSH),
        r: Rect {
            x: 30,
            y: 6,
            width: 2,
            height: 2,
        },
        resource_id: 7,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&flush).unwrap(), RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::UPDATE,
            Duration::from_secs(5),
        )
        .expect("UPDATE");
    let (u, data) = m.update().unwrap();
    assert_eq!((u.x, u.y, u.width, u.height), (30, 6, 2, 2));
    assert_eq!(&data[..4], &pixel(30, 6));
    assert_eq!(&data[12..16], &pixel(31, 7));
    drop(g);

    // Blobs need RESOURCE_BLOB.
    let mut g = common::driver(&d, COMPAT_GPU_FEATURES);
    let mut req = blob(1, VIRTIO_GPU_BLOB_MEM_GUEST, 4096, 1);
    // The ranges belong to the previous connection's memory; the command
    // is refused before they matter.
    req.truncate(std::mem::size_of::<ResourceCreateBlob>());
    assert_eq!(g.ctrl_code_bytes(&req).unwrap(), RESP_ERR_UNSPEC);
    drop(g);
    common::finish(d);
}

#[test]
fn contexts_and_submit_framing() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    use cmd::*;
    assert_eq!(
        g.ctx_create(1, CAPSET_ID_DRM, "full").unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(g.ctx_create(2, 0, "implicit").unwrap(), RESP_OK_NODATA);
    assert_eq!(
        g.ctx_create(1, CAPSET_ID_DRM, "dup").unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        g.ctx_create(0, CAPSET_ID_DRM, "zero").unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        g.ctx_create(3, 5, "venus?").unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        g.ctx_create(3, 0x106, "flags").unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    let mut long = CtxCreate {
        hdr: ctx_hdr(CTX_CREATE, 3),
        nlen: 65,
        ..Default::default()
    };
    assert_eq!(g.ctrl_code(&long).unwrap(), RESP_ERR_INVALID_PARAMETER);
    long.nlen = 64;
    assert_eq!(g.ctrl_code(&long).unwrap(), RESP_OK_NODATA);

    // Resources attach to contexts.
    assert_eq!(g.create_buffer(1, 10, 4096).unwrap(), RESP_OK_NODATA);
    let att = |ctx, id, type_| ResourceOnly {
        hdr: ctx_hdr(type_, ctx),
        resource_id: id,
        padding: 0,
    };
    assert_eq!(
        g.ctrl_code(&att(1, 10, CTX_ATTACH_RESOURCE)).unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(
        g.ctrl_code(&att(9, 10, CTX_ATTACH_RESOURCE)).unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        g.ctrl_code(&att(1, 11, CTX_ATTACH_RESOURCE)).unwrap(),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        g.ctrl_code(&att(1, 10, CTX_DETACH_RESOURCE)).unwrap(),
        RESP_OK_NODATA
    );

    // SUBMIT_3D framing.
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &nop_cmds(3)).unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 9), &nop_cmds(1)).unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    let mut bad = nop_cmds(2);
    bad[4..8].copy_from_slice(&12u32.to_le_bytes()); // length below a header
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &bad).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    let mut bad = nop_cmds(1);
    bad[0..4].copy_from_slice(&0x7777u32.to_le_bytes()); // unknown command
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &bad).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &[]).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    // A size field larger than the bytes present.
    let lying = CmdSubmit {
        hdr: ctx_hdr(SUBMIT_3D, 1),
        size: 4096,
        num_in_fences: 0,
    };
    assert_eq!(
        g.ctrl_code_bytes(&with_tail(&lying, &nop_cmds(1))).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    let huge = CmdSubmit {
        size: u32::MAX,
        ..lying
    };
    assert_eq!(g.ctrl_code(&huge).unwrap(), RESP_ERR_OUT_OF_MEMORY);
    // A header without the size fields.
    assert_eq!(
        g.ctrl_code(&ctx_hdr(SUBMIT_3D, 1)).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    // A command buffer larger than the part read with the size fields
    // (80 000 bytes: 1250 NOPs of 64 bytes) is read in full; one byte
    // short of its last NOP is a framing error.
    let many: Vec<u8> = (0..1250u32)
        .flat_map(|i| {
            let mut nop = NativeCmdHdr {
                cmd: NATIVE_CMD_NOP,
                len: 64,
                seqno: i,
                rsp_off: 0,
            }
            .as_slice()
            .to_vec();
            nop.resize(64, 0);
            nop
        })
        .collect();
    assert_eq!(g.submit_3d(ctx_hdr(0, 1), &many).unwrap(), RESP_OK_NODATA);
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &many[..many.len() - 1]).unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );

    // 3D transfers of a buffer validate their box.
    let mem = g.alloc(4096).unwrap();
    assert_eq!(
        g.attach_backing(10, &[(mem, 4096)]).unwrap(),
        RESP_OK_NODATA
    );
    let t = TransferHost3d {
        hdr: ctx_hdr(TRANSFER_TO_HOST_3D, 1),
        box_: Box3d {
            x: 0,
            y: 0,
            z: 0,
            w: 4096,
            h: 1,
            d: 1,
        },
        resource_id: 10,
        ..Default::default()
    };
    assert_eq!(g.ctrl_code(&t).unwrap(), RESP_OK_NODATA);
    let from = TransferHost3d {
        hdr: ctx_hdr(TRANSFER_FROM_HOST_3D, 1),
        ..t
    };
    assert_eq!(g.ctrl_code(&from).unwrap(), RESP_OK_NODATA);
    let mut outside = t;
    outside.box_.x = 1;
    assert_eq!(g.ctrl_code(&outside).unwrap(), RESP_ERR_INVALID_PARAMETER);
    outside.box_.x = u32::MAX;
    assert_eq!(g.ctrl_code(&outside).unwrap(), RESP_ERR_INVALID_PARAMETER);
    // Only buffers exist as 3D resources.
    let tex = ResourceCreate3d {
        hdr: ctx_hdr(RESOURCE_CREATE_3D, 1),
        resource_id: 11,
        target: 2,
        width: 16,
        height: 16,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    assert_eq!(g.ctrl_code(&tex).unwrap(), RESP_ERR_INVALID_PARAMETER);

    // Destroy.
    assert_eq!(
        g.ctrl_code(&ctx_hdr(CTX_DESTROY, 1)).unwrap(),
        RESP_OK_NODATA
    );
    assert_eq!(
        g.ctrl_code(&ctx_hdr(CTX_DESTROY, 1)).unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &nop_cmds(1)).unwrap(),
        RESP_ERR_INVALID_CONTEXT_ID
    );
    drop(g);

    // Compat mode: no CONTEXT_INIT, so only capset 0 is accepted, and
    // without VIRGL no 3D command is.
    let mut g = common::driver(&d, COMPAT_GPU_FEATURES);
    assert_eq!(
        g.ctx_create(1, CAPSET_ID_DRM, "x").unwrap(),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(g.ctx_create(1, 0, "compat").unwrap(), RESP_OK_NODATA);
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &nop_cmds(1)).unwrap(),
        RESP_OK_NODATA
    );
    drop(g);
    let mut g = common::driver(&d, 0);
    assert_eq!(g.ctx_create(1, 0, "2d-only").unwrap(), RESP_ERR_UNSPEC);
    assert_eq!(g.create_buffer(0, 1, 16).unwrap(), RESP_ERR_UNSPEC);
    drop(g);
    common::finish(d);
}

#[test]
fn cursor_queue() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let peer = g.vmm.gpu_socket().unwrap();
    let _ = g.display_info().unwrap();
    assert_eq!(g.create_2d(5, 64, 64).unwrap(), cmd::RESP_OK_NODATA);
    let mem = g.alloc(64 * 64 * 4).unwrap();
    assert_eq!(
        g.attach_backing(5, &[(mem, 64 * 64 * 4)]).unwrap(),
        cmd::RESP_OK_NODATA
    );
    let cur = |type_, scanout_id, resource_id| UpdateCursor {
        hdr: hdr(type_),
        pos: CursorPos {
            scanout_id,
            x: 10,
            y: 20,
            padding: 0,
        },
        resource_id,
        hot_x: 1,
        hot_y: 2,
        padding: 0,
    };
    use vhost::vhost_user::gpu_message::GpuBackendReq;
    // The Linux driver gives cursor commands no response buffer.
    let r = g
        .raw(CURSORQ, cur(cmd::UPDATE_CURSOR, 0, 5).as_slice(), 0)
        .unwrap();
    assert!(r.is_empty());
    let m = peer
        .next_message_of(GpuBackendReq::CURSOR_UPDATE, Duration::from_secs(5))
        .expect("cursor update");
    let (c, img) = m.cursor_update().unwrap();
    assert_eq!((c.pos.x, c.pos.y, c.hot_x, c.hot_y), (10, 20, 1, 2));
    assert_eq!(img.len(), 64 * 64 * 4);
    let r = g
        .raw(CURSORQ, cur(cmd::MOVE_CURSOR, 0, 0).as_slice(), HDR)
        .unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_OK_NODATA);
    assert!(peer
        .next_message_of(GpuBackendReq::CURSOR_POS, Duration::from_secs(5))
        .is_some());
    for (req, want) in [
        (
            cur(cmd::MOVE_CURSOR, 7, 0),
            cmd::RESP_ERR_INVALID_SCANOUT_ID,
        ),
        (
            cur(cmd::UPDATE_CURSOR, 0, 99),
            cmd::RESP_ERR_INVALID_RESOURCE_ID,
        ),
        (cur(cmd::GET_DISPLAY_INFO, 0, 0), cmd::RESP_ERR_UNSPEC),
    ] {
        let r = g.raw(CURSORQ, req.as_slice(), HDR).unwrap();
        assert_eq!(resp_type(&r), want);
    }
    // Cursor commands on the control queue are refused.
    assert_eq!(
        g.ctrl_code(&cur(cmd::MOVE_CURSOR, 0, 0)).unwrap(),
        cmd::RESP_ERR_INVALID_PARAMETER
    );
    drop(g);
    common::finish(d);
}
