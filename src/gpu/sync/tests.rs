//! Unit tests of the sync table: binary and timeline semantics, pending
//! signals, error propagation, destruction and limits.

use super::*;

type Table = SyncTable<u32>;

fn ready(outcome: WaitOutcome<u32>) -> Released<u32> {
    match outcome {
        WaitOutcome::Ready(r) => r,
        WaitOutcome::Queued => panic!("expected the waiter back at once"),
    }
}

fn queued(outcome: WaitOutcome<u32>) {
    assert_eq!(outcome, WaitOutcome::Queued);
}

fn ok(waiter: u32) -> Released<u32> {
    Released {
        waiter,
        result: Ok(()),
    }
}

fn failed(waiter: u32, errno: i32) -> Released<u32> {
    Released {
        waiter,
        result: Err(errno),
    }
}

fn sorted(mut v: Vec<Released<u32>>) -> Vec<Released<u32>> {
    v.sort_by_key(|r| r.waiter);
    v
}

#[test]
fn handles_start_at_one_and_reuse_the_lowest() {
    let mut t = Table::default();
    let a = t.create(SyncKind::Binary, false).unwrap();
    let b = t.create(SyncKind::Timeline, false).unwrap();
    let c = t.create(SyncKind::Binary, false).unwrap();
    assert_eq!((a, b, c), (1, 2, 3));
    t.destroy(b).unwrap();
    t.destroy(a).unwrap();
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 1);
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 2);
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 4);
    t.destroy(4).unwrap();
    t.destroy(3).unwrap();
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 3);
    assert_eq!(t.len(), 3);
}

#[test]
fn handle_zero_and_unknown_handles_are_enoent() {
    let mut t = Table::default();
    let e = t.signal(0, 0, Ok(())).unwrap_err();
    assert_eq!(e, SyncError::NoSuchHandle(0));
    assert_eq!(e.errno(), libc::ENOENT);
    assert_eq!(t.destroy(7).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(
        t.wait(3, 0, WaitFlags::NONE, 1).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(t.query(u32::MAX).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(
        t.add_pending_signal(1, 0).unwrap_err().errno(),
        libc::ENOENT
    );
    let h = t.create(SyncKind::Binary, false).unwrap();
    t.destroy(h).unwrap();
    assert_eq!(t.reset(h).unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn syncobj_quota() {
    let mut t = Table::new(SyncLimits {
        max_syncobjs: 3,
        ..SyncLimits::default()
    });
    for _ in 0..3 {
        t.create(SyncKind::Binary, false).unwrap();
    }
    let e = t.create(SyncKind::Timeline, false).unwrap_err();
    assert_eq!(e, SyncError::TooManySyncobjs { max: 3 });
    assert_eq!(e.errno(), libc::ENOMEM);
    t.destroy(2).unwrap();
    assert_eq!(t.create(SyncKind::Timeline, false).unwrap(), 2);
}

#[test]
fn huge_syncobj_limit_does_not_overflow() {
    let mut t = Table::new(SyncLimits {
        max_syncobjs: u32::MAX,
        ..SyncLimits::default()
    });
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 1);
}

#[test]
fn binary_signal_then_wait() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Unsubmitted)
    );
    // Nothing submitted: a plain wait is refused.
    let e = t.wait(h, 0, WaitFlags::NONE, 1).unwrap_err();
    assert_eq!(
        e,
        SyncError::NotMaterialised {
            handle: h,
            point: 0
        }
    );
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(t.signal(h, 0, Ok(())).unwrap().is_empty());
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Signaled)
    );
    assert_eq!(ready(t.wait(h, 0, WaitFlags::NONE, 2).unwrap()), ok(2));
    t.reset(h).unwrap();
    assert!(t.wait(h, 0, WaitFlags::NONE, 3).is_err());
}

#[test]
fn binary_created_signalled() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, true).unwrap();
    assert_eq!(ready(t.wait(h, 0, WaitFlags::NONE, 9).unwrap()), ok(9));
}

#[test]
fn binary_points_must_be_zero() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, true).unwrap();
    let e = t.signal(h, 1, Ok(())).unwrap_err();
    assert_eq!(
        e,
        SyncError::BinaryPoint {
            handle: h,
            point: 1
        }
    );
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(t.add_pending_signal(h, 5).is_err());
    assert!(t.wait(h, 2, WaitFlags::NONE, 0).is_err());
    assert!(t.point_status(h, 3).is_err());
}

#[test]
fn binary_pending_signal_releases_waiters_on_completion() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    let tok = t.add_pending_signal(h, 0).unwrap();
    assert_eq!(t.query(h).unwrap(), SyncState::Binary(FenceStatus::Pending));
    queued(t.wait(h, 0, WaitFlags::NONE, 1).unwrap());
    queued(t.wait(h, 0, WaitFlags::NONE, 2).unwrap());
    assert_eq!(t.waiter_count(), 2);
    assert_eq!(t.complete(tok, Ok(())), vec![ok(1), ok(2)]);
    assert_eq!(t.waiter_count(), 0);
    assert_eq!(t.point_count(), 0);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Signaled)
    );
}

#[test]
fn binary_error_propagates_to_waiters_and_later_waits() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    let tok = t.add_pending_signal(h, 0).unwrap();
    queued(t.wait(h, 0, WaitFlags::NONE, 1).unwrap());
    assert_eq!(t.complete(tok, Err(libc::EIO)), vec![failed(1, libc::EIO)]);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Error(libc::EIO))
    );
    assert_eq!(
        ready(t.wait(h, 0, WaitFlags::NONE, 2).unwrap()),
        failed(2, libc::EIO)
    );
    // A host signal with an error behaves the same.
    t.signal(h, 0, Err(libc::ETIMEDOUT)).unwrap();
    assert_eq!(
        ready(t.wait(h, 0, WaitFlags::NONE, 3).unwrap()),
        failed(3, libc::ETIMEDOUT)
    );
}

#[test]
fn binary_replacement_keeps_old_waiters_on_the_old_fence() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    let first = t.add_pending_signal(h, 0).unwrap();
    queued(t.wait(h, 0, WaitFlags::NONE, 1).unwrap());
    // A second submission replaces the fence; a new waiter waits on it.
    let second = t.add_pending_signal(h, 0).unwrap();
    queued(t.wait(h, 0, WaitFlags::NONE, 2).unwrap());
    assert_eq!(
        t.complete(second, Err(libc::EFAULT)),
        vec![failed(2, libc::EFAULT)]
    );
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Error(libc::EFAULT))
    );
    // The old fence completing late releases only its own waiter and does
    // not overwrite the current fence.
    assert_eq!(t.complete(first, Ok(())), vec![ok(1)]);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Error(libc::EFAULT))
    );
}

#[test]
fn binary_wait_for_submit() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    queued(t.wait(h, 0, WaitFlags::FOR_SUBMIT, 1).unwrap());
    queued(t.wait(h, 0, WaitFlags::FOR_SUBMIT, 2).unwrap());
    // Submission moves them onto the new fence; completion releases them.
    let tok = t.add_pending_signal(h, 0).unwrap();
    assert_eq!(t.waiter_count(), 2);
    assert_eq!(t.complete(tok, Ok(())), vec![ok(1), ok(2)]);
    // An immediate signal releases submit-waiters directly.
    t.reset(h).unwrap();
    queued(t.wait(h, 0, WaitFlags::FOR_SUBMIT, 3).unwrap());
    assert_eq!(
        t.signal(h, 0, Err(libc::EPIPE)).unwrap(),
        vec![failed(3, libc::EPIPE)]
    );
    assert_eq!(t.waiter_count(), 0);
}

#[test]
fn wait_flags_decode() {
    assert_eq!(WaitFlags::from_bits(0).unwrap(), WaitFlags::NONE);
    assert_eq!(
        WaitFlags::from_bits(WaitFlags::WAIT_FOR_SUBMIT).unwrap(),
        WaitFlags::FOR_SUBMIT
    );
    for bad in [1, 4, 0x8000_0000, u32::MAX] {
        let e = WaitFlags::from_bits(bad).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }
    assert_eq!(
        SyncKind::from_panthor_handle_type(0).unwrap(),
        SyncKind::Binary
    );
    assert_eq!(
        SyncKind::from_panthor_handle_type(1).unwrap(),
        SyncKind::Timeline
    );
    assert_eq!(
        SyncKind::from_panthor_handle_type(2).unwrap_err().errno(),
        libc::EINVAL
    );
}

#[test]
fn invalid_errno_is_rejected_for_signals_and_normalised_for_completions() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Binary, false).unwrap();
    for bad in [0, -5, 4096, i32::MIN, i32::MAX] {
        assert_eq!(
            t.signal(h, 0, Err(bad)).unwrap_err(),
            SyncError::InvalidErrno(bad)
        );
    }
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Binary(FenceStatus::Unsubmitted)
    );
    let tok = t.add_pending_signal(h, 0).unwrap();
    queued(t.wait(h, 0, WaitFlags::NONE, 1).unwrap());
    assert_eq!(t.complete(tok, Err(-22)), vec![failed(1, libc::EIO)]);
}

#[test]
fn timeline_ordering() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: 0,
            last_submitted: 0
        }
    );
    t.signal(h, 3, Ok(())).unwrap();
    // Waiting at or below the value is immediate.
    assert_eq!(ready(t.wait(h, 1, WaitFlags::NONE, 1).unwrap()), ok(1));
    assert_eq!(ready(t.wait(h, 3, WaitFlags::NONE, 2).unwrap()), ok(2));
    // Points must increase.
    for bad in [0, 1, 3] {
        let e = t.signal(h, bad, Ok(())).unwrap_err();
        assert_eq!(
            e,
            SyncError::PointNotIncreasing {
                handle: h,
                point: bad,
                last: 3
            }
        );
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(t.add_pending_signal(h, bad).is_err());
    }
    // Above the head: not materialised unless WAIT_FOR_SUBMIT.
    assert_eq!(
        t.wait(h, 4, WaitFlags::NONE, 3).unwrap_err(),
        SyncError::NotMaterialised {
            handle: h,
            point: 4
        }
    );
    queued(t.wait(h, 6, WaitFlags::FOR_SUBMIT, 4).unwrap());
    assert!(t.signal(h, 5, Ok(())).unwrap().is_empty());
    assert_eq!(t.signal(h, 10, Ok(())).unwrap(), vec![ok(4)]);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: 10,
            last_submitted: 10
        }
    );
    assert_eq!(t.reset(h).unwrap_err(), SyncError::ResetTimeline(h));
}

#[test]
fn timeline_out_of_order_completion_needs_contiguity() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    let p3 = t.add_pending_signal(h, 3).unwrap();
    let p5 = t.add_pending_signal(h, 5).unwrap();
    queued(t.wait(h, 3, WaitFlags::NONE, 30).unwrap());
    queued(t.wait(h, 4, WaitFlags::NONE, 40).unwrap());
    queued(t.wait(h, 5, WaitFlags::NONE, 50).unwrap());
    assert_eq!(t.point_status(h, 5).unwrap(), FenceStatus::Pending);
    // Point 5 completes first: nothing is released, the value stays 0.
    assert!(t.complete(p5, Ok(())).is_empty());
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: 0,
            last_submitted: 5
        }
    );
    assert_eq!(t.point_count(), 2); // p3 pending + 5 done out of order
    assert_eq!(t.point_status(h, 5).unwrap(), FenceStatus::Pending);
    // Point 3 completes: the value jumps to 5 and every waiter goes, in
    // point order.
    assert_eq!(t.complete(p3, Ok(())), vec![ok(30), ok(40), ok(50)]);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: 5,
            last_submitted: 5
        }
    );
    assert_eq!(t.point_count(), 0);
    assert_eq!(t.waiter_count(), 0);
}

#[test]
fn timeline_host_signal_above_pending_point_waits_for_it() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    let p1 = t.add_pending_signal(h, 1).unwrap();
    assert!(t.signal(h, 2, Ok(())).unwrap().is_empty());
    queued(t.wait(h, 2, WaitFlags::NONE, 2).unwrap());
    assert_eq!(t.complete(p1, Ok(())), vec![ok(2)]);
}

#[test]
fn timeline_errors_reach_the_waiters_of_that_point() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    let p2 = t.add_pending_signal(h, 2).unwrap();
    let p4 = t.add_pending_signal(h, 4).unwrap();
    let p6 = t.add_pending_signal(h, 6).unwrap();
    queued(t.wait(h, 1, WaitFlags::NONE, 1).unwrap()); // resolves to point 2
    queued(t.wait(h, 3, WaitFlags::NONE, 3).unwrap()); // resolves to point 4
    queued(t.wait(h, 4, WaitFlags::NONE, 4).unwrap()); // point 4
    queued(t.wait(h, 6, WaitFlags::NONE, 6).unwrap()); // point 6
    assert!(t.complete(p4, Err(libc::EFAULT)).is_empty());
    assert_eq!(
        t.complete(p2, Ok(())),
        vec![ok(1), failed(3, libc::EFAULT), failed(4, libc::EFAULT)]
    );
    // The error of point 4 does not fold into point 6.
    assert_eq!(t.complete(p6, Ok(())), vec![ok(6)]);
    // Late waiters still see the error of the point they land on.
    assert_eq!(
        ready(t.wait(h, 3, WaitFlags::NONE, 7).unwrap()),
        failed(7, libc::EFAULT)
    );
    assert_eq!(ready(t.wait(h, 5, WaitFlags::NONE, 8).unwrap()), ok(8));
    assert_eq!(
        t.point_status(h, 4).unwrap(),
        FenceStatus::Error(libc::EFAULT)
    );
    assert_eq!(t.point_status(h, 2).unwrap(), FenceStatus::Signaled);
    assert_eq!(t.point_status(h, 7).unwrap(), FenceStatus::Unsubmitted);
}

#[test]
fn timeline_history_is_bounded() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    t.signal(h, 1, Err(libc::EIO)).unwrap();
    for p in 2..=(HISTORY_LEN as u64) {
        t.signal(h, p, Ok(())).unwrap();
    }
    // Point 1 is still remembered (exactly HISTORY_LEN points so far).
    assert_eq!(
        ready(t.wait(h, 1, WaitFlags::NONE, 1).unwrap()),
        failed(1, libc::EIO)
    );
    t.signal(h, HISTORY_LEN as u64 + 1, Ok(())).unwrap();
    // Now it is forgotten, and reads as signalled like a collected node.
    assert_eq!(ready(t.wait(h, 1, WaitFlags::NONE, 2).unwrap()), ok(2));
    if let Some(Obj::Timeline(tl)) = t.objects.values().next().map(|e| &e.obj) {
        assert_eq!(tl.history.len(), HISTORY_LEN);
    }
}

#[test]
fn timeline_point_zero_means_latest() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    // Nothing submitted yet.
    assert!(t.wait(h, 0, WaitFlags::NONE, 0).is_err());
    assert!(!t.is_materialised(h, 0).unwrap());
    queued(t.wait(h, 0, WaitFlags::FOR_SUBMIT, 1).unwrap());
    let p7 = t.add_pending_signal(h, 7).unwrap();
    assert!(t.is_materialised(h, 0).unwrap());
    assert!(t.is_materialised(h, 7).unwrap());
    assert!(!t.is_materialised(h, 8).unwrap());
    queued(t.wait(h, 0, WaitFlags::NONE, 2).unwrap()); // waits on 7
    let p9 = t.add_pending_signal(h, 9).unwrap();
    assert_eq!(t.complete(p7, Ok(())), vec![ok(1), ok(2)]);
    queued(t.wait(h, 0, WaitFlags::NONE, 3).unwrap()); // waits on 9
    assert_eq!(t.complete(p9, Ok(())), vec![ok(3)]);
    assert_eq!(ready(t.wait(h, 0, WaitFlags::NONE, 4).unwrap()), ok(4));
}

#[test]
fn timeline_max_point() {
    let mut t = Table::default();
    let h = t.create(SyncKind::Timeline, false).unwrap();
    queued(t.wait(h, u64::MAX, WaitFlags::FOR_SUBMIT, 1).unwrap());
    let tok = t.add_pending_signal(h, u64::MAX).unwrap();
    assert!(t.signal(h, u64::MAX, Ok(())).is_err());
    assert_eq!(t.complete(tok, Ok(())), vec![ok(1)]);
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: u64::MAX,
            last_submitted: u64::MAX
        }
    );
    // Destroy with the head at u64::MAX must not overflow.
    t.destroy(h).unwrap();
}

#[test]
fn destroy_releases_unmaterialised_waiters_with_enoent() {
    let mut t = Table::default();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let tl = t.create(SyncKind::Timeline, false).unwrap();
    queued(t.wait(b, 0, WaitFlags::FOR_SUBMIT, 1).unwrap());
    let p2 = t.add_pending_signal(tl, 2).unwrap();
    queued(t.wait(tl, 2, WaitFlags::NONE, 2).unwrap());
    queued(t.wait(tl, 3, WaitFlags::FOR_SUBMIT, 3).unwrap());
    assert_eq!(t.destroy(b).unwrap(), vec![failed(1, libc::ENOENT)]);
    // The waiter on the materialised point 2 keeps waiting; 3 never can.
    assert_eq!(t.destroy(tl).unwrap(), vec![failed(3, libc::ENOENT)]);
    assert_eq!(t.waiter_count(), 1);
    assert!(t.is_empty());
    assert_eq!(t.complete(p2, Err(libc::EIO)), vec![failed(2, libc::EIO)]);
    assert_eq!(t.waiter_count(), 0);
    assert_eq!(t.point_count(), 0);
    assert!(t.objects.is_empty());
}

#[test]
fn destroy_with_pending_signals_then_complete_is_harmless() {
    let mut t = Table::default();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let tl = t.create(SyncKind::Timeline, false).unwrap();
    let tb = t.add_pending_signal(b, 0).unwrap();
    queued(t.wait(b, 0, WaitFlags::NONE, 1).unwrap());
    let t1 = t.add_pending_signal(tl, 1).unwrap();
    t.signal(tl, 2, Ok(())).unwrap(); // stored out of order
    assert_eq!(t.point_count(), 3);
    assert!(t.destroy(b).unwrap().is_empty());
    assert!(t.destroy(tl).unwrap().is_empty());
    // The handles are reused by new objects that the old tokens must not
    // touch.
    let b2 = t.create(SyncKind::Binary, false).unwrap();
    let tl2 = t.create(SyncKind::Timeline, false).unwrap();
    assert_eq!((b2, tl2), (b, tl));
    // The binary fence still releases its waiter.
    assert_eq!(t.complete(tb, Ok(())), vec![ok(1)]);
    assert!(t.complete(t1, Ok(())).is_empty());
    assert_eq!(
        t.query(b2).unwrap(),
        SyncState::Binary(FenceStatus::Unsubmitted)
    );
    assert_eq!(
        t.query(tl2).unwrap(),
        SyncState::Timeline {
            value: 0,
            last_submitted: 0
        }
    );
    assert_eq!(t.point_count(), 0);
}

#[test]
fn clear_cancels_everything() {
    let mut t = Table::default();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let tl = t.create(SyncKind::Timeline, false).unwrap();
    let tb = t.add_pending_signal(b, 0).unwrap();
    queued(t.wait(b, 0, WaitFlags::NONE, 1).unwrap());
    let t5 = t.add_pending_signal(tl, 5).unwrap();
    queued(t.wait(tl, 5, WaitFlags::NONE, 2).unwrap());
    queued(t.wait(tl, 9, WaitFlags::FOR_SUBMIT, 3).unwrap());
    let released = sorted(t.clear());
    assert_eq!(
        released,
        vec![
            failed(1, libc::ECANCELED),
            failed(2, libc::ECANCELED),
            failed(3, libc::ECANCELED)
        ]
    );
    assert!(t.complete(tb, Ok(())).is_empty());
    assert!(t.complete(t5, Ok(())).is_empty());
    assert_eq!((t.len(), t.waiter_count(), t.point_count()), (0, 0, 0));
    assert_eq!(t.create(SyncKind::Binary, false).unwrap(), 1);
}

#[test]
fn waiter_quota() {
    let mut t = Table::new(SyncLimits {
        max_waiters: 2,
        ..SyncLimits::default()
    });
    let h = t.create(SyncKind::Timeline, false).unwrap();
    let tok = t.add_pending_signal(h, 1).unwrap();
    queued(t.wait(h, 1, WaitFlags::NONE, 1).unwrap());
    queued(t.wait(h, 1, WaitFlags::NONE, 2).unwrap());
    let e = t.wait(h, 1, WaitFlags::NONE, 3).unwrap_err();
    assert_eq!(e, SyncError::TooManyWaiters { max: 2 });
    assert_eq!(e.errno(), libc::ENOMEM);
    // Waits that are satisfied at once need no room.
    t.signal(h, 2, Ok(())).unwrap();
    let b = t.create(SyncKind::Binary, true).unwrap();
    assert_eq!(ready(t.wait(b, 0, WaitFlags::NONE, 4).unwrap()), ok(4));
    assert_eq!(t.complete(tok, Ok(())).len(), 2);
    assert_eq!(t.waiter_count(), 0);
}

#[test]
fn point_quota() {
    let mut t = Table::new(SyncLimits {
        max_points: 3,
        ..SyncLimits::default()
    });
    let h = t.create(SyncKind::Timeline, false).unwrap();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let p1 = t.add_pending_signal(h, 1).unwrap();
    let pb = t.add_pending_signal(b, 0).unwrap();
    // An out-of-order host signal is stored and counts.
    t.signal(h, 2, Ok(())).unwrap();
    assert_eq!(t.point_count(), 3);
    let e = t.add_pending_signal(h, 3).unwrap_err();
    assert_eq!(e, SyncError::TooManyPoints { max: 3 });
    assert_eq!(e.errno(), libc::ENOMEM);
    assert_eq!(t.signal(h, 3, Ok(())).unwrap_err(), e);
    // A binary host signal needs no storage.
    t.signal(b, 0, Ok(())).unwrap();
    // Failed operations changed nothing.
    assert_eq!(
        t.query(h).unwrap(),
        SyncState::Timeline {
            value: 0,
            last_submitted: 2
        }
    );
    assert!(t.complete(p1, Ok(())).is_empty());
    assert!(t.complete(pb, Ok(())).is_empty());
    assert_eq!(t.point_count(), 0);
    // With no pending point before it, a timeline signal folds at once and
    // needs no room either.
    let blockers: Vec<_> = (0..3)
        .map(|_| {
            let x = t.create(SyncKind::Binary, false).unwrap();
            t.add_pending_signal(x, 0).unwrap()
        })
        .collect();
    t.signal(h, 10, Ok(())).unwrap();
    for tok in blockers {
        let _ = t.complete(tok, Ok(()));
    }
}

#[test]
fn check_functions_agree_with_the_operations() {
    let mut t = Table::default();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let tl = t.create(SyncKind::Timeline, false).unwrap();
    assert!(t.check_wait(b, 0, WaitFlags::NONE).is_err());
    assert!(t.check_wait(b, 0, WaitFlags::FOR_SUBMIT).is_ok());
    assert!(t.check_wait(tl, 1, WaitFlags::NONE).is_err());
    assert!(t.check_signal(tl, 1).is_ok());
    assert!(t.check_signal(b, 1).is_err());
    assert!(t.check_signal(99, 0).is_err());
    let tok = t.add_pending_signal(tl, 1).unwrap();
    assert!(t.check_wait(tl, 1, WaitFlags::NONE).is_ok());
    assert!(t.check_signal(tl, 1).is_err());
    assert_eq!(t.kind(b).unwrap(), SyncKind::Binary);
    assert_eq!(t.kind(tl).unwrap(), SyncKind::Timeline);
    assert!(t.complete(tok, Ok(())).is_empty());
}

#[test]
fn tokens_are_unique_across_tables() {
    let mut a = Table::default();
    let mut b = Table::default();
    let ha = a.create(SyncKind::Binary, false).unwrap();
    let hb = b.create(SyncKind::Binary, false).unwrap();
    let ta = a.add_pending_signal(ha, 0).unwrap();
    let tb = b.add_pending_signal(hb, 0).unwrap();
    assert_ne!(ta.id(), tb.id());
    // Completing a's token on b does nothing to b.
    assert!(b.complete(ta, Ok(())).is_empty());
    assert_eq!(
        b.query(hb).unwrap(),
        SyncState::Binary(FenceStatus::Pending)
    );
    assert_eq!(
        a.query(ha).unwrap(),
        SyncState::Binary(FenceStatus::Pending)
    );
    assert!(b.complete(tb, Ok(())).is_empty());
}

#[test]
fn errors_display() {
    let e = SyncError::NotMaterialised {
        handle: 3,
        point: 9,
    };
    assert_eq!(e.to_string(), "syncobj 3: point 9 has not materialised");
}

#[test]
fn removed_waiters_are_never_released() {
    let mut t = Table::default();
    let b = t.create(SyncKind::Binary, false).unwrap();
    let tl = t.create(SyncKind::Timeline, false).unwrap();
    queued(t.wait(b, 0, WaitFlags::FOR_SUBMIT, 1).unwrap());
    queued(t.wait(tl, 3, WaitFlags::FOR_SUBMIT, 2).unwrap());
    queued(t.wait(tl, 3, WaitFlags::FOR_SUBMIT, 3).unwrap());
    let tok = t.add_pending_signal(b, 0).unwrap();
    queued(t.wait(b, 0, WaitFlags::default(), 4).unwrap());
    assert_eq!(t.waiter_count(), 4);
    // On a pending binary fence, on a timeline point.
    assert!(t.remove_waiter(&4));
    assert!(t.remove_waiter(&2));
    assert!(!t.remove_waiter(&2), "only once");
    assert_eq!(t.waiter_count(), 2);
    assert_eq!(t.complete(tok, Ok(())), vec![ok(1)]);
    assert_eq!(t.signal(tl, 3, Ok(())).unwrap(), vec![ok(3)]);
    assert_eq!(t.waiter_count(), 0);
    // The last waiter of a destroyed timeline takes the object with it.
    let tl2 = t.create(SyncKind::Timeline, false).unwrap();
    let _pending = t.add_pending_signal(tl2, 1).unwrap();
    queued(t.wait(tl2, 1, WaitFlags::default(), 5).unwrap());
    assert!(t.destroy(tl2).unwrap().is_empty());
    assert!(t.remove_waiter(&5));
    assert_eq!(t.waiter_count(), 0);
    assert_eq!(t.clear(), vec![]);
}
