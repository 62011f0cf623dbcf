//! What the user reads in their terminal: the session banner, per-tunnel
//! lines, refusals and the authentication banner shown to `-N` clients.
//!
//! Session text goes to a terminal that may be in raw mode (a pty), so every
//! line ends in `\r\n`.

use std::time::{Duration, SystemTime};

use crate::limits::{human, Refusal};

/// A line in the session; appends the `\r\n` a raw terminal needs.
pub fn line(text: &str) -> String {
    format!("{text}\r\n")
}

/// How the user asked for a forward, as they typed it after `-R`.
pub fn forward_spec(requested_port: u32, allocated_port: u32) -> String {
    if requested_port == 0 {
        format!("-R 0, allocated port {allocated_port}")
    } else {
        format!("-R {requested_port}")
    }
}

/// One tunnel line: the URL and which `-R` it serves.
pub fn tunnel_line(url: &str, spec: &str) -> String {
    line(&format!("  {url}   ({spec})"))
}

/// The banner shown once when the session starts. `expiry` says how long
/// the tunnels last.
pub fn session_banner(tunnel_lines: &[String], expiry: &str) -> String {
    let mut out = String::new();
    out.push_str(&line(""));
    if tunnel_lines.is_empty() {
        out.push_str(&line("  burrow: connected, but no tunnel yet."));
        out.push_str(&line(
            "  Ask for one with -R, e.g.  ssh -R 80:localhost:3000 <this host>",
        ));
    } else {
        let noun = if tunnel_lines.len() == 1 {
            "Your tunnel is"
        } else {
            "Your tunnels are"
        };
        out.push_str(&line(&format!("  burrow: {noun} live")));
        out.push_str(&line(""));
        for tunnel in tunnel_lines {
            out.push_str(tunnel);
        }
        out.push_str(&line(""));
        out.push_str(&line(
            "  Each URL forwards to the local address you gave after its -R.",
        ));
    }
    out.push_str(&line(&format!("  {expiry}")));
    out.push_str(&line("  Press Ctrl+C to stop."));
    out.push_str(&line(""));
    out
}

/// Shown before login completes; OpenSSH prints it on stderr even with `-N`,
/// where no session channel will ever carry the real banner.
pub fn auth_banner(url: &str) -> String {
    format!(
        "burrow: your tunnel URL is {url}\n\
         (that is your first -R 80 forward; connect without -N to see every URL)\n"
    )
}

/// Said when the user stops the tunnel with Ctrl+C.
pub fn stopped(count: usize) -> String {
    let what = match count {
        0 => "no tunnel was open".to_string(),
        1 => "1 tunnel closed".to_string(),
        n => format!("{n} tunnels closed"),
    };
    line(&format!("Stopped. {what}."))
}

pub fn unsupported_port(port: u32, domain: &str) -> String {
    line(&format!(
        "ERROR: -R {port} is not supported here: use -R 80 (or 443, or 0) for an HTTPS tunnel, \
         e.g. ssh -R 80:localhost:3000 {domain}"
    ))
}

pub fn duplicate_forward(address: &str, port: u32) -> String {
    line(&format!(
        "ERROR: -R {address}:{port} is already forwarded on this connection and OpenSSH could \
         not tell the two apart; use -R 0:localhost:PORT for another tunnel"
    ))
}

pub fn exec_refused(command: &str, domain: &str) -> String {
    line(&format!(
        "ERROR: burrow runs no commands (got {command:?}). \
         Connect with: ssh -R 80:localhost:3000 {domain}"
    ))
}

/// How long tunnels last, for the banner.
pub fn expiry(idle: Duration, lifetime: Duration) -> String {
    let idle_part = (!idle.is_zero()).then(|| format!("after {} without traffic", human(idle)));
    let life_part = (!lifetime.is_zero()).then(|| {
        let at = humantime::format_rfc3339_seconds(SystemTime::now() + lifetime).to_string();
        format!(
            "{} after it opened ({} UTC)",
            human(lifetime),
            at.trim_end_matches('Z').replace('T', " ")
        )
    });
    match (idle_part, life_part) {
        (None, None) => "Lasts as long as this SSH connection stays open.".into(),
        (Some(i), None) => format!("Closes {i}."),
        (None, Some(l)) => format!("Closes {l}."),
        (Some(i), Some(l)) => format!("Closes {i}, and at the latest {l}."),
    }
}

/// A limit refused something the user asked for.
pub fn limit_error(refusal: &Refusal) -> String {
    line(&format!("ERROR: {}: {}", refusal.limit, refusal.message))
}

/// Sent before the maximum lifetime ends.
pub fn lifetime_notice(url: &str, left: Duration) -> String {
    line(&format!(
        "NOTICE: {url} closes in {} (maximum tunnel lifetime). Reconnect afterwards to get a new tunnel.",
        human(left)
    ))
}

/// Sent when the server closed a tunnel.
pub fn tunnel_expired(url: &str, reason: &str, connect: &str) -> String {
    line(&format!(
        "Tunnel {url} closed: {reason}. Reconnect with: {connect}"
    ))
}

/// Sent to every connection of an IP that just got blocked.
pub fn blocked(until_utc: &str, reason: &str) -> String {
    line(&format!(
        "ERROR: your IP is blocked until {until_utc} ({reason}); all its tunnels are closed."
    ))
}
