-- V1: the read models of gxd.
--
-- Everything here except `user_profiles` is a projection: written only by the
-- projector, from committed Fabric blocks, in block order, exactly once. The
-- projector applies one block per PostgreSQL transaction, together with its
-- position in `projector_checkpoints`; the unique keys below make a replayed block
-- fail (or be skipped with ON CONFLICT DO NOTHING) instead of being applied twice.
--
-- Amounts are non-negative integers in minor units: NUMERIC(78,0) holds any
-- unsigned 256-bit value exactly. Never floating point.
-- Block numbers are Fabric's uint64 block numbers (BIGINT, non-negative in practice).
-- Ledger timestamps are the transaction's channel-header timestamp.
--
-- Migrations are forward-only: never edit this file once released; add V{n}__*.sql.

-- Projector position, one row per channel: the last block applied to the read
-- models, with its hash, so continuity can be checked against the next block's
-- previous-hash and against the checkpoint log in RocksDB.
CREATE TABLE projector_checkpoints (
    channel       TEXT        PRIMARY KEY,
    block_number  BIGINT      NOT NULL CHECK (block_number >= 0),
    block_hash    BYTEA       NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every transaction the projector has processed (valid or not), so that a replayed
-- block is recognised transaction by transaction. The projector inserts here first,
-- in the same PostgreSQL transaction as the read-model writes.
CREATE TABLE applied_transactions (
    channel          TEXT        NOT NULL,
    tx_id            TEXT        NOT NULL,
    block_number     BIGINT      NOT NULL CHECK (block_number >= 0),
    tx_index         INTEGER     NOT NULL CHECK (tx_index >= 0),
    -- Fabric TxValidationCode (0 = VALID); invalid transactions change nothing else.
    validation_code  INTEGER     NOT NULL,
    -- Chaincode event name (e.g. 'TokensTransferred'), NULL when there was none.
    event_name       TEXT,
    tx_timestamp     TIMESTAMPTZ NOT NULL,
    applied_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, tx_id),
    UNIQUE (channel, block_number, tx_index)
);

-- Users created on the ledger (projection of UserCreated). Holds no personal data:
-- the ledger only carries the user id, the country and a commitment to the profile.
CREATE TABLE users (
    user_id             TEXT        PRIMARY KEY,
    country             TEXT,
    -- Salted SHA-256 commitment to the profile, as recorded on the ledger (hex).
    profile_commitment  TEXT,
    channel             TEXT        NOT NULL,
    created_tx_id       TEXT        NOT NULL,
    created_block       BIGINT      NOT NULL CHECK (created_block >= 0),
    created_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (channel, created_tx_id)
);

-- Personal data, kept in this organization's database only and never sent to the
-- shared ledger. NOT a projection: written by the API when it accepts the
-- CREATE_USER command (before the user exists on the ledger), so there is no
-- foreign key to `users`. The user read model joins the two on user_id.
CREATE TABLE user_profiles (
    user_id      TEXT        PRIMARY KEY,
    -- The profile as submitted (names, e-mail, ...).
    profile      JSONB       NOT NULL,
    -- Random salt of the commitment; the commitment is SHA-256(salt || profile).
    salt         BYTEA       NOT NULL,
    commitment   TEXT        NOT NULL,
    -- The outbox command that created the user (idempotency of the POST).
    command_id   UUID        NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wallets: the treasury (SystemBootstrapped), one per user (UserCreated; wallet id =
-- user id) and multi-signature wallets (MultisigWalletCreated).
CREATE TABLE wallets (
    wallet_id      TEXT           PRIMARY KEY,
    kind           TEXT           NOT NULL CHECK (kind IN ('treasury', 'user', 'multisig')),
    balance        NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- Approvals needed to spend: NULL for single-owner wallets.
    threshold      INTEGER        CHECK (threshold IS NULL OR threshold >= 1),
    channel        TEXT           NOT NULL,
    created_tx_id  TEXT           NOT NULL,
    created_block  BIGINT         NOT NULL CHECK (created_block >= 0),
    created_at     TIMESTAMPTZ    NOT NULL,
    -- Block of the last change to this row (balance, owners).
    updated_block  BIGINT         NOT NULL CHECK (updated_block >= 0),
    updated_at     TIMESTAMPTZ    NOT NULL,
    CHECK ((kind = 'multisig') = (threshold IS NOT NULL)),
    UNIQUE (channel, created_tx_id)
);

-- Owners of a wallet: the user for a user wallet, every owner for a multisig one.
CREATE TABLE wallet_owners (
    wallet_id  TEXT NOT NULL REFERENCES wallets (wallet_id) ON DELETE CASCADE,
    owner_id   TEXT NOT NULL,
    PRIMARY KEY (wallet_id, owner_id)
);
-- "Wallets this user owns or co-owns".
CREATE INDEX wallet_owners_by_owner ON wallet_owners (owner_id, wallet_id);

-- Transfers, one row per ledger transaction that moved funds: TokensTransferred,
-- the approval that executed a multisig proposal (TransferApproved), and the
-- initial mint (SystemBootstrapped, from_wallet_id NULL).
CREATE TABLE transfers (
    channel         TEXT           NOT NULL,
    tx_id           TEXT           NOT NULL,
    -- Client-chosen transfer id, or the proposal id for a multisig transfer, or
    -- the treasury wallet id for the mint.
    transfer_id     TEXT           NOT NULL,
    kind            TEXT           NOT NULL CHECK (kind IN ('transfer', 'multisig', 'mint')),
    from_wallet_id  TEXT,
    to_wallet_id    TEXT           NOT NULL,
    amount          NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    memo            TEXT,
    proposal_id     TEXT,
    block_number    BIGINT         NOT NULL CHECK (block_number >= 0),
    tx_index        INTEGER        NOT NULL CHECK (tx_index >= 0),
    tx_timestamp    TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (channel, tx_id),
    UNIQUE (channel, transfer_id, kind),
    CHECK ((kind = 'mint') = (from_wallet_id IS NULL)),
    CHECK ((kind = 'multisig') = (proposal_id IS NOT NULL))
);
-- "Status of transfer X" lookups by the client-chosen id.
CREATE INDEX transfers_by_transfer_id ON transfers (transfer_id);

-- Wallet history: both sides of every transfer, one row per (wallet, side), so a
-- wallet's history is one index range scan.
CREATE TABLE wallet_history (
    wallet_id               TEXT           NOT NULL,
    channel                 TEXT           NOT NULL,
    tx_id                   TEXT           NOT NULL,
    direction               TEXT           NOT NULL CHECK (direction IN ('debit', 'credit')),
    counterparty_wallet_id  TEXT,
    amount                  NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    memo                    TEXT,
    block_number            BIGINT         NOT NULL CHECK (block_number >= 0),
    tx_index                INTEGER        NOT NULL CHECK (tx_index >= 0),
    tx_timestamp            TIMESTAMPTZ    NOT NULL,
    -- A self-transfer has a debit and a credit row for the same wallet.
    PRIMARY KEY (wallet_id, channel, tx_id, direction),
    FOREIGN KEY (channel, tx_id) REFERENCES transfers (channel, tx_id) ON DELETE CASCADE
);
-- GET /wallets/{id}/transactions: newest first, keyset-paginated on
-- (block_number, tx_index).
CREATE INDEX wallet_history_by_wallet_newest
    ON wallet_history (wallet_id, block_number DESC, tx_index DESC);
-- Joins from transfers to their two history rows (and the cascade).
CREATE INDEX wallet_history_by_tx ON wallet_history (channel, tx_id);

-- Multi-signature transfer proposals (TransferProposed), and their state as
-- approvals and rejections arrive.
CREATE TABLE proposals (
    proposal_id      TEXT           PRIMARY KEY,
    wallet_id        TEXT           NOT NULL REFERENCES wallets (wallet_id),
    to_wallet_id     TEXT           NOT NULL,
    amount           NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    memo             TEXT,
    state            TEXT           NOT NULL CHECK (state IN ('pending', 'executed', 'rejected')),
    -- The wallet's threshold when the proposal was made.
    threshold        INTEGER        NOT NULL CHECK (threshold >= 1),
    approval_count   INTEGER        NOT NULL DEFAULT 0 CHECK (approval_count >= 0),
    rejection_count  INTEGER        NOT NULL DEFAULT 0 CHECK (rejection_count >= 0),
    channel          TEXT           NOT NULL,
    created_tx_id    TEXT           NOT NULL,
    created_block    BIGINT         NOT NULL CHECK (created_block >= 0),
    created_at       TIMESTAMPTZ    NOT NULL,
    -- The transaction that executed or rejected it.
    closed_tx_id     TEXT,
    closed_block     BIGINT         CHECK (closed_block >= 0),
    closed_at        TIMESTAMPTZ,
    CHECK ((state = 'pending') = (closed_tx_id IS NULL)),
    UNIQUE (channel, created_tx_id)
);
-- "Pending proposals of wallet W", newest first.
CREATE INDEX proposals_by_wallet_state ON proposals (wallet_id, state, created_block DESC);

-- Decisions on proposals: one per approver; the transaction id is unique so a
-- replayed block cannot record a decision twice.
CREATE TABLE proposal_decisions (
    proposal_id   TEXT        NOT NULL REFERENCES proposals (proposal_id) ON DELETE CASCADE,
    approver_id   TEXT        NOT NULL,
    decision      TEXT        NOT NULL CHECK (decision IN ('approve', 'reject')),
    channel       TEXT        NOT NULL,
    tx_id         TEXT        NOT NULL,
    block_number  BIGINT      NOT NULL CHECK (block_number >= 0),
    tx_timestamp  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (proposal_id, approver_id),
    UNIQUE (channel, tx_id)
);
-- "Proposals this owner has decided on".
CREATE INDEX proposal_decisions_by_approver ON proposal_decisions (approver_id);
