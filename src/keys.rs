//! The keys file (`--keys-file`): which SSH keys may connect in
//! `--auth-mode keys`, and which names (and, later, ports) each key owns.
//!
//! Format: authorized_keys-style lines, options first, then the public key
//! exactly as in `~/.ssh/id_ed25519.pub`:
//!
//! ```text
//! # comments and blank lines are ignored
//! names=api,dashboard ssh-ed25519 AAAAC3Nz… alice@laptop
//! names=device-7 ssh-ed25519 AAAAC3Nz… device-7
//! ssh-ed25519 AAAAC3Nz… bob             (listed, owns no names)
//! ```
//!
//! Options are comma-separated `key=value` items; a bare item continues the
//! list of the previous key (`names=a,b` grants `a` and `b`); values may be
//! quoted (`names="a,b"`). Known options: `names` (DNS labels), `ports`
//! (1–65535, for raw TCP tunnels) and `connect` (private aliases the key
//! may reach through SSH: labels, `*` matching any run of characters, e.g.
//! `connect=db,fleet-*`). A malformed line rejects the whole file
//! with its line number, and the previous file stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use russh::keys::{HashAlg, PublicKey};

use crate::subdomain;

/// What the file grants one key.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub names: Vec<String>,
    pub ports: Vec<u16>,
    /// Private aliases this key may connect to (`connect=`): labels with
    /// `*` wildcards.
    pub connect: Vec<String>,
    pub comment: String,
}

impl Grant {
    /// A key listed on several lines holds what every line grants it (the
    /// owner tables count each line, so its grant must too); the first
    /// line's comment names it.
    fn merge(&mut self, more: &Grant) {
        self.names.extend(more.names.iter().cloned());
        self.ports.extend(more.ports.iter().copied());
        self.connect.extend(more.connect.iter().cloned());
    }

    /// Whether `connect=` lets this key reach the private alias `name`.
    pub fn may_connect(&self, name: &str) -> bool {
        self.connect.iter().any(|pattern| glob(pattern, name))
    }
}

/// `*`-only glob matching: `*` is any run of characters (possibly empty).
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or_default();
    for part in parts {
        match text.find(part) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    text.len() >= tail.len() && text.ends_with(tail)
}

/// One parsed keys file.
#[derive(Debug, Default)]
pub struct KeysFile {
    /// SHA-256 of the file's text (hex; empty without a file): cluster
    /// nodes compare theirs.
    hash: String,
    by_fingerprint: HashMap<String, Grant>,
    name_owners: HashMap<String, Vec<String>>,
    port_owners: HashMap<u16, Vec<String>>,
}

/// `SHA256:…` of a key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl KeysFile {
    pub fn parse(text: &str) -> Result<KeysFile> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes());
        let mut file = KeysFile {
            hash: digest.iter().map(|b| format!("{b:02x}")).collect(),
            ..KeysFile::default()
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (fp, grant) = parse_line(line).map_err(|e| anyhow!("line {}: {e}", index + 1))?;
            for name in &grant.names {
                file.name_owners
                    .entry(name.clone())
                    .or_default()
                    .push(fp.clone());
            }
            for port in &grant.ports {
                file.port_owners.entry(*port).or_default().push(fp.clone());
            }
            file.by_fingerprint
                .entry(fp)
                .and_modify(|listed| listed.merge(&grant))
                .or_insert(grant);
        }
        Ok(file)
    }

    /// SHA-256 of the file's text (hex), empty without a file.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The grant of the key with fingerprint `fp`, if it is listed.
    pub fn grant(&self, fp: &str) -> Option<&Grant> {
        self.by_fingerprint.get(fp)
    }

    /// Fingerprints of the keys that own `name` (empty: nobody does).
    pub fn owners(&self, name: &str) -> &[String] {
        self.name_owners.get(name).map_or(&[], Vec::as_slice)
    }

    /// Fingerprints of the keys that own TCP port `port` (empty: nobody).
    pub fn port_owners(&self, port: u16) -> &[String] {
        self.port_owners.get(&port).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.by_fingerprint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }
}

fn parse_line(line: &str) -> Result<(String, Grant)> {
    const KEY_TYPES: [&str; 4] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"];
    let start = line
        .split_whitespace()
        .position(|t| KEY_TYPES.iter().any(|p| t.starts_with(p)))
        .ok_or_else(|| anyhow!("no public key (expected e.g. `ssh-ed25519 AAAA…`)"))?;
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let options = tokens[..start].join(" ");
    let key_text = tokens[start..].join(" ");
    let key = PublicKey::from_openssh(&key_text).map_err(|e| anyhow!("bad public key: {e}"))?;
    let mut grant = parse_options(&options)?;
    grant.comment = tokens
        .get(start + 2..)
        .map(|c| c.join(" "))
        .unwrap_or_default();
    Ok((fingerprint(&key), grant))
}

fn parse_options(options: &str) -> Result<Grant> {
    let mut grant = Grant::default();
    let mut current: Option<&str> = None;
    for item in split_options(options)? {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => {
                current = Some(match key.trim() {
                    "names" => "names",
                    "ports" => "ports",
                    "connect" => "connect",
                    other => bail!("unknown option {other:?} (known: names, ports, connect)"),
                });
                (current.expect("just set"), value)
            }
            None => (
                current.ok_or_else(|| {
                    anyhow!("{item:?} is not an option (expected names=…, ports=… or connect=…)")
                })?,
                item.as_str(),
            ),
        };
        let value = value.trim().trim_matches('"');
        for value in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            match key {
                "names" => {
                    let name = value.to_ascii_lowercase();
                    if !subdomain::is_valid_label(&name) {
                        bail!(
                            "names: {value:?} is not a valid DNS label (a-z, 0-9, '-', at most 63)"
                        );
                    }
                    grant.names.push(name);
                }
                "connect" => {
                    let pattern = value.to_ascii_lowercase();
                    let label = pattern.replace('*', "a");
                    if !subdomain::is_valid_label(&label) {
                        bail!("connect: {value:?} is not a DNS label or a pattern with '*'");
                    }
                    grant.connect.push(pattern);
                }
                _ => {
                    let port: u16 =
                        value.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                            anyhow!("ports: {value:?} is not a port number 1-65535")
                        })?;
                    grant.ports.push(port);
                }
            }
        }
    }
    Ok(grant)
}

/// Splits on commas outside double quotes.
fn split_options(options: &str) -> Result<Vec<String>> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut quoted = false;
    for c in options.trim().chars() {
        match c {
            '"' => {
                quoted = !quoted;
                item.push(c);
            }
            ',' if !quoted => items.push(std::mem::take(&mut item)),
            c if c.is_whitespace() && !quoted => {
                bail!("unexpected space in the options (quote values that contain spaces)")
            }
            c => item.push(c),
        }
    }
    if quoted {
        bail!("unterminated quote in the options");
    }
    if !item.is_empty() {
        items.push(item);
    }
    Ok(items.into_iter().filter(|i| !i.is_empty()).collect())
}

/// The live keys file, reloadable.
pub struct Keys {
    pub(crate) path: Option<PathBuf>,
    current: RwLock<Arc<KeysFile>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Keys {
    /// Loads `path` (or an empty set without one). A bad file is an error at
    /// start-up.
    pub fn load(path: Option<&Path>) -> Result<Keys> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--keys-file {}: cannot read", path.display()))?;
                KeysFile::parse(&text).with_context(|| format!("--keys-file {}", path.display()))?
            }
            None => KeysFile::default(),
        };
        Ok(Keys {
            path: path.map(Path::to_path_buf),
            stamp: Mutex::new(path.and_then(stamp)),
            current: RwLock::new(Arc::new(file)),
        })
    }

    pub fn current(&self) -> Arc<KeysFile> {
        Arc::clone(&self.current.read().expect("keys lock"))
    }

    /// Whether the file changed on disk since it was last read.
    pub fn changed_on_disk(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        *self.stamp.lock().expect("keys stamp lock") != stamp(path)
    }

    /// Re-reads the file. On error the old contents stay in force.
    pub fn reload(&self) -> Result<Arc<KeysFile>> {
        let Some(path) = &self.path else {
            return Ok(self.current());
        };
        *self.stamp.lock().expect("keys stamp lock") = stamp(path);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let file = Arc::new(KeysFile::parse(&text).with_context(|| path.display().to_string())?);
        *self.current.write().expect("keys lock") = Arc::clone(&file);
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3Bmmpai/x6KKuADMz+m+VaKn/P4voCQacL+HMZkkBU alice@laptop";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILiW73TJIhnYKySsyz2s3hhv+Ss9MbJXIVnCPNboOoMi bob";

    fn fp(line: &str) -> String {
        fingerprint(&PublicKey::from_openssh(line).unwrap())
    }

    #[test]
    fn grants_names_and_ports() {
        let text = format!("# team\n\nnames=api,dashboard,ports=5432 {KEY_A}\n{KEY_B}\n");
        let file = KeysFile::parse(&text).unwrap();
        let a = file.grant(&fp(KEY_A)).unwrap();
        assert_eq!(a.names, ["api", "dashboard"]);
        assert_eq!(a.ports, [5432]);
        assert_eq!(a.comment, "alice@laptop");
        assert!(file.grant(&fp(KEY_B)).unwrap().names.is_empty());
        assert_eq!(file.owners("api"), [fp(KEY_A)]);
        assert!(file.owners("other").is_empty());
        assert_eq!(file.len(), 2);
    }

    #[test]
    fn connect_patterns() {
        let file = KeysFile::parse(&format!("connect=db,fleet-*,*-lab-* {KEY_A}")).unwrap();
        let a = file.grant(&fp(KEY_A)).unwrap();
        for name in ["db", "fleet-7", "fleet-", "x-lab-1"] {
            assert!(a.may_connect(name), "{name}");
        }
        for name in ["dbx", "fleet", "other", "lab-1", "x-lab"] {
            assert!(!a.may_connect(name), "{name}");
        }
        assert!(KeysFile::parse(&format!("connect=bad_name {KEY_A}")).is_err());
    }

    #[test]
    fn a_key_on_several_lines_holds_what_every_line_grants() {
        let text = format!("names=api,connect=db {KEY_A}\nnames=web,ports=5432 {KEY_A}\n");
        let file = KeysFile::parse(&text).unwrap();
        let a = file.grant(&fp(KEY_A)).unwrap();
        assert_eq!(a.names, ["api", "web"]);
        assert_eq!(a.ports, [5432]);
        assert!(a.may_connect("db"));
        assert_eq!(file.owners("api"), [fp(KEY_A)]);
        assert_eq!(a.comment, "alice@laptop");
        assert_eq!(file.len(), 1);
    }

    #[test]
    fn quoted_values() {
        let file = KeysFile::parse(&format!("names=\"api,web\" {KEY_A}")).unwrap();
        assert_eq!(file.grant(&fp(KEY_A)).unwrap().names, ["api", "web"]);
    }

    #[test]
    fn malformed_lines_are_rejected_with_their_number() {
        for (text, needle) in [
            (format!("{KEY_B}\nnames=Bad_Name {KEY_A}"), "line 2"),
            (format!("colour=red {KEY_A}"), "unknown option"),
            (
                "names=api ssh-ed25519 notbase64".to_string(),
                "bad public key",
            ),
            ("names=api".to_string(), "no public key"),
            (format!("ports=99999 {KEY_A}"), "port"),
            (format!("names=\"api {KEY_A}"), "line 1"),
        ] {
            let err = format!("{:#}", KeysFile::parse(&text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
