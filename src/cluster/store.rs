//! The cluster's shared state in Redis: keys, scripts and the typed
//! operations on them. Everything else talks to Redis through here.
//!
//! Every key starts with `{burrow}:` — one hash tag, so all of them live in
//! one slot and the Lua scripts below work on a single Redis, behind
//! Sentinel, or on Redis Cluster alike:
//!
//! ```text
//! {burrow}:check             the cluster secret's check value (a node with another secret stops)
//! {burrow}:nodes             hash node → JSON (incarnation, link address, start, keys-file hash)
//! {burrow}:alive:NODE        "INCARNATION TUNNELS", expires after the node TTL (the heartbeat)
//! {burrow}:name:KEY          hash NODE/INCARNATION/CONN → "CLAIMED_MS OWNER GRANTED RAW"
//! {burrow}:held:NODE/INC     set of the keys that incarnation holds (cleanup after a crash)
//! {burrow}:ports             set of `tcp:PORT` keys held anywhere (every node listens on them)
//! {burrow}:reserved:NAME     a name announced to a logging-in client (expires in 10 s,
//!                            deleted when it is claimed)
//! {burrow}:bans              hash IP → "UNTIL_MS REASON"
//! {burrow}:ipt:NODE/INC      hash IP → tunnels of that IP on that node
//! {burrow}:conns:IP:MINUTE   SSH connections of that IP in that minute (expires)
//! {burrow}:acme:account:TAG  the ACME account (sealed), one per CA directory
//! {burrow}:acme:cert:NAME    hash chain → PEM chain, key → PEM key (sealed): an ACME
//!                            certificate (NAME: `main`, or a single name)
//! {burrow}:acme:self-signed:NAME  the same, a custom domain's self-signed certificate
//! {burrow}:acme:stored:KIND  set of the NAMEs stored of that kind (`cert`, `self-signed`)
//! {burrow}:acme:lock:NAME    the node ordering NAME now (its token; expires)
//! {burrow}:acme:http01:TOKEN  a pending HTTP-01 challenge's key authorization (expires)
//! {burrow}:events            pub/sub channel: JSON events (names, bans, kicks, certificates)
//! ```
//!
//! A member of a name is alive while its node's `alive` key holds the
//! member's incarnation: a node that stops renewing it loses all its names
//! at once, with no per-name expiry, so an idle cluster costs Redis one
//! write per node per heartbeat whatever the number of tunnels.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

/// Every key's prefix (and hash tag).
pub const PREFIX: &str = "{burrow}:";
/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long an announced name stays announced.
const RESERVED_SECS: u64 = 10;

/// A member's id: its node, that node's incarnation, its connection.
pub fn member_id(node: &str, incarnation: u64, conn: u64) -> String {
    format!("{node}/{incarnation}/{conn}")
}

/// The parts of a member id.
pub fn parse_member_id(id: &str) -> Option<(&str, u64, u64)> {
    let mut parts = id.rsplitn(3, '/');
    let conn = parts.next()?.parse().ok()?;
    let incarnation = parts.next()?.parse().ok()?;
    Some((parts.next()?, incarnation, conn))
}

/// A member as stored: when it claimed, its key, grant and raw flag, and
/// for a private alias the keys its `allow-keys=` lets connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub claimed_ms: u64,
    pub owner: Option<String>,
    pub granted: bool,
    pub raw: Option<bool>,
    /// Fingerprints (no spaces or commas in them); written only when there
    /// are some, as a fifth field.
    pub allow_keys: Vec<String>,
}

impl Stored {
    pub fn encode(&self) -> String {
        let owner = self.owner.as_deref().unwrap_or("-");
        let raw = match self.raw {
            None => "-",
            Some(true) => "1",
            Some(false) => "0",
        };
        let mut text = format!(
            "{} {owner} {} {raw}",
            self.claimed_ms,
            u8::from(self.granted)
        );
        if !self.allow_keys.is_empty() {
            text.push(' ');
            text.push_str(&self.allow_keys.join(","));
        }
        text
    }

    pub fn decode(text: &str) -> Option<Stored> {
        let mut parts = text.split(' ');
        let claimed_ms = parts.next()?.parse().ok()?;
        let owner = parts.next()?;
        let granted = parts.next()? == "1";
        let raw = match parts.next()? {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        };
        let allow_keys = parts
            .next()
            .map(|keys| keys.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        Some(Stored {
            claimed_ms,
            owner: (owner != "-").then(|| owner.to_string()),
            granted,
            raw,
            allow_keys,
        })
    }
}

/// What a node publishes about itself (`{burrow}:nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub incarnation: u64,
    /// Where its link listens (`HOST:PORT`).
    pub link: String,
    pub started_ms: u64,
    /// SHA-256 of its keys file (empty: none), to warn when nodes differ.
    pub keys_hash: String,
}

/// A node as read from Redis: what it published, and its heartbeat.
#[derive(Debug, Clone)]
pub struct NodeRead {
    pub id: String,
    pub info: NodeInfo,
    /// The incarnation and tunnel count of its current heartbeat; `None`
    /// when it expired.
    pub beat: Option<(u64, usize)>,
}

/// An event on `{burrow}:events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// The members of `key` changed: `clients` serve it now, `by` made
    /// the change, `replaced` lost it to `by`.
    Name {
        key: String,
        clients: usize,
        by: Option<String>,
        replaced: Option<String>,
    },
    /// A member's options became final (whether it takes raw bytes).
    Settled { key: String },
    /// An IP was blocked until `until_ms`.
    Ban {
        ip: String,
        until_ms: u64,
        reason: String,
    },
    /// A block was lifted.
    Unban { ip: String },
    /// The operator closed `key` (all its clients, every node).
    Kick { key: String, reason: String },
    /// A certificate was stored (issued or renewed): every node serves it.
    Cert { kind: CertKind, name: String },
}

/// Which certificates a shared one is among.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CertKind {
    /// From the ACME CA: `main` or a single name.
    Acme,
    /// A custom domain's self-signed certificate (ACME is off).
    SelfSigned,
}

impl CertKind {
    /// The part of its keys that names the kind.
    fn tag(self) -> &'static str {
        match self {
            CertKind::Acme => "cert",
            CertKind::SelfSigned => "self-signed",
        }
    }
}

/// The key of the set listing the stored certificates of `kind`.
fn stored_list(kind: CertKind) -> String {
    key(&format!("acme:stored:{}", kind.tag()))
}

/// The name (without the prefix) a shared certificate is stored under;
/// also the context its key is sealed for, so a sealed key cannot be
/// passed off as another name's.
pub fn cert_name(kind: CertKind, name: &str) -> String {
    format!("acme:{}:{name}", kind.tag())
}

/// A certificate as stored: the PEM chain, and the PEM key sealed with
/// the cluster secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Public: stored as it is.
    pub chain: String,
    /// Sealed for [`cert_name`], so only the cluster's nodes read it.
    pub sealed_key: Vec<u8>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Claimed: `clients` serve it now; `replaced` is the member it took
    /// the name from.
    Claimed {
        clients: usize,
        replaced: Option<String>,
    },
    /// Another key holds it.
    Taken,
    /// This very member holds it already.
    Duplicate,
}

/// A handle on the cluster's Redis.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    client: redis::Client,
}

/// Checks members' liveness (the `alive` key of their node holds their
/// incarnation), drops the dead ones, and applies the balancing rule.
/// KEYS: name hash, this member's held set, the ports set.
/// ARGV: prefix, member id, stored value, balance, owner or '-',
/// granted '1'/'0', key, mode ('claim', or 'reassert' after an outage:
/// then the newest claim wins).
const CLAIM: &str = r#"
local prefix, mine, value, balance, owner, granted, key, mode =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local live = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local id, v = entries[i], entries[i + 1]
  local node, inc = string.match(id, '^(.*)/(%d+)/%d+$')
  local alive = node and redis.call('GET', prefix .. 'alive:' .. node)
  if alive and string.match(alive, '^(%d+)') == inc then
    local ms, o, g = string.match(v, '^(%d+) (%S+) (%d)')
    table.insert(live, {id = id, ms = tonumber(ms), owner = o, granted = g})
  else
    redis.call('HDEL', KEYS[1], id)
  end
end
local my_ms = tonumber(string.match(value, '^(%d+)'))
for _, m in ipairs(live) do
  if m.id == mine then
    if mode == 'reassert' then return {'ok', tostring(#live), ''} end
    return {'duplicate'}
  end
end
table.sort(live, function(a, b) return a.ms < b.ms or (a.ms == b.ms and a.id < b.id) end)
local function commit(count, replaced)
  redis.call('HSET', KEYS[1], mine, value)
  -- Live now: nobody need wait for it any more (nor after it dies).
  redis.call('DEL', prefix .. 'reserved:' .. key)
  redis.call('SADD', KEYS[2], key)
  if string.sub(key, 1, 4) == 'tcp:' then redis.call('SADD', KEYS[3], key) end
  local event = {t = 'name', key = key, clients = count, by = mine}
  if replaced then event.replaced = replaced end
  redis.call('PUBLISH', prefix .. 'events', cjson.encode(event))
  return {'ok', tostring(count), replaced or ''}
end
if #live == 0 then return commit(1, nil) end
local oldest = live[1]
local same = owner ~= '-' and oldest.owner == owner
local share = same or (granted == '1' and oldest.granted == '1')
-- Registering again after an outage: the newest claim wins a conflict
-- (whoever made it), the loser is told by its node.
local newer = mode == 'reassert' and my_ms > oldest.ms
if balance == 'replace' then
  if (mode == 'reassert' and newer) or (mode == 'claim' and same) then
    redis.call('HDEL', KEYS[1], oldest.id)
    return commit(1, oldest.id)
  end
  return {'taken'}
end
if share then return commit(#live + 1, nil) end
if newer then
  for _, m in ipairs(live) do redis.call('HDEL', KEYS[1], m.id) end
  return commit(1, oldest.id)
end
return {'taken'}
"#;

/// Removes a member; publishes the change when it was there.
/// KEYS: name hash, the member's held set, the ports set.
/// ARGV: prefix, member id, key.
const RELEASE: &str = r#"
local prefix, mine, key = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HDEL', KEYS[1], mine) == 0 then return -1 end
local node_inc = string.match(mine, '^(.*/%d+)/%d+$')
local live, still_mine = 0, false
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local id = entries[i]
  local node, inc = string.match(id, '^(.*)/(%d+)/%d+$')
  local alive = node and redis.call('GET', prefix .. 'alive:' .. node)
  if alive and string.match(alive, '^(%d+)') == inc then live = live + 1 end
  if string.match(id, '^(.*/%d+)/%d+$') == node_inc then still_mine = true end
end
if not still_mine then redis.call('SREM', KEYS[2], key) end
if #entries == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], key)
end
redis.call('PUBLISH', prefix .. 'events',
  cjson.encode({t = 'name', key = key, clients = live, by = mine}))
return live
"#;

/// Rewrites a member's stored value if it is still there.
/// KEYS: name hash. ARGV: prefix, member id, value, key.
const SETTLE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'events', cjson.encode({t = 'settled', key = ARGV[4]}))
return 1
"#;

/// Stores a certificate (KEYS: its hash, the kind's name set), unless
/// ARGV[5] is 'nx' and one is stored already; publishes the change when
/// it stored. Returns the chain and sealed key in force.
/// ARGV: events channel, chain, sealed key, the event (JSON), mode, name.
const SAVE_CERT: &str = r#"
if ARGV[5] == 'nx' and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'chain', 'key')
end
redis.call('HSET', KEYS[1], 'chain', ARGV[2], 'key', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[4])
return {ARGV[2], ARGV[3]}
"#;

/// Renews (ARGV[2] = 'renew', for ARGV[3] ms) or releases ('release') a
/// lock (KEYS[1]) if ARGV[1] still holds it: 1 when it did.
const LOCK_OWNED: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

fn key(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

impl Store {
    /// Connects to `url` (`redis://` or `rediss://`). Fails when Redis
    /// cannot be reached now.
    pub async fn connect(url: &str) -> Result<Store> {
        let client = redis::Client::open(url).context("--cluster-redis")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .context("cannot reach Redis")?;
        Ok(Store { conn, client })
    }

    /// A separate connection for the event subscription.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(key("events")).await?;
        Ok(pubsub)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Records the secret's check value, or compares it with the one the
    /// cluster has: `Err` when they differ.
    pub async fn check_secret(&self, value: &str) -> Result<()> {
        let mut conn = self.conn();
        let _: bool = conn.set_nx(key("check"), value).await?;
        let stored: String = conn.get(key("check")).await?;
        if stored != value {
            return Err(anyhow!(
                "this node's cluster secret is not the cluster's (Redis holds another check value): copy the cluster's --cluster-secret file to this node"
            ));
        }
        Ok(())
    }

    /// Announces this node and renews its heartbeat.
    pub async fn register(
        &self,
        node: &str,
        info: &NodeInfo,
        tunnels: usize,
        ttl: Duration,
    ) -> Result<()> {
        let json = serde_json::to_string(info)?;
        let mut pipe = redis::pipe();
        pipe.hset(key("nodes"), node, json).ignore();
        pipe.set_ex(
            key(&format!("alive:{node}")),
            format!("{} {tunnels}", info.incarnation),
            ttl.as_secs().max(1),
        )
        .ignore();
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Every node Redis knows, with its heartbeat (`None`: dead).
    pub async fn nodes(&self) -> Result<Vec<NodeRead>> {
        let mut conn = self.conn();
        let all: Vec<(String, String)> = conn.hgetall(key("nodes")).await?;
        let infos: Vec<(String, NodeInfo)> = all
            .into_iter()
            .filter_map(|(node, json)| Some((node, serde_json::from_str(&json).ok()?)))
            .collect();
        if infos.is_empty() {
            return Ok(Vec::new());
        }
        let alive_keys: Vec<String> = infos
            .iter()
            .map(|(n, _)| key(&format!("alive:{n}")))
            .collect();
        let alive: Vec<Option<String>> = conn.mget(alive_keys).await?;
        Ok(infos
            .into_iter()
            .zip(alive)
            .map(|((id, info), beat)| {
                let beat = beat.and_then(|text| {
                    let (inc, tunnels) = text.split_once(' ')?;
                    Some((inc.parse().ok()?, tunnels.parse().ok()?))
                });
                NodeRead { id, info, beat }
            })
            .collect())
    }

    /// Forgets a node (it stopped, or died and its names were cleaned up).
    pub async fn forget_node(&self, node: &str, incarnation: u64) -> Result<()> {
        let mut conn = self.conn();
        let alive: Option<String> = conn.get(key(&format!("alive:{node}"))).await?;
        if alive.as_deref().and_then(|a| a.split(' ').next()) == Some(&incarnation.to_string()) {
            let _: () = conn.del(key(&format!("alive:{node}"))).await?;
        }
        let json: Option<String> = conn.hget(key("nodes"), node).await?;
        let same = json
            .and_then(|j| serde_json::from_str::<NodeInfo>(&j).ok())
            .is_some_and(|info| info.incarnation == incarnation);
        if same {
            let _: () = conn.hdel(key("nodes"), node).await?;
        }
        Ok(())
    }

    /// Claims `key` for member `id` (see [`CLAIM`]).
    pub async fn claim(&self, claim: Claim<'_>) -> Result<ClaimOutcome> {
        let (node_inc, _) = claim
            .id
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("bad member id"))?;
        let reply: Vec<String> = Script::new(CLAIM)
            .key(key(&format!("name:{}", claim.key)))
            .key(key(&format!("held:{node_inc}")))
            .key(key("ports"))
            .arg(PREFIX)
            .arg(claim.id)
            .arg(claim.stored.encode())
            .arg(claim.balance)
            .arg(claim.stored.owner.as_deref().unwrap_or("-"))
            .arg(if claim.stored.granted { "1" } else { "0" })
            .arg(claim.key)
            .arg(if claim.reassert { "reassert" } else { "claim" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => ClaimOutcome::Claimed {
                clients: reply.get(1).and_then(|c| c.parse().ok()).unwrap_or(1),
                replaced: reply.get(2).filter(|r| !r.is_empty()).cloned(),
            },
            Some("duplicate") => ClaimOutcome::Duplicate,
            _ => ClaimOutcome::Taken,
        })
    }

    /// Releases member `id` of `key`.
    pub async fn release(&self, key_name: &str, id: &str) -> Result<()> {
        let (node_inc, _) = id
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("bad member id"))?;
        let _: i64 = Script::new(RELEASE)
            .key(key(&format!("name:{key_name}")))
            .key(key(&format!("held:{node_inc}")))
            .key(key("ports"))
            .arg(PREFIX)
            .arg(id)
            .arg(key_name)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Records member `id`'s final stored value (its raw flag, its
    /// `allow-keys=`).
    pub async fn settle(&self, key_name: &str, id: &str, stored: &Stored) -> Result<()> {
        let _: i64 = Script::new(SETTLE)
            .key(key(&format!("name:{key_name}")))
            .arg(PREFIX)
            .arg(id)
            .arg(stored.encode())
            .arg(key_name)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The members of `key` as stored (alive or not), and whether the name
    /// is announced somewhere.
    pub async fn members(&self, key_name: &str) -> Result<(Vec<(String, Stored)>, bool)> {
        let (all, reserved): (Vec<(String, String)>, bool) = redis::pipe()
            .hgetall(key(&format!("name:{key_name}")))
            .exists(key(&format!("reserved:{key_name}")))
            .query_async(&mut self.conn())
            .await?;
        let members = all
            .into_iter()
            .filter_map(|(id, value)| Some((id, Stored::decode(&value)?)))
            .collect();
        Ok((members, reserved))
    }

    /// Announces `name` for a moment (a client is logging in with it).
    pub async fn reserve(&self, name: &str) -> Result<()> {
        let _: () = self
            .conn()
            .set_ex(key(&format!("reserved:{name}")), 1, RESERVED_SECS)
            .await?;
        Ok(())
    }

    /// The TCP ports held anywhere (`tcp:PORT` keys).
    pub async fn ports(&self) -> Result<Vec<String>> {
        Ok(self.conn().smembers(key("ports")).await?)
    }

    /// The keys a (dead) incarnation held, then removes its members and
    /// its traces. Returns the keys, for their events.
    pub async fn clean_up(&self, node: &str, incarnation: u64) -> Result<Vec<String>> {
        let held = key(&format!("held:{node}/{incarnation}"));
        let keys: Vec<String> = self.conn().smembers(&held).await?;
        let prefix = format!("{node}/{incarnation}/");
        for name in &keys {
            let (members, _) = self.members(name).await?;
            for (id, _) in members
                .into_iter()
                .filter(|(id, _)| id.starts_with(&prefix))
            {
                self.release(name, &id).await?;
            }
        }
        let mut conn = self.conn();
        let _: () = conn.del(&held).await?;
        let _: () = conn.del(key(&format!("ipt:{node}/{incarnation}"))).await?;
        self.forget_node(node, incarnation).await?;
        Ok(keys)
    }

    /// Takes the clean-up of a dead incarnation for this node (one node
    /// does it): `true` when this node won.
    pub async fn take_cleanup(&self, node: &str, incarnation: u64) -> Result<bool> {
        let lock = key(&format!("cleanup:{node}/{incarnation}"));
        Ok(redis::cmd("SET")
            .arg(lock)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async::<Option<String>>(&mut self.conn())
            .await?
            .is_some())
    }

    /// Publishes `event` to every node.
    pub async fn publish(&self, event: &Event) -> Result<()> {
        let json = serde_json::to_string(event)?;
        let _: i64 = self.conn().publish(key("events"), json).await?;
        Ok(())
    }

    /// Records a ban (or replaces one) and tells every node.
    pub async fn ban(&self, ip: &str, until_ms: u64, reason: &str) -> Result<()> {
        let _: () = self
            .conn()
            .hset(key("bans"), ip, format!("{until_ms} {reason}"))
            .await?;
        self.publish(&Event::Ban {
            ip: ip.to_string(),
            until_ms,
            reason: reason.to_string(),
        })
        .await
    }

    /// Lifts a ban everywhere.
    pub async fn unban(&self, ip: &str) -> Result<()> {
        let _: () = self.conn().hdel(key("bans"), ip).await?;
        self.publish(&Event::Unban { ip: ip.to_string() }).await
    }

    /// Every ban in force: IP, until (unix ms), reason.
    pub async fn bans(&self) -> Result<Vec<(String, u64, String)>> {
        let all: Vec<(String, String)> = self.conn().hgetall(key("bans")).await?;
        Ok(all
            .into_iter()
            .filter_map(|(ip, value)| {
                let (until, reason) = value.split_once(' ')?;
                Some((ip, until.parse().ok()?, reason.to_string()))
            })
            .collect())
    }

    /// Counts one SSH connection of `ip` in the current minute; returns
    /// the cluster-wide count so far.
    pub async fn count_connection(&self, ip: &str, minute: u64) -> Result<u64> {
        let counter = key(&format!("conns:{ip}:{minute}"));
        let (count,): (u64,) = redis::pipe()
            .incr(&counter, 1)
            .expire(&counter, 120)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(count)
    }

    /// Adds `delta` to `ip`'s tunnel count on this incarnation.
    pub async fn count_tunnels(&self, node_inc: &str, ip: &str, delta: i64) -> Result<()> {
        let _: i64 = self
            .conn()
            .hincr(key(&format!("ipt:{node_inc}")), ip, delta)
            .await?;
        Ok(())
    }

    /// Replaces an incarnation's per-IP tunnel counts (after an outage).
    pub async fn reset_tunnel_counts(
        &self,
        node_inc: &str,
        counts: &std::collections::HashMap<std::net::IpAddr, i64>,
    ) -> Result<()> {
        let name = key(&format!("ipt:{node_inc}"));
        let mut pipe = redis::pipe();
        pipe.del(&name).ignore();
        for (ip, count) in counts {
            pipe.hset(&name, ip.to_string(), *count).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// `ip`'s tunnels on each of the given incarnations, summed.
    pub async fn tunnels_of_ip(&self, node_incs: &[String], ip: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        for node_inc in node_incs {
            pipe.hget(key(&format!("ipt:{node_inc}")), ip);
        }
        let counts: Vec<Option<i64>> = pipe.query_async(&mut self.conn()).await?;
        Ok(counts.into_iter().flatten().map(|c| c.max(0) as u64).sum())
    }

    /// A value of the shared state (ACME), raw.
    pub async fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn().get(key(name)).await?)
    }

    /// Sets a value of the shared state unless it is set already; returns
    /// the value in force.
    pub async fn set_nx_bytes(&self, name: &str, value: &[u8]) -> Result<Vec<u8>> {
        let mut conn = self.conn();
        let _: bool = conn.set_nx(key(name), value).await?;
        Ok(conn.get(key(name)).await?)
    }

    /// Sets a value of the shared state (ACME).
    pub async fn set_bytes(&self, name: &str, value: &[u8]) -> Result<()> {
        let _: () = self.conn().set(key(name), value).await?;
        Ok(())
    }

    /// Takes lock `name` for `ttl` unless someone holds it: `true` when
    /// taken. `token` identifies the holder (to renew and release).
    pub async fn lock(&self, name: &str, token: &str, ttl: Duration) -> Result<bool> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key(name))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(taken.is_some())
    }

    /// Extends lock `name` to `ttl` from now if `token` holds it: `false`
    /// when it does not (any more).
    pub async fn renew_lock(&self, name: &str, token: &str, ttl: Duration) -> Result<bool> {
        self.lock_owned(name, token, "renew", ttl).await
    }

    /// Releases lock `name` if `token` holds it.
    pub async fn release_lock(&self, name: &str, token: &str) -> Result<()> {
        self.lock_owned(name, token, "release", Duration::ZERO)
            .await
            .map(drop)
    }

    async fn lock_owned(&self, name: &str, token: &str, op: &str, ttl: Duration) -> Result<bool> {
        let done: i64 = Script::new(LOCK_OWNED)
            .key(key(name))
            .arg(token)
            .arg(op)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 1)
    }

    /// Stores the certificate `name` of `kind` and tells every node; with
    /// `first`, only if none is stored yet. Returns the one in force.
    pub async fn save_cert(
        &self,
        kind: CertKind,
        name: &str,
        cert: &StoredCert,
        first: bool,
    ) -> Result<StoredCert> {
        let event = serde_json::to_string(&Event::Cert {
            kind,
            name: name.to_string(),
        })?;
        let (chain, sealed_key): (String, Vec<u8>) = Script::new(SAVE_CERT)
            .key(key(&cert_name(kind, name)))
            .key(stored_list(kind))
            .arg(key("events"))
            .arg(&cert.chain)
            .arg(&cert.sealed_key)
            .arg(event)
            .arg(if first { "nx" } else { "set" })
            .arg(name)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(StoredCert { chain, sealed_key })
    }

    /// The certificate `name` of `kind`, if one is stored.
    pub async fn cert(&self, kind: CertKind, name: &str) -> Result<Option<StoredCert>> {
        let (chain, sealed_key): (Option<String>, Option<Vec<u8>>) = self
            .conn()
            .hmget(key(&cert_name(kind, name)), &["chain", "key"])
            .await?;
        Ok(chain
            .zip(sealed_key)
            .map(|(chain, sealed_key)| StoredCert { chain, sealed_key }))
    }

    /// Removes the certificate `name` of `kind` and its name from the list.
    pub async fn forget_cert(&self, kind: CertKind, name: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(key(&cert_name(kind, name)))
            .ignore()
            .srem(stored_list(kind), name)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// The names of the certificates of `kind` stored.
    pub async fn cert_names(&self, kind: CertKind) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.conn().smembers(stored_list(kind)).await?;
        names.sort();
        Ok(names)
    }

    /// The ACME account of directory `tag` (sealed), if one is stored.
    pub async fn acme_account(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&format!("acme:account:{tag}")).await
    }

    /// Stores the ACME account of directory `tag` unless one is stored
    /// already (two nodes may create one at once); returns the one in
    /// force.
    pub async fn save_acme_account(&self, tag: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        self.set_nx_bytes(&format!("acme:account:{tag}"), sealed)
            .await
    }

    /// Publishes an HTTP-01 key authorization for `ttl`: every node answers
    /// the CA with it.
    pub async fn set_challenge(&self, token: &str, key_auth: &str, ttl: Duration) -> Result<()> {
        let _: () = self
            .conn()
            .pset_ex(
                key(&format!("acme:http01:{token}")),
                key_auth,
                ttl.as_millis().max(1) as u64,
            )
            .await?;
        Ok(())
    }

    /// The key authorization of HTTP-01 token `token`, if it is pending.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .get(key(&format!("acme:http01:{token}")))
            .await?)
    }

    /// Withdraws HTTP-01 token `token`.
    pub async fn remove_challenge(&self, token: &str) -> Result<()> {
        let _: () = self
            .conn()
            .del(key(&format!("acme:http01:{token}")))
            .await?;
        Ok(())
    }

    /// Round-trip time of one PING, for the stats.
    pub async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(started.elapsed())
    }
}

/// A claim, as the store needs it.
pub struct Claim<'a> {
    pub key: &'a str,
    pub id: &'a str,
    pub stored: &'a Stored,
    /// `replace`, `round-robin` or `failover`.
    pub balance: &'a str,
    /// Re-registering after an outage: the newest claim wins a conflict.
    pub reassert: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_and_values_round_trip() {
        let id = member_id("node-1.example", 42, 7);
        assert_eq!(parse_member_id(&id), Some(("node-1.example", 42, 7)));
        let stored = Stored {
            claimed_ms: 1_700_000_000_123,
            owner: Some("SHA256:abc+/=".into()),
            granted: true,
            raw: None,
            allow_keys: Vec::new(),
        };
        assert_eq!(Stored::decode(&stored.encode()), Some(stored));
        let private = Stored {
            claimed_ms: 9,
            owner: Some("SHA256:abc".into()),
            granted: false,
            raw: Some(true),
            allow_keys: vec!["SHA256:def".into(), "SHA256:g+/h".into()],
        };
        assert_eq!(Stored::decode(&private.encode()), Some(private));
        let anonymous = Stored {
            claimed_ms: 5,
            owner: None,
            granted: false,
            raw: Some(true),
            allow_keys: Vec::new(),
        };
        assert_eq!(Stored::decode(&anonymous.encode()), Some(anonymous));
    }

    #[test]
    fn events_are_tagged_json() {
        let event = Event::Name {
            key: "api".into(),
            clients: 2,
            by: Some("a/1/3".into()),
            replaced: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""t":"name""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        let from_lua = r#"{"t":"name","key":"x","clients":1,"by":"a/1/2"}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(from_lua).unwrap(),
            Event::Name { replaced: None, .. }
        ));
    }

    #[test]
    fn certificate_events_and_names() {
        let event = Event::Cert {
            kind: CertKind::SelfSigned,
            name: "app.example.org".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"t":"cert","kind":"self-signed","name":"app.example.org"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        assert_eq!(cert_name(CertKind::Acme, "main"), "acme:cert:main");
        assert_ne!(
            cert_name(CertKind::Acme, "a.example"),
            cert_name(CertKind::SelfSigned, "a.example")
        );
    }
}
