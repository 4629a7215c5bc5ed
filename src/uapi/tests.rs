//! Tests of the guest-facing protocol: struct layouts, the codec's array
//! rules, and the consistency of `docs/protocol.md` with the code (its
//! layout tables, command table and worked example are checked byte for
//! byte against what the structs produce).

use std::mem::{offset_of, size_of};

use vm_memory::ByteValued;

use super::codec::*;
use super::example;
use super::native::*;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

// ---------------------------------------------------------------------------
// Layout descriptions (the source of the document's offset tables)
// ---------------------------------------------------------------------------

struct Field {
    name: &'static str,
    offset: usize,
    ty: &'static str,
    doc: &'static str,
}

struct Layout {
    name: &'static str,
    size: usize,
    fields: Vec<Field>,
}

macro_rules! layout {
    ($t:ident { $( $f:ident : $ty:literal => $doc:literal ),* $(,)? }) => {
        Layout {
            name: stringify!($t),
            size: size_of::<$t>(),
            fields: vec![$(Field {
                name: stringify!($f),
                offset: offset_of!($t, $f),
                ty: $ty,
                doc: $doc,
            }),*],
        }
    };
}

fn type_size(ty: &str) -> usize {
    match ty {
        "u8" => 1,
        "u8[3]" => 3,
        "u32" | "i32" => 4,
        "u64" => 8,
        "u8[32]" | "u64[4]" => 32,
        "RspHdr" | "Completion" => 8,
        "ObjArray" => 16,
        other => panic!("unknown type {other}"),
    }
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!(NativeCmdHdr {
            cmd: "u32" => "command code",
            len: "u32" => "header + body bytes; multiple of 8, at least 16",
            seqno: "u32" => "any value; reported in the response memory header",
            rsp_off: "u32" => "response offset in the response memory; 0: no response",
        }),
        layout!(RspMemHeader {
            seqno: "u32" => "seqno of the last command processed",
            error_count: "u32" => "commands that failed (wraps)",
            last_error_seqno: "u32" => "seqno of the last failed command",
            last_error: "i32" => "its negative errno",
            async_error_count: "u32" => "asynchronous completions with an error (wraps)",
            last_async_error_seqno: "u32" => "seqno of the command whose work last failed",
            last_async_error: "i32" => "that failure's negative errno",
            pad: "u32" => "zero",
            reserved: "u64[4]" => "zero",
        }),
        layout!(RspHdr {
            len: "u32" => "bytes of the whole response",
            ret: "i32" => "0 or a negative errno",
        }),
        layout!(Completion {
            state: "u32" => "0 PENDING, 1 DONE",
            result: "i32" => "0 or the negative errno the work ended with",
        }),
        layout!(ObjArray {
            stride: "u32" => "element size as the guest lays it out",
            count: "u32" => "number of elements",
            offset: "u64" => "offset of element 0 from the start of the command",
        }),
        layout!(SyncOp {
            flags: "u32" => "handle type in bits 7:0, SIGNAL in bit 31",
            handle: "u32" => "syncobj handle",
            timeline_value: "u64" => "timeline point; 0 for binary",
        }),
        layout!(InitReq {
            rsp_res_id: "u32" => "resource holding the response memory",
            num_rings: "u32" => "rings the guest set up, 1..=64",
            rsp_size: "u64" => "bytes used, from offset 0 of the resource",
        }),
        layout!(InitRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            flags: "u32" => "bit 0: per-ring fences (full mode)",
            num_rings: "u32" => "rings in effect",
        }),
        layout!(DevQueryReq {
            query_type: "u32" => "DEV_QUERY_*",
            size: "u32" => "bytes wanted; 0 asks for the size",
        }),
        layout!(DevQueryRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            size: "u32" => "the device's size of the object",
            pad: "u32" => "zero",
        }),
        layout!(ContextInfo {
            wire_format_version: "u32" => "capset wire format version",
            flags: "u32" => "bit 0: per-ring fences",
            num_rings: "u32" => "rings in effect",
            max_vms: "u32" => "VM ids are 1..=max_vms",
            max_bos: "u32" => "BO handles are 1..=max_bos",
            max_groups: "u32" => "group handles are 1..=max_groups",
            max_syncobjs: "u32" => "syncobj handles are 1..=max_syncobjs",
            max_tiler_heaps_per_vm: "u32" => "tiler heaps per VM",
            max_kernel_memory_bos_per_vm: "u32" => "kernel-memory BOs per VM",
            max_jobs_in_flight: "u32" => "queue submits not yet completed",
            max_binds_in_flight: "u32" => "asynchronous bind ops not yet applied",
            max_commands_per_submit: "u32" => "commands per SUBMIT_3D",
            max_submit_size: "u32" => "bytes per SUBMIT_3D",
            job_timeout_ms: "u32" => "job timeout",
            max_syncobj_wait_ms: "u32" => "longest SYNCOBJ_WAIT",
            pad: "u32" => "zero",
            max_mapped_bytes: "u64" => "bytes of user mappings across all VMs",
        }),
        layout!(VmCreateReq {
            flags: "u32" => "MBZ",
            id: "u32" => "VM id to use; 0: lowest free",
            user_va_range: "u64" => "user VA size; 0: default (half the VA space)",
        }),
        layout!(VmCreateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            id: "u32" => "the VM id",
            bind_ring: "u32" => "ring of the VM's bind queue",
            user_va_range: "u64" => "start of the kernel VA window",
            kernel_va_size: "u64" => "size of the kernel VA window",
        }),
        layout!(VmDestroyReq {
            id: "u32" => "VM id",
            pad: "u32" => "MBZ",
        }),
        layout!(VmBindReq {
            vm_id: "u32" => "VM id",
            flags: "u32" => "ASYNC (bit 0) or 0",
            ops: "ObjArray" => "VmBindOp elements, minimum stride 48",
        }),
        layout!(VmBindOp {
            flags: "u32" => "type in bits 31:28; MAP: READONLY, NOEXEC, UNCACHED",
            bo_handle: "u32" => "BO (MAP); 0 otherwise",
            bo_offset: "u64" => "offset in the BO (MAP); 0 otherwise",
            va: "u64" => "GPU VA",
            size: "u64" => "bytes",
            syncs: "ObjArray" => "SyncOp elements (asynchronous only), minimum stride 16",
        }),
        layout!(VmBindRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            completed_ops: "u32" => "ops applied (synchronous) or queued (asynchronous)",
            pad: "u32" => "zero",
            completion: "Completion" => "when the ops were applied",
        }),
        layout!(VmGetStateReq {
            vm_id: "u32" => "VM id",
            pad: "u32" => "MBZ",
        }),
        layout!(VmGetStateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            state: "u32" => "0 USABLE, 1 UNUSABLE",
            pad: "u32" => "zero",
        }),
        layout!(VmAddKernelMemoryReq {
            vm_id: "u32" => "VM id",
            bo_handle: "u32" => "BO to give",
        }),
        layout!(VmAddKernelMemoryRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            kernel_va: "u64" => "where the BO was mapped",
            pool_size: "u64" => "kernel memory of the VM",
            pool_free: "u64" => "of which unused",
        }),
        layout!(BoCreateReq {
            res_id: "u32" => "virtio-gpu resource id",
            flags: "u32" => "NO_MMAP (bit 0) or 0",
            exclusive_vm_id: "u32" => "VM the BO is exclusive to, or 0",
            handle: "u32" => "BO handle to use; 0: lowest free",
        }),
        layout!(BoCreateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            handle: "u32" => "the BO handle",
            pad: "u32" => "zero",
            size: "u64" => "BO size (the resource's)",
        }),
        layout!(BoDestroyReq {
            handle: "u32" => "BO handle",
            pad: "u32" => "MBZ",
        }),
        layout!(GroupCreateReq {
            queues: "ObjArray" => "QueueCreate elements, minimum stride 8",
            max_compute_cores: "u8" => "at most popcount(compute_core_mask)",
            max_fragment_cores: "u8" => "at most popcount(fragment_core_mask)",
            max_tiler_cores: "u8" => "at most popcount(tiler_core_mask)",
            priority: "u8" => "0 LOW, 1 MEDIUM, 2 HIGH, 3 REALTIME",
            pad: "u32" => "MBZ",
            compute_core_mask: "u64" => "subset of shader_present",
            fragment_core_mask: "u64" => "subset of shader_present",
            tiler_core_mask: "u64" => "subset of tiler_present",
            vm_id: "u32" => "VM the group runs in",
            handle: "u32" => "group handle to use; 0: lowest free",
        }),
        layout!(QueueCreate {
            priority: "u8" => "0..=15, 15 highest",
            pad: "u8[3]" => "MBZ",
            ringbuf_size: "u32" => "power of two, 4096..=65536",
        }),
        layout!(GroupCreateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            handle: "u32" => "the group handle",
            queue_count: "u32" => "number of queues",
            queue_rings: "u8[32]" => "ring of queue i (zero past queue_count)",
        }),
        layout!(GroupDestroyReq {
            handle: "u32" => "group handle",
            pad: "u32" => "MBZ",
        }),
        layout!(GroupSubmitReq {
            group_handle: "u32" => "group handle",
            pad: "u32" => "MBZ",
            queue_submits: "ObjArray" => "QueueSubmit elements, minimum stride 40",
        }),
        layout!(QueueSubmit {
            queue_index: "u32" => "queue in the group",
            stream_size: "u32" => "bytes, multiple of 8; 0: sync point",
            stream_addr: "u64" => "GPU VA, 64-byte aligned; 0 iff size is 0",
            latest_flush: "u32" => "bits 30:24 MBZ; 0 forces a flush",
            pad: "u32" => "MBZ",
            syncs: "ObjArray" => "SyncOp elements, minimum stride 16",
        }),
        layout!(GroupSubmitRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            completion: "Completion" => "when every job completed",
        }),
        layout!(GroupGetStateReq {
            handle: "u32" => "group handle",
            pad: "u32" => "MBZ",
        }),
        layout!(GroupGetStateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            state: "u32" => "TIMEDOUT 1, FATAL_FAULT 2, INNOCENT 4",
            fatal_queues: "u32" => "bit i: queue i faulted",
            exception_type: "u32" => "exception of the first fatal fault, or 0",
            pad: "u32" => "zero",
            fault_va: "u64" => "GPU VA of the first MMU fault, or 0",
        }),
        layout!(TilerHeapCreateReq {
            vm_id: "u32" => "VM id",
            initial_chunk_count: "u32" => "at least 1",
            chunk_size: "u32" => "4 KiB aligned, 128 KiB..=8 MiB",
            max_chunks: "u32" => "at least initial_chunk_count",
            target_in_flight: "u32" => "render passes in flight",
            pad: "u32" => "MBZ",
        }),
        layout!(TilerHeapCreateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            handle: "u32" => "(vm_id << 16) | heap index",
            pad: "u32" => "zero",
            tiler_heap_ctx_gpu_va: "u64" => "GPU VA of the heap context",
            first_heap_chunk_gpu_va: "u64" => "GPU VA of the first chunk",
        }),
        layout!(TilerHeapDestroyReq {
            handle: "u32" => "heap handle",
            pad: "u32" => "MBZ",
        }),
        layout!(SyncobjCreateReq {
            flags: "u32" => "SIGNALED (bit 0), TIMELINE (bit 1)",
            handle: "u32" => "handle to use; 0: lowest free",
        }),
        layout!(SyncobjCreateRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            handle: "u32" => "the handle",
            pad: "u32" => "zero",
        }),
        layout!(SyncobjDestroyReq {
            handle: "u32" => "syncobj handle",
            pad: "u32" => "MBZ",
        }),
        layout!(SyncobjResetReq {
            handle: "u32" => "binary syncobj handle",
            pad: "u32" => "MBZ",
        }),
        layout!(SyncobjPoint {
            handle: "u32" => "syncobj handle",
            pad: "u32" => "MBZ",
            point: "u64" => "timeline point; 0 for binary",
        }),
        layout!(SyncobjQueryReq {
            handle: "u32" => "syncobj handle",
            pad: "u32" => "MBZ",
            point: "u64" => "timeline point to report (0: last submitted); 0 for binary",
        }),
        layout!(SyncobjQueryRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            kind: "u32" => "0 binary, 1 timeline",
            status: "u32" => "0 UNSUBMITTED, 1 PENDING, 2 SIGNALED, 3 ERROR",
            error: "i32" => "negative errno when status is ERROR, else 0",
            pad: "u32" => "zero",
            value: "u64" => "timeline: highest point with all earlier ones signalled",
            last_submitted: "u64" => "timeline: highest point submitted",
        }),
        layout!(SyncobjWaitReq {
            flags: "u32" => "WAIT_ALL (bit 0), WAIT_FOR_SUBMIT (bit 1)",
            pad: "u32" => "MBZ",
            timeout_ns: "u64" => "relative timeout; 0: none (the device cap still applies)",
            points: "ObjArray" => "SyncobjPoint elements, at least one, minimum stride 16",
        }),
        layout!(SyncobjWaitRsp {
            hdr: "RspHdr" => "`{len, ret}`",
            first_signaled: "u32" => "index of the point that satisfied the wait",
            pad: "u32" => "zero",
            completion: "Completion" => "when the wait ended",
        }),
    ]
}

fn render_layout(l: &Layout) -> String {
    let mut out = format!("`{}`, {} bytes:\n\n", l.name, l.size);
    out.push_str("| offset | field | type | meaning |\n|---:|---|---|---|\n");
    for f in &l.fields {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            f.offset, f.name, f.ty, f.doc
        ));
    }
    out
}

/// The text between `<!-- begin -->` and `<!-- end -->` in the document,
/// without the surrounding blank lines and code fence.
fn doc_block<'a>(begin: &str, end: &str) -> &'a str {
    let start = PROTOCOL_MD
        .find(begin)
        .unwrap_or_else(|| panic!("docs/protocol.md lacks {begin}"))
        + begin.len();
    let len = PROTOCOL_MD[start..]
        .find(end)
        .unwrap_or_else(|| panic!("docs/protocol.md lacks {end} after {begin}"));
    let text = PROTOCOL_MD[start..start + len].trim();
    let text = text.strip_prefix("```text").unwrap_or(text);
    let text = text.strip_suffix("```").unwrap_or(text);
    // Leaked so that the lifetime is simple; tests only.
    Box::leak(text.trim().to_string().into_boxed_str())
}

/// Prints the generated blocks of the document (run with `--ignored
/// --nocapture` after changing a struct, and paste).
#[test]
#[ignore]
fn print_doc_blocks() {
    for l in layouts() {
        println!(
            "<!-- layout:{} -->\n{}<!-- /layout -->\n",
            l.name,
            render_layout(&l)
        );
    }
    println!("<!-- commands -->\n{}<!-- /commands -->\n", command_table());
    println!(
        "<!-- example:requests -->\n```text\n{}```\n<!-- /example:requests -->\n",
        example::request_block()
    );
    println!(
        "<!-- example:responses -->\n```text\n{}```\n<!-- /example:responses -->\n",
        example::response_block()
    );
}

#[test]
fn layouts_cover_every_byte() {
    for l in layouts() {
        let mut next = 0;
        for f in &l.fields {
            assert_eq!(f.offset, next, "{}.{} offset", l.name, f.name);
            next = f.offset + type_size(f.ty);
        }
        assert_eq!(next, l.size, "{} size", l.name);
    }
}

#[test]
fn doc_layout_tables_match_the_structs() {
    for l in layouts() {
        let begin = format!("<!-- layout:{} -->", l.name);
        let found = doc_block(&begin, "<!-- /layout -->");
        assert_eq!(
            found,
            render_layout(&l).trim(),
            "docs/protocol.md table of {} differs; expected:\n{}",
            l.name,
            render_layout(&l)
        );
    }
    // Every table in the document is one of the checked ones.
    let tables = PROTOCOL_MD.matches("<!-- layout:").count();
    assert_eq!(tables, layouts().len());
}

// ---------------------------------------------------------------------------
// Command table
// ---------------------------------------------------------------------------

struct CommandRow {
    code: u32,
    name: &'static str,
    request: &'static str,
    request_size: usize,
    response: &'static str,
    response_size: usize,
}

fn row<R: NativeRequest>(request: &'static str, response: &'static str) -> CommandRow {
    CommandRow {
        code: R::CMD,
        name: R::NAME,
        request,
        request_size: size_of::<R>(),
        response,
        response_size: size_of::<R::Response>(),
    }
}

fn command_rows() -> Vec<CommandRow> {
    vec![
        CommandRow {
            code: NATIVE_CMD_NOP,
            name: "NOP",
            request: "none",
            request_size: 0,
            response: "none",
            response_size: 0,
        },
        row::<InitReq>("InitReq", "InitRsp"),
        row::<DevQueryReq>("DevQueryReq", "DevQueryRsp + data"),
        row::<VmCreateReq>("VmCreateReq", "VmCreateRsp"),
        row::<VmDestroyReq>("VmDestroyReq", "RspHdr"),
        row::<VmBindReq>("VmBindReq", "VmBindRsp"),
        row::<VmGetStateReq>("VmGetStateReq", "VmGetStateRsp"),
        row::<BoCreateReq>("BoCreateReq", "BoCreateRsp"),
        row::<GroupCreateReq>("GroupCreateReq", "GroupCreateRsp"),
        row::<GroupDestroyReq>("GroupDestroyReq", "RspHdr"),
        row::<GroupSubmitReq>("GroupSubmitReq", "GroupSubmitRsp"),
        row::<GroupGetStateReq>("GroupGetStateReq", "GroupGetStateRsp"),
        row::<TilerHeapCreateReq>("TilerHeapCreateReq", "TilerHeapCreateRsp"),
        row::<TilerHeapDestroyReq>("TilerHeapDestroyReq", "RspHdr"),
        row::<BoDestroyReq>("BoDestroyReq", "RspHdr"),
        row::<VmAddKernelMemoryReq>("VmAddKernelMemoryReq", "VmAddKernelMemoryRsp"),
        row::<SyncobjCreateReq>("SyncobjCreateReq", "SyncobjCreateRsp"),
        row::<SyncobjDestroyReq>("SyncobjDestroyReq", "RspHdr"),
        row::<SyncobjResetReq>("SyncobjResetReq", "RspHdr"),
        row::<SyncobjSignalReq>("SyncobjPoint", "RspHdr"),
        row::<SyncobjQueryReq>("SyncobjQueryReq", "SyncobjQueryRsp"),
        row::<SyncobjWaitReq>("SyncobjWaitReq", "SyncobjWaitRsp"),
    ]
}

fn command_table() -> String {
    let mut out = String::from(
        "| code | command | request | bytes | response | bytes |\n|---|---|---|---:|---|---:|\n",
    );
    for r in command_rows() {
        out.push_str(&format!(
            "| `{:#04x}` | {} | {} | {} | {} | {} |\n",
            r.code, r.name, r.request, r.request_size, r.response, r.response_size
        ));
    }
    out
}

#[test]
fn command_table_matches_the_code_and_the_doc() {
    let rows = command_rows();
    assert_eq!(rows.len(), ALL_COMMANDS.len());
    for (r, (code, name)) in rows.iter().zip(ALL_COMMANDS) {
        assert_eq!((r.code, r.name), (*code, *name));
        assert_eq!(command_name(*code), Some(*name));
    }
    let found = doc_block("<!-- commands -->", "<!-- /commands -->");
    assert_eq!(
        found,
        command_table().trim(),
        "docs/protocol.md command table differs; expected:\n{}",
        command_table()
    );
}

#[test]
fn command_codes_are_unique_and_sorted() {
    for pair in ALL_COMMANDS.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{:?}", pair);
    }
    let mut names: Vec<_> = ALL_COMMANDS.iter().map(|(_, n)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ALL_COMMANDS.len());
    assert_eq!(command_name(0x16), None);
    assert_eq!(command_name(u32::MAX), None);
}

// ---------------------------------------------------------------------------
// Worked example
// ---------------------------------------------------------------------------

#[test]
fn doc_worked_example_matches_the_structs() {
    let found = doc_block("<!-- example:requests -->", "<!-- /example:requests -->");
    assert_eq!(
        found,
        example::request_block().trim(),
        "docs/protocol.md request hex differs; expected:\n{}",
        example::request_block()
    );
    let found = doc_block("<!-- example:responses -->", "<!-- /example:responses -->");
    assert_eq!(
        found,
        example::response_block().trim(),
        "docs/protocol.md response hex differs; expected:\n{}",
        example::response_block()
    );
}

#[test]
fn worked_example_is_well_formed() {
    let buf = example::submit_buffer();
    let cmds = crate::native::parse_commands(&buf).expect("framing");
    let expected = example::commands();
    assert_eq!(cmds.len(), expected.len());
    for ((hdr, body), c) in cmds.iter().zip(&expected) {
        assert_eq!(command_name(hdr.cmd), Some(c.name));
        assert_eq!(hdr.seqno, c.seqno);
        assert_eq!(hdr.rsp_off, c.rsp_off);
        // Every response fits the response memory and is as long as its
        // `len` says.
        let len = u32::from_le_bytes(c.response[..4].try_into().unwrap());
        assert_eq!(len as usize, c.response.len());
        assert_eq!(
            check_response_slot(c.rsp_off, c.response.len() as u64, example::RSP_SIZE),
            Ok(true)
        );
        assert!(body.len() % 8 == 0);
    }
    // Response slots do not overlap.
    let mut slots: Vec<_> = expected
        .iter()
        .map(|c| (c.rsp_off as usize, c.rsp_off as usize + c.response.len()))
        .collect();
    slots.sort_unstable();
    for pair in slots.windows(2) {
        assert!(pair[0].1 <= pair[1].0);
    }

    // The bind and the submit decode to what the example meant.
    let (_, bind_body) = cmds[5];
    let view = RequestView::<VmBindReq>::parse(bind_body).unwrap();
    assert_eq!(view.request().flags, 0);
    let ops = view.array::<VmBindOp>(&view.request().ops).unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].flags & VM_BIND_OP_TYPE_MASK, VM_BIND_OP_TYPE_MAP);
    assert_eq!(ops[0].va, example::DATA_VA);
    assert!(view.array::<SyncOp>(&ops[0].syncs).unwrap().is_empty());

    let (_, submit_body) = cmds[8];
    let view = RequestView::<GroupSubmitReq>::parse(submit_body).unwrap();
    let jobs = view
        .array::<QueueSubmit>(&view.request().queue_submits)
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].stream_addr % 64, 0);
    let syncs = view.array::<SyncOp>(&jobs[0].syncs).unwrap();
    assert_eq!(
        syncs,
        [SyncOp {
            flags: SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ | SYNC_OP_SIGNAL,
            handle: 1,
            timeline_value: 1,
        }]
    );

    let (_, group_body) = cmds[7];
    let view = RequestView::<GroupCreateReq>::parse(group_body).unwrap();
    let g = view.request();
    let model = crate::gpu::model::GpuModel::g610().gpu_info;
    assert_eq!(g.compute_core_mask & !model.shader_present, 0);
    assert_eq!(g.tiler_core_mask & !model.tiler_present, 0);
    assert!(u32::from(g.max_compute_cores) <= g.compute_core_mask.count_ones());

    // The completion the device writes later lands on the submit's record.
    let mem = example::responses();
    let (at, done) = example::submit_completion_done();
    let rec = Completion::from_slice(&mem[at..at + 8]).unwrap();
    assert_eq!(rec.state, COMPLETION_PENDING);
    assert_eq!(
        Completion::from_slice(&done).unwrap().state,
        COMPLETION_DONE
    );
    let hdr = RspMemHeader::from_slice(&mem[..64]).unwrap();
    assert_eq!(hdr.seqno, 9);
    assert_eq!(hdr.error_count, 0);
}

// ---------------------------------------------------------------------------
// Key offsets against Panthor's uAPI layout
// ---------------------------------------------------------------------------

#[test]
fn panthor_mirrored_structs_keep_panthor_offsets() {
    // drm_panthor_vm_bind_op
    assert_eq!(offset_of!(VmBindOp, bo_offset), 8);
    assert_eq!(offset_of!(VmBindOp, va), 16);
    assert_eq!(offset_of!(VmBindOp, size), 24);
    assert_eq!(offset_of!(VmBindOp, syncs), 32);
    // drm_panthor_queue_submit
    assert_eq!(offset_of!(QueueSubmit, stream_addr), 8);
    assert_eq!(offset_of!(QueueSubmit, latest_flush), 16);
    assert_eq!(offset_of!(QueueSubmit, syncs), 24);
    // drm_panthor_group_create
    assert_eq!(offset_of!(GroupCreateReq, max_compute_cores), 16);
    assert_eq!(offset_of!(GroupCreateReq, priority), 19);
    assert_eq!(offset_of!(GroupCreateReq, compute_core_mask), 24);
    assert_eq!(offset_of!(GroupCreateReq, tiler_core_mask), 40);
    assert_eq!(offset_of!(GroupCreateReq, vm_id), 48);
    assert_eq!(offset_of!(GroupCreateReq, handle), 52);
    // drm_panthor_queue_create, drm_panthor_sync_op, drm_panthor_obj_array
    assert_eq!(offset_of!(QueueCreate, ringbuf_size), 4);
    assert_eq!(offset_of!(SyncOp, timeline_value), 8);
    assert_eq!(offset_of!(ObjArray, offset), 8);
    // drm_panthor_vm_create, vm_bind, group_submit
    assert_eq!(offset_of!(VmCreateReq, user_va_range), 8);
    assert_eq!(offset_of!(VmBindReq, ops), 8);
    assert_eq!(offset_of!(GroupSubmitReq, queue_submits), 8);
    // drm_panthor_tiler_heap_create inputs
    assert_eq!(offset_of!(TilerHeapCreateReq, target_in_flight), 16);
    // Every response starts with {len, ret}.
    assert_eq!(offset_of!(VmBindRsp, completion), 16);
    assert_eq!(offset_of!(GroupSubmitRsp, completion), 8);
    assert_eq!(offset_of!(SyncobjWaitRsp, completion), 16);
}

#[test]
fn flag_values_follow_panthor_and_drm() {
    assert_eq!(VM_BIND_OP_TYPE_UNMAP, 0x1000_0000);
    assert_eq!(VM_BIND_OP_TYPE_SYNC_ONLY, 0x2000_0000);
    assert_eq!(SYNC_OP_SIGNAL, 0x8000_0000);
    assert_eq!(
        crate::gpu::mmu::MapFlags::ALL.bits(),
        VM_BIND_OP_MAP_READONLY | VM_BIND_OP_MAP_NOEXEC | VM_BIND_OP_MAP_UNCACHED
    );
    assert_eq!(
        crate::gpu::sync::WaitFlags::WAIT_FOR_SUBMIT,
        SYNCOBJ_WAIT_FOR_SUBMIT
    );
    assert_eq!(
        crate::gpu::mmu::vm::MIN_KERNEL_VA_SIZE,
        VM_MIN_KERNEL_VA_SIZE
    );
    assert_eq!(MAX_RINGS, 64);
    assert!(MAX_QUEUES_PER_GROUP >= crate::gpu::model::GpuModel::g610().csif_info.cs_slot_count);
}

#[test]
fn errno_values_are_linux_ones() {
    assert_eq!(errno::ENOENT, libc::ENOENT);
    assert_eq!(errno::EIO, libc::EIO);
    assert_eq!(errno::E2BIG, libc::E2BIG);
    assert_eq!(errno::ENOMEM, libc::ENOMEM);
    assert_eq!(errno::EACCES, libc::EACCES);
    assert_eq!(errno::EFAULT, libc::EFAULT);
    assert_eq!(errno::EBUSY, libc::EBUSY);
    assert_eq!(errno::EEXIST, libc::EEXIST);
    assert_eq!(errno::EINVAL, libc::EINVAL);
    assert_eq!(errno::ENOSPC, libc::ENOSPC);
    assert_eq!(errno::ETIME, libc::ETIME);
    assert_eq!(errno::ETIMEDOUT, libc::ETIMEDOUT);
    assert_eq!(errno::ECANCELED, libc::ECANCELED);
}

#[test]
fn dev_query_sizes() {
    assert_eq!(dev_query_object_size(DEV_QUERY_GPU_INFO), Some(112));
    assert_eq!(dev_query_min_size(DEV_QUERY_GPU_INFO), Some(96));
    assert_eq!(dev_query_object_size(DEV_QUERY_CSIF_INFO), Some(24));
    assert_eq!(dev_query_object_size(DEV_QUERY_TIMESTAMP_INFO), Some(24));
    assert_eq!(dev_query_min_size(DEV_QUERY_TIMESTAMP_INFO), Some(16));
    assert_eq!(
        dev_query_object_size(DEV_QUERY_GROUP_PRIORITIES_INFO),
        Some(4)
    );
    assert_eq!(dev_query_object_size(DEV_QUERY_CONTEXT_INFO), Some(72));
    assert_eq!(dev_query_min_size(4), None);
    for t in [0, 1, 2, 3, DEV_QUERY_CONTEXT_INFO] {
        assert!(dev_query_min_size(t).unwrap() <= dev_query_object_size(t).unwrap());
    }
    assert_eq!(dev_query_response_len(0), 16);
    assert_eq!(dev_query_response_len(4), 24);
    assert_eq!(dev_query_response_len(112), 128);
    assert_eq!(dev_query_response_len(u32::MAX), 16 + (1u64 << 32));
}

#[test]
fn context_info_defaults_are_the_constants() {
    let c = ContextInfo::defaults(CONTEXT_FLAG_PER_RING_FENCES, 64);
    assert_eq!(c.max_groups, 128);
    assert_eq!(c.max_vms, 32);
    assert_eq!(
        c.max_syncobjs,
        crate::gpu::sync::SyncLimits::default().max_syncobjs
    );
    assert_eq!(c.wire_format_version, super::capset::WIRE_FORMAT_VERSION);
    assert_eq!(c.num_rings, 64);
    assert_eq!(offset_of!(ContextInfo, max_mapped_bytes), 64);
}

// ---------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------

fn body(cmd: &[u8]) -> &[u8] {
    &cmd[NATIVE_HDR_SIZE as usize..]
}

#[test]
fn writer_sets_header_and_places_arrays_after_the_request() {
    let mut w = CommandWriter::<GroupSubmitReq>::new(7, 0x100);
    let s = w.array(&[SyncOp::default(); 2]);
    let q = w.array(&[QueueSubmit {
        syncs: s,
        ..QueueSubmit::default()
    }]);
    let cmd = w.finish(&GroupSubmitReq {
        group_handle: 3,
        pad: 0,
        queue_submits: q,
    });
    let hdr = NativeCmdHdr::from_slice(&cmd[..16]).unwrap();
    assert_eq!(
        *hdr,
        NativeCmdHdr {
            cmd: NATIVE_CMD_GROUP_SUBMIT,
            len: 16 + 24 + 32 + 40,
            seqno: 7,
            rsp_off: 0x100
        }
    );
    assert_eq!(s.offset, RequestView::<GroupSubmitReq>::payload_start());
    assert_eq!(s.offset, 40);
    assert_eq!(q.offset, 72);
    let view = RequestView::<GroupSubmitReq>::parse(body(&cmd)).unwrap();
    assert_eq!(view.request().group_handle, 3);
    assert_eq!(view.payload_end(), cmd.len() as u64);
    let jobs = view.array::<QueueSubmit>(&q).unwrap();
    assert_eq!(view.array::<SyncOp>(&jobs[0].syncs).unwrap().len(), 2);

    let empty = CommandWriter::<VmBindReq>::new(0, 0).array::<VmBindOp>(&[]);
    assert_eq!(
        empty,
        ObjArray {
            stride: 48,
            count: 0,
            offset: 0
        }
    );
    assert_eq!(
        encode_nop(5),
        NativeCmdHdr {
            cmd: 0,
            len: 16,
            seqno: 5,
            rsp_off: 0
        }
        .as_slice()
    );
    assert_eq!(
        encode(&VmDestroyReq { id: 2, pad: 0 }, 1, 64).len(),
        16 + size_of::<VmDestroyReq>()
    );
    assert_eq!(response_size::<VmDestroyReq>(), 8);
    assert_eq!(response_size::<DevQueryReq>(), 16);
}

/// A VM_BIND command with one op whose syncs array is described by `syncs`
/// and followed by `extra` payload bytes.
fn bind_with_syncs(syncs: ObjArray, extra: &[u8]) -> Vec<u8> {
    let mut w = CommandWriter::<VmBindReq>::new(1, 0);
    let ops = w.array(&[VmBindOp {
        flags: VM_BIND_OP_TYPE_SYNC_ONLY,
        syncs,
        ..VmBindOp::default()
    }]);
    let mut cmd = w.finish(&VmBindReq {
        vm_id: 1,
        flags: VM_BIND_ASYNC,
        ops,
    });
    cmd.extend_from_slice(extra);
    let len = cmd.len() as u32;
    cmd[4..8].copy_from_slice(&len.to_le_bytes());
    cmd
}

fn read_syncs(cmd: &[u8]) -> Result<Vec<SyncOp>, DecodeError> {
    let view = RequestView::<VmBindReq>::parse(body(cmd))?;
    let ops = view.array::<VmBindOp>(&view.request().ops)?;
    view.array::<SyncOp>(&ops[0].syncs)
}

#[test]
fn arrays_follow_the_obj_array_rules() {
    // 16 + 24 + 48 = 88: the extra bytes start there.
    let one = SyncOp {
        flags: SYNC_OP_SIGNAL,
        handle: 9,
        timeline_value: 0,
    };
    let at = |offset: u64, stride: u32, count: u32| ObjArray {
        stride,
        count,
        offset,
    };

    // A plain element.
    let cmd = bind_with_syncs(at(88, 16, 1), one.as_slice());
    assert_eq!(read_syncs(&cmd).unwrap(), [one]);

    // count 0: stride and offset are not looked at.
    let cmd = bind_with_syncs(at(3, 1, 0), &[]);
    assert_eq!(read_syncs(&cmd).unwrap(), []);

    // Stride below the minimum, or not a multiple of 8: EINVAL.
    let cmd = bind_with_syncs(at(88, 8, 1), one.as_slice());
    let e = read_syncs(&cmd).unwrap_err();
    assert_eq!(e, DecodeError::BadStride { stride: 8, min: 16 });
    assert_eq!(e.errno(), errno::EINVAL);
    let cmd = bind_with_syncs(at(88, 20, 1), &[0; 24]);
    assert_eq!(read_syncs(&cmd).unwrap_err().errno(), errno::EINVAL);

    // Misaligned offset: EINVAL.
    let cmd = bind_with_syncs(at(92, 16, 1), &[0; 24]);
    assert_eq!(
        read_syncs(&cmd).unwrap_err(),
        DecodeError::MisalignedOffset(92)
    );

    // Outside the payload area: EFAULT. Into the request, past the end,
    // and wrapping around.
    for arr in [
        at(16, 16, 1),
        at(32, 16, 1),
        at(88, 16, 2),
        at(u64::MAX - 7, 16, 1),
        at(88, 16, u32::MAX),
    ] {
        let cmd = bind_with_syncs(arr, one.as_slice());
        let e = read_syncs(&cmd).unwrap_err();
        assert!(
            matches!(e, DecodeError::OutOfBounds { .. }),
            "{arr:?}: {e:?}"
        );
        assert_eq!(e.errno(), errno::EFAULT);
    }

    // A longer element from a newer guest: zeros beyond the known fields
    // are accepted, anything else is E2BIG.
    let mut longer = one.as_slice().to_vec();
    longer.extend_from_slice(&[0; 8]);
    let cmd = bind_with_syncs(at(88, 24, 1), &longer);
    assert_eq!(read_syncs(&cmd).unwrap(), [one]);
    longer[20] = 1;
    let cmd = bind_with_syncs(at(88, 24, 1), &longer);
    let e = read_syncs(&cmd).unwrap_err();
    assert_eq!(e, DecodeError::UnknownTrailingBytes { index: 0 });
    assert_eq!(e.errno(), errno::E2BIG);

    // Arrays may overlap (they are only read).
    let cmd = bind_with_syncs(at(64, 16, 1), &[]);
    let view = RequestView::<VmBindReq>::parse(body(&cmd)).unwrap();
    assert!(view.array::<SyncOp>(&at(64, 16, 1)).is_ok());
}

/// An element whose later version grew: the device knows 24 bytes, the
/// first version had 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GrownElement {
    a: u64,
    b: u64,
    c: u64,
}

// SAFETY: `repr(C)`, three `u64`s, no padding.
unsafe impl ByteValued for GrownElement {}

impl ArrayElement for GrownElement {
    const MIN_SIZE: u32 = 16;
}

#[test]
fn shorter_elements_are_zero_extended() {
    let mut w = CommandWriter::<VmBindReq>::new(1, 0);
    let old = [SyncOp {
        flags: 1,
        handle: 2,
        timeline_value: 3,
    }; 2];
    let arr = w.array(&old);
    let cmd = w.finish(&VmBindReq::default());
    let view = RequestView::<VmBindReq>::parse(body(&cmd)).unwrap();
    let grown = view.array::<GrownElement>(&arr).unwrap();
    assert_eq!(
        grown,
        [GrownElement {
            a: 1 | (2 << 32),
            b: 3,
            c: 0
        }; 2]
    );
}

#[test]
fn short_request_is_einval() {
    let e = RequestView::<VmBindReq>::parse(&[0; 16]).unwrap_err();
    assert_eq!(e, DecodeError::ShortRequest { len: 16, need: 24 });
    assert_eq!(e.errno(), errno::EINVAL);
    assert!(RequestView::<VmDestroyReq>::parse(&[0; 8]).is_ok());
}

#[test]
fn response_slots_and_seqnos() {
    assert_eq!(check_response_slot(RSP_NONE, 100, 4096), Ok(false));
    assert_eq!(check_response_slot(64, 32, 4096), Ok(true));
    assert_eq!(check_response_slot(4064, 32, 4096), Ok(true));
    assert_eq!(check_response_slot(4072, 32, 4096), Err(errno::EFAULT));
    assert_eq!(check_response_slot(8, 8, 4096), Err(errno::EFAULT));
    assert_eq!(check_response_slot(68, 8, 4096), Err(errno::EFAULT));
    assert_eq!(
        check_response_slot(u32::MAX - 7, u64::MAX, u64::MAX),
        Err(errno::EFAULT)
    );

    assert!(seqno_reached(5, 5));
    assert!(seqno_reached(6, 5));
    assert!(!seqno_reached(4, 5));
    assert!(seqno_reached(2, u32::MAX - 1));
    assert!(!seqno_reached(u32::MAX - 1, 2));
}

#[test]
fn rsp_hdr_len_is_the_response_size() {
    assert_eq!(
        RspHdr::for_response::<VmBindRsp>(-22),
        RspHdr { len: 24, ret: -22 }
    );
    assert_eq!(size_of::<RspMemHeader>() as u32, RSP_MEM_HEADER_SIZE);
    assert!(RSP_MEM_MIN_SIZE >= u64::from(RSP_MEM_HEADER_SIZE));
}
