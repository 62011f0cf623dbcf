//! Per-tunnel options, given as the SSH command:
//!
//! ```text
//! ssh -R 80:localhost:3000 HOST -- host=localhost:5173 auth=user:pass \
//!     allow=203.0.113.0/24,2001:db8::/32 cors=https://app.example output=json
//! ```
//!
//! They apply to every tunnel of the connection. `help` prints the usage;
//! anything invalid is an `ERROR:` line plus the usage and a non-zero exit.

use crate::identity::LoginPolicy;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most allow-list entries one tunnel may carry.
pub const MAX_ALLOW: usize = 64;
/// Most CORS origins one tunnel may carry.
const MAX_ORIGINS: usize = 32;

pub const USAGE: &str = "\
Usage: ssh -R 80:localhost:3000 HOST [-- OPTION...]
Options (apply to every tunnel of the connection):
  host=NAME[:PORT]        Host header sent to your app (X-Forwarded-Host keeps the public one)
  auth=USER:PASS          protect the tunnel with HTTP Basic auth
  allow=CIDR[,CIDR...]    only these visitor networks (IPv4/IPv6; repeatable; others get 403)
  cors=ORIGIN[,ORIGIN]|*  answer CORS preflights for these origins
  allow-keys=FP[,FP...]   private aliases (-R NAME:PORT:...): these keys may connect
                          too (SHA256:... as ssh-keygen -lf prints them)
  output=text|json        session output as text (default) or one JSON object per line
  qr=on|off               a QR code of the URL under the banner (on a terminal; default on)
  tls=passthrough         do not terminate TLS: visitors' TLS goes, by SNI, straight to
                          your app, which holds the certificate (name tunnels only)
  proxy=v1|v2             start every connection to your app with a HAProxy PROXY
                          header carrying the visitor's address (HTTP tunnels then
                          use one connection per request)
  inspect=on|off          keep requests for the inspector (-L 4040:localhost:4040) even
                          while it is not open (default off: only while it is)
  login=WHO[,WHO...]      visitors sign in with the server's identity provider first; only
                          these get through: *@example.com (verified e-mails, * any run),
                          someone@example.org, group:NAME (the provider's groups), any
                          (anyone who can sign in), PROVIDER:... with several providers.
                          Your app gets X-Burrow-User, X-Burrow-User-Name and a signed
                          X-Burrow-Identity (verify it with https://LOGIN_HOST/.well-known/jwks.json)
  usage                   print your plan and what is left of its quotas, and exit
                          (with output=json: as a JSON event)
  help                    print this and exit
";

/// How the session talks to the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// What happens to TLS arriving for the connection's name tunnels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tls {
    /// burrow terminates TLS with its own certificate and proxies HTTP.
    #[default]
    Terminate,
    /// burrow routes by SNI and relays the encrypted bytes untouched.
    Passthrough,
}

pub use crate::forwarded::ProxyHeader;

/// HTTP Basic credentials, kept only as a salted hash.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub user: String,
    salt: [u8; 16],
    hash: [u8; 32],
}

impl BasicAuth {
    fn new(user: &str, password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        BasicAuth {
            user: user.to_string(),
            hash: Self::digest(&salt, user, password),
            salt,
        }
    }

    fn digest(salt: &[u8], user: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(user.as_bytes());
        hasher.update(b":");
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// Constant-time check of a user and password.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let candidate = Self::digest(&self.salt, user, password);
        bool::from(candidate.ct_eq(&self.hash))
    }
}

/// Which origins CORS preflights are answered for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// `cors=*`: any origin, never with credentials.
    Any,
    Origins(Vec<String>),
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for `origin`, and whether
    /// credentials may be allowed with it.
    pub fn allow(&self, origin: &str) -> Option<(String, bool)> {
        match self {
            Cors::Any => Some(("*".to_string(), false)),
            Cors::Origins(list) => list
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
                .then(|| (origin.to_string(), true)),
        }
    }
}

/// The options of one connection's tunnels.
#[derive(Debug, Clone, Default)]
pub struct TunnelOptions {
    pub host: Option<String>,
    pub auth: Option<BasicAuth>,
    pub allow: Vec<IpNet>,
    pub cors: Option<Cors>,
    pub output: Output,
    pub tls: Tls,
    pub proxy: Option<ProxyHeader>,
    /// `qr=off`: no QR code under the URL.
    pub qr_off: bool,
    /// `allow-keys=`: keys (fingerprints) that may connect to this
    /// connection's private aliases besides its own.
    pub allow_keys: Vec<String>,
    /// `inspect=on`: requests are captured for the request inspector even
    /// while none is open (by default only while one is).
    pub inspect: bool,
    /// `login=`: who may visit, after signing in (on top of what the
    /// operator requires).
    pub login: Option<LoginPolicy>,
}

impl TunnelOptions {
    /// Whether `ip` may visit (an empty allow-list allows everyone).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// One line for the banner, empty when nothing is set.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("Host header {host}"));
        }
        if let Some(auth) = &self.auth {
            parts.push(format!("Basic auth as {}", auth.user));
        }
        if !self.allow.is_empty() {
            let nets: Vec<String> = self.allow.iter().map(|n| n.to_string()).collect();
            parts.push(format!("only from {}", nets.join(", ")));
        }
        match &self.cors {
            Some(Cors::Any) => parts.push("CORS for any origin".into()),
            Some(Cors::Origins(list)) => parts.push(format!("CORS for {}", list.join(", "))),
            None => {}
        }
        if !self.allow_keys.is_empty() {
            let n = self.allow_keys.len();
            parts.push(format!("private aliases open to {n} more key(s)"));
        }
        if self.tls == Tls::Passthrough {
            parts.push("TLS passed through to your app".into());
        }
        match self.proxy {
            Some(ProxyHeader::V1) => parts.push("PROXY v1 header to your app".into()),
            Some(ProxyHeader::V2) => parts.push("PROXY v2 header to your app".into()),
            None => {}
        }
        if self.inspect {
            parts.push("requests kept for the inspector".into());
        }
        if let Some(login) = &self.login {
            parts.push(format!("sign-in required: {login}"));
        }
        parts.join("; ")
    }
}

/// A key fingerprint as `ssh-keygen -lf` prints it: `SHA256:` and 43
/// base64 characters.
fn parse_fingerprint(text: &str) -> Result<String, String> {
    let valid = text.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    match valid {
        true => Ok(text.to_string()),
        false => Err(format!(
            "allow-keys: {text:?} is not a key fingerprint (SHA256:… as `ssh-keygen -lf KEY` prints it)"
        )),
    }
}

/// What the SSH command asked for.
#[derive(Debug)]
pub enum Command {
    Options(Box<TunnelOptions>),
    Help,
    /// `usage`: print the user's plan and usage (as JSON with
    /// `output=json`) and exit.
    Usage(Output),
}

/// Parses the SSH command, with no sign-in providers configured. `Err` is
/// the message for the `ERROR:` line.
pub fn parse(command: &str) -> Result<Command, String> {
    parse_for(command, None)
}

/// Parses the SSH command; `login=` needs sign-in configured (`providers`:
/// the names its items may use as `PROVIDER:`).
pub fn parse_for(command: &str, providers: Option<&[String]>) -> Result<Command, String> {
    let mut options = TunnelOptions::default();
    let mut usage = false;
    for word in command.split_whitespace() {
        if word == "--" {
            continue;
        }
        if word == "usage" {
            usage = true;
            continue;
        }
        if matches!(word, "help" | "--help" | "-h") {
            return Ok(Command::Help);
        }
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not an option (expected key=value, or help)"))?;
        match key {
            "host" => options.host = Some(parse_host(value)?),
            "auth" => {
                // The user is shown in the banner: nothing that could paint
                // or reorder the terminal.
                let (user, password) = value
                    .split_once(':')
                    .filter(|(u, p)| !u.is_empty() && !p.is_empty())
                    .filter(|(u, _)| !u.chars().any(crate::escape::is_unsafe))
                    .ok_or("auth= needs USER:PASS, both non-empty, the user printable")?;
                options.auth = Some(BasicAuth::new(user, password));
            }
            "allow" => {
                for net in value.split(',').filter(|n| !n.is_empty()) {
                    options.allow.push(crate::config::parse_cidr(net)?);
                }
                if options.allow.len() > MAX_ALLOW {
                    return Err(format!("allow= takes at most {MAX_ALLOW} networks"));
                }
                if value.is_empty() {
                    return Err("allow= needs at least one IP or CIDR".into());
                }
            }
            "cors" => options.cors = Some(parse_cors(value)?),
            "login" => {
                let providers = providers.ok_or(
                    "login=: this server has no sign-in provider configured (ask its operator)",
                )?;
                options.login = Some(LoginPolicy::parse(value, providers)?);
            }
            "allow-keys" => {
                for fp in value.split(',').filter(|f| !f.is_empty()) {
                    options.allow_keys.push(parse_fingerprint(fp)?);
                }
                if options.allow_keys.len() > MAX_ALLOW {
                    return Err(format!("allow-keys= takes at most {MAX_ALLOW} keys"));
                }
                if value.is_empty() {
                    return Err("allow-keys= needs at least one SHA256:… fingerprint".into());
                }
            }
            "qr" => {
                options.qr_off = match value {
                    "on" => false,
                    "off" => true,
                    other => return Err(format!("qr={other:?}: use on or off")),
                }
            }
            "inspect" => {
                options.inspect = match value {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("inspect={other:?}: use on or off")),
                }
            }
            "output" => {
                options.output = match value {
                    "text" => Output::Text,
                    "json" => Output::Json,
                    other => return Err(format!("output={other:?}: use text or json")),
                }
            }
            "tls" => {
                options.tls = match value {
                    "passthrough" => Tls::Passthrough,
                    "terminate" => Tls::Terminate,
                    other => return Err(format!("tls={other:?}: use passthrough or terminate")),
                }
            }
            "proxy" => {
                options.proxy = match value {
                    "v1" => Some(ProxyHeader::V1),
                    "v2" => Some(ProxyHeader::V2),
                    other => return Err(format!("proxy={other:?}: use v1 or v2")),
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if usage {
        return Ok(Command::Usage(options.output));
    }
    Ok(Command::Options(Box::new(options)))
}

fn parse_host(value: &str) -> Result<String, String> {
    let (name, port) = match value.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (value, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    // Digits only: `u16::from_str` also takes a sign (`+80`), which is no
    // port in a Host header.
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if name_ok && port_ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!("host={value:?} is not NAME or NAME:PORT"))
    }
}

fn parse_cors(value: &str) -> Result<Cors, String> {
    if value == "*" {
        return Ok(Cors::Any);
    }
    let mut origins = Vec::new();
    for origin in value.split(',').filter(|o| !o.is_empty()) {
        // An origin is ASCII (browsers send IDNs as punycode), so no
        // non-ASCII control or bidi character reaches the banner.
        let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
            && origin.is_ascii()
            && !origin.ends_with('/')
            && origin.len() <= 253
            && !origin
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        if !valid {
            return Err(format!(
                "cors: {origin:?} is not an origin like https://app.example (no path, no trailing slash)"
            ));
        }
        origins.push(origin.to_ascii_lowercase());
    }
    if origins.is_empty() || origins.len() > MAX_ORIGINS {
        return Err(format!("cors= takes * or 1 to {MAX_ORIGINS} origins"));
    }
    Ok(Cors::Origins(origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(command: &str) -> TunnelOptions {
        match parse(command).unwrap() {
            Command::Options(o) => *o,
            Command::Help | Command::Usage(_) => panic!("not options"),
        }
    }

    #[test]
    fn parses_every_option() {
        let o = options(
            "-- host=localhost:5173 auth=ann:s3cret allow=203.0.113.0/24,2001:db8::/32 allow=198.51.100.7 cors=https://app.example output=json tls=passthrough proxy=v2",
        );
        assert_eq!(o.tls, Tls::Passthrough);
        assert_eq!(o.proxy, Some(ProxyHeader::V2));
        assert_eq!(o.host.as_deref(), Some("localhost:5173"));
        let auth = o.auth.as_ref().unwrap();
        assert!(auth.verify("ann", "s3cret"));
        assert!(!auth.verify("ann", "wrong"));
        assert_eq!(o.allow.len(), 3);
        assert!(o.allows("203.0.113.9".parse().unwrap()));
        assert!(o.allows("2001:db8::5".parse().unwrap()));
        assert!(!o.allows("192.0.2.1".parse().unwrap()));
        assert_eq!(
            o.cors,
            Some(Cors::Origins(vec!["https://app.example".into()]))
        );
        assert_eq!(o.output, Output::Json);
        assert!(o.summary().contains("Basic auth as ann"));
    }

    #[test]
    fn allow_keys_takes_fingerprints() {
        let fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        let Ok(Command::Options(o)) = parse(&format!("-- allow-keys={fp},{fp}")) else {
            panic!("allow-keys= refused");
        };
        assert_eq!(o.allow_keys, [fp, fp]);
        assert!(parse("allow-keys=MD5:aa:bb").is_err());
    }

    #[test]
    fn inspect_is_off_unless_asked_for() {
        assert!(!options("").inspect);
        let o = options("inspect=on");
        assert!(o.inspect && o.summary().contains("kept for the inspector"));
        assert!(!options("inspect=off").inspect);
        assert!(parse("inspect=maybe").is_err());
    }

    #[test]
    fn help_and_errors() {
        assert!(matches!(parse("help"), Ok(Command::Help)));
        assert!(matches!(parse("usage"), Ok(Command::Usage(Output::Text))));
        assert!(matches!(
            parse("-- usage output=json"),
            Ok(Command::Usage(Output::Json))
        ));
        for bad in [
            "colour=red",
            "auth=nopass",
            "auth=:x",
            "allow-keys=SHA256:short",
            "allow-keys=",
            "allow=10.0.0.0/33",
            "allow=",
            "cors=app.example",
            "cors=https://app.example/",
            "output=xml",
            "tls=maybe",
            "proxy=v3",
            "host=bad host",
            "host=a:99999",
            "whatever",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let too_many = format!("allow={}", vec!["10.0.0.1"; MAX_ALLOW + 1].join(","));
        assert!(parse(&too_many).is_err());
    }

    #[test]
    fn a_host_port_is_digits_only() {
        assert!(parse("host=localhost:+5173").is_err());
        assert!(parse("host=localhost:5173").is_ok());
    }

    #[test]
    fn the_banner_summary_never_carries_control_or_bidi_characters() {
        for bad in [
            "auth=\u{202e}ann:pw",
            "auth=a\u{9b}31m:pw",
            "cors=https://\u{202e}app.example",
            "cors=https://app.example\u{9b}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let o = options("auth=ann:\u{202e}pw cors=https://app.example");
        assert!(!o.summary().chars().any(crate::escape::is_unsafe));
    }

    #[test]
    fn cors_never_combines_star_with_credentials() {
        assert_eq!(
            Cors::Any.allow("https://x.example"),
            Some(("*".into(), false))
        );
        let list = Cors::Origins(vec!["https://app.example".into()]);
        assert_eq!(
            list.allow("https://app.example"),
            Some(("https://app.example".into(), true))
        );
        assert_eq!(list.allow("https://evil.example"), None);
    }

    #[test]
    fn passwords_are_not_stored() {
        let o = options("auth=ann:hunter2");
        assert!(!format!("{:?}", o.auth.unwrap()).contains("hunter2"));
    }
}
