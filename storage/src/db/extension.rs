//! Writer-side state of a module, changed by rounds and committed only when they are durable.
//!
//! A module may keep state in memory beside the database, on the writer thread: a mirror of
//! a column family, say, so that a change need not seek (the outbox mirrors the length of
//! every partition queue, so that an enqueue learns whether its partition is empty without
//! an iterator seek). It implements [`Extension`] and registers it in its
//! [`Schema`](super::Schema); the database knows nothing of what the state means. The
//! writer holds three layers of each extension:
//! - the **committed** state: what is on disk as of the last durable batch, loaded at open
//!   by [`Extension::open`];
//! - the delta of the round **in flight** (its batch is being synced);
//! - the delta of the **round** being prepared, changed through [`Round::change`] (so the
//!   next changes of the round see it) and undone with the change that made it when that
//!   change fails (rollback to its savepoint).
//!
//! A round's delta is handed to [`Extension::commit`], the on-commit hook, only once the
//! round's batch is durable. If the batch fails, or the round in flight below it fails, the
//! delta is dropped; a round that writes nothing drops its delta too. So the committed
//! state changes only with what is on disk.
//!
//! [`Round::change`]: super::Round::change

use std::any::Any;

use super::RawDb;
use crate::error::{Result, StorageError};

/// State a module keeps on the writer thread, in step with the database (see the module
/// docs).
pub(crate) trait Extension: Sized + Send + 'static {
    /// A round's changes; `Default` is "none".
    type Delta: Default + Send + 'static;
    /// One change, as a round records it in its delta and as rollback takes it back.
    type Change: Send + 'static;

    /// The committed state of a database just opened (blocking; before the writer starts).
    fn open(raw: &RawDb) -> Result<Self>;

    /// Records `change` in a round's delta.
    fn apply(delta: &mut Self::Delta, change: &Self::Change);

    /// Takes `change`, the last one recorded and not yet taken back, out of a round's delta
    /// again (the change of the round that made it failed).
    fn revert(delta: &mut Self::Delta, change: Self::Change);

    /// The on-commit hook: a round's delta, called by the writer only once that round's
    /// batch is durable, in the order the rounds were written.
    fn commit(&mut self, delta: Self::Delta);
}

/// An extension as a round sees it: the committed state, the delta of the round in flight
/// (not yet durable), and the round's own delta so far.
pub(crate) struct View<'a, E: Extension> {
    /// As on disk.
    pub(crate) committed: &'a E,
    /// The round being synced.
    pub(crate) in_flight: &'a E::Delta,
    /// This round.
    pub(crate) round: &'a E::Delta,
}

/// How to open an extension, as registered in a [`Schema`](super::Schema).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration(fn(&RawDb) -> Result<Box<dyn AnyLayers>>);

impl Registration {
    /// The registration of `E`.
    pub(crate) const fn of<E: Extension>() -> Registration {
        Registration(open_layers::<E>)
    }
}

fn open_layers<E: Extension>(raw: &RawDb) -> Result<Box<dyn AnyLayers>> {
    Ok(Box::new(Layers::<E> {
        committed: E::open(raw)?,
        in_flight: E::Delta::default(),
        round: E::Delta::default(),
        undo: Vec::new(),
    }))
}

/// The three layers of one extension, and the changes of the round being prepared (for
/// rollback, last first).
struct Layers<E: Extension> {
    committed: E,
    in_flight: E::Delta,
    round: E::Delta,
    undo: Vec<E::Change>,
}

/// [`Layers`] of any extension, as the writer holds them.
pub(crate) trait AnyLayers: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Takes the round's last change back.
    fn revert_last(&mut self);
    /// The round being prepared goes in flight.
    fn launch(&mut self);
    /// The round in flight is durable: commit its delta.
    fn settle(&mut self);
    /// Forgets the round being prepared (it writes nothing or failed).
    fn discard_round(&mut self);
    /// A write failed: forgets the round in flight and the round being prepared.
    fn reset(&mut self);
}

impl<E: Extension> AnyLayers for Layers<E> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn revert_last(&mut self) {
        if let Some(change) = self.undo.pop() {
            E::revert(&mut self.round, change);
        }
    }

    fn launch(&mut self) {
        self.in_flight = std::mem::take(&mut self.round);
        self.undo.clear();
    }

    fn settle(&mut self) {
        self.committed.commit(std::mem::take(&mut self.in_flight));
    }

    fn discard_round(&mut self) {
        self.round = E::Delta::default();
        self.undo.clear();
    }

    fn reset(&mut self) {
        self.in_flight = E::Delta::default();
        self.discard_round();
    }
}

/// The registered extensions' layers, held by the writer.
pub(super) struct Extensions(Vec<Box<dyn AnyLayers>>);

impl Extensions {
    /// Opens every registered extension over a database just opened.
    pub(super) fn open<'a>(
        raw: &RawDb,
        registrations: impl IntoIterator<Item = &'a Registration>,
    ) -> Result<Extensions> {
        registrations
            .into_iter()
            .map(|r| (r.0)(raw))
            .collect::<Result<Vec<_>>>()
            .map(Extensions)
    }

    fn layers<E: Extension>(&self) -> Result<&Layers<E>> {
        self.0
            .iter()
            .find_map(|l| l.as_any().downcast_ref::<Layers<E>>())
            .ok_or_else(not_registered::<E>)
    }

    /// `E` as the round being prepared sees it.
    pub(super) fn view<E: Extension>(&self) -> Result<View<'_, E>> {
        let l = self.layers::<E>()?;
        Ok(View {
            committed: &l.committed,
            in_flight: &l.in_flight,
            round: &l.round,
        })
    }

    /// Records a change of the round being prepared; returns where `E` is, for
    /// [`Extensions::revert_last`].
    pub(super) fn change<E: Extension>(&mut self, change: E::Change) -> Result<usize> {
        let (at, l) = self
            .0
            .iter_mut()
            .enumerate()
            .find_map(|(at, l)| Some((at, l.as_any_mut().downcast_mut::<Layers<E>>()?)))
            .ok_or_else(not_registered::<E>)?;
        E::apply(&mut l.round, &change);
        l.undo.push(change);
        Ok(at)
    }

    /// Takes back the last change recorded for the extension at `at`.
    pub(super) fn revert_last(&mut self, at: usize) {
        if let Some(l) = self.0.get_mut(at) {
            l.revert_last();
        }
    }

    /// The round being prepared goes in flight.
    pub(super) fn launch(&mut self) {
        self.0.iter_mut().for_each(|l| l.launch());
    }

    /// The round in flight is durable.
    pub(super) fn settle(&mut self) {
        self.0.iter_mut().for_each(|l| l.settle());
    }

    /// The round being prepared is dropped.
    pub(super) fn discard_round(&mut self) {
        self.0.iter_mut().for_each(|l| l.discard_round());
    }

    /// A write failed: nothing but the committed state is left.
    pub(super) fn reset(&mut self) {
        self.0.iter_mut().for_each(|l| l.reset());
    }
}

/// `E` was not registered in any schema (a bug).
fn not_registered<E: Extension>() -> StorageError {
    StorageError::Unavailable {
        message: format!(
            "writer extension {} is not registered",
            std::any::type_name::<E>()
        ),
        source: None,
    }
}
