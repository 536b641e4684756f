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
    for cmd in ["run", "migrate", "config", "version", "devnet", "dev"] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "help lists {cmd}: {help}"
        );
    }
    let out = run_gxd(&["migrate", "--help"], &[], DEADLINE);
    assert!(stdout(&out).contains("--check"));
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
