//! Fabric protocol for gxd: protos, MSP identity, Gateway client, block stream,
//! and the devnet (a Fabric-compatible peer with the GX chaincode built in).
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
//! - [`devnet`]: a Fabric-compatible peer for development and tests.

pub mod block;
pub mod client;
pub mod identity;
pub mod proto;
pub mod stream;
pub mod tls;
pub mod tx;

pub mod devnet;

#[cfg(test)]
mod test_support;
