//! Claims and lookups: who holds which name, as members
//! `NODE/INCARNATION/CONN` of the name's hash, claimed and released by Lua
//! scripts that apply the balancing rule and publish the change in one
//! step; announced names; the TCP ports held anywhere.

use anyhow::{anyhow, Result};
use redis::{AsyncCommands, Script};

use super::{key, Store, PREFIX};

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

impl Store {
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

    /// The keys incarnation `node_inc` (`NODE/INCARNATION`) holds as
    /// Redis knows them (its `held` set).
    pub async fn held(&self, node_inc: &str) -> Result<Vec<String>> {
        Ok(self
            .conn()
            .smembers(key(&format!("held:{node_inc}")))
            .await?)
    }

    /// The TCP ports held anywhere (`tcp:PORT` keys).
    pub async fn ports(&self) -> Result<Vec<String>> {
        Ok(self.conn().smembers(key("ports")).await?)
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
}
