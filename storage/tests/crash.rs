//! Kill -9 loop under load (harness = false: this binary is both the test and its child).
//!
//! The parent starts this same binary as a child (env `GXD_CRASH_CHILD_DIR`). The child
//! opens the outbox, enqueues from many tasks at once and drives commands through their
//! transitions, printing each acknowledgement on stdout **after** the call returned:
//! `ACK <command id> <request id> <payload sha256>`, and `BEGIN <id> <status>` / `DONE <id>
//! <status>` around each transition. The parent SIGKILLs it at a random moment (seeded;
//! the seed is printed), reopens the database and verifies:
//! - every acknowledged command is present and intact (request id, payload digest);
//! - every acknowledged transition is there (status = last DONE, or the BEGIN in flight);
//! - nothing is half-present (`verify_integrity`: every record has its index entries and
//!   every index entry its record, counters match);
//! - no request id has two commands, and re-enqueueing acknowledged request ids returns
//!   the same command without creating one (idempotency across restarts).
//!
//! `GXD_CRASH_ROUNDS` (default 100) and `GXD_CRASH_SEED` tune it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use gxd_storage::outbox::{CommandError, CommandId, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions, StorageError};
use sha2::{Digest, Sha256};

const TENANT: &str = "crash";

/// splitmix64: a seeded, dependency-free generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn digest(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

fn payload_for(request_id: &str, filler: usize) -> Vec<u8> {
    format!(
        "{{\"requestId\":\"{request_id}\",\"amount\":\"100\",\"memo\":\"{}\"}}",
        "x".repeat(filler)
    )
    .into_bytes()
}

/// The one test this binary holds, as test runners see it.
const TEST_NAME: &str = "kill9_loop";

fn main() {
    if let Ok(dir) = std::env::var("GXD_CRASH_CHILD_DIR") {
        child(&dir);
        return;
    }
    // Speak enough of libtest's command line for cargo test filters and cargo-nextest:
    // `--list [--format terse] [--ignored]` lists the test, a positional filter selects it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{TEST_NAME}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected = filters.is_empty()
        || filters.iter().any(|f| {
            if exact {
                *f == TEST_NAME
            } else {
                TEST_NAME.contains(f.as_str())
            }
        });
    if !selected || args.iter().any(|a| a == "--ignored") {
        println!("crash: 0 passed, 0 failed, 1 filtered out");
        return;
    }
    match parent() {
        Ok(()) => println!("crash: 1 passed, 0 failed"),
        Err(e) => {
            println!("crash test FAILED: {e}");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

// ---- child ---------------------------------------------------------------------------

fn child(dir: &str) {
    let round: u64 = std::env::var("GXD_CRASH_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = Db::open(dir, &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        println!("READY");
        let mut tasks = Vec::new();
        for task in 0..32u64 {
            let outbox = outbox.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(round * 1000 + task);
                for k in 0.. {
                    let request_id = format!("r{round}-t{task}-{k}");
                    let payload = payload_for(&request_id, rng.below(200) as usize);
                    let sum = digest(&payload);
                    let new = NewCommand {
                        tenant: TENANT.into(),
                        command_type: "TRANSFER_TOKENS".into(),
                        request_id: request_id.clone(),
                        partition_key: format!("w{}", rng.below(40)),
                        // Half the commands touch one or two more wallets (a transfer's
                        // payee): their queues must survive the kills as well.
                        extra_partition_keys: (0..rng.below(4).saturating_sub(1))
                            .map(|_| format!("w{}", rng.below(40)))
                            .collect(),
                        payload,
                    };
                    match outbox.enqueue(new).await {
                        Ok(o) => println!("ACK {} {request_id} {sum}", o.command.id),
                        Err(e) => panic!("enqueue failed: {e}"),
                    }
                }
            }));
        }
        // One driver moves due commands through the state machine, one call at a time.
        let driver = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut rng = Rng(round ^ 0xdead_beef);
                let mut txn = 0u64;
                // Recovery, as the submitter does it: commands left in flight by the
                // previous (killed) child are finished first.
                for status in [Status::Prepared, Status::Submitted] {
                    let page = outbox.list_by_status(status, None, 10_000).unwrap();
                    for c in page.commands {
                        let id = c.id;
                        txn += 1;
                        step(&outbox, id, Status::Committed, async {
                            outbox.mark_committed(id, txn).await
                        })
                        .await;
                    }
                }
                loop {
                    let due = outbox.next_due(8, Utc::now()).unwrap();
                    if due.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    for c in due {
                        let id = c.id;
                        txn += 1;
                        step(&outbox, id, Status::Prepared, async {
                            outbox
                                .mark_prepared(id, format!("tx{round}-{txn}"), vec![7; 64])
                                .await
                        })
                        .await;
                        match rng.below(10) {
                            0 => {
                                step(&outbox, id, Status::Pending, async {
                                    outbox.schedule_retry(id, err(), Utc::now()).await
                                })
                                .await;
                            }
                            1 => {
                                step(&outbox, id, Status::Failed, async {
                                    outbox.mark_failed(id, err()).await
                                })
                                .await;
                                step(&outbox, id, Status::Pending, async {
                                    outbox.requeue(id).await
                                })
                                .await;
                            }
                            _ => {
                                step(&outbox, id, Status::Submitted, async {
                                    outbox.mark_submitted(id).await
                                })
                                .await;
                                step(&outbox, id, Status::Committed, async {
                                    outbox.mark_committed(id, txn).await
                                })
                                .await;
                            }
                        }
                    }
                }
            })
        };
        for t in tasks {
            let _ = t.await;
        }
        let _ = driver.await;
    });
}

fn err() -> CommandError {
    CommandError {
        stage: "endorse".into(),
        code: "UNAVAILABLE".into(),
        message: "injected".into(),
    }
}

async fn step(
    _outbox: &Outbox,
    id: CommandId,
    to: Status,
    call: impl std::future::Future<Output = Result<gxd_storage::outbox::Command, StorageError>>,
) {
    println!("BEGIN {id} {to}");
    match call.await {
        Ok(c) => {
            assert_eq!(c.status, to);
            println!("DONE {id} {to}");
        }
        Err(e) => panic!("transition to {to} failed: {e}"),
    }
}

// ---- parent --------------------------------------------------------------------------

#[derive(Default)]
struct Figures {
    rounds: u64,
    acked: u64,
    verified: u64,
    durable_unacked: u64,
    transitions: u64,
    idempotent_retries: u64,
    lost: u64,
    duplicated: u64,
    killed_before_ready: u64,
}

struct Acked {
    id: CommandId,
    digest: String,
}

/// Per command: the last acknowledged status and a transition begun after it.
#[derive(Default, Clone, Copy)]
struct TransitionState {
    done: Option<Status>,
    begun: Option<Status>,
}

fn parent() -> Result<(), String> {
    let rounds: u64 = std::env::var("GXD_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("GXD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("crash test: {rounds} rounds, GXD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = Db::path_in(tmp.path());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let mut f = Figures::default();
    let mut acked: HashMap<String, Acked> = HashMap::new();
    let mut transitions: HashMap<CommandId, TransitionState> = HashMap::new();
    let started = Instant::now();

    for round in 0..rounds {
        let mut child = Process::new(&exe)
            .env("GXD_CRASH_CHILD_DIR", &dir)
            .env("GXD_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "READY" {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });

        // 15% of the rounds: kill at once, possibly during open/WAL recovery.
        if rng.below(100) < 15 {
            std::thread::sleep(Duration::from_millis(rng.below(30)));
            f.killed_before_ready += 1;
        } else {
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("round {round}: child never became ready"))?;
            if round == 0 {
                // Another process holds the database: a clear error, no hang.
                match Db::open(&dir, &DbOptions::default()) {
                    Err(StorageError::Locked { .. }) => {}
                    other => {
                        return Err(format!(
                            "expected Locked while the child runs, got {other:?}"
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1 + rng.below(80)));
        }
        child.kill().map_err(|e| format!("kill: {e}"))?;
        let status = child.wait().map_err(|e| format!("wait: {e}"))?;
        let lines = reader.join().map_err(|_| "reader panicked")?;
        if status.success() {
            return Err(format!(
                "round {round}: the child exited by itself: {status}"
            ));
        }

        // What the child acknowledged.
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["ACK", id, req, sum] => {
                    let id: CommandId = id.parse().map_err(|e| format!("{line}: {e}"))?;
                    acked.insert(
                        (*req).to_owned(),
                        Acked {
                            id,
                            digest: (*sum).to_owned(),
                        },
                    );
                    f.acked += 1;
                }
                ["BEGIN", id, to] | ["DONE", id, to] => {
                    let id: CommandId = id.parse().map_err(|e| format!("{line}: {e}"))?;
                    let to: Status = to.parse().map_err(|e| format!("{line}: {e}"))?;
                    let t = transitions.entry(id).or_default();
                    if parts[0] == "BEGIN" {
                        t.begun = Some(to);
                    } else {
                        t.done = Some(to);
                        t.begun = None;
                        f.transitions += 1;
                    }
                }
                _ => {} // READY, or a line cut by the kill
            }
        }

        rt.block_on(verify(
            &dir,
            round,
            &acked,
            &mut transitions,
            &mut rng,
            &mut f,
            round + 1 == rounds,
        ))?;
        f.rounds += 1;
        if f.lost > 0 || f.duplicated > 0 {
            break;
        }
    }

    println!(
        "crash figures: rounds={} killed_before_ready={} acked={} verified={} durable_but_unacked={} \
         transitions_acked={} idempotent_retries={} lost={} duplicated={} ({:.1}s)",
        f.rounds,
        f.killed_before_ready,
        f.acked,
        f.verified,
        f.durable_unacked,
        f.transitions,
        f.idempotent_retries,
        f.lost,
        f.duplicated,
        started.elapsed().as_secs_f64()
    );
    std::io::stdout().flush().ok();
    if f.lost > 0 || f.duplicated > 0 {
        return Err(format!("lost={} duplicated={}", f.lost, f.duplicated));
    }
    if f.acked == 0 {
        return Err("no command was acknowledged: the test tested nothing".into());
    }
    Ok(())
}

async fn verify(
    dir: &std::path::Path,
    round: u64,
    acked: &HashMap<String, Acked>,
    transitions: &mut HashMap<CommandId, TransitionState>,
    rng: &mut Rng,
    f: &mut Figures,
    last_round: bool,
) -> Result<(), String> {
    let db =
        Db::open(dir, &DbOptions::default()).map_err(|e| format!("round {round}: reopen: {e}"))?;
    let outbox = Outbox::new(db, OutboxOptions::default()).map_err(|e| e.to_string())?;

    let report = outbox.verify_integrity().map_err(|e| e.to_string())?;
    if !report.is_ok() {
        return Err(format!("round {round}: integrity: {:#?}", report.problems));
    }

    // Every command, once.
    let mut by_request: HashMap<String, CommandId> = HashMap::new();
    let mut statuses: HashMap<CommandId, Status> = HashMap::new();
    for status in Status::ALL {
        let mut cursor = None;
        loop {
            let page = outbox
                .list_by_status(status, cursor, 1000)
                .map_err(|e| e.to_string())?;
            for c in &page.commands {
                if by_request.insert(c.request_id.clone(), c.id).is_some() {
                    f.duplicated += 1;
                    println!("round {round}: request {} has two commands", c.request_id);
                }
                statuses.insert(c.id, c.status);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    f.durable_unacked = by_request.len() as u64 - acked.len().min(by_request.len()) as u64;

    // Every acknowledged command, intact.
    f.verified = 0;
    for (req, a) in acked {
        match outbox.get(a.id) {
            Ok(c) if c.request_id == *req && digest(&c.payload) == a.digest => f.verified += 1,
            Ok(c) => {
                f.lost += 1;
                println!("round {round}: command {} of {req} changed: {c:?}", a.id);
            }
            Err(e) => {
                f.lost += 1;
                println!(
                    "round {round}: acknowledged command {} of {req} is gone: {e}",
                    a.id
                );
            }
        }
    }

    // Every acknowledged transition.
    for (id, t) in transitions.iter_mut() {
        let Some(actual) = statuses.get(id).copied() else {
            f.lost += 1;
            println!("round {round}: transitioned command {id} is gone");
            continue;
        };
        let ok = t.done.is_none_or(|d| d == actual) || t.begun == Some(actual);
        if !ok {
            f.lost += 1;
            println!(
                "round {round}: command {id} is {actual}, acknowledged {:?} (begun {:?})",
                t.done, t.begun
            );
        }
        // From here on, what is on disk is the baseline.
        *t = TransitionState {
            done: Some(actual),
            begun: None,
        };
    }

    // Idempotency across the restart: a sample (all of them in the last round), re-enqueued
    // concurrently as clients retrying would.
    let requests: Vec<&String> = acked.keys().collect();
    let chosen: Vec<&String> = if last_round {
        requests.clone()
    } else {
        (0..requests.len().min(20))
            .map(|_| requests[rng.below(requests.len() as u64) as usize])
            .collect()
    };
    for chunk in chosen.chunks(512) {
        let mut set = tokio::task::JoinSet::new();
        for req in chunk {
            let a = &acked[*req];
            let c = outbox.get(a.id).map_err(|e| e.to_string())?;
            let outbox = outbox.clone();
            let expected = a.id;
            let req = (*req).clone();
            set.spawn(async move {
                let again = outbox
                    .enqueue(NewCommand {
                        tenant: TENANT.into(),
                        command_type: c.command_type,
                        request_id: req.clone(),
                        partition_key: c.partition_key,
                        extra_partition_keys: c.extra_partition_keys,
                        payload: c.payload,
                    })
                    .await;
                (req, expected, again)
            });
        }
        while let Some(joined) = set.join_next().await {
            let (req, expected, again) = joined.map_err(|e| e.to_string())?;
            let again = again.map_err(|e| format!("round {round}: re-enqueue {req}: {e}"))?;
            if again.created || again.command.id != expected {
                f.duplicated += 1;
                println!(
                    "round {round}: re-enqueue of {req} created {}",
                    again.command.id
                );
            }
            f.idempotent_retries += 1;
        }
    }
    let seen: HashSet<_> = by_request.values().collect();
    if seen.len() != by_request.len() {
        f.duplicated += 1;
    }
    Ok(())
}
