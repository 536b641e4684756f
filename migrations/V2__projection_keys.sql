-- V2: keys and tables the block projector needs.
--
-- Forward-only; applies to a V1 database holding data (every change below keeps the
-- existing rows valid).

-- applied_transactions is keyed by position, not by transaction id: a resubmitted
-- envelope commits a DUPLICATE_TXID copy in a later block (same tx id, another
-- position), and config or undecodable transactions may carry no id at all.
ALTER TABLE applied_transactions DROP CONSTRAINT applied_transactions_pkey;
ALTER TABLE applied_transactions
    DROP CONSTRAINT applied_transactions_channel_block_number_tx_index_key;
ALTER TABLE applied_transactions ADD PRIMARY KEY (channel, block_number, tx_index);
ALTER TABLE applied_transactions ALTER COLUMN tx_id DROP NOT NULL;
-- An undecodable transaction has no channel-header timestamp.
ALTER TABLE applied_transactions ALTER COLUMN tx_timestamp DROP NOT NULL;
-- What the projector did with it: 'applied' (a valid transaction whose event, if any,
-- was projected), 'invalid' (marked invalid in TRANSACTIONS_FILTER: nothing else
-- changed), 'dead_lettered' (a poison event, see projection_dead_letters).
ALTER TABLE applied_transactions
    ADD COLUMN outcome TEXT NOT NULL DEFAULT 'applied'
        CHECK (outcome IN ('applied', 'invalid', 'dead_lettered'));
-- "Was transaction X projected, and where": by id, several rows for a duplicate.
CREATE INDEX applied_transactions_by_tx_id ON applied_transactions (channel, tx_id);

-- Wallet history: a total order for the keyset cursor. (block_number, tx_index) names
-- a transaction; a self-transfer has two rows for one wallet there, told apart by
-- direction (the cursor is (block_number, tx_index, direction), all descending).
DROP INDEX wallet_history_by_wallet_newest;
CREATE UNIQUE INDEX wallet_history_by_wallet_newest
    ON wallet_history (wallet_id, block_number DESC, tx_index DESC, direction DESC);

-- The organization that owns a wallet or created a user (the chaincode's events
-- carry it): only its clients may spend from the wallet.
ALTER TABLE wallets ADD COLUMN msp_id TEXT;
ALTER TABLE users ADD COLUMN msp_id TEXT;

-- Poison transactions: a valid transaction whose event the projection could not
-- apply, recorded (under the dead-letter policy) instead of halting the projector.
-- The transaction is also in applied_transactions with outcome 'dead_lettered'.
CREATE TABLE projection_dead_letters (
    channel       TEXT        NOT NULL,
    block_number  BIGINT      NOT NULL CHECK (block_number >= 0),
    tx_index      INTEGER     NOT NULL CHECK (tx_index >= 0),
    tx_id         TEXT,
    event_name    TEXT,
    error         TEXT        NOT NULL,
    payload       BYTEA,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, block_number, tx_index)
);
CREATE INDEX projection_dead_letters_by_tx_id ON projection_dead_letters (channel, tx_id);
