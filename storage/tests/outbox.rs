//! Behaviour of the RocksDB outbox and checkpoint log through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use gxd_storage::checkpoint::{AppendOutcome, CheckpointLog, NewCheckpoint};
use gxd_storage::error::CheckpointRefusal;
use gxd_storage::outbox::{
    AttemptOutcome, CommandError, CommandId, NewCommand, Outbox, OutboxOptions, Status,
};
use gxd_storage::{Db, DbOptions, ErrorKind, StorageError};

fn open(dir: &std::path::Path) -> (Db, Outbox) {
    let db = Db::open(Db::path_in(dir), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
    (db, outbox)
}

fn cmd(request_id: &str, partition: &str, payload: &str) -> NewCommand {
    NewCommand {
        tenant: "org1".into(),
        command_type: "TRANSFER_TOKENS".into(),
        request_id: request_id.into(),
        partition_key: partition.into(),
        extra_partition_keys: Vec::new(),
        payload: payload.as_bytes().to_vec(),
    }
}

fn err(stage: &str) -> CommandError {
    CommandError {
        stage: stage.into(),
        code: "UNAVAILABLE".into(),
        message: "peer down".into(),
    }
}

fn far_future() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(3650)
}

fn due_ids(outbox: &Outbox) -> Vec<CommandId> {
    outbox
        .next_due(100, far_future())
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

fn assert_integrity(outbox: &Outbox) {
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "integrity problems: {:#?}", report.problems);
}

#[tokio::test]
async fn enqueue_is_idempotent_and_conflicts_on_a_different_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());

    let first = outbox.enqueue(cmd("r1", "w1", "{\"a\":1}")).await.unwrap();
    assert!(first.created);
    assert_eq!(first.command.status, Status::Pending);
    assert_eq!(first.command.attempts, 0);

    let again = outbox.enqueue(cmd("r1", "w1", "{\"a\":1}")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.command.id, first.command.id);

    let conflict = outbox
        .enqueue(cmd("r1", "w1", "{\"a\":2}"))
        .await
        .unwrap_err();
    match &conflict {
        StorageError::Conflict { existing, .. } => assert_eq!(*existing, first.command.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(conflict.kind(), ErrorKind::Conflict);

    // Another tenant may use the same request id.
    let mut other_tenant = cmd("r1", "w1", "{\"a\":1}");
    other_tenant.tenant = "org2".into();
    let other = outbox.enqueue(other_tenant).await.unwrap();
    assert!(other.created);
    assert_ne!(other.command.id, first.command.id);

    assert_eq!(outbox.get(first.command.id).unwrap(), first.command);
    assert_eq!(
        outbox
            .find_by_request_id("org1", "r1")
            .unwrap()
            .map(|c| c.id),
        Some(first.command.id)
    );
    assert_eq!(outbox.counts().unwrap().pending, 2);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn concurrent_duplicates_in_one_batch_create_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            outbox.enqueue(cmd("same", "w1", "p")).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let o = t.await.unwrap();
        created += usize::from(o.created);
        ids.push(o.command.id);
    }
    ids.dedup();
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(outbox.counts().unwrap().total(), 1);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn invalid_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let mut c = cmd("", "w", "p");
    assert_eq!(
        outbox.enqueue(c.clone()).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    c.request_id = "x".repeat(300);
    assert_eq!(
        outbox.enqueue(c).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let mut big = cmd("big", "w", "");
    big.payload = vec![0; (1 << 20) + 1];
    assert_eq!(
        outbox.enqueue(big).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(outbox.counts().unwrap().total(), 0);
}

#[tokio::test]
async fn full_lifecycle_and_illegal_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let id = outbox.enqueue(cmd("r", "w", "p")).await.unwrap().command.id;

    // Not yet prepared: submit/commit are illegal.
    for result in [
        outbox.mark_submitted(id).await,
        outbox.mark_committed(id, 7).await,
    ] {
        assert!(matches!(
            result,
            Err(StorageError::IllegalTransition {
                from: Status::Pending,
                ..
            })
        ));
    }
    let prepared = outbox
        .mark_prepared(id, "tx1".into(), b"signed".to_vec())
        .await
        .unwrap();
    assert_eq!(prepared.status, Status::Prepared);
    assert_eq!(prepared.signed_tx.as_deref(), Some(&b"signed"[..]));
    // Repeating with the same txid is a no-op; another txid is illegal.
    assert_eq!(
        outbox
            .mark_prepared(id, "tx1".into(), b"signed".to_vec())
            .await
            .unwrap(),
        prepared
    );
    assert!(
        outbox
            .mark_prepared(id, "tx2".into(), vec![])
            .await
            .is_err()
    );
    assert!(due_ids(&outbox).is_empty(), "in flight: not due");

    let submitted = outbox.mark_submitted(id).await.unwrap();
    assert_eq!(submitted.status, Status::Submitted);
    assert_eq!(outbox.mark_submitted(id).await.unwrap(), submitted);

    let committed = outbox.mark_committed(id, 42).await.unwrap();
    assert_eq!(committed.status, Status::Committed);
    assert_eq!(committed.block_number, Some(42));
    assert_eq!(committed.txid.as_deref(), Some("tx1"));
    assert!(committed.signed_tx.is_none());
    assert_eq!(outbox.mark_committed(id, 42).await.unwrap(), committed);
    assert!(outbox.mark_committed(id, 43).await.is_err());
    for result in [
        outbox.schedule_retry(id, err("x"), Utc::now()).await,
        outbox.mark_failed(id, err("x")).await,
        outbox.requeue(id).await,
    ] {
        assert!(matches!(
            result,
            Err(StorageError::IllegalTransition {
                from: Status::Committed,
                ..
            })
        ));
    }
    let unknown = CommandId::new_v7();
    assert_eq!(
        outbox.mark_submitted(unknown).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let c = outbox.counts().unwrap();
    assert_eq!((c.pending, c.committed, c.total()), (0, 1, 1));
    assert_integrity(&outbox);
}

#[tokio::test]
async fn partition_order_one_in_flight_and_retry_blocks_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let a1 = outbox
        .enqueue(cmd("a1", "A", "1"))
        .await
        .unwrap()
        .command
        .id;
    let a2 = outbox
        .enqueue(cmd("a2", "A", "2"))
        .await
        .unwrap()
        .command
        .id;
    let b1 = outbox
        .enqueue(cmd("b1", "B", "1"))
        .await
        .unwrap()
        .command
        .id;
    let a3 = outbox
        .enqueue(cmd("a3", "A", "3"))
        .await
        .unwrap()
        .command
        .id;

    assert_eq!(due_ids(&outbox), vec![a1, b1]);
    // Not the head: refused.
    match outbox.mark_prepared(a2, "t".into(), vec![]).await {
        Err(StorageError::PartitionBusy { head, .. }) => assert_eq!(head, Some(a1)),
        other => panic!("expected PartitionBusy, got {other:?}"),
    }
    outbox
        .mark_prepared(a1, "ta1".into(), vec![1])
        .await
        .unwrap();
    assert_eq!(due_ids(&outbox), vec![b1]);
    // Even while the head is in flight, the next one may not go.
    assert!(matches!(
        outbox.mark_prepared(a2, "t".into(), vec![]).await,
        Err(StorageError::PartitionBusy { .. })
    ));

    // The in-flight head fails transiently: retry later; the partition waits for it.
    let later = Utc::now() + chrono::Duration::hours(1);
    let retried = outbox
        .schedule_retry(a1, err("endorse"), later)
        .await
        .unwrap();
    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.attempts, 1);
    assert!(retried.txid.is_none() && retried.signed_tx.is_none());
    assert_eq!(retried.history.len(), 1);
    assert_eq!(retried.history[0].outcome, AttemptOutcome::Retried);
    assert_eq!(retried.history[0].txid.as_deref(), Some("ta1"));
    let now_due: Vec<_> = outbox
        .next_due(10, Utc::now())
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(now_due, vec![b1], "A waits for its head's retry time");
    assert_eq!(due_ids(&outbox), vec![b1, a1]);

    outbox
        .mark_prepared(a1, "ta1b".into(), vec![2])
        .await
        .unwrap();
    outbox.mark_committed(a1, 1).await.unwrap();
    assert_eq!(due_ids(&outbox), vec![a2, b1]);

    // Dead-letter a2: a3 goes next; a requeued a2 goes to the tail, after a3.
    outbox.mark_failed(a2, err("endorse")).await.unwrap();
    // Earliest due first: b1 was accepted before a3.
    assert_eq!(due_ids(&outbox), vec![b1, a3]);
    let requeued = outbox.requeue(a2).await.unwrap();
    assert_eq!(requeued.status, Status::Pending);
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.requeues, 1);
    assert_eq!(
        requeued
            .history
            .iter()
            .map(|h| h.outcome)
            .collect::<Vec<_>>(),
        vec![AttemptOutcome::Failed, AttemptOutcome::Requeued]
    );
    assert_eq!(due_ids(&outbox), vec![b1, a3]);
    outbox
        .mark_prepared(a3, "ta3".into(), vec![])
        .await
        .unwrap();
    outbox.mark_committed(a3, 2).await.unwrap();
    assert_eq!(due_ids(&outbox), vec![b1, a2]);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn postpone_moves_a_pending_head_later_without_counting_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (db, outbox) = open(dir.path());
    let a1 = outbox
        .enqueue(cmd("a1", "A", "1"))
        .await
        .unwrap()
        .command
        .id;
    let later = Utc::now() + chrono::Duration::hours(1);
    let p = outbox.postpone(a1, err("endorse"), later).await.unwrap();
    assert_eq!(p.status, Status::Pending);
    assert_eq!(p.attempts, 0, "a peer outage is not the command's attempt");
    assert!(p.history.is_empty());
    assert_eq!(
        p.last_error.as_ref().map(|e| e.stage.as_str()),
        Some("endorse")
    );
    assert!(
        outbox.next_due(10, Utc::now()).unwrap().is_empty(),
        "due later"
    );
    assert_eq!(
        outbox.next_due_at().unwrap().map(|t| t.timestamp()),
        Some(later.timestamp())
    );

    // In flight: its outcome is the resolution rule's, never a postponement.
    outbox
        .mark_prepared(a1, "t1".into(), vec![1])
        .await
        .unwrap();
    assert!(matches!(
        outbox.postpone(a1, err("endorse"), later).await,
        Err(StorageError::IllegalTransition { .. })
    ));
    drop(outbox);
    drop(db);
    let (_db, outbox) = open(dir.path());
    let c = outbox.get(a1).unwrap();
    assert_eq!((c.status, c.attempts), (Status::Prepared, 0));
    assert_integrity(&outbox);
}

#[tokio::test]
async fn list_by_status_pages_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..25 {
        let o = outbox
            .enqueue(cmd(&format!("r{i}"), &format!("w{}", i % 3), "p"))
            .await
            .unwrap();
        ids.push(o.command.id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = outbox.list_by_status(Status::Pending, cursor, 10).unwrap();
        seen.extend(page.commands.iter().map(|c| c.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert!(
        outbox
            .list_by_status(Status::Failed, None, 10)
            .unwrap()
            .commands
            .is_empty()
    );
}

#[tokio::test]
async fn purge_removes_old_committed_commands_and_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let mut committed = Vec::new();
    for i in 0..5 {
        let id = outbox
            .enqueue(cmd(&format!("c{i}"), &format!("w{i}"), "p"))
            .await
            .unwrap()
            .command
            .id;
        outbox
            .mark_prepared(id, format!("t{i}"), vec![])
            .await
            .unwrap();
        outbox.mark_committed(id, i).await.unwrap();
        committed.push(id);
    }
    let live = outbox
        .enqueue(cmd("live", "wl", "p"))
        .await
        .unwrap()
        .command
        .id;
    let dead = outbox
        .enqueue(cmd("dead", "wd", "p"))
        .await
        .unwrap()
        .command
        .id;
    outbox.mark_failed(dead, err("endorse")).await.unwrap();

    // Nothing is old enough yet.
    let report = outbox.purge(Utc::now()).await.unwrap();
    assert_eq!(report.commands_removed, 0);

    // Idempotency keys of committed commands expire first; live ones stay.
    let expired = outbox
        .expire_idempotency(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(expired, 5);
    assert!(outbox.find_by_request_id("org1", "c0").unwrap().is_none());
    assert_eq!(
        outbox
            .find_by_request_id("org1", "live")
            .unwrap()
            .map(|c| c.id),
        Some(live)
    );
    assert_integrity(&outbox);

    // Then the committed commands themselves.
    let report = outbox
        .purge_committed(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.commands_removed, 5);
    for id in committed {
        assert_eq!(outbox.get(id).unwrap_err().kind(), ErrorKind::NotFound);
    }
    outbox.get(live).unwrap();
    outbox.get(dead).unwrap();
    let c = outbox.counts().unwrap();
    assert_eq!((c.committed, c.pending, c.failed), (0, 1, 1));
    assert_integrity(&outbox);
}

#[tokio::test]
async fn purge_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
    let opts = OutboxOptions {
        purge_chunk: 3,
        ..OutboxOptions::default()
    };
    let outbox = Outbox::new(db, opts).unwrap();
    for i in 0..10 {
        let id = outbox
            .enqueue(cmd(&format!("c{i}"), "w", "p"))
            .await
            .unwrap()
            .command
            .id;
        outbox
            .mark_prepared(id, format!("t{i}"), vec![])
            .await
            .unwrap();
        outbox.mark_committed(id, i).await.unwrap();
    }
    let report = outbox
        .purge_committed(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.commands_removed, 10);
    assert_eq!(report.idempotency_keys_removed, 10);
    assert_eq!(outbox.counts().unwrap().total(), 0);
    assert_integrity(&outbox);
}

#[test]
fn options_are_validated() {
    let opts = OutboxOptions {
        idempotency_window: Duration::from_secs(10),
        committed_retention: Duration::from_secs(5),
        ..OutboxOptions::default()
    };
    assert_eq!(opts.validate().unwrap_err().kind(), ErrorKind::InvalidInput);
    OutboxOptions::default().validate().unwrap();
}

#[tokio::test]
async fn state_survives_reopen_and_a_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let (db, outbox) = open(dir.path());
        id = outbox.enqueue(cmd("r", "w", "p")).await.unwrap().command.id;
        outbox
            .mark_prepared(id, "tx".into(), vec![9])
            .await
            .unwrap();
        // The same directory cannot be opened twice.
        let second = Db::open(db.path(), &DbOptions::default()).unwrap_err();
        assert!(
            matches!(second, StorageError::Locked { .. }),
            "expected Locked, got {second:?}"
        );
        assert_eq!(second.kind(), ErrorKind::Unavailable);
    }
    let (_db, outbox) = open(dir.path());
    let c = outbox.get(id).unwrap();
    assert_eq!(c.status, Status::Prepared);
    assert_eq!(c.signed_tx, Some(vec![9]));
    assert_eq!(outbox.counts().unwrap().prepared, 1);
    let again = outbox.enqueue(cmd("r", "w", "p")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.command.id, id);
    assert_integrity(&outbox);
}

fn block(number: u64, prev: &[u8], hash: &[u8]) -> NewCheckpoint {
    NewCheckpoint {
        number,
        header_hash: hash.to_vec(),
        previous_hash: prev.to_vec(),
        tx_count: number * 2,
    }
}

#[tokio::test]
async fn checkpoint_log_enforces_continuity() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _outbox) = open(dir.path());
    let log = CheckpointLog::new(db);
    let ch = "gxchannel";
    assert!(log.last(ch).unwrap().is_none());

    // An empty log starts at block 0.
    match log.append(ch, block(1, b"h0", b"h1")).await {
        Err(StorageError::CheckpointRefused {
            reason:
                CheckpointRefusal::Gap {
                    expected: 0,
                    got: 1,
                },
            ..
        }) => {}
        other => panic!("expected a gap, got {other:?}"),
    }
    assert!(matches!(
        log.append(ch, block(0, b"", b"h0")).await.unwrap(),
        AppendOutcome::Appended(_)
    ));
    log.append(ch, block(1, b"h0", b"h1")).await.unwrap();
    log.append(ch, block(2, b"h1", b"h2")).await.unwrap();

    // Gap.
    match log.append(ch, block(4, b"h3", b"h4")).await {
        Err(StorageError::CheckpointRefused {
            reason:
                CheckpointRefusal::Gap {
                    expected: 3,
                    got: 4,
                },
            ..
        }) => {}
        other => panic!("expected a gap, got {other:?}"),
    }
    // Previous hash mismatch.
    match log.append(ch, block(3, b"hX", b"h3")).await {
        Err(StorageError::CheckpointRefused {
            reason:
                CheckpointRefusal::PreviousHashMismatch {
                    number: 3,
                    expected,
                    got,
                },
            ..
        }) => {
            assert_eq!(expected, hex::encode(b"h2"));
            assert_eq!(got, hex::encode(b"hX"));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // The same block again is a no-op; a different block 2 a conflict.
    assert!(matches!(
        log.append(ch, block(2, b"h1", b"h2")).await.unwrap(),
        AppendOutcome::AlreadyPresent(_)
    ));
    assert!(matches!(
        log.append(ch, block(2, b"h1", b"other")).await,
        Err(StorageError::CheckpointRefused {
            reason: CheckpointRefusal::Conflict { number: 2 },
            ..
        })
    ));

    // Channels are independent.
    log.append("other", block(0, b"", b"o0")).await.unwrap();
    assert_eq!(log.last("other").unwrap().unwrap().number, 0);

    let last = log.last(ch).unwrap().unwrap();
    assert_eq!((last.number, last.header_hash.as_slice()), (2, &b"h2"[..]));
    assert_eq!(log.get(ch, 1).unwrap().unwrap().previous_hash, b"h0");
    assert!(log.get(ch, 9).unwrap().is_none());
    let numbers: Vec<u64> = log
        .range(ch, 1, 10, 100)
        .unwrap()
        .iter()
        .map(|c| c.number)
        .collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(log.range(ch, 0, 10, 2).unwrap().len(), 2);

    // Rebuild support.
    assert_eq!(log.truncate_after(ch, 0).await.unwrap(), 2);
    assert_eq!(log.last(ch).unwrap().unwrap().number, 0);
    log.append(ch, block(1, b"h0", b"h1")).await.unwrap();
    assert_eq!(log.reset(ch).await.unwrap(), 2);
    assert!(log.last(ch).unwrap().is_none());
    assert_eq!(log.last("other").unwrap().unwrap().number, 0);
}

#[tokio::test]
async fn concurrent_checkpoint_appends_in_one_round_keep_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _outbox) = open(dir.path());
    let log = CheckpointLog::new(db);
    let hash = |n: u64| format!("h{n}").into_bytes();
    log.append("c", block(0, b"", &hash(0))).await.unwrap();
    // Submitted all at once: whatever lands in one round, only the continuous chain wins.
    let mut tasks = Vec::new();
    for n in 1..50u64 {
        let log = log.clone();
        let b = block(n, &hash(n - 1), &hash(n));
        tasks.push(tokio::spawn(async move { log.append("c", b).await }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let last = log.last("c").unwrap().unwrap();
    let chain = log.range("c", 0, last.number, 1000).unwrap();
    for (i, c) in chain.iter().enumerate() {
        assert_eq!(c.number, i as u64);
        if i > 0 {
            assert_eq!(c.previous_hash, chain[i - 1].header_hash);
        }
    }
}

// ---- multi-key partitions ------------------------------------------------------------

fn keyed(request_id: &str, first: &str, extras: &[&str]) -> NewCommand {
    NewCommand {
        extra_partition_keys: extras.iter().map(|k| (*k).to_owned()).collect(),
        ..cmd(request_id, first, "{}")
    }
}

async fn id_of(outbox: &Outbox, new: NewCommand) -> CommandId {
    outbox.enqueue(new).await.unwrap().command.id
}

async fn commit(outbox: &Outbox, id: CommandId, tx: &str) {
    outbox.mark_prepared(id, tx.into(), vec![1]).await.unwrap();
    outbox.mark_committed(id, 1).await.unwrap();
}

fn sorted(mut v: Vec<CommandId>) -> Vec<CommandId> {
    v.sort();
    v
}

#[tokio::test]
async fn commands_sharing_a_payee_leave_in_acceptance_order_on_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ax, cx, a2, dx) = {
        let (_db, outbox) = open(dir.path());
        // Two payers paying merchant m, a's second command, and a third payer of m.
        let ax = id_of(&outbox, keyed("ax", "a", &["m"])).await;
        let cx = id_of(&outbox, keyed("cx", "c", &["m"])).await;
        let a2 = id_of(&outbox, keyed("a2", "a", &[])).await;
        let dx = id_of(&outbox, keyed("dx", "d", &["m"])).await;
        // Only the oldest is due: cx and dx wait on m, a2 on a.
        assert_eq!(due_ids(&outbox), vec![ax]);
        match outbox.mark_prepared(cx, "t".into(), vec![]).await {
            Err(StorageError::PartitionBusy {
                partition, head, ..
            }) => {
                assert_eq!(partition, "m");
                assert_eq!(head, Some(ax));
            }
            other => panic!("expected PartitionBusy on m, got {other:?}"),
        }
        assert_integrity(&outbox);
        (ax, cx, a2, dx)
    };
    // The queues survive a reopen (the partition-length mirror is rebuilt from disk).
    let (_db, outbox) = open(dir.path());
    assert_eq!(due_ids(&outbox), vec![ax]);
    outbox
        .mark_prepared(ax, "tax".into(), vec![1])
        .await
        .unwrap();
    assert!(due_ids(&outbox).is_empty(), "ax in flight holds a and m");
    outbox.mark_committed(ax, 1).await.unwrap();
    // ax left both queues: cx now heads m (and c), a2 heads a.
    assert_eq!(sorted(due_ids(&outbox)), sorted(vec![cx, a2]));
    commit(&outbox, a2, "ta2").await;
    assert_eq!(due_ids(&outbox), vec![cx]);
    // A dead letter leaves every queue too.
    outbox.mark_failed(cx, err("commit")).await.unwrap();
    assert_eq!(due_ids(&outbox), vec![dx]);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn a_requeued_command_goes_to_the_tail_of_every_one_of_its_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let x = id_of(&outbox, keyed("x", "a", &["m"])).await;
    let y = id_of(&outbox, keyed("y", "m", &[])).await;
    let z = id_of(&outbox, keyed("z", "a", &[])).await;
    outbox.mark_failed(x, err("commit")).await.unwrap();
    assert_eq!(sorted(due_ids(&outbox)), sorted(vec![y, z]));
    let requeued = outbox.requeue(x).await.unwrap();
    assert_eq!(requeued.status, Status::Pending);
    // Behind y on m and behind z on a.
    assert_eq!(sorted(due_ids(&outbox)), sorted(vec![y, z]));
    commit(&outbox, y, "ty").await;
    assert_eq!(due_ids(&outbox), vec![z], "x still waits on a");
    commit(&outbox, z, "tz").await;
    assert_eq!(due_ids(&outbox), vec![x]);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn partition_keys_are_deduplicated_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    // Repeats and the first key dropped, the rest in byte order.
    let c = outbox
        .enqueue(keyed("dup", "b", &["m", "b", "a", "m"]))
        .await
        .unwrap()
        .command;
    assert_eq!(c.extra_partition_keys, vec!["a", "m"]);
    assert_eq!(c.partition_keys().collect::<Vec<_>>(), vec!["b", "a", "m"]);
    assert_eq!(
        keyed("dup", "b", &["m", "b", "a", "m"]).partition_keys(),
        vec!["b", "a", "m"]
    );
    assert_eq!(outbox.get(c.id).unwrap(), c);
    // Eight distinct keys are accepted, nine are not.
    let seven: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    let seven: Vec<&str> = seven.iter().map(String::as_str).collect();
    outbox
        .enqueue(keyed("eight", "first", &seven))
        .await
        .unwrap();
    let mut eight = seven.clone();
    eight.push("k7");
    let refused = |r: Result<gxd_storage::outbox::EnqueueOutcome, StorageError>| match r {
        Err(e @ StorageError::InvalidInput(_)) => e.to_string(),
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let e = refused(outbox.enqueue(keyed("nine", "first", &eight)).await);
    assert!(
        e.contains("9 distinct partition keys") && e.contains("at most 8"),
        "{e}"
    );
    // ...however often the same ones are repeated, but not an endless list.
    let many = vec!["m"; 100];
    let e = refused(outbox.enqueue(keyed("many", "first", &many)).await);
    assert!(e.contains("100 extra partition keys"), "{e}");
    let e = refused(outbox.enqueue(keyed("empty", "first", &["m", ""])).await);
    assert!(e.contains("extra partition key 1 is empty"), "{e}");
    let long = "w".repeat(1025);
    let e = refused(outbox.enqueue(keyed("long", "first", &[&long])).await);
    assert!(
        e.contains("extra partition key 0 is longer than 1024 bytes"),
        "{e}"
    );
    // Nothing refused was stored.
    assert_eq!(outbox.counts().unwrap().pending, 2);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn the_idempotency_digest_covers_the_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let first = outbox.enqueue(keyed("r", "a", &["m", "n"])).await.unwrap();
    assert!(first.created);
    // The same set in another order (and with repeats): the same command.
    let again = outbox
        .enqueue(keyed("r", "a", &["n", "m", "n"]))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.command.id, first.command.id);
    // Another key set under the same request id: a conflict.
    for other in [&["m"][..], &["m", "n", "o"][..], &[][..]] {
        match outbox.enqueue(keyed("r", "a", other)).await {
            Err(StorageError::Conflict { existing, .. }) => assert_eq!(existing, first.command.id),
            r => panic!("expected Conflict for {other:?}, got {r:?}"),
        }
    }
    // A command without extra keys (as every one accepted before they existed) is
    // repeated by the same request with the payee added: a retry across the upgrade.
    let old = outbox.enqueue(keyed("old", "a", &[])).await.unwrap();
    let retry = outbox.enqueue(keyed("old", "a", &["m"])).await.unwrap();
    assert!(!retry.created);
    assert_eq!(retry.command.id, old.command.id);
    assert!(retry.command.extra_partition_keys.is_empty());
    // But not with another payload.
    assert!(matches!(
        outbox
            .enqueue(NewCommand {
                payload: b"{\"other\":1}".to_vec(),
                ..keyed("old", "a", &["m"])
            })
            .await,
        Err(StorageError::Conflict { .. })
    ));
    assert_integrity(&outbox);
}

#[test]
fn a_command_without_extra_keys_hashes_as_before_them() {
    use sha2::{Digest, Sha256};
    // The digest of format 1's first release: type, partition, payload, length-prefixed.
    let before = |t: &str, p: &str, payload: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [t.as_bytes(), p.as_bytes(), payload] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    };
    let plain = cmd("r", "alice", "{}");
    assert_eq!(
        gxd_storage::outbox::payload_digest(&plain),
        before("TRANSFER_TOKENS", "alice", b"{}")
    );
    // Extra keys change it; their order and repeats (and the first key again) do not.
    let keyed_ab = keyed("r", "alice", &["bob", "carol"]);
    assert_ne!(
        gxd_storage::outbox::payload_digest(&keyed_ab),
        before("TRANSFER_TOKENS", "alice", b"{}")
    );
    assert_eq!(
        gxd_storage::outbox::payload_digest(&keyed_ab),
        gxd_storage::outbox::payload_digest(&keyed(
            "r",
            "alice",
            &["carol", "alice", "bob", "carol"]
        ))
    );
    assert_eq!(
        gxd_storage::outbox::payload_digest(&keyed("r", "alice", &["alice"])),
        before("TRANSFER_TOKENS", "alice", b"{}")
    );
}

/// The due index after heavy churn: prepared heads leave tombstones in front of the live
/// entries; `next_due_excluding` skips claimed ids without loading them, and compacting the
/// index drops the tombstones and changes no answer.
#[tokio::test]
async fn due_index_compaction_and_exclusion_keep_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..600 {
        let c = outbox
            .enqueue(cmd(&format!("r{i}"), &format!("p{i}"), "{}"))
            .await
            .unwrap();
        ids.push(c.command.id);
    }
    // The first 500 are prepared: their due entries become tombstones.
    for (i, id) in ids.iter().take(500).enumerate() {
        outbox
            .mark_prepared(*id, format!("tx{i}"), b"signed".to_vec())
            .await
            .unwrap();
    }
    let mut expected: Vec<CommandId> = ids[500..].to_vec();
    expected.sort();
    let mut before = due_ids(&outbox);
    before.sort();
    assert_eq!(before, expected);

    let claimed: std::collections::HashSet<CommandId> = ids[500..550].iter().copied().collect();
    let rest: Vec<CommandId> = outbox
        .next_due_excluding(1000, far_future(), &claimed)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(rest.len(), 50);
    assert!(rest.iter().all(|id| !claimed.contains(id)));

    outbox.compact_due_index().unwrap();
    let mut after = due_ids(&outbox);
    after.sort();
    assert_eq!(after, expected, "compaction changes no answer");
    assert_integrity(&outbox);
}
