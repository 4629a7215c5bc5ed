//! mali-guest-tests: drives the emulated Mali GPU from inside a Linux guest
//! through the virtgpu DRM uAPI and the project's native-context protocol,
//! and checks what comes back.
//!
//! ```text
//! mali-guest-tests [--mode auto|compat|full] [RENDER_NODE]
//! ```
//!
//! `auto` (the default) picks full mode when the device offers both
//! CONTEXT_INIT and RESOURCE_BLOB, compat mode otherwise. The run starts
//! with the mode, why it was picked, and INIT's answer:
//!
//! ```text
//! guest-tests: mode full (auto: CONTEXT_INIT=1 RESOURCE_BLOB=1)
//! guest-tests: INIT: 64 ring(s), flags 0x1
//! ```
//!
//! Then each case prints
//!
//! ```text
//! TEST PASS <name> <detail>
//! TEST FAIL <name> <detail>
//! ```
//!
//! and the run ends with `guest-tests: N passed, M failed`; the exit status
//! is 0 only when every case passed. Cases, in order:
//!
//! 1. `device-query`: DEV_QUERY GPU_INFO reports the Mali-G610 identity;
//! 2. `bind-and-store`: VM_CREATE, kernel memory, a synchronous VM_BIND and
//!    a job whose stream stores values and bumps a sync word in a BO, read
//!    back through the guest's own mapping of the BO after its out-fence;
//! 3. `async-bind-gates-submit`: an asynchronous VM_BIND signals a syncobj
//!    point that a GROUP_SUBMIT in the same buffer waits for, with no guest
//!    wait in between;
//! 4. `jobs-in-flight-in-order`: many jobs in flight, each in its own
//!    EXECBUFFER with an out-fence; the fences signal in submission order,
//!    each after its job's results are in memory;
//! 5. `fault-unmapped-va`: a store to an unmapped VA, in a second VM,
//!    completes with an error, GROUP_GET_STATE reports FATAL_FAULT at that
//!    VA, the VM becomes unusable, and a new group in the first VM still
//!    works;
//! 6. `two-queues-sync`: a CS SYNC_WAIT on one queue released by a
//!    SYNC_SET on another queue of the same group;
//! 7. `fence-timelines`: the fence of a finished job next to an unrelated
//!    blocked job: signalled at once in full mode (its own ring), held back
//!    in compat mode (one global timeline) until the blocked job ends;
//! 8. `unbind-then-fault`: a store that works while mapped faults at the
//!    same VA after a synchronous UNMAP;
//! 9. `job-timeout`: an endless job ends with `-ETIMEDOUT` after the
//!    daemon's job timeout, and other groups keep working;
//! 10. `process-exit-in-flight`: a child process exits with a job in flight;
//!     this process's context keeps working.
//!
//! It is built as a static executable for the test initramfs.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    tests::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("mali-guest-tests only runs on Linux");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod tests {
    use std::error::Error as _;
    use std::os::fd::{AsFd, OwnedFd};
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use vhost_user_mali::gpu::cs::{AsyncOp, Builder, Cond, SyncCond, SyncScope};
    use vhost_user_mali::guest::session::{map_op, signal_point, unmap_op, wait_point};
    use vhost_user_mali::guest::virtgpu::DEFAULT_RENDER_NODE;
    use vhost_user_mali::guest::{
        wait_sync_file, Batch, Buffer, Job, Mode, NativeSession, Param, SessionConfig, VirtGpu,
    };
    use vhost_user_mali::uapi::native::*;

    /// GPU_ID of the Mali-G610 the daemon emulates by default.
    const G610_GPU_ID: u32 = 0xa867_0005;
    /// GPU VA of the data BO.
    const DATA_VA: u64 = 0x100_0000;
    /// Size of the data BO.
    const DATA_SIZE: u64 = 64 << 10;
    /// Size of the kernel-memory BO (ring buffers and queue sync objects).
    const KERNEL_SIZE: u64 = 128 << 10;
    /// Where the asynchronous bind maps the data BO's first page again.
    const ALIAS_VA: u64 = 0x800_0000;
    /// A VA that nothing maps.
    const UNMAPPED_VA: u64 = 0x4000_0000;
    /// Jobs of the in-flight case.
    const JOBS_IN_FLIGHT: u32 = 16;

    // Offsets in the data BO: command streams (64 bytes each) in the first
    // pages, results after them.
    const STREAM_STORE: u64 = 0x000;
    const STREAM_ALIAS: u64 = 0x040;
    const STREAM_FAULT: u64 = 0x080;
    const STREAM_AFTER_FAULT: u64 = 0x0c0;
    const STREAM_MANY: u64 = 0x800;
    const RESULT_STORE: u64 = 0x2000;
    const RESULT_SYNC: u64 = 0x2100;
    const RESULT_ALIAS: u64 = 0x3000;
    const RESULT_MANY: u64 = 0x4000;
    const RESULT_MANY_COUNT: u64 = 0x4100;
    const RESULT_MANY_GATE: u64 = 0x4104;
    const STREAM_GATE: u64 = 0x2c0;
    const RESULT_AFTER_FAULT: u64 = 0x5000;
    const STREAM_WAITER: u64 = 0x100;
    const STREAM_SETTER: u64 = 0x140;
    const STREAM_SCRATCH: u64 = 0x180;
    const STREAM_ENDLESS: u64 = 0x1c0;
    const STREAM_CHILD: u64 = 0x200;
    const STREAM_AFTER_CHILD: u64 = 0x240;
    const STREAM_AFTER_TIMEOUT: u64 = 0x280;
    const RESULT_GATE: u64 = 0x5100;
    const RESULT_WOKEN: u64 = 0x5104;
    const RESULT_SCRATCH: u64 = 0x6000;
    const RESULT_CHILD_GATE: u64 = 0x5200;
    const RESULT_AFTER_CHILD: u64 = 0x5204;
    const RESULT_AFTER_TIMEOUT: u64 = 0x5208;
    const STREAM_TL_BLOCKED: u64 = 0x300;
    const STREAM_TL_QUICK: u64 = 0x340;
    const STREAM_TL_OPEN: u64 = 0x380;
    const RESULT_TL_GATE: u64 = 0x5300;
    const RESULT_TL_BLOCKED: u64 = 0x5304;
    const RESULT_TL_QUICK: u64 = 0x5308;
    /// How long the `fence-timelines` case watches a fence that compat mode
    /// must hold back, at most: it stays below a quarter of the daemon's job
    /// timeout, which would end the blocked job.
    const HOLD: Duration = Duration::from_millis(300);
    /// Where the unbind case maps one page of scratch memory.
    const SCRATCH_VA: u64 = 0x2000_0000;
    /// The longest job timeout the timeout case accepts waiting for.
    const MAX_TIMEOUT_MS: u32 = 2000;
    /// Argument that makes the program the abandoning child of the
    /// `process-exit-in-flight` case.
    const CHILD_ARG: &str = "--abandon-work";

    type CaseResult = Result<String, String>;
    /// A test case: its result from the shared rig.
    type Case = fn(&mut Rig) -> CaseResult;

    /// Tally of the cases, printing each result as it is recorded.
    #[derive(Default)]
    struct Report {
        passed: u32,
        failed: u32,
    }

    impl Report {
        fn record(&mut self, name: &str, result: CaseResult) {
            match result {
                Ok(detail) => {
                    self.passed += 1;
                    println!("TEST PASS {name} {detail}");
                }
                Err(detail) => {
                    self.failed += 1;
                    println!("TEST FAIL {name} {detail}");
                }
            }
        }

        fn finish(self) -> ExitCode {
            println!(
                "guest-tests: {} passed, {} failed",
                self.passed, self.failed
            );
            if self.failed == 0 && self.passed > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }

    /// An error with its chain of causes on one line.
    fn describe(err: &vhost_user_mali::guest::Error) -> String {
        let mut text = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// `?` for library calls inside a case.
    trait Context<T> {
        fn ctx(self, what: &str) -> Result<T, String>;
    }

    impl<T> Context<T> for vhost_user_mali::guest::Result<T> {
        fn ctx(self, what: &str) -> Result<T, String> {
            self.map_err(|e| format!("{what}: {}", describe(&e)))
        }
    }

    fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
        if cond {
            Ok(())
        } else {
            Err(what())
        }
    }

    /// A stream from a builder closure, padded to 64 bytes.
    fn stream(build: impl FnOnce(&mut Builder)) -> Result<Vec<u8>, String> {
        let mut b = Builder::new();
        build(&mut b);
        b.pad_to(8);
        b.to_bytes().map_err(|e| format!("stream: {e}"))
    }

    /// `mem32[at] = value`.
    fn store(b: &mut Builder, at: u64, value: u32) {
        b.move48(0, at);
        b.move32(2, value);
        b.store_multiple(2, 1, 0, 0);
    }

    /// A loop that never ends.
    fn endless(b: &mut Builder) {
        let top = b.label_here();
        b.add_imm32(8, 8, 1);
        b.move32(9, 1);
        b.branch_to(Cond::Ne, 9, top);
    }

    /// Waits (CS SYNC_WAIT) until `mem32[at] > 0`.
    fn wait_word(b: &mut Builder, at: u64) {
        b.move48(10, at);
        b.move32(12, 0);
        b.sync_wait32(SyncCond::Gt, false, 10, 12);
    }

    /// `mem32[at] = value` as a GPU sync operation.
    fn set_word(b: &mut Builder, at: u64, value: u32) {
        b.move48(20, at);
        b.move32(22, value);
        b.sync_set32(SyncScope::System, false, 20, 22, AsyncOp::NOW);
    }

    /// `mem32[at] += 1` as a GPU sync operation.
    fn bump(b: &mut Builder, at: u64) {
        b.move48(4, at);
        b.move32(6, 1);
        b.sync_add32(SyncScope::System, false, 4, 6, AsyncOp::NOW);
    }

    /// Everything the cases share: the session, its VM, BOs and group.
    struct Rig {
        s: NativeSession,
        data: Buffer,
        _kernel: Buffer,
        /// Further buffers that must outlive their BOs.
        keep: Vec<Buffer>,
        cores: (u64, u64),
        /// Ring of group 1's queue (0 in compat mode).
        ring: u32,
        /// Render node and mode argument, for the child process.
        path: String,
        mode_arg: String,
    }

    impl Rig {
        fn word(&self, off: u64) -> u32 {
            self.data.map.read_u32(off as usize)
        }

        fn put_stream(&self, off: u64, bytes: &[u8]) {
            self.data.map.write_bytes(off as usize, bytes);
        }

        fn wait(&self, fence: &OwnedFd, what: &str) -> Result<(), String> {
            self.s.wait_fence(fence).ctx(what)
        }
    }

    pub fn main() -> ExitCode {
        let mut mode_arg = "auto".to_owned();
        let mut path = DEFAULT_RENDER_NODE.to_owned();
        let mut args = std::env::args().skip(1);
        let mut child = false;
        while let Some(a) = args.next() {
            if a == CHILD_ARG {
                child = true;
            } else if a == "--mode" {
                mode_arg = args.next().unwrap_or_default();
            } else {
                path = a;
            }
        }
        if child {
            return match abandon_work(&path, &mode_arg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("child: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let mut report = Report::default();
        run(&path, &mode_arg, &mut report);
        report.finish()
    }

    /// The mode to run in, and why it was picked.
    fn pick_mode(gpu: &VirtGpu, arg: &str) -> Result<(Mode, String), String> {
        let full = Mode::Full {
            num_rings: MAX_RINGS,
        };
        match arg {
            "compat" => Ok((Mode::Compat, "--mode compat".into())),
            "full" => Ok((full, "--mode full".into())),
            "auto" => {
                let param = |p| gpu.get_param(p).unwrap_or(0);
                let (ctx, blob) = (param(Param::ContextInit), param(Param::ResourceBlob));
                let why = format!("auto: CONTEXT_INIT={ctx} RESOURCE_BLOB={blob}");
                if ctx != 0 && blob != 0 {
                    Ok((full, why))
                } else {
                    Ok((Mode::Compat, why))
                }
            }
            other => Err(format!("unknown mode {other}")),
        }
    }

    /// Fails unless INIT's answer is the one of `mode`: the rings asked for
    /// and per-ring fences in full mode, one ring and no per-ring fences in
    /// compat mode.
    fn check_init(s: &NativeSession, mode: Mode) -> Result<(), String> {
        let (rings, flags) = match mode {
            Mode::Compat => (1, 0),
            Mode::Full { num_rings } => (num_rings, CONTEXT_FLAG_PER_RING_FENCES),
        };
        check(
            s.num_rings() == rings && s.flags() & CONTEXT_FLAG_PER_RING_FENCES == flags,
            || {
                format!(
                    "INIT answered {} ring(s), flags {:#x} in {mode} mode; want {rings} ring(s), per-ring fences {flags:#x}",
                    s.num_rings(),
                    s.flags()
                )
            },
        )
    }

    fn run(path: &str, mode_arg: &str, report: &mut Report) {
        let setup = (|| -> Result<(Rig, GpuInfo), String> {
            let gpu = VirtGpu::open(path).ctx("open")?;
            let (mode, why) = pick_mode(&gpu, mode_arg)?;
            // ci/e2e.sh checks this line for the mode it expects.
            println!("guest-tests: mode {mode} ({why})");
            let mut s = NativeSession::open(
                gpu,
                SessionConfig {
                    mode,
                    ..Default::default()
                },
            )
            .ctx("session")?;
            println!(
                "guest-tests: INIT: {} ring(s), flags {:#x}",
                s.num_rings(),
                s.flags()
            );
            check_init(&s, mode)?;
            let info: GpuInfo = s.dev_query(DEV_QUERY_GPU_INFO).ctx("DEV_QUERY")?;
            let data = s.alloc(DATA_SIZE).ctx("data buffer")?;
            let kernel = s.alloc(KERNEL_SIZE).ctx("kernel buffer")?;
            Ok((
                Rig {
                    s,
                    data,
                    _kernel: kernel,
                    keep: Vec::new(),
                    cores: (info.shader_present, info.tiler_present),
                    ring: 0,
                    path: String::new(),
                    mode_arg: String::new(),
                },
                info,
            ))
        })();
        let (mut rig, info) = match setup {
            Ok(v) => v,
            Err(e) => {
                report.record("setup", Err(e));
                return;
            }
        };

        report.record(
            "device-query",
            if info.gpu_id == G610_GPU_ID {
                Ok(format!(
                    "gpu_id={:#x} shader_present={:#x} tiler_present={:#x}",
                    info.gpu_id, info.shader_present, info.tiler_present
                ))
            } else {
                Err(format!("gpu_id={:#x}, want {G610_GPU_ID:#x}", info.gpu_id))
            },
        );

        let cases: [(&str, Case); 9] = [
            ("bind-and-store", bind_and_store),
            ("async-bind-gates-submit", async_bind_gates_submit),
            ("jobs-in-flight-in-order", jobs_in_flight_in_order),
            ("fault-unmapped-va", fault_unmapped_va),
            ("two-queues-sync", two_queues_sync),
            ("fence-timelines", fence_timelines),
            ("unbind-then-fault", unbind_then_fault),
            ("job-timeout", job_timeout),
            ("process-exit-in-flight", process_exit_in_flight),
        ];
        rig.path = path.to_owned();
        rig.mode_arg = mode_arg.to_owned();
        let mut ready = true;
        for (name, case) in cases {
            if !ready {
                report.record(name, Err("skipped: the VM setup failed".into()));
                continue;
            }
            let result = case(&mut rig);
            // Every later case needs the VM of the first.
            if name == "bind-and-store" && result.is_err() {
                ready = false;
            }
            report.record(name, result);
        }
    }

    /// VM 1 with kernel memory, the data BO mapped synchronously, group 1
    /// with one queue; a job stores two values and bumps a sync word.
    fn bind_and_store(rig: &mut Rig) -> CaseResult {
        let vm = rig.s.vm_create(1).ctx("VM_CREATE")?;
        let bo = rig.s.bo_from_resource(&rig.data, 0, 1).ctx("BO data")?;
        let kbo = rig
            .s
            .bo_from_resource(&rig._kernel, 1, 2)
            .ctx("BO kernel")?;
        let km = rig.s.add_kernel_memory(1, 2).ctx("VM_ADD_KERNEL_MEMORY")?;
        let bind = rig
            .s
            .vm_bind_sync(1, &[map_op(1, 0, DATA_VA, DATA_SIZE)])
            .ctx("VM_BIND")?;
        check(bind.completed_ops == 1, || {
            format!("VM_BIND completed_ops {}", bind.completed_ops)
        })?;
        let group = rig
            .s
            .group_create(1, 1, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE")?;
        rig.ring = u32::from(group.queue_rings[0]);

        let s = stream(|b| {
            store(b, DATA_VA + RESULT_STORE, 0xcafe_f00d);
            store(b, DATA_VA + RESULT_STORE + 4, 0x1234_5678);
            bump(b, DATA_VA + RESULT_SYNC);
        })?;
        rig.put_stream(STREAM_STORE, &s);
        let t = Instant::now();
        let (slot, fence) = rig
            .s
            .group_submit(
                1,
                &[Job::new(0, DATA_VA + STREAM_STORE, s.len() as u32)],
                Some(rig.ring),
            )
            .ctx("GROUP_SUBMIT")?;
        rig.wait(&fence, "job fence")?;
        let elapsed = t.elapsed();
        rig.s.response(slot).ctx("GROUP_SUBMIT response")?;
        let c = rig.s.completion(slot);
        check(c.state == COMPLETION_DONE && c.result == 0, || {
            format!("completion {{state {}, result {}}}", c.state, c.result)
        })?;
        let (a, b, sync) = (
            rig.word(RESULT_STORE),
            rig.word(RESULT_STORE + 4),
            rig.word(RESULT_SYNC),
        );
        check(a == 0xcafe_f00d && b == 0x1234_5678 && sync == 1, || {
            format!("memory {a:#x} {b:#x} sync {sync}")
        })?;
        Ok(format!(
            "vm={} bo={}+{} kernel_va={:#x} job {:?}: {a:#x} {b:#x} sync={sync}",
            vm.id, bo.handle, kbo.handle, km.kernel_va, elapsed
        ))
    }

    /// An asynchronous bind maps the data BO's first page at ALIAS_VA and
    /// signals point 1; the job, whose stream is only reachable through
    /// that mapping, waits for point 1. Both travel in one EXECBUFFER.
    fn async_bind_gates_submit(rig: &mut Rig) -> CaseResult {
        let timeline = rig
            .s
            .syncobj_create(SYNCOBJ_CREATE_TIMELINE, 1)
            .ctx("SYNCOBJ_CREATE")?;
        let s = stream(|b| {
            store(b, DATA_VA + RESULT_ALIAS, 0xa11a5);
            bump(b, DATA_VA + RESULT_ALIAS + 4);
        })?;
        rig.put_stream(STREAM_ALIAS, &s);
        let mut batch = Batch::default();
        let bind = rig.s.push_vm_bind(
            &mut batch,
            1,
            VM_BIND_ASYNC,
            &[map_op(1, 0, ALIAS_VA, 4096)],
            &[vec![signal_point(timeline, 1)]],
        );
        let job = rig.s.push_group_submit(
            &mut batch,
            1,
            &[Job::new(0, ALIAS_VA + STREAM_ALIAS, s.len() as u32)
                .with_syncs(vec![wait_point(timeline, 1), signal_point(timeline, 2)])],
        );
        let fence = rig.s.submit(batch, Some(rig.ring)).ctx("EXECBUFFER")?;
        rig.wait(&fence, "fence")?;
        let b = rig.s.response(bind).ctx("VM_BIND")?;
        check(b.completed_ops == 1, || {
            format!("VM_BIND queued {}", b.completed_ops)
        })?;
        rig.s.response(job).ctx("GROUP_SUBMIT")?;
        let (bc, jc) = (rig.s.completion(bind), rig.s.completion(job));
        check(
            bc.state == COMPLETION_DONE && bc.result == 0 && jc.state == COMPLETION_DONE,
            || format!("bind {bc:?} job {jc:?}"),
        )?;
        check(jc.result == 0, || format!("job result {}", jc.result))?;
        let (v, n) = (rig.word(RESULT_ALIAS), rig.word(RESULT_ALIAS + 4));
        check(v == 0xa11a5 && n == 1, || format!("memory {v:#x} sync {n}"))?;
        let q = rig.s.syncobj_query(timeline, 0).ctx("SYNCOBJ_QUERY")?;
        check(q.value == 2 && q.last_submitted == 2, || {
            format!("timeline value {} last {}", q.value, q.last_submitted)
        })?;
        Ok(format!(
            "stored {v:#x} via {ALIAS_VA:#x}, timeline at {}",
            q.value
        ))
    }

    /// JOBS_IN_FLIGHT jobs, each in its own fenced EXECBUFFER, submitted
    /// without waiting. The first waits (CS SYNC_WAIT) for a gate word, so
    /// all of them are provably in flight: no fence has signalled and every
    /// completion record is PENDING. A job of another group then opens the
    /// gate, and the fences are waited for in order.
    fn jobs_in_flight_in_order(rig: &mut Rig) -> CaseResult {
        rig.s
            .group_create(1, 7, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE gate")?;
        let mut jobs = Vec::new();
        let t = Instant::now();
        for i in 0..JOBS_IN_FLIGHT {
            let off = STREAM_MANY + 64 * u64::from(i);
            let s = stream(|b| {
                if i == 0 {
                    wait_word(b, DATA_VA + RESULT_MANY_GATE);
                }
                store(b, DATA_VA + RESULT_MANY + 4 * u64::from(i), i + 1);
                bump(b, DATA_VA + RESULT_MANY_COUNT);
            })?;
            rig.put_stream(off, &s);
            let (slot, fence) = rig
                .s
                .group_submit(
                    1,
                    &[Job::new(0, DATA_VA + off, s.len() as u32)],
                    Some(rig.ring),
                )
                .ctx("GROUP_SUBMIT")?;
            jobs.push((slot, fence));
        }
        // Give the device time to run anything it (wrongly) could.
        std::thread::sleep(Duration::from_millis(50));
        for (i, (slot, fence)) in jobs.iter().enumerate() {
            rig.s.wait_seqno(slot.seqno).ctx("response")?;
            rig.s.response(*slot).ctx("GROUP_SUBMIT")?;
            let c = rig.s.completion(*slot);
            let signalled = wait_sync_file(fence.as_fd(), Some(Duration::ZERO)).ctx("poll")?;
            check(c.state == COMPLETION_PENDING && !signalled, || {
                format!("job {i} finished before the gate opened: {c:?}, fence {signalled}")
            })?;
        }
        let count = rig.word(RESULT_MANY_COUNT);
        check(count == 0, || {
            format!("counter {count} before the gate opened")
        })?;
        let opener = stream(|b| set_word(b, DATA_VA + RESULT_MANY_GATE, 1))?;
        rig.put_stream(STREAM_GATE, &opener);
        let mut batch = Batch::default();
        let open = rig.s.push_group_submit(
            &mut batch,
            7,
            &[Job::new(0, DATA_VA + STREAM_GATE, opener.len() as u32)],
        );
        rig.s.run(batch).ctx("GROUP_SUBMIT gate")?;
        rig.s.response(open).ctx("GROUP_SUBMIT gate")?;
        let pending_at_submit = jobs.len();
        for (i, (slot, fence)) in jobs.iter().enumerate() {
            rig.wait(fence, &format!("fence {i}"))?;
            let c = rig.s.completion(*slot);
            check(c.state == COMPLETION_DONE && c.result == 0, || {
                format!("job {i}: fence signalled with completion {c:?}")
            })?;
            let v = rig.word(RESULT_MANY + 4 * i as u64);
            check(v == i as u32 + 1, || format!("job {i}: stored {v}"))?;
            for (j, (_, earlier)) in jobs[..i].iter().enumerate() {
                let done = wait_sync_file(earlier.as_fd(), Some(Duration::ZERO)).ctx("poll")?;
                check(done, || format!("fence {i} signalled before fence {j}"))?;
            }
        }
        let count = rig.word(RESULT_MANY_COUNT);
        check(count == JOBS_IN_FLIGHT, || format!("counter {count}"))?;
        Ok(format!(
            "{pending_at_submit} jobs held in flight behind a gate, then completed in order in {:?}",
            t.elapsed()
        ))
    }

    /// A job of group 2, in its own VM 2, stores to an unmapped VA: its
    /// completion carries -EINVAL, the group is FATAL_FAULT at that VA, VM 2
    /// becomes unusable, later submits to the group are refused, and a new
    /// group in VM 1 still runs jobs.
    fn fault_unmapped_va(rig: &mut Rig) -> CaseResult {
        let errors_before = rig.s.header().async_error_count;
        rig.s.vm_create(2).ctx("VM_CREATE 2")?;
        let kernel = rig.s.alloc(KERNEL_SIZE).ctx("kernel buffer 2")?;
        rig.s.bo_from_resource(&kernel, 2, 3).ctx("BO kernel 2")?;
        rig.keep.push(kernel);
        rig.s
            .add_kernel_memory(2, 3)
            .ctx("VM_ADD_KERNEL_MEMORY 2")?;
        rig.s
            .vm_bind_sync(2, &[map_op(1, 0, DATA_VA, DATA_SIZE)])
            .ctx("VM_BIND 2")?;
        let g2 = rig
            .s
            .group_create(2, 2, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE 2")?;
        let bad = stream(|b| store(b, UNMAPPED_VA, 1))?;
        rig.put_stream(STREAM_FAULT, &bad);
        let (slot, fence) = rig
            .s
            .group_submit(
                2,
                &[Job::new(0, DATA_VA + STREAM_FAULT, bad.len() as u32)],
                Some(u32::from(g2.queue_rings[0])),
            )
            .ctx("GROUP_SUBMIT 2")?;
        rig.wait(&fence, "faulting job's fence")?;
        let c = rig.s.completion(slot);
        check(
            c.state == COMPLETION_DONE && c.result == -errno::EINVAL,
            || format!("faulting job completion {c:?}"),
        )?;
        let h = rig.s.header();
        check(
            h.async_error_count == errors_before.wrapping_add(1)
                && h.last_async_error == -errno::EINVAL,
            || {
                format!(
                    "header async errors {} (before {errors_before}), last {}",
                    h.async_error_count, h.last_async_error
                )
            },
        )?;
        let st = rig.s.group_get_state(2).ctx("GROUP_GET_STATE")?;
        check(
            st.state & GROUP_STATE_FATAL_FAULT != 0
                && st.fatal_queues == 1
                && st.fault_va & !0xfff == UNMAPPED_VA,
            || {
                format!(
                    "state {:#x} fatal_queues {:#x} fault_va {:#x}",
                    st.state, st.fatal_queues, st.fault_va
                )
            },
        )?;
        let mut batch = Batch::default();
        let again = rig.s.push_group_submit(
            &mut batch,
            2,
            &[Job::new(0, DATA_VA + STREAM_FAULT, bad.len() as u32)],
        );
        rig.s.run(batch).ctx("resubmit")?;
        let ret = rig.s.read(again).hdr.ret;
        check(ret == -errno::EINVAL, || {
            format!("submit to the faulted group gave {ret}")
        })?;
        let vm_state = rig.s.vm_get_state(2).ctx("VM_GET_STATE")?;
        check(vm_state == VM_STATE_UNUSABLE, || {
            format!("VM 2 state {vm_state} after the fault")
        })?;

        let g3 = rig
            .s
            .group_create(1, 3, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE 3")?;
        let good = stream(|b| store(b, DATA_VA + RESULT_AFTER_FAULT, 0x600d))?;
        rig.put_stream(STREAM_AFTER_FAULT, &good);
        let (slot, fence) = rig
            .s
            .group_submit(
                3,
                &[Job::new(0, DATA_VA + STREAM_AFTER_FAULT, good.len() as u32)],
                Some(u32::from(g3.queue_rings[0])),
            )
            .ctx("GROUP_SUBMIT 3")?;
        rig.wait(&fence, "second group's fence")?;
        let c = rig.s.completion(slot);
        let v = rig.word(RESULT_AFTER_FAULT);
        check(c.result == 0 && v == 0x600d, || {
            format!("second group: completion {c:?}, memory {v:#x}")
        })?;
        Ok(format!(
            "result {} state {:#x} exception {:#x} fault_va {:#x}; group 3 stored {v:#x}",
            -errno::EINVAL,
            st.state,
            st.exception_type,
            st.fault_va
        ))
    }

    /// Two queues of one group: a job on queue 0 waits (CS SYNC_WAIT) for a
    /// word that a job on queue 1, submitted after it, sets.
    fn two_queues_sync(rig: &mut Rig) -> CaseResult {
        let g = rig
            .s
            .group_create(1, 4, GROUP_PRIORITY_MEDIUM, &[2, 9], rig.cores)
            .ctx("GROUP_CREATE")?;
        let waiter = stream(|b| {
            wait_word(b, DATA_VA + RESULT_GATE);
            store(b, DATA_VA + RESULT_WOKEN, 0xabcd);
        })?;
        let setter = stream(|b| set_word(b, DATA_VA + RESULT_GATE, 7))?;
        rig.put_stream(STREAM_WAITER, &waiter);
        rig.put_stream(STREAM_SETTER, &setter);
        let mut batch = Batch::default();
        let first = rig.s.push_group_submit(
            &mut batch,
            4,
            &[Job::new(0, DATA_VA + STREAM_WAITER, waiter.len() as u32)],
        );
        let second = rig.s.push_group_submit(
            &mut batch,
            4,
            &[Job::new(1, DATA_VA + STREAM_SETTER, setter.len() as u32)],
        );
        let fence = rig
            .s
            .submit(batch, Some(u32::from(g.queue_rings[0])))
            .ctx("EXECBUFFER")?;
        rig.wait(&fence, "fence")?;
        for slot in [first, second] {
            rig.s.response(slot).ctx("GROUP_SUBMIT")?;
            let c = rig.s.completion(slot);
            check(c.state == COMPLETION_DONE && c.result == 0, || {
                format!("completion {c:?}")
            })?;
        }
        let (gate, woken) = (rig.word(RESULT_GATE), rig.word(RESULT_WOKEN));
        check(gate == 7 && woken == 0xabcd, || {
            format!("gate {gate} woken {woken:#x}")
        })?;
        Ok(format!(
            "queue 1 set {gate}, queue 0 woke and stored {woken:#x}"
        ))
    }

    /// A finished job's fence next to an unrelated blocked job. Group 8
    /// runs a job blocked on a gate word, then group 1 a job that finishes
    /// at once. In full mode each queue has its own ring, so the finished
    /// job's fence signals while the other job is still blocked; in compat
    /// mode both fences are on the one global timeline, so the finished
    /// job's fence is held behind the blocked job's until a third job opens
    /// the gate (docs/protocol.md, 7.2 and 7.3).
    fn fence_timelines(rig: &mut Rig) -> CaseResult {
        let info: ContextInfo = rig
            .s
            .dev_query(DEV_QUERY_CONTEXT_INFO)
            .ctx("DEV_QUERY CONTEXT_INFO")?;
        let hold = HOLD.min(Duration::from_millis(u64::from(info.job_timeout_ms) / 4));
        let g = rig
            .s
            .group_create(1, 8, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE")?;
        let blocked_ring = u32::from(g.queue_rings[0]);
        let blocker = stream(|b| {
            wait_word(b, DATA_VA + RESULT_TL_GATE);
            store(b, DATA_VA + RESULT_TL_BLOCKED, 0xb10c);
        })?;
        let quick = stream(|b| store(b, DATA_VA + RESULT_TL_QUICK, 0x9c1c))?;
        let opener = stream(|b| set_word(b, DATA_VA + RESULT_TL_GATE, 1))?;
        rig.put_stream(STREAM_TL_BLOCKED, &blocker);
        rig.put_stream(STREAM_TL_QUICK, &quick);
        rig.put_stream(STREAM_TL_OPEN, &opener);

        let (blocked_slot, blocked_fence) = rig
            .s
            .group_submit(
                8,
                &[Job::new(
                    0,
                    DATA_VA + STREAM_TL_BLOCKED,
                    blocker.len() as u32,
                )],
                Some(blocked_ring),
            )
            .ctx("GROUP_SUBMIT blocked")?;
        let t = Instant::now();
        let (quick_slot, quick_fence) = rig
            .s
            .group_submit(
                1,
                &[Job::new(0, DATA_VA + STREAM_TL_QUICK, quick.len() as u32)],
                Some(rig.ring),
            )
            .ctx("GROUP_SUBMIT quick")?;
        // The quick job's work is done: its completion record says so.
        let result = rig
            .s
            .wait_completion(quick_slot)
            .ctx("quick job's completion")?;
        let v = rig.word(RESULT_TL_QUICK);
        check(result == 0 && v == 0x9c1c, || {
            format!("quick job: result {result}, memory {v:#x}")
        })?;
        let verdict = match rig.s.mode() {
            Mode::Full { .. } => {
                let signalled = wait_sync_file(quick_fence.as_fd(), Some(hold)).ctx("poll")?;
                check(signalled, || {
                    format!(
                        "the finished job's fence on ring {} did not signal within {hold:?} \
                         while ring {blocked_ring} was blocked",
                        rig.ring
                    )
                })?;
                format!(
                    "finished job's fence on ring {} signalled after {:?} while ring \
                     {blocked_ring}'s job was blocked",
                    rig.ring,
                    t.elapsed()
                )
            }
            Mode::Compat => {
                let signalled = wait_sync_file(quick_fence.as_fd(), Some(hold)).ctx("poll")?;
                check(!signalled, || {
                    "the finished job's fence signalled before the earlier blocked job's, \
                     on one global timeline"
                        .to_owned()
                })?;
                format!(
                    "finished job's fence held {hold:?} behind an unrelated blocked job \
                     (one global timeline)"
                )
            }
        };
        // The blocked job really was blocked all along.
        let c = rig.s.completion(blocked_slot);
        let signalled = wait_sync_file(blocked_fence.as_fd(), Some(Duration::ZERO)).ctx("poll")?;
        check(c.state == COMPLETION_PENDING && !signalled, || {
            format!("blocked job not blocked: {c:?}, fence {signalled}")
        })?;

        let mut batch = Batch::default();
        let open = rig.s.push_group_submit(
            &mut batch,
            1,
            &[Job::new(0, DATA_VA + STREAM_TL_OPEN, opener.len() as u32)],
        );
        rig.s.run(batch).ctx("GROUP_SUBMIT gate")?;
        rig.s.response(open).ctx("GROUP_SUBMIT gate")?;
        rig.wait(&blocked_fence, "blocked job's fence")?;
        rig.wait(&quick_fence, "quick job's fence")?;
        let c = rig.s.completion(blocked_slot);
        let v = rig.word(RESULT_TL_BLOCKED);
        check(
            c.state == COMPLETION_DONE && c.result == 0 && v == 0xb10c,
            || format!("blocked job after the gate: completion {c:?}, memory {v:#x}"),
        )?;
        Ok(verdict)
    }

    /// VM 3 maps a scratch page; a job stores there; after a synchronous
    /// UNMAP the same job faults at that VA.
    fn unbind_then_fault(rig: &mut Rig) -> CaseResult {
        rig.s.vm_create(3).ctx("VM_CREATE 3")?;
        let kernel = rig.s.alloc(KERNEL_SIZE).ctx("kernel buffer 3")?;
        rig.s.bo_from_resource(&kernel, 3, 4).ctx("BO kernel 3")?;
        rig.keep.push(kernel);
        rig.s
            .add_kernel_memory(3, 4)
            .ctx("VM_ADD_KERNEL_MEMORY 3")?;
        rig.s
            .vm_bind_sync(
                3,
                &[
                    map_op(1, 0, DATA_VA, DATA_SIZE),
                    map_op(1, RESULT_SCRATCH, SCRATCH_VA, 4096),
                ],
            )
            .ctx("VM_BIND 3")?;
        let g = rig
            .s
            .group_create(3, 5, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE")?;
        let ring = u32::from(g.queue_rings[0]);
        let s = stream(|b| store(b, SCRATCH_VA + 0x10, 0x5c5c))?;
        rig.put_stream(STREAM_SCRATCH, &s);
        let job = Job::new(0, DATA_VA + STREAM_SCRATCH, s.len() as u32);
        let (slot, fence) = rig
            .s
            .group_submit(5, std::slice::from_ref(&job), Some(ring))
            .ctx("GROUP_SUBMIT mapped")?;
        rig.wait(&fence, "fence")?;
        let c = rig.s.completion(slot);
        let v = rig.word(RESULT_SCRATCH + 0x10);
        check(c.result == 0 && v == 0x5c5c, || {
            format!("mapped store: completion {c:?}, memory {v:#x}")
        })?;
        let unbind = rig
            .s
            .vm_bind_sync(3, &[unmap_op(SCRATCH_VA, 4096)])
            .ctx("VM_BIND unmap")?;
        check(unbind.completed_ops == 1, || {
            format!("UNMAP completed_ops {}", unbind.completed_ops)
        })?;
        let (slot, fence) = rig
            .s
            .group_submit(5, &[job], Some(ring))
            .ctx("GROUP_SUBMIT unmapped")?;
        rig.wait(&fence, "fence")?;
        let c = rig.s.completion(slot);
        check(
            c.state == COMPLETION_DONE && c.result == -errno::EINVAL,
            || format!("store after unmap: completion {c:?}"),
        )?;
        let st = rig.s.group_get_state(5).ctx("GROUP_GET_STATE")?;
        check(
            st.state & GROUP_STATE_FATAL_FAULT != 0 && st.fault_va & !0xfff == SCRATCH_VA,
            || format!("state {:#x} fault_va {:#x}", st.state, st.fault_va),
        )?;
        Ok(format!(
            "store before unmap ok, after unmap fault at {:#x}",
            st.fault_va
        ))
    }

    /// An endless job is killed by the daemon's job timeout: its completion
    /// reports -ETIMEDOUT, the group TIMEDOUT, and group 1 still works.
    /// Needs a daemon started with a job timeout of at most MAX_TIMEOUT_MS.
    fn job_timeout(rig: &mut Rig) -> CaseResult {
        let info: ContextInfo = rig
            .s
            .dev_query(DEV_QUERY_CONTEXT_INFO)
            .ctx("DEV_QUERY CONTEXT_INFO")?;
        check(info.job_timeout_ms <= MAX_TIMEOUT_MS, || {
            format!(
                "job timeout is {} ms; start the daemon with --job-timeout-ms {MAX_TIMEOUT_MS} or less",
                info.job_timeout_ms
            )
        })?;
        let g = rig
            .s
            .group_create(1, 6, GROUP_PRIORITY_MEDIUM, &[1], rig.cores)
            .ctx("GROUP_CREATE")?;
        let s = stream(endless)?;
        rig.put_stream(STREAM_ENDLESS, &s);
        let t = Instant::now();
        let (slot, fence) = rig
            .s
            .group_submit(
                6,
                &[Job::new(0, DATA_VA + STREAM_ENDLESS, s.len() as u32)],
                Some(u32::from(g.queue_rings[0])),
            )
            .ctx("GROUP_SUBMIT")?;
        rig.wait(&fence, "fence")?;
        let took = t.elapsed();
        let c = rig.s.completion(slot);
        check(
            c.state == COMPLETION_DONE && c.result == -errno::ETIMEDOUT,
            || format!("completion {c:?}"),
        )?;
        let st = rig.s.group_get_state(6).ctx("GROUP_GET_STATE")?;
        check(st.state & GROUP_STATE_TIMEDOUT != 0, || {
            format!("state {:#x}", st.state)
        })?;
        let good = stream(|b| store(b, DATA_VA + RESULT_AFTER_TIMEOUT, 0x71))?;
        rig.put_stream(STREAM_AFTER_TIMEOUT, &good);
        let (slot, fence) = rig
            .s
            .group_submit(
                1,
                &[Job::new(
                    0,
                    DATA_VA + STREAM_AFTER_TIMEOUT,
                    good.len() as u32,
                )],
                Some(rig.ring),
            )
            .ctx("GROUP_SUBMIT after")?;
        rig.wait(&fence, "fence")?;
        let v = rig.word(RESULT_AFTER_TIMEOUT);
        let c = rig.s.completion(slot);
        check(c.result == 0 && v == 0x71, || {
            format!("group 1 after the timeout: completion {c:?}, memory {v:#x}")
        })?;
        Ok(format!(
            "timeout {} ms, fence after {took:?}, state {:#x}",
            info.job_timeout_ms, st.state
        ))
    }

    /// A child process sets up its own context, queues a job that can never
    /// finish and exits without waiting; afterwards this process's context
    /// still runs jobs.
    fn process_exit_in_flight(rig: &mut Rig) -> CaseResult {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let out = std::process::Command::new(exe)
            .args([CHILD_ARG, "--mode", &rig.mode_arg, &rig.path])
            .output()
            .map_err(|e| format!("spawn: {e}"))?;
        let said = String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', "; ");
        check(out.status.success(), || {
            format!("child failed ({}): {said}", out.status)
        })?;
        let s = stream(|b| store(b, DATA_VA + RESULT_AFTER_CHILD, 0xc1d))?;
        rig.put_stream(STREAM_AFTER_CHILD, &s);
        let (slot, fence) = rig
            .s
            .group_submit(
                1,
                &[Job::new(0, DATA_VA + STREAM_AFTER_CHILD, s.len() as u32)],
                Some(rig.ring),
            )
            .ctx("GROUP_SUBMIT")?;
        rig.wait(&fence, "fence")?;
        let c = rig.s.completion(slot);
        let v = rig.word(RESULT_AFTER_CHILD);
        check(c.result == 0 && v == 0xc1d, || {
            format!("after the child: completion {c:?}, memory {v:#x}")
        })?;
        Ok(format!("child: {said}; then stored {v:#x}"))
    }

    /// The child of `process-exit-in-flight`: a context with a job waiting
    /// for a word nobody sets, then exit with the job in flight.
    fn abandon_work(path: &str, mode_arg: &str) -> Result<(), String> {
        let gpu = VirtGpu::open(path).ctx("open")?;
        let (mode, _) = pick_mode(&gpu, mode_arg)?;
        let mut s = NativeSession::open(
            gpu,
            SessionConfig {
                mode,
                ..Default::default()
            },
        )
        .ctx("session")?;
        let info: GpuInfo = s.dev_query(DEV_QUERY_GPU_INFO).ctx("DEV_QUERY")?;
        let data = s.alloc(DATA_SIZE).ctx("data buffer")?;
        let kernel = s.alloc(KERNEL_SIZE).ctx("kernel buffer")?;
        s.vm_create(1).ctx("VM_CREATE")?;
        s.bo_from_resource(&data, 0, 1).ctx("BO data")?;
        s.bo_from_resource(&kernel, 1, 2).ctx("BO kernel")?;
        s.add_kernel_memory(1, 2).ctx("VM_ADD_KERNEL_MEMORY")?;
        s.vm_bind_sync(1, &[map_op(1, 0, DATA_VA, DATA_SIZE)])
            .ctx("VM_BIND")?;
        s.group_create(
            1,
            1,
            GROUP_PRIORITY_MEDIUM,
            &[1],
            (info.shader_present, info.tiler_present),
        )
        .ctx("GROUP_CREATE")?;
        let st = stream(|b| wait_word(b, DATA_VA + RESULT_CHILD_GATE))?;
        data.map.write_bytes(STREAM_CHILD as usize, &st);
        let mut batch = Batch::default();
        let slot = s.push_group_submit(
            &mut batch,
            1,
            &[Job::new(0, DATA_VA + STREAM_CHILD, st.len() as u32)],
        );
        // Unfenced: nothing in the guest kernel waits for this job.
        s.run(batch).ctx("GROUP_SUBMIT")?;
        s.response(slot).ctx("GROUP_SUBMIT")?;
        let c = s.completion(slot);
        if c.state != COMPLETION_PENDING {
            return Err(format!("job not in flight: {c:?}"));
        }
        println!("job queued, exiting with it in flight");
        Ok(())
    }
}
