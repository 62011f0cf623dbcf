//! What the user reads in their terminal: the session banner, per-tunnel
//! lines, refusals and the authentication banner shown to `-N` clients.
//!
//! Session text goes to a terminal that may be in raw mode (a pty), so every
//! line ends in `\r\n`.

use std::time::{Duration, SystemTime};

use crate::limits::{human, Refusal};
use crate::tunnel::options::Output;
use crate::tunnel::Notice;

/// Text with `\n` line ends made `\r\n` for a raw terminal.
pub fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// What a session line is, as `output=json` names it (`event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `ERROR: …`: something the user asked for was refused.
    Error,
    /// `NOTICE: …`: something happened to the user's tunnels.
    Notice,
    /// `NOTE: …`: something the user asked for was done differently.
    Note,
    /// `Stopped. …`: the Ctrl+C summary.
    Stopped,
    /// `Tunnel … closed: …`: the server closed a tunnel.
    Closed,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Error => "error",
            Event::Notice => "notice",
            Event::Note => "note",
            Event::Stopped => "stopped",
            Event::Closed => "closed",
        }
    }

    /// The text in front of the message in a terminal.
    fn prefix(self) -> &'static str {
        match self {
            Event::Error => "ERROR: ",
            Event::Notice => "NOTICE: ",
            Event::Note => "NOTE: ",
            Event::Stopped | Event::Closed => "",
        }
    }
}

/// One line of session output, typed: drawn as text for a terminal, or as
/// a JSON object for `output=json` (`{"event": …, "message": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub event: Event,
    pub message: String,
}

impl Line {
    pub fn error(message: impl Into<String>) -> Line {
        Line::new(Event::Error, message)
    }

    pub fn notice(message: impl Into<String>) -> Line {
        Line::new(Event::Notice, message)
    }

    pub fn note(message: impl Into<String>) -> Line {
        Line::new(Event::Note, message)
    }

    fn new(event: Event, message: impl Into<String>) -> Line {
        Line {
            event,
            message: message.into(),
        }
    }

    /// The line for a terminal, `\r\n` included.
    pub fn text(&self) -> String {
        line(&format!("{}{}", self.event.prefix(), self.message))
    }

    /// The line as an `output=json` event, `\r\n` included.
    pub fn json(&self) -> String {
        let object = serde_json::json!({ "event": self.event.name(), "message": self.message });
        format!("{object}\r\n")
    }

    /// The line as the session shows it.
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Text => self.text(),
            Output::Json => self.json(),
        }
    }
}

/// What the user reads for a notice from the tunnel core.
pub fn notice(notice: &Notice) -> Line {
    match notice {
        Notice::TakenOver { url } => taken_over(url),
        Notice::Closed {
            url,
            reason,
            connect,
        } => tunnel_expired(url, reason, connect),
        Notice::Clients {
            url,
            count,
            balance,
        } => clients_now(url, *count, *balance),
        Notice::LifetimeSoon { url, left } => lifetime_notice(url, *left),
        Notice::IdleSoon { url, left, idle } => idle_notice(url, *left, *idle),
        Notice::Blocked { until_utc, reason } => blocked(until_utc, reason),
        Notice::Restarting => restarting(),
        Notice::CertFailed { name, why } => custom_cert_failed(name, why),
    }
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

/// A tunnel as the `tunnel` event of `output=json` describes it.
pub struct TunnelEvent {
    /// `http`, `tls` or `tcp`.
    pub kind: &'static str,
    pub url: String,
    /// The public TCP port of a TCP tunnel.
    pub port: Option<u16>,
    /// The registry key (`subdomain` in the event).
    pub key: String,
    /// Whether the name is the key's stable one.
    pub stable: bool,
    /// How many clients serve it.
    pub clients: usize,
    /// How the user asked for it (`-R 80`).
    pub spec: String,
    pub idle: Duration,
    pub lifetime: Duration,
    /// Who must sign in to visit it (`None`: nobody needs to).
    pub login: Option<String>,
}

/// The `tunnel` event of `output=json`, `\r\n` included.
pub fn tunnel_event(tunnel: &TunnelEvent) -> String {
    let event = serde_json::json!({
        "event": "tunnel",
        "kind": tunnel.kind,
        "url": tunnel.url,
        "port": tunnel.port,
        "subdomain": tunnel.key,
        "stable": tunnel.stable,
        "clients": tunnel.clients,
        "forward": tunnel.spec,
        "idle_timeout_secs": tunnel.idle.as_secs(),
        "lifetime_secs": tunnel.lifetime.as_secs(),
        "inspector": (tunnel.kind == "http").then_some(INSPECTOR_URL),
        "login": tunnel.login,
    });
    format!("{event}\r\n")
}

/// Where the request inspector shows up with [`INSPECTOR_FLAG`].
pub const INSPECTOR_URL: &str = "http://localhost:4040";
/// The one extra ssh flag the request inspector needs.
pub const INSPECTOR_FLAG: &str = "-L 4040:localhost:4040";

/// Under name tunnels that require sign-in: who gets through.
pub fn sign_in_required(who: &str) -> String {
    line(&format!(
        "  Sign-in required: visitors sign in first; only {who} get through"
    ))
}

/// The hint under HTTP tunnels: how to open the request inspector.
pub fn inspector_hint() -> String {
    line(&format!(
        "  Inspect and replay requests: add {INSPECTOR_FLAG} to ssh, open {INSPECTOR_URL}"
    ))
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

/// What kind of name a connection gets, for the banner.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Derived from the client's key: the same every time.
    Stable,
    /// Random, because the client has no key (or showed none).
    Random,
    /// Random, because the client asked for one (`random@`).
    Throwaway,
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

pub fn name_needs_key(name: &str) -> Line {
    Line::note(format!(
        "you asked for the name {name:?}, but names are for SSH keys: you got a random name. \
         Connect with a key (and, on private servers, a key the operator granted {name:?})."
    ))
}

pub fn name_not_yours(name: &str) -> Line {
    Line::error(format!(
        "the name {name:?} belongs to another key on this server; ask its operator, or use -R 80:… for your own stable name"
    ))
}

/// A private alias asked for without a key.
pub fn private_needs_key(alias: &crate::tunnel::private::Alias) -> Line {
    Line::error(format!(
        "-R {alias} asks for a private alias, and private aliases are for SSH keys: connect with a key \
         (ssh -i KEY …). For a public TCP port use -R {}:… without a name",
        alias.port
    ))
}

/// A private alias another key's connection holds.
pub fn private_in_use(alias: &crate::tunnel::private::Alias) -> Line {
    Line::error(format!(
        "the private alias {alias} is held by another connection; pick another name, or connect with the key that holds it"
    ))
}

pub fn name_reserved(name: &str) -> Line {
    Line::error(format!(
        "the name {name:?} is reserved by the operator (reserved-names); only a key the keys file grants it to can use it"
    ))
}

pub fn name_in_use(name: &str) -> Line {
    Line::error(format!(
        "the name {name:?} is in use by another connection (a different key, or an anonymous one)"
    ))
}

pub fn invalid_name(address: &str) -> Line {
    Line::error(format!(
        "{address:?} is not a name this server can give: use a DNS label (a-z, 0-9, '-', at most 63), e.g. -R myapp:80:localhost:3000, or a domain name of yours, e.g. -R app.example.org:80:localhost:3000"
    ))
}

/// A custom domain asked for while they are turned off.
pub fn custom_domains_off(name: &str) -> Line {
    Line::error(format!(
        "custom domain {name}: this server does not serve custom domains (--custom-domains off); use -R 80:… for a name under the server's domain"
    ))
}

/// A custom domain asked for without a key: there is no fingerprint to
/// find in DNS.
pub fn custom_needs_key(name: &str) -> Line {
    Line::error(format!(
        "custom domain {name}: needs an SSH key, since DNS proves ownership with the key's fingerprint (TXT _burrow.{name}); connect with a key (ssh -i …)"
    ))
}

/// A custom domain DNS does not prove: `why` says which record.
pub fn custom_refused(name: &str, why: &str) -> Line {
    Line::error(format!("custom domain {name}: {why}"))
}

/// A custom domain's certificate could not be issued.
pub fn custom_cert_failed(name: &str, why: &str) -> Line {
    Line::notice(format!(
        "no certificate for {name} ({why}); visitors see the server's own certificate until you reconnect"
    ))
}

/// Sent to a connection whose tunnel a newer connection of the same key
/// took over.
pub fn taken_over(url: &str) -> Line {
    Line::notice(format!(
        "{url} was taken over by a newer connection with the same SSH key; this one no longer serves it."
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
pub fn stopped(summary: &Summary) -> Line {
    let plural = |n: u64, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let closed = match summary.tunnels {
        0 => "no tunnel was open".to_string(),
        n => format!("{} closed", plural(n as u64, "tunnel", "tunnels")),
    };
    Line::new(
        Event::Stopped,
        format!(
            "Stopped. {}, {} served, {}. ({closed})",
            plural(summary.requests, "request", "requests"),
            crate::limits::human_bytes(summary.bytes_out),
            plural(summary.errors, "error", "errors"),
        ),
    )
}

/// A raw TCP forward on a server without `--tcp-ports`.
pub fn tcp_disabled(port: u32, domain: &str) -> Line {
    Line::error(format!(
        "-R {port} asks for a raw TCP tunnel, but TCP tunnels are disabled on this server \
         (the operator sets --tcp-ports). Use -R 80 for an HTTPS tunnel, e.g. ssh -R 80:localhost:3000 {domain}"
    ))
}

/// The requested TCP port could not be had; `why` says why.
pub fn tcp_port_instead(requested: u16, why: &str, port: u16) -> Line {
    Line::note(format!(
        "port {requested} {why}; you got port {port} instead."
    ))
}

/// No port of the range could be had.
pub fn tcp_ports_exhausted(ranges: &str) -> Line {
    Line::error(format!(
        "no free TCP port left in this server's range ({ranges}); try again later"
    ))
}

/// How many clients serve a name (or port) now, under `balance`.
pub fn clients_now(url: &str, count: usize, balance: crate::config::Balance) -> Line {
    match count {
        1 => Line::notice(format!("{url} is now served by this client only.")),
        n => Line::notice(format!(
            "{url} is now served by {n} clients ({}).",
            balance.as_str()
        )),
    }
}

/// HTTP-only options on a connection whose TCP or passthrough tunnels
/// cannot apply them.
pub fn http_options_on_raw() -> Line {
    Line::note(
        "auth=, cors= and host= apply to HTTP tunnels only; your TCP and TLS-passthrough \
         tunnels are open to anyone who knows the address (allow= does restrict them).",
    )
}

/// A second forward of one connection for a name (or port) it serves.
pub fn served_twice(url: &str) -> Line {
    Line::error(format!(
        "{url} is already served by another -R of this connection; one is enough"
    ))
}

/// Sent to every session when the server starts shutting down.
pub fn restarting() -> Line {
    Line::notice(
        "server restarting, reconnect in a few seconds — your stable URL will come back \
         (random URLs change; autossh reconnects by itself).",
    )
}

pub fn duplicate_forward(address: &str, port: u32) -> Line {
    Line::error(format!(
        "-R {address}:{port} is already forwarded on this connection and OpenSSH could \
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
pub fn limit_error(refusal: &Refusal) -> Line {
    Line::error(format!("{}: {}", refusal.limit, refusal.message))
}

/// Sent before the maximum lifetime ends.
pub fn lifetime_notice(url: &str, left: Duration) -> Line {
    Line::notice(format!(
        "{url} closes in {} (maximum tunnel lifetime). Reconnect afterwards to get a new tunnel.",
        human(left)
    ))
}

/// Sent once when a tunnel nears its idle limit.
pub fn idle_notice(url: &str, left: Duration, idle: Duration) -> Line {
    Line::notice(format!(
        "{url} closes in {} unless it gets traffic (no traffic for {} closes a tunnel). \
         Any request keeps it open.",
        human(left),
        human(idle)
    ))
}

/// Sent when the server closed a tunnel.
pub fn tunnel_expired(url: &str, reason: &str, connect: &str) -> Line {
    Line::new(
        Event::Closed,
        format!("Tunnel {url} closed: {reason}. Reconnect with: {connect}"),
    )
}

/// Sent to every connection of an IP that just got blocked.
pub fn blocked(until_utc: &str, reason: &str) -> Line {
    Line::error(format!(
        "your IP is blocked until {until_utc} ({reason}); all its tunnels are closed."
    ))
}
