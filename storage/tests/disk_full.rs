//! Disk full / I/O error on write (issue #3): "the write fails with an error the API can
//! turn into a 503, and nothing is half-written".
//!
//! # What is simulated, and why this way
//! Mounting a small tmpfs needs privileges the test environment may not have, so a full
//! disk is simulated with `RLIMIT_FSIZE` in a child process: once a file would grow past
//! the limit, `write(2)` writes what fits (a short write) and then fails with `EFBIG`
//! ("File too large") — to RocksDB this is the same as `ENOSPC`: an I/O error in the middle
//! of appending a WAL record, leaving a torn record at the end of the WAL. The kernel also
//! sends `SIGXFSZ` (default action: kill); the child blocks that signal in the thread that
//! starts everything else (the block is inherited by the runtime, writer and RocksDB
//! threads), so the error reaches RocksDB as a plain `EFBIG`.
//!
//! The limit is lowered only **after** the database is open (the MANIFEST and OPTIONS files
//! written at open stay under no limit); then the fresh WAL fails when it reaches it.
//!
//! # The test
//! This test binary re-executes itself as the child (`current_exe()` with `--exact <this
//! test> --nocapture` and env `GXD_DISK_FULL_CHILD_DIR`). The child opens the outbox,
//! lowers the limit, enqueues one by one and then from many tasks at once until enqueues
//! fail, and reports on **stderr** (libtest owns stdout): `ACK <command id> <request id>`
//! after each successful enqueue, `ERR <request id> <ErrorKind> <message>` after each failed
//! one. It then checks that more writes (enqueues and a transition) keep failing promptly,
//! that `Db::is_writable()` is false, and exits normally. The parent asserts:
//! - the child exited 0 (no panic, no abort, no SIGXFSZ), with ACKs and ERRs, every ERR of
//!   kind `ErrorKind::Unavailable` (the API's 503), and one of them really `EFBIG`;
//! - after reopening the database without a limit ("space is back"): `verify_integrity`
//!   finds nothing inconsistent, every ACKed command is there and intact, every failed
//!   request id is absent or a complete command with the payload it was sent with, and the
//!   failed transition left its command PENDING;
//! - new enqueues succeed, idempotent repeats of ACKed request ids return the original
//!   commands, and the outbox is still consistent afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gxd_storage::outbox::{CommandId, NewCommand, Outbox, OutboxOptions, Status};
use gxd_storage::{Db, DbOptions, ErrorKind};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

const TENANT: &str = "disk-full";
const TEST_NAME: &str = "a_full_disk_fails_writes_cleanly_and_loses_nothing";
const CHILD_ENV: &str = "GXD_DISK_FULL_CHILD_DIR";
/// Set (to anything) for a child that exits without closing the database, as a crash would.
const ABANDON_ENV: &str = "GXD_DISK_FULL_ABANDON";
/// Largest file the child may write once the database is open.
const FILE_SIZE_LIMIT: u64 = 1 << 20;
/// Enqueues done one by one before the concurrent phase.
const SEQUENTIAL: u64 = 100;
/// Concurrent enqueuing tasks.
const TASKS: u64 = 16;
/// Bound on enqueue attempts, so a limit that never bites fails the test instead of
/// filling the disk.
const MAX_ATTEMPTS: u64 = 200_000;
/// Writes tried after the failure, each of which must fail too.
const AFTER_FAILURE: u64 = 20;
/// How long the child may run.
const CHILD_DEADLINE: Duration = Duration::from_secs(180);
/// How long one call may take in the child before it counts as hung.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// The payload of a request id: deterministic, so the parent can check it, and of varying
/// length, so the failing write lands at different places in the WAL.
fn payload_for(request_id: &str, n: u64) -> Vec<u8> {
    format!(
        "{{\"requestId\":\"{request_id}\",\"amount\":\"100\",\"memo\":\"{}\"}}",
        "m".repeat((n * 37 % 400) as usize)
    )
    .into_bytes()
}

fn new_command(request_id: &str, partition: &str, n: u64) -> NewCommand {
    NewCommand {
        tenant: TENANT.into(),
        command_type: "TRANSFER_TOKENS".into(),
        request_id: request_id.to_owned(),
        partition_key: partition.to_owned(),
        payload: payload_for(request_id, n),
    }
}

/// The `n` encoded in a request id (`seq-<n>`, `t<task>-<n>`, `after-<n>`, ...).
fn number_of(request_id: &str) -> u64 {
    request_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_loses_nothing() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir), std::env::var_os(ABANDON_ENV).is_some());
        return;
    }
    // The child closes the database after the failure (RocksDB then truncates the WAL to
    // its last whole record) ...
    parent(false);
    // ... or exits without closing it, as a crash would: the torn record the failed write
    // left at the end of the WAL is still there when the database is reopened.
    parent(true);
}

// ---- child ---------------------------------------------------------------------------

fn child(dir: &Path, abandon: bool) {
    // Block SIGXFSZ before any other thread exists: threads inherit the mask, and a blocked
    // SIGXFSZ stays pending instead of killing the process, so write(2) just fails EFBIG.
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&xfsz), None).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = Db::open(Db::path_in(dir), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
        let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
        setrlimit(Resource::RLIMIT_FSIZE, FILE_SIZE_LIMIT, hard).unwrap();
        assert!(db.is_writable());

        let attempts = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let enqueue = {
            let outbox = outbox.clone();
            let attempts = Arc::clone(&attempts);
            let failures = Arc::clone(&failures);
            move |request_id: String, partition: String, n: u64| {
                let outbox = outbox.clone();
                let attempts = Arc::clone(&attempts);
                let failures = Arc::clone(&failures);
                async move {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let call = outbox.enqueue(new_command(&request_id, &partition, n));
                    match tokio::time::timeout(CALL_DEADLINE, call).await {
                        Ok(Ok(o)) => {
                            assert!(o.created, "{request_id} was not new");
                            eprintln!("ACK {} {request_id}", o.command.id);
                            true
                        }
                        Ok(Err(e)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            eprintln!("ERR {request_id} {:?} {e}", e.kind());
                            false
                        }
                        Err(_) => panic!("enqueue of {request_id} hung"),
                    }
                }
            }
        };

        // One by one (one write batch each).
        for n in 0..SEQUENTIAL {
            if !enqueue(format!("seq-{n}"), "seq".to_owned(), n).await {
                break;
            }
        }
        // Many at once (group commit: a failing batch fails every caller in it), each task
        // until its first failure.
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let enqueue = enqueue.clone();
            let attempts = Arc::clone(&attempts);
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    if attempts.load(Ordering::Relaxed) >= MAX_ATTEMPTS {
                        return;
                    }
                    let partition = format!("p{}", (task + n) % 8);
                    if !enqueue(format!("t{task}-{n}"), partition, n).await {
                        return;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            failures.load(Ordering::Relaxed) > 0,
            "no enqueue failed in {} attempts under RLIMIT_FSIZE = {FILE_SIZE_LIMIT}",
            attempts.load(Ordering::Relaxed)
        );
        assert!(!db.is_writable(), "is_writable() after a failed write");
        eprintln!("WRITABLE {}", db.is_writable());

        // Later writes keep failing, promptly and cleanly: enqueues ...
        for n in 0..AFTER_FAILURE {
            assert!(
                !enqueue(format!("after-{n}"), "after".to_owned(), n).await,
                "an enqueue succeeded after the disk filled up"
            );
        }
        // ... and a transition of an acknowledged command (the head of partition "seq").
        if let Some(head) = outbox.find_by_request_id(TENANT, "seq-0").unwrap() {
            let call = outbox.mark_prepared(head.id, "tx-after-full".to_owned(), vec![7; 64]);
            match tokio::time::timeout(CALL_DEADLINE, call).await {
                Ok(Ok(c)) => panic!("mark_prepared succeeded after the disk filled up: {c:?}"),
                Ok(Err(e)) => eprintln!("PREPARE_ERR {} {:?} {e}", head.id, e.kind()),
                Err(_) => panic!("mark_prepared hung"),
            }
        }
        assert!(!db.is_writable());
        // Reads still work.
        outbox.counts().unwrap();
        if abandon {
            eprintln!("DONE");
            // No destructors: the database is not closed, the WAL not truncated.
            std::process::exit(0);
        }
        drop(outbox);
        drop(db);
        eprintln!("DONE");
    });
}

// ---- parent --------------------------------------------------------------------------

struct Report {
    acked: HashMap<String, CommandId>,
    failed: Vec<(String, String, String)>,
    prepare_failed: Option<(CommandId, String)>,
    writable_after_failure: Option<String>,
    done: bool,
}

fn parse(stderr: &str) -> Report {
    let mut r = Report {
        acked: HashMap::new(),
        failed: Vec::new(),
        prepare_failed: None,
        writable_after_failure: None,
        done: false,
    };
    for line in stderr.lines() {
        let mut f = line.splitn(4, ' ');
        match f.next() {
            Some("ACK") => {
                let id: CommandId = f.next().unwrap().parse().unwrap();
                let request_id = f.next().unwrap().to_owned();
                assert!(
                    r.acked.insert(request_id.clone(), id).is_none(),
                    "{request_id} acknowledged twice"
                );
            }
            Some("ERR") => {
                let request_id = f.next().unwrap().to_owned();
                let kind = f.next().unwrap().to_owned();
                let message = f.next().unwrap_or("").to_owned();
                r.failed.push((request_id, kind, message));
            }
            Some("PREPARE_ERR") => {
                let id: CommandId = f.next().unwrap().parse().unwrap();
                let kind = f.next().unwrap().to_owned();
                r.prepare_failed = Some((id, kind));
            }
            Some("WRITABLE") => r.writable_after_failure = f.next().map(str::to_owned),
            Some("DONE") => r.done = true,
            _ => {}
        }
    }
    r
}

fn run_child(dir: &Path, abandon: bool) -> (std::process::ExitStatus, String) {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(ABANDON_ENV, if abandon { "1" } else { "" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + CHILD_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the child did not finish within {CHILD_DEADLINE:?} (hung on a full disk?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

/// Size of the largest WAL file (`*.log`) in the database directory.
fn largest_wal(dir: &Path) -> u64 {
    std::fs::read_dir(Db::path_in(dir))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap()
}

fn parent(abandon: bool) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (status, stderr) = run_child(dir.path(), abandon);
    let child_time = started.elapsed();
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("ACK "))
        .take(60)
        .collect();
    let tail = tail.join("\n");
    assert!(
        status.success(),
        "the child failed ({status}); its stderr without ACKs:\n{tail}"
    );
    let report = parse(&stderr);
    assert!(report.done, "the child did not finish its checks:\n{tail}");
    assert!(
        !report.acked.is_empty(),
        "nothing was acknowledged:\n{tail}"
    );
    assert!(!report.failed.is_empty(), "no write failed:\n{tail}");
    assert_eq!(report.writable_after_failure.as_deref(), Some("false"));
    for (request_id, kind, message) in &report.failed {
        assert_eq!(
            kind,
            &format!("{:?}", ErrorKind::Unavailable),
            "{request_id} failed with a non-503 error: {message}"
        );
        assert!(!report.acked.contains_key(request_id));
    }
    // The limit, not something else, made the writes fail.
    assert!(
        report
            .failed
            .iter()
            .any(|(_, _, m)| m.contains("File too large")),
        "no failure is EFBIG:\n{tail}"
    );
    let (prepared_id, prepare_kind) = report
        .prepare_failed
        .clone()
        .expect("the transition after the failure was not tried");
    assert_eq!(prepare_kind, format!("{:?}", ErrorKind::Unavailable));
    let sequential = report
        .acked
        .keys()
        .filter(|r| r.starts_with("seq-"))
        .count();
    let concurrent = report.acked.keys().filter(|r| r.starts_with('t')).count();
    let concurrent_failed = report
        .failed
        .iter()
        .filter(|(r, _, _)| r.starts_with('t'))
        .count();
    let after_failed = report
        .failed
        .iter()
        .filter(|(r, _, _)| r.starts_with("after-"))
        .count();
    assert_eq!(after_failed as u64, AFTER_FAILURE);

    let wal_bytes = largest_wal(dir.path());
    if abandon {
        // The failed write filled the WAL up to the limit: a torn record is at its end.
        assert_eq!(wal_bytes, FILE_SIZE_LIMIT);
    }

    // Space is back: reopen without a limit.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed_present = rt.block_on(async {
        let db = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
        assert!(db.is_writable());
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        let integrity = outbox.verify_integrity().unwrap();
        assert!(integrity.is_ok(), "after the full disk: {integrity:?}");

        // Every acknowledged command is there and intact.
        for (request_id, id) in &report.acked {
            let c = outbox.get(*id).unwrap();
            assert_eq!(&c.request_id, request_id);
            assert_eq!(c.tenant, TENANT);
            assert_eq!(c.payload, payload_for(request_id, number_of(request_id)));
            // Nothing moved them on (the one transition tried failed).
            assert_eq!(c.status, Status::Pending, "{request_id}");
            assert_eq!(
                outbox
                    .find_by_request_id(TENANT, request_id)
                    .unwrap()
                    .map(|c| c.id),
                Some(*id)
            );
        }
        // The failed transition left nothing of itself.
        let head = outbox.get(prepared_id).unwrap();
        assert_eq!(head.status, Status::Pending);
        assert_eq!(head.txid, None);
        assert_eq!(head.signed_tx, None);

        // A failed request id is absent, or (its batch reached the WAL before the error
        // was reported) a complete command with the payload it was sent with.
        let mut failed_present = 0u64;
        let failed_ids: HashSet<&str> = report.failed.iter().map(|(r, _, _)| r.as_str()).collect();
        for request_id in &failed_ids {
            if let Some(c) = outbox.find_by_request_id(TENANT, request_id).unwrap() {
                failed_present += 1;
                assert_eq!(&c.request_id, request_id);
                assert_eq!(c.payload, payload_for(request_id, number_of(request_id)));
                assert_eq!(outbox.get(c.id).unwrap(), c);
            }
        }
        let counts = outbox.counts().unwrap();
        assert_eq!(counts, integrity.counts);
        assert_eq!(
            counts.total(),
            report.acked.len() as u64 + failed_present,
            "commands that were neither acknowledged nor among the failed requests"
        );

        // Writes work again, and acknowledged request ids are still remembered.
        for n in 0..50u64 {
            let request_id = format!("recovered-{n}");
            let o = outbox
                .enqueue(new_command(&request_id, "recovered", n))
                .await
                .unwrap();
            assert!(o.created);
        }
        for request_id in failed_ids.iter().filter(|r| r.starts_with("after-")) {
            let o = outbox
                .enqueue(new_command(request_id, "after", number_of(request_id)))
                .await
                .unwrap();
            assert_eq!(&o.command.request_id, request_id);
        }
        for (request_id, id) in report.acked.iter().take(50) {
            let partition = if request_id.starts_with("seq-") {
                "seq".to_owned()
            } else {
                let task: u64 = request_id[1..].split('-').next().unwrap().parse().unwrap();
                format!("p{}", (task + number_of(request_id)) % 8)
            };
            let o = outbox
                .enqueue(new_command(request_id, &partition, number_of(request_id)))
                .await
                .unwrap();
            assert!(!o.created, "{request_id} was forgotten");
            assert_eq!(o.command.id, *id);
        }
        outbox
            .mark_prepared(prepared_id, "tx-recovered".to_owned(), vec![7; 64])
            .await
            .unwrap();
        let integrity = outbox.verify_integrity().unwrap();
        assert!(integrity.is_ok(), "after recovery: {integrity:?}");
        failed_present
    });

    println!(
        "disk full ({}): WAL left at {wal_bytes} bytes (limit {FILE_SIZE_LIMIT}); \
         child ran {child_time:?}; acknowledged {} ({sequential} one by one, \
         {concurrent} concurrently), failed {} ({concurrent_failed} concurrent, {after_failed} \
         after the failure; {failed_present} of the failed present after reopen); \
         total {:?}",
        if abandon { "not closed" } else { "closed" },
        report.acked.len(),
        report.failed.len(),
        started.elapsed()
    );
}
