//! The flush scheduler: one task for all clients. It sleeps until the
//! engine's next deadline (or until a commit moves that deadline earlier),
//! then lets the hub flush, heartbeat and drop whatever is due.

use super::hub::Hub;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        let next = hub.tick();
        tokio::select! {
            _ = hub.wait(next) => {}
            _ = stop.cancelled() => return,
        }
    }
}
