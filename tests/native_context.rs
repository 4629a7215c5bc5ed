//! The native context over the real socket: every command with its error
//! cases, response memory, asynchronous work, fences on rings and the
//! global timeline, faults, timeouts, lifecycle and quotas, in full and
//! compat mode.

mod common;

use std::time::{Duration, Instant};

use vhost_user_mali::gpu::cs::{AsyncOp, Builder, Cond, SyncCond, SyncScope};
use vhost_user_mali::testvmm::gpu_driver::*;
use vhost_user_mali::uapi::codec::{encode, CommandWriter};
use vhost_user_mali::uapi::example;
use vhost_user_mali::uapi::native::errno::*;
use vhost_user_mali::uapi::native::*;
use vhost_user_mali::virtio_gpu::protocol::*;
use vm_memory::{ByteValued, GuestAddress};

const HDR: usize = std::mem::size_of::<CtrlHdr>();
const WAIT: Duration = Duration::from_secs(10);

const RES_RSP: u32 = 1;
const RES_DATA: u32 = 2;
const RES_KERNEL: u32 = 3;
const RSP_SIZE: u64 = 16 << 10;
const DATA_SIZE: u64 = 64 << 10;
const KERNEL_SIZE: u64 = 256 << 10;
const DATA_VA: u64 = 0x100_0000;

/// One native context of a test: the driver, the context id and where its
/// memory lives in the guest.
struct Native {
    g: GpuDriver,
    ctx: u32,
    full: bool,
    rsp: GuestAddress,
    data: GuestAddress,
    seqno: u32,
}

fn submit_req(h: CtrlHdr, data: &[u8]) -> Vec<u8> {
    let mut h = h;
    h.type_ = cmd::SUBMIT_3D;
    let req = CmdSubmit {
        hdr: h,
        size: data.len() as u32,
        num_in_fences: 0,
    };
    with_tail(&req, data)
}

fn stream(build: impl FnOnce(&mut Builder)) -> Vec<u8> {
    let mut b = Builder::new();
    build(&mut b);
    b.to_bytes().expect("stream builds")
}

fn store(b: &mut Builder, at: u64, value: u32) {
    b.move48(0, at);
    b.move32(2, value);
    b.store_multiple(2, 1, 0, 0);
}

fn endless(b: &mut Builder) {
    let top = b.label_here();
    b.add_imm32(2, 2, 1);
    b.move32(3, 1);
    b.branch_to(Cond::Ne, 3, top);
}

impl Native {
    /// A context with response memory, a data BO (handle 1) mapped at
    /// DATA_VA in VM 1, and kernel memory for VM 1.
    fn new(g: GpuDriver, ctx: u32, full: bool) -> Native {
        let mut n = Native::bare(g, ctx, full);
        let rid = |r: u32| ctx * 16 + r;
        n.resource(rid(RES_DATA), DATA_SIZE, true);
        n.resource(rid(RES_KERNEL), KERNEL_SIZE, false);
        let rets = n.run(&[
            encode(
                &VmCreateReq {
                    flags: 0,
                    id: 1,
                    user_va_range: 0,
                },
                0,
                0,
            ),
            encode(
                &BoCreateReq {
                    res_id: rid(RES_DATA),
                    flags: 0,
                    exclusive_vm_id: 0,
                    handle: 1,
                },
                0,
                0,
            ),
            encode(
                &BoCreateReq {
                    res_id: rid(RES_KERNEL),
                    flags: 0,
                    exclusive_vm_id: 1,
                    handle: 2,
                },
                0,
                0,
            ),
            encode(
                &VmAddKernelMemoryReq {
                    vm_id: 1,
                    bo_handle: 2,
                },
                0,
                0,
            ),
            bind_cmd(1, 0, &[map_op(1, 0, DATA_VA, DATA_SIZE)], &[]),
        ]);
        assert!(rets.iter().all(|&r| r == 0), "setup failed: {rets:?}");
        n
    }

    /// A context with only its response memory registered.
    fn bare(mut g: GpuDriver, ctx: u32, full: bool) -> Native {
        let capset = if full { 6 } else { 0 };
        assert_eq!(g.ctx_create(ctx, capset, "t").unwrap(), cmd::RESP_OK_NODATA);
        let mut n = Native {
            g,
            ctx,
            full,
            rsp: GuestAddress(0),
            data: GuestAddress(0),
            seqno: 0,
        };
        n.rsp = n.resource(ctx * 16 + RES_RSP, RSP_SIZE, false);
        let init = encode(
            &InitReq {
                rsp_res_id: ctx * 16 + RES_RSP,
                num_rings: 64,
                rsp_size: RSP_SIZE,
            },
            1,
            0x40,
        );
        assert_eq!(n.submit(&init, None), cmd::RESP_OK_NODATA);
        n.seqno = 1;
        n
    }

    fn resource(&mut self, id: u32, size: u64, data: bool) -> GuestAddress {
        let (code, addr) = if self.full {
            self.g.create_guest_blob(self.ctx, id, size).unwrap()
        } else {
            self.g
                .create_backed_buffer(self.ctx, id, size as u32)
                .unwrap()
        };
        assert_eq!(code, cmd::RESP_OK_NODATA);
        if data {
            self.data = addr;
        }
        addr
    }

    fn hdr(&self, fence: Option<(u64, Option<u8>)>) -> CtrlHdr {
        match fence {
            Some((id, ring)) => fenced(cmd::SUBMIT_3D, self.ctx, id, ring.filter(|_| self.full)),
            None => ctx_hdr(cmd::SUBMIT_3D, self.ctx),
        }
    }

    /// One SUBMIT_3D, waiting for its chain; returns the response code.
    fn submit(&mut self, buf: &[u8], fence: Option<(u64, Option<u8>)>) -> u32 {
        let h = self.hdr(fence);
        let p = self
            .g
            .vmm
            .submit(CONTROLQ, &submit_req(h, buf), HDR)
            .unwrap();
        self.g.vmm.kick(CONTROLQ).unwrap();
        resp_type(&self.g.vmm.complete(p, WAIT).expect("chain returned"))
    }

    /// Runs `cmds` (whose seqnos and response offsets are rewritten: one
    /// 256-byte slot each from 0x100) in one unfenced SUBMIT_3D; returns
    /// each command's `ret`.
    fn run(&mut self, cmds: &[Vec<u8>]) -> Vec<i32> {
        let (buf, slots) = self.number(cmds);
        assert_eq!(self.submit(&buf, None), cmd::RESP_OK_NODATA);
        slots
            .iter()
            .map(|&o| self.rsp_at::<RspHdr>(o).ret)
            .collect()
    }

    fn number(&mut self, cmds: &[Vec<u8>]) -> (Vec<u8>, Vec<u32>) {
        let mut buf = Vec::new();
        let mut slots = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let mut c = c.clone();
            self.seqno += 1;
            let off = 0x100 + 0x100 * i as u32;
            c[8..12].copy_from_slice(&self.seqno.to_le_bytes());
            c[12..16].copy_from_slice(&off.to_le_bytes());
            buf.extend(c);
            slots.push(off);
        }
        (buf, slots)
    }

    fn rsp_at<T: ByteValued + Default>(&self, off: u32) -> T {
        let b = self
            .g
            .vmm
            .read_guest(
                GuestAddress(self.rsp.0 + u64::from(off)),
                std::mem::size_of::<T>(),
            )
            .unwrap();
        resp_as(&b).unwrap()
    }

    fn header(&self) -> RspMemHeader {
        self.rsp_at(0)
    }

    fn data_word(&self, off: u64) -> u32 {
        let b = self
            .g
            .vmm
            .read_guest(GuestAddress(self.data.0 + off), 4)
            .unwrap();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn write_data(&self, off: u64, bytes: &[u8]) {
        self.g
            .vmm
            .write_guest(GuestAddress(self.data.0 + off), bytes)
            .unwrap();
    }

    /// Polls the completion record at `off` until DONE.
    fn wait_record(&self, off: u32) -> i32 {
        let end = Instant::now() + WAIT;
        loop {
            let c: Completion = self.rsp_at(off);
            if c.state == COMPLETION_DONE {
                return c.result;
            }
            assert!(Instant::now() < end, "completion at {off:#x} never done");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn map_op(bo: u32, bo_offset: u64, va: u64, size: u64) -> VmBindOp {
    VmBindOp {
        flags: VM_BIND_OP_TYPE_MAP,
        bo_handle: bo,
        bo_offset,
        va,
        size,
        ..Default::default()
    }
}

/// A VM_BIND; `syncs[i]` are the syncs of op `i` (asynchronous only).
fn bind_cmd(vm: u32, flags: u32, ops: &[VmBindOp], syncs: &[Vec<SyncOp>]) -> Vec<u8> {
    let mut w = CommandWriter::<VmBindReq>::new(0, 0);
    let mut ops = ops.to_vec();
    for (op, s) in ops.iter_mut().zip(syncs) {
        op.syncs = w.array(s);
    }
    let arr = w.array(&ops);
    w.finish(&VmBindReq {
        vm_id: vm,
        flags,
        ops: arr,
    })
}

fn group_cmd(vm: u32, handle: u32, priority: u8, queues: &[u8]) -> Vec<u8> {
    let mut w = CommandWriter::<GroupCreateReq>::new(0, 0);
    let qs: Vec<QueueCreate> = queues
        .iter()
        .map(|&p| QueueCreate {
            priority: p,
            pad: [0; 3],
            ringbuf_size: 4096,
        })
        .collect();
    let arr = w.array(&qs);
    w.finish(&GroupCreateReq {
        queues: arr,
        max_compute_cores: 1,
        max_fragment_cores: 1,
        max_tiler_cores: 1,
        priority,
        pad: 0,
        compute_core_mask: 1,
        fragment_core_mask: 1,
        tiler_core_mask: 1,
        vm_id: vm,
        handle,
    })
}

/// A GROUP_SUBMIT of `(queue, stream VA, size, syncs)` jobs.
fn submit_cmd(group: u32, jobs: &[(u32, u64, u32, Vec<SyncOp>)]) -> Vec<u8> {
    let mut w = CommandWriter::<GroupSubmitReq>::new(0, 0);
    let subs: Vec<QueueSubmit> = jobs
        .iter()
        .map(|(q, va, size, syncs)| QueueSubmit {
            queue_index: *q,
            stream_size: *size,
            stream_addr: *va,
            syncs: w.array(syncs),
            ..Default::default()
        })
        .collect();
    let arr = w.array(&subs);
    w.finish(&GroupSubmitReq {
        group_handle: group,
        pad: 0,
        queue_submits: arr,
    })
}

fn signal(handle: u32, point: u64) -> SyncOp {
    SyncOp {
        flags: SYNC_OP_SIGNAL | SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ,
        handle,
        timeline_value: point,
    }
}

fn wait(handle: u32, point: u64) -> SyncOp {
    SyncOp {
        flags: SYNC_OP_WAIT | SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ,
        handle,
        timeline_value: point,
    }
}

fn timeline(handle: u32) -> Vec<u8> {
    encode(
        &SyncobjCreateReq {
            flags: SYNCOBJ_CREATE_TIMELINE,
            handle,
        },
        0,
        0,
    )
}

fn connect(d: &DaemonProcess, full: bool) -> GpuDriver {
    common::driver(
        d,
        if full {
            ALL_GPU_FEATURES
        } else {
            COMPAT_GPU_FEATURES
        },
    )
}

fn run_example(full: bool) {
    let d = common::daemon(&[]);
    let g = connect(&d, full);
    let mut n = Native {
        g,
        ctx: 1,
        full,
        rsp: GuestAddress(0),
        data: GuestAddress(0),
        seqno: 0,
    };
    let capset = if full { 6 } else { 0 };
    assert_eq!(
        n.g.ctx_create(1, capset, "ex").unwrap(),
        cmd::RESP_OK_NODATA
    );
    n.rsp = n.resource(example::RES_RSP, example::RSP_SIZE, false);
    n.resource(example::RES_DATA, example::BO_SIZE, true);
    n.resource(example::RES_KERNEL, example::BO_SIZE, false);
    // The 64-byte stream: store a marker in the data BO.
    let s = stream(|b| {
        store(b, example::DATA_VA + 0x800, 0xc0ffee);
        b.pad_to(8);
    });
    assert_eq!(s.len(), example::STREAM_SIZE as usize);
    n.write_data(0, &s);
    let ring = if full { Some(2) } else { None };
    assert_eq!(
        n.submit(&example::submit_buffer(), Some((1, ring))),
        cmd::RESP_OK_NODATA
    );
    // The fence completed: every response in place, the record final.
    let mut want = example::responses();
    let (at, done) = example::submit_completion_done();
    want[at..at + done.len()].copy_from_slice(&done);
    if !full {
        // Compat: no rings, one ring in effect.
        want[0x48..0x50].copy_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
        want[0x5c] = 0;
        want[0xf8] = 0;
    }
    let got = n.g.vmm.read_guest(n.rsp, want.len()).unwrap();
    assert_eq!(
        example::hex_lines(&got, 0),
        example::hex_lines(&want, 0),
        "response memory"
    );
    assert_eq!(n.data_word(0x800), 0xc0ffee, "the job wrote memory");
    drop(n);
    common::finish(d);
}

/// The worked example of docs/protocol.md §13, byte for byte, in full mode
/// with the fence on the queue's ring.
#[test]
fn worked_example_full_mode() {
    run_example(true);
}

/// The same buffer in compat mode (3D buffers, global timeline, no rings).
#[test]
fn worked_example_compat_mode() {
    run_example(false);
}

/// Argument errors are reported synchronously with Panthor's errnos, and
/// the header counts them.
#[test]
fn commands_and_their_errors() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let e = |x: i32| -x;
    let rets = n.run(&[
        encode(
            &VmCreateReq {
                flags: 1,
                id: 0,
                user_va_range: 0,
            },
            0,
            0,
        ),
        encode(
            &VmCreateReq {
                flags: 0,
                id: 33,
                user_va_range: 0,
            },
            0,
            0,
        ),
        encode(
            &VmCreateReq {
                flags: 0,
                id: 1,
                user_va_range: 0,
            },
            0,
            0,
        ),
        encode(
            &VmCreateReq {
                flags: 0,
                id: 0,
                user_va_range: 1 << 48,
            },
            0,
            0,
        ),
        encode(&VmDestroyReq { id: 9, pad: 0 }, 0, 0),
        encode(&VmDestroyReq { id: 1, pad: 1 }, 0, 0),
        encode(&VmGetStateReq { vm_id: 1, pad: 0 }, 0, 0),
        encode(
            &BoCreateReq {
                res_id: 999,
                flags: 0,
                exclusive_vm_id: 0,
                handle: 0,
            },
            0,
            0,
        ),
        encode(
            &BoCreateReq {
                res_id: 16 + RES_DATA,
                flags: 0,
                exclusive_vm_id: 0,
                handle: 0,
            },
            0,
            0,
        ),
        encode(
            &BoCreateReq {
                res_id: 16 + RES_DATA,
                flags: 4,
                exclusive_vm_id: 0,
                handle: 0,
            },
            0,
            0,
        ),
        encode(&BoDestroyReq { handle: 2, pad: 0 }, 0, 0),
        encode(&BoDestroyReq { handle: 77, pad: 0 }, 0, 0),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 1,
                bo_handle: 2,
            },
            0,
            0,
        ),
        group_cmd(1, 0, 2, &[0]),
        group_cmd(1, 0, 4, &[0]),
        group_cmd(7, 0, 1, &[0]),
        group_cmd(1, 200, 1, &[0]),
        submit_cmd(9, &[(0, 0, 0, vec![])]),
        encode(&GroupGetStateReq { handle: 9, pad: 0 }, 0, 0),
        encode(&GroupDestroyReq { handle: 9, pad: 0 }, 0, 0),
        encode(
            &TilerHeapCreateReq {
                vm_id: 1,
                initial_chunk_count: 1,
                chunk_size: 4096,
                max_chunks: 1,
                target_in_flight: 1,
                pad: 0,
            },
            0,
            0,
        ),
        encode(
            &TilerHeapCreateReq {
                vm_id: 1,
                initial_chunk_count: 1,
                chunk_size: 128 << 10,
                max_chunks: 2,
                target_in_flight: 1,
                pad: 0,
            },
            0,
            0,
        ),
        encode(
            &TilerHeapDestroyReq {
                handle: 0x5_0000,
                pad: 0,
            },
            0,
            0,
        ),
        encode(
            &SyncobjCreateReq {
                flags: 8,
                handle: 0,
            },
            0,
            0,
        ),
        encode(
            &SyncobjCreateReq {
                flags: 0,
                handle: 5000,
            },
            0,
            0,
        ),
        encode(&SyncobjDestroyReq { handle: 4, pad: 0 }, 0, 0),
        encode(&SyncobjResetReq { handle: 4, pad: 0 }, 0, 0),
        encode(
            &SyncobjPoint {
                handle: 4,
                pad: 0,
                point: 0,
            },
            0,
            0,
        ),
        encode(
            &SyncobjQueryReq {
                handle: 4,
                pad: 0,
                point: 0,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: 77,
                size: 0,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_GPU_INFO,
                size: 8,
            },
            0,
            0,
        ),
        bind_cmd(
            1,
            0,
            &[
                map_op(1, 0, 0x200_0000, 4096),
                map_op(1, 0, 0x300_0001, 4096),
            ],
            &[],
        ),
        bind_cmd(1, 2, &[], &[]),
        bind_cmd(1, 0, &[map_op(1, 0, 1 << 47, 4096)], &[]),
    ]);
    assert_eq!(
        rets,
        vec![
            e(EINVAL), // VM_CREATE flags
            e(EINVAL), // id above max
            e(EEXIST), // id in use
            e(EINVAL), // user VA range too large
            e(EINVAL), // unknown VM
            e(EINVAL), // pad
            0,         // VM_GET_STATE
            e(ENOENT), // unknown resource
            e(EEXIST), // resource already a BO
            e(EINVAL), // BO flags
            e(EBUSY),  // kernel memory BO
            e(EINVAL), // unknown BO
            e(EBUSY),  // already kernel memory
            e(EACCES), // HIGH priority unprivileged
            e(EINVAL), // priority above REALTIME
            e(EINVAL), // unknown VM
            e(EINVAL), // handle above max
            e(EINVAL), // submit to unknown group
            e(EINVAL), // state of unknown group
            e(EINVAL), // destroy unknown group
            e(EINVAL), // chunk size
            0,         // TILER_HEAP_CREATE
            e(EINVAL), // unknown heap
            e(EINVAL), // syncobj flags
            e(EINVAL), // syncobj handle above max
            e(EINVAL), // destroy unknown syncobj
            e(ENOENT), // reset unknown syncobj
            e(ENOENT), // signal unknown syncobj
            e(ENOENT), // query unknown syncobj
            e(EINVAL), // unknown query
            e(EINVAL), // size below the minimum
            e(EINVAL), // second op misaligned
            e(EINVAL), // VM_BIND flags
            e(EINVAL), // kernel window
        ]
    );
    // The partial synchronous bind reports the op that was applied.
    let partial: VmBindRsp = n.rsp_at(0x100 + 0x100 * 31);
    assert_eq!(partial.completed_ops, 1);
    assert_eq!(partial.completion.state, COMPLETION_DONE);
    let h = n.header();
    assert_eq!(h.seqno, n.seqno);
    assert_eq!(h.error_count, 32);
    assert_eq!(h.last_error, -EINVAL);

    // Successful queries and object lifecycles.
    let rets = n.run(&[
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_GPU_INFO,
                size: 0,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_CSIF_INFO,
                size: 24,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_TIMESTAMP_INFO,
                size: 24,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_GROUP_PRIORITIES_INFO,
                size: 4,
            },
            0,
            0,
        ),
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_CONTEXT_INFO,
                size: 72,
            },
            0,
            0,
        ),
        group_cmd(1, 3, 1, &[0, 5]),
        encode(&GroupGetStateReq { handle: 3, pad: 0 }, 0, 0),
        encode(&GroupDestroyReq { handle: 3, pad: 0 }, 0, 0),
        encode(
            &SyncobjCreateReq {
                flags: SYNCOBJ_CREATE_SIGNALED,
                handle: 4,
            },
            0,
            0,
        ),
        encode(
            &SyncobjQueryReq {
                handle: 4,
                pad: 0,
                point: 0,
            },
            0,
            0,
        ),
        encode(&SyncobjResetReq { handle: 4, pad: 0 }, 0, 0),
        encode(&SyncobjDestroyReq { handle: 4, pad: 0 }, 0, 0),
        encode(&VmDestroyReq { id: 1, pad: 0 }, 0, 0),
        encode(&VmGetStateReq { vm_id: 1, pad: 0 }, 0, 0),
        // The header slot is refused: -EFAULT, the command does not run.
        encode(
            &VmCreateReq {
                flags: 0,
                id: 5,
                user_va_range: 0,
            },
            0,
            0,
        ),
    ]);
    assert_eq!(
        &rets[..14],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, e(EINVAL)]
    );
    let gpu: DevQueryRsp = n.rsp_at(0x100);
    assert_eq!((gpu.hdr.len, gpu.size), (16, 112));
    let info_at = 0x100 + 4 * 0x100 + 16;
    let info: ContextInfo = n.rsp_at(info_at);
    assert_eq!(info.flags, CONTEXT_FLAG_PER_RING_FENCES);
    assert_eq!(info.num_rings, 64);
    assert_eq!(info.job_timeout_ms, 5000);
    let grp: GroupCreateRsp = n.rsp_at(0x100 + 5 * 0x100);
    assert_eq!(grp.queue_count, 2);
    assert_eq!(&grp.queue_rings[..3], &[2, 3, 0], "rings after the VM's");
    let q: SyncobjQueryRsp = n.rsp_at(0x100 + 9 * 0x100);
    assert_eq!(q.status, SYNCOBJ_STATUS_SIGNALED);

    let before = n.header().error_count;
    let bad = encode(
        &VmCreateReq {
            flags: 0,
            id: 5,
            user_va_range: 0,
        },
        999,
        0x20,
    );
    assert_eq!(n.submit(&bad, None), cmd::RESP_OK_NODATA);
    let h = n.header();
    assert_eq!((h.seqno, h.last_error), (999, -EFAULT));
    assert_eq!(h.error_count, before + 1);

    // Unknown commands reject the whole buffer.
    let mut unknown = encode_nop_cmd();
    unknown[0] = 0x7f;
    assert_eq!(n.submit(&unknown, None), cmd::RESP_ERR_INVALID_PARAMETER);
    drop(n);
    common::finish(d);
}

fn encode_nop_cmd() -> Vec<u8> {
    vhost_user_mali::uapi::codec::encode_nop(0)
}

/// Commands other than NOP before INIT reject the buffer; a failed first
/// INIT writes nothing and skips the rest of its buffer.
#[test]
fn init_rules() {
    let d = common::daemon(&[]);
    let mut g = connect(&d, true);
    assert_eq!(g.ctx_create(1, 6, "i").unwrap(), cmd::RESP_OK_NODATA);
    let vm = encode(&VmCreateReq::default(), 1, 0x40);
    let r = g.submit_3d(ctx_hdr(0, 1), &vm).unwrap();
    assert_eq!(r, cmd::RESP_ERR_INVALID_PARAMETER);
    let (_, rsp) = g.create_guest_blob(1, 1, 4096).unwrap();
    // Too small a response memory: INIT fails, nothing is written.
    let mut buf = encode(
        &InitReq {
            rsp_res_id: 1,
            num_rings: 4,
            rsp_size: 2048,
        },
        5,
        0x40,
    );
    buf.extend(encode(
        &InitReq {
            rsp_res_id: 1,
            num_rings: 4,
            rsp_size: 4096,
        },
        6,
        0x40,
    ));
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &buf).unwrap(),
        cmd::RESP_OK_NODATA
    );
    assert!(g.vmm.read_guest(rsp, 64).unwrap().iter().all(|&b| b == 0));
    let init = encode(
        &InitReq {
            rsp_res_id: 1,
            num_rings: 4,
            rsp_size: 4096,
        },
        7,
        0x40,
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &init).unwrap(),
        cmd::RESP_OK_NODATA
    );
    let r: InitRsp = resp_as(&g.vmm.read_guest(GuestAddress(rsp.0 + 0x40), 16).unwrap()).unwrap();
    assert_eq!(
        (r.hdr.ret, r.num_rings, r.flags),
        (0, 4, CONTEXT_FLAG_PER_RING_FENCES)
    );
    let again = encode(
        &InitReq {
            rsp_res_id: 1,
            num_rings: 5,
            rsp_size: 4096,
        },
        8,
        0x40,
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &again).unwrap(),
        cmd::RESP_OK_NODATA
    );
    let h: RspMemHeader = resp_as(&g.vmm.read_guest(rsp, 64).unwrap()).unwrap();
    assert_eq!((h.seqno, h.last_error), (8, -EINVAL));

    // The response memory's resource goes away: the context is back to
    // having none. Commands other than NOP and INIT are refused, and the
    // released memory is never written again.
    let before = g.vmm.read_guest(rsp, 4096).unwrap();
    let unref = ResourceOnly {
        hdr: hdr(cmd::RESOURCE_UNREF),
        resource_id: 1,
        padding: 0,
    };
    assert_eq!(g.ctrl_code(&unref).unwrap(), cmd::RESP_OK_NODATA);
    let vm = encode(&VmCreateReq::default(), 9, 0x80);
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &vm).unwrap(),
        cmd::RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        g.submit_3d(ctx_hdr(0, 1), &encode_nop_cmd()).unwrap(),
        cmd::RESP_OK_NODATA
    );
    assert_eq!(g.vmm.read_guest(rsp, 4096).unwrap(), before);
    drop(g);
    common::finish(d);
}

/// An asynchronous VM_BIND signals a syncobj the job waits for: the job
/// runs only once its stream is mapped, with no guest wait in between.
fn bind_then_submit(full: bool) {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, full), 1, full);
    let va2 = 0x800_0000u64;
    let s = stream(|b| {
        store(b, DATA_VA + 0x2000, 0x1234);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let (buf, slots) = n.number(&[
        timeline(1),
        group_cmd(1, 1, 1, &[3]),
        bind_cmd(
            1,
            VM_BIND_ASYNC,
            &[map_op(1, 0x1000, va2, 4096)],
            &[vec![signal(1, 1)]],
        ),
        submit_cmd(
            1,
            &[(0, va2, s.len() as u32, vec![wait(1, 1), signal(1, 2)])],
        ),
    ]);
    let ring = if full { Some(2) } else { None };
    assert_eq!(n.submit(&buf, Some((1, ring))), cmd::RESP_OK_NODATA);
    let bind: VmBindRsp = n.rsp_at(slots[2]);
    assert_eq!((bind.hdr.ret, bind.completed_ops), (0, 1));
    assert_eq!(bind.completion.state, COMPLETION_DONE);
    let sub: GroupSubmitRsp = n.rsp_at(slots[3]);
    assert_eq!(
        sub.completion,
        Completion {
            state: COMPLETION_DONE,
            result: 0
        }
    );
    assert_eq!(n.data_word(0x2000), 0x1234);
    let rets = n.run(&[encode(
        &SyncobjQueryReq {
            handle: 1,
            pad: 0,
            point: 0,
        },
        0,
        0,
    )]);
    assert_eq!(rets, vec![0]);
    let q: SyncobjQueryRsp = n.rsp_at(0x100);
    assert_eq!((q.value, q.last_submitted), (2, 2));
    drop(n);
    common::finish(d);
}

#[test]
fn async_bind_then_submit_full() {
    bind_then_submit(true);
}

#[test]
fn async_bind_then_submit_compat() {
    bind_then_submit(false);
}

/// Several groups at different priorities with several queues: every job
/// runs, and one queue's SYNC_WAIT is woken by another queue's SYNC_SET.
#[test]
fn groups_priorities_and_cross_queue_sync() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let waiter = stream(|b| {
        b.move48(10, DATA_VA + 0x3000);
        b.move32(12, 0);
        b.sync_wait32(SyncCond::Gt, false, 10, 12);
        store(b, DATA_VA + 0x3100, 0xabcd);
        b.pad_to(8);
    });
    let setter = stream(|b| {
        b.move48(20, DATA_VA + 0x3000);
        b.move32(22, 7);
        b.sync_set32(SyncScope::System, false, 20, 22, AsyncOp::NOW);
        b.pad_to(8);
    });
    let low = stream(|b| {
        store(b, DATA_VA + 0x3200, 0x10);
        b.pad_to(8);
    });
    n.write_data(0x1000, &waiter);
    n.write_data(0x1040, &setter);
    n.write_data(0x1080, &low);
    let (buf, slots) = n.number(&[
        group_cmd(1, 1, 1, &[2, 9]),
        group_cmd(1, 2, 0, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
        submit_cmd(2, &[(0, DATA_VA + 0x1080, 64, vec![])]),
        submit_cmd(1, &[(1, DATA_VA + 0x1040, 64, vec![])]),
    ]);
    assert_eq!(n.submit(&buf, Some((1, Some(0)))), cmd::RESP_OK_NODATA);
    for s in &slots[2..] {
        assert_eq!(n.rsp_at::<GroupSubmitRsp>(*s).completion.result, 0);
    }
    assert_eq!(n.data_word(0x3000), 7);
    assert_eq!(n.data_word(0x3100), 0xabcd, "the waiter was woken");
    assert_eq!(n.data_word(0x3200), 0x10);
    drop(n);
    common::finish(d);
}

/// A store to an unmapped VA: the job completes with -EINVAL, the group is
/// fatal with the fault reported, the header counts it, later submits are
/// refused, and another context is unaffected.
#[test]
fn fault_is_contained() {
    let d = common::daemon(&[]);
    let g1 = connect(&d, true);
    let mut a = Native::new(g1, 1, true);
    let bad = stream(|b| {
        store(b, 0x4000_0000, 1);
        b.pad_to(8);
    });
    a.write_data(0x1000, &bad);
    let (buf, slots) = a.number(&[
        group_cmd(1, 1, 1, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    assert_eq!(a.submit(&buf, Some((1, Some(2)))), cmd::RESP_OK_NODATA);
    let sub: GroupSubmitRsp = a.rsp_at(slots[1]);
    assert_eq!(
        sub.completion,
        Completion {
            state: COMPLETION_DONE,
            result: -EINVAL
        }
    );
    assert_eq!(a.header().async_error_count, 1);
    assert_eq!(a.header().last_async_error, -EINVAL);
    let rets = a.run(&[
        encode(&GroupGetStateReq { handle: 1, pad: 0 }, 0, 0),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    assert_eq!(rets, vec![0, -EINVAL]);
    let st: GroupGetStateRsp = a.rsp_at(0x100);
    assert_eq!(st.state & GROUP_STATE_FATAL_FAULT, GROUP_STATE_FATAL_FAULT);
    assert_eq!(st.fatal_queues, 1);
    assert_eq!(st.fault_va & !0xfff, 0x4000_0000);

    // Another context on the same connection works normally.
    let Native { g, .. } = a;
    let mut b = Native::new(g, 2, true);
    let good = stream(|bb| {
        store(bb, DATA_VA + 0x2000, 5);
        bb.pad_to(8);
    });
    b.write_data(0x1000, &good);
    let (buf, slots) = b.number(&[
        group_cmd(1, 1, 1, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    assert_eq!(b.submit(&buf, Some((1, Some(2)))), cmd::RESP_OK_NODATA);
    assert_eq!(b.rsp_at::<GroupSubmitRsp>(slots[1]).completion.result, 0);
    assert_eq!(b.data_word(0x2000), 5);
    drop(b);
    common::finish(d);
}

/// A fenced GROUP_SUBMIT is checked by the GPU engine after the worker
/// has moved on: when the engine refuses it (here, the group died of a
/// fault the context has not been asked about), the response, the
/// completion record and the header's error fields say so before the
/// fence completes, and fences of later submits are not held up.
#[test]
fn fenced_submit_refused_by_the_engine() {
    let d = common::daemon(&[]);
    let g = connect(&d, true);
    let mut a = Native::new(g, 1, true);
    let bad = stream(|b| {
        store(b, 0x4000_0000, 1);
        b.pad_to(8);
    });
    let good = stream(|b| {
        store(b, DATA_VA + 0x2000, 7);
        b.pad_to(8);
    });
    a.write_data(0x1000, &bad);
    a.write_data(0x3000, &good);
    let (buf, slots) = a.number(&[
        group_cmd(1, 1, 1, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    assert_eq!(a.submit(&buf, Some((1, Some(2)))), cmd::RESP_OK_NODATA);
    assert_eq!(a.wait_record(slots[1] + 8), -EINVAL);
    let errors = a.header().error_count;

    // Group 1 is dead: only the engine knows. The fenced submit's chain
    // comes back with the refusal written, as an unfenced one would.
    let (buf, slots) = a.number(&[submit_cmd(1, &[(0, DATA_VA + 0x3000, 64, vec![])])]);
    assert_eq!(a.submit(&buf, Some((2, Some(2)))), cmd::RESP_OK_NODATA);
    let sub: GroupSubmitRsp = a.rsp_at(slots[0]);
    assert_eq!(sub.hdr.ret, -EINVAL);
    assert_eq!(
        sub.completion,
        Completion {
            state: COMPLETION_DONE,
            result: -EINVAL
        }
    );
    let h = a.header();
    assert_eq!(h.seqno, a.seqno);
    assert_eq!(h.error_count, errors + 1);
    assert_eq!(h.last_error_seqno, a.seqno);
    assert_eq!(h.last_error, -EINVAL);
    assert_eq!(a.data_word(0x2000), 0, "a refused job must not run");

    // A later fenced submit on the same ring is not held up by it.
    let (buf, slots) = a.number(&[submit_cmd(1, &[(0, DATA_VA + 0x3000, 64, vec![])])]);
    assert_eq!(a.submit(&buf, Some((3, Some(2)))), cmd::RESP_OK_NODATA);
    let later: GroupSubmitRsp = a.rsp_at(slots[0]);
    assert_eq!(later.completion.result, -EINVAL);
    let h = a.header();
    assert_eq!(h.error_count, errors + 2);
    assert_eq!(h.async_error_count, 1, "refusals are not async errors");

    // Without a response (rsp_off 0) the header's error fields alone say
    // so, by the time the fence completes.
    let (mut buf, _) = a.number(&[submit_cmd(1, &[(0, DATA_VA + 0x3000, 64, vec![])])]);
    buf[12..16].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(a.submit(&buf, Some((4, Some(2)))), cmd::RESP_OK_NODATA);
    let h = a.header();
    assert_eq!(h.seqno, a.seqno);
    assert_eq!(h.error_count, errors + 3);
    assert_eq!(h.last_error_seqno, a.seqno);
    assert_eq!(h.last_error, -EINVAL);
    assert_eq!(h.async_error_count, 1);
    assert_eq!(a.data_word(0x2000), 0, "a refused job must not run");
    drop(a);
    common::finish(d);
}

/// An endless loop is killed by the configured job timeout; its fence
/// completes and the group reports TIMEDOUT.
#[test]
fn endless_loop_times_out() {
    let d = common::daemon(&["--job-timeout-ms", "200"]);
    let mut n = Native::new(connect(&d, false), 1, false);
    let s = stream(|b| {
        endless(b);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let (buf, slots) = n.number(&[
        encode(
            &DevQueryReq {
                query_type: DEV_QUERY_CONTEXT_INFO,
                size: 72,
            },
            0,
            0,
        ),
        group_cmd(1, 1, 1, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    let t = Instant::now();
    assert_eq!(n.submit(&buf, Some((1, None))), cmd::RESP_OK_NODATA);
    assert!(t.elapsed() < Duration::from_secs(5));
    let info: ContextInfo = n.rsp_at(slots[0] + 16);
    assert_eq!(
        (info.job_timeout_ms, info.flags, info.num_rings),
        (200, 0, 1)
    );
    assert_eq!(
        n.rsp_at::<GroupSubmitRsp>(slots[2]).completion.result,
        -ETIMEDOUT
    );
    let rets = n.run(&[encode(&GroupGetStateReq { handle: 1, pad: 0 }, 0, 0)]);
    assert_eq!(rets, vec![0]);
    let st: GroupGetStateRsp = n.rsp_at(0x100);
    assert_eq!(st.state & GROUP_STATE_TIMEDOUT, GROUP_STATE_TIMEDOUT);
    drop(n);
    common::finish(d);
}

/// Fences on several rings: a fenced SYNCOBJ_WAIT holds ring 0 (and a
/// later fence on it) while a job's fence on its queue ring completes;
/// signalling the point releases ring 0 in order.
#[test]
fn fence_order_on_rings_with_held_wait() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let s = stream(|b| {
        store(b, DATA_VA + 0x2000, 9);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    assert_eq!(n.run(&[timeline(1), group_cmd(1, 1, 1, &[0])]), vec![0, 0]);
    // Held: wait for point 1, submitted later.
    let mut w = CommandWriter::<SyncobjWaitReq>::new(0, 0);
    let pts = w.array(&[SyncobjPoint {
        handle: 1,
        pad: 0,
        point: 1,
    }]);
    let wait_cmd = w.finish(&SyncobjWaitReq {
        flags: SYNCOBJ_WAIT_FOR_SUBMIT,
        pad: 0,
        timeout_ns: 0,
        points: pts,
    });
    let (wbuf, wslots) = n.number(&[wait_cmd]);
    let held =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((1, Some(0)))), &wbuf), HDR)
            .unwrap();
    let (nbuf, _) = n.number(&[encode_nop_cmd()]);
    let behind =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((2, Some(0)))), &nbuf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    // A job on ring 2 completes while ring 0 is held.
    let (jbuf, _) = n.number(&[submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])])]);
    let job =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((1, Some(2)))), &jbuf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    let r = n.g.vmm.complete(job, WAIT).unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_OK_NODATA);
    assert_eq!(n.data_word(0x2000), 9);
    let w: SyncobjWaitRsp = n.rsp_at(wslots[0]);
    assert_eq!(w.completion.state, COMPLETION_PENDING);
    // Signal: the wait ends, then ring 0 completes in order.
    let (sbuf, _) = n.number(&[encode(
        &SyncobjPoint {
            handle: 1,
            pad: 0,
            point: 1,
        },
        0,
        0,
    )]);
    let sig =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(None), &sbuf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    n.g.vmm.complete(sig, WAIT).unwrap();
    n.g.vmm.complete(held, WAIT).unwrap();
    n.g.vmm.complete(behind, WAIT).unwrap();
    assert_eq!(n.wait_record(wslots[0] + 16), 0);
    drop(n);
    common::finish(d);
}

/// GROUP_SUBMIT to a queue the group does not have, or to an unknown
/// group: -EINVAL, with nothing run, even when another element is fine.
/// An unknown syncobj to wait for is -ENOENT, reported after those.
#[test]
fn group_submit_to_a_missing_queue_or_group() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let s = stream(|b| {
        store(b, DATA_VA + 0x2000, 3);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let job = |queue: u32| (queue, DATA_VA + 0x1000, 64, vec![]);
    let waits_for_nothing = (0, DATA_VA + 0x1000, 64, vec![wait(9, 1)]);
    let rets = n.run(&[
        group_cmd(1, 1, 1, &[0, 0]),
        submit_cmd(1, &[job(0), job(2)]),
        submit_cmd(1, &[job(7)]),
        submit_cmd(2, &[job(0)]),
        submit_cmd(1, &[job(0), waits_for_nothing.clone()]),
        submit_cmd(1, &[waits_for_nothing.clone(), job(2)]),
        submit_cmd(2, &[waits_for_nothing]),
    ]);
    assert_eq!(
        rets,
        vec![0, -EINVAL, -EINVAL, -EINVAL, -ENOENT, -EINVAL, -EINVAL]
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(n.data_word(0x2000), 0, "nothing ran");
    let (buf, slots) = n.number(&[submit_cmd(1, &[job(0), job(1)])]);
    assert_eq!(n.submit(&buf, Some((1, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(slots[0] + 8), 0);
    assert_eq!(n.data_word(0x2000), 3);
    drop(n);
    common::finish(d);
}

/// A wait-any ends at its first point; its other points still signal
/// later. Those late events must not reach the command that took over the
/// finished wait's record in the meantime: here a later wait stays pending
/// until its own point signals.
#[test]
fn a_wait_any_s_late_points_leave_later_work_alone() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    assert_eq!(n.run(&[timeline(1), timeline(2), timeline(3)]), vec![0; 3]);
    let (buf, first) = n.number(&[wait_any_cmd(&[(1, 1), (2, 1)], 0)]);
    let any =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((1, Some(0)))), &buf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    assert_eq!(n.run(&[signal_cmd(1, 1)]), vec![0]);
    n.g.vmm.complete(any, WAIT).unwrap();
    assert_eq!(n.wait_record(first[0] + 16), 0);

    let (buf, later) = n.number(&[wait_cmd(3, 1, 0)]);
    let held =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((2, Some(0)))), &buf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    // The first wait's other point signals.
    assert_eq!(n.run(&[signal_cmd(2, 1)]), vec![0]);
    std::thread::sleep(Duration::from_millis(50));
    let w: SyncobjWaitRsp = n.rsp_at(later[0]);
    assert_eq!(w.completion.state, COMPLETION_PENDING);
    assert_eq!(n.header().async_error_count, 0);
    assert_eq!(n.run(&[signal_cmd(3, 1)]), vec![0]);
    n.g.vmm.complete(held, WAIT).unwrap();
    assert_eq!(n.wait_record(later[0] + 16), 0);
    drop(n);
    common::finish(d);
}

/// CTX_DESTROY with an endless job in flight: the held fence completes,
/// the engine thread goes away, and a new context works.
#[test]
fn context_destroyed_mid_flight() {
    let d = common::daemon(&[]);
    let g = connect(&d, true);
    let threads_before = d.threads();
    let mut n = Native::new(g, 1, true);
    let s = stream(|b| {
        endless(b);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let (buf, slots) = n.number(&[
        group_cmd(1, 1, 1, &[0]),
        submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])]),
    ]);
    let held =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((1, Some(2)))), &buf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(d.threads() > threads_before, "the engine thread runs");
    let destroy =
        n.g.vmm
            .submit(CONTROLQ, ctx_hdr(cmd::CTX_DESTROY, 1).as_slice(), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    n.g.vmm.complete(held, WAIT).expect("held fence completes");
    let r = n.g.vmm.complete(destroy, WAIT).unwrap();
    assert_eq!(resp_type(&r), cmd::RESP_OK_NODATA);
    let c: Completion = n.rsp_at(slots[1] + 8);
    assert_eq!(
        c,
        Completion {
            state: COMPLETION_DONE,
            result: -ECANCELED
        }
    );
    assert_eq!(d.threads(), threads_before, "no thread left behind");
    let Native { g, .. } = n;
    let b = Native::new(g, 2, true);
    drop(b);
    common::finish(d);
}

/// Quotas: ids run out cleanly and only for the context that used them.
#[test]
fn quota_exhaustion() {
    let d = common::daemon(&[]);
    let mut n = Native::bare(connect(&d, true), 1, true);
    let cmds: Vec<Vec<u8>> = (0..33)
        .map(|_| encode(&VmCreateReq::default(), 0, 0))
        .collect();
    let rets = n.run(&cmds[..20]);
    assert!(rets.iter().all(|&r| r == 0));
    let rets = n.run(&cmds[20..]);
    assert_eq!(&rets[..12], &[0; 12]);
    assert_eq!(rets[12], -EBUSY, "33rd VM");
    // Rings: 63 are free for queues and bind queues, 32 went to VMs.
    let groups: Vec<Vec<u8>> = (0..5).map(|_| group_cmd(1, 0, 1, &[0; 8])).collect();
    let rets = n.run(&groups);
    assert_eq!(rets[..3], [-ENOSPC, -ENOSPC, -ENOSPC], "no kernel memory");
    let Native { g, .. } = n;
    let mut other = Native::bare(g, 2, true);
    assert_eq!(other.run(&[encode(&VmCreateReq::default(), 0, 0)]), vec![0]);
    drop(other);
    common::finish(d);
}

/// A DEV_QUERY of CONTEXT_INFO; the object is at the slot + 16.
fn context_info_cmd() -> Vec<u8> {
    encode(
        &DevQueryReq {
            query_type: DEV_QUERY_CONTEXT_INFO,
            size: std::mem::size_of::<ContextInfo>() as u32,
        },
        0,
        0,
    )
}

/// A timeline syncobj WAIT of point `point` of `handle`, WAIT_FOR_SUBMIT.
fn wait_cmd(handle: u32, point: u64, timeout_ns: u64) -> Vec<u8> {
    wait_any_cmd(&[(handle, point)], timeout_ns)
}

/// A timeline syncobj WAIT for any of `points` (handle, point),
/// WAIT_FOR_SUBMIT.
fn wait_any_cmd(points: &[(u32, u64)], timeout_ns: u64) -> Vec<u8> {
    let mut w = CommandWriter::<SyncobjWaitReq>::new(0, 0);
    let points: Vec<SyncobjPoint> = points
        .iter()
        .map(|&(handle, point)| SyncobjPoint {
            handle,
            pad: 0,
            point,
        })
        .collect();
    let pts = w.array(&points);
    w.finish(&SyncobjWaitReq {
        flags: SYNCOBJ_WAIT_FOR_SUBMIT,
        pad: 0,
        timeout_ns,
        points: pts,
    })
}

fn signal_cmd(handle: u32, point: u64) -> Vec<u8> {
    encode(
        &SyncobjPoint {
            handle,
            pad: 0,
            point,
        },
        0,
        0,
    )
}

/// A synchronous VM_BIND of one op laid out with `stride` bytes: the op
/// cut short, or followed by `trailing`.
fn bind_with_stride(vm: u32, op: &VmBindOp, stride: u32, trailing: &[u8]) -> Vec<u8> {
    let mut c = CommandWriter::<VmBindReq>::new(0, 0).finish(&VmBindReq {
        vm_id: vm,
        flags: 0,
        ops: ObjArray {
            stride,
            count: 1,
            offset: (16 + std::mem::size_of::<VmBindReq>()) as u64,
        },
    });
    let mut elem = op.as_slice().to_vec();
    elem.extend_from_slice(trailing);
    elem.resize(stride as usize, 0);
    c.extend_from_slice(&elem);
    c.resize(c.len().next_multiple_of(8), 0);
    let len = c.len() as u32;
    c[4..8].copy_from_slice(&len.to_le_bytes());
    c
}

/// Array elements: a newer guest's zero trailing bytes are accepted,
/// non-zero ones are -E2BIG, a stride below the minimum or not a multiple
/// of 8 is -EINVAL; nothing is applied on error.
#[test]
fn array_element_stride_rules() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let op = map_op(1, 0, 0x200_0000, 0x1000);
    let rets = n.run(&[
        bind_with_stride(1, &op, 56, &[0, 0, 0, 0, 0, 0, 0, 1]),
        bind_with_stride(1, &op, 56, &[0xff; 8]),
        bind_with_stride(1, &op, 40, &[]),
        bind_with_stride(1, &op, 52, &[0; 4]),
    ]);
    assert_eq!(rets, vec![-E2BIG, -E2BIG, -EINVAL, -EINVAL]);
    for (i, slot) in [0x100u32, 0x200, 0x300, 0x400].iter().enumerate() {
        let r: VmBindRsp = n.rsp_at(*slot);
        assert_eq!(r.completed_ops, 0, "command {i} applied nothing");
    }
    // Nothing was mapped: a job storing there faults... instead, a
    // synchronous UNMAP + MAP with zero trailing bytes works.
    let rets = n.run(&[
        bind_with_stride(1, &op, 56, &[0; 8]),
        bind_with_stride(1, &op, 64, &[0; 16]),
    ]);
    assert_eq!(rets, vec![0, 0]);
    let r: VmBindRsp = n.rsp_at(0x100);
    assert_eq!(r.completed_ops, 1);
    drop(n);
    common::finish(d);
}

/// GROUP_CREATE when the context's rings run out: -EBUSY, no ring or
/// kernel memory kept by the failed attempt, and the context keeps working.
#[test]
fn group_create_out_of_rings() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    // A second kernel-memory BO: rings, not kernel memory, run out first.
    let extra = 16 + 4;
    n.resource(extra, KERNEL_SIZE, false);
    let rets = n.run(&[
        encode(
            &BoCreateReq {
                res_id: extra,
                flags: 0,
                exclusive_vm_id: 1,
                handle: 3,
            },
            0,
            0,
        ),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 1,
                bo_handle: 3,
            },
            0,
            0,
        ),
    ]);
    assert_eq!(rets, vec![0, 0]);
    // 63 rings: VM 1's bind queue took one, 7 groups of 8 queues take 56.
    let groups: Vec<Vec<u8>> = (1..=7).map(|h| group_cmd(1, h, 1, &[0; 8])).collect();
    assert_eq!(n.run(&groups), vec![0; 7]);
    let mut rings = std::collections::BTreeSet::new();
    for i in 0..7u32 {
        let r: GroupCreateRsp = n.rsp_at(0x100 + 0x100 * i);
        assert_eq!(r.queue_count, 8);
        rings.extend(r.queue_rings[..8].iter().copied());
    }
    assert_eq!(rings.len(), 56, "every queue has a ring of its own");
    // Six rings are left: eight queues do not fit, twice, cleanly.
    let rets = n.run(&[group_cmd(1, 8, 1, &[0; 8]), group_cmd(1, 0, 1, &[0; 7])]);
    assert_eq!(rets, vec![-EBUSY, -EBUSY]);
    // The failed attempts kept nothing: exactly six rings remain.
    assert_eq!(n.run(&[group_cmd(1, 8, 1, &[0; 6])]), vec![0]);
    let r: GroupCreateRsp = n.rsp_at(0x100);
    assert!(r.queue_rings[..6]
        .iter()
        .all(|x| !rings.contains(x) && *x != 0));
    assert_eq!(n.run(&[group_cmd(1, 9, 1, &[0])]), vec![-EBUSY]);
    // The context keeps working: a freed group's rings serve a new one,
    // whose job runs.
    let s = stream(|b| {
        store(b, DATA_VA + 0x2000, 0x77);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let rets = n.run(&[
        encode(&GroupDestroyReq { handle: 1, pad: 0 }, 0, 0),
        group_cmd(1, 1, 1, &[0]),
    ]);
    assert_eq!(rets, vec![0, 0]);
    let (buf, slots) = n.number(&[submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])])]);
    assert_eq!(n.submit(&buf, Some((1, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(slots[0] + 8), 0);
    assert_eq!(n.data_word(0x2000), 0x77);
    drop(n);
    common::finish(d);
}

/// Creates group `group` (two queues) whose queue 0 runs a job that waits
/// (CS SYNC_WAIT) for a data word and then signals point 1 of timeline
/// syncobj 1: a point that materialises now and signals when the returned
/// GROUP_SUBMIT (a job on queue 1 that sets the word) runs.
fn gate(n: &mut Native, group: u32) -> Vec<u8> {
    let waiter = stream(|b| {
        b.move48(10, DATA_VA + 0x3000);
        b.move32(12, 0);
        b.sync_wait32(SyncCond::Gt, false, 10, 12);
        b.pad_to(8);
    });
    let setter = stream(|b| {
        b.move48(20, DATA_VA + 0x3000);
        b.move32(22, 1);
        b.sync_set32(SyncScope::System, false, 20, 22, AsyncOp::NOW);
        b.pad_to(8);
    });
    n.write_data(0x1800, &waiter);
    n.write_data(0x1840, &setter);
    let rets = n.run(&[
        timeline(1),
        group_cmd(1, group, 1, &[0, 0]),
        submit_cmd(group, &[(0, DATA_VA + 0x1800, 64, vec![signal(1, 1)])]),
    ]);
    assert_eq!(rets, vec![0, 0, 0]);
    submit_cmd(group, &[(1, DATA_VA + 0x1840, 64, vec![])])
}

/// `max_jobs_in_flight`: jobs held behind a pending point count; a submit
/// that would pass the limit is -EBUSY (nothing queued), one that reaches
/// it exactly is accepted, and once the jobs complete there is room again.
#[test]
fn jobs_in_flight_limit() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let s = stream(|b| {
        store(b, DATA_VA + 0x2000, 5);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let release = gate(&mut n, 2);
    // Five queues: four take up to 256 jobs each (the per-queue cap), so
    // the fifth meets the context's limit, not its queue's. With the gate
    // job, 1023 jobs are in flight.
    assert_eq!(n.run(&[group_cmd(1, 1, 1, &[0; 5])]), vec![0]);
    let counts = [256u32, 256, 256, 254];
    let jobs: Vec<(u32, u64, u32, Vec<SyncOp>)> = counts
        .iter()
        .enumerate()
        .flat_map(|(q, &count)| {
            (0..count).map(move |i| {
                let syncs = if i == 0 { vec![wait(1, 1)] } else { vec![] };
                (q as u32, DATA_VA + 0x1000, 64, syncs)
            })
        })
        .collect();
    assert_eq!(jobs.len() + 1, MAX_JOBS_IN_FLIGHT as usize - 1);
    // Behind NOPs, so that later commands do not reuse its slot.
    let (buf, big) = n.number(&[encode_nop_cmd(), submit_cmd(1, &jobs)]);
    let big = &big[1..];
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    let r: GroupSubmitRsp = n.rsp_at(big[0]);
    assert_eq!(r.hdr.ret, 0);
    let two = submit_cmd(
        1,
        &[
            (4, DATA_VA + 0x1000, 64, vec![]),
            (4, DATA_VA + 0x1000, 64, vec![]),
        ],
    );
    assert_eq!(n.run(std::slice::from_ref(&two)), vec![-EBUSY]);
    let c: Completion = n.rsp_at(0x100 + 8);
    assert_eq!((c.state, c.result), (COMPLETION_DONE, -EBUSY));
    assert_eq!(n.data_word(0x2000), 0, "nothing ran");
    // The release job brings the count to the limit exactly.
    let (buf, rel) = n.number(&[release]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    assert_eq!(n.rsp_at::<RspHdr>(rel[0]).ret, 0);
    assert_eq!(n.wait_record(big[0] + 8), 0);
    assert_eq!(n.data_word(0x2000), 5);
    // Room again.
    n.write_data(0x2000, &[0; 4]);
    let (buf, slots) = n.number(&[two]);
    assert_eq!(n.submit(&buf, Some((1, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(slots[0] + 8), 0);
    assert_eq!(n.data_word(0x2000), 5);
    drop(n);
    common::finish(d);
}

/// `max_binds_in_flight`: asynchronous ops held behind an unsignalled
/// point count; one more is -EBUSY with nothing queued, and once they run
/// the same bind works.
#[test]
fn binds_in_flight_limit() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    // Four VMs take 1024 ops each (the per-VM cap); a fifth meets the
    // context's limit.
    let release = gate(&mut n, 1);
    let mut setup = Vec::new();
    setup.extend((2..=5).map(|id| {
        encode(
            &VmCreateReq {
                flags: 0,
                id,
                user_va_range: 0,
            },
            0,
            0,
        )
    }));
    assert_eq!(n.run(&setup), vec![0; 4]);
    let per_vm = (MAX_BINDS_IN_FLIGHT / 4) as usize;
    let mut ops = vec![VmBindOp {
        flags: VM_BIND_OP_TYPE_SYNC_ONLY,
        ..Default::default()
    }];
    ops.extend((1..per_vm).map(|i| VmBindOp {
        flags: VM_BIND_OP_TYPE_UNMAP,
        va: 0x1000_0000 + i as u64 * 0x1000,
        size: 0x1000,
        ..Default::default()
    }));
    let syncs = vec![vec![wait(1, 1)]];
    let binds: Vec<Vec<u8>> = (1..=4)
        .map(|vm| bind_cmd(vm, VM_BIND_ASYNC, &ops, &syncs))
        .collect();
    // Behind NOPs, so that later commands do not reuse their slots.
    let mut cmds = vec![encode_nop_cmd(); 4];
    cmds.extend(binds);
    let (buf, slots) = n.number(&cmds);
    let slots = &slots[4..];
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    for &s in slots {
        let r: VmBindRsp = n.rsp_at(s);
        assert_eq!((r.hdr.ret, r.completed_ops), (0, per_vm as u32));
    }
    let more = bind_cmd(5, VM_BIND_ASYNC, &[map_op(1, 0, DATA_VA, 0x1000)], &[]);
    assert_eq!(n.run(std::slice::from_ref(&more)), vec![-EBUSY]);
    let r: VmBindRsp = n.rsp_at(0x100);
    assert_eq!(r.completed_ops, 0);
    assert_eq!(r.completion.result, -EBUSY);
    assert_eq!(n.run(&[release]), vec![0]);
    for &s in slots {
        assert_eq!(n.wait_record(s + 16), 0);
    }
    let (buf, slots) = n.number(&[more]);
    assert_eq!(n.submit(&buf, Some((1, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(slots[0] + 16), 0);
    drop(n);
    common::finish(d);
}

/// `max_mapped_bytes` (configured to 1 MiB): MAPs past it fail with
/// -ENOMEM, synchronous or not, a replacement is charged in full, and
/// UNMAP and VM_DESTROY give the bytes back. Another context has its own.
#[test]
fn mapped_bytes_quota() {
    let d = common::daemon(&["--max-mapped-mib", "1"]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let (buf, slots) = n.number(&[context_info_cmd()]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    let info: ContextInfo = n.rsp_at(slots[0] + 16);
    assert_eq!(info.max_mapped_bytes, 1 << 20);
    // DATA_SIZE (64 KiB) is mapped at DATA_VA; 15 more fill the quota.
    let va = |i: u64| 0x1000_0000 + i * DATA_SIZE;
    let maps: Vec<Vec<u8>> = (0..15)
        .map(|i| bind_cmd(1, 0, &[map_op(1, 0, va(i), DATA_SIZE)], &[]))
        .collect();
    assert_eq!(n.run(&maps), vec![0; 15]);
    let rets = n.run(&[
        bind_cmd(1, 0, &[map_op(1, 0, va(15), 0x1000)], &[]),
        // Over an existing mapping: charged before its credit.
        bind_cmd(1, 0, &[map_op(1, 0, va(0), 0x1000)], &[]),
        bind_cmd(1, VM_BIND_ASYNC, &[map_op(1, 0, va(15), 0x1000)], &[]),
    ]);
    assert_eq!(rets, vec![-ENOMEM, -ENOMEM, -ENOMEM]);
    let r: VmBindRsp = n.rsp_at(0x300);
    assert_eq!((r.completed_ops, r.completion.result), (0, -ENOMEM));
    // A multi-op synchronous bind stops at the op past the quota.
    let unmap = VmBindOp {
        flags: VM_BIND_OP_TYPE_UNMAP,
        va: va(0),
        size: 0x2000,
        ..Default::default()
    };
    let rets = n.run(&[bind_cmd(
        1,
        0,
        &[
            unmap,
            map_op(1, 0, va(15), 0x1000),
            map_op(1, 0, va(15) + 0x1000, 0x1000),
            map_op(1, 0, va(15) + 0x2000, 0x1000),
        ],
        &[],
    )]);
    assert_eq!(rets, vec![-ENOMEM]);
    let r: VmBindRsp = n.rsp_at(0x100);
    assert_eq!(r.completed_ops, 3);
    // A second VM: what it maps counts, and VM_DESTROY gives it back.
    let rets = n.run(&[
        encode(
            &VmCreateReq {
                flags: 0,
                id: 2,
                user_va_range: 0,
            },
            0,
            0,
        ),
        bind_cmd(
            2,
            0,
            &[VmBindOp {
                flags: VM_BIND_OP_TYPE_UNMAP,
                va: va(1),
                size: DATA_SIZE,
                ..Default::default()
            }],
            &[],
        ),
        bind_cmd(1, 0, &[map_op(1, 0, va(1), 0x1000)], &[]),
    ]);
    assert_eq!(rets, vec![0, 0, -ENOMEM]);
    let rets = n.run(&[
        bind_cmd(
            1,
            0,
            &[VmBindOp {
                flags: VM_BIND_OP_TYPE_UNMAP,
                va: va(1),
                size: DATA_SIZE,
                ..Default::default()
            }],
            &[],
        ),
        bind_cmd(2, 0, &[map_op(1, 0, va(1), DATA_SIZE)], &[]),
        bind_cmd(1, 0, &[map_op(1, 0, va(1), 0x1000)], &[]),
        encode(&VmDestroyReq { id: 2, pad: 0 }, 0, 0),
        bind_cmd(1, VM_BIND_ASYNC, &[map_op(1, 0, va(1), DATA_SIZE)], &[]),
    ]);
    assert_eq!(rets, vec![0, 0, -ENOMEM, 0, 0]);
    assert_eq!(n.wait_record(0x500 + 16), 0);
    // The quota is the context's: another context maps freely.
    let Native { g, .. } = n;
    let mut other = Native::new(g, 2, true);
    let maps: Vec<Vec<u8>> = (0..15)
        .map(|i| bind_cmd(1, 0, &[map_op(1, 0, va(i), DATA_SIZE)], &[]))
        .collect();
    assert_eq!(other.run(&maps), vec![0; 15]);
    drop(other);
    common::finish(d);
}

/// SYNCOBJ_WAIT on a point that never signals ends with -ETIME: after the
/// guest's `timeout_ns`, or at the latest after the configured
/// `max_syncobj_wait_ms`; its fence completes, and a later signal is
/// harmless.
#[test]
fn syncobj_wait_times_out() {
    let d = common::daemon(&["--max-syncobj-wait-ms", "300"]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let (buf, slots) = n.number(&[context_info_cmd(), timeline(1)]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    let info: ContextInfo = n.rsp_at(slots[0] + 16);
    assert_eq!(info.max_syncobj_wait_ms, 300);
    for (timeout_ns, min_ms) in [(0u64, 300u64), (50_000_000, 50), (u64::MAX, 300)] {
        let errors_before = n.header().async_error_count;
        let (buf, slots) = n.number(&[wait_cmd(1, 1, timeout_ns)]);
        let t = Instant::now();
        assert_eq!(n.submit(&buf, Some((1, Some(0)))), cmd::RESP_OK_NODATA);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(min_ms),
            "{timeout_ns}: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{timeout_ns}: {took:?}");
        let w: SyncobjWaitRsp = n.rsp_at(slots[0]);
        assert_eq!(w.hdr.ret, 0);
        assert_eq!(
            w.completion,
            Completion {
                state: COMPLETION_DONE,
                result: -ETIME
            }
        );
        let h = n.header();
        assert_eq!(h.async_error_count, errors_before + 1);
        assert_eq!(h.last_async_error, -ETIME);
    }
    // A wait that is satisfied in time is not affected, and a point
    // signalled after a timed-out wait wakes only live waiters.
    let (wbuf, wslots) = n.number(&[wait_cmd(1, 1, 0)]);
    let held =
        n.g.vmm
            .submit(CONTROLQ, &submit_req(n.hdr(Some((2, Some(0)))), &wbuf), HDR)
            .unwrap();
    n.g.vmm.kick(CONTROLQ).unwrap();
    assert_eq!(n.run(&[signal_cmd(1, 1)]), vec![0]);
    n.g.vmm.complete(held, WAIT).unwrap();
    assert_eq!(n.wait_record(wslots[0] + 16), 0);
    drop(n);
    common::finish(d);
}

/// Revocation (§10): RESOURCE_UNREF, RESOURCE_DETACH_BACKING and
/// CTX_DETACH_RESOURCE of a resource behind a BO remove the BO's handle
/// and mappings before they complete: the GPU faults instead of writing
/// the released memory, a pending MAP of it fails (its VM unusable), and
/// revoked kernel memory makes its VM unusable and kills its groups.
#[test]
fn revocation_of_resources_behind_bos() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    let x = n.resource(16 + 5, DATA_SIZE, false);
    n.resource(16 + 6, DATA_SIZE, false);
    n.resource(16 + 7, KERNEL_SIZE, false);
    let release = gate(&mut n, 2);
    const X_VA: u64 = 0x200_0000;
    let bo = |res_id, handle| {
        encode(
            &BoCreateReq {
                res_id,
                flags: 0,
                exclusive_vm_id: 0,
                handle,
            },
            0,
            0,
        )
    };
    let (buf, slots) = n.number(&[
        bo(16 + 5, 3),
        bo(16 + 6, 4),
        encode(
            &VmCreateReq {
                flags: 0,
                id: 2,
                user_va_range: 0,
            },
            0,
            0,
        ),
        bind_cmd(1, 0, &[map_op(3, 0, X_VA, DATA_SIZE)], &[]),
        bind_cmd(
            2,
            VM_BIND_ASYNC,
            &[map_op(4, 0, DATA_VA, DATA_SIZE)],
            &[vec![wait(1, 1)]],
        ),
        group_cmd(1, 1, 1, &[0]),
        // VM 3 with kernel memory of its own, and a group on it.
        encode(
            &VmCreateReq {
                flags: 0,
                id: 3,
                user_va_range: 0,
            },
            0,
            0,
        ),
        bo(16 + 7, 5),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 3,
                bo_handle: 5,
            },
            0,
            0,
        ),
        group_cmd(3, 3, 1, &[0]),
    ]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    for &s in &slots {
        assert_eq!(n.rsp_at::<RspHdr>(s).ret, 0);
    }
    let pending_bind = slots[4];
    let store_x = |value| {
        stream(|b| {
            store(b, X_VA, value);
            b.pad_to(8);
        })
    };
    n.write_data(0x1000, &store_x(1));
    n.write_data(0x1100, &store_x(2));
    let (buf, s) = n.number(&[submit_cmd(1, &[(0, DATA_VA + 0x1000, 64, vec![])])]);
    assert_eq!(n.submit(&buf, Some((1, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(s[0] + 8), 0);
    let word_x = |n: &Native| {
        let b = n.g.vmm.read_guest(x, 4).unwrap();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    assert_eq!(word_x(&n), 1);
    let ro = |type_, ctx, id| ResourceOnly {
        hdr: ctx_hdr(type_, ctx),
        resource_id: id,
        padding: 0,
    };
    // RESOURCE_DETACH_BACKING under a pending asynchronous MAP: the MAP
    // fails when it runs and its VM becomes unusable.
    assert_eq!(
        n.g.ctrl_code(&ro(cmd::RESOURCE_DETACH_BACKING, 0, 16 + 6))
            .unwrap(),
        cmd::RESP_OK_NODATA
    );
    assert_eq!(n.run(&[release]), vec![0]);
    assert_eq!(n.wait_record(pending_bind + 16), -EINVAL);
    let rets = n.run(&[
        encode(&VmGetStateReq { vm_id: 2, pad: 0 }, 0, 0),
        encode(&VmGetStateReq { vm_id: 1, pad: 0 }, 0, 0),
    ]);
    assert_eq!(rets, vec![0, 0]);
    assert_eq!(n.rsp_at::<VmGetStateRsp>(0x100).state, VM_STATE_UNUSABLE);
    assert_eq!(n.rsp_at::<VmGetStateRsp>(0x200).state, VM_STATE_USABLE);
    // RESOURCE_UNREF: the mapping is gone when the command completes.
    assert_eq!(
        n.g.ctrl_code(&ro(cmd::RESOURCE_UNREF, 0, 16 + 5)).unwrap(),
        cmd::RESP_OK_NODATA
    );
    let (buf, s) = n.number(&[submit_cmd(1, &[(0, DATA_VA + 0x1100, 64, vec![])])]);
    assert_eq!(n.submit(&buf, Some((2, Some(1)))), cmd::RESP_OK_NODATA);
    assert_eq!(n.wait_record(s[0] + 8), -EINVAL, "the store faults");
    assert_eq!(word_x(&n), 1, "released memory untouched");
    let rets = n.run(&[
        encode(&GroupGetStateReq { handle: 1, pad: 0 }, 0, 0),
        encode(&BoDestroyReq { handle: 3, pad: 0 }, 0, 0),
        bind_cmd(1, 0, &[map_op(3, 0, X_VA, DATA_SIZE)], &[]),
    ]);
    assert_eq!(rets, vec![0, -EINVAL, -EINVAL], "the handle is gone");
    let st: GroupGetStateRsp = n.rsp_at(0x100);
    assert_eq!(st.state & GROUP_STATE_FATAL_FAULT, GROUP_STATE_FATAL_FAULT);
    assert_eq!(st.fault_va, X_VA);
    let rets = n.run(&[encode(&GroupGetStateReq { handle: 3, pad: 0 }, 0, 0)]);
    assert_eq!(rets, vec![0]);
    assert_eq!(n.rsp_at::<GroupGetStateRsp>(0x100).state, 0);
    // CTX_DETACH_RESOURCE of VM 3's kernel memory: VM 3 becomes unusable
    // and its group is killed.
    assert_eq!(
        n.g.ctrl_code(&ro(cmd::CTX_DETACH_RESOURCE, 1, 16 + 7))
            .unwrap(),
        cmd::RESP_OK_NODATA
    );
    let rets = n.run(&[
        encode(&VmGetStateReq { vm_id: 3, pad: 0 }, 0, 0),
        encode(&GroupGetStateReq { handle: 3, pad: 0 }, 0, 0),
        encode(&BoDestroyReq { handle: 5, pad: 0 }, 0, 0),
    ]);
    assert_eq!(rets, vec![0, 0, -EINVAL]);
    assert_eq!(n.rsp_at::<VmGetStateRsp>(0x100).state, VM_STATE_UNUSABLE);
    let st: GroupGetStateRsp = n.rsp_at(0x200);
    assert_eq!(st.state & GROUP_STATE_FATAL_FAULT, GROUP_STATE_FATAL_FAULT);
    drop(n);
    common::finish(d);
}

/// Kernel memory is per VM: a VM's groups come from the BOs given to it,
/// never from another VM's, and `pool_free` is the VM's own.
#[test]
fn kernel_memory_is_per_vm() {
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, true), 1, true);
    n.resource(16 + 5, 64 << 10, false);
    let (buf, slots) = n.number(&[
        encode(
            &VmCreateReq {
                flags: 0,
                id: 2,
                user_va_range: 0,
            },
            0,
            0,
        ),
        // VM 1 has 256 KiB of kernel memory, VM 2 none yet.
        group_cmd(2, 1, 1, &[0]),
        group_cmd(1, 2, 1, &[0]),
        encode(
            &BoCreateReq {
                res_id: 16 + 5,
                flags: 0,
                exclusive_vm_id: 0,
                handle: 3,
            },
            0,
            0,
        ),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 2,
                bo_handle: 3,
            },
            0,
            0,
        ),
        group_cmd(2, 1, 1, &[0]),
        // 64 KiB: a group takes 4 KiB plus 4 KiB per queue, so after
        // 8 + 32 KiB, 24 KiB are left: six queues do not fit, five do.
        group_cmd(2, 0, 1, &[0; 7]),
        group_cmd(2, 0, 1, &[0; 6]),
        group_cmd(2, 0, 1, &[0; 5]),
    ]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    let rets: Vec<i32> = slots.iter().map(|&o| n.rsp_at::<RspHdr>(o).ret).collect();
    assert_eq!(rets, vec![0, -ENOSPC, 0, 0, 0, 0, 0, -ENOSPC, 0]);
    let k: VmAddKernelMemoryRsp = n.rsp_at(slots[4]);
    assert_eq!((k.pool_size, k.pool_free), (64 << 10, 64 << 10));
    // VM 1 still has its own memory.
    assert_eq!(n.run(&[group_cmd(1, 0, 1, &[0; 8])]), vec![0]);
    drop(n);
    common::finish(d);
}

/// VM_ADD_KERNEL_MEMORY maps the whole BO at `kernel_va` (a stream reads a
/// word where no kernel object lives), and the BO goes back to the guest
/// with its VM: BO_DESTROY refuses it while a group keeps the destroyed VM
/// alive and takes it once the group is gone. A BO exclusive to a
/// destroyed VM is not mappable in a new VM that reuses the id.
#[test]
fn kernel_memory_mapped_whole_and_released_with_its_vm() {
    const KSIZE: u64 = 64 << 10;
    let d = common::daemon(&[]);
    let mut n = Native::new(connect(&d, false), 1, false);
    let kaddr = n.resource(16 + 6, KSIZE, false);
    n.resource(16 + 7, 4096, false);
    let magic = 0x0bad_cafe_feed_f00d_u64;
    n.g.vmm
        .write_guest(GuestAddress(kaddr.0 + KSIZE - 8), &magic.to_le_bytes())
        .unwrap();
    let bo = |res_id, handle, exclusive_vm_id| {
        encode(
            &BoCreateReq {
                res_id,
                flags: 0,
                exclusive_vm_id,
                handle,
            },
            0,
            0,
        )
    };
    let vm = |id| {
        encode(
            &VmCreateReq {
                flags: 0,
                id,
                user_va_range: 0,
            },
            0,
            0,
        )
    };
    let vm_destroy = |id| encode(&VmDestroyReq { id, pad: 0 }, 0, 0);
    let bo_destroy = |handle| encode(&BoDestroyReq { handle, pad: 0 }, 0, 0);
    let (buf, slots) = n.number(&[
        vm(2),
        bo(16 + 6, 3, 2),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 2,
                bo_handle: 3,
            },
            0,
            0,
        ),
        bind_cmd(2, 0, &[map_op(1, 0, DATA_VA, DATA_SIZE)], &[]),
        group_cmd(2, 5, 1, &[0]),
        bo_destroy(3),
        // The data BO is mapped in VM 1 (and now VM 2): not kernel memory.
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 2,
                bo_handle: 1,
            },
            0,
            0,
        ),
    ]);
    assert_eq!(n.submit(&buf, None), cmd::RESP_OK_NODATA);
    let rets: Vec<i32> = slots.iter().map(|&o| n.rsp_at::<RspHdr>(o).ret).collect();
    assert_eq!(rets, vec![0, 0, 0, 0, 0, -EBUSY, -EBUSY]);
    let k: VmAddKernelMemoryRsp = n.rsp_at(slots[2]);
    assert_eq!(k.pool_size, KSIZE);
    // The group's objects (4 KiB of sequence objects, a 4 KiB ring) sit at
    // the start of the BO; its last word is reachable all the same.
    let s = stream(|b| {
        b.move48(0, k.kernel_va + KSIZE - 8);
        b.load_multiple(2, 0b11, 0, 0);
        b.move48(4, DATA_VA + 0x3000);
        b.store_multiple(2, 0b11, 4, 0);
        b.pad_to(8);
    });
    n.write_data(0x1000, &s);
    let (buf, slots) = n.number(&[submit_cmd(
        5,
        &[(0, DATA_VA + 0x1000, s.len() as u32, vec![])],
    )]);
    assert_eq!(n.submit(&buf, Some((7, None))), cmd::RESP_OK_NODATA);
    let sub: GroupSubmitRsp = n.rsp_at(slots[0]);
    assert_eq!(
        sub.completion,
        Completion {
            state: COMPLETION_DONE,
            result: 0
        }
    );
    assert_eq!(n.data_word(0x3000), magic as u32);
    assert_eq!(n.data_word(0x3004), (magic >> 32) as u32);
    // The group keeps the destroyed VM, and so its kernel memory.
    let rets = n.run(&[
        vm_destroy(2),
        bo_destroy(3),
        encode(&GroupDestroyReq { handle: 5, pad: 0 }, 0, 0),
        bo_destroy(3),
    ]);
    assert_eq!(rets, vec![0, -EBUSY, 0, 0]);
    // Without groups, VM_DESTROY gives the memory back at once; a BO
    // exclusive to the old VM 3 stays out of the new VM 3.
    let rets = n.run(&[
        vm(3),
        bo(16 + 6, 3, 3),
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 3,
                bo_handle: 3,
            },
            0,
            0,
        ),
        bo(16 + 7, 4, 3),
        vm_destroy(3),
        bo_destroy(3),
        vm(3),
        bind_cmd(3, 0, &[map_op(4, 0, DATA_VA, 4096)], &[]),
        bind_cmd(3, 0, &[map_op(3, 0, DATA_VA, 4096)], &[]),
    ]);
    assert_eq!(rets, vec![0, 0, 0, 0, 0, 0, 0, -EINVAL, -EINVAL]);
    drop(n);
    common::finish(d);
}
