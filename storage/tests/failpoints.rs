//! Failures injected between the steps of every change (the `fail` crate; run with
//! `cargo test -p gxd-storage --features failpoints`). Failpoints are process-global, so
//! the tests take a lock and run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use gxd_storage::checkpoint::{CheckpointLog, NewCheckpoint};
use gxd_storage::outbox::{CommandError, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions, ErrorKind, StorageError};

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a test body alone (failpoints are global) on a two-worker runtime.
fn serial(body: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}

fn open(dir: &std::path::Path) -> (Db, Outbox) {
    let db = Db::open(Db::path_in(dir), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
    (db, outbox)
}

fn cmd(request_id: &str, partition: &str) -> NewCommand {
    NewCommand {
        tenant: "t".into(),
        command_type: "T".into(),
        request_id: request_id.into(),
        partition_key: partition.into(),
        extra_partition_keys: Vec::new(),
        payload: request_id.as_bytes().to_vec(),
    }
}

/// A command with a second partition key (a transfer's payee).
fn cmd2(request_id: &str, partition: &str, payee: &str) -> NewCommand {
    NewCommand {
        extra_partition_keys: vec![payee.into()],
        ..cmd(request_id, partition)
    }
}

fn error() -> CommandError {
    CommandError {
        stage: "endorse".into(),
        code: "X".into(),
        message: "m".into(),
    }
}

fn assert_integrity(outbox: &Outbox) {
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
}

/// A write that fails before it reaches the WAL leaves nothing; one that fails after it
/// is durable and an idempotent retry finds it. Under random failures of both kinds, every
/// acknowledged enqueue is present and every enqueue refused before the write is absent.
#[test]
fn acknowledged_means_durable_under_random_write_failures() {
    serial(acknowledged_means_durable_under_random_write_failures_body());
}

async fn acknowledged_means_durable_under_random_write_failures_body() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());

    for (point, written_on_error) in [
        ("storage::writer::before_write", false),
        ("storage::writer::after_write", true),
    ] {
        let (mut total_ok, mut total_failed) = (0, 0);
        for seed in 0..8u64 {
            // Seeds 0..4: exactly the (seed+1)-th write round fails; then random rounds.
            let actions = match seed {
                0 => "1*return->off".to_owned(),
                1..=3 => format!("{seed}*off->1*return->off"),
                _ => "40%return".to_owned(),
            };
            fail::cfg(point, &actions).unwrap();
            let mut tasks = Vec::new();
            for i in 0..100 {
                let outbox = outbox.clone();
                let req = format!("{point}-{seed}-{i}");
                tasks.push(tokio::spawn(async move {
                    let new = cmd2(&req, &format!("w{}", i % 7), &format!("w{}", (i + 3) % 7));
                    let r = outbox.enqueue(new).await;
                    (req, r)
                }));
            }
            let (mut ok, mut failed) = (0, 0);
            for t in tasks {
                let (req, r) = t.await.unwrap();
                let found = outbox.find_by_request_id("t", &req).unwrap();
                match r {
                    Ok(o) => {
                        ok += 1;
                        assert_eq!(found.map(|c| c.id), Some(o.command.id));
                    }
                    Err(e) => {
                        failed += 1;
                        assert_eq!(e.kind(), ErrorKind::Unavailable);
                        assert_eq!(found.is_some(), written_on_error, "{point}: {req}");
                    }
                }
            }
            assert_eq!(ok + failed, 100);
            total_failed += failed;
            total_ok += ok;
            fail::remove(point);
            assert_integrity(&outbox);
        }
        // Both outcomes were exercised.
        assert!(
            total_ok > 0 && total_failed > 0,
            "{point}: ok {total_ok}, failed {total_failed}"
        );
    }
    // After the failures, idempotent retries of the ambiguous ones return the original.
    let retry = outbox
        .enqueue(cmd2("storage::writer::after_write-0-0", "w0", "w3"))
        .await
        .unwrap();
    assert!(!retry.created);
    scenario.teardown();
}

/// A failure between the steps of a transition rolls that transition back entirely, and
/// does not disturb the other changes of the same write round.
#[test]
fn a_failure_between_the_steps_of_a_transition_leaves_nothing_half_done() {
    serial(a_failure_between_the_steps_of_a_transition_leaves_nothing_half_done_body());
}

async fn a_failure_between_the_steps_of_a_transition_leaves_nothing_half_done_body() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());

    // Enqueue steps.
    for point in [
        "storage::outbox::enqueue::after_record",
        "storage::outbox::enqueue::staged",
    ] {
        fail::cfg(point, "return").unwrap();
        let e = outbox.enqueue(cmd(point, "w")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        fail::remove(point);
        assert!(outbox.find_by_request_id("t", point).unwrap().is_none());
        assert_eq!(outbox.counts().unwrap().total(), 0);
        assert_integrity(&outbox);
    }

    // `a` has two partition keys, A and M: its transitions join and leave both queues.
    let a = outbox
        .enqueue(cmd2("a", "A", "M"))
        .await
        .unwrap()
        .command
        .id;
    let b = outbox.enqueue(cmd("b", "A")).await.unwrap().command.id;
    let m = outbox.enqueue(cmd("m", "M")).await.unwrap().command.id;
    // Every transition, with a failure at each of its steps, then without.
    type Step =
        fn(
            &Outbox,
            gxd_storage::outbox::CommandId,
        )
            -> futures_like::BoxFuture<'_, Result<gxd_storage::outbox::Command, StorageError>>;
    const INDEX: &str = "storage::outbox::transition::after_index";
    const RECORD: &str = "storage::outbox::transition::after_record";
    const STAGED: &str = "storage::outbox::transition::staged";
    let steps: Vec<(&str, Step, &[&str], Status)> = vec![
        (
            "prepare",
            |o, id| Box::pin(o.mark_prepared(id, "tx".into(), vec![1])),
            &[INDEX, STAGED],
            Status::Prepared,
        ),
        (
            "submit",
            |o, id| Box::pin(o.mark_submitted(id)),
            &[RECORD, STAGED],
            Status::Submitted,
        ),
        (
            "retry",
            |o, id| Box::pin(o.schedule_retry(id, error(), Utc::now())),
            &[INDEX, STAGED],
            Status::Pending,
        ),
        (
            "prepare again",
            |o, id| Box::pin(o.mark_prepared(id, "tx2".into(), vec![2])),
            &[INDEX, STAGED],
            Status::Prepared,
        ),
        (
            "fail",
            |o, id| Box::pin(o.mark_failed(id, error())),
            &[INDEX, STAGED],
            Status::Failed,
        ),
        (
            "requeue",
            |o, id| Box::pin(o.requeue(id)),
            &[INDEX, STAGED],
            Status::Pending,
        ),
        (
            "prepare third",
            |o, id| Box::pin(o.mark_prepared(id, "tx3".into(), vec![3])),
            &[INDEX, STAGED],
            Status::Prepared,
        ),
        (
            "commit",
            |o, id| Box::pin(o.mark_committed(id, 5)),
            &[INDEX, STAGED],
            Status::Committed,
        ),
    ];
    for (name, step, points, to) in steps {
        // After the requeue, `a` is behind `b` in partition A and `m` in M: move both out
        // of the way.
        if name == "prepare third" {
            outbox.mark_prepared(b, "tb".into(), vec![]).await.unwrap();
            outbox.mark_committed(b, 4).await.unwrap();
            outbox.mark_prepared(m, "tm".into(), vec![]).await.unwrap();
            outbox.mark_committed(m, 4).await.unwrap();
        }
        for point in points {
            let before = outbox.get(a).unwrap();
            let counts = outbox.counts().unwrap();
            fail::cfg(*point, "return").unwrap();
            // An enqueue in the same moment is not affected.
            let side = {
                let outbox = outbox.clone();
                let req = format!("side-{name}-{point}");
                tokio::spawn(async move { outbox.enqueue(cmd(&req, "S")).await })
            };
            let r = step(&outbox, a).await;
            fail::remove(*point);
            let side = side.await.unwrap();
            assert!(side.is_ok(), "{name}/{point}: side enqueue {side:?}");
            let e = r.expect_err("the failpoint must fail the transition");
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{name}/{point}: {e}");
            assert_eq!(outbox.get(a).unwrap(), before, "{name}/{point}");
            let mut after = outbox.counts().unwrap();
            after.pending -= 1; // the side enqueue
            assert_eq!(after, counts, "{name}/{point}");
            assert_integrity(&outbox);
        }
        let c = step(&outbox, a).await.unwrap();
        assert_eq!(c.status, to, "{name}");
        assert_integrity(&outbox);
    }
    let c = outbox
        .enqueue(cmd2("c", "A", "M"))
        .await
        .unwrap()
        .command
        .id;
    let due: Vec<_> = outbox
        .next_due(10, Utc::now() + chrono::Duration::days(1))
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(due.contains(&c));
    assert_integrity(&outbox);
    scenario.teardown();
}

/// A panic in the writer loop: callers get "unavailable", nobody hangs, and the database
/// reopens with everything acknowledged before.
#[test]
fn a_dead_writer_fails_fast_and_the_database_reopens() {
    serial(a_dead_writer_fails_fast_and_the_database_reopens_body());
}

async fn a_dead_writer_fails_fast_and_the_database_reopens_body() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let acked;
    {
        let (db, outbox) = open(dir.path());
        acked = outbox.enqueue(cmd("before", "w")).await.unwrap().command.id;
        fail::cfg("storage::writer::round", "panic").unwrap();
        // A deadline only to turn a hang into a failure, not a timing assertion.
        let r = tokio::time::timeout(Duration::from_secs(60), outbox.enqueue(cmd("x", "w")))
            .await
            .expect("enqueue hung on a dead writer");
        fail::remove("storage::writer::round");
        assert!(matches!(r, Err(StorageError::Unavailable { .. })));
        let r = tokio::time::timeout(Duration::from_secs(60), outbox.enqueue(cmd("y", "w")))
            .await
            .expect("enqueue hung on a dead writer");
        assert!(matches!(r, Err(StorageError::Unavailable { .. })));
        assert!(!db.is_writable());
    }
    let (db, outbox) = open(dir.path());
    assert!(db.is_writable());
    assert_eq!(outbox.get(acked).unwrap().status, Status::Pending);
    assert!(outbox.find_by_request_id("t", "x").unwrap().is_none());
    assert_integrity(&outbox);
    scenario.teardown();
}

#[test]
fn a_failed_checkpoint_append_leaves_the_log_unchanged() {
    serial(a_failed_checkpoint_append_leaves_the_log_unchanged_body());
}

async fn a_failed_checkpoint_append_leaves_the_log_unchanged_body() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (db, _outbox) = open(dir.path());
    let log = CheckpointLog::new(db.clone());
    let b = |n: u64| NewCheckpoint {
        number: n,
        header_hash: vec![n as u8 + 1],
        previous_hash: if n == 0 { vec![] } else { vec![n as u8] },
        tx_count: 1,
    };
    log.append("c", b(0)).await.unwrap();
    for point in [
        "storage::checkpoint::append",
        "storage::writer::before_write",
    ] {
        fail::cfg(point, "return").unwrap();
        let e = log.append("c", b(1)).await.unwrap_err();
        fail::remove(point);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(log.last("c").unwrap().unwrap().number, 0);
        if point == "storage::writer::before_write" {
            // A failed write shows in readiness until a write succeeds again.
            assert!(!db.is_writable());
        }
    }
    log.append("c", b(1)).await.unwrap();
    assert!(db.is_writable());
    assert_eq!(log.last("c").unwrap().unwrap().number, 1);
    scenario.teardown();
}

/// A boxed future without the futures crate.
mod futures_like {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}
