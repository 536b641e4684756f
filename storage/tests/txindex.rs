//! The outbox's transaction-id index, late commits and the PROJECTED status, through the
//! public API on a real RocksDB (fsync'd writes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use gxd_storage::checkpoint::{AppendOutcome, CheckpointLog, NewCheckpoint};
use gxd_storage::outbox::{
    AttemptOutcome, ChaincodeResult, CommandChange, CommandError, CommandId, LedgerCommit,
    MAX_RESULT_BYTES, NewCommand, Outbox, OutboxOptions, Status,
};
use gxd_storage::{Db, DbOptions, StorageError};

fn open(dir: &std::path::Path, opts: OutboxOptions) -> (Db, Outbox) {
    let db = Db::open(Db::path_in(dir), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db.clone(), opts).unwrap();
    (db, outbox)
}

fn cmd(request_id: &str, partition: &str) -> NewCommand {
    NewCommand {
        tenant: "org1".into(),
        command_type: "TRANSFER_TOKENS".into(),
        request_id: request_id.into(),
        partition_key: partition.into(),
        extra_partition_keys: Vec::new(),
        payload: request_id.as_bytes().to_vec(),
    }
}

fn mvcc() -> CommandError {
    CommandError {
        stage: "commit".into(),
        code: "MVCC_READ_CONFLICT".into(),
        message: "conflict".into(),
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

fn commit(txid: &str, block: u64, index: u32) -> LedgerCommit {
    LedgerCommit {
        txid: txid.into(),
        block_number: block,
        tx_index: Some(index),
        result: Some(ChaincodeResult::new(Some(200), b"{\"ok\":true}")),
    }
}

fn checkpoint(number: u64) -> NewCheckpoint {
    let hash = |n: u64| vec![u8::try_from(n % 251).unwrap() + 1; 32];
    NewCheckpoint {
        number,
        header_hash: hash(number),
        previous_hash: if number == 0 {
            Vec::new()
        } else {
            hash(number - 1)
        },
        tx_count: 1,
    }
}

#[tokio::test]
async fn every_prepared_txid_is_indexed_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (_db, outbox) = open(dir.path(), OutboxOptions::default());
        let id = outbox.enqueue(cmd("r1", "w1")).await.unwrap().command.id;
        assert_eq!(outbox.command_by_txid("tx-a").unwrap(), None);
        outbox
            .mark_prepared(id, "tx-a".into(), vec![1])
            .await
            .unwrap();
        assert_eq!(outbox.command_by_txid("tx-a").unwrap().unwrap().id, id);
        // An attempt that certainly did not commit; the next one uses another tx id.
        outbox.schedule_retry(id, mvcc(), Utc::now()).await.unwrap();
        outbox
            .mark_prepared(id, "tx-b".into(), vec![2])
            .await
            .unwrap();
        assert_integrity(&outbox);
        id
    };
    let (_db, outbox) = open(dir.path(), OutboxOptions::default());
    for txid in ["tx-a", "tx-b"] {
        let c = outbox.command_by_txid(txid).unwrap().unwrap();
        assert_eq!(c.id, id);
        assert_eq!(c.txid.as_deref(), Some("tx-b"));
    }
    assert_eq!(outbox.txids_of(id).unwrap(), vec!["tx-a", "tx-b"]);
    // A tx id belongs to one command.
    let other = outbox.enqueue(cmd("r2", "w2")).await.unwrap().command.id;
    let refused = outbox.mark_prepared(other, "tx-a".into(), vec![3]).await;
    assert!(
        matches!(refused, Err(StorageError::InvalidInput(_))),
        "{refused:?}"
    );
    assert_eq!(outbox.get(other).unwrap().status, Status::Pending);
    assert_integrity(&outbox);
    let report = outbox.verify_integrity().unwrap();
    assert_eq!(report.txids, 2);
}

#[tokio::test]
async fn a_late_commit_of_an_earlier_attempt_settles_a_pending_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path(), OutboxOptions::default());
    let a = outbox.enqueue(cmd("a", "w")).await.unwrap().command.id;
    let b = outbox.enqueue(cmd("b", "w")).await.unwrap().command.id;
    outbox
        .mark_prepared(a, "tx-a1".into(), vec![1])
        .await
        .unwrap();
    // Believed not to commit: a retry far in the future blocks the partition.
    outbox
        .schedule_retry(a, mvcc(), far_future())
        .await
        .unwrap();
    assert_eq!(due_ids(&outbox), vec![a]);

    let c = outbox
        .record_ledger_commit(commit("tx-a1", 7, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, Status::Committed);
    assert_eq!(
        (c.txid.as_deref(), c.block_number, c.tx_index),
        (Some("tx-a1"), Some(7), Some(2))
    );
    assert_eq!(c.result.as_ref().unwrap().payload, b"{\"ok\":true}");
    // The retry is gone from the due index (never submitted again); b is the head now.
    assert_eq!(due_ids(&outbox), vec![b]);
    let refused = outbox.mark_prepared(a, "tx-a2".into(), vec![2]).await;
    assert!(
        matches!(refused, Err(StorageError::IllegalTransition { .. })),
        "{refused:?}"
    );
    // Repeating it changes nothing; an unknown tx id is no command's.
    assert_eq!(
        outbox
            .record_ledger_commit(commit("tx-a1", 7, 2))
            .await
            .unwrap()
            .unwrap(),
        c
    );
    assert_eq!(
        outbox
            .record_ledger_commit(commit("tx-other-org", 7, 3))
            .await
            .unwrap(),
        None
    );
    assert_integrity(&outbox);
}

#[tokio::test]
async fn a_late_commit_settles_failed_and_in_flight_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, outbox) = open(dir.path(), OutboxOptions::default());
    // FAILED (dead-lettered) whose transaction commits after all.
    let f = outbox.enqueue(cmd("f", "w1")).await.unwrap().command.id;
    outbox
        .mark_prepared(f, "tx-f".into(), vec![1])
        .await
        .unwrap();
    outbox.mark_failed(f, mvcc()).await.unwrap();
    let c = outbox
        .mark_committed_tx(f, commit("tx-f", 3, 0))
        .await
        .unwrap();
    assert_eq!(c.status, Status::Committed);
    assert_eq!(c.txid.as_deref(), Some("tx-f"));

    // A later attempt in flight when the earlier one commits: superseded.
    let p = outbox.enqueue(cmd("p", "w2")).await.unwrap().command.id;
    outbox
        .mark_prepared(p, "tx-p1".into(), vec![1])
        .await
        .unwrap();
    outbox.schedule_retry(p, mvcc(), Utc::now()).await.unwrap();
    outbox
        .mark_prepared(p, "tx-p2".into(), vec![2])
        .await
        .unwrap();
    outbox.mark_submitted(p).await.unwrap();
    let c = outbox
        .record_ledger_commit(commit("tx-p1", 4, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, Status::Committed);
    assert_eq!(c.txid.as_deref(), Some("tx-p1"));
    assert_eq!(c.signed_tx, None);
    let last = c.history.last().unwrap();
    assert_eq!(last.outcome, AttemptOutcome::Superseded);
    assert_eq!(last.txid.as_deref(), Some("tx-p2"));
    // The superseded attempt's own outcome cannot re-point or reopen the command.
    let second = outbox
        .record_ledger_commit(commit("tx-p2", 5, 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, c);
    assert!(matches!(
        outbox.schedule_retry(p, mvcc(), Utc::now()).await,
        Err(StorageError::IllegalTransition { .. })
    ));
    // A tx id that is not the command's is refused by mark_committed_tx.
    assert!(matches!(
        outbox.mark_committed_tx(p, commit("tx-f", 3, 0)).await,
        Err(StorageError::InvalidInput(_))
    ));
    assert_eq!(outbox.counts().unwrap().committed, 2);
    assert_integrity(&outbox);
}

#[tokio::test]
async fn projected_blocks_move_commands_to_projected_in_the_checkpoint_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (db, outbox) = open(dir.path(), OutboxOptions::default());
    let log = CheckpointLog::new(db.clone());
    let mut changes = outbox.subscribe();
    // c1 committed by the submitter first; c2 still SUBMITTED (the projector is first);
    // c3 a PENDING retry whose earlier tx id is in the block.
    let c1 = outbox.enqueue(cmd("c1", "w1")).await.unwrap().command.id;
    let c2 = outbox.enqueue(cmd("c2", "w2")).await.unwrap().command.id;
    let c3 = outbox.enqueue(cmd("c3", "w3")).await.unwrap().command.id;
    for (id, tx) in [(c1, "t1"), (c2, "t2"), (c3, "t3")] {
        outbox.mark_prepared(id, tx.into(), vec![1]).await.unwrap();
    }
    outbox.mark_submitted(c2).await.unwrap();
    outbox.mark_committed(c1, 0).await.unwrap();
    outbox
        .schedule_retry(c3, mvcc(), far_future())
        .await
        .unwrap();
    while changes.try_recv().is_ok() {}

    let valid = vec![
        commit("t1", 0, 0),
        commit("t2", 0, 1),
        commit("t3", 0, 2),
        commit("someone-elses", 0, 3),
    ];
    let out = outbox
        .record_projected_block("ch", checkpoint(0), valid.clone())
        .await
        .unwrap();
    assert!(matches!(out.checkpoint, AppendOutcome::Appended(_)));
    let ids: Vec<CommandId> = out.changed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![c1, c2, c3]);
    assert_eq!(log.last("ch").unwrap().unwrap().number, 0);
    for (i, id) in [c1, c2, c3].into_iter().enumerate() {
        let c = outbox.get(id).unwrap();
        assert_eq!(c.status, Status::Projected, "{c:#?}");
        assert_eq!(c.block_number, Some(0));
        assert_eq!(c.tx_index, Some(u32::try_from(i).unwrap()));
        assert!(c.projected_at.is_some() && c.committed_at.is_some());
        assert_eq!(c.result.as_ref().unwrap().status, Some(200));
        // Notified after the durable batch.
        assert_eq!(
            changes.try_recv().unwrap(),
            CommandChange {
                id,
                status: Status::Projected
            }
        );
    }
    assert!(due_ids(&outbox).is_empty());

    // Replay (a crash before the projector noted it): nothing more changes.
    let again = outbox
        .record_projected_block("ch", checkpoint(0), valid)
        .await
        .unwrap();
    assert!(matches!(again.checkpoint, AppendOutcome::AlreadyPresent(_)));
    assert!(again.changed.is_empty());
    // The submitter's late answer does not demote it.
    assert_eq!(
        outbox.mark_committed(c2, 0).await.unwrap().status,
        Status::Projected
    );
    assert!(outbox.mark_committed(c2, 1).await.is_err());

    let counts = outbox.counts().unwrap();
    assert_eq!(
        (counts.projected, counts.committed, counts.total()),
        (3, 0, 3)
    );
    let page = outbox.list_by_status(Status::Projected, None, 10).unwrap();
    assert_eq!(page.commands.len(), 3);
    assert_eq!("projected".parse::<Status>().unwrap(), Status::Projected);
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!(report.counts.projected, 3);

    // The checkpoint checks still apply: a gap refuses the whole batch.
    let gap = outbox
        .record_projected_block("ch", checkpoint(5), vec![])
        .await;
    assert!(
        matches!(gap, Err(StorageError::CheckpointRefused { .. })),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retention_purges_projected_and_committed_commands_with_their_txids() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OutboxOptions {
        idempotency_window: Duration::from_millis(1),
        committed_retention: Duration::from_millis(1),
        purge_chunk: 2,
        ..OutboxOptions::default()
    };
    let (_db, outbox) = open(dir.path(), opts);
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let id = outbox
            .enqueue(cmd(&format!("r{i}"), &format!("w{i}")))
            .await
            .unwrap()
            .command
            .id;
        outbox
            .mark_prepared(id, format!("old-{i}"), vec![1])
            .await
            .unwrap();
        outbox.schedule_retry(id, mvcc(), Utc::now()).await.unwrap();
        outbox
            .mark_prepared(id, format!("new-{i}"), vec![1])
            .await
            .unwrap();
        ids.push(id);
    }
    // 0..3 projected, 3 committed, 4 stays in flight.
    outbox.mark_committed(ids[3], 1).await.unwrap();
    let valid = (0..3u32)
        .map(|i| commit(&format!("new-{i}"), 0, i))
        .collect();
    outbox
        .record_projected_block("ch", checkpoint(0), valid)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = outbox.purge(Utc::now()).await.unwrap();
    assert_eq!(report.commands_removed, 4);
    assert_eq!(report.txids_removed, 8);
    for i in 0..4 {
        assert!(
            outbox
                .command_by_txid(&format!("old-{i}"))
                .unwrap()
                .is_none()
        );
        assert!(
            outbox
                .command_by_txid(&format!("new-{i}"))
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(outbox.command_by_txid("old-4").unwrap().unwrap().id, ids[4]);
    let counts = outbox.counts().unwrap();
    assert_eq!(
        (counts.projected, counts.committed, counts.total()),
        (0, 0, 1)
    );
    let integrity = outbox.verify_integrity().unwrap();
    assert!(integrity.is_ok(), "{:#?}", integrity.problems);
    assert_eq!(integrity.txids, 2);
}

#[test]
fn chaincode_results_are_bounded() {
    let big = vec![7u8; MAX_RESULT_BYTES + 10];
    let r = ChaincodeResult::new(Some(200), &big);
    assert_eq!(r.payload.len(), MAX_RESULT_BYTES);
    assert!(r.truncated);
    let small = ChaincodeResult::new(None, b"x");
    assert_eq!(
        (small.payload.as_slice(), small.truncated),
        (&b"x"[..], false)
    );
}
