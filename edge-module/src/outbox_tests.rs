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
fn terminal_reports_survive_a_restart_progress_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let done;
    {
        let mut ob = Outbox::open(dir.path()).unwrap();
        done = ob
            .put(
                "ns/a",
                tw(&[("firmware", "r1"), ("firmware-state", "installed")]),
                true,
            )
            .unwrap();
        ob.put("ns/a", tw(&[("firmware-state", "downloading:5")]), false)
            .unwrap();
        ob.put("legacy", tw(&[("firmware-state", "downloading:9")]), false)
            .unwrap();
        assert_eq!(ob.depth(), 3);
    }
    let mut ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(
        ob.depth(),
        1,
        "only the terminal report was owed across the restart"
    );
    assert_eq!(ob.pending_for("ns/a")[0].seq, done);
    ob.acked("ns/a", done).unwrap();
    assert_eq!(ob.depth(), 0);
    drop(ob);
    assert_eq!(
        Outbox::open(dir.path()).unwrap().depth(),
        0,
        "the ack was persisted"
    );
}

#[test]
fn clears_only_on_a_matching_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let old = ob
        .put("ns/a", tw(&[("firmware-state", "downloading:5")]), false)
        .unwrap();
    let new = ob
        .put("ns/a", tw(&[("firmware-state", "verifying")]), false)
        .unwrap();
    // The ack of a report that was replaced meanwhile does not clear the newer one.
    ob.acked("ns/a", old).unwrap();
    assert_eq!(ob.depth(), 1);
    ob.acked("unknown", 1).unwrap();
    ob.acked("ns/a", new).unwrap();
    assert_eq!(ob.depth(), 0);
}

#[test]
fn a_storm_of_reports_keeps_at_most_two_per_device_and_the_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let first = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r0"), ("firmware-state", "installed")]),
            true,
        )
        .unwrap();
    for i in 0..40 {
        let (state, terminal) = if i % 2 == 0 {
            ("pending", false)
        } else {
            ("installed", true)
        };
        ob.put(
            "ns/a",
            tw(&[("firmware", &format!("r{i}")), ("firmware-state", state)]),
            terminal,
        )
        .unwrap();
    }
    let q = ob.pending_for("ns/a");
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].seq, first, "the front report is untouched");
    assert_eq!(q[1].twins["firmware"], "r39");
    assert_eq!(q[1].twins["firmware-state"], "installed");
    assert_eq!(
        ob.fronts().map(|(_, p)| p.seq).collect::<Vec<_>>(),
        vec![first]
    );
    // A progress report that replaced a stored terminal one is not replayed after a restart, and neither is the
    // terminal report it replaced.
    ob.put("ns/a", tw(&[("firmware-state", "pending")]), false)
        .unwrap();
    drop(ob);
    let ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(ob.pending_for("ns/a").len(), 1);
    assert_eq!(ob.pending_for("ns/a")[0].seq, first);
}
