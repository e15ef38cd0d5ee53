use super::*;

fn tw(pairs: &[(&str, &str)]) -> TwinValues {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn states(ob: &Outbox, device: &str) -> Vec<String> {
    ob.pending_for(device)
        .iter()
        .map(|p| p.twins["firmware-state"].clone())
        .collect()
}

const DL: Option<&str> = Some("downloading");

/// Queues a report that carries only a state.
fn put(ob: &mut Outbox, device: &str, state: &str, terminal: bool, merge: Option<&str>) -> u64 {
    ob.put(device, tw(&[("firmware-state", state)]), terminal, merge)
        .unwrap()
}

#[test]
fn states_keep_their_own_entry_progress_of_a_stage_merges_behind_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let front = put(&mut ob, "ns/a", "pending", false, None);
    put(&mut ob, "ns/a", "downloading:10", false, DL);
    put(&mut ob, "ns/a", "downloading:60", false, DL);
    assert_eq!(states(&ob, "ns/a"), ["pending", "downloading:60"]);
    put(&mut ob, "ns/a", "verifying", false, None);
    put(&mut ob, "ns/a", "flashing:0", false, Some("flashing"));
    let done = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r1"), ("firmware-state", "installed")]),
            true,
            None,
        )
        .unwrap();
    assert_eq!(
        states(&ob, "ns/a"),
        [
            "pending",
            "downloading:60",
            "verifying",
            "flashing:0",
            "installed"
        ],
        "verifying is never merged away, pending comes first"
    );
    assert_eq!(
        ob.pending_for("ns/a")[0].seq,
        front,
        "the front is untouched"
    );
    assert!(ob.pending_for("ns/a")[4].confirm);
    assert_eq!(ob.pending_for("ns/a")[4].seq, done);
    // A report equal to the last one queued changes nothing.
    let again = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r1"), ("firmware-state", "installed")]),
            true,
            None,
        )
        .unwrap();
    assert_eq!(again, done);
    assert_eq!(ob.depth(), 5);
}

#[test]
fn progress_never_changes_the_front_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let front = put(&mut ob, "ns/a", "downloading:10", false, DL);
    put(&mut ob, "ns/a", "downloading:20", false, DL);
    assert_eq!(states(&ob, "ns/a"), ["downloading:10", "downloading:20"]);
    assert_eq!(ob.pending_for("ns/a")[0].seq, front);
}

#[test]
fn a_final_report_is_sent_once_more_after_its_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let done = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r1"), ("firmware-state", "installed")]),
            true,
            None,
        )
        .unwrap();
    assert!(ob.acked("ns/a", done).unwrap());
    let q = ob.pending_for("ns/a");
    assert_eq!(q.len(), 1, "the confirmation");
    assert_eq!(q[0].twins["firmware-state"], "installed");
    assert!(q[0].seq > done);
    assert!(!q[0].confirm, "confirmed once, not forever");
    let confirm = q[0].seq;
    assert!(ob.acked("ns/a", confirm).unwrap());
    assert_eq!(ob.depth(), 0);
    // Only the first acknowledged report since the start is confirmed: later ones follow others.
    let later = put(&mut ob, "ns/a", "failed:flash-failed", true, None);
    ob.acked("ns/a", later).unwrap();
    assert_eq!(ob.depth(), 0);
    // With something newer queued behind it, the newer report makes the next write: no confirmation.
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let done = put(&mut ob, "ns/b", "installed", true, None);
    put(&mut ob, "ns/b", "pending", false, None);
    ob.acked("ns/b", done).unwrap();
    assert_eq!(states(&ob, "ns/b"), ["pending"]);
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
                None,
            )
            .unwrap();
        put(&mut ob, "ns/a", "downloading:5", false, DL);
        put(&mut ob, "legacy", "downloading:9", false, DL);
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
    let confirm = ob.pending_for("ns/a")[0].seq;
    ob.acked("ns/a", confirm).unwrap();
    assert_eq!(ob.depth(), 0);
    drop(ob);
    assert_eq!(
        Outbox::open(dir.path()).unwrap().depth(),
        0,
        "the acks were persisted"
    );
}

#[test]
fn clears_only_on_a_matching_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let old = put(&mut ob, "ns/a", "downloading:5", false, DL);
    let new = put(&mut ob, "ns/a", "verifying", false, None);
    assert!(ob.acked("ns/a", old).unwrap());
    assert!(!ob.acked("ns/a", old).unwrap(), "an ack counts once");
    assert_eq!(ob.depth(), 1);
    assert!(!ob.acked("unknown", 1).unwrap());
    assert!(ob.acked("ns/a", new).unwrap());
    assert_eq!(ob.depth(), 0);
}

#[test]
fn an_unanswered_front_collapses_into_the_newest_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let old = put(&mut ob, "ns/a", "installed", true, None);
    put(&mut ob, "ns/a", "pending", false, None);
    let newest = put(&mut ob, "ns/a", "verifying", false, None);
    assert!(ob.collapse("ns/a").unwrap());
    assert_eq!(states(&ob, "ns/a"), ["verifying"]);
    assert_eq!(ob.pending_for("ns/a")[0].seq, newest);
    assert!(!ob.collapse("ns/a").unwrap(), "one entry stays as it is");
    assert!(
        !ob.acked("ns/a", old).unwrap(),
        "a late answer to the dropped front"
    );
    drop(ob);
    assert_eq!(
        Outbox::open(dir.path()).unwrap().depth(),
        0,
        "the dropped terminal report is not replayed after a restart"
    );
}

#[test]
fn a_storm_of_reports_keeps_a_bounded_queue_and_the_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    let first = ob
        .put(
            "ns/a",
            tw(&[("firmware", "r0"), ("firmware-state", "installed")]),
            true,
            None,
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
            None,
        )
        .unwrap();
    }
    let q = ob.pending_for("ns/a");
    assert_eq!(q.len(), MAX_QUEUE);
    assert_eq!(q[0].seq, first, "the front report is untouched");
    assert_eq!(q[MAX_QUEUE - 1].twins["firmware"], "r39");
    assert_eq!(q[MAX_QUEUE - 1].twins["firmware-state"], "installed");
    assert_eq!(
        ob.fronts().map(|(_, p)| p.seq).collect::<Vec<_>>(),
        vec![first]
    );
}

/// Issue 23: outbox files are the agent's alone (0600 in a 0700 directory), and one longer than any the agent writes
/// is skipped, not loaded whole and copied forward.
#[test]
fn outbox_files_are_private_and_an_oversized_one_is_skipped() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    put(&mut ob, "ns/a", "installed", true, None);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.path().join("outbox")), 0o700);
    assert_eq!(mode(&dir.path().join("outbox/ns__a.json")), 0o600);

    let huge = DeviceQueue {
        id: Some("ns/b".to_owned()),
        next_seq: 1,
        queue: vec![Pending {
            seq: 1,
            twins: tw(&[("firmware-state", &"x".repeat(1 << 20))]),
            terminal: true,
            merge: None,
            confirm: true,
        }],
        acked: 0,
    };
    fs::write(
        dir.path().join("outbox/ns__big.json"),
        serde_json::to_vec(&huge).unwrap(),
    )
    .unwrap();
    let ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(ob.pending_for("ns/a").len(), 1);
    assert!(
        ob.pending_for("ns/big").is_empty(),
        "a 1 MiB outbox file was loaded"
    );
}

#[test]
fn the_first_confirmation_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    ob.set_first_confirmation(false);
    let done = put(&mut ob, "ns/a", "installed", true, None);
    assert!(ob.acked("ns/a", done).unwrap());
    assert_eq!(ob.depth(), 0, "no copy queued");
}

#[test]
fn a_settled_report_never_waits_behind_older_ones_and_an_outage_leaves_only_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path()).unwrap();
    put(&mut ob, "ns/a", "verifying", false, None);
    put(&mut ob, "ns/a", "flashing:10", false, Some("flashing"));
    put(&mut ob, "ns/b", "downloading:10", false, DL);
    put(&mut ob, "ns/b", "verifying", false, None);
    put(&mut ob, "ns/c", "installed", true, None);
    put(&mut ob, "ns/c", "pending", false, None);
    assert_eq!(
        ob.collapse_before_settled().unwrap(),
        0,
        "nothing settled behind a front"
    );
    put(&mut ob, "ns/a", "installed", true, None);
    assert_eq!(ob.collapse_before_settled().unwrap(), 1);
    assert_eq!(states(&ob, "ns/a"), ["installed"]);
    assert_eq!(states(&ob, "ns/b"), ["downloading:10", "verifying"]);
    assert_eq!(
        states(&ob, "ns/c"),
        ["installed", "pending"],
        "the settled front goes first"
    );
    assert_eq!(ob.collapse_all().unwrap(), 2);
    assert_eq!(states(&ob, "ns/b"), ["verifying"]);
    assert_eq!(states(&ob, "ns/c"), ["pending"]);
    assert_eq!(states(&ob, "ns/a"), ["installed"]);
    // The collapsed settled report is what a restart finds on disk.
    let again = Outbox::open(dir.path()).unwrap();
    assert_eq!(states(&again, "ns/a"), ["installed"]);
    assert!(
        states(&again, "ns/c").is_empty(),
        "the dropped settled report is gone from disk too"
    );
}
