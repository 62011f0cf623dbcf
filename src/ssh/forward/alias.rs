//! Private aliases (`-R NAME:PORT` with a port that is no HTTP port): a
//! key is required, the grant rule decides the name, and the alias is only
//! ever reached through SSH.

use super::{Forward, Forwards, HTTP_PORTS, TCP_ADDRESS};
use crate::ssh::banner::{self, Line};
use crate::tunnel::names::Denied;
use crate::tunnel::private::{self, Alias};
use crate::tunnel::registry::ClaimError;
use crate::tunnel::{Bind, Kind};

impl Forwards {
    /// The private alias a forward asks for: a name (`NAME` or
    /// `NAME.DOMAIN`) with a port that makes no HTTPS tunnel.
    pub(super) fn private_alias(&self, address: &str, requested: u32) -> Option<Alias> {
        if HTTP_PORTS.contains(&requested) || address == TCP_ADDRESS {
            return None;
        }
        private::alias(address, requested, &self.server.registry.public().domain)
    }

    /// Checks and claims one private alias (`-R NAME:PORT:…`): for a key
    /// the grant rule lets hold NAME, never for keyless clients.
    pub(super) async fn open_private_forward(
        &mut self,
        address: &str,
        requested: u32,
        alias: Alias,
    ) -> Result<(Forward, Vec<Line>), Line> {
        self.admit_forward(address, requested).await?;
        if self.key.is_none() {
            self.refused(address, requested, "private alias without a key");
            return Err(banner::private_needs_key(&alias));
        }
        let files = self.files();
        let granted = match self.grants(&files).name(self.owner_key(), &alias.name) {
            Ok(granted) => granted,
            Err(denied) => {
                self.refused(address, requested, "private alias refused");
                return Err(match denied {
                    Denied::Reserved => banner::name_reserved(&alias.name),
                    _ => banner::name_not_yours(&alias.name),
                });
            }
        };
        let key = alias.key();
        let bind = Bind {
            address: address.to_string(),
            port: requested,
        };
        let tunnel = self.tunnel((key.clone(), Kind::Private(alias.port)), bind, granted);
        let shared = match self.server.registry.claim(tunnel, None).await {
            Ok(claimed) => self.server.registry.announce_claim(&claimed),
            Err(ClaimError::Taken) => {
                self.refused(address, requested, "private alias in use");
                return Err(banner::private_in_use(&alias));
            }
            Err(ClaimError::Duplicate) => {
                self.refused(
                    address,
                    requested,
                    "alias already served by this connection",
                );
                return Err(banner::duplicate_forward(address, requested));
            }
        };
        tracing::info!(conn = self.session.id(), ip = %self.ip, alias = %alias, fingerprint = self.owner_key(), "private alias opened");
        let forward = Forward {
            address: address.to_string(),
            requested,
            port: requested,
            key,
            kind: Kind::Private(alias.port),
        };
        Ok((
            forward,
            shared.map(|n| banner::notice(&n)).into_iter().collect(),
        ))
    }
}
