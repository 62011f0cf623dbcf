//! Plans: per-user limits (`--plans-file`, and the default plan's flags).
//! The values are checked by `plans::model` (the same code as the file's
//! items), so a flag and a file line cannot disagree about what is valid.

use std::path::PathBuf;
use std::time::Duration;

use super::parse::parse_duration;

/// Plans: limits that follow a user (an SSH key, or a keyless client's
/// IP) across all their tunnels. With none of these set, no user is
/// accounted and nothing is limited beyond the limits above.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Plans and quotas (per user)")]
pub struct PlanArgs {
    /// File of named plans, one a line: `NAME max-tunnels=N bandwidth=SIZE/s
    /// transfer=SIZE/PERIOD requests=N/PERIOD` (PERIOD: day, week, month,
    /// UTC). Keys get one with `plan=NAME` in the keys file or `plan` in
    /// --auth-url's answer; everyone else gets `default`. Reloaded like the
    /// keys file.
    #[arg(long, env = "PLANS_FILE")]
    pub plans_file: Option<PathBuf>,

    /// The default plan's concurrent tunnels per key (or keyless IP).
    /// 0 = not limited.
    #[arg(long, env = "DEFAULT_PLAN_MAX_TUNNELS", value_name = "N")]
    pub default_plan_max_tunnels: Option<String>,

    /// The default plan's bandwidth per key, both directions of all its
    /// tunnels together, e.g. `1MiB/s`. 0 = not shaped.
    #[arg(long, env = "DEFAULT_PLAN_BANDWIDTH", value_name = "SIZE/s")]
    pub default_plan_bandwidth: Option<String>,

    /// The default plan's transfer quota, e.g. `1GiB/day`, `100GiB/month`.
    #[arg(long, env = "DEFAULT_PLAN_TRANSFER", value_name = "SIZE/PERIOD")]
    pub default_plan_transfer: Option<String>,

    /// The default plan's requests (and relayed connections) per period,
    /// e.g. `10000/day`.
    #[arg(long, env = "DEFAULT_PLAN_REQUESTS", value_name = "N/PERIOD")]
    pub default_plan_requests: Option<String>,

    /// The default plan's tunnel idle timeout (instead of
    /// --tunnel-idle-timeout).
    #[arg(long, env = "DEFAULT_PLAN_TUNNEL_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub default_plan_tunnel_idle_timeout: Option<Duration>,

    /// The default plan's tunnel lifetime (instead of --tunnel-max-lifetime).
    #[arg(long, env = "DEFAULT_PLAN_TUNNEL_MAX_LIFETIME", value_parser = parse_duration)]
    pub default_plan_tunnel_max_lifetime: Option<Duration>,

    /// How often usage is written to the state directory (at most this
    /// much is lost in a crash; a clean shutdown writes it at once).
    #[arg(long, env = "USAGE_SAVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub usage_save_interval: Duration,
}

impl PlanArgs {
    /// Whether plans are configured at all.
    pub fn any(&self) -> bool {
        self.plans_file.is_some() || !self.default_items().is_empty()
    }

    /// The default plan's flags as plan items (`key`, `value`), with the
    /// flag each came from.
    pub fn default_items(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut items = Vec::new();
        let text = [
            (
                "max-tunnels",
                "--default-plan-max-tunnels",
                &self.default_plan_max_tunnels,
            ),
            (
                "bandwidth",
                "--default-plan-bandwidth",
                &self.default_plan_bandwidth,
            ),
            (
                "transfer",
                "--default-plan-transfer",
                &self.default_plan_transfer,
            ),
            (
                "requests",
                "--default-plan-requests",
                &self.default_plan_requests,
            ),
        ];
        for (key, flag, value) in text {
            if let Some(value) = value {
                items.push((key, flag, value.clone()));
            }
        }
        let durations = [
            (
                "tunnel-idle-timeout",
                "--default-plan-tunnel-idle-timeout",
                self.default_plan_tunnel_idle_timeout,
            ),
            (
                "tunnel-max-lifetime",
                "--default-plan-tunnel-max-lifetime",
                self.default_plan_tunnel_max_lifetime,
            ),
        ];
        for (key, flag, value) in durations {
            if let Some(value) = value {
                items.push((key, flag, format!("{}s", value.as_secs())));
            }
        }
        items
    }
}
