//! The event subscription: a connection of its own to the primary of the
//! moment, subscribed to `{burrow}:events`. It ends when the connection
//! breaks or when the primary moves (behind Sentinel a demoted primary may
//! keep the connection open, silent or late), so the caller subscribes
//! again, to the new primary.

use std::pin::Pin;

use anyhow::Result;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::primary::Primary;
use super::{key, Store};

/// Events as they are published, until the subscription ends.
pub struct Events {
    /// The messages of the subscription's connection.
    messages: Pin<Box<dyn Stream<Item = redis::Msg> + Send>>,
    /// The primary's generation, seen when subscribing: a change ends it.
    generations: watch::Receiver<u64>,
}

impl Store {
    /// Subscribes to the event channel on the primary now.
    pub async fn subscribe(&self) -> Result<Events> {
        subscribe(&self.primary).await
    }
}

async fn subscribe(primary: &Primary) -> Result<Events> {
    // The generation first: a move after it ends this subscription.
    let mut generations = primary.generations();
    generations.borrow_and_update();
    let mut pubsub = primary.current().client.get_async_pubsub().await?;
    pubsub.subscribe(key("events")).await?;
    Ok(Events {
        messages: Box::pin(pubsub.into_on_message()),
        generations,
    })
}

impl Events {
    /// The next event's payload; `None` once the subscription is over (its
    /// connection broke, or the primary moved).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let message = tokio::select! {
                message = self.messages.next() => message?,
                _ = moved(&mut self.generations) => return None,
            };
            if let Ok(payload) = message.get_payload::<String>() {
                return Some(payload);
            }
        }
    }
}

/// Resolves when a new generation starts (never for one Redis).
async fn moved(generations: &mut watch::Receiver<u64>) {
    if generations.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
