//! Generates the tonic client and server for Fabric's peer `Deliver` service
//! (`peer/events.proto`, package `protos`), which the `fabric-sdk` crate does not ship.
//!
//! The messages are hand-written prost structs in `src/proto.rs` (same field numbers and
//! types as Fabric's `events.proto`); only the service plumbing is generated here, with
//! `tonic_build::manual`, so no `.proto` file is needed. The gRPC paths are
//! `/protos.Deliver/Deliver`, `/protos.Deliver/DeliverFiltered` and
//! `/protos.Deliver/DeliverWithPrivateData`, exactly as a Fabric peer serves them.

use tonic_build::manual::{Builder, Method, Service};

fn deliver_method(name: &str, route: &str, doc: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .comment(doc)
        .input_type("::fabric_sdk::fabric::common::Envelope")
        .output_type("crate::proto::DeliverResponse")
        .codec_path("::tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let deliver = Service::builder()
        .name("Deliver")
        .package("protos")
        .comment("Fabric peer Deliver service (peer/events.proto).")
        .method(deliver_method(
            "deliver",
            "Deliver",
            "Full blocks: the first request is an Envelope of type DELIVER_SEEK_INFO carrying a SeekInfo.",
        ))
        .method(deliver_method(
            "deliver_filtered",
            "DeliverFiltered",
            "Filtered blocks (transaction ids, types, validation codes, chaincode events without payload).",
        ))
        .method(deliver_method(
            "deliver_with_private_data",
            "DeliverWithPrivateData",
            "Blocks together with the private data the caller is entitled to.",
        ))
        .build();
    Builder::new()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile(&[deliver]);
}
