//! Throttling of progress reports: per device and stage at most one per interval (`twin.progress_interval_ms`,
//! 1 s by default), and only when the percentage changed.
//!
//! Every report costs edgecore a store write, a result, a document, a delta while the install runs, and a sync to
//! the cloud (docs/kubeedge.md section 8): one report every 5 percent made 99 messages for a 24 KiB install. A change
//! of stage (downloading to flashing, say) is always reported, and so is every state (pending, verifying,
//! installed): those do not pass through here.

use std::time::{Duration, Instant};

/// Remembers the last progress report of one device.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<(Instant, &'static str, u8)>,
}

impl Throttle {
    /// A throttle admitting one report per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            last: None,
        }
    }

    /// Says whether `stage` at `percent` should be reported now, and if so records it.
    pub fn admit(&mut self, now: Instant, stage: &'static str, percent: u8) -> bool {
        let admit = match self.last {
            None => true,
            Some((_, last_stage, _)) if last_stage != stage => true,
            Some((_, _, last_pct)) if percent == last_pct => false,
            Some((at, _, _)) => now.saturating_duration_since(at) >= self.interval,
        };
        if admit {
            self.last = Some((now, stage, percent));
        }
        admit
    }

    /// Forgets the last report (a new stage or intent starts).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_change_once_per_interval_and_every_new_stage() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut th = Throttle::new(Duration::from_secs(1));
        assert!(th.admit(ms(0), "downloading", 0), "the first report");
        assert!(!th.admit(ms(10), "downloading", 0), "no change");
        assert!(
            !th.admit(ms(30), "downloading", 50),
            "50 points, but within the interval"
        );
        assert!(
            !th.admit(ms(900), "downloading", 100),
            "the end of a stage waits too"
        );
        assert!(th.admit(ms(1000), "downloading", 100), "a second passed");
        assert!(
            !th.admit(ms(2500), "downloading", 100),
            "unchanged, however long"
        );
        assert!(th.admit(ms(2501), "flashing", 0), "a new stage");
        th.reset();
        assert!(th.admit(ms(2502), "flashing", 0), "after reset");
    }

    #[test]
    fn a_fast_stage_costs_one_report_per_interval() {
        let t0 = Instant::now();
        let mut th = Throttle::new(Duration::from_millis(100));
        // 0..100 percent over 1 s.
        let admitted = (0..=1000u32)
            .filter(|i| {
                th.admit(
                    t0 + Duration::from_millis(u64::from(*i)),
                    "flashing",
                    (i / 10) as u8,
                )
            })
            .count();
        assert_eq!(admitted, 11, "the first, then one per 100 ms");
    }
}
