//! Following the primary behind Redis Sentinel. redis-rs asks the sentinels
//! for the primary only when told to, and a connection it opened stays on
//! that address for ever (it reconnects to a dead or demoted node), so
//! burrow asks again itself: when a command fails as if the primary had
//! moved (I/O error, timeout, `READONLY`, `MASTERDOWN`, `LOADING`), when a
//! sentinel announces `+switch-master`, and every [`RESOLVE_EVERY`]
//! anyway. When the answer is another node, the [`Primary`] handle gets a
//! connection to it and a new generation starts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, TlsMode};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::primary::{trusting, Current, Primary, Shared, Signals, Switch};
use super::target::Sentinels;

/// The sentinels are asked this often even when nothing seems wrong (a
/// planned failover fails no command; the announcement may be missed).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// While the sentinels name no primary that answers, they are asked again
/// this often (also the least time between two questions)…
const RESOLVE_RETRY: Duration = Duration::from_millis(100);
/// …for this long after the trouble began; then every [`RESOLVE_EVERY`].
const RESOLVE_PERSIST: Duration = Duration::from_secs(30);
/// One question (the sentinels, then the primary they name) at most.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Back-off of the `+switch-master` subscription after it broke.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(200);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// The sentinels' channel announcing a new primary
/// (`MASTER OLD_IP OLD_PORT NEW_IP NEW_PORT`).
const SWITCH_CHANNEL: &str = "+switch-master";

/// Asks the sentinels for the primary, connects to it, and starts
/// following it (until the last handle on it is dropped).
pub(super) async fn connect(sentinels: &Sentinels, ca: Option<&[u8]>) -> Result<Primary> {
    let mut client = sentinel_client(sentinels, ca)?;
    let current = resolve(&mut client).await.with_context(|| {
        format!(
            "no sentinel named a primary for {:?} that answers",
            sentinels.master
        )
    })?;
    let signals = Arc::new(Signals::default());
    let stop = CancellationToken::new();
    let primary = Primary::followed(current, Arc::clone(&signals), stop.clone().drop_guard());
    let watcher = sentinel_client(sentinels, ca)?;
    tokio::spawn(watch_switches(
        watcher,
        sentinels.master.clone(),
        Arc::clone(&signals),
        stop.clone(),
    ));
    let follower = Follower {
        client,
        primary: primary.downgrade(),
        signals,
        stop,
        last_move: None,
    };
    tokio::spawn(follower.run());
    Ok(primary)
}

/// A redis-rs Sentinel client for `sentinels`: their credentials and the
/// data nodes', TLS to both with `ca` as the only root when given.
fn sentinel_client(sentinels: &Sentinels, ca: Option<&[u8]>) -> Result<SentinelClient> {
    let addrs = sentinels
        .addrs
        .iter()
        .map(|(host, port)| match sentinels.tls {
            true => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            false => ConnectionAddr::Tcp(host.clone(), *port),
        });
    let mut builder =
        SentinelClientBuilder::new(addrs, &sentinels.master, SentinelServerType::Master)?
            .set_client_to_redis_db(sentinels.db);
    if let Some(user) = &sentinels.user {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &sentinels.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &sentinels.sentinel_user {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &sentinels.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if sentinels.tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(pem) = ca {
            builder = builder
                .set_client_to_sentinel_certificates(trusting(pem))
                .set_client_to_redis_certificates(trusting(pem));
        }
    }
    Ok(builder.build()?)
}

/// The primary the sentinels name now (checked: it says it is one),
/// connected.
async fn resolve(client: &mut SentinelClient) -> Result<Current> {
    let primary = named(client).await?;
    let current = timeout(RESOLVE_TIMEOUT, Current::connect(primary))
        .await
        .map_err(|_| anyhow!("the primary did not answer within {RESOLVE_TIMEOUT:?}"))??;
    Ok(current)
}

/// The client of the primary the sentinels name now.
async fn named(client: &mut SentinelClient) -> Result<redis::Client> {
    timeout(RESOLVE_TIMEOUT, client.async_get_client())
        .await
        .map_err(|_| anyhow!("the sentinels did not answer within {RESOLVE_TIMEOUT:?}"))?
        .map_err(Into::into)
}

/// Asks the sentinels again when nudged (or every [`RESOLVE_EVERY`]) and
/// moves the handle to the primary they name.
struct Follower {
    /// Its own client: it caches a connection to each sentinel.
    client: SentinelClient,
    /// The handle it moves; gone when the store is.
    primary: Weak<Shared>,
    /// Why to ask now (shared with the connections and the watcher).
    signals: Arc<Signals>,
    /// Cancelled when the last handle goes.
    stop: CancellationToken,
    /// The last move it made: its announcement is no news.
    last_move: Option<Switch>,
}

impl Follower {
    async fn run(mut self) {
        // When the sentinels last failed to name a primary that answers.
        let mut trouble: Option<Instant> = None;
        loop {
            let retrying = trouble.is_some_and(|since| since.elapsed() < RESOLVE_PERSIST);
            if !self.wait(retrying).await {
                return;
            }
            match self.ask().await {
                Ok(()) => {
                    if trouble.take().is_some() {
                        tracing::info!("the sentinels name a primary that answers again");
                    }
                }
                Err(err) if trouble.is_none() => {
                    tracing::warn!(error = %format!("{err:#}"), "asking the sentinels for the Redis primary failed; asking again");
                    trouble = Some(Instant::now());
                }
                Err(err) => tracing::debug!(error = %format!("{err:#}"), "sentinels"),
            }
        }
    }

    /// Waits for a reason to ask: `false` when the store is gone. Never
    /// less than [`RESOLVE_RETRY`] after the last question, so a burst of
    /// failing commands asks once.
    async fn wait(&self, retrying: bool) -> bool {
        let floor = tokio::time::sleep(RESOLVE_RETRY);
        tokio::select! {
            _ = self.stop.cancelled() => return false,
            _ = floor => {}
        }
        if retrying {
            return true;
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.signals.nudge.notified() => true,
            _ = tokio::time::sleep(RESOLVE_EVERY - RESOLVE_RETRY) => true,
        }
    }

    /// One question; moves the handle when the answer is another primary,
    /// or starts a new generation when a switch it did not make was
    /// announced meanwhile.
    async fn ask(&mut self) -> Result<()> {
        let client = named(&mut self.client).await?;
        let Some(primary) = Primary::upgrade(&self.primary) else {
            return Ok(());
        };
        let addr = client.get_connection_info().addr().to_string();
        if addr != primary.current().addr {
            let next = timeout(RESOLVE_TIMEOUT, Current::connect(client))
                .await
                .map_err(|_| {
                    anyhow!("the new primary {addr} did not answer within {RESOLVE_TIMEOUT:?}")
                })?
                .with_context(|| format!("the new primary {addr}"))?;
            self.last_move = Some(primary.replace(next));
            self.signals.take_announced();
            return Ok(());
        }
        let announced = self.signals.take_announced();
        if announced.iter().any(|s| Some(s) != self.last_move.as_ref()) {
            primary.restart_generation();
        }
        Ok(())
    }
}

/// Follows `+switch-master` on one sentinel (another when it goes away):
/// each announcement for `master` makes the follower ask at once.
async fn watch_switches(
    mut client: SentinelClient,
    master: String,
    signals: Arc<Signals>,
    stop: CancellationToken,
) {
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = subscribe_switches(&mut client) => subscribed,
        };
        match subscribed {
            Ok(pubsub) => {
                backoff = RESUBSCRIBE_MIN;
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Some(switch) = parse_switch(&payload, &master) {
                        tracing::info!(%payload, "a sentinel announced a new primary");
                        signals.announce(switch);
                    }
                }
            }
            Err(err) => tracing::debug!(error = %format!("{err:#}"), "sentinel subscription"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// `MASTER OLD_IP OLD_PORT NEW_IP NEW_PORT`, when MASTER is `master`.
fn parse_switch(payload: &str, master: &str) -> Option<Switch> {
    let fields: Vec<&str> = payload.split(' ').collect();
    match fields[..] {
        [name, old_ip, old_port, new_ip, new_port] if name == master => Some(Switch {
            from: format!("{old_ip}:{old_port}"),
            to: format!("{new_ip}:{new_port}"),
        }),
        _ => None,
    }
}

/// A subscription to [`SWITCH_CHANNEL`] on the first sentinel that answers.
async fn subscribe_switches(client: &mut SentinelClient) -> Result<redis::aio::PubSub> {
    let subscribe = async {
        let sentinel = client.async_get_sentinel_client().await?;
        let mut pubsub = sentinel.get_async_pubsub().await?;
        pubsub.subscribe(SWITCH_CHANNEL).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    timeout(RESOLVE_TIMEOUT, subscribe)
        .await
        .map_err(|_| anyhow!("no sentinel answered within {RESOLVE_TIMEOUT:?}"))?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_announcements() {
        let switch = parse_switch("mymaster 10.0.0.5 6379 10.0.0.6 6380", "mymaster");
        let want = Switch {
            from: "10.0.0.5:6379".into(),
            to: "10.0.0.6:6380".into(),
        };
        assert_eq!(switch, Some(want));
        assert_eq!(
            parse_switch("other 10.0.0.5 6379 10.0.0.6 6380", "mymaster"),
            None
        );
        assert_eq!(parse_switch("mymaster 10.0.0.5 6379", "mymaster"), None);
    }
}
