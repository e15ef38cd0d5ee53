use super::*;

fn tw(pairs: &[(&str, &str)]) -> TwinValues {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn progress_merges_but_terminal_reports_are_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    ob.put("ns/a", tw(&[("firmware-state", "downloading:10")]), false)
        .unwrap();
    ob.put("ns/a", tw(&[("firmware-state", "downloading:60")]), false)
        .unwrap();
    assert_eq!(
        ob.pending_for("ns/a").len(),
        1,
        "progress replaces progress"
    );
    let done = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r1"), ("firmware-state", "installed")]),
            true,
        )
        .unwrap();
    ob.put("ns/a", tw(&[("firmware-state", "pending")]), false)
        .unwrap();
    let q = ob.pending_for("ns/a");
    assert_eq!(q.len(), 2, "a terminal report is never replaced");
    assert_eq!(q[0].seq, done);
    assert_eq!(q[0].twins["firmware-state"], "installed");
    assert_eq!(q[0].twins["firmware"], "r1");
    assert_eq!(q[1].twins["firmware-state"], "pending");
}

#[test]
fn survives_reopen_and_clears_only_on_matching_ack() {
    let dir = tempfile::tempdir().unwrap();
    let seq_old;
    {
        let mut ob = Outbox::open(dir.path()).unwrap();
        seq_old = ob
            .put("ns/a", tw(&[("firmware-state", "downloading:5")]), false)
            .unwrap();
        ob.put("ns/a", tw(&[("firmware-state", "verifying")]), false)
            .unwrap();
        ob.put("legacy", tw(&[("firmware-state", "idle")]), false)
            .unwrap();
    }
    let mut ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(ob.depth(), 2);
    // The ack of a report that was replaced meanwhile does not clear the newer one.
    ob.acked("ns/a", seq_old).unwrap();
    assert_eq!(ob.depth(), 2);
    let seq = ob.pending_for("ns/a")[0].seq;
    ob.acked("ns/a", seq).unwrap();
    ob.acked("unknown", 1).unwrap();
    assert_eq!(ob.depth(), 1);
    drop(ob);
    let mut ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(ob.depth(), 1);
    let next = ob
        .put("ns/a", tw(&[("firmware-state", "idle")]), false)
        .unwrap();
    assert!(next > seq, "sequence numbers never repeat after a restart");
}
