//! The devnet ledger: blocks, the transaction index and the world state, in one RocksDB
//! under `DIR/ledger` with one column family each. A block is committed with one
//! `WriteBatch` written with `sync`, so a crash leaves either the whole block (its bytes,
//! its transactions in the index, its valid writes in the state, the new height) or none of it.
//!
//! Records carry a leading format byte so they can evolve:
//! - `txids`: txid → `[1][block u64 BE][tx index u32 BE][validation code u8]`
//! - `state`: namespace ‖ 0x00 ‖ key → `[1][block u64 BE][tx u64 BE][value…]`
//! - `blocks`: block number u64 BE → the `common.Block` protobuf bytes
//! - `meta`: `height` → u64 BE

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRawIteratorWithThreadMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

const CF_BLOCKS: &str = "blocks";
const CF_TXIDS: &str = "txids";
const CF_STATE: &str = "state";
const CF_META: &str = "meta";
const KEY_HEIGHT: &[u8] = b"height";
const FORMAT_V1: u8 = 1;

/// Ledger errors.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    #[error("corrupt {what} record")]
    Corrupt { what: &'static str },
    #[error("block {got} committed out of order (height is {height})")]
    OutOfOrder { got: u64, height: u64 },
}

/// Where a transaction id was first committed, and with which validation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxRecord {
    pub block: u64,
    pub index: u32,
    pub code: i32,
}

/// Version of a state entry: the (block, transaction) that last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Height {
    pub block: u64,
    pub tx: u64,
}

/// A state value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedValue {
    pub version: Height,
    pub value: Vec<u8>,
}

/// One write of a valid transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    pub namespace: String,
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    pub version: Height,
}

/// Everything one block commit changes.
#[derive(Debug, Clone, Default)]
pub struct BlockCommit {
    pub number: u64,
    pub block_bytes: Vec<u8>,
    /// Transactions to index (first occurrences only: duplicates keep the original's record).
    pub txs: Vec<(String, TxRecord)>,
    pub writes: Vec<StateWrite>,
}

/// The ledger store.
pub struct Ledger {
    db: DB,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

fn state_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn be_u64(bytes: &[u8], what: &'static str) -> Result<u64, LedgerError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| LedgerError::Corrupt { what })?;
    Ok(u64::from_be_bytes(arr))
}

fn encode_tx(rec: &TxRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.push(FORMAT_V1);
    v.extend_from_slice(&rec.block.to_be_bytes());
    v.extend_from_slice(&rec.index.to_be_bytes());
    v.push(u8::try_from(rec.code).unwrap_or(u8::MAX));
    v
}

fn decode_tx(bytes: &[u8]) -> Result<TxRecord, LedgerError> {
    const WHAT: &str = "transaction index";
    if bytes.len() != 14 || bytes[0] != FORMAT_V1 {
        return Err(LedgerError::Corrupt { what: WHAT });
    }
    let block = be_u64(&bytes[1..9], WHAT)?;
    let index: [u8; 4] = bytes[9..13]
        .try_into()
        .map_err(|_| LedgerError::Corrupt { what: WHAT })?;
    Ok(TxRecord {
        block,
        index: u32::from_be_bytes(index),
        code: i32::from(bytes[13]),
    })
}

fn encode_value(version: Height, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + value.len());
    v.push(FORMAT_V1);
    v.extend_from_slice(&version.block.to_be_bytes());
    v.extend_from_slice(&version.tx.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(bytes: &[u8]) -> Result<VersionedValue, LedgerError> {
    const WHAT: &str = "state";
    if bytes.len() < 17 || bytes[0] != FORMAT_V1 {
        return Err(LedgerError::Corrupt { what: WHAT });
    }
    Ok(VersionedValue {
        version: Height {
            block: be_u64(&bytes[1..9], WHAT)?,
            tx: be_u64(&bytes[9..17], WHAT)?,
        },
        value: bytes[17..].to_vec(),
    })
}

/// The state-CF bounds of a range query `[start, end)` in `namespace` (`end` empty: to the
/// end of the namespace), as Fabric's `GetStateRangeScanIterator`.
fn range_bounds(namespace: &str, start: &str, end: &str) -> (Vec<u8>, Vec<u8>) {
    let lower = state_key(namespace, start);
    let upper = if end.is_empty() {
        let mut u = namespace.as_bytes().to_vec();
        u.push(1);
        u
    } else {
        state_key(namespace, end)
    };
    (lower, upper)
}

/// At most `limit` entries of a raw iterator positioned at the range's start.
fn collect_range<D: rocksdb::DBAccess>(
    mut it: DBRawIteratorWithThreadMode<'_, D>,
    namespace: &str,
    limit: usize,
) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
    let prefix = namespace.len() + 1;
    let mut out = Vec::new();
    while it.valid() && out.len() < limit {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let key = k
            .get(prefix..)
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or(LedgerError::Corrupt { what: "state key" })?
            .to_owned();
        out.push((key, decode_value(v)?));
        it.next();
    }
    it.status()?;
    Ok(out)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_BLOCKS, CF_TXIDS, CF_STATE, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self { db })
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, LedgerError> {
        self.db
            .cf_handle(name)
            .ok_or(LedgerError::MissingColumnFamily(name))
    }

    /// Number of committed blocks.
    pub fn height(&self) -> Result<u64, LedgerError> {
        match self.db.get_cf(self.cf(CF_META)?, KEY_HEIGHT)? {
            Some(v) => be_u64(&v, "height"),
            None => Ok(0),
        }
    }

    /// The bytes of block `number`, if committed.
    pub fn block(&self, number: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.db.get_cf(self.cf(CF_BLOCKS)?, number.to_be_bytes())?)
    }

    /// Where a transaction id was first committed.
    pub fn tx(&self, tx_id: &str) -> Result<Option<TxRecord>, LedgerError> {
        match self.db.get_cf(self.cf(CF_TXIDS)?, tx_id.as_bytes())? {
            Some(v) => Ok(Some(decode_tx(&v)?)),
            None => Ok(None),
        }
    }

    /// The committed value of `key` in `namespace`.
    pub fn state(&self, namespace: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError> {
        match self
            .db
            .get_cf(self.cf(CF_STATE)?, state_key(namespace, key))?
        {
            Some(v) => Ok(Some(decode_value(&v)?)),
            None => Ok(None),
        }
    }

    /// At most `limit` committed entries of `namespace` with `start <= key < end` (`end`
    /// empty: no upper bound), in key order.
    pub fn range(
        &self,
        namespace: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
        let (lower, upper) = range_bounds(namespace, start, end);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_STATE)?, ro);
        it.seek(&lower);
        collect_range(it, namespace, limit)
    }

    /// A consistent point-in-time view of the world state (for one simulation).
    pub fn snapshot(&self) -> LedgerSnapshot<'_> {
        LedgerSnapshot {
            ledger: self,
            snapshot: self.db.snapshot(),
        }
    }

    /// Commits a block atomically and durably (one synced write batch).
    pub fn commit(&self, commit: &BlockCommit) -> Result<(), LedgerError> {
        let height = self.height()?;
        if commit.number != height {
            return Err(LedgerError::OutOfOrder {
                got: commit.number,
                height,
            });
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_BLOCKS)?,
            commit.number.to_be_bytes(),
            &commit.block_bytes,
        );
        let txids = self.cf(CF_TXIDS)?;
        for (tx_id, rec) in &commit.txs {
            batch.put_cf(txids, tx_id.as_bytes(), encode_tx(rec));
        }
        let state = self.cf(CF_STATE)?;
        for w in &commit.writes {
            let k = state_key(&w.namespace, &w.key);
            match &w.value {
                Some(v) => batch.put_cf(state, k, encode_value(w.version, v)),
                None => batch.delete_cf(state, k),
            }
        }
        batch.put_cf(
            self.cf(CF_META)?,
            KEY_HEIGHT,
            (commit.number + 1).to_be_bytes(),
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }
}

/// A RocksDB snapshot of the ledger: reads see exactly one committed height.
pub struct LedgerSnapshot<'a> {
    ledger: &'a Ledger,
    snapshot: rocksdb::Snapshot<'a>,
}

impl LedgerSnapshot<'_> {
    /// [`Ledger::range`] as of the snapshot.
    pub fn range(
        &self,
        namespace: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, VersionedValue)>, LedgerError> {
        let (lower, upper) = range_bounds(namespace, start, end);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.ledger.cf(CF_STATE)?, ro);
        it.seek(&lower);
        collect_range(it, namespace, limit)
    }

    /// The value of `key` in `namespace` as of the snapshot.
    pub fn state(&self, namespace: &str, key: &str) -> Result<Option<VersionedValue>, LedgerError> {
        match self
            .snapshot
            .get_cf(self.ledger.cf(CF_STATE)?, state_key(namespace, key))?
        {
            Some(v) => Ok(Some(decode_value(&v)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn commit_n(ledger: &Ledger, n: u64, key_value: &str) {
        ledger
            .commit(&BlockCommit {
                number: n,
                block_bytes: vec![n as u8; 3],
                txs: vec![(
                    format!("tx{n}"),
                    TxRecord {
                        block: n,
                        index: 0,
                        code: 0,
                    },
                )],
                writes: vec![StateWrite {
                    namespace: "gx".into(),
                    key: "k".into(),
                    value: Some(key_value.as_bytes().to_vec()),
                    version: Height { block: n, tx: 0 },
                }],
            })
            .unwrap();
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = Ledger::open(dir.path()).unwrap();
            assert_eq!(ledger.height().unwrap(), 0);
            commit_n(&ledger, 0, "a");
            commit_n(&ledger, 1, "b");
        }
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.height().unwrap(), 2);
        assert_eq!(ledger.block(1).unwrap().unwrap(), vec![1, 1, 1]);
        assert_eq!(ledger.block(2).unwrap(), None);
        assert_eq!(
            ledger.tx("tx1").unwrap(),
            Some(TxRecord {
                block: 1,
                index: 0,
                code: 0
            })
        );
        let v = ledger.state("gx", "k").unwrap().unwrap();
        assert_eq!(v.value, b"b");
        assert_eq!(v.version, Height { block: 1, tx: 0 });
        assert_eq!(ledger.state("other", "k").unwrap(), None);
    }

    #[test]
    fn refuses_out_of_order_blocks_and_deletes_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let err = ledger
            .commit(&BlockCommit {
                number: 3,
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, LedgerError::OutOfOrder { got: 3, height: 0 }));
        commit_n(&ledger, 0, "a");
        ledger
            .commit(&BlockCommit {
                number: 1,
                block_bytes: vec![],
                txs: vec![],
                writes: vec![StateWrite {
                    namespace: "gx".into(),
                    key: "k".into(),
                    value: None,
                    version: Height { block: 1, tx: 0 },
                }],
            })
            .unwrap();
        assert_eq!(ledger.state("gx", "k").unwrap(), None);
        assert_eq!(ledger.height().unwrap(), 2);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode_tx(&[]).is_err());
        assert!(decode_tx(&[2; 14]).is_err());
        assert!(decode_value(&[1; 5]).is_err());
        assert!(decode_value(&[9; 20]).is_err());
        let rec = TxRecord {
            block: 7,
            index: 3,
            code: 11,
        };
        assert_eq!(decode_tx(&encode_tx(&rec)).unwrap(), rec);
    }
}
