//! The checkpoint log: the chain of blocks the projector has applied.
