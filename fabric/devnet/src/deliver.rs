//! Fabric's peer Deliver service (`protos.Deliver`): Deliver (full blocks), DeliverFiltered
//! and DeliverWithPrivateData (the devnet has no private data: the map is empty).
//!
//! Each request on the stream is an Envelope of type DELIVER_SEEK_INFO carrying a SeekInfo,
//! signed by a channel member. Requests are served one after the other: blocks from the start
//! to the stop position, then a SUCCESS status. Refusals end the request with a status, as a
//! Fabric peer does: BAD_REQUEST (malformed), NOT_FOUND (unknown channel, or a block not yet
//! there with FAIL_IF_NOT_READY), FORBIDDEN (signature or creator), SERVICE_UNAVAILABLE
//! (devnet shutting down).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::blocks::filtered_block;
use super::faults::{self, Disposition, Rpc};
use super::node::Node;
use super::peer::check_envelope;
use gxd_fabric::proto::common::{self, Envelope, HeaderType};
use gxd_fabric::proto::deliver_server::Deliver;
use gxd_fabric::proto::orderer::{SeekInfo, seek_info, seek_position};
use gxd_fabric::proto::{BlockAndPrivateData, DeliverResponse, deliver_response};

/// What kind of blocks a Deliver stream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    Filtered,
    WithPrivateData,
}

/// The Deliver service implementation.
#[derive(Debug, Clone)]
pub struct DeliverService {
    node: Arc<Node>,
}

impl DeliverService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn open(
        &self,
        request: Request<Streaming<Envelope>>,
        kind: Kind,
    ) -> Result<Response<DeliverStream>, Status> {
        match faults::before(&self.node.faults, Rpc::Deliver).await {
            Disposition::Unavailable | Disposition::ProcessThenUnavailable => {
                return Err(Status::unavailable(
                    "devnet fault injection: peer unavailable",
                ));
            }
            Disposition::Drop | Disposition::ProcessThenDrop => {
                self.node.shutdown.cancelled().await;
                return Err(Status::unavailable("devnet is shutting down"));
            }
            Disposition::Normal => {}
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(serve_stream(Arc::clone(&self.node), inbound, kind, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type DeliverStream = Pin<Box<dyn Stream<Item = Result<DeliverResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Deliver for DeliverService {
    type DeliverStream = DeliverStream;
    type DeliverFilteredStream = DeliverStream;
    type DeliverWithPrivateDataStream = DeliverStream;

    async fn deliver(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<DeliverStream>, Status> {
        self.open(request, Kind::Full).await
    }

    async fn deliver_filtered(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<DeliverStream>, Status> {
        self.open(request, Kind::Filtered).await
    }

    async fn deliver_with_private_data(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<DeliverStream>, Status> {
        self.open(request, Kind::WithPrivateData).await
    }
}

type Tx = mpsc::Sender<Result<DeliverResponse, Status>>;

fn status(s: common::Status) -> DeliverResponse {
    DeliverResponse {
        r#type: Some(deliver_response::Type::Status(s as i32)),
    }
}

async fn serve_stream(node: Arc<Node>, mut inbound: Streaming<Envelope>, kind: Kind, tx: Tx) {
    loop {
        let next = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            next = inbound.next() => next,
        };
        let envelope = match next {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "deliver stream ended by the client");
                return;
            }
            Some(Ok(env)) => env,
        };
        match serve_request(&node, &envelope, kind, &tx).await {
            Ok(final_status) => {
                if tx.send(Ok(status(final_status))).await.is_err() {
                    return;
                }
            }
            Err(()) => return,
        }
    }
}

/// Serves one seek request. `Ok(status)` is the status to send after the blocks;
/// `Err(())` means the client went away.
async fn serve_request(
    node: &Arc<Node>,
    envelope: &Envelope,
    kind: Kind,
    tx: &Tx,
) -> Result<common::Status, ()> {
    let checked = {
        let node = Arc::clone(node);
        let env = envelope.clone();
        tokio::task::spawn_blocking(move || check_envelope(&node.msp, &env)).await
    };
    let (chdr, _, payload) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err((code, info))) => {
            tracing::warn!(%info, "deliver request refused");
            return Ok(
                if code == gxd_fabric::proto::protos::TxValidationCode::BadCreatorSignature {
                    common::Status::Forbidden
                } else {
                    common::Status::BadRequest
                },
            );
        }
        Err(_) => return Ok(common::Status::InternalServerError),
    };
    if chdr.r#type != HeaderType::DeliverSeekInfo as i32 {
        return Ok(common::Status::BadRequest);
    }
    if chdr.channel_id != node.channel.channel_id {
        return Ok(common::Status::NotFound);
    }
    let Ok(seek) = SeekInfo::decode(payload.data.as_slice()) else {
        return Ok(common::Status::BadRequest);
    };
    let height = node.height();
    let position =
        |p: Option<&gxd_fabric::proto::orderer::SeekPosition>, default: u64| -> Option<u64> {
            match p.and_then(|p| p.r#type.as_ref()) {
                None => Some(default),
                Some(seek_position::Type::Oldest(_)) => Some(0),
                Some(seek_position::Type::Newest(_)) => Some(height.saturating_sub(1)),
                Some(seek_position::Type::Specified(s)) => Some(s.number),
                Some(seek_position::Type::NextCommit(_)) => Some(height),
            }
        };
    let Some(start) = position(seek.start.as_ref(), height.saturating_sub(1)) else {
        return Ok(common::Status::BadRequest);
    };
    let Some(stop) = position(seek.stop.as_ref(), start) else {
        return Ok(common::Status::BadRequest);
    };
    if start > stop {
        return Ok(common::Status::BadRequest);
    }
    let fail_if_not_ready = seek.behavior == seek_info::SeekBehavior::FailIfNotReady as i32;
    tracing::debug!(start, stop, ?kind, "deliver request");
    let mut number = start;
    loop {
        if number >= node.height() {
            if fail_if_not_ready {
                return Ok(common::Status::NotFound);
            }
            tokio::select! {
                _ = tx.closed() => return Err(()),
                ready = node.wait_for_block(number) => if !ready {
                    return Ok(common::Status::ServiceUnavailable);
                },
            }
        }
        let block = match node.read_block(number) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(common::Status::NotFound),
            Err(e) => {
                tracing::error!(error = %e, block = number, "cannot read block");
                return Ok(common::Status::InternalServerError);
            }
        };
        let reply = match kind {
            Kind::Full => deliver_response::Type::Block(block),
            Kind::Filtered => deliver_response::Type::FilteredBlock(filtered_block(
                &node.channel.channel_id,
                &block,
            )),
            Kind::WithPrivateData => {
                deliver_response::Type::BlockAndPrivateData(BlockAndPrivateData {
                    block: Some(block),
                    private_data_map: Default::default(),
                })
            }
        };
        if tx
            .send(Ok(DeliverResponse {
                r#type: Some(reply),
            }))
            .await
            .is_err()
        {
            return Err(());
        }
        if number == stop {
            return Ok(common::Status::Success);
        }
        number += 1;
    }
}
