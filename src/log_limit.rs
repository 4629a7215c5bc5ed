//! Rate-limited logging for messages a guest can trigger at will.
//!
//! A hostile guest must not be able to flood the host's logs. Each
//! [`LogLimiter`] lets a burst of lines through and then at most a few per
//! second, and reports how many it swallowed when it lets the next one pass.

use std::time::{Duration, Instant};

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    tokens: u32,
    per_second: u32,
    last_refill: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// Allows `burst` lines at once and `per_second` afterwards.
    pub fn new(burst: u32, per_second: u32) -> Self {
        LogLimiter {
            burst,
            tokens: burst,
            per_second,
            last_refill: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now. On `Some(n)`, log it and mention
    /// that `n` earlier lines were suppressed (when `n > 0`).
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_refill);
        if elapsed >= Duration::from_secs(1) {
            let secs = u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX);
            self.tokens = self
                .tokens
                .saturating_add(secs.saturating_mul(self.per_second))
                .min(self.burst);
            self.last_refill = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(20, 5)
    }
}

/// Logs at warn level through a [`LogLimiter`].
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)*) => {
        if let Some(n) = $limiter.check() {
            if n > 0 {
                log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)*), n);
            } else {
                log::warn!($($arg)*);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed() {
        let mut l = LogLimiter::new(3, 1);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        l.last_refill -= Duration::from_secs(2);
        assert_eq!(l.check(), Some(2));
    }
}
