-- V3: the projector's write path — no foreign keys between projected tables, and no
-- index that no query uses.
--
-- Every read-model row is written by the block projector alone, inside the block's one
-- transaction, from rows it derives from each other: a transfer's history rows come from
-- the transfer rows the same statement inserted (joined on their RETURNING), and owners,
-- proposals and decisions are checked against their wallet or proposal by the projector
-- (an insert or update whose row count is not the expected one refuses the block).
--
-- The foreign keys re-checked that with one lookup per row, through a plan PostgreSQL
-- caches per connection on first use. On fresh tables (a new database, or the shadow
-- schema of `gxd projections rebuild`) that plan is a sequential scan, so each check
-- cost more as the table grew: measured on a 15,000-transaction catch-up, the history
-- check alone took 0.13-0.9 ms per row, up to 95% of a block's time. Nothing deletes
-- from these tables, so the cascades had no user either.
ALTER TABLE wallet_owners DROP CONSTRAINT wallet_owners_wallet_id_fkey;
ALTER TABLE wallet_history DROP CONSTRAINT wallet_history_channel_tx_id_fkey;
ALTER TABLE proposals DROP CONSTRAINT proposals_wallet_id_fkey;
ALTER TABLE proposal_decisions DROP CONSTRAINT proposal_decisions_proposal_id_fkey;

-- Each index is written for every row of a catch-up; these had no reader.
-- wallet_history: the unique wallet_history_by_wallet_newest (wallet, block, tx index,
-- direction) is the key the history is read by and already makes a row unique (a
-- transaction has one position; a transfer's tx id is unique in `transfers`, whose
-- rows the history rows are joined from), so the old key and the by-tx index go.
ALTER TABLE wallet_history DROP CONSTRAINT wallet_history_pkey;
DROP INDEX wallet_history_by_tx;
-- transfers: lookups by transfer id go through UNIQUE (channel, transfer_id, kind).
DROP INDEX transfers_by_transfer_id;

-- Wallet balances change with every transfer (two rows per transfer): with room left on
-- each page the update stays on the page and skips the indexes (a HOT update) instead of
-- inserting into every wallet index. New pages only; existing ones fill as they change.
ALTER TABLE wallets SET (fillfactor = 50);
