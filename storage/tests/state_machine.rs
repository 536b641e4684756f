//! Property test of the outbox state machine against a model: random operation sequences;
//! legal transitions accepted, illegal ones refused, counts, partition order and the
//! one-in-flight-per-partition rule kept, integrity intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use gxd_storage::outbox::{CommandError, CommandId, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions, StorageError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue { req: u8, partition: u8, payload: u8 },
    Prepare(usize),
    Submit(usize),
    Commit(usize),
    Retry { pick: usize, future: bool },
    Fail(usize),
    Requeue(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, 0u8..3, 0u8..2).prop_map(|(req, partition, payload)| Op::Enqueue { req, partition, payload }),
        3 => any::<usize>().prop_map(Op::Prepare),
        2 => any::<usize>().prop_map(Op::Submit),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, future)| Op::Retry { pick, future }),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Requeue),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Conflict,
    Illegal,
    Busy,
}

#[derive(Default)]
struct Model {
    /// request → (command, partition, payload)
    idem: HashMap<u8, (CommandId, u8, u8)>,
    status: BTreeMap<CommandId, Status>,
    partition_of: HashMap<CommandId, u8>,
    /// queued commands per partition, in order
    queues: HashMap<u8, Vec<CommandId>>,
    ids: Vec<CommandId>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<CommandId> {
        (!self.ids.is_empty()).then(|| self.ids[i % self.ids.len()])
    }

    fn is_head(&self, id: CommandId) -> bool {
        let p = self.partition_of[&id];
        self.queues.get(&p).and_then(|q| q.first()) == Some(&id)
    }

    fn leave(&mut self, id: CommandId) {
        let p = self.partition_of[&id];
        if let Some(q) = self.queues.get_mut(&p) {
            q.retain(|x| *x != id);
        }
    }

    fn heads_pending(&self) -> Vec<CommandId> {
        let mut v: Vec<_> = self
            .queues
            .values()
            .filter_map(|q| q.first().copied())
            .filter(|id| self.status[id] == Status::Pending)
            .collect();
        v.sort();
        v
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

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    let mut m = Model::default();
    let mut txn = 0u64;
    for op in ops {
        match op {
            Op::Enqueue {
                req,
                partition,
                payload,
            } => {
                let r = outbox
                    .enqueue(NewCommand {
                        tenant: "t".into(),
                        command_type: "T".into(),
                        request_id: format!("r{req}"),
                        partition_key: format!("p{partition}"),
                        payload: vec![payload],
                    })
                    .await;
                match m.idem.get(&req).copied() {
                    Some((id, p, v)) if p == partition && v == payload => {
                        let o = r.unwrap();
                        assert!(!o.created);
                        assert_eq!(o.command.id, id);
                    }
                    Some(_) => assert!(matches!(r, Err(StorageError::Conflict { .. }))),
                    None => {
                        let o = r.unwrap();
                        assert!(o.created);
                        let id = o.command.id;
                        m.idem.insert(req, (id, partition, payload));
                        m.status.insert(id, Status::Pending);
                        m.partition_of.insert(id, partition);
                        m.queues.entry(partition).or_default().push(id);
                        m.ids.push(id);
                    }
                }
            }
            Op::Prepare(i) => {
                let Some(id) = m.pick(i) else { continue };
                txn += 1;
                let r = outbox.mark_prepared(id, format!("tx{txn}"), vec![]).await;
                let expect = match m.status[&id] {
                    Status::Pending if m.is_head(id) => Expect::Ok,
                    Status::Pending => Expect::Busy,
                    _ => Expect::Illegal,
                };
                assert_eq!(kind(&r), expect, "prepare {id}");
                if expect == Expect::Ok {
                    m.status.insert(id, Status::Prepared);
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
                    let p = m.partition_of[&id];
                    m.queues.entry(p).or_default().push(id);
                }
            }
        }

        // Statuses and counts agree with the model.
        for (id, s) in &m.status {
            assert_eq!(outbox.get(*id).unwrap().status, *s, "status of {id}");
        }
        let counts = outbox.counts().unwrap();
        for s in Status::ALL {
            let expected = m.status.values().filter(|x| **x == s).count() as u64;
            assert_eq!(counts.get(s), expected, "count of {s}");
        }
        // Due: exactly the PENDING heads, earliest due first; never a partition twice.
        let due = outbox
            .next_due(1000, Utc::now() + chrono::Duration::days(1))
            .unwrap();
        let mut due_ids: Vec<_> = due.iter().map(|c| c.id).collect();
        assert!(
            due.windows(2)
                .all(|w| (w[0].next_attempt_at, w[0].id) <= (w[1].next_attempt_at, w[1].id))
        );
        due_ids.sort();
        assert_eq!(due_ids, m.heads_pending());
        let in_flight_per_partition = m
            .queues
            .values()
            .map(|q| q.iter().filter(|id| m.status[*id].is_in_flight()).count());
        assert!(in_flight_per_partition.into_iter().all(|n| n <= 1));
    }
    let report = outbox.verify_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn outbox_follows_the_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
