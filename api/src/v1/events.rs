//! `GET /api/v1/commands/{id}/events`: server-sent events of a command's status changes,
//! ending at `projected` or `failed`.
//!
//! The stream subscribes to the outbox's change notifications ([`Outbox::subscribe`], sent
//! after each durable change) *before* it reads the command, so no change between the read
//! and the wait is missed; on a notification for its command (or a lagged receiver, or at
//! the latest every [`FALLBACK_POLL`]) it re-reads the command's record (a RocksDB point
//! read) and sends an event if the status moved. Bounded in time ([`MAX_STREAM`]) and in
//! number ([`super::MAX_EVENT_STREAMS`]; past it 503 with `Retry-After`). Each event is
//! `event: status`, `data:` the command's [`CommandView`] JSON; the first one is the
//! current status.
//!
//! [`Outbox::subscribe`]: gxd_storage::outbox::Outbox::subscribe

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use gxd_storage::outbox::{CommandChange, CommandId};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};

use super::json::ApiPath;
use super::reads::{command_view, visible_command};
use super::types::{CommandStatus, CommandView};
use super::v1;
use crate::ApiState;
use crate::auth::Principal;
use crate::problem::{ErrorCode, Problem};

/// Longest a stream stays open.
pub const MAX_STREAM: Duration = Duration::from_secs(600);
/// Longest wait without a notification before the command is read again anyway.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

struct Follow {
    state: ApiState,
    id: CommandId,
    last: Option<CommandStatus>,
    changes: broadcast::Receiver<CommandChange>,
    deadline: tokio::time::Instant,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    /// Waits until the command may have changed: a notification for it, missed
    /// notifications, the fallback poll or the deadline.
    async fn changed(&mut self) {
        let until = self
            .deadline
            .min(tokio::time::Instant::now() + FALLBACK_POLL);
        loop {
            match tokio::time::timeout_at(until, self.changes.recv()).await {
                Err(_) | Ok(Err(RecvError::Lagged(_))) => return,
                Ok(Ok(change)) if change.id == self.id => return,
                Ok(Ok(_)) => {}
                // The outbox is gone (shutdown): read once more, then the fallback pace.
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }
}

fn terminal(s: CommandStatus) -> bool {
    matches!(s, CommandStatus::Projected | CommandStatus::Failed)
}

fn event(view: &CommandView) -> Event {
    Event::default()
        .event("status")
        .id(format!("{:?}", view.status).to_lowercase())
        .json_data(view)
        .unwrap_or_else(|_| {
            Event::default()
                .event("error")
                .data("cannot encode the status")
        })
}

async fn next(mut f: Follow) -> Option<(Result<Event, Infallible>, Follow)> {
    loop {
        if f.done {
            return None;
        }
        if tokio::time::Instant::now() >= f.deadline {
            f.done = true;
            return Some((
                Ok(Event::default().event("timeout").data("stream closed")),
                f,
            ));
        }
        let view = match f.state.v1() {
            None => return None,
            Some(v1) => match v1.deps.outbox.get(f.id) {
                Ok(c) => command_view(v1, &c).await.ok(),
                Err(_) => None,
            },
        };
        if let Some(view) = view
            && f.last != Some(view.status)
        {
            f.last = Some(view.status);
            f.done = terminal(view.status);
            return Some((Ok(event(&view)), f));
        }
        f.changed().await;
    }
}

/// Server-sent events of a command's status, ending at projected or failed.
#[utoipa::path(
    get,
    path = "/api/v1/commands/{id}/events",
    tag = "reads",
    params(("id" = String, Path, description = "The command id")),
    responses((status = 200, description = "`text/event-stream`: one `status` event per change, data = the command", content_type = "text/event-stream", body = CommandView)),
    security(("bearer" = [])),
)]
pub(crate) async fn command_events(
    State(state): State<ApiState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, Problem> {
    let v1 = v1(&state)?;
    // Subscribed before the first read: a change after it is never missed.
    let changes = v1.deps.outbox.subscribe();
    let command = visible_command(v1, &principal, &id)?;
    let permit = v1.event_streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(ErrorCode::Unavailable)
            .with_detail("too many open event streams; retry later or poll the command")
            .with_retry_after(1)
    })?;
    let follow = Follow {
        state: state.clone(),
        id: command.id,
        last: None,
        changes,
        deadline: tokio::time::Instant::now() + MAX_STREAM,
        done: false,
        _permit: permit,
    };
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream::unfold(follow, next));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
