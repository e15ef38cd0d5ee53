//! Throttling of progress reports: at most one per second, or sooner when the percentage moved by 5 points.
//!
//! A change of stage (downloading to verifying, say) and the end of a stage are always reported.

use std::time::{Duration, Instant};

/// The smallest interval between two progress reports of the same stage.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A jump of this many points is reported without waiting for [`MIN_INTERVAL`].
pub const MIN_STEP: u8 = 5;

/// Remembers the last progress report of one device.
#[derive(Debug, Default, Clone)]
pub struct Throttle {
    last: Option<(Instant, &'static str, u8)>,
}

impl Throttle {
    /// Says whether `stage` at `percent` should be reported now, and if so records it.
    pub fn admit(&mut self, now: Instant, stage: &'static str, percent: u8) -> bool {
        let admit = match self.last {
            None => true,
            Some((_, last_stage, _)) if last_stage != stage => true,
            Some((_, _, last_pct)) if percent == last_pct => false,
            Some((_, _, _)) if percent >= 100 => true,
            Some((at, _, last_pct)) => {
                percent.abs_diff(last_pct) >= MIN_STEP || now.duration_since(at) >= MIN_INTERVAL
            }
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
    fn admits_by_step_interval_stage_change_and_completion() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut th = Throttle::default();
        assert!(th.admit(ms(0), "downloading", 0), "the first report");
        assert!(!th.admit(ms(10), "downloading", 0), "no change");
        assert!(!th.admit(ms(20), "downloading", 4), "4 points in 20 ms");
        assert!(th.admit(ms(30), "downloading", 5), "5 points");
        assert!(!th.admit(ms(900), "downloading", 6));
        assert!(th.admit(ms(1030), "downloading", 6), "a second passed");
        assert!(th.admit(ms(1040), "downloading", 100), "the end of a stage");
        assert!(th.admit(ms(1041), "flashing", 0), "a new stage");
        th.reset();
        assert!(th.admit(ms(1042), "flashing", 0), "after reset");
    }

    #[test]
    fn never_more_than_21_reports_for_a_fast_stage() {
        let t0 = Instant::now();
        let mut th = Throttle::default();
        let admitted = (0..=1000u32)
            .filter(|i| {
                th.admit(
                    t0 + Duration::from_micros(u64::from(*i)),
                    "flashing",
                    (i / 10) as u8,
                )
            })
            .count();
        assert!(admitted <= 21, "{admitted}");
        assert!(admitted >= 20);
    }
}
