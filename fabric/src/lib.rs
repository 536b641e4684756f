//! Fabric protocol for gxd: protos, MSP identity, transactions, blocks, the Gateway client
//! and the block stream. The devnet (a Fabric-compatible peer with the GX chaincode built in)
//! is the separate crate `gxd-devnet` (`fabric/devnet/`), built on this one.
//!
//! Codemap:
//! - [`proto`]: every Fabric protobuf message and gRPC stub gxd uses (re-exported from
//!   `fabric-sdk`, plus the peer Deliver service written here).
//! - [`identity`]: MSP identities, signing (low-S ECDSA P-256), signature and certificate checks.
//! - [`tx`]: transaction ids, proposals, transaction envelopes, seek envelopes.
//! - [`block`]: block header/data hashes and a typed view of committed blocks.
//! - [`tls`]: TLS connections to peers with failover.
//! - [`client`]: the Gateway client (evaluate, endorse, submit, commit status) and its errors.
//! - [`stream`]: the verified, self-reconnecting Deliver block stream.

pub mod block;
pub mod client;
pub mod identity;
pub mod proto;
pub mod stream;
pub mod tls;
pub mod tx;

#[cfg(test)]
mod test_support;
