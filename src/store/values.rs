//! Raw values of the shared state (the stable-name secret, the ACME
//! account) and locks with an owner token (one node orders each
//! certificate).

use std::time::Duration;

use anyhow::Result;
use redis::{AsyncCommands, Script};

use super::{key, Store};

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

impl Store {
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

    /// Marks `name` as used for `ttl`: `true` the first time only (every
    /// node asking after that, until it expires, gets `false`). Sign-in's
    /// one-time codes are spent this way.
    pub async fn take_once(&self, name: &str, ttl: Duration) -> Result<bool> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key(name))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
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
}
