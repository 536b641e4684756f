//! Fabric protocol for gxd: protos, MSP identity, Gateway client, block stream,
//! and the devnet (a Fabric-compatible peer with the GX chaincode built in).

pub mod devnet;
