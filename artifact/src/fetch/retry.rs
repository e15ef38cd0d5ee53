//! Retry policy for transient failures: exponential backoff with jitter, capped, optionally
//! limited in attempts (the agent retries forever; the CLI gives up).

use std::time::Duration;

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Fraction of the delay that is randomised away (0 = none, 1 = full jitter).
    pub jitter: f64,
    /// Give up after this many consecutive failed attempts without progress (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before retry number `attempt`, with jitter: uniformly in
    /// `[base * (1 - jitter), base]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rand::random::<f64>();
        base.mul_f64(factor)
    }

    /// Whether another attempt is allowed after `attempt` failures.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: Some(3),
        };
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(3), Duration::from_millis(400));
        assert_eq!(p.base_delay(10), Duration::from_secs(1));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(1));
        for attempt in 1..8 {
            let d = p.delay(attempt);
            assert!(d <= p.base_delay(attempt) && d >= p.base_delay(attempt) / 2);
        }
        assert!(p.allows(2));
        assert!(!p.allows(3));
        assert!(RetryPolicy::default().allows(u32::MAX - 1));
    }
}
