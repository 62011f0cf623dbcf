//! What `--cluster-redis` names, parsed strictly at start: one Redis
//! (`redis://`, `rediss://`, redis-rs's own syntax), or the primary a set
//! of Redis Sentinels watches (`redis+sentinel://`, `rediss+sentinel://`:
//! redis-rs has no URL syntax for Sentinel, so burrow defines one):
//!
//! ```text
//! redis+sentinel://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]
//!                  [?sentinel_user=U&sentinel_password=P]
//! ```
//!
//! USER and PASSWORD are the data nodes' (percent-encoded like any URL
//! userinfo); the sentinels' own credentials, when they require any, are
//! the query parameters. PORT defaults to 26379, DB to 0. `rediss+` means
//! TLS to the sentinels and to the data nodes alike. Shown anywhere, a
//! target hides its passwords.

use std::fmt;

use anyhow::{anyhow, bail, Context, Result};
use redis::IntoConnectionInfo;

/// The sentinels' port when the URL gives none.
pub const SENTINEL_PORT: u16 = 26379;

/// Where the cluster's shared state is.
#[derive(Clone)]
pub enum Target {
    /// One Redis, or an address that always leads to the primary: used as
    /// it is (redis-rs parses it).
    Single {
        /// The URL as given.
        url: String,
    },
    /// Whichever data node the sentinels name primary now.
    Sentinel(Sentinels),
}

/// A primary found through Redis Sentinel.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// Each sentinel's host and port, asked in this order.
    pub addrs: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// The database on the data nodes.
    pub db: i64,
    /// TLS to the sentinels and to the data nodes (`rediss+sentinel://`).
    pub tls: bool,
    /// The data nodes' ACL user, if not `default`.
    pub user: Option<String>,
    /// The data nodes' password.
    pub password: Option<String>,
    /// The sentinels' ACL user (`sentinel_user=`), if they have their own.
    pub sentinel_user: Option<String>,
    /// The sentinels' password (`sentinel_password=`).
    pub sentinel_password: Option<String>,
}

impl Target {
    /// Parses a `--cluster-redis` value; the error says what is wrong
    /// (without the flag: the caller names it).
    pub fn parse(text: &str) -> Result<Target> {
        if let Some(rest) = text.strip_prefix("redis+sentinel://") {
            return parse_sentinels(rest, false).map(Target::Sentinel);
        }
        if let Some(rest) = text.strip_prefix("rediss+sentinel://") {
            return parse_sentinels(rest, true).map(Target::Sentinel);
        }
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            bail!("give redis://host:port/db or rediss://host:port/db, or redis+sentinel://host:26379,host:26379/MASTER/db (rediss+sentinel:// for TLS)");
        }
        text.into_connection_info()
            .map_err(|err| anyhow!("not a Redis URL: {err}"))?;
        Ok(Target::Single {
            url: text.to_string(),
        })
    }

    /// Whether connections to Redis are TLS (a CA file makes sense).
    pub fn tls(&self) -> bool {
        match self {
            Target::Single { url } => url.starts_with("rediss://"),
            Target::Sentinel(sentinels) => sentinels.tls,
        }
    }
}

/// Everything after `redis+sentinel://`.
fn parse_sentinels(rest: &str, tls: bool) -> Result<Sentinels> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest
        .split_once('/')
        .context("the master's name is missing: …/MASTER after the sentinels")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (user, password) = userinfo
        .map(parse_userinfo)
        .transpose()?
        .unwrap_or_default();
    let (master, db) = parse_path(path)?;
    let mut sentinels = Sentinels {
        addrs: hosts.split(',').map(parse_host).collect::<Result<_>>()?,
        master,
        db,
        tls,
        user,
        password,
        sentinel_user: None,
        sentinel_password: None,
    };
    parse_query(query, &mut sentinels)?;
    Ok(sentinels)
}

/// `USER:PASSWORD`, `:PASSWORD` or `USER`, percent-decoded.
fn parse_userinfo(text: &str) -> Result<(Option<String>, Option<String>)> {
    let (user, password) = match text.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (text, None),
    };
    let user = Some(decode(user, "the user")?).filter(|u| !u.is_empty());
    let password = password.map(|p| decode(p, "the password")).transpose()?;
    Ok((user, password))
}

/// `HOST`, `HOST:PORT`, `[IPV6]` or `[IPV6]:PORT`.
fn parse_host(text: &str) -> Result<(String, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("sentinel {text:?}: no ']' after the IPv6 address"))?;
            (host, after.strip_prefix(':'))
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() {
        bail!("a sentinel's host is empty (give HOST:PORT, separated by commas)");
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("sentinel {text:?}: the port is not 1-65535"))?,
    };
    Ok((host.to_string(), port))
}

/// `MASTER`, `MASTER/` or `MASTER/DB`.
fn parse_path(path: &str) -> Result<(String, i64)> {
    let mut parts = path.split('/');
    let master = decode(parts.next().unwrap_or_default(), "the master's name")?;
    if master.is_empty() {
        bail!("the master's name is missing: …/MASTER after the sentinels");
    }
    let db = match parts.next().filter(|d| !d.is_empty()) {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .with_context(|| format!("database {db:?} is not a number (…/MASTER/DB)"))?,
    };
    if parts.any(|rest| !rest.is_empty()) {
        bail!("unexpected path after …/MASTER/DB");
    }
    Ok((master, db))
}

/// `sentinel_user=U&sentinel_password=P`, each at most once.
fn parse_query(query: &str, sentinels: &mut Sentinels) -> Result<()> {
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "sentinel_user" => &mut sentinels.sentinel_user,
            "sentinel_password" => &mut sentinels.sentinel_password,
            _ => bail!("unknown parameter {name:?} (known: sentinel_user, sentinel_password)"),
        };
        if slot.replace(value.into_owned()).is_some() {
            bail!("parameter {name:?} is given twice");
        }
    }
    Ok(())
}

/// Percent-decodes `text` (`what` names it in the error).
fn decode(text: &str, what: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .with_context(|| format!("{what}: '%' is not followed by two hex digits"))?;
        out.push(hex);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| anyhow!("{what} is not UTF-8 once decoded"))
}

/// `text` (a `--cluster-redis` value, valid or not) with its passwords
/// replaced by `***`, for messages and logs.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}");
    if let Some(path) = path {
        out.push('/');
        out.push_str(path);
    }
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redact_query(query));
    }
    out
}

/// A query string with every `…password=` value hidden.
fn redact_query(query: &str) -> String {
    let hide = |pair: &str| match pair.split_once('=') {
        Some((name, _)) if name.ends_with("password") => format!("{name}=***"),
        _ => pair.to_string(),
    };
    query.split('&').map(hide).collect::<Vec<_>>().join("&")
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Single { url } => f.write_str(&redact(url)),
            Target::Sentinel(sentinels) => sentinels.fmt(f),
        }
    }
}

impl fmt::Display for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}+sentinel://")?;
        match (&self.user, &self.password) {
            (user, Some(_)) => write!(f, "{}:***@", user.as_deref().unwrap_or(""))?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, None) => {}
        }
        let hosts: Vec<String> = self.addrs.iter().map(host_port).collect();
        write!(f, "{}/{}/{}", hosts.join(","), self.master, self.db)?;
        let mut query = Vec::new();
        if let Some(user) = &self.sentinel_user {
            query.push(format!("sentinel_user={user}"));
        }
        if self.sentinel_password.is_some() {
            query.push("sentinel_password=***".to_string());
        }
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

/// `host:port`, an IPv6 address in brackets.
fn host_port((host, port): &(String, u16)) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

// Debug shows what Display shows: never a password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(text: &str) -> Sentinels {
        match Target::parse(text).unwrap() {
            Target::Sentinel(sentinels) => sentinels,
            Target::Single { .. } => panic!("{text} is not a sentinel URL"),
        }
    }

    fn error(text: &str) -> String {
        format!("{:#}", Target::parse(text).unwrap_err())
    }

    #[test]
    fn sentinel_urls() {
        let s = sentinels("redis+sentinel://burrow:p%40ss%3Aw@10.0.0.1:26380,redis-b,[::1]:5000/mymaster/2?sentinel_user=watch&sentinel_password=s%26cret");
        assert_eq!(
            s.addrs,
            vec![
                ("10.0.0.1".to_string(), 26380),
                ("redis-b".to_string(), SENTINEL_PORT),
                ("::1".to_string(), 5000)
            ]
        );
        assert_eq!((s.master.as_str(), s.db, s.tls), ("mymaster", 2, false));
        assert_eq!(s.user.as_deref(), Some("burrow"));
        assert_eq!(s.password.as_deref(), Some("p@ss:w"));
        assert_eq!(s.sentinel_user.as_deref(), Some("watch"));
        assert_eq!(s.sentinel_password.as_deref(), Some("s&cret"));
        let shown = s.to_string();
        assert_eq!(shown, "redis+sentinel://burrow:***@10.0.0.1:26380,redis-b:26379,[::1]:5000/mymaster/2?sentinel_user=watch&sentinel_password=***");
        assert!(!format!("{s:?}").contains("p@ss"));

        let plain = sentinels("rediss+sentinel://h1/primary");
        assert!(plain.tls && plain.db == 0 && plain.user.is_none() && plain.password.is_none());
        assert_eq!(
            sentinels("redis+sentinel://:pw@h/m/").password.as_deref(),
            Some("pw")
        );
        assert_eq!(sentinels("redis+sentinel://h/m%2Fx").master, "m/x");
    }

    #[test]
    fn single_urls() {
        let target = Target::parse("rediss://u:secret@10.0.0.5:6380/1").unwrap();
        assert!(target.tls());
        assert_eq!(target.to_string(), "rediss://u:***@10.0.0.5:6380/1");
        assert!(!Target::parse("redis://10.0.0.5").unwrap().tls());
    }

    #[test]
    fn strict_errors() {
        for (text, says) in [
            ("http://x", "give redis://"),
            ("redis+sentinel://h1,h2", "master's name is missing"),
            ("redis+sentinel://h1//0", "master's name is missing"),
            ("redis+sentinel://h1,,h2/m", "host is empty"),
            ("redis+sentinel://h1:0/m", "not 1-65535"),
            ("redis+sentinel://h1:x/m", "not 1-65535"),
            ("redis+sentinel://[::1/m", "no ']'"),
            ("redis+sentinel://h/m/one", "not a number"),
            ("redis+sentinel://h/m/-1", "not a number"),
            ("redis+sentinel://h/m/0/x", "unexpected path"),
            ("redis+sentinel://h/m?password=x", "unknown parameter"),
            (
                "redis+sentinel://h/m?sentinel_user=a&sentinel_user=b",
                "given twice",
            ),
            ("redis+sentinel://u:%zz@h/m", "two hex digits"),
            ("redis://h:notaport", "not a Redis URL"),
        ] {
            let err = error(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn redaction_of_anything() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://u@h"), "redis://u@h");
        assert_eq!(
            redact("redis+sentinel://a:b@h/m?sentinel_user=x&sentinel_password=y"),
            "redis+sentinel://a:***@h/m?sentinel_user=x&sentinel_password=***"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
