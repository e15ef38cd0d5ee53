//! Warnings about input someone else controls, at most one per key per interval: a flood of hostile messages costs
//! a bounded number of log lines whatever arrives (issue #16 saw 116 MiB of log in 5 s).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Keys remembered at most; past that the memory starts afresh (worst case: one more line per key).
const MAX_KEYS: usize = 10_000;

/// See the module doc.
#[derive(Debug)]
pub struct Quiet {
    every: Duration,
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// At most one line per key every `every`.
    pub fn new(every: Duration) -> Quiet {
        Quiet {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `log` unless a line of `key` was logged less than the interval ago; says how many were held back since.
    pub fn warn(&self, key: String, log: impl FnOnce()) {
        if let Some(suppressed) = self.admit(key.clone(), Instant::now()) {
            log();
            if suppressed > 0 {
                tracing::warn!(what = %key, suppressed, "similar warnings were held back");
            }
        }
    }

    /// Whether a line of `key` may be logged at `now`, and how many were held back before it.
    pub fn admit(&self, key: String, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.len() >= MAX_KEYS && !last.contains_key(&key) {
            last.clear();
        }
        match last.get_mut(&key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                (*at, *held) = (now, 0);
                Some(n)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_the_count_held_back() {
        let q = Quiet::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(q.admit("a".into(), t0), Some(0));
        for _ in 0..299 {
            assert_eq!(q.admit("a".into(), t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(q.admit("b".into(), t0), Some(0), "keys are independent");
        assert_eq!(q.admit("a".into(), t0 + Duration::from_secs(61)), Some(299));
        assert_eq!(q.admit("a".into(), t0 + Duration::from_secs(62)), None);
    }
}
