//! Fences on the global timeline and on context rings, device reset,
//! memory-table changes, disconnect and reconnect, and SIGTERM — over the
//! real socket against the daemon binary.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use vhost_user_mali::testvmm::gpu_driver::*;
use vhost_user_mali::uapi::native::{NativeCmdHdr, NATIVE_CMD_NOP};
use vhost_user_mali::virtio_gpu::protocol::*;
use vm_memory::{ByteValued, GuestAddress};

const HDR: usize = std::mem::size_of::<CtrlHdr>();

fn nop() -> Vec<u8> {
    NativeCmdHdr {
        cmd: NATIVE_CMD_NOP,
        len: 16,
        seqno: 0,
        rsp_off: 0,
    }
    .as_slice()
    .to_vec()
}

fn submit_bytes(h: CtrlHdr) -> Vec<u8> {
    let mut h = h;
    h.type_ = cmd::SUBMIT_3D;
    let data = nop();
    with_tail(
        &CmdSubmit {
            hdr: h,
            size: data.len() as u32,
            num_in_fences: 0,
        },
        &data,
    )
}

#[test]
fn fenced_responses_echo_fence_context_and_ring() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    assert_eq!(g.ctx_create(3, 6, "rings").unwrap(), cmd::RESP_OK_NODATA);
    let r = g
        .raw(CONTROLQ, &submit_bytes(fenced(0, 3, 41, Some(7))), HDR)
        .unwrap();
    let h = resp_hdr(&r).unwrap();
    assert_eq!(h.type_, cmd::RESP_OK_NODATA);
    assert_eq!(
        h.flags,
        VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX
    );
    assert_eq!((h.fence_id, h.ctx_id, h.ring_idx), (41, 3, 7));
    // A global-timeline fence.
    let r = g
        .raw(
            CONTROLQ,
            fenced(cmd::GET_DISPLAY_INFO, 0, 42, None).as_slice(),
            408,
        )
        .unwrap();
    let h = resp_hdr(&r).unwrap();
    assert_eq!(
        (h.type_, h.flags, h.fence_id),
        (cmd::RESP_OK_DISPLAY_INFO, VIRTIO_GPU_FLAG_FENCE, 42)
    );
    // An error still completes its fence.
    let r = g
        .raw(CONTROLQ, &submit_bytes(fenced(0, 99, 43, Some(0))), HDR)
        .unwrap();
    let h = resp_hdr(&r).unwrap();
    assert_eq!(
        (h.type_, h.fence_id),
        (cmd::RESP_ERR_INVALID_CONTEXT_ID, 43)
    );
    drop(g);

    // Without CONTEXT_INIT a ring index is refused, and fences use the
    // global timeline.
    let mut g = common::driver(&d, COMPAT_GPU_FEATURES);
    assert_eq!(g.ctx_create(1, 0, "compat").unwrap(), cmd::RESP_OK_NODATA);
    let r = g
        .raw(CONTROLQ, &submit_bytes(fenced(0, 1, 1, Some(1))), HDR)
        .unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_ERR_INVALID_PARAMETER);
    let r = g
        .raw(CONTROLQ, &submit_bytes(fenced(0, 1, 2, None)), HDR)
        .unwrap();
    let h = resp_hdr(&r).unwrap();
    assert_eq!(
        (h.type_, h.flags, h.fence_id),
        (cmd::RESP_OK_NODATA, VIRTIO_GPU_FLAG_FENCE, 2)
    );
    drop(g);
    common::finish(d);
}

/// Many fenced commands on several rings in one kick: every one completes,
/// and on each ring fences complete in increasing order.
#[test]
fn fence_order_on_several_rings() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    for ctx in [1, 2] {
        assert_eq!(g.ctx_create(ctx, 6, "rings").unwrap(), cmd::RESP_OK_NODATA);
    }
    let mut next_fence: HashMap<(u32, Option<u8>), u64> = HashMap::new();
    let mut pending = Vec::new();
    for i in 0..96u32 {
        let ctx = 1 + i % 2;
        let ring = match i % 3 {
            0 => Some(0),
            1 => Some(63),
            _ => None,
        };
        let f = next_fence.entry((ctx, ring)).or_insert(0);
        *f += 1;
        let req = submit_bytes(fenced(0, ctx, *f, ring));
        pending.push(g.vmm.submit(CONTROLQ, &req, HDR).unwrap());
    }
    g.vmm.kick(CONTROLQ).unwrap();
    let used = g
        .vmm
        .queue(CONTROLQ)
        .wait_used_many(96, Duration::from_secs(10));
    assert_eq!(used.len(), 96, "every fenced chain completes");
    // Read each response in used-ring order and check per-timeline order.
    let by_head: HashMap<u16, GuestAddress> =
        pending.iter().map(|p| (p.head, p.response)).collect();
    let mut last: HashMap<(u32, Option<u8>), u64> = HashMap::new();
    for u in &used {
        let addr = by_head[&(u.id as u16)];
        let h = resp_hdr(&g.vmm.read_guest(addr, HDR).unwrap()).unwrap();
        assert_eq!(h.type_, cmd::RESP_OK_NODATA);
        let ring = (h.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0).then_some(h.ring_idx);
        // Without a ring, the timeline is global, not per context.
        let key = if ring.is_some() {
            (h.ctx_id, ring)
        } else {
            (0, None)
        };
        let prev = last.insert(key, h.fence_id);
        if ring.is_some() {
            assert!(
                prev.is_none_or(|p| p < h.fence_id),
                "ring {key:?} out of order"
            );
        }
    }
    g.vmm.queue(CONTROLQ).reset_bookkeeping();
    drop(g);
    common::finish(d);
}

/// A device reset (the frontend stopping the queues, as QEMU does on a
/// guest reboot) frees the previous boot's objects on the same connection.
#[test]
fn device_reset_frees_the_previous_boot() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    assert_eq!(g.create_2d(1, 16, 16).unwrap(), cmd::RESP_OK_NODATA);
    assert_eq!(g.ctx_create(1, 6, "before").unwrap(), cmd::RESP_OK_NODATA);
    assert_eq!(
        g.create_2d(1, 16, 16).unwrap(),
        cmd::RESP_ERR_INVALID_RESOURCE_ID
    );
    for q in 0..2 {
        g.vmm.stop_queue(q).unwrap();
    }
    for q in 0..2 {
        g.vmm.queue(q).reset_bookkeeping();
        g.vmm.start_queue(q).unwrap();
    }
    // The new boot can use the same ids again.
    assert_eq!(g.create_2d(1, 16, 16).unwrap(), cmd::RESP_OK_NODATA);
    assert_eq!(g.ctx_create(1, 6, "after").unwrap(), cmd::RESP_OK_NODATA);
    drop(g);
    let log = common::finish(d);
    assert!(log.contains("device reset: freed 1 resources and 1 contexts"));
}

/// A new memory table re-points 2D backing at the new mapping.
#[test]
fn memory_table_change_keeps_2d_working() {
    let d = common::daemon(&[]);
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let peer = g.vmm.gpu_socket().unwrap();
    let _ = g.display_info().unwrap();
    assert_eq!(g.create_2d(1, 8, 8).unwrap(), cmd::RESP_OK_NODATA);
    let mem = g.alloc(4096).unwrap();
    assert_eq!(
        g.attach_backing(1, &[(mem, 256)]).unwrap(),
        cmd::RESP_OK_NODATA
    );
    let full = Rect {
        x: 0,
        y: 0,
        width: 8,
        height: 8,
    };
    let ss = SetScanout {
        hdr: hdr(cmd::SET_SCANOUT),
        r: full,
        scanout_id: 0,
        resource_id: 1,
    };
    assert_eq!(g.ctrl_code(&ss).unwrap(), cmd::RESP_OK_NODATA);
    g.vmm.set_mem_table_again().unwrap();
    g.vmm.write_guest(mem, &[0xab; 256]).unwrap();
    let t = TransferToHost2d {
        hdr: hdr(cmd::TRANSFER_TO_HOST_2D),
        r: full,
        offset: 0,
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&t).unwrap(), cmd::RESP_OK_NODATA);
    let f = ResourceFlush {
        hdr: hdr(cmd::RESOURCE_FLUSH),
        r: full,
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&f).unwrap(), cmd::RESP_OK_NODATA);
    let m = peer
        .next_message_of(
            vhost::vhost_user::gpu_message::GpuBackendReq::UPDATE,
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(m.update().unwrap().1.iter().all(|b| *b == 0xab));
    drop(g);
    common::finish(d);
}

/// Connection after connection: each starts from a clean device, and
/// SIGTERM stops the daemon cleanly while a frontend is connected.
#[test]
fn reconnect_and_sigterm() {
    let d = common::daemon(&[]);
    for round in 0..3 {
        let mut g = common::driver(&d, ALL_GPU_FEATURES);
        // Same ids each time: nothing survives a connection.
        assert_eq!(
            g.create_2d(1, 16, 16).unwrap(),
            cmd::RESP_OK_NODATA,
            "round {round}"
        );
        assert_eq!(g.ctx_create(1, 6, "r").unwrap(), cmd::RESP_OK_NODATA);
        g.vmm.disconnect().unwrap();
    }
    // Stop it with a frontend still attached.
    let mut g = common::driver(&d, ALL_GPU_FEATURES);
    let _ = g.display_info().unwrap();
    let log = common::finish(d);
    assert!(
        log.contains("daemon stopped after 4 connection(s)"),
        "{log}"
    );
    // The frontend sees the connection go away rather than hanging.
    assert!(g.display_info().is_err());
}

/// A second daemon refuses a socket that is being served.
#[test]
fn socket_in_use_is_refused() {
    let d = common::daemon(&[]);
    let out = std::process::Command::new(common::binary())
        .arg("--socket-path")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another process is serving this socket"),
        "{err}"
    );
    common::finish(d);
}
