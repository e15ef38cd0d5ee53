//! The report connection's ledger: what was handed to rumqttc, which packet id carries it, and what may be sent next.
//!
//! rumqttc numbers a publish only when it writes it (`Outgoing::Publish(pkid)`), in the order the publishes were
//! handed over, so the ledger keeps them in a fifo until then and by packet id after. Its rules bound the work a
//! storm of intents can cause: per device at most one report is in flight, and while the device's intents arrive
//! faster than they complete (one supersedes another before it ended) its reports leave through a token bucket (a
//! burst of `burst`, then one per `interval`), so a storm of intents costs at most one report per interval, while an
//! ordinary install, however quick, reports every state at once. Later reports merge in the outbox meanwhile, the
//! latest value of each twin winning.
//! A twin/get is sent at most once per device until its PUBACK. No I/O and no clock: the caller passes `now`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// What a publish on the report connection carried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sent {
    /// Report `seq` of `device` from the outbox.
    Report { device: String, seq: u64 },
    /// A twin/get request for `device`.
    Get { device: String },
}

/// See the module doc.
#[derive(Debug)]
pub struct Ledger {
    budget: Budget,
    /// Handed to rumqttc, not written yet, in order.
    fifo: VecDeque<Sent>,
    /// Written, waiting for the PUBACK.
    inflight: HashMap<u16, Sent>,
    /// Everything in `fifo` or `inflight`.
    outstanding: HashSet<Sent>,
    /// Devices with a report in `outstanding`.
    busy: HashSet<String>,
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

impl Ledger {
    /// A ledger whose reports of one device leave within `budget`.
    pub fn new(budget: Budget) -> Ledger {
        Ledger {
            budget,
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            outstanding: HashSet::new(),
            busy: HashSet::new(),
            tokens: HashMap::new(),
        }
    }

    /// A new connection: nothing is in flight any more (rumqttc dropped what it had; the outbox still has it).
    pub fn reset(&mut self) {
        self.fifo.clear();
        self.inflight.clear();
        self.outstanding.clear();
        self.busy.clear();
    }

    /// Whether a report of `device` may be handed over at `now`; `Err` gives the instant it may, if waiting for the
    /// budget is all that stops it. The budget is held to only while `churning` (the device's intents arrive faster
    /// than they complete); otherwise every report leaves as soon as the one before it was acknowledged.
    pub fn may_report(
        &self,
        device: &str,
        now: Instant,
        churning: bool,
    ) -> Result<(), Option<Instant>> {
        if self.busy.contains(device) {
            return Err(None);
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

    /// Whether a twin/get of `device` may be handed over.
    pub fn may_get(&self, device: &str) -> bool {
        !self.outstanding.contains(&Sent::Get {
            device: device.to_owned(),
        })
    }

    /// `sent` was handed to rumqttc at `now`.
    pub fn handed(&mut self, sent: Sent, now: Instant) {
        if let Sent::Report { device, .. } = &sent {
            let full = (f64::from(self.budget.burst.max(1)), now);
            let have = self
                .budget
                .refill(*self.tokens.get(device).unwrap_or(&full), now);
            self.tokens
                .insert(device.clone(), ((have - 1.0).max(0.0), now));
            self.busy.insert(device.clone());
        }
        self.outstanding.insert(sent.clone());
        self.fifo.push_back(sent);
    }

    /// rumqttc wrote the next publish with packet id `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(s) = self.fifo.pop_front() {
            self.inflight.insert(pkid, s);
        }
    }

    /// The broker acknowledged `pkid`: what it carried, if it was ours.
    pub fn acked(&mut self, pkid: u16) -> Option<Sent> {
        let s = self.inflight.remove(&pkid)?;
        self.outstanding.remove(&s);
        if let Sent::Report { device, .. } = &s {
            self.busy.remove(device);
        }
        Some(s)
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

    #[test]
    fn one_report_per_device_in_flight_and_acks_follow_packet_ids() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Budget {
            burst: 1,
            interval: Duration::ZERO,
        });
        assert_eq!(l.may_report("a", t0, true), Ok(()));
        l.handed(report("a", 1), t0);
        // Neither the same report again nor a newer one of the same device while it is outstanding.
        assert_eq!(l.may_report("a", t0, true), Err(None));
        assert_eq!(l.may_report("a", t0, true), Err(None));
        // Other devices and gets are independent.
        assert_eq!(l.may_report("b", t0, true), Ok(()));
        l.handed(report("b", 1), t0);
        assert!(l.may_get("a"));
        l.handed(Sent::Get { device: "a".into() }, t0);
        assert!(!l.may_get("a"));
        // Packet ids are given in hand-over order.
        l.written(7);
        l.written(8);
        l.written(9);
        assert_eq!(l.acked(8), Some(report("b", 1)));
        assert_eq!(l.acked(8), None, "an ack counts once");
        assert_eq!(l.acked(42), None, "not ours");
        assert_eq!(
            l.may_report("a", t0, true),
            Err(None),
            "a's report is still in flight"
        );
        assert_eq!(l.acked(7), Some(report("a", 1)));
        assert_eq!(l.may_report("a", t0, true), Ok(()));
        assert_eq!(l.acked(9), Some(Sent::Get { device: "a".into() }));
        assert!(l.may_get("a"));
    }

    #[test]
    fn reports_leave_in_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(500);
        let mut l = Ledger::new(Budget {
            burst: 3,
            interval: gap,
        });
        for pkid in 1..=3 {
            assert_eq!(
                l.may_report("a", t0, true),
                Ok(()),
                "report {pkid} of the burst"
            );
            l.handed(report("a", u64::from(pkid)), t0);
            l.written(pkid);
            l.acked(pkid);
        }
        assert_eq!(l.may_report("a", t0, true), Err(Some(t0 + gap)));
        assert_eq!(
            l.may_report("b", t0, true),
            Ok(()),
            "devices have their own budget"
        );
        assert_eq!(l.may_report("a", t0 + gap / 2, true), Err(Some(t0 + gap)));
        assert_eq!(l.may_report("a", t0 + gap, true), Ok(()));
        // A storm: 100 reports asked for over 10 intervals get 3 + 10 through.
        let mut sent = 0;
        for i in 0..100u32 {
            let now = t0 + gap * 10 * i / 100 + gap;
            if l.may_report("c", now, true).is_ok() {
                l.handed(report("c", u64::from(i)), now);
                l.written(1000 + i as u16);
                l.acked(1000 + i as u16);
                sent += 1;
            }
        }
        assert!((12..=14).contains(&sent), "{sent}");
    }

    #[test]
    fn a_new_connection_forgets_what_was_in_flight_but_not_the_spacing() {
        let t0 = Instant::now();
        let mut l = Ledger::new(Budget {
            burst: 1,
            interval: Duration::from_secs(1),
        });
        l.handed(report("a", 1), t0);
        l.handed(Sent::Get { device: "a".into() }, t0);
        l.written(1);
        l.reset();
        assert!(l.may_get("a"));
        assert_eq!(l.acked(1), None);
        assert!(l.may_report("a", t0, true).is_err(), "the budget is kept");
        assert_eq!(
            l.may_report("a", t0, false),
            Ok(()),
            "and held to only while churning"
        );
        assert_eq!(l.may_report("a", t0 + Duration::from_secs(1), true), Ok(()));
    }
}
