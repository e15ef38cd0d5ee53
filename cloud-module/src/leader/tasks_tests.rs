use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::*;

/// Counts the tasks alive: +1 when one starts, -1 when its future is dropped (ended, cancelled or aborted).
#[derive(Default)]
struct Alive(AtomicUsize);

struct Guard(Arc<Alive>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Alive {
    fn enter(self: &Arc<Self>) -> Guard {
        self.0.fetch_add(1, Ordering::SeqCst);
        Guard(self.clone())
    }

    fn now(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn until(cond: impl Fn() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stop_cancels_joins_and_aborts_what_ignores_the_token() {
    let alive = Arc::new(Alive::default());
    let mut tasks = LeaderTasks::new(CancellationToken::new());
    let (a, t) = (alive.clone(), tasks.token());
    tasks.spawn("polite", async move {
        let _g = a.enter();
        t.cancelled().await;
    });
    let a = alive.clone();
    tasks.spawn("deaf", async move {
        let _g = a.enter();
        std::future::pending::<()>().await;
    });
    let a = alive.clone();
    let t = tasks.token();
    tasks.adopt(
        "adopted",
        tokio::spawn(async move {
            let _g = a.enter();
            t.cancelled().await;
        }),
    );
    assert_eq!(tasks.names(), ["polite", "deaf", "adopted"]);
    until(|| alive.now() == 3).await;
    let started = tokio::time::Instant::now();
    tasks.stop(Duration::from_millis(100)).await;
    assert_eq!(alive.now(), 0, "every task is gone when stop returns");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn dropping_the_tasks_aborts_them() {
    let alive = Arc::new(Alive::default());
    let mut tasks = LeaderTasks::new(CancellationToken::new());
    let a = alive.clone();
    tasks.spawn("deaf", async move {
        let _g = a.enter();
        std::future::pending::<()>().await;
    });
    until(|| alive.now() == 1).await;
    drop(tasks);
    until(|| alive.now() == 0).await;
}

#[tokio::test]
async fn a_task_that_ends_by_itself_is_named() {
    let term = CancellationToken::new();
    let mut tasks = LeaderTasks::new(term.clone());
    let t = tasks.token();
    tasks.spawn("steady", async move { t.cancelled().await });
    tasks.spawn("quitter", async {});
    assert_eq!(tasks.until_term_ends().await, Some("quitter"));
    assert_eq!(tasks.names(), ["steady"]);
    term.cancel();
    assert_eq!(tasks.until_term_ends().await, None);
    tasks.stop(Duration::from_millis(100)).await;
}

/// Issue 22, F1, at the unit level: each term runs its tasks exactly once, and none of a term outlives it, however
/// often the lease is lost and won again. (`leader_failover.rs` checks it on the API server with real processes.)
#[tokio::test]
async fn each_term_runs_its_tasks_once_and_none_outlives_it() {
    let (tx, rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    let alive = Arc::new(Alive::default());
    let terms = Arc::new(AtomicUsize::new(0));
    let (a, n) = (alive.clone(), terms.clone());
    let leader = tokio::spawn(super::super::run_as_leader(
        rx,
        cancel.clone(),
        move |term| {
            let (a, n) = (a.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                let mut tasks = LeaderTasks::new(term);
                for name in ["device controller", "anti-entropy", "rollout controller"] {
                    let (a, t) = (a.clone(), tasks.token());
                    tasks.spawn(name, async move {
                        let _g = a.enter();
                        t.cancelled().await;
                    });
                }
                let a = a.clone();
                // A task that would keep running after a plain drop of the term's future.
                tasks.spawn("deaf watch", async move {
                    let _g = a.enter();
                    std::future::pending::<()>().await;
                });
                let _ = tasks.until_term_ends().await;
                tasks.stop(Duration::from_millis(50)).await;
            }
        },
    ));
    for round in 1..=3 {
        tx.send(true).unwrap();
        until(|| terms.load(Ordering::SeqCst) == round && alive.now() == 4).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(alive.now(), 4, "term {round}: each task once");
        tx.send(false).unwrap();
        until(|| alive.now() == 0).await;
    }
    cancel.cancel();
    leader.await.unwrap();
    assert_eq!(alive.now(), 0);
}
