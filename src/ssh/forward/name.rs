//! Name tunnels: the name a forward gets (stable from the key, random,
//! the one asked for when the grant rule allows it, or a custom domain
//! proven in DNS), held until the claim, and the claim itself.

use std::sync::Arc;

use super::{Forward, Forwards};
use crate::limits::Side;
use crate::ssh::banner::{self, Line};
use crate::tunnel::names::{self, Denied, Requested};
use crate::tunnel::registry::{ClaimError, Reservation};
use crate::tunnel::{is_custom_key, Bind, Client, Kind};

/// A granted name, held until its forward is claimed.
pub(super) struct Chosen {
    reservation: Reservation,
    /// A note for the user (a request that was ignored).
    note: Option<Line>,
    /// Granted by the keys file, or proven in DNS.
    granted: bool,
}

impl Forwards {
    /// Picks the name for a new name forward that asked for `requested`:
    /// the requested name if the grant rule lets this key have it, else
    /// the stable or random default. `Err` is the line to show the user.
    pub(super) async fn choose_name(&mut self, requested: Requested) -> Result<Chosen, Line> {
        let index = self.granted.len();
        let name = match requested {
            Requested::Default => return Ok(self.default_name(index, None)),
            Requested::Custom(name) => return self.choose_custom(&name).await,
            Requested::Label(name) => name,
        };
        if self.key.is_none() {
            return Ok(self.default_name(index, Some(banner::name_needs_key(&name))));
        }
        let files = self.files();
        match self.grants(&files).name(self.owner_key(), &name) {
            Ok(granted) => Ok(Chosen {
                reservation: self.namer.hold(&name),
                note: None,
                granted,
            }),
            Err(Denied::Reserved) => Err(banner::name_reserved(&name)),
            Err(_) => Err(banner::name_not_yours(&name)),
        }
    }

    pub(super) fn default_name(&mut self, index: usize, note: Option<Line>) -> Chosen {
        Chosen {
            reservation: self.namer.default_name(self.key.as_ref(), index),
            note,
            granted: false,
        }
    }

    /// A custom domain: on, asked for by a key, proven in DNS, and within
    /// the certificate issuance limit. DNS ownership counts as a grant:
    /// keys listed in the TXT record may share the name (`--balance`) and
    /// visitors see no browser warning.
    pub(super) async fn choose_custom(&self, name: &str) -> Result<Chosen, Line> {
        let custom = &self.server.custom;
        if !custom.enabled {
            return Err(banner::custom_domains_off(name));
        }
        let Some(key) = &self.key else {
            return Err(banner::custom_needs_key(name));
        };
        if let Err(why) = custom.verifier.verify(name, &key.fingerprint).await {
            tracing::info!(conn = self.session.id(), ip = %self.ip, name, fingerprint = %key.fingerprint, reason = %why, "custom domain refused");
            return Err(banner::custom_refused(name, &why));
        }
        if let Err(refusal) = custom.certs.admit(name) {
            self.server
                .refusals
                .refuse(&refusal, self.ip, Side::Client, "custom domain");
            return Err(banner::limit_error(&refusal));
        }
        Ok(Chosen {
            reservation: self.namer.hold(name),
            note: None,
            granted: true,
        })
    }

    pub(super) async fn open_name_forward(
        &mut self,
        address: &str,
        requested: u32,
    ) -> Result<(Forward, Vec<Line>), Line> {
        let port = match requested {
            0 => self.allocate_port(address),
            port => port,
        };
        self.admit_forward(address, port).await?;
        let chosen = match names::requested(address, &self.server.registry.public().domain) {
            Ok(wanted) => self.choose_name(wanted).await,
            Err(address) => Err(banner::invalid_name(&address)),
        };
        let chosen = chosen.inspect_err(|_| self.refused(address, requested, "name refused"))?;
        let key = chosen.reservation.name().to_string();
        let bind = Bind {
            address: address.to_string(),
            port,
        };
        let tunnel = self.tunnel((key.clone(), Kind::Name), bind, chosen.granted);
        let claimed = self.server.registry.claim(tunnel, None).await;
        drop(chosen.reservation);
        let shared = match claimed {
            Ok(claimed) => self.server.registry.announce_claim(&claimed),
            Err(ClaimError::Taken) => {
                self.refused(address, requested, "name in use");
                return Err(banner::name_in_use(&key));
            }
            Err(ClaimError::Duplicate) => {
                self.refused(address, requested, "name already served by this connection");
                let url = self.server.registry.public().url(&key);
                return Err(banner::served_twice(&url));
            }
        };
        tracing::info!(conn = self.session.id(), ip = %self.ip, subdomain = %key, port = requested, fingerprint = self.owner_key(), "tunnel opened");
        if is_custom_key(&key) {
            self.server
                .custom
                .start_certificate(key.clone(), Arc::clone(&self.session) as Arc<dyn Client>);
        }
        let notes = chosen
            .note
            .into_iter()
            .chain(shared.map(|n| banner::notice(&n)));
        let forward = Forward {
            address: address.to_string(),
            requested,
            port,
            key,
            kind: Kind::Name,
        };
        Ok((forward, notes.collect()))
    }
}
