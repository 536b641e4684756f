//! A stand-alone `/api/v1` server for fuzzing (`scripts/fuzz-api.sh`): the real router over
//! a fresh PostgreSQL database (migrated, seeded with a treasury, two users and a multisig
//! wallet) and a real outbox in a temporary directory; tokens are checked by a test double
//! of the authentication seam (`Bearer user:<id>`, `Bearer admin:<id>`).
//!
//! `fuzz_server [ADDR]` (default 127.0.0.1:8099); PostgreSQL from `GXD_TEST_DATABASE_URL`
//! or a private throwaway cluster. Runs until SIGINT/SIGTERM or stdin closes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;

use gxd_api::{
    ApiState, AuthError, Authenticator, Principal, ProjectorSnapshot, ProjectorView, Role, V1Deps,
};
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::pg::{self, testing::TestDb};
use gxd_storage::{Db, DbOptions};

struct TestTokens;

impl Authenticator for TestTokens {
    fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (role, subject) = token
            .split_once(':')
            .ok_or_else(|| AuthError::Invalid("not a test token".into()))?;
        Ok(Principal {
            subject: subject.to_owned(),
            role: Role::parse(role).ok_or_else(|| AuthError::Invalid("role".into()))?,
        })
    }
}

struct Running;

impl ProjectorView for Running {
    fn snapshot(&self) -> ProjectorSnapshot {
        ProjectorSnapshot {
            state: "running".to_owned(),
            projected_block: Some(4),
            checkpoint_height: Some(4),
            ..Default::default()
        }
    }
}

const SEED: &str = r#"
INSERT INTO wallets (wallet_id, kind, balance, threshold, channel, created_tx_id, created_block, created_at, updated_block, updated_at) VALUES
  ('treasury', 'treasury', 1000, NULL, 'gxchannel', 't0', 1, now(), 1, now()),
  ('alice', 'user', 50, NULL, 'gxchannel', 't1', 2, now(), 2, now()),
  ('bob', 'user', 20, NULL, 'gxchannel', 't2', 2, now(), 2, now()),
  ('vault', 'multisig', 300, 2, 'gxchannel', 't4', 3, now(), 3, now());
INSERT INTO wallet_owners (wallet_id, owner_id) VALUES
  ('alice', 'alice'), ('bob', 'bob'), ('vault', 'alice'), ('vault', 'bob');
INSERT INTO users (user_id, country, profile_commitment, channel, created_tx_id, created_block, created_at) VALUES
  ('alice', 'DE', 'aa', 'gxchannel', 't1', 2, now()),
  ('bob', 'FR', 'bb', 'gxchannel', 't2', 2, now());
INSERT INTO proposals (proposal_id, wallet_id, to_wallet_id, amount, memo, state, threshold, channel, created_tx_id, created_block, created_at) VALUES
  ('p1', 'vault', 'bob', 100, 'rent', 'pending', 2, 'gxchannel', 't5', 4, now());
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_owned());
    let db = TestDb::new().await.unwrap();
    let pool = pg::connect_pool(&db.settings("gxd-fuzz")).await.unwrap();
    pg::migrate::migrate_pool(&pool).await.unwrap();
    db.connect()
        .await
        .unwrap()
        .batch_execute(SEED)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rocks = Db::open(Db::path_in(dir.path()), &DbOptions::default()).unwrap();
    let outbox = Outbox::new(rocks, OutboxOptions::default()).unwrap();
    let state = ApiState::new(&prometheus::Registry::new(), Vec::new())
        .unwrap()
        .with_authenticator(Arc::new(TestTokens))
        .with_v1(V1Deps {
            outbox: outbox.clone(),
            pool,
            channel: "gxchannel".to_owned(),
            projector: Some(Arc::new(Running)),
            on_enqueue: None,
            read_cache: None,
        });
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!(
        "fuzz_server listening on {}",
        listener.local_addr().unwrap()
    );
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    gxd_api::serve(listener, gxd_api::router(state), stop)
        .await
        .unwrap();
    let counts = outbox.counts().unwrap();
    eprintln!(
        "fuzz_server stopped; commands accepted during the run: {}",
        counts.total()
    );
}
