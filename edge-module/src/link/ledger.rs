//! The report connection's ledger: what was handed to rumqttc, which packet id carries it, what waits for an answer,
//! and what may be sent next.
//!
//! rumqttc numbers a publish only when it writes it (`Outgoing::Publish(pkid)`), in the order the publishes were
//! handed over, so the ledger keeps them in a fifo until then and by packet id after. A report is answered by
//! edgecore's `twin/update/result` with its `event_id` (or by its PUBACK where the broker is the acknowledgement), a
//! `twin/get` by its `get/result`; unanswered past its deadline it is due again, and the deadline doubles per
//! attempt up to a cap, with jitter ([`Retry`]). Its rules bound the work a storm of intents can cause: per device at
//! most one report is in flight, and while the device's intents arrive faster than they complete (one supersedes
//! another before it ended) its reports leave through a token bucket (a burst of `burst`, then one per `interval`),
//! so a storm of intents costs at most one report per interval, while an ordinary install, however quick, reports
//! every state at once. Later reports wait in the outbox meanwhile. No I/O and no clock: the caller passes `now` and
//! the jitter.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a publish on the report connection carried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sent {
    /// Report `seq` of `device` from the outbox.
    Report { device: String, seq: u64 },
    /// A twin/get request for `device`.
    Get { device: String },
}

/// How long an unanswered report or get is waited for: `first`, doubling per attempt, at most `max`, times the
/// jitter the caller passes (0.5 to 1.0: spreads the retries of many agents after a shared outage).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// The wait of the first attempt.
    pub first: Duration,
    /// The cap.
    pub max: Duration,
}

impl Retry {
    fn wait(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .first
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
        exp.min(self.max).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Something waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flight {
    seq: u64,
    due: Instant,
}

/// See the module doc.
#[derive(Debug)]
pub struct Ledger {
    budget: Budget,
    retry: Retry,
    /// Handed to rumqttc, not written yet, in order.
    fifo: VecDeque<Sent>,
    /// Written, waiting for the PUBACK.
    inflight: HashMap<u16, Sent>,
    /// Per device, the report waiting for its answer.
    reports: HashMap<String, Flight>,
    /// Per device, the twin/get waiting for its answer.
    gets: HashMap<String, Instant>,
    /// Per device, unanswered attempts in a row (reports, gets).
    attempts: HashMap<Sent, u32>,
    /// Each device's report tokens and when they were counted.
    tokens: HashMap<String, (f64, Instant)>,
}

/// The report budget of one device: a burst, then one report per interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Reports that may leave at once.
    pub burst: u32,
    /// One more report may leave per this interval.
    pub interval: Duration,
}

impl Budget {
    fn refill(&self, tokens: (f64, Instant), now: Instant) -> f64 {
        let (have, at) = tokens;
        let earned = if self.interval.is_zero() {
            f64::INFINITY
        } else {
            now.saturating_duration_since(at).as_secs_f64() / self.interval.as_secs_f64()
        };
        (have + earned).min(f64::from(self.burst.max(1)))
    }
}

/// The key of a device's attempt counter.
fn attempt_key(sent: &Sent) -> Sent {
    match sent {
        Sent::Report { device, .. } => Sent::Report {
            device: device.clone(),
            seq: 0,
        },
        Sent::Get { device } => Sent::Get {
            device: device.clone(),
        },
    }
}

impl Ledger {
    /// A ledger whose reports of one device leave within `budget`, and whose unanswered sends are retried after
    /// `retry`.
    pub fn new(budget: Budget, retry: Retry) -> Ledger {
        Ledger {
            budget,
            retry,
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            reports: HashMap::new(),
            gets: HashMap::new(),
            attempts: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// A new connection: packet ids are gone (rumqttc dropped what it had; the outbox still has it), and what
    /// waited for an answer may never have left: it is due again now, counting as an unanswered attempt.
    pub fn reset(&mut self, now: Instant) {
        self.fifo.clear();
        self.inflight.clear();
        for f in self.reports.values_mut() {
            f.due = f.due.min(now);
        }
        for due in self.gets.values_mut() {
            *due = (*due).min(now);
        }
    }

    /// Whether a report of `device` may be handed over at `now`; `Err` gives the instant it may, if waiting for an
    /// answer's deadline or the budget is all that stops it. The budget is held to only while `churning` (the
    /// device's intents arrive faster than they complete); otherwise every report leaves as soon as the one before
    /// it was answered.
    pub fn may_report(
        &self,
        device: &str,
        now: Instant,
        churning: bool,
    ) -> Result<(), Option<Instant>> {
        if let Some(f) = self.reports.get(device) {
            return Err(Some(f.due));
        }
        if !churning {
            return Ok(());
        }
        let Some(tokens) = self.tokens.get(device) else {
            return Ok(());
        };
        let have = self.budget.refill(*tokens, now);
        if have >= 1.0 {
            Ok(())
        } else {
            Err(Some(now + self.budget.interval.mul_f64(1.0 - have)))
        }
    }

    /// Whether a twin/get of `device` may be handed over (none is waiting for its answer).
    pub fn may_get(&self, device: &str) -> bool {
        !self.gets.contains_key(device)
    }

    /// Everything whose answer is overdue at `now`: forgotten, so it may be sent again (a report's device is named:
    /// the caller keeps only its newest report). Each counts as an unanswered attempt.
    pub fn overdue(&mut self, now: Instant) -> Vec<Sent> {
        let mut out = Vec::new();
        self.reports.retain(|device, f| {
            if f.due <= now {
                out.push(Sent::Report {
                    device: device.clone(),
                    seq: f.seq,
                });
                false
            } else {
                true
            }
        });
        self.gets.retain(|device, due| {
            if *due <= now {
                out.push(Sent::Get {
                    device: device.clone(),
                });
                false
            } else {
                true
            }
        });
        for s in &out {
            let n = self.attempts.entry(attempt_key(s)).or_insert(0);
            *n = n.saturating_add(1);
        }
        out
    }

    /// Unanswered attempts in a row of `sent`'s kind for its device (reports, or twin/get requests).
    pub fn attempts(&self, sent: &Sent) -> u32 {
        self.attempts.get(&attempt_key(sent)).copied().unwrap_or(0)
    }

    /// The earliest deadline of an answer, if anything waits for one.
    pub fn next_due(&self) -> Option<Instant> {
        self.reports
            .values()
            .map(|f| f.due)
            .chain(self.gets.values().copied())
            .min()
    }

    /// `sent` was handed to rumqttc at `now`; its answer is awaited for the current wait of its attempt, times
    /// `jitter` (0.5 to 1.0).
    pub fn handed(&mut self, sent: Sent, now: Instant, jitter: f64) {
        let attempt = self.attempts.get(&attempt_key(&sent)).copied().unwrap_or(0);
        let due = now + self.retry.wait(attempt, jitter);
        match &sent {
            Sent::Report { device, seq } => {
                let full = (f64::from(self.budget.burst.max(1)), now);
                let have = self
                    .budget
                    .refill(*self.tokens.get(device).unwrap_or(&full), now);
                self.tokens
                    .insert(device.clone(), ((have - 1.0).max(0.0), now));
                self.reports
                    .insert(device.clone(), Flight { seq: *seq, due });
            }
            Sent::Get { device } => {
                self.gets.insert(device.clone(), due);
            }
        }
        self.fifo.push_back(sent);
    }

    /// rumqttc wrote the next publish with packet id `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(s) = self.fifo.pop_front() {
            self.inflight.insert(pkid, s);
        }
    }

    /// The broker acknowledged `pkid`: what it carried, if it was ours. (Only where the broker is the
    /// acknowledgement does that answer it: see [`Ledger::answered`].)
    pub fn puback(&mut self, pkid: u16) -> Option<Sent> {
        self.inflight.remove(&pkid)
    }

    /// `sent` was answered (edgecore's result or get result; a PUBACK where the broker acknowledges): the device may
    /// send its next report or get, and its attempts start again from the first wait. A report answer for another
    /// seq than the one in flight (a late answer to an older attempt) only clears that older report. True when it
    /// answered what was in flight.
    pub fn answered(&mut self, sent: &Sent) -> bool {
        let hit = match sent {
            Sent::Report { device, seq } => {
                if self.reports.get(device).is_some_and(|f| f.seq == *seq) {
                    self.reports.remove(device);
                    true
                } else {
                    false
                }
            }
            Sent::Get { device } => self.gets.remove(device).is_some(),
        };
        if hit {
            self.attempts.remove(&attempt_key(sent));
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(device: &str, seq: u64) -> Sent {
        Sent::Report {
            device: device.into(),
            seq,
        }
    }

    fn get(device: &str) -> Sent {
        Sent::Get {
            device: device.into(),
        }
    }

    const RETRY: Retry = Retry {
        first: Duration::from_secs(2),
        max: Duration::from_secs(30),
    };
    const NO_BUDGET: Budget = Budget {
        burst: 1,
        interval: Duration::ZERO,
    };

    #[test]
    fn one_report_per_device_until_it_is_answered_not_just_pubacked() {
        let t0 = Instant::now();
        let mut l = Ledger::new(NO_BUDGET, RETRY);
        assert_eq!(l.may_report("a", t0, true), Ok(()));
        l.handed(report("a", 1), t0, 1.0);
        assert_eq!(l.may_report("a", t0, true), Err(Some(t0 + RETRY.first)));
        // Other devices and gets are independent.
        assert_eq!(l.may_report("b", t0, true), Ok(()));
        l.handed(report("b", 1), t0, 1.0);
        assert!(l.may_get("a"));
        l.handed(get("a"), t0, 1.0);
        assert!(!l.may_get("a"));
        // Packet ids are given in hand-over order; a PUBACK names what it carried and answers nothing.
        l.written(7);
        l.written(8);
        l.written(9);
        assert_eq!(l.puback(8), Some(report("b", 1)));
        assert_eq!(l.puback(8), None, "a PUBACK counts once");
        assert_eq!(l.puback(42), None, "not ours");
        assert_eq!(l.puback(7), Some(report("a", 1)));
        assert!(
            l.may_report("a", t0, true).is_err(),
            "PUBACKed, not answered"
        );
        assert!(!l.answered(&report("a", 0)), "an answer to another seq");
        assert!(l.answered(&report("a", 1)));
        assert_eq!(l.may_report("a", t0, true), Ok(()));
        assert!(l.answered(&get("a")));
        assert!(l.may_get("a"));
        assert!(!l.answered(&get("a")), "answered once");
    }

    #[test]
    fn unanswered_sends_are_due_again_with_a_doubling_capped_jittered_wait() {
        let t0 = Instant::now();
        let mut l = Ledger::new(NO_BUDGET, RETRY);
        let mut now = t0;
        let mut waits = Vec::new();
        for attempt in 0..6u64 {
            l.handed(report("a", attempt), now, 1.0);
            let due = l.next_due().unwrap();
            waits.push((due - now).as_secs());
            assert!(l.overdue(due - Duration::from_millis(1)).is_empty());
            assert_eq!(l.overdue(due), vec![report("a", attempt)]);
            now = due;
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30]);
        assert_eq!(
            l.attempts(&report("a", 0)),
            6,
            "counted per device, whatever the seq"
        );
        // Half the jitter halves the wait; an answer starts again from the first wait.
        l.handed(report("a", 9), now, 0.5);
        assert_eq!(l.next_due(), Some(now + Duration::from_secs(15)));
        assert!(l.answered(&report("a", 9)));
        l.handed(report("a", 10), now, 1.0);
        assert_eq!(l.next_due(), Some(now + RETRY.first));
        // Gets too.
        l.handed(get("b"), now, 1.0);
        assert_eq!(
            l.overdue(now + RETRY.first),
            vec![report("a", 10), get("b")]
        );
        assert!(l.may_get("b"));
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn reports_leave_in_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(500);
        let mut l = Ledger::new(
            Budget {
                burst: 3,
                interval: gap,
            },
            RETRY,
        );
        for seq in 1..=3 {
            assert_eq!(
                l.may_report("a", t0, true),
                Ok(()),
                "report {seq} of the burst"
            );
            l.handed(report("a", seq), t0, 1.0);
            l.answered(&report("a", seq));
        }
        assert_eq!(l.may_report("a", t0, true), Err(Some(t0 + gap)));
        assert_eq!(
            l.may_report("b", t0, true),
            Ok(()),
            "devices have their own budget"
        );
        assert_eq!(l.may_report("a", t0 + gap / 2, true), Err(Some(t0 + gap)));
        assert_eq!(l.may_report("a", t0 + gap, true), Ok(()));
        assert_eq!(
            l.may_report("a", t0, false),
            Ok(()),
            "held to only while churning"
        );
        // A storm: 100 reports asked for over 10 intervals get 3 + 10 through.
        let mut sent = 0;
        for i in 0..100u64 {
            let now = t0 + gap * 10 * (i as u32) / 100 + gap;
            if l.may_report("c", now, true).is_ok() {
                l.handed(report("c", i), now, 1.0);
                l.answered(&report("c", i));
                sent += 1;
            }
        }
        assert!((12..=14).contains(&sent), "{sent}");
    }

    #[test]
    fn a_new_connection_makes_what_waited_due_now_but_keeps_the_spacing() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(100);
        let mut l = Ledger::new(
            Budget {
                burst: 1,
                interval: Duration::from_secs(1),
            },
            RETRY,
        );
        l.handed(report("a", 1), t0, 1.0);
        l.handed(get("a"), t0, 1.0);
        l.written(1);
        l.reset(later);
        assert_eq!(l.puback(1), None, "packet ids are gone");
        assert_eq!(l.next_due(), Some(later));
        assert_eq!(l.overdue(later), vec![report("a", 1), get("a")]);
        assert!(l.may_get("a"));
        assert!(
            l.may_report("a", later, true).is_err(),
            "the budget is kept"
        );
        assert_eq!(l.may_report("a", t0 + Duration::from_secs(1), true), Ok(()));
    }
}
