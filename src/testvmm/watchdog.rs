//! A deadline for blocking control-plane calls.
//!
//! The vhost crate's front end reads replies with blocking socket reads and
//! retries on `EAGAIN`, so a socket read timeout would not bound it. Instead a
//! watchdog thread holds a clone of the socket: a call arms a deadline, and if
//! the call is still running when the deadline passes the watchdog shuts the
//! socket down, which turns the stuck read into an error. The connection is
//! dead afterwards, which is what a test wants from a wedged back end.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shuts a socket down if an armed deadline passes. See the module docs.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread over `socket` (a clone of the connection).
    pub(crate) fn new(socket: UnixStream) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("testvmm-watchdog".into())
            .spawn(move || run(&s, &socket))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Arms the deadline `timeout` from now. The returned guard disarms it.
    pub(crate) fn arm(&self, timeout: Duration) -> Armed<'_> {
        let mut st = self.shared.lock();
        st.deadline = Some(Instant::now() + timeout);
        st.fired = false;
        drop(st);
        self.shared.cond.notify_all();
        Armed { dog: self }
    }

    /// Whether the watchdog has ever shut the socket down.
    pub(crate) fn has_fired(&self) -> bool {
        self.shared.lock().fired
    }
}

/// An armed deadline; dropping it disarms.
pub(crate) struct Armed<'a> {
    dog: &'a Watchdog,
}

impl Armed<'_> {
    /// Whether the deadline passed (and the socket was shut down).
    pub(crate) fn fired(&self) -> bool {
        self.dog.shared.lock().fired
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.dog.shared.lock().deadline = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, socket: &UnixStream) {
    let mut st = shared.lock();
    loop {
        if st.quit {
            return;
        }
        match st.deadline {
            None => {
                st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    st.deadline = None;
                    st.fired = true;
                    let _ = socket.shutdown(Shutdown::Both);
                } else {
                    st = shared
                        .cond
                        .wait_timeout(st, d - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn fires_on_a_stuck_read_and_not_otherwise() {
        let (a, _b) = UnixStream::pair().unwrap();
        let dog = Watchdog::new(a.try_clone().unwrap()).unwrap();
        {
            let armed = dog.arm(Duration::from_secs(5));
            assert!(!armed.fired());
        }
        let armed = dog.arm(Duration::from_millis(30));
        let mut buf = [0u8; 1];
        let n = (&a).read(&mut buf).unwrap();
        assert_eq!(n, 0);
        assert!(armed.fired());
        drop(armed);
        assert!(dog.has_fired());
    }
}
