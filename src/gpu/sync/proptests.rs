//! Property test: random operation sequences on a [`SyncTable`] agree with a
//! deliberately naive reference model that keeps every fence and every point
//! for ever and rescans everything after each step.

use proptest::prelude::*;

use super::*;

/// A fence of the reference model.
#[derive(Clone, Debug)]
struct RefFence {
    state: Option<FenceResult>,
    waiters: Vec<u32>,
}

#[derive(Clone, Debug)]
enum RefKind {
    Binary {
        /// Index into `RefModel::fences`.
        current: Option<usize>,
        submit_waiters: Vec<u32>,
    },
    Timeline {
        /// Every point ever added, in increasing order, with its result.
        points: Vec<(u64, Option<FenceResult>)>,
        /// `(requested point, waiter)`.
        waiters: Vec<(u64, u32)>,
    },
}

#[derive(Clone, Debug)]
struct RefObj {
    handle: Option<u32>,
    /// False once destroyed with nothing left waiting on it.
    kept: bool,
    kind: RefKind,
}

#[derive(Clone, Copy, Debug)]
enum RefToken {
    Binary { fence: usize },
    Timeline { obj: usize, point: u64 },
}

#[derive(Default)]
struct RefModel {
    objs: Vec<RefObj>,
    fences: Vec<RefFence>,
    tokens: Vec<Option<RefToken>>,
}

fn timeline_value(points: &[(u64, Option<FenceResult>)]) -> u64 {
    let mut value = 0;
    for &(p, r) in points {
        if r.is_none() {
            break;
        }
        value = p;
    }
    value
}

fn timeline_head(points: &[(u64, Option<FenceResult>)]) -> u64 {
    points.last().map_or(0, |&(p, _)| p)
}

fn first_point_result(points: &[(u64, Option<FenceResult>)], target: u64) -> FenceResult {
    points
        .iter()
        .find(|&&(p, _)| p >= target)
        .and_then(|&(_, r)| r)
        .unwrap_or(Ok(()))
}

fn errno_ok(r: FenceResult) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => (1..=MAX_ERRNO).contains(&e),
    }
}

impl RefModel {
    fn find(&self, handle: u32) -> Result<usize, i32> {
        self.objs
            .iter()
            .position(|o| o.handle == Some(handle) && handle != 0)
            .ok_or(libc::ENOENT)
    }

    fn create(&mut self, timeline: bool, signaled: bool) -> u32 {
        let mut handle = 1;
        while self.objs.iter().any(|o| o.handle == Some(handle)) {
            handle += 1;
        }
        let kind = if timeline {
            RefKind::Timeline {
                points: Vec::new(),
                waiters: Vec::new(),
            }
        } else {
            let current = signaled.then(|| {
                self.fences.push(RefFence {
                    state: Some(Ok(())),
                    waiters: Vec::new(),
                });
                self.fences.len() - 1
            });
            RefKind::Binary {
                current,
                submit_waiters: Vec::new(),
            }
        };
        self.objs.push(RefObj {
            handle: Some(handle),
            kept: true,
            kind,
        });
        handle
    }

    /// Releases every timeline waiter whose point has signalled.
    fn sweep(&mut self, out: &mut Vec<Released<u32>>) {
        for obj in &mut self.objs {
            if !obj.kept {
                continue;
            }
            if let RefKind::Timeline { points, waiters } = &mut obj.kind {
                let value = timeline_value(points);
                waiters.retain(|&(target, w)| {
                    if target <= value {
                        out.push(Released {
                            waiter: w,
                            result: first_point_result(points, target),
                        });
                        false
                    } else {
                        true
                    }
                });
                if obj.handle.is_none() && waiters.is_empty() {
                    obj.kept = false;
                }
            }
        }
    }

    fn destroy(&mut self, handle: u32) -> Result<Vec<Released<u32>>, i32> {
        let i = self.find(handle)?;
        let obj = &mut self.objs[i];
        obj.handle = None;
        let mut out = Vec::new();
        match &mut obj.kind {
            RefKind::Binary { submit_waiters, .. } => {
                for w in submit_waiters.drain(..) {
                    out.push(Released {
                        waiter: w,
                        result: Err(libc::ENOENT),
                    });
                }
                obj.kept = false;
            }
            RefKind::Timeline { points, waiters } => {
                let head = timeline_head(points);
                waiters.retain(|&(target, w)| {
                    if target > head {
                        out.push(Released {
                            waiter: w,
                            result: Err(libc::ENOENT),
                        });
                        false
                    } else {
                        true
                    }
                });
                obj.kept = !waiters.is_empty();
            }
        }
        Ok(out)
    }

    fn check_signal(&self, handle: u32, point: u64) -> Result<usize, i32> {
        let i = self.find(handle)?;
        match &self.objs[i].kind {
            RefKind::Binary { .. } if point != 0 => Err(libc::EINVAL),
            RefKind::Timeline { points, .. } if point <= timeline_head(points) => Err(libc::EINVAL),
            _ => Ok(i),
        }
    }

    fn signal(
        &mut self,
        handle: u32,
        point: u64,
        result: FenceResult,
    ) -> Result<Vec<Released<u32>>, i32> {
        if !errno_ok(result) {
            return Err(libc::EINVAL);
        }
        let i = self.check_signal(handle, point)?;
        let mut out = Vec::new();
        match &mut self.objs[i].kind {
            RefKind::Binary {
                current,
                submit_waiters,
            } => {
                self.fences.push(RefFence {
                    state: Some(result),
                    waiters: Vec::new(),
                });
                *current = Some(self.fences.len() - 1);
                for w in submit_waiters.drain(..) {
                    out.push(Released { waiter: w, result });
                }
            }
            RefKind::Timeline { points, .. } => points.push((point, Some(result))),
        }
        self.sweep(&mut out);
        Ok(out)
    }

    fn add_pending(&mut self, handle: u32, point: u64) -> Result<usize, i32> {
        let i = self.check_signal(handle, point)?;
        let token = match &mut self.objs[i].kind {
            RefKind::Binary {
                current,
                submit_waiters,
            } => {
                self.fences.push(RefFence {
                    state: None,
                    waiters: std::mem::take(submit_waiters),
                });
                let f = self.fences.len() - 1;
                *current = Some(f);
                RefToken::Binary { fence: f }
            }
            RefKind::Timeline { points, .. } => {
                points.push((point, None));
                RefToken::Timeline { obj: i, point }
            }
        };
        self.tokens.push(Some(token));
        Ok(self.tokens.len() - 1)
    }

    fn complete(&mut self, token: usize, result: FenceResult) -> Vec<Released<u32>> {
        let result = if errno_ok(result) {
            result
        } else {
            Err(libc::EIO)
        };
        let mut out = Vec::new();
        match self.tokens.get_mut(token).and_then(Option::take) {
            Some(RefToken::Binary { fence }) => {
                let f = &mut self.fences[fence];
                f.state = Some(result);
                for w in f.waiters.drain(..) {
                    out.push(Released { waiter: w, result });
                }
            }
            Some(RefToken::Timeline { obj, point }) => {
                if let RefKind::Timeline { points, .. } = &mut self.objs[obj].kind {
                    if let Some(entry) = points.iter_mut().find(|(p, _)| *p == point) {
                        entry.1 = Some(result);
                    }
                }
            }
            None => {}
        }
        self.sweep(&mut out);
        out
    }

    fn wait(
        &mut self,
        handle: u32,
        point: u64,
        for_submit: bool,
        w: u32,
    ) -> Result<Option<Released<u32>>, i32> {
        let i = self.find(handle)?;
        match &mut self.objs[i].kind {
            RefKind::Binary {
                current,
                submit_waiters,
            } => {
                if point != 0 {
                    return Err(libc::EINVAL);
                }
                match *current {
                    None if !for_submit => Err(libc::EINVAL),
                    None => {
                        submit_waiters.push(w);
                        Ok(None)
                    }
                    Some(f) => match self.fences[f].state {
                        Some(result) => Ok(Some(Released { waiter: w, result })),
                        None => {
                            self.fences[f].waiters.push(w);
                            Ok(None)
                        }
                    },
                }
            }
            RefKind::Timeline { points, waiters } => {
                let head = timeline_head(points);
                let target = match point {
                    0 if head == 0 && !for_submit => return Err(libc::EINVAL),
                    0 if head == 0 => 1,
                    0 => head,
                    p => p,
                };
                if target <= timeline_value(points) {
                    return Ok(Some(Released {
                        waiter: w,
                        result: first_point_result(points, target),
                    }));
                }
                if target > head && !for_submit {
                    return Err(libc::EINVAL);
                }
                waiters.push((target, w));
                Ok(None)
            }
        }
    }

    fn reset(&mut self, handle: u32) -> Result<(), i32> {
        let i = self.find(handle)?;
        match &mut self.objs[i].kind {
            RefKind::Binary { current, .. } => {
                *current = None;
                Ok(())
            }
            RefKind::Timeline { .. } => Err(libc::EINVAL),
        }
    }

    fn query(&self, handle: u32) -> Result<SyncState, i32> {
        let i = self.find(handle)?;
        Ok(match &self.objs[i].kind {
            RefKind::Binary { current, .. } => SyncState::Binary(match current {
                None => FenceStatus::Unsubmitted,
                Some(f) => match self.fences[*f].state {
                    None => FenceStatus::Pending,
                    Some(Ok(())) => FenceStatus::Signaled,
                    Some(Err(e)) => FenceStatus::Error(e),
                },
            }),
            RefKind::Timeline { points, .. } => SyncState::Timeline {
                value: timeline_value(points),
                last_submitted: timeline_head(points),
            },
        })
    }

    fn waiter_count(&self) -> usize {
        let fence_waiters: usize = self.fences.iter().map(|f| f.waiters.len()).sum();
        let obj_waiters: usize = self
            .objs
            .iter()
            .filter(|o| o.kept)
            .map(|o| match &o.kind {
                RefKind::Binary { submit_waiters, .. } => submit_waiters.len(),
                RefKind::Timeline { waiters, .. } => waiters.len(),
            })
            .sum();
        fence_waiters + obj_waiters
    }

    fn point_count(&self) -> usize {
        let pending = self.tokens.iter().filter(|t| t.is_some()).count();
        let out_of_order: usize = self
            .objs
            .iter()
            .filter(|o| o.kept)
            .map(|o| match &o.kind {
                RefKind::Binary { .. } => 0,
                RefKind::Timeline { points, .. } => {
                    let value = timeline_value(points);
                    points
                        .iter()
                        .filter(|&&(p, r)| p > value && r.is_some())
                        .count()
                }
            })
            .sum();
        pending + out_of_order
    }

    fn head(&self, handle: u32) -> u64 {
        match self.find(handle).map(|i| &self.objs[i].kind) {
            Ok(RefKind::Timeline { points, .. }) => timeline_head(points),
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PointGen {
    Zero,
    /// The last materialised point plus this.
    AboveHead(u64),
    Absolute(u64),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create { timeline: bool, signaled: bool },
    Destroy(u32),
    Signal(u32, PointGen, FenceResult),
    AddPending(u32, PointGen),
    Complete(usize, FenceResult),
    Wait(u32, PointGen, bool),
    Reset(u32),
}

fn point_gen() -> impl Strategy<Value = PointGen> {
    prop_oneof![
        1 => Just(PointGen::Zero),
        4 => (0u64..4).prop_map(PointGen::AboveHead),
        2 => (0u64..24).prop_map(PointGen::Absolute),
    ]
}

fn result_gen() -> impl Strategy<Value = FenceResult> {
    prop_oneof![
        6 => Just(Ok(())),
        2 => prop::sample::select(vec![libc::EIO, libc::EFAULT, libc::ETIMEDOUT]).prop_map(Err),
        1 => prop::sample::select(vec![0, -1, 4096]).prop_map(Err),
    ]
}

fn op_gen() -> impl Strategy<Value = Op> {
    let handle = 0u32..7;
    prop_oneof![
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(timeline, signaled)| Op::Create { timeline, signaled }),
        1 => handle.clone().prop_map(Op::Destroy),
        2 => (handle.clone(), point_gen(), result_gen()).prop_map(|(h, p, r)| Op::Signal(h, p, r)),
        4 => (handle.clone(), point_gen()).prop_map(|(h, p)| Op::AddPending(h, p)),
        4 => (0usize..32, result_gen()).prop_map(|(t, r)| Op::Complete(t, r)),
        5 => (handle.clone(), point_gen(), any::<bool>()).prop_map(|(h, p, f)| Op::Wait(h, p, f)),
        1 => handle.prop_map(Op::Reset),
    ]
}

fn sorted(mut v: Vec<Released<u32>>) -> Vec<Released<u32>> {
    v.sort_by_key(|r| r.waiter);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_matches_reference_model(ops in prop::collection::vec(op_gen(), 1..60)) {
        let mut table: SyncTable<u32> = SyncTable::new(SyncLimits::default());
        let mut model = RefModel::default();
        let mut tokens: Vec<Option<SignalToken>> = Vec::new();
        let mut next_waiter = 0u32;

        for op in ops {
            match op {
                Op::Create { timeline, signaled } => {
                    let kind = if timeline { SyncKind::Timeline } else { SyncKind::Binary };
                    let h = table.create(kind, signaled).unwrap();
                    prop_assert_eq!(h, model.create(timeline, signaled));
                }
                Op::Destroy(h) => {
                    let got = table.destroy(h).map(sorted).map_err(|e| e.errno());
                    prop_assert_eq!(got, model.destroy(h).map(sorted));
                }
                Op::Signal(h, p, r) => {
                    let point = resolve(&model, h, p);
                    let got = table.signal(h, point, r).map(sorted).map_err(|e| e.errno());
                    prop_assert_eq!(got, model.signal(h, point, r).map(sorted));
                }
                Op::AddPending(h, p) => {
                    let point = resolve(&model, h, p);
                    let got = table.add_pending_signal(h, point);
                    let want = model.add_pending(h, point);
                    match (got, want) {
                        (Ok(tok), Ok(idx)) => {
                            prop_assert_eq!(idx, tokens.len());
                            tokens.push(Some(tok));
                        }
                        (Err(e), Err(errno)) => prop_assert_eq!(e.errno(), errno),
                        (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                    }
                }
                Op::Complete(idx, r) => {
                    if let Some(tok) = tokens.get_mut(idx).and_then(Option::take) {
                        let got = sorted(table.complete(tok, r));
                        prop_assert_eq!(got, sorted(model.complete(idx, r)));
                    }
                }
                Op::Wait(h, p, for_submit) => {
                    let point = resolve(&model, h, p);
                    let w = next_waiter;
                    next_waiter += 1;
                    let flags = WaitFlags { wait_for_submit: for_submit };
                    let got = table.wait(h, point, flags, w).map_err(|e| e.errno());
                    let want = model.wait(h, point, for_submit, w);
                    match (got, want) {
                        (Ok(WaitOutcome::Ready(r)), Ok(Some(m))) => prop_assert_eq!(r, m),
                        (Ok(WaitOutcome::Queued), Ok(None)) => {}
                        (Err(e), Err(m)) => prop_assert_eq!(e, m),
                        (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                    }
                }
                Op::Reset(h) => {
                    prop_assert_eq!(table.reset(h).map_err(|e| e.errno()), model.reset(h));
                }
            }
            for h in 0..8 {
                prop_assert_eq!(table.query(h).map_err(|e| e.errno()), model.query(h));
            }
            prop_assert_eq!(table.waiter_count(), model.waiter_count());
            prop_assert_eq!(table.point_count(), model.point_count());
        }

        // Completing everything left leaves no point behind, and clear()
        // hands back exactly the waiters still recorded.
        for (idx, tok) in tokens.iter_mut().enumerate() {
            if let Some(tok) = tok.take() {
                let got = sorted(table.complete(tok, Ok(())));
                prop_assert_eq!(got, sorted(model.complete(idx, Ok(()))));
            }
        }
        prop_assert_eq!(table.point_count(), 0);
        let left = model.waiter_count();
        prop_assert_eq!(table.clear().len(), left);
        prop_assert_eq!(table.waiter_count(), 0);
    }
}

fn resolve(model: &RefModel, handle: u32, p: PointGen) -> u64 {
    match p {
        PointGen::Zero => 0,
        PointGen::AboveHead(k) => model.head(handle) + k,
        PointGen::Absolute(a) => a,
    }
}
