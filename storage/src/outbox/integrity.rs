//! The outbox consistency checker: every record against every index, under one snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{decode_command, decode_idempotency, decode_tx_index};
use super::{CommandId, Status, StatusCounts, cf, due_ms, keys};
use crate::db::{Cf, META, RawDb, cf_handle, decode_u64};
use crate::error::Result;

/// What [`super::Outbox::verify_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Command records.
    pub commands: u64,
    /// Counts per status, from the records.
    pub counts: StatusCounts,
    /// Partitions with queued commands.
    pub partitions: u64,
    /// Due-index entries.
    pub due: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Transaction ids in the tx index.
    pub txids: u64,
    /// Everything inconsistent (at most 100 listed), empty when all is well.
    pub problems: Vec<String>,
    /// Problems found, including those not listed.
    pub problem_count: u64,
}

impl IntegrityReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < 100 {
            self.problems.push(p);
        }
    }
}

struct Summary {
    status: Status,
    /// Every partition key, the first one first.
    partitions: Vec<String>,
    seq: u64,
    idem_key: Vec<u8>,
    digest: [u8; 32],
    due_ms: u64,
}

type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, RawDb>;

fn scan(
    raw: &RawDb,
    snapshot: &Snapshot<'_>,
    cf: Cf,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<()> {
    let mut it = snapshot.raw_iterator_cf(cf_handle(raw, cf)?);
    it.seek_to_first();
    while let Some((k, v)) = it.item() {
        each(k, v);
        it.next();
    }
    it.status()?;
    Ok(())
}

pub(super) fn verify(raw: &RawDb) -> Result<IntegrityReport> {
    let snapshot = raw.snapshot();
    let mut r = IntegrityReport::default();

    // Records.
    let mut commands: HashMap<CommandId, Summary> = HashMap::new();
    let mut decode_problems = Vec::new();
    scan(raw, &snapshot, cf::COMMANDS, |k, v| {
        match decode_command(k, v) {
            Ok(c) => {
                commands.insert(
                    c.id,
                    Summary {
                        status: c.status,
                        partitions: c.partition_keys().map(str::to_owned).collect(),
                        seq: c.queue_seq,
                        idem_key: keys::idempotency(&c.tenant, &c.request_id),
                        digest: c.payload_digest,
                        due_ms: due_ms(c.next_attempt_at),
                    },
                );
            }
            Err(e) => decode_problems.push(e.to_string()),
        }
    })?;
    for p in decode_problems {
        r.problem(p);
    }
    r.commands = commands.len() as u64;
    for s in commands.values() {
        *r.counts.slot(s.status) += 1;
    }

    // Counters.
    let meta = cf_handle(raw, META)?;
    for s in Status::ALL {
        let key = keys::meta_count(s);
        let stored = match snapshot.get_pinned_cf(meta, &key)? {
            Some(b) => decode_u64("meta", &key, &b).unwrap_or(u64::MAX),
            None => 0,
        };
        if stored != r.counts.get(s) {
            r.problem(format!(
                "counter of {s} is {stored}, but {} records have it",
                r.counts.get(s)
            ));
        }
    }
    let next_seq = match snapshot.get_pinned_cf(meta, keys::META_NEXT_SEQ)? {
        Some(b) => decode_u64("meta", keys::META_NEXT_SEQ, &b).unwrap_or(0),
        None => 1,
    };

    // Status index.
    let mut status_entries: HashSet<(Status, CommandId)> = HashSet::new();
    let mut problems = Vec::new();
    scan(raw, &snapshot, cf::STATUS, |k, _| {
        let parsed = keys::status_id(k)
            .ok()
            .and_then(|id| Status::from_code(k[0]).map(|s| (s, id)));
        match parsed {
            Some((s, id)) => {
                match commands.get(&id) {
                    None => problems.push(format!("status index {s}/{id}: no such command")),
                    Some(c) if c.status != s => {
                        problems.push(format!("status index {s}/{id}: command is {}", c.status))
                    }
                    Some(_) => {}
                }
                status_entries.insert((s, id));
            }
            None => problems.push(format!("status index: bad key {}", hex::encode(k))),
        }
    })?;
    for (id, c) in &commands {
        if !status_entries.contains(&(c.status, *id)) {
            problems.push(format!(
                "command {id} ({}) missing from the status index",
                c.status
            ));
        }
    }

    // Partition queues: every queued command in each of its queues at its one sequence
    // number, nothing else in them.
    let mut queues: BTreeMap<String, Vec<(u64, CommandId)>> = BTreeMap::new();
    let mut entries_of: HashMap<CommandId, u64> = HashMap::new();
    scan(raw, &snapshot, cf::PARTITION_QUEUE, |k, v| {
        let Ok((partition, seq)) = keys::split_partition_queue(k) else {
            problems.push(format!("partition queue: bad key {}", hex::encode(k)));
            return;
        };
        let Some(id) = CommandId::from_slice(v) else {
            problems.push(format!("partition queue {partition:?}/{seq}: bad value"));
            return;
        };
        match commands.get(&id) {
            None => problems.push(format!(
                "partition queue {partition:?}/{seq}: no command {id}"
            )),
            Some(c) => {
                if !c.status.is_queued() {
                    problems.push(format!(
                        "partition queue {partition:?}/{seq}: {id} is {}",
                        c.status
                    ));
                }
                if !c.partitions.contains(&partition) || c.seq != seq {
                    problems.push(format!(
                        "partition queue {partition:?}/{seq}: command {id} says {:?}/{}",
                        c.partitions, c.seq
                    ));
                }
            }
        }
        if seq >= next_seq {
            problems.push(format!(
                "partition queue {partition:?}/{seq}: not below next_seq {next_seq}"
            ));
        }
        *entries_of.entry(id).or_insert(0) += 1;
        queues.entry(partition).or_default().push((seq, id));
    })?;
    let in_queue: HashSet<(&str, CommandId)> = queues
        .iter()
        .flat_map(|(p, q)| q.iter().map(move |(_, id)| (p.as_str(), *id)))
        .collect();
    for (id, c) in &commands {
        if !c.status.is_queued() {
            continue;
        }
        for p in &c.partitions {
            if !in_queue.contains(&(p.as_str(), *id)) {
                problems.push(format!(
                    "queued command {id} ({}) missing from its partition queue {p:?}",
                    c.status
                ));
            }
        }
        let n = entries_of.get(id).copied().unwrap_or(0);
        if n > c.partitions.len() as u64 {
            problems.push(format!(
                "queued command {id} has {n} queue entries for {} partition keys",
                c.partitions.len()
            ));
        }
    }
    r.partitions = queues.len() as u64;

    // Due index: exactly the PENDING commands that head every one of their queues; only
    // such a command may be in flight.
    let heads: HashMap<&str, CommandId> = queues
        .iter()
        .filter_map(|(p, q)| q.first().map(|(_, id)| (p.as_str(), *id)))
        .collect();
    let mut expected_due: HashSet<(u64, CommandId)> = HashSet::new();
    for (id, c) in &commands {
        if !c.status.is_queued() {
            continue;
        }
        let blocked_in = c
            .partitions
            .iter()
            .find(|p| heads.get(p.as_str()) != Some(id));
        match blocked_in {
            None if c.status == Status::Pending => {
                expected_due.insert((c.due_ms, *id));
            }
            None => {}
            Some(p) if c.status.is_in_flight() => problems.push(format!(
                "partition {p:?}: {id} is {} behind the head {:?}",
                c.status,
                heads.get(p.as_str())
            )),
            Some(_) => {}
        }
    }
    let mut due_entries: HashSet<(u64, CommandId)> = HashSet::new();
    scan(raw, &snapshot, cf::DUE, |k, _| match keys::split_due(k) {
        Ok(entry) => {
            if !expected_due.contains(&entry) {
                problems.push(format!(
                    "due index {}/{}: not a PENDING command heading all its queues",
                    entry.0, entry.1
                ));
            }
            due_entries.insert(entry);
        }
        Err(e) => problems.push(e.to_string()),
    })?;
    for (ms, id) in &expected_due {
        if !due_entries.contains(&(*ms, *id)) {
            problems.push(format!(
                "PENDING head {id} (due {ms}) missing from the due index"
            ));
        }
    }
    r.due = due_entries.len() as u64;

    // Idempotency.
    let mut idem: HashMap<Vec<u8>, (CommandId, i64)> = HashMap::new();
    scan(
        raw,
        &snapshot,
        cf::IDEMPOTENCY,
        |k, v| match decode_idempotency(k, v) {
            Ok(e) => {
                match commands.get(&e.command_id) {
                    None => problems.push(format!(
                        "idempotency key {}: no command {}",
                        hex::encode(k),
                        e.command_id
                    )),
                    Some(c) => {
                        if c.idem_key != k {
                            problems.push(format!(
                                "idempotency key {}: command {} has another request id",
                                hex::encode(k),
                                e.command_id
                            ));
                        }
                        if c.digest != e.payload_digest {
                            problems.push(format!(
                                "idempotency key {}: digest differs from command {}",
                                hex::encode(k),
                                e.command_id
                            ));
                        }
                    }
                }
                idem.insert(k.to_vec(), (e.command_id, e.created_at_ms));
            }
            Err(e) => problems.push(e.to_string()),
        },
    )?;
    for (id, c) in &commands {
        let pointed = idem.get(&c.idem_key).map(|(cid, _)| *cid);
        if pointed != Some(*id) && !c.status.is_committed() {
            problems.push(format!(
                "live command {id} ({}) has no idempotency key (key points to {pointed:?})",
                c.status
            ));
        }
    }
    let mut expiry_seen = 0u64;
    scan(
        raw,
        &snapshot,
        cf::IDEM_EXPIRY,
        |k, _| match keys::split_idem_expiry(k) {
            Ok((created, ikey)) => {
                expiry_seen += 1;
                match idem.get(ikey) {
                    Some((_, c)) if u64::try_from(*c).unwrap_or(0) == created => {}
                    _ => problems.push(format!(
                        "idempotency expiry {}: no matching key",
                        hex::encode(k)
                    )),
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
    )?;
    if expiry_seen != idem.len() as u64 {
        problems.push(format!(
            "{} idempotency keys but {expiry_seen} expiry entries",
            idem.len()
        ));
    }
    r.idempotency_keys = idem.len() as u64;

    // Transaction-id index: both sides agree and point to existing commands.
    let mut by_txid: HashMap<String, CommandId> = HashMap::new();
    scan(raw, &snapshot, cf::TXIDS, |k, v| {
        match decode_tx_index(k, v) {
            Ok(id) => {
                if !commands.contains_key(&id) {
                    problems.push(format!("txid index {}: no command {id}", hex::encode(k)));
                }
                match String::from_utf8(k.to_vec()) {
                    Ok(t) => {
                        by_txid.insert(t, id);
                    }
                    Err(_) => problems.push(format!("txid index {}: not UTF-8", hex::encode(k))),
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    })?;
    let mut reverse = 0u64;
    scan(
        raw,
        &snapshot,
        cf::COMMAND_TXIDS,
        |k, _| match keys::split_command_txid(k) {
            Ok((id, txid)) => {
                reverse += 1;
                if by_txid.get(&txid) != Some(&id) {
                    problems.push(format!(
                        "command txid {id}/{txid}: the txid index does not point back"
                    ));
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
    )?;
    if reverse != by_txid.len() as u64 {
        problems.push(format!(
            "{} txid index entries but {reverse} command-txid entries",
            by_txid.len()
        ));
    }
    r.txids = by_txid.len() as u64;

    for p in problems {
        r.problem(p);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::{NewCommand, Outbox, OutboxOptions};
    use super::*;
    use crate::db::{Db, DbOptions};

    fn new(request_id: &str, first: &str, extras: &[&str]) -> NewCommand {
        NewCommand {
            tenant: "t".into(),
            command_type: "T".into(),
            request_id: request_id.into(),
            partition_key: first.into(),
            extra_partition_keys: extras.iter().map(|k| (*k).to_owned()).collect(),
            payload: b"{}".to_vec(),
        }
    }

    /// Two commands sharing wallet `m`: `a` (keys a, m) heads both its queues and is due;
    /// `c` (keys c, m) is behind it on `m`, not due.
    async fn two_on_one_payee(dir: &std::path::Path) -> (Db, Outbox, CommandId, CommandId) {
        let db = Db::open(Db::path_in(dir), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
        let a = outbox
            .enqueue(new("ra", "a", &["m"]))
            .await
            .unwrap()
            .command;
        let c = outbox
            .enqueue(new("rc", "c", &["m"]))
            .await
            .unwrap()
            .command;
        assert!(outbox.verify_integrity().unwrap().is_ok());
        (db, outbox, a.id, c.id)
    }

    fn problems(outbox: &Outbox) -> Vec<String> {
        let r = outbox.verify_integrity().unwrap();
        assert_eq!(r.problem_count as usize, r.problems.len());
        r.problems
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_command_missing_from_one_of_its_queues_is_reported() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db, outbox, _a, c) = two_on_one_payee(dir.path()).await;
            let seq = outbox.get(c).unwrap().queue_seq;
            let raw = db.raw().unwrap();
            raw.delete_cf(
                cf_handle(&raw, cf::PARTITION_QUEUE).unwrap(),
                keys::partition_queue("m", seq),
            )
            .unwrap();
            let p = problems(&outbox);
            assert!(
                p.iter()
                    .any(|p| p.contains(&format!("{c}")) && p.contains("queue \"m\"")),
                "{p:#?}"
            );
            assert_eq!(p.len(), 1, "{p:#?}");
        });
    }

    #[test]
    fn a_command_due_behind_another_on_a_shared_key_is_reported() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db, outbox, _a, c) = two_on_one_payee(dir.path()).await;
            // `c` heads its own queue `c` but not `m`: it must not be due.
            let at = due_ms(outbox.get(c).unwrap().next_attempt_at);
            let raw = db.raw().unwrap();
            raw.put_cf(cf_handle(&raw, cf::DUE).unwrap(), keys::due(at, c), [])
                .unwrap();
            let p = problems(&outbox);
            assert!(
                p.iter().any(|p| p.contains(&format!("{c}"))
                    && p.contains("not a PENDING command heading all its queues")),
                "{p:#?}"
            );
        });
    }

    #[test]
    fn an_entry_under_a_key_the_command_does_not_have_is_reported() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db, outbox, a, _c) = two_on_one_payee(dir.path()).await;
            let seq = outbox.get(a).unwrap().queue_seq;
            let raw = db.raw().unwrap();
            raw.put_cf(
                cf_handle(&raw, cf::PARTITION_QUEUE).unwrap(),
                keys::partition_queue("z", seq),
                a.to_bytes(),
            )
            .unwrap();
            let p = problems(&outbox);
            assert!(
                p.iter()
                    .any(|p| p.contains("partition queue \"z\"") && p.contains(&format!("{a}"))),
                "{p:#?}"
            );
        });
    }

    #[test]
    fn a_command_in_flight_behind_another_is_reported() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (db, outbox, _a, c) = two_on_one_payee(dir.path()).await;
            // Forge `c` PREPARED (record and status index) while `a` heads `m`.
            let mut cmd = outbox.get(c).unwrap();
            let raw = db.raw().unwrap();
            cmd.status = Status::Prepared;
            raw.put_cf(
                cf_handle(&raw, cf::COMMANDS).unwrap(),
                keys::command(c),
                super::super::record::encode_command(&cmd),
            )
            .unwrap();
            let status = cf_handle(&raw, cf::STATUS).unwrap();
            raw.delete_cf(status, keys::status(Status::Pending, c))
                .unwrap();
            raw.put_cf(status, keys::status(Status::Prepared, c), [])
                .unwrap();
            let p = problems(&outbox);
            assert!(
                p.iter().any(|p| p.contains("partition \"m\"")
                    && p.contains(&format!("{c} is PREPARED behind the head"))),
                "{p:#?}"
            );
        });
    }
}
