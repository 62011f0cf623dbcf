//! The limits every forward passes before it is granted: forwards per
//! connection, tunnels on the server and per IP (in a cluster, every
//! node's), refusals recorded through the one refusal path.

use super::Forwards;
use crate::counters::COUNTERS;
use crate::limits::{Refusal, Side};
use crate::plans::Limit;
use crate::ssh::banner::{self, Line};

impl Forwards {
    /// The tunnel limits, checked before a forward is granted; in a
    /// cluster they count every node's tunnels (from the heartbeats and the
    /// shared per-IP counts, so approximately).
    pub(super) async fn check_tunnel_limits(&self) -> Result<(), Refusal> {
        let limits = &self.server.limits;
        let registry = &self.server.registry;
        let total = registry.tunnels_total();
        if limits.max_tunnels > 0 && total >= limits.max_tunnels as usize {
            return Err(Refusal::new(
                "max-tunnels",
                format!(
                    "the server is at its limit of {} tunnels; try again later",
                    limits.max_tunnels
                ),
            ));
        }
        if limits.max_tunnels_per_ip == 0 {
            return Ok(());
        }
        let mine = registry.tunnels_of_ip_everywhere(self.ip).await;
        if mine >= limits.max_tunnels_per_ip as usize {
            return Err(Refusal::new(
                "max-tunnels-per-ip",
                format!(
                    "your IP already has {mine} tunnels open (limit {}); close one first",
                    limits.max_tunnels_per_ip
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn refused(&self, address: &str, requested: u32, reason: &str) {
        let (conn, ip) = (self.session.id(), self.ip);
        tracing::info!(conn, %ip, address, port = requested, reason, "forward refused");
    }

    /// The limits every forward passes; `Err` is the line for the user.
    pub(super) async fn admit_forward(&self, address: &str, port: u32) -> Result<(), Line> {
        let twice = self
            .granted
            .iter()
            .any(|f| f.address == address && f.port == port);
        if twice {
            self.refused(address, port, "duplicate forward");
            return Err(banner::duplicate_forward(address, port));
        }
        self.check_tunnel_limits().await.map_err(|refusal| {
            let ip = self.ip;
            self.server
                .refusals
                .refuse(&refusal, ip, Side::Client, "forward");
            banner::limit_error(&refusal)
        })?;
        self.check_plan().map_err(|refusal| {
            let ip = self.ip;
            self.server
                .refusals
                .refuse(&refusal, ip, Side::Client, "forward");
            banner::limit_error(&refusal)
        })
    }

    /// The user's plan: its concurrent tunnels (on this node), and its
    /// quotas (a used-up quota refuses new tunnels until it resets).
    fn check_plan(&self) -> Result<(), Refusal> {
        let Some(account) = self.session.account() else {
            return Ok(());
        };
        let plan = account.plan();
        let refused = |refusal: Refusal| {
            let limit = refusal.limit.trim_start_matches("plan-");
            COUNTERS.quota_refused(&plan.name, limit);
            Err(refusal)
        };
        for limit in [Limit::Transfer, Limit::Requests] {
            if let Some(refusal) = account.exhausted(limit) {
                return refused(refusal);
            }
        }
        if plan.max_tunnels > 0 {
            let open = self.server.registry.tunnels_of_account(account);
            if open >= plan.max_tunnels as usize {
                return refused(Refusal::new(
                    "plan-max-tunnels",
                    format!(
                        "the {} plan allows {} tunnels at once and you have {open}; close one first",
                        plan.name, plan.max_tunnels
                    ),
                ));
            }
        }
        Ok(())
    }
}
