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
//! and that `Db::is_writable()` is false. Then either it exits at once without closing
//! anything (a crash), or it lifts the limit ("space is back") and, without anyone
//! reopening the `Db`, retries one enqueue until the writer has recovered by itself
//! (`RECOVERED <ms> <attempts> <refused>`), enqueues more, checks integrity in-process, and
//! exits normally. The parent asserts:
//! - the child exited 0 (no panic, no abort, no SIGXFSZ), with ACKs and ERRs, every ERR of
//!   kind `ErrorKind::Unavailable` (the API's 503), and one of them really `EFBIG`;
//! - after reopening the database without a limit: `verify_integrity` finds nothing
//!   inconsistent, every ACKed command is there and intact, every failed request id is
//!   absent or a complete command with the payload it was sent with, and the failed
//!   transition left its command PENDING;
//! - new enqueues succeed, idempotent repeats of ACKed request ids return the original
//!   commands, and the outbox is still consistent afterwards.
//!
//! [`a_full_tmpfs_under_load_recovers_by_itself`] fills a real file system instead (a small
//! tmpfs, as root: `ENOSPC`), under concurrent load, in one process.
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
/// Set (to anything but "") for a child that exits without closing the database, as a
/// crash would.
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
/// How long the writer may take to recover by itself once space is back (its first reopen
/// attempt is 1 s after the failure, the next ones 2 s, 4 s, ... later).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
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
        extra_partition_keys: Vec::new(),
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
        // (Set to "" for a child that does not abandon the database.)
        let abandon = std::env::var_os(ABANDON_ENV).is_some_and(|v| !v.is_empty());
        child(Path::new(&dir), abandon);
        return;
    }
    // The child sees space come back (the limit lifted) and its writer recover by itself,
    // reopening the database in-process; it then closes it ...
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
        let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
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

        // Space is back (the limit lifted): without the `Db` being reopened by hand, the
        // writer reopens the database by itself and writes succeed again. The client
        // retries its request id until it is accepted.
        setrlimit(Resource::RLIMIT_FSIZE, soft, hard).unwrap();
        let lifted = Instant::now();
        let mut refused = 0u64;
        loop {
            assert!(
                lifted.elapsed() < RECOVERY_DEADLINE,
                "writes did not succeed again within {RECOVERY_DEADLINE:?} of space coming \
                 back: {:?}",
                db.write_status()
            );
            let call = outbox.enqueue(new_command("rec-0", "rec", 0));
            match tokio::time::timeout(CALL_DEADLINE, call).await {
                Ok(Ok(o)) => {
                    eprintln!("ACK {} rec-0", o.command.id);
                    break;
                }
                Ok(Err(e)) => {
                    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => panic!("enqueue hung while storage recovers"),
            }
        }
        let status = db.write_status();
        assert!(status.writable && !status.blocked, "{status:?}");
        assert_eq!(status.recoveries, 1, "{status:?}");
        eprintln!(
            "RECOVERED {} {} {refused}",
            lifted.elapsed().as_millis(),
            status.recovery_attempts
        );
        for n in 1..50 {
            assert!(
                enqueue(format!("rec-{n}"), "rec".to_owned(), n).await,
                "an enqueue failed after recovery"
            );
        }
        let integrity = outbox.verify_integrity().unwrap();
        assert!(
            integrity.is_ok(),
            "after recovering in-process: {integrity:?}"
        );
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
    /// (milliseconds from space back to the first accepted write, reopen attempts, writes
    /// refused meanwhile).
    recovered: Option<(u64, u64, u64)>,
    done: bool,
}

fn parse(stderr: &str) -> Report {
    let mut r = Report {
        acked: HashMap::new(),
        failed: Vec::new(),
        prepare_failed: None,
        writable_after_failure: None,
        recovered: None,
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
            Some("RECOVERED") => {
                let rest: Vec<u64> = f.map(|x| x.parse().unwrap()).collect();
                r.recovered = Some((rest[0], rest[1], rest[2]));
            }
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

    // Without a crash, the child recovered in-process once space was back.
    if abandon {
        assert!(report.recovered.is_none());
    } else {
        assert!(
            report.recovered.is_some(),
            "no in-process recovery:\n{tail}"
        );
    }
    let rec_acked = report
        .acked
        .keys()
        .filter(|r| r.starts_with("rec-"))
        .count();
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
            } else if request_id.starts_with("rec-") {
                "rec".to_owned()
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

    let recovery = match report.recovered {
        Some((ms, attempts, refused)) => format!(
            "recovered in-process {ms} ms after space came back ({attempts} reopen \
             attempt(s), {refused} writes refused meanwhile, {rec_acked} accepted after)"
        ),
        None => "killed before space came back".to_owned(),
    };
    println!(
        "disk full ({}): WAL left at {wal_bytes} bytes (limit {FILE_SIZE_LIMIT}); \
         child ran {child_time:?}; acknowledged {} ({sequential} one by one, \
         {concurrent} concurrently), failed {} ({concurrent_failed} concurrent, {after_failed} \
         after the failure; {failed_present} of the failed present after reopen); \
         {recovery}; total {:?}",
        if abandon {
            "not closed"
        } else {
            "recovered, closed"
        },
        report.acked.len(),
        report.failed.len(),
        started.elapsed()
    );
}

// ---- a real full file system, in one process -------------------------------------------

/// Size of the tmpfs the database lives on.
const TMPFS_MB: u32 = 32;
/// Concurrent clients during the tmpfs test.
const LOAD_TASKS: u64 = 8;
/// Commands accepted before the disk fills, and after it recovered, at least.
const LOAD_BEFORE: usize = 300;
const LOAD_AFTER: usize = 300;

/// A tmpfs of `size_mb` mounted on `path` (root only, as in CI), unmounted on drop.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mb: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Process::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (CAP_SYS_ADMIN), as in CI: \
             mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Appends to `ballast` until the file system is full; returns the bytes written.
fn fill(ballast: &mut std::fs::File) -> u64 {
    use std::io::Write;
    let mut written = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let buf = vec![0xa5u8; chunk];
        while let Ok(n) = ballast.write(&buf) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
    }
    written
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Clients enqueue without pause, each retrying a refused request id until it is accepted
/// (as a client answered 503 would); the disk fills up under them (ENOSPC), writes are
/// refused and readiness is off; the space is freed, and — no one reopening the `Db` — the
/// writer recovers by itself and the same clients go on. Every accepted command is there
/// exactly once, the outbox is consistent, and its writer-side state (partition queues)
/// agrees with the disk.
#[test]
fn a_full_tmpfs_under_load_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let tmpfs = Tmpfs::mount(&mnt, TMPFS_MB);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::open(Db::path_in(&mnt), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db.clone(), OutboxOptions::default()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(HashMap::<String, CommandId>::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
        let mut tasks = Vec::new();
        for task in 0..LOAD_TASKS {
            let (outbox, stop, acked, refused, messages) = (
                outbox.clone(),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&refused),
                Arc::clone(&messages),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let request_id = format!("load{task}-{n}");
                    let partition = format!("p{}", (task + n) % 4);
                    loop {
                        let call = outbox.enqueue(new_command(&request_id, &partition, n));
                        match tokio::time::timeout(CALL_DEADLINE, call).await {
                            Ok(Ok(o)) => {
                                assert_eq!(o.command.request_id, request_id);
                                let before = acked.lock().unwrap().insert(request_id, o.command.id);
                                assert!(before.is_none(), "acknowledged twice");
                                break;
                            }
                            Ok(Err(e)) => {
                                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                                refused.fetch_add(1, Ordering::Relaxed);
                                {
                                    let mut m = messages.lock().unwrap();
                                    if m.len() < 64 {
                                        m.insert(e.to_string());
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(_) => panic!("enqueue of {request_id} hung"),
                        }
                    }
                    n += 1;
                }
            }));
        }
        let count = || acked.lock().unwrap().len();
        assert!(
            eventually(Duration::from_secs(60), || count() >= LOAD_BEFORE).await,
            "load did not start"
        );

        // The disk fills up (topped up while we wait, in case RocksDB frees a file).
        let ballast_path = mnt.join("ballast");
        let mut ballast = std::fs::File::create(&ballast_path).unwrap();
        let mut ballast_bytes = fill(&mut ballast);
        let full_at = Instant::now();
        let acked_at_full = count();
        let blocked = eventually(Duration::from_secs(60), || {
            ballast_bytes += fill(&mut ballast);
            db.write_status().blocked
        })
        .await;
        assert!(
            blocked,
            "writes not blocked on a full disk: {:?}",
            db.write_status()
        );
        let blocked_in = full_at.elapsed();
        assert!(!db.is_writable());
        // While the disk stays full, writes keep being refused (and the reopen attempts
        // find no room).
        assert!(
            !eventually(Duration::from_secs(3), || {
                ballast_bytes += fill(&mut ballast);
                db.is_writable()
            })
            .await,
            "writable again on a full disk: {:?}",
            db.write_status()
        );
        let status_while_full = db.write_status();
        assert_eq!(status_while_full.recoveries, 0);
        let acked_while_full = count();
        let refused_while_full = refused.load(Ordering::Relaxed);
        assert!(refused_while_full > 0);
        {
            let m = messages.lock().unwrap();
            assert!(
                m.iter().any(|m| m.contains("No space left on device")),
                "no refusal names ENOSPC: {m:#?}"
            );
        }
        // Reads still work while writes are blocked.
        outbox.counts().unwrap();

        // Space is back.
        drop(ballast);
        std::fs::remove_file(&ballast_path).unwrap();
        let freed_at = Instant::now();
        let writable = eventually(Duration::from_secs(60), || db.is_writable()).await;
        assert!(
            writable,
            "not writable again within 60 s of space coming back: {:?}",
            db.write_status()
        );
        let recovered_in = freed_at.elapsed();
        let acked_at_recovery = count();
        assert!(
            eventually(Duration::from_secs(60), || count()
                >= acked_at_recovery + LOAD_AFTER)
            .await,
            "the load did not go on after recovery: {:?}",
            db.write_status()
        );
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let status = db.write_status();
        assert!(status.writable && !status.blocked, "{status:?}");
        assert_eq!(status.recoveries, 1, "{status:?}");

        // Every accepted command is there, intact, once; nothing else is.
        let acked = acked.lock().unwrap().clone();
        let integrity = outbox.verify_integrity().unwrap();
        assert!(integrity.is_ok(), "after recovery: {integrity:?}");
        assert_eq!(integrity.counts.total(), acked.len() as u64);
        assert_eq!(outbox.counts().unwrap(), integrity.counts);
        for (request_id, id) in &acked {
            let c = outbox.get(*id).unwrap();
            assert_eq!(&c.request_id, request_id);
            assert_eq!(c.status, Status::Pending);
            assert_eq!(c.payload, payload_for(request_id, number_of(request_id)));
            assert_eq!(
                outbox
                    .find_by_request_id(TENANT, request_id)
                    .unwrap()
                    .map(|c| c.id),
                Some(*id)
            );
        }
        // The partition queues (and their in-memory mirror, reloaded at the reopen) agree
        // with the disk: the oldest command of a partition is its head, the next is not.
        let head = acked["load0-0"];
        let next = acked["load0-4"];
        match outbox
            .mark_prepared(next, "tx-next".to_owned(), vec![1; 32])
            .await
        {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
            Ok(c) => panic!("a command behind the head was prepared: {c:?}"),
        }
        outbox
            .mark_prepared(head, "tx-head".to_owned(), vec![1; 32])
            .await
            .unwrap();
        // A fresh partition (empty in the mirror) takes a command and makes it its head.
        let fresh = outbox
            .enqueue(new_command("fresh-0", "fresh", 0))
            .await
            .unwrap();
        outbox
            .mark_prepared(fresh.command.id, "tx-fresh".to_owned(), vec![1; 32])
            .await
            .unwrap();
        let integrity = outbox.verify_integrity().unwrap();
        assert!(integrity.is_ok(), "after more writes: {integrity:?}");

        println!(
            "tmpfs full ({TMPFS_MB} MiB, ballast {} KiB): {LOAD_TASKS} clients; acknowledged \
             {acked_at_full} before the disk filled, {} more while it filled; writes blocked \
             {:.2}s after; {refused_while_full} refusals while full; recovered by itself \
             {:.2}s after space came back ({} reopen attempt(s)); {} acknowledged in all, \
             lost 0, doubled 0",
            ballast_bytes / 1024,
            acked_while_full - acked_at_full,
            blocked_in.as_secs_f64(),
            recovered_in.as_secs_f64(),
            status.recovery_attempts,
            acked.len()
        );
        drop(outbox);
        drop(db);
    });
    drop(tmpfs);
}
