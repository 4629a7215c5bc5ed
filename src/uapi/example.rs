//! The worked example of `docs/protocol.md` (§13), built from the wire
//! structs: the first SUBMIT_3D of a fresh full-mode context, which
//! registers its response memory, creates a VM, wraps two resources as BOs,
//! gives one to the VM as kernel memory, maps the other, creates a timeline
//! syncobj and a one-queue group, and submits a job that signals the
//! syncobj.
//!
//! The unit tests render these bytes as hex and compare them with the text
//! of the document, so the two cannot drift apart. Integration tests can
//! submit the same buffer and compare the response memory with
//! [`responses`].

use vm_memory::ByteValued;

use super::codec::{encode, CommandWriter};
use super::native::*;

/// Resource id of the response memory (a 4 KiB guest blob).
pub const RES_RSP: u32 = 1;
/// Resource id of the data BO (a 64 KiB guest blob holding the stream).
pub const RES_DATA: u32 = 2;
/// Resource id of the kernel-memory BO (a 64 KiB guest blob).
pub const RES_KERNEL: u32 = 3;
/// Size of the response memory.
pub const RSP_SIZE: u64 = 4096;
/// Size of each BO resource.
pub const BO_SIZE: u64 = 64 << 10;
/// User VA range asked for (and, as the kernel window's start, returned).
pub const USER_VA_RANGE: u64 = 1 << 47;
/// GPU VA where the data BO is mapped.
pub const DATA_VA: u64 = 0x100_0000;
/// Size of the command stream at the start of the data BO.
pub const STREAM_SIZE: u32 = 0x40;

/// One command of the example.
#[derive(Debug, Clone)]
pub struct ExampleCommand {
    /// Command name.
    pub name: &'static str,
    /// Its sequence number.
    pub seqno: u32,
    /// Where its response goes.
    pub rsp_off: u32,
    /// The encoded command.
    pub bytes: Vec<u8>,
    /// The response the device writes when it runs the command (the
    /// GROUP_SUBMIT response as first written, with its job pending).
    pub response: Vec<u8>,
}

fn rsp<T: ByteValued>(value: T) -> Vec<u8> {
    value.as_slice().to_vec()
}

fn hdr<T>() -> RspHdr {
    RspHdr::for_response::<T>(0)
}

/// The commands of the example, in order.
pub fn commands() -> Vec<ExampleCommand> {
    let mut out = Vec::new();
    let mut push = |name, seqno, rsp_off, bytes, response| {
        out.push(ExampleCommand {
            name,
            seqno,
            rsp_off,
            bytes,
            response,
        })
    };

    push(
        "INIT",
        1,
        0x40,
        encode(
            &InitReq {
                rsp_res_id: RES_RSP,
                num_rings: MAX_RINGS,
                rsp_size: RSP_SIZE,
            },
            1,
            0x40,
        ),
        rsp(InitRsp {
            hdr: hdr::<InitRsp>(),
            flags: CONTEXT_FLAG_PER_RING_FENCES,
            num_rings: MAX_RINGS,
        }),
    );

    push(
        "VM_CREATE",
        2,
        0x50,
        encode(
            &VmCreateReq {
                flags: 0,
                id: 1,
                user_va_range: USER_VA_RANGE,
            },
            2,
            0x50,
        ),
        rsp(VmCreateRsp {
            hdr: hdr::<VmCreateRsp>(),
            id: 1,
            bind_ring: 1,
            user_va_range: USER_VA_RANGE,
            kernel_va_size: USER_VA_RANGE,
        }),
    );

    push(
        "BO_CREATE_FROM_RESOURCE",
        3,
        0x70,
        encode(
            &BoCreateReq {
                res_id: RES_DATA,
                flags: 0,
                exclusive_vm_id: 1,
                handle: 1,
            },
            3,
            0x70,
        ),
        rsp(BoCreateRsp {
            hdr: hdr::<BoCreateRsp>(),
            handle: 1,
            pad: 0,
            size: BO_SIZE,
        }),
    );

    push(
        "BO_CREATE_FROM_RESOURCE",
        4,
        0x88,
        encode(
            &BoCreateReq {
                res_id: RES_KERNEL,
                flags: BO_NO_MMAP,
                exclusive_vm_id: 1,
                handle: 2,
            },
            4,
            0x88,
        ),
        rsp(BoCreateRsp {
            hdr: hdr::<BoCreateRsp>(),
            handle: 2,
            pad: 0,
            size: BO_SIZE,
        }),
    );

    push(
        "VM_ADD_KERNEL_MEMORY",
        5,
        0xa0,
        encode(
            &VmAddKernelMemoryReq {
                vm_id: 1,
                bo_handle: 2,
            },
            5,
            0xa0,
        ),
        rsp(VmAddKernelMemoryRsp {
            hdr: hdr::<VmAddKernelMemoryRsp>(),
            kernel_va: USER_VA_RANGE,
            pool_size: BO_SIZE,
            pool_free: BO_SIZE,
        }),
    );

    let mut w = CommandWriter::<VmBindReq>::new(6, 0xc0);
    let no_syncs = w.array::<SyncOp>(&[]);
    let ops = w.array(&[VmBindOp {
        flags: VM_BIND_OP_TYPE_MAP,
        bo_handle: 1,
        bo_offset: 0,
        va: DATA_VA,
        size: BO_SIZE,
        syncs: no_syncs,
    }]);
    push(
        "VM_BIND",
        6,
        0xc0,
        w.finish(&VmBindReq {
            vm_id: 1,
            flags: 0,
            ops,
        }),
        rsp(VmBindRsp {
            hdr: hdr::<VmBindRsp>(),
            completed_ops: 1,
            pad: 0,
            completion: Completion {
                state: COMPLETION_DONE,
                result: 0,
            },
        }),
    );

    push(
        "SYNCOBJ_CREATE",
        7,
        0xd8,
        encode(
            &SyncobjCreateReq {
                flags: SYNCOBJ_CREATE_TIMELINE,
                handle: 1,
            },
            7,
            0xd8,
        ),
        rsp(SyncobjCreateRsp {
            hdr: hdr::<SyncobjCreateRsp>(),
            handle: 1,
            pad: 0,
        }),
    );

    let mut w = CommandWriter::<GroupCreateReq>::new(8, 0xe8);
    let queues = w.array(&[QueueCreate {
        priority: 0,
        pad: [0; 3],
        ringbuf_size: 4096,
    }]);
    let mut queue_rings = [0u8; 32];
    queue_rings[0] = 2;
    push(
        "GROUP_CREATE",
        8,
        0xe8,
        w.finish(&GroupCreateReq {
            queues,
            max_compute_cores: 4,
            max_fragment_cores: 4,
            max_tiler_cores: 1,
            priority: GROUP_PRIORITY_MEDIUM,
            pad: 0,
            compute_core_mask: 0x50005,
            fragment_core_mask: 0x50005,
            tiler_core_mask: 0x1,
            vm_id: 1,
            handle: 1,
        }),
        rsp(GroupCreateRsp {
            hdr: hdr::<GroupCreateRsp>(),
            handle: 1,
            queue_count: 1,
            queue_rings,
        }),
    );

    let mut w = CommandWriter::<GroupSubmitReq>::new(9, 0x118);
    let syncs = w.array(&[SyncOp {
        flags: SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ | SYNC_OP_SIGNAL,
        handle: 1,
        timeline_value: 1,
    }]);
    let queue_submits = w.array(&[QueueSubmit {
        queue_index: 0,
        stream_size: STREAM_SIZE,
        stream_addr: DATA_VA,
        latest_flush: 0,
        pad: 0,
        syncs,
    }]);
    push(
        "GROUP_SUBMIT",
        9,
        0x118,
        w.finish(&GroupSubmitReq {
            group_handle: 1,
            pad: 0,
            queue_submits,
        }),
        rsp(GroupSubmitRsp {
            hdr: hdr::<GroupSubmitRsp>(),
            completion: Completion {
                state: COMPLETION_PENDING,
                result: 0,
            },
        }),
    );

    out
}

/// The SUBMIT_3D buffer: every command, back to back.
pub fn submit_buffer() -> Vec<u8> {
    commands().into_iter().flat_map(|c| c.bytes).collect()
}

/// The response memory, from offset 0 to the end of the last response, as
/// the device leaves it once the SUBMIT_3D has run (the job still pending).
pub fn responses() -> Vec<u8> {
    let cmds = commands();
    let end = cmds
        .iter()
        .map(|c| c.rsp_off as usize + c.response.len())
        .max()
        .unwrap_or(RSP_MEM_HEADER_SIZE as usize);
    let mut mem = vec![0u8; end];
    let header = RspMemHeader {
        seqno: cmds.last().map_or(0, |c| c.seqno),
        ..RspMemHeader::default()
    };
    mem[..header.as_slice().len()].copy_from_slice(header.as_slice());
    for c in &cmds {
        let at = c.rsp_off as usize;
        mem[at..at + c.response.len()].copy_from_slice(&c.response);
    }
    mem
}

/// Offset of the GROUP_SUBMIT completion record in the response memory,
/// and its bytes once the job completed without error.
pub fn submit_completion_done() -> (usize, Vec<u8>) {
    let at = 0x118 + std::mem::size_of::<RspHdr>();
    let done = Completion {
        state: COMPLETION_DONE,
        result: 0,
    };
    (at, done.as_slice().to_vec())
}

/// Hex lines of `bytes`, 16 per line, each prefixed with its offset
/// (`base` + position) in 4 hex digits.
pub fn hex_lines(bytes: &[u8], base: usize) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x} ", base + i * 16));
        for (j, b) in chunk.iter().enumerate() {
            if j == 8 {
                out.push(' ');
            }
            out.push_str(&format!(" {b:02x}"));
        }
        out.push('\n');
    }
    out
}

/// The request block of the document: each command's title and hex, with
/// offsets in the SUBMIT_3D buffer.
pub fn request_block() -> String {
    let mut out = String::new();
    let mut at = 0usize;
    for c in commands() {
        out.push_str(&format!(
            "# {} (seqno {}, rsp_off {:#x}, len {})\n",
            c.name,
            c.seqno,
            c.rsp_off,
            c.bytes.len()
        ));
        out.push_str(&hex_lines(&c.bytes, at));
        at += c.bytes.len();
    }
    out
}

/// The response block of the document: the header and each response, with
/// offsets in the response memory.
pub fn response_block() -> String {
    let mem = responses();
    let mut out = String::from("# response memory header\n");
    out.push_str(&hex_lines(&mem[..RSP_MEM_HEADER_SIZE as usize], 0));
    for c in commands() {
        let at = c.rsp_off as usize;
        out.push_str(&format!("# {} response (seqno {})\n", c.name, c.seqno));
        out.push_str(&hex_lines(&mem[at..at + c.response.len()], at));
    }
    out
}
