//! A round of the writer: an in-memory overlay of pending writes over the database.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::{ReadOptions, WriteBatch};

use super::extension::{Extension, View};
use super::writer::WriterState;
use super::{Cf, RawDb, cf_handle};
use crate::error::Result;

/// One family's pending writes: key → (the round's tag, the value; `None`: deleted).
type Pending = BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

/// What a family without pending writes has pending.
static NOTHING_PENDING: Pending = BTreeMap::new();

/// Writes not yet known to be on disk, per column family (in the order the families were
/// registered), tagged with their round: the round in flight and the round being prepared.
/// The round being prepared reads through them, so it can be prepared while the previous
/// one is being synced.
pub(super) struct Overlay {
    families: Vec<(Cf, Pending)>,
}

impl Overlay {
    /// An empty overlay over `families`.
    pub(super) fn new(families: &[Cf]) -> Overlay {
        Overlay {
            families: families.iter().map(|&cf| (cf, Pending::new())).collect(),
        }
    }

    fn family(&self, cf: Cf) -> &Pending {
        self.families
            .iter()
            .find(|(f, _)| f.name() == cf.name())
            .map_or(&NOTHING_PENDING, |(_, pending)| pending)
    }

    /// A family's pending writes; one that was not registered gets a place too (its batch
    /// then fails: RocksDB has no such family).
    fn family_mut(&mut self, cf: Cf) -> &mut Pending {
        let at = match self
            .families
            .iter()
            .position(|(f, _)| f.name() == cf.name())
        {
            Some(at) => at,
            None => {
                self.families.push((cf, Pending::new()));
                self.families.len() - 1
            }
        };
        &mut self.families[at].1
    }

    /// The round `tag` is on disk: its entries are now the database's.
    pub(super) fn settle(&mut self, tag: u64) {
        for (_, pending) in &mut self.families {
            pending.retain(|_, (t, _)| *t > tag);
        }
    }

    /// A write failed: forget everything.
    pub(super) fn clear(&mut self) {
        for (_, pending) in &mut self.families {
            pending.clear();
        }
    }
}

/// An undo entry of a round.
enum Undo {
    /// Family, key, and what the overlay held for the key before.
    Kv(Cf, Vec<u8>, Option<(u64, Option<Vec<u8>>)>),
    /// The last change to the extension at this position to take back.
    Extension(usize),
}

/// One round of the writer: its pending writes over the database.
///
/// Reads see the database plus the writes of the round in flight plus the round's own
/// writes (the writer is the only one writing, so that is the current state). Writes are
/// buffered and become one atomic, synced `WriteBatch`; a savepoint/rollback pair undoes
/// one change's writes when it fails half-way.
pub(crate) struct Round<'a> {
    raw: &'a RawDb,
    state: &'a mut WriterState,
    tag: u64,
    /// For rollback.
    undo: Vec<Undo>,
}

impl<'a> Round<'a> {
    pub(super) fn new(raw: &'a RawDb, state: &'a mut WriterState, tag: u64) -> Self {
        Round {
            raw,
            state,
            tag,
            undo: Vec::new(),
        }
    }

    /// Extension `E` as this round sees it: committed, in flight, and this round's delta.
    pub(crate) fn extension<E: Extension>(&self) -> Result<View<'_, E>> {
        self.state.extensions.view::<E>()
    }

    /// Records a change to extension `E` in this round's delta: seen by the rest of the
    /// round, undone with the change of the round that makes it if that one fails, and
    /// committed with the round's batch once that is durable.
    pub(crate) fn change<E: Extension>(&mut self, change: E::Change) -> Result<()> {
        let at = self.state.extensions.change::<E>(change)?;
        self.undo.push(Undo::Extension(at));
        Ok(())
    }

    pub(super) fn savepoint(&self) -> usize {
        self.undo.len()
    }

    pub(super) fn rollback(&mut self, savepoint: usize) {
        while self.undo.len() > savepoint {
            let Some(undo) = self.undo.pop() else {
                break;
            };
            match undo {
                Undo::Kv(cf, key, before) => {
                    let map = self.state.overlay.family_mut(cf);
                    match before {
                        Some(value) => {
                            map.insert(key, value);
                        }
                        None => {
                            map.remove(&key);
                        }
                    }
                }
                Undo::Extension(at) => self.state.extensions.revert_last(at),
            }
        }
    }

    fn set(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        let before = self
            .state
            .overlay
            .family_mut(cf)
            .insert(key.clone(), (self.tag, value));
        self.undo.push(Undo::Kv(cf, key, before));
    }

    /// Buffers a put.
    pub(crate) fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.set(cf, key, Some(value));
    }

    /// Buffers a delete.
    pub(crate) fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.set(cf, key, None);
    }

    fn pending(&self, cf: Cf) -> &Pending {
        self.state.overlay.family(cf)
    }

    /// Reads a key: a pending write if any, else the database.
    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some((_, pending)) = self.pending(cf).get(key) {
            return Ok(pending.clone());
        }
        let handle = cf_handle(self.raw, cf)?;
        Ok(self.raw.get_pinned_cf(handle, key)?.map(|v| v.to_vec()))
    }

    /// Whether a key exists (pending writes included).
    pub(crate) fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        if let Some((_, pending)) = self.pending(cf).get(key) {
            return Ok(pending.is_some());
        }
        let handle = cf_handle(self.raw, cf)?;
        Ok(self.raw.get_pinned_cf(handle, key)?.is_some())
    }

    /// The first live entry with `lower <= key < upper` (pending writes included).
    pub(crate) fn first_in_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan_range(cf, lower, upper, 1)?.into_iter().next())
    }

    /// Up to `limit` live entries with `lower <= key < upper`, in key order (pending
    /// writes included).
    pub(crate) fn scan_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if limit == 0 || lower >= upper {
            return Ok(out);
        }
        let range = (Bound::Included(lower), Bound::Excluded(upper));
        let mut pending = self.pending(cf).range::<[u8], _>(range).peekable();

        let handle = cf_handle(self.raw, cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut it = self.raw.raw_iterator_cf_opt(handle, ro);
        it.seek(lower);
        loop {
            if out.len() >= limit {
                break;
            }
            let db_item = it.item();
            let next_pending = pending.peek().map(|(k, (_, v))| (*k, v));
            match (db_item, next_pending) {
                (None, None) => break,
                (Some((dk, dv)), None) => {
                    out.push((dk.to_vec(), dv.to_vec()));
                    it.next();
                }
                (None, Some((pk, pv))) => {
                    if let Some(v) = pv {
                        out.push((pk.to_vec(), v.to_vec()));
                    }
                    pending.next();
                }
                (Some((dk, dv)), Some((pk, pv))) => {
                    if dk < pk.as_slice() {
                        out.push((dk.to_vec(), dv.to_vec()));
                        it.next();
                    } else {
                        // The pending write shadows the database entry with the same key.
                        if dk == pk.as_slice() {
                            it.next();
                        }
                        if let Some(v) = pv {
                            out.push((pk.to_vec(), v.to_vec()));
                        }
                        pending.next();
                    }
                }
            }
        }
        it.status()?;
        Ok(out)
    }

    /// The last live entry with `lower <= key < upper` (pending writes included).
    pub(crate) fn last_in_range(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if lower >= upper {
            return Ok(None);
        }
        let range = (Bound::Included(lower), Bound::Excluded(upper));
        let pending_last = self
            .pending(cf)
            .range::<[u8], _>(range)
            .rev()
            .find_map(|(k, (_, v))| v.as_ref().map(|v| (k.clone(), v.clone())));
        // The database's last entry not deleted by a pending write.
        let handle = cf_handle(self.raw, cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        let mut it = self.raw.raw_iterator_cf_opt(handle, ro);
        it.seek_to_last();
        let mut db_last = None;
        while let Some((k, v)) = it.item() {
            match self.pending(cf).get(k) {
                Some((_, None)) => it.prev(),
                _ => {
                    db_last = Some((k.to_vec(), v.to_vec()));
                    break;
                }
            }
        }
        it.status()?;
        Ok(match (pending_last, db_last) {
            (Some(p), Some(d)) => Some(if p.0 >= d.0 { p } else { d }),
            (p, d) => p.or(d),
        })
    }

    /// This round's writes as one batch; `None` when it has none.
    pub(super) fn batch(&self) -> Result<Option<WriteBatch>> {
        let mut batch = WriteBatch::default();
        for (cf, pending) in &self.state.overlay.families {
            let mut handle = None;
            for (key, (tag, value)) in pending {
                if *tag != self.tag {
                    continue;
                }
                let h = match handle {
                    Some(h) => h,
                    None => {
                        let h = cf_handle(self.raw, *cf)?;
                        handle = Some(h);
                        h
                    }
                };
                match value {
                    Some(v) => batch.put_cf(h, key, v),
                    None => batch.delete_cf(h, key),
                }
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use rocksdb::WriteOptions;

    use super::super::Usage;
    use super::super::extension::{Extensions, Registration};
    use super::super::tests::put_raw;
    use super::super::writer::write_synced;
    use super::*;

    /// Two families of this test's own.
    const A: Cf = Cf::new("a", Usage::Queue);
    const B: Cf = Cf::new("b", Usage::Small { compress: false });

    fn raw_db(dir: &Path) -> RawDb {
        super::super::tests::raw_db(dir, &[A, B])
    }

    /// A test extension: a sum of the changes committed.
    struct Sum(i64);

    impl Extension for Sum {
        type Delta = i64;
        type Change = i64;
        fn open(_: &RawDb) -> Result<Self> {
            Ok(Sum(0))
        }
        fn apply(delta: &mut i64, change: &i64) {
            *delta += change;
        }
        fn revert(delta: &mut i64, change: i64) {
            *delta -= change;
        }
        fn commit(&mut self, delta: i64) {
            self.0 += delta;
        }
    }

    fn state(raw: &RawDb) -> WriterState {
        WriterState {
            overlay: Overlay::new(&[A, B]),
            extensions: Extensions::open(raw, &[Registration::of::<Sum>()]).unwrap(),
        }
    }

    /// (committed, in flight, this round) of the test extension.
    fn sums(round: &Round<'_>) -> (i64, i64, i64) {
        let v = round.extension::<Sum>().unwrap();
        (v.committed.0, *v.in_flight, *v.round)
    }

    #[test]
    fn round_reads_merge_pending_writes_over_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_db(dir.path());
        for k in [b"a1", b"a3", b"a5", b"b1"] {
            put_raw(&raw, A, k, b"db");
        }
        let mut state = state(&raw);
        let mut round = Round::new(&raw, &mut state, 1);
        round.put(A, b"a2".to_vec(), b"new".to_vec());
        round.delete(A, b"a3".to_vec());
        round.put(A, b"a5".to_vec(), b"changed".to_vec());
        round.put(B, b"a4".to_vec(), b"other cf".to_vec());

        let all = round.scan_range(A, b"a", b"b", 100).unwrap();
        let keys: Vec<(&[u8], &[u8])> = all
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&b"a1"[..], &b"db"[..]),
                (b"a2", b"new"),
                (b"a5", b"changed")
            ]
        );
        assert_eq!(round.scan_range(A, b"a", b"b", 2).unwrap().len(), 2);
        assert_eq!(
            round.first_in_range(A, b"a2", b"b").unwrap().unwrap().0,
            b"a2"
        );
        assert_eq!(
            round.last_in_range(A, b"a", b"b").unwrap().unwrap(),
            (b"a5".to_vec(), b"changed".to_vec())
        );
        round.delete(A, b"a5".to_vec());
        assert_eq!(
            round.last_in_range(A, b"a", b"b").unwrap().unwrap().0,
            b"a2"
        );
        assert!(!round.contains(A, b"a3").unwrap());
        assert_eq!(round.get(A, b"a1").unwrap(), Some(b"db".to_vec()));
        assert!(round.scan_range(A, b"c", b"d", 10).unwrap().is_empty());
    }

    #[test]
    fn rollback_undoes_only_the_failed_change() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_db(dir.path());
        put_raw(&raw, B, b"k", b"db");
        let mut state = state(&raw);
        let mut round = Round::new(&raw, &mut state, 1);
        round.put(B, b"k".to_vec(), b"first".to_vec());
        let sp = round.savepoint();
        round.put(B, b"k".to_vec(), b"second".to_vec());
        round.delete(B, b"k".to_vec());
        round.put(B, b"x".to_vec(), b"new".to_vec());
        round.rollback(sp);
        assert_eq!(round.get(B, b"k").unwrap(), Some(b"first".to_vec()));
        assert_eq!(round.get(B, b"x").unwrap(), None);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let batch = round.batch().unwrap().unwrap();
        write_synced(&raw, batch, &sync).0.unwrap();
        let meta = cf_handle(&raw, B).unwrap();
        assert_eq!(raw.get_cf(meta, b"k").unwrap(), Some(b"first".to_vec()));
        assert_eq!(raw.get_cf(meta, b"x").unwrap(), None);
    }

    #[test]
    fn extension_changes_roll_back_and_commit_only_when_durable() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_db(dir.path());
        let mut state = state(&raw);
        let mut round = Round::new(&raw, &mut state, 1);
        round.change::<Sum>(5).unwrap();
        let sp = round.savepoint();
        round.change::<Sum>(7).unwrap();
        round.put(A, b"k".to_vec(), Vec::new());
        round.change::<Sum>(11).unwrap();
        assert_eq!(sums(&round), (0, 0, 23));
        round.rollback(sp);
        assert_eq!(sums(&round), (0, 0, 5));
        drop(round);

        // Round 1 goes in flight; round 2 sees it but it is not committed yet.
        state.extensions.launch();
        let mut round = Round::new(&raw, &mut state, 2);
        assert_eq!(sums(&round), (0, 5, 0));
        round.change::<Sum>(2).unwrap();
        drop(round);
        // Round 1 is durable: committed; round 2 is still being prepared.
        state.settle(1);
        let round = Round::new(&raw, &mut state, 2);
        assert_eq!(sums(&round), (5, 0, 2));
        drop(round);
        // Round 2 goes in flight and its write fails: dropped.
        state.extensions.launch();
        state.reset();
        let round = Round::new(&raw, &mut state, 3);
        assert_eq!(sums(&round), (5, 0, 0));
        assert!(round.extension::<Unregistered>().is_err());
    }

    struct Unregistered;

    impl Extension for Unregistered {
        type Delta = ();
        type Change = ();
        fn open(_: &RawDb) -> Result<Self> {
            Ok(Unregistered)
        }
        fn apply(_: &mut (), _: &()) {}
        fn revert(_: &mut (), _: ()) {}
        fn commit(&mut self, _: ()) {}
    }
}
