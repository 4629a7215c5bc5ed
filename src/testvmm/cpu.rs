//! CPU time of threads, read from `/proc`: to check that a device worker
//! does not spin on a malformed queue.
//!
//! Thread names are the kernel's `comm` (at most 15 bytes; longer names are
//! truncated). vhost-user-backend names its workers `vring_worker`.

use std::collections::HashMap;
use std::time::Duration;

use super::Error;

/// User plus system CPU time, in clock ticks, of every thread of process
/// `pid` whose name is `name`, by thread id.
pub fn thread_cpu_ticks(pid: u32, name: &str) -> Result<HashMap<u64, u64>, Error> {
    let dir = format!("/proc/{pid}/task");
    let mut out = HashMap::new();
    for task in std::fs::read_dir(&dir).map_err(Error::Io)?.flatten() {
        // Threads may exit while we look; skip the ones that vanish.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if stat.get(open + 1..close) != Some(name) {
            continue;
        }
        // After "(comm) ", fields start at the state (field 3 of stat(5));
        // utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .get(close + 2..)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(utime), Some(stime)) = (field(11), field(12)) else {
            continue;
        };
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        out.insert(tid, utime + stime);
    }
    Ok(out)
}

/// CPU ticks the threads named `name` of process `pid` used during the next
/// `window` (threads that start meanwhile count from zero). A thread busy
/// for the whole window uses about `window` x `sysconf(_SC_CLK_TCK)` (100 on
/// Linux) ticks.
pub fn cpu_ticks_during(pid: u32, name: &str, window: Duration) -> Result<u64, Error> {
    let before = thread_cpu_ticks(pid, name)?;
    std::thread::sleep(window);
    let after = thread_cpu_ticks(pid, name)?;
    Ok(after
        .iter()
        .map(|(tid, t)| t.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_spinning_thread_is_seen() {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        let used = cpu_ticks_during(
            std::process::id(),
            "cpu-test-spin",
            Duration::from_millis(200),
        )
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(used >= 5, "{used}");
        let idle = cpu_ticks_during(
            std::process::id(),
            "no-such-thread",
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(idle, 0);
    }
}
