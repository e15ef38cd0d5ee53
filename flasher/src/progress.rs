//! Progress events of a flash: the phase and one overall percentage 0-100 across erase, program, verify.
//!
//! Backends send them on an unbounded channel (usable from blocking threads); the reporter throttles.

/// The phase a flash is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Erasing sectors.
    Erasing,
    /// Programming pages.
    Programming,
    /// Reading back and comparing.
    Verifying,
}

/// One progress event: `percent` is overall (0-100), monotone within a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The current phase.
    pub phase: Phase,
    /// Overall completion, 0-100.
    pub percent: u8,
}

/// Where a backend sends progress. A dropped receiver is ignored.
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<Progress>;

/// Share of the overall percentage given to each phase: erase 0-10, program 10-90, verify 90-100.
const SPANS: [(Phase, u8, u8); 3] = [
    (Phase::Erasing, 0, 10),
    (Phase::Programming, 10, 90),
    (Phase::Verifying, 90, 100),
];

/// Overall percentage for `done` of `total` units in `phase`.
pub fn overall(phase: Phase, done: u64, total: u64) -> u8 {
    let (lo, hi) = SPANS
        .iter()
        .find(|(p, _, _)| *p == phase)
        .map(|(_, lo, hi)| (*lo, *hi))
        .unwrap_or((0, 100));
    let frac = if total == 0 {
        1.0
    } else {
        (done.min(total) as f64) / (total as f64)
    };
    lo + ((f64::from(hi - lo)) * frac).floor() as u8
}

/// Sends only when the overall percentage grows, so a flash emits at most ~101 events.
#[derive(Debug)]
pub struct Reporter {
    tx: ProgressSender,
    last: Option<u8>,
}

impl Reporter {
    /// Wrap a sender.
    pub fn new(tx: ProgressSender) -> Self {
        Reporter { tx, last: None }
    }

    /// Report `done` of `total` in `phase`.
    pub fn report(&mut self, phase: Phase, done: u64, total: u64) {
        let percent = overall(phase, done, total);
        if self.last.is_none_or(|l| percent > l) {
            self.last = Some(percent);
            let _ = self.tx.send(Progress { phase, percent });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_monotone_across_phases() {
        assert_eq!(overall(Phase::Erasing, 0, 10), 0);
        assert_eq!(overall(Phase::Erasing, 10, 10), 10);
        assert_eq!(overall(Phase::Programming, 5, 10), 50);
        assert_eq!(overall(Phase::Programming, 20, 10), 90);
        assert_eq!(overall(Phase::Verifying, 1, 1), 100);
        assert_eq!(overall(Phase::Verifying, 0, 0), 100);
    }

    #[test]
    fn reporter_dedups() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut r = Reporter::new(tx);
        r.report(Phase::Erasing, 0, 4);
        r.report(Phase::Erasing, 0, 4);
        r.report(Phase::Programming, 1, 1000);
        r.report(Phase::Verifying, 1, 1);
        let mut got = Vec::new();
        while let Ok(p) = rx.try_recv() {
            got.push(p.percent);
        }
        assert_eq!(got, vec![0, 10, 100]);
    }
}
