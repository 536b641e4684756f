//! Property test of the outbox state machine against a model: random operation sequences
//! over commands with one to three partition keys (wallets); legal transitions accepted,
//! illegal ones refused, counts kept, and the multi-key partition rules:
//! - due = exactly the PENDING commands heading **every** one of their queues;
//! - never two commands in flight on one key, and only a command heading all its queues is
//!   in flight;
//! - no deadlock: while anything is queued, some command heads all its queues;
//! - no starvation and per-key acceptance order: draining the outbox at the end commits
//!   every queued command, each key's commands in the order of that key's queue;
//! - integrity intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use gxd_storage::outbox::{
    CommandError, CommandId, LedgerCommit, NewCommand, Outbox, OutboxOptions, Status,
};
use gxd_storage::{Db, DbOptions, StorageError};
use proptest::prelude::*;

/// Wallets the commands touch.
const KEYS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    /// `keys[0]` is the first partition key, the rest the extras (duplicates allowed: the
    /// outbox drops them).
    Enqueue {
        req: u8,
        keys: Vec<u8>,
        payload: u8,
    },
    Prepare(usize),
    Submit(usize),
    Commit(usize),
    Retry {
        pick: usize,
        future: bool,
    },
    Fail(usize),
    Requeue(usize),
    /// The ledger reports the first tx id a command ever used as VALID (a late commit).
    LateCommit(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..14, proptest::collection::vec(0u8..KEYS, 1..4), 0u8..2)
            .prop_map(|(req, keys, payload)| Op::Enqueue { req, keys, payload }),
        4 => any::<usize>().prop_map(Op::Prepare),
        2 => any::<usize>().prop_map(Op::Submit),
        3 => any::<usize>().prop_map(Op::Commit),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, future)| Op::Retry { pick, future }),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Requeue),
        1 => any::<usize>().prop_map(Op::LateCommit),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Conflict,
    Illegal,
    Busy,
}

/// What a request id was first used for: (command, first key, extra keys, payload).
type Original = (CommandId, u8, BTreeSet<u8>, u8);

/// The reference: plain vectors, no indexes.
#[derive(Default)]
struct Model {
    idem: HashMap<u8, Original>,
    status: BTreeMap<CommandId, Status>,
    /// Every key of a command (first and extras, distinct).
    keys_of: HashMap<CommandId, BTreeSet<u8>>,
    /// Queued commands per key, in acceptance (or requeue) order.
    queues: BTreeMap<u8, Vec<CommandId>>,
    /// Tx ids each command used, in order.
    txids: HashMap<CommandId, Vec<String>>,
    ids: Vec<CommandId>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<CommandId> {
        (!self.ids.is_empty()).then(|| self.ids[i % self.ids.len()])
    }

    /// Heads every one of its queues.
    fn heads_all(&self, id: CommandId) -> bool {
        self.keys_of[&id]
            .iter()
            .all(|k| self.queues.get(k).and_then(|q| q.first()) == Some(&id))
    }

    fn join(&mut self, id: CommandId) {
        for k in &self.keys_of[&id] {
            self.queues.entry(*k).or_default().push(id);
        }
    }

    fn leave(&mut self, id: CommandId) {
        for q in self.queues.values_mut() {
            q.retain(|x| *x != id);
        }
    }

    fn queued(&self) -> BTreeSet<CommandId> {
        self.queues.values().flatten().copied().collect()
    }

    fn due(&self) -> Vec<CommandId> {
        self.queued()
            .into_iter()
            .filter(|id| self.status[id] == Status::Pending && self.heads_all(*id))
            .collect()
    }
}

fn kind(r: &Result<gxd_storage::outbox::Command, StorageError>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(StorageError::Conflict { .. }) => Expect::Conflict,
        Err(StorageError::IllegalTransition { .. }) => Expect::Illegal,
        Err(StorageError::PartitionBusy { .. }) => Expect::Busy,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn error() -> CommandError {
    CommandError {
        stage: "endorse".into(),
        code: "X".into(),
        message: "m".into(),
    }
}

fn key(k: u8) -> String {
    format!("w{k}")
}

/// Checks the outbox against the model after each operation.
fn check(outbox: &Outbox, m: &Model) {
    for (id, s) in &m.status {
        assert_eq!(outbox.get(*id).unwrap().status, *s, "status of {id}");
    }
    let counts = outbox.counts().unwrap();
    for s in Status::ALL {
        let expected = m.status.values().filter(|x| **x == s).count() as u64;
        assert_eq!(counts.get(s), expected, "count of {s}");
    }
    // Due: exactly the PENDING commands heading all their queues, earliest due first.
    let due = outbox
        .next_due(1000, Utc::now() + chrono::Duration::days(1))
        .unwrap();
    assert!(
        due.windows(2)
            .all(|w| (w[0].next_attempt_at, w[0].id) <= (w[1].next_attempt_at, w[1].id))
    );
    let mut due_ids: Vec<_> = due.iter().map(|c| c.id).collect();
    due_ids.sort();
    assert_eq!(due_ids, m.due(), "due commands");
    // In flight: at most one per key, and only a command heading all its queues.
    for (k, q) in &m.queues {
        let in_flight: Vec<_> = q.iter().filter(|id| m.status[*id].is_in_flight()).collect();
        assert!(in_flight.len() <= 1, "key {k}: {in_flight:?} in flight");
        for id in in_flight {
            assert!(
                m.heads_all(*id),
                "{id} in flight without heading its queues"
            );
        }
    }
    // No deadlock: something queued ⇒ some command heads all its queues (due, waiting for
    // its retry time, or in flight).
    let queued = m.queued();
    if !queued.is_empty() {
        assert!(
            queued.iter().any(|id| m.heads_all(*id)),
            "queued commands but none heads all its queues: {:?}",
            m.queues
        );
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    let mut m = Model::default();
    let mut txn = 0u64;
    for op in ops {
        match op {
            Op::Enqueue { req, keys, payload } => {
                let first = keys[0];
                let extras: BTreeSet<u8> =
                    keys[1..].iter().copied().filter(|k| *k != first).collect();
                let r = outbox
                    .enqueue(NewCommand {
                        tenant: "t".into(),
                        command_type: "T".into(),
                        request_id: format!("r{req}"),
                        partition_key: key(first),
                        extra_partition_keys: keys[1..].iter().rev().map(|k| key(*k)).collect(),
                        payload: vec![payload],
                    })
                    .await;
                match m.idem.get(&req).cloned() {
                    // A repeat: the same first key, key set and payload — or an original
                    // without extra keys (as every command accepted before they existed)
                    // with the same first key and payload.
                    Some((id, f, x, v))
                        if f == first && v == payload && (x == extras || x.is_empty()) =>
                    {
                        let o = r.unwrap();
                        assert!(!o.created);
                        assert_eq!(o.command.id, id);
                    }
                    Some(_) => assert!(matches!(r, Err(StorageError::Conflict { .. })), "{r:?}"),
                    None => {
                        let o = r.unwrap();
                        assert!(o.created);
                        let id = o.command.id;
                        let stored: Vec<String> = extras.iter().map(|k| key(*k)).collect();
                        assert_eq!(o.command.extra_partition_keys, stored, "normalized extras");
                        m.idem.insert(req, (id, first, extras.clone(), payload));
                        m.status.insert(id, Status::Pending);
                        let mut all = extras;
                        all.insert(first);
                        m.keys_of.insert(id, all);
                        m.join(id);
                        m.ids.push(id);
                    }
                }
            }
            Op::Prepare(i) => {
                let Some(id) = m.pick(i) else { continue };
                txn += 1;
                let txid = format!("tx{txn}");
                let r = outbox.mark_prepared(id, txid.clone(), vec![]).await;
                let expect = match m.status[&id] {
                    Status::Pending if m.heads_all(id) => Expect::Ok,
                    Status::Pending => Expect::Busy,
                    _ => Expect::Illegal,
                };
                assert_eq!(kind(&r), expect, "prepare {id}");
                if expect == Expect::Ok {
                    m.status.insert(id, Status::Prepared);
                    m.txids.entry(id).or_default().push(txid);
                }
            }
            Op::Submit(i) => {
                let Some(id) = m.pick(i) else { continue };
                let r = outbox.mark_submitted(id).await;
                let expect = match m.status[&id] {
                    Status::Prepared | Status::Submitted => Expect::Ok,
                    _ => Expect::Illegal,
                };
                assert_eq!(kind(&r), expect, "submit {id}");
                if expect == Expect::Ok {
                    m.status.insert(id, Status::Submitted);
                }
            }
            Op::Commit(i) => {
                let Some(id) = m.pick(i) else { continue };
                let r = outbox.mark_committed(id, 1).await;
                let before = m.status[&id];
                let expect = match before {
                    Status::Prepared | Status::Submitted | Status::Committed => Expect::Ok,
                    _ => Expect::Illegal,
                };
                // A command committed by a late commit has another tx id's block: refused
                // only if the block differs, and late commits here use block 7.
                let expect = if before == Status::Committed
                    && outbox.get(id).unwrap().block_number != Some(1)
                {
                    Expect::Illegal
                } else {
                    expect
                };
                assert_eq!(kind(&r), expect, "commit {id}");
                if expect == Expect::Ok && before != Status::Committed {
                    m.leave(id);
                    m.status.insert(id, Status::Committed);
                }
            }
            Op::Retry { pick, future } => {
                let Some(id) = m.pick(pick) else { continue };
                let at = if future {
                    Utc::now() + chrono::Duration::hours(1)
                } else {
                    Utc::now() - chrono::Duration::seconds(1)
                };
                let r = outbox.schedule_retry(id, error(), at).await;
                let expect = if m.status[&id].is_queued() {
                    Expect::Ok
                } else {
                    Expect::Illegal
                };
                assert_eq!(kind(&r), expect, "retry {id}");
                if expect == Expect::Ok {
                    m.status.insert(id, Status::Pending);
                }
            }
            Op::Fail(i) => {
                let Some(id) = m.pick(i) else { continue };
                let r = outbox.mark_failed(id, error()).await;
                let expect = if m.status[&id].is_queued() {
                    Expect::Ok
                } else {
                    Expect::Illegal
                };
                assert_eq!(kind(&r), expect, "fail {id}");
                if expect == Expect::Ok {
                    m.leave(id);
                    m.status.insert(id, Status::Failed);
                }
            }
            Op::Requeue(i) => {
                let Some(id) = m.pick(i) else { continue };
                let r = outbox.requeue(id).await;
                let expect = if m.status[&id] == Status::Failed {
                    Expect::Ok
                } else {
                    Expect::Illegal
                };
                assert_eq!(kind(&r), expect, "requeue {id}");
                if expect == Expect::Ok {
                    m.status.insert(id, Status::Pending);
                    m.join(id);
                }
            }
            Op::LateCommit(i) => {
                // Only commands that used a tx id; the first one (an earlier attempt's for
                // a retried, failed or requeued command: it may sit anywhere in its queues).
                let used: Vec<CommandId> = m
                    .ids
                    .iter()
                    .copied()
                    .filter(|id| m.txids.contains_key(id))
                    .collect();
                if used.is_empty() {
                    continue;
                }
                let id = used[i % used.len()];
                let txid = m.txids[&id][0].clone();
                let r = outbox
                    .mark_committed_tx(
                        id,
                        LedgerCommit {
                            txid,
                            block_number: 7,
                            tx_index: Some(0),
                            result: None,
                        },
                    )
                    .await;
                let before = m.status[&id];
                // Already committed: with the same tx id in another block it is refused;
                // otherwise it stays as it is.
                let c = outbox.get(id).unwrap();
                let expect = if before == Status::Committed
                    && c.txid.as_deref() == Some(m.txids[&id][0].as_str())
                    && c.block_number != Some(7)
                {
                    Expect::Illegal
                } else {
                    Expect::Ok
                };
                assert_eq!(kind(&r), expect, "late commit {id}: {r:?}");
                if expect == Expect::Ok && before != Status::Committed {
                    m.leave(id);
                    m.status.insert(id, Status::Committed);
                }
            }
        }
        check(&outbox, &m);
    }
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);

    // Drain: as a submitter would, take what is due and commit it, until nothing is queued.
    // Every queued command gets there (no starvation), within one round per command (no
    // deadlock), and each key sees its commands commit in its queue's order.
    let expected_order = m.queues.clone();
    let queued = m.queued().len();
    let mut committed_per_key: BTreeMap<u8, Vec<CommandId>> = BTreeMap::new();
    let far = Utc::now() + chrono::Duration::days(2);
    // In-flight commands first (a restart's resolution).
    let mut rounds = 0;
    while !m.queued().is_empty() {
        rounds += 1;
        assert!(
            rounds <= queued + 1,
            "drain does not progress: {:?}",
            m.queues
        );
        let in_flight: Vec<CommandId> = m
            .queued()
            .into_iter()
            .filter(|id| m.status[id].is_in_flight())
            .collect();
        let due: Vec<CommandId> = outbox
            .next_due(1000, far)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert!(
            !(in_flight.is_empty() && due.is_empty()),
            "deadlock: {:?}",
            m.queues
        );
        for id in in_flight.into_iter().chain(due) {
            if m.status[&id] == Status::Pending {
                txn += 1;
                outbox
                    .mark_prepared(id, format!("tx{txn}"), vec![])
                    .await
                    .unwrap();
            }
            let c = outbox.mark_committed(id, 100 + txn).await.unwrap();
            assert_eq!(c.status, Status::Committed);
            for k in &m.keys_of[&id] {
                committed_per_key.entry(*k).or_default().push(id);
            }
            m.leave(id);
            m.status.insert(id, Status::Committed);
        }
        check(&outbox, &m);
    }
    let expected_order: BTreeMap<u8, Vec<CommandId>> = expected_order
        .into_iter()
        .filter(|(_, q)| !q.is_empty())
        .collect();
    assert_eq!(committed_per_key, expected_order, "per-key order");
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn outbox_follows_the_model(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
