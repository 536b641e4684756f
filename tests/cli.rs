#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The command line and configuration validation, through the real binary.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/gxd.example.toml")
}

const VALID: &str = r#"
[api]
listen = "127.0.0.1:18080"

[database]
host = "db.internal"
user = "gxd"
dbname = "gxd"
"#;

fn write(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("gxd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration error: exit 64, one line naming `field`, no panic, no backtrace
/// (even with RUST_BACKTRACE=1).
fn assert_config_error(out: &std::process::Output, field: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    assert!(err.contains(field), "message should name {field}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear message: {err}");
}

#[test]
fn version_and_help() {
    let out = run_gxd(&["version"], &[], DEADLINE);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("gxd {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run_gxd(&["--help"], &[], DEADLINE);
    assert!(out.status.success());
    let help = stdout(&out);
    for cmd in [
        "run",
        "migrate",
        "config",
        "version",
        "devnet",
        "dev",
        "chaincode",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "help lists {cmd}: {help}"
        );
    }
    let out = run_gxd(&["migrate", "--help"], &[], DEADLINE);
    assert!(stdout(&out).contains("--check"));
}

#[test]
fn chaincode_package_and_serve_explain_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("gx.tar.gz");
    let out_arg = out_file.to_str().unwrap();
    let out = run_gxd(
        &[
            "chaincode",
            "package",
            "--address",
            "cc:9999",
            "--label",
            "bad label",
            out_arg,
        ],
        &[],
        DEADLINE,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid label"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(!out_file.exists(), "nothing written");

    let out = run_gxd(
        &[
            "chaincode",
            "package",
            "--address",
            "cc:9999",
            "--label",
            "gx_1.0",
            out_arg,
        ],
        &[],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let (label, hash) = id.split_once(':').unwrap();
    assert_eq!(label, "gx_1.0");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(out_file.is_file());

    let out = run_gxd(
        &[
            "chaincode",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--id",
            "gx_1.0:x",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ],
        &[],
        DEADLINE,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/tls.crt"),
        "{}",
        stderr(&out)
    );

    let out = run_gxd(
        &["chaincode", "serve", "--listen", "127.0.0.1:0"],
        &[],
        DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "--id is required: {}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_64() {
    let out = run_gxd(&["frobnicate"], &[], DEADLINE);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = run_gxd(&["config", "check"], &[], DEADLINE);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[test]
fn example_config_passes_config_check() {
    let example = example_config();
    let out = run_gxd(
        &["config", "check", example.to_str().unwrap()],
        &[],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(": ok"), "{}", stdout(&out));
}

#[test]
fn missing_field_is_named_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[database]\nhost = \"db\"\nuser = \"gxd\"\n");
    let out = run_gxd(
        &["config", "check", path.to_str().unwrap()],
        &[("RUST_BACKTRACE", "1")],
        DEADLINE,
    );
    assert_config_error(&out, "database.dbname");
    // `run` validates the same way, before touching anything.
    let out = run_gxd(
        &["run", "--config", path.to_str().unwrap()],
        &[("RUST_BACKTRACE", "full")],
        DEADLINE,
    );
    assert_config_error(&out, "database.dbname");
}

#[test]
fn invalid_fields_are_named_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field) in [
        (format!("{VALID}port = \"abc\"\n"), "database.port"),
        (
            format!("{VALID}pool_max_size = 0\n"),
            "database.pool_max_size",
        ),
        (
            VALID.replace("127.0.0.1:18080", "not-an-address"),
            "api.listen",
        ),
        (format!("{VALID}[log]\nformat = \"xml\"\n"), "log.format"),
        (format!("{VALID}colour = \"blue\"\n"), "colour"),
        ("[database\n".to_owned(), "TOML"),
    ] {
        let path = write(dir.path(), &text);
        let out = run_gxd(&["config", "check", path.to_str().unwrap()], &[], DEADLINE);
        assert_config_error(&out, field);
    }
    let out = run_gxd(&["config", "check", "/nonexistent/gxd.toml"], &[], DEADLINE);
    assert_config_error(&out, "/nonexistent/gxd.toml");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), VALID);
    let p = path.to_str().unwrap();

    let out = run_gxd(&["config", "check", p], &[], DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("api 127.0.0.1:18080"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("gxd@db.internal:5432/gxd"),
        "{}",
        stdout(&out)
    );

    let out = run_gxd(
        &["config", "check", p],
        &[
            ("GXD_API__LISTEN", "127.0.0.1:19999"),
            ("GXD_DATABASE__PORT", "6000"),
            ("GXD_DATABASE__USER", "other"),
        ],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("api 127.0.0.1:19999"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("other@db.internal:6000/gxd"),
        "{}",
        stdout(&out)
    );

    // GXD_CONFIG names the file.
    let out = run_gxd(&["config", "check"], &[("GXD_CONFIG", p)], DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));

    // A bad override is named by its variable.
    let out = run_gxd(
        &["config", "check", p],
        &[("GXD_DATABASE__PORT", "many")],
        DEADLINE,
    );
    assert_config_error(&out, "GXD_DATABASE__PORT");
    let out = run_gxd(
        &["config", "check", p],
        &[("GXD_DATABSE__HOST", "x")],
        DEADLINE,
    );
    assert_config_error(&out, "GXD_DATABSE__HOST");
}

#[test]
fn password_file_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write_secret(&pw, "s3cret\n");
    let path = write(
        dir.path(),
        &format!(
            "{VALID}password_file = {}\n",
            toml_string(pw.to_str().unwrap())
        ),
    );
    let p = path.to_str().unwrap();
    let out = run_gxd(&["config", "check", p], &[], DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));

    use std::os::unix::fs::PermissionsExt;
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = run_gxd(&["config", "check", p], &[], DEADLINE);
        assert_config_error(&out, "database.password_file");
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures")
        .join(name)
}

/// Copies a fixture key into `dir` with `mode`.
fn key_file(dir: &std::path::Path, name: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn issue(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["token", "issue", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_gxd(&args, &[], DEADLINE)
}

/// `gxd token issue`: mints with each configured algorithm; the token alone on stdout
/// verifies with the daemon's authenticator for the same configuration; clear errors.
#[test]
fn token_issue_mints_tokens_that_verify() {
    use gxd_api::Authenticator as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = d.join("hs.secret");
    write_secret(&secret, "a-shared-secret-of-at-least-32-bytes\n");
    let rsa_pub = fixture("rsa.pub.pem");
    let rsa_key = key_file(d, "rsa.key.pem", 0o600);
    let ec_pub = fixture("ec.pub.pem");
    let ec_key = key_file(d, "ec.key.pem", 0o600);
    let q = |p: &std::path::Path| toml_string(p.to_str().unwrap());
    let text = format!(
        "{VALID}\n[auth]\nissuer = \"https://login.test\"\naudience = \"gxd\"\nrole_claim = \"https://gxd/role\"\n\
         [[auth.keys]]\nkid = \"hs\"\nalgorithm = \"HS256\"\nsecret_file = {}\n\
         [[auth.keys]]\nkid = \"rs\"\nalgorithm = \"RS256\"\npublic_key_file = {}\nprivate_key_file = {}\n\
         [[auth.keys]]\nkid = \"es\"\nalgorithm = \"ES256\"\npublic_key_file = {}\nprivate_key_file = {}\n\
         [[auth.keys]]\nkid = \"verify-only\"\nalgorithm = \"ES256\"\npublic_key_file = {}\n",
        q(&secret),
        q(&rsa_pub),
        q(&rsa_key),
        q(&ec_pub),
        q(&ec_key),
        q(&fixture("ec2.pub.pem")),
    );
    let config = write(d, &text);
    let auth = gxd::config::load(Some(&config), &Default::default())
        .unwrap()
        .auth
        .unwrap();
    for (kid, role) in [("hs", "user"), ("rs", "admin"), ("es", "user")] {
        let out = issue(
            &config,
            &[
                "--sub",
                "alice",
                "--role",
                role,
                "--kid",
                kid,
                "--ttl-seconds",
                "120",
            ],
        );
        assert!(out.status.success(), "{kid}: {}", stderr(&out));
        let token = stdout(&out);
        assert_eq!(token.lines().count(), 1, "the token alone: {token}");
        let p = auth.authenticator.authenticate(token.trim()).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.role.as_str()),
            ("alice", role),
            "{kid}"
        );
    }

    // Errors: exit 64 with one clear line.
    let several = issue(&config, &["--sub", "alice", "--role", "user"]);
    assert_config_error(&several, "--kid");
    let unknown = issue(&config, &["--sub", "a", "--role", "user", "--kid", "nope"]);
    assert_config_error(&unknown, "nope");
    let no_private = issue(
        &config,
        &["--sub", "a", "--role", "user", "--kid", "verify-only"],
    );
    assert_config_error(&no_private, "private_key_file");
    let bad_role = issue(&config, &["--sub", "a", "--role", "root", "--kid", "hs"]);
    assert_eq!(bad_role.status.code(), Some(64), "{}", stderr(&bad_role));
    assert!(
        stderr(&bad_role).contains("possible values: user, admin"),
        "{}",
        stderr(&bad_role)
    );
    let no_auth = issue(&write(d, VALID), &["--sub", "a", "--role", "user"]);
    assert_config_error(&no_auth, "[auth]");

    // A private key readable by others is refused, naming the file.
    let open_key = key_file(d, "ec2.key.pem", 0o644);
    let text = format!(
        "{VALID}\n[auth]\nissuer = \"i\"\naudience = \"a\"\n[[auth.keys]]\nalgorithm = \"ES256\"\npublic_key_file = {}\nprivate_key_file = {}\n",
        q(&fixture("ec2.pub.pem")),
        q(&open_key)
    );
    let out = issue(&write(d, &text), &["--sub", "a", "--role", "user"]);
    assert_config_error(&out, "chmod 600");
    // A private key that does not match the public key: refused before printing.
    let text = format!(
        "{VALID}\n[auth]\nissuer = \"i\"\naudience = \"a\"\n[[auth.keys]]\nalgorithm = \"ES256\"\npublic_key_file = {}\nprivate_key_file = {}\n",
        q(&ec_pub),
        q(&key_file(d, "ec2.key.pem", 0o600))
    );
    let out = issue(&write(d, &text), &["--sub", "a", "--role", "user"]);
    assert_config_error(&out, "does not verify");
    assert!(stdout(&out).is_empty());
}

/// `gxd outbox counts|list|requeue` on a stopped daemon's data dir: counts per status, the
/// dead letters with their error, a requeue back to PENDING; bad arguments are usage errors
/// (64) and nothing changes; a data dir held by a running gxd is refused with 75 and the REST
/// routes to use instead.
#[test]
fn outbox_commands_read_and_requeue_the_data_dir() {
    use gxd_storage::outbox::{CommandError, NewCommand, Outbox, OutboxOptions, Status};
    use gxd_storage::{Db, DbOptions};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write(
        dir.path(),
        &format!(
            "{VALID}\n[storage]\ndata_dir = {:?}\n",
            data.to_str().unwrap()
        ),
    );
    let cfg = config.to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (failed, pending) = {
        let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        let new = |r: &str, p: &str| NewCommand {
            tenant: "ops".into(),
            command_type: "TRANSFER_TOKENS".into(),
            request_id: r.into(),
            partition_key: p.into(),
            extra_partition_keys: Vec::new(),
            payload: b"{}".to_vec(),
        };
        rt.block_on(async {
            let a = outbox.enqueue(new("a", "A")).await.unwrap().command.id;
            let b = outbox.enqueue(new("b", "B")).await.unwrap().command.id;
            let error = CommandError {
                stage: "endorse".into(),
                code: "CHAINCODE_ERROR".into(),
                message: "insufficient funds".into(),
            };
            outbox.mark_failed(a, error).await.unwrap();
            (a, b)
        })
    };

    let out = run_gxd(
        &["outbox", "counts", "--config", cfg, "--json"],
        &[],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let counts: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (counts["failed"].as_u64(), counts["pending"].as_u64()),
        (Some(1), Some(1))
    );

    let out = run_gxd(&["outbox", "list", "--config", cfg], &[], DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&failed.to_string()) && text.contains("insufficient funds"),
        "{text}"
    );
    assert!(
        !text.contains(&pending.to_string()),
        "only the dead letters: {text}"
    );

    for bad in [
        vec!["outbox", "list", "--config", cfg, "--status", "lost"],
        vec!["outbox", "requeue", "--config", cfg, "not-a-uuid"],
    ] {
        let out = run_gxd(&bad, &[], DEADLINE);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {}", stderr(&out));
    }
    // A PENDING command is no dead letter: refused, unchanged.
    let out = run_gxd(
        &["outbox", "requeue", "--config", cfg, &pending.to_string()],
        &[],
        DEADLINE,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a dead letter"),
        "{}",
        stderr(&out)
    );

    let out = run_gxd(
        &["outbox", "requeue", "--config", cfg, &failed.to_string()],
        &[],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("requeued"), "{}", stdout(&out));

    // While something holds the data dir (as a running daemon does): 75, nothing read.
    let db = Db::open(Db::path_in(&data), &DbOptions::default()).unwrap();
    let out = run_gxd(&["outbox", "counts", "--config", cfg], &[], DEADLINE);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/api/v1/admin/outbox"),
        "{}",
        stderr(&out)
    );
    let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
    let c = outbox.get(failed).unwrap();
    assert_eq!((c.status, c.requeues), (Status::Pending, 1));
    assert_eq!(outbox.get(pending).unwrap().status, Status::Pending);
}
