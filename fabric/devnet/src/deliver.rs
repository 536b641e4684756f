//! Fabric's peer Deliver service (`protos.Deliver`): Deliver (full blocks), DeliverFiltered
//! and DeliverWithPrivateData (the devnet has no private data: the map is empty).
//!
//! Each request on the stream is an Envelope carrying a SeekInfo, signed by a reader of the
//! channel. Requests are served one after the other: blocks from the start to the stop
//! position, then a SUCCESS status. The checks and their order are those of Fabric's
//! `common/deliver/deliver.go` (`Handler.deliverBlocks`) with the peer's ACL
//! (`core/peer/deliverevents.go`: `event/Block`, `event/FilteredBlock` →
//! `/Channel/Application/Readers`):
//!
//! 1. payload, header or channel header does not decode → BAD_REQUEST;
//! 2. channel-header timestamp missing, or more than 15 minutes from the peer's clock
//!    (`peer.authentication.timewindow`) → BAD_REQUEST;
//! 3. channel not the devnet's → NOT_FOUND;
//! 4. signature header does not decode → BAD_REQUEST;
//! 5. creator invalid, signature wrong, or creator not a reader of the channel (an admin,
//!    peer or client of an application org; never the orderer org) → FORBIDDEN;
//! 6. SeekInfo does not decode, or has no start or no stop → BAD_REQUEST;
//! 7. start: Oldest = 0, Newest = height − 1, NextCommit = height, Specified(n) = n, but a
//!    Specified start above the height or a position without a type → NOT_FOUND (Fabric's
//!    `NotFoundErrorIterator`), at once and whatever the behaviour;
//! 8. stop: Oldest = the start; Newest = the start when start and stop are the same position,
//!    else height − 1 when the request arrives; Specified(n) = n, BAD_REQUEST when below the
//!    start; a stop without a type is 0 (as in Fabric, whose switch leaves `stopNum` unset);
//! 9. FAIL_IF_NOT_READY and the next block not yet committed → NOT_FOUND; with
//!    BLOCK_UNTIL_READY the request waits for it.
//!
//! After any status other than SUCCESS the server ends the stream (Fabric's `Handle` returns),
//! so no further request is read from it. SERVICE_UNAVAILABLE: devnet shutting down.

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
use gxd_fabric::proto::common::{self, ChannelHeader, Envelope, Payload, SignatureHeader};
use gxd_fabric::proto::deliver_server::Deliver;
use gxd_fabric::proto::orderer::{SeekInfo, SeekPosition, seek_info, seek_position};
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
                if final_status != common::Status::Success {
                    // Fabric's Handle returns after a non-SUCCESS status: the stream ends.
                    return;
                }
            }
            Err(()) => return,
        }
    }
}

/// Fabric's default `peer.authentication.timewindow`.
const TIME_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Fabric's `validateChannelHeader`: the timestamp must be within [`TIME_WINDOW`] of now.
fn check_timestamp(chdr: &ChannelHeader) -> Result<(), String> {
    let ts = chdr
        .timestamp
        .as_ref()
        .ok_or_else(|| "channel header in envelope must contain timestamp".to_owned())?;
    let env_nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0);
    if (now - env_nanos).abs() > i128::try_from(TIME_WINDOW.as_nanos()).unwrap_or(i128::MAX) {
        return Err(format!(
            "envelope timestamp is more than {}s apart from current server time",
            TIME_WINDOW.as_secs()
        ));
    }
    Ok(())
}

/// The session access control of Fabric's deliver handler: the envelope as signed data,
/// evaluated against `/Channel/Application/Readers`.
fn check_reader(node: &Node, env: &Envelope, payload: &Payload) -> Result<(), common::Status> {
    let header = payload.header.as_ref().ok_or(common::Status::BadRequest)?;
    let shdr = SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|_| common::Status::BadRequest)?;
    let creator = node.msp.deserialize(&shdr.creator).map_err(|e| {
        tracing::warn!(error = %e, "deliver refused: creator is not valid");
        common::Status::Forbidden
    })?;
    creator.verify(&env.payload, &env.signature).map_err(|e| {
        tracing::warn!(error = %e, "deliver refused: signature is not valid");
        common::Status::Forbidden
    })?;
    if !creator.is_channel_reader() {
        tracing::warn!(
            msp_id = creator.msp_id(),
            role = creator.role.as_str(),
            "deliver refused: creator is not a reader of the channel"
        );
        return Err(common::Status::Forbidden);
    }
    Ok(())
}

/// Where a seek starts, as Fabric's ledger `Iterator(start)` resolves it: `None` stands for
/// the `NotFoundErrorIterator` (a Specified start above the height, or no position type).
fn start_of(position: &SeekPosition, height: u64) -> Option<u64> {
    match position.r#type.as_ref()? {
        seek_position::Type::Oldest(_) => Some(0),
        seek_position::Type::Newest(_) => Some(height.saturating_sub(1)),
        seek_position::Type::Specified(s) if s.number > height => None,
        seek_position::Type::Specified(s) => Some(s.number),
        seek_position::Type::NextCommit(_) => Some(height),
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
    let Ok(payload) = Payload::decode(envelope.payload.as_slice()) else {
        return Ok(common::Status::BadRequest);
    };
    let Some(header) = payload.header.as_ref() else {
        return Ok(common::Status::BadRequest);
    };
    let Ok(chdr) = ChannelHeader::decode(header.channel_header.as_slice()) else {
        return Ok(common::Status::BadRequest);
    };
    if let Err(e) = check_timestamp(&chdr) {
        tracing::warn!(error = %e, "deliver request refused");
        return Ok(common::Status::BadRequest);
    }
    if chdr.channel_id != node.channel.channel_id {
        return Ok(common::Status::NotFound);
    }
    let checked = {
        let node = Arc::clone(node);
        let env = envelope.clone();
        let payload = payload.clone();
        tokio::task::spawn_blocking(move || check_reader(&node, &env, &payload)).await
    };
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(code)) => return Ok(code),
        Err(_) => return Ok(common::Status::InternalServerError),
    }
    let Ok(seek) = SeekInfo::decode(payload.data.as_slice()) else {
        return Ok(common::Status::BadRequest);
    };
    let (Some(start_pos), Some(stop_pos)) = (seek.start.as_ref(), seek.stop.as_ref()) else {
        return Ok(common::Status::BadRequest);
    };
    let height = node.height();
    let start = start_of(start_pos, height);
    // Fabric's iterator reports 0 as the start of a NotFoundErrorIterator.
    let number0 = start.unwrap_or(0);
    let stop = match stop_pos.r#type.as_ref() {
        Some(seek_position::Type::Oldest(_)) => number0,
        Some(seek_position::Type::Newest(_)) if start_pos == stop_pos => number0,
        Some(seek_position::Type::Newest(_)) => height.saturating_sub(1),
        Some(seek_position::Type::Specified(s)) => {
            if s.number < number0 {
                return Ok(common::Status::BadRequest);
            }
            s.number
        }
        Some(seek_position::Type::NextCommit(_)) | None => 0,
    };
    let fail_if_not_ready = seek.behavior == seek_info::SeekBehavior::FailIfNotReady as i32;
    tracing::debug!(?start, stop, ?kind, "deliver request");
    let mut number = number0;
    loop {
        if fail_if_not_ready && number >= node.height() {
            return Ok(common::Status::NotFound);
        }
        if start.is_none() {
            return Ok(common::Status::NotFound);
        }
        if number >= node.height() {
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
