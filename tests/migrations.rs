#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `gxd migrate`, `gxd migrate --check` and the startup schema check, through the
//! real binary against a real PostgreSQL (see gxd_storage::pg::testing).

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn out_text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const READ_MODEL_TABLES: [&str; 10] = [
    "projector_checkpoints",
    "applied_transactions",
    "users",
    "user_profiles",
    "wallets",
    "wallet_owners",
    "transfers",
    "wallet_history",
    "proposals",
    "proposal_decisions",
];

async fn tables(db: &TestDb) -> Vec<String> {
    let client = db.connect().await.unwrap();
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn history_rows(db: &TestDb) -> i64 {
    let client = db.connect().await.unwrap();
    client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrate_creates_the_schema_then_is_a_no_op() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::new(&db, free_port()));
    let c = config.to_str().unwrap();

    assert!(tables(&db).await.is_empty());
    let out = run_gxd(&["migrate", "--check", "--config", c], &[], DEADLINE);
    let (_, err) = out_text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fresh database is not current: {err}"
    );
    assert!(err.contains("V1__read_models"), "{err}");

    let out = run_gxd(&["migrate", "--config", c], &[], DEADLINE);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("applied V1__read_models"), "{stdout}");
    let created = tables(&db).await;
    for t in READ_MODEL_TABLES {
        assert!(
            created.iter().any(|c| c == t),
            "table {t} missing: {created:?}"
        );
    }
    let embedded = gxd_storage::pg::migrate::embedded_names().len() as i64;
    assert_eq!(history_rows(&db).await, embedded);

    let out = run_gxd(&["migrate", "--config", c], &[], DEADLINE);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("nothing to apply"), "{stdout}");
    assert_eq!(
        history_rows(&db).await,
        embedded,
        "second run applies nothing"
    );
    assert_eq!(tables(&db).await, created);

    let out = run_gxd(&["migrate", "--check", "--config", c], &[], DEADLINE);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("current"), "{stdout}");
}

#[tokio::test]
async fn check_names_a_missing_migration() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::new(&db, free_port()));
    let c = config.to_str().unwrap();
    assert!(
        run_gxd(&["migrate", "--config", c], &[], DEADLINE)
            .status
            .success()
    );

    // Forget the last applied migration.
    let client = db.connect().await.unwrap();
    client
        .execute(
            "DELETE FROM refinery_schema_history \
             WHERE version = (SELECT max(version) FROM refinery_schema_history)",
            &[],
        )
        .await
        .unwrap();

    let out = run_gxd(&["migrate", "--check", "--config", c], &[], DEADLINE);
    let (_, stderr) = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = gxd_storage::pg::migrate::embedded_names()
        .last()
        .unwrap()
        .to_string();
    assert!(stderr.contains(&format!("not applied: {last}")), "{stderr}");
}

#[tokio::test]
async fn a_database_with_an_unknown_migration_is_refused() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::new(&db, free_port());
    let config = write_config(dir.path(), &settings);
    let c = config.to_str().unwrap();
    assert!(
        run_gxd(&["migrate", "--config", c], &[], DEADLINE)
            .status
            .success()
    );

    // A newer gxd applied V999 (refinery's row format).
    let client = db.connect().await.unwrap();
    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '42')",
            &[],
        )
        .await
        .unwrap();

    // Startup refuses, naming it, with the schema exit code; nothing listens.
    let mut gxd = Gxd::spawn_with_api(&["run", "--config", c], &[], settings.api_port);
    let status = gxd
        .wait_exit(DEADLINE)
        .expect("gxd run must refuse and exit");
    assert_eq!(status.code(), Some(65), "{}", gxd.logs());
    assert!(
        gxd.stderr().contains("V999__from_the_future"),
        "{}",
        gxd.logs()
    );

    for args in [
        &["migrate", "--check", "--config", c][..],
        &["migrate", "--config", c][..],
    ] {
        let out = run_gxd(args, &[], DEADLINE);
        let (_, stderr) = out_text(&out);
        assert_eq!(out.status.code(), Some(65), "{args:?}: {stderr}");
        assert!(stderr.contains("V999__from_the_future"), "{stderr}");
    }
    let embedded = gxd_storage::pg::migrate::embedded_names().len() as i64;
    assert_eq!(history_rows(&db).await, embedded + 1, "nothing was changed");
}

#[tokio::test]
async fn a_database_with_a_changed_migration_is_refused() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::new(&db, free_port());
    let config = write_config(dir.path(), &settings);
    let c = config.to_str().unwrap();
    assert!(
        run_gxd(&["migrate", "--config", c], &[], DEADLINE)
            .status
            .success()
    );

    let client = db.connect().await.unwrap();
    client
        .execute(
            "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();

    let out = run_gxd(&["run", "--config", c], &[], DEADLINE);
    let (_, stderr) = out_text(&out);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("V1__read_models"), "{stderr}");
}

#[tokio::test]
async fn pending_migrations_are_refused_when_not_migrating_on_startup() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(&db, free_port());
    settings.migrate_on_startup = false;
    let config = write_config(dir.path(), &settings);
    let out = run_gxd(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        DEADLINE,
    );
    let (_, stderr) = out_text(&out);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("V1__read_models") && stderr.contains("gxd migrate"),
        "{stderr}"
    );
    assert!(tables(&db).await.is_empty(), "nothing was migrated");
}

/// A password made of every character that breaks connection URLs, used to log in
/// with scram-sha-256 (on the private test cluster; against GXD_TEST_DATABASE_URL
/// the server's pg_hba decides whether passwords are checked at all).
#[tokio::test]
async fn a_password_full_of_special_characters_connects() {
    const PASSWORD: &str = "p/a=s@s:w?o#rd&%20+;' \"\\x{}[]é";
    let db = TestDb::new().await.unwrap();
    let role = format!("special_{}", db.dbname());
    let admin = db.connect().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD '{}'; ALTER DATABASE \"{}\" OWNER TO \"{role}\"; \
             GRANT ALL ON SCHEMA public TO \"{role}\"",
            PASSWORD.replace('\'', "''"),
            db.dbname()
        ))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(&db, free_port());
    settings.db_user = role.clone();
    settings.db_password = Some(PASSWORD.to_owned());
    let config = write_config(dir.path(), &settings);
    let c = config.to_str().unwrap();

    // Through database.password_file.
    let out = run_gxd(&["migrate", "--config", c], &[], DEADLINE);
    let (stdout, stderr) = out_text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("applied V1__read_models"), "{stdout}");

    // Through the environment (overriding the file's password_file).
    settings.db_password = None;
    let config = write_config(dir.path(), &settings);
    let c = config.to_str().unwrap();
    let out = run_gxd(
        &["migrate", "--check", "--config", c],
        &[("GXD_DATABASE__PASSWORD", PASSWORD)],
        DEADLINE,
    );
    let (_, stderr) = out_text(&out);
    assert!(out.status.success(), "{stderr}");

    // The password really is checked: a wrong one fails.
    if db.cluster().is_some() {
        let out = run_gxd(
            &["migrate", "--check", "--config", c],
            &[("GXD_DATABASE__PASSWORD", &PASSWORD[1..])],
            DEADLINE,
        );
        let (_, stderr) = out_text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("password authentication failed"),
            "{stderr}"
        );
        assert!(
            !stderr.contains(&PASSWORD[1..]),
            "the password must not be echoed"
        );
    }

    // Roles are server-wide: remove it (matters on a shared GXD_TEST_DATABASE_URL).
    admin
        .batch_execute(&format!(
            "REASSIGN OWNED BY \"{role}\" TO CURRENT_USER; DROP OWNED BY \"{role}\"; \
             DROP ROLE \"{role}\""
        ))
        .await
        .unwrap();
}
