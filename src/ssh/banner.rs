//! What the user reads in their terminal: the session banner, per-tunnel
//! lines, refusals and the authentication banner shown to `-N` clients.
//!
//! Session text goes to a terminal that may be in raw mode (a pty), so every
//! line ends in `\r\n`.

use std::time::{Duration, SystemTime};

use super::handler::NameKind;
use crate::limits::{human, Refusal};

/// Text with `\n` line ends made `\r\n` for a raw terminal.
pub fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// Session text as `output=json` shows it: one JSON object per non-empty
/// line, with an `event` taken from the line's prefix.
pub fn json_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (event, message) = [
            ("ERROR: ", "error"),
            ("NOTICE: ", "notice"),
            ("NOTE: ", "note"),
        ]
        .iter()
        .find_map(|(prefix, event)| line.strip_prefix(prefix).map(|rest| (*event, rest)))
        .unwrap_or_else(|| {
            if line.starts_with("Stopped.") {
                ("stopped", line)
            } else if line.starts_with("Tunnel ") && line.contains(" closed: ") {
                ("closed", line)
            } else {
                ("message", line)
            }
        });
        let object = serde_json::json!({ "event": event, "message": message });
        out.push_str(&format!("{object}\r\n"));
    }
    out
}

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

/// A QR code of `url` in half-block characters, two modules per character
/// cell, forced black on white (a dark terminal theme would otherwise
/// invert it and phones would not scan it). Empty if it cannot be encoded.
pub fn qr(url: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    let Ok(code) = qrcode::QrCode::new(url.as_bytes()) else {
        return String::new();
    };
    let art = code
        .render::<Dense1x2>()
        .quiet_zone(true)
        .module_dimensions(1, 1)
        .build();
    let mut out = String::new();
    for row in art.lines() {
        out.push_str(&format!("  {QR_COLORS}{row}\x1b[0m\r\n"));
    }
    out.push_str(&line(""));
    out
}

/// Black foreground on a white background (256-colour palette).
pub const QR_COLORS: &str = "\x1b[38;5;16;48;5;231m";

/// The authentication banner (printed by OpenSSH on stderr before login,
/// also with `-N`): the random URL this connection gets unless it logs in
/// with a key.
pub fn auth_banner(url: &str) -> String {
    format!(
        "burrow: your URL is {url} (random), unless you log in with an SSH key: \
         then it is your key's stable URL, shown when the session starts\n"
    )
}

/// Which kind of name the banner's URLs are, and how to get the other.
/// `throwaway_command` is how to connect for a random name.
pub fn name_kind(kind: NameKind, fingerprint: Option<&str>, throwaway_command: &str) -> String {
    match kind {
        NameKind::Stable => line(&format!(
            "  Stable URL from your SSH key {}; the same every time you connect with it. \
             For a throwaway one: {throwaway_command}",
            fingerprint.unwrap_or("")
        )),
        NameKind::Random => line(
            "  Random URL: it changes on every connection. Connect with an SSH key for a stable one.",
        ),
        NameKind::Throwaway => line(
            "  Throwaway URL, as asked (random@). Connect as any other user with your key for a stable one.",
        ),
    }
}

/// Shown to everyone in `--auth-mode keys`.
pub fn keys_only() -> String {
    "burrow: this server only accepts SSH keys registered by its operator.\n".to_string()
}

pub fn name_needs_key(name: &str) -> String {
    line(&format!(
        "NOTE: you asked for the name {name:?}, but names are for SSH keys: you got a random name. \
         Connect with a key (and, on private servers, a key the operator granted {name:?})."
    ))
}

pub fn name_not_yours(name: &str) -> String {
    line(&format!(
        "ERROR: the name {name:?} belongs to another key on this server; ask its operator, or use -R 80:… for your own stable name"
    ))
}

pub fn name_reserved(name: &str) -> String {
    line(&format!(
        "ERROR: the name {name:?} is reserved by the operator (reserved-names); only a key the keys file grants it to can use it"
    ))
}

pub fn name_in_use(name: &str) -> String {
    line(&format!(
        "ERROR: the name {name:?} is in use by another connection (a different key, or an anonymous one)"
    ))
}

pub fn invalid_name(address: &str) -> String {
    line(&format!(
        "ERROR: {address:?} is not a name this server can give: use a DNS label (a-z, 0-9, '-', at most 63), e.g. -R myapp:80:localhost:3000"
    ))
}

/// A custom domain asked for while they are turned off.
pub fn custom_domains_off(name: &str) -> String {
    line(&format!(
        "ERROR: custom domain {name}: this server does not serve custom domains (--custom-domains off); use -R 80:… for a name under the server's domain"
    ))
}

/// A custom domain asked for without a key: there is no fingerprint to
/// find in DNS.
pub fn custom_needs_key(name: &str) -> String {
    line(&format!(
        "ERROR: custom domain {name}: needs an SSH key, since DNS proves ownership with the key's fingerprint (TXT _burrow.{name}); connect with a key (ssh -i …)"
    ))
}

/// A custom domain DNS does not prove: `why` says which record.
pub fn custom_refused(name: &str, why: &str) -> String {
    line(&format!("ERROR: custom domain {name}: {why}"))
}

/// A custom domain's certificate could not be issued.
pub fn custom_cert_failed(name: &str, why: &str) -> String {
    line(&format!(
        "NOTICE: no certificate for {name} ({why}); visitors see the server's own certificate until you reconnect"
    ))
}

/// Sent to a connection whose tunnel a newer connection of the same key
/// took over.
pub fn taken_over(url: &str) -> String {
    line(&format!(
        "NOTICE: {url} was taken over by a newer connection with the same SSH key; this one no longer serves it."
    ))
}

/// What a connection's tunnels did, for the Ctrl+C summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub tunnels: usize,
    pub requests: u64,
    pub bytes_out: u64,
    pub errors: u64,
}

/// Said when the user stops the tunnel with Ctrl+C:
/// `Stopped. 12 requests, 3.4 MB served, 1 error. (1 tunnel closed)`.
pub fn stopped(summary: &Summary) -> String {
    let plural = |n: u64, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let closed = match summary.tunnels {
        0 => "no tunnel was open".to_string(),
        n => format!("{} closed", plural(n as u64, "tunnel", "tunnels")),
    };
    line(&format!(
        "Stopped. {}, {} served, {}. ({closed})",
        plural(summary.requests, "request", "requests"),
        crate::limits::human_bytes(summary.bytes_out),
        plural(summary.errors, "error", "errors"),
    ))
}

/// A raw TCP forward on a server without `--tcp-ports`.
pub fn tcp_disabled(port: u32, domain: &str) -> String {
    line(&format!(
        "ERROR: -R {port} asks for a raw TCP tunnel, but TCP tunnels are disabled on this server \
         (the operator sets --tcp-ports). Use -R 80 for an HTTPS tunnel, e.g. ssh -R 80:localhost:3000 {domain}"
    ))
}

/// The requested TCP port could not be had; `why` says why.
pub fn tcp_port_instead(requested: u16, why: &str, port: u16) -> String {
    line(&format!(
        "NOTE: port {requested} {why}; you got port {port} instead."
    ))
}

/// No port of the range could be had.
pub fn tcp_ports_exhausted(ranges: &str) -> String {
    line(&format!(
        "ERROR: no free TCP port left in this server's range ({ranges}); try again later"
    ))
}

/// How many clients serve a name (or port) now, under `balance`.
pub fn clients_now(url: &str, count: usize, balance: crate::config::Balance) -> String {
    match count {
        1 => line(&format!("NOTICE: {url} is now served by this client only.")),
        n => line(&format!(
            "NOTICE: {url} is now served by {n} clients ({}).",
            balance.as_str()
        )),
    }
}

/// HTTP-only options on a connection whose TCP or passthrough tunnels
/// cannot apply them.
pub fn http_options_on_raw() -> String {
    line(
        "NOTE: auth=, cors= and host= apply to HTTP tunnels only; your TCP and TLS-passthrough \
         tunnels are open to anyone who knows the address (allow= does restrict them).",
    )
}

/// A second forward of one connection for a name (or port) it serves.
pub fn served_twice(url: &str) -> String {
    line(&format!(
        "ERROR: {url} is already served by another -R of this connection; one is enough"
    ))
}

/// Sent to every session when the server starts shutting down.
pub fn restarting() -> String {
    line(
        "NOTICE: server restarting, reconnect in a few seconds — your stable URL will come back \
         (random URLs change; autossh reconnects by itself).",
    )
}

/// The operator closed the tunnel through the admin API.
pub const CLOSED_BY_OPERATOR: &str = "closed by the server operator";

pub fn duplicate_forward(address: &str, port: u32) -> String {
    line(&format!(
        "ERROR: -R {address}:{port} is already forwarded on this connection and OpenSSH could \
         not tell the two apart; use -R 0:localhost:PORT for another tunnel"
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

/// Sent once when a tunnel nears its idle limit.
pub fn idle_notice(url: &str, left: Duration, idle: Duration) -> String {
    line(&format!(
        "NOTICE: {url} closes in {} unless it gets traffic (no traffic for {} closes a tunnel). \
         Any request keeps it open.",
        human(left),
        human(idle)
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
