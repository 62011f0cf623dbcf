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
//! (1–65535, for raw TCP tunnels), `connect` (private aliases the key
//! may reach through SSH: labels, `*` matching any run of characters, e.g.
//! `connect=db,fleet-*`) and `login` (a sign-in policy every tunnel of the
//! key carries, e.g. `login=*@example.com,group:eng`; see
//! [`crate::identity`]) and `plan` (the key's plan, from `--plans-file`,
//! e.g. `plan=team`; see [`crate::plans`]). A malformed line, or a plan
//! that is not defined, rejects the whole file
//! with its line number, and the previous file stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use russh::keys::{HashAlg, PublicKey};

use crate::identity::LoginPolicy;
use crate::subdomain;

/// What the file grants one key.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub names: Vec<String>,
    pub ports: Vec<u16>,
    /// Private aliases this key may connect to (`connect=`): labels with
    /// `*` wildcards.
    pub connect: Vec<String>,
    /// Who may visit this key's tunnels (`login=`): they always carry it,
    /// whatever their owner asks for.
    pub login: Option<LoginPolicy>,
    /// The key's plan (`plan=`), if the line names one.
    pub plan: Option<String>,
    pub comment: String,
}

impl Grant {
    /// A key listed on several lines holds what every line grants it (the
    /// owner tables count each line, so its grant must too); the first
    /// line's comment names it.
    /// A `login=` or `plan=` on any line binds every tunnel of the key
    /// (the file rejects lines that ask for different ones).
    fn merge(&mut self, more: Grant) {
        self.names.extend(more.names);
        self.ports.extend(more.ports);
        self.connect.extend(more.connect);
        if self.login.is_none() {
            self.login = more.login;
        }
        if self.plan.is_none() {
            self.plan = more.plan;
        }
    }

    /// Whether `connect=` lets this key reach the private alias `name`.
    pub fn may_connect(&self, name: &str) -> bool {
        self.connect
            .iter()
            .any(|pattern| subdomain::glob(pattern, name))
    }
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
    /// The plans lines name, with their line numbers (checked against the
    /// plans in force).
    plans: Vec<(usize, String)>,
}

/// `SHA256:…` of a key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl KeysFile {
    /// Parses a whole file, with no sign-in providers configured.
    pub fn parse(text: &str) -> Result<KeysFile> {
        Self::parse_for(text, &[])
    }

    /// Parses a whole file; `login=` items may name `providers`.
    pub fn parse_for(text: &str, providers: &[String]) -> Result<KeysFile> {
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
            let (fp, grant) =
                parse_line(line, providers).map_err(|e| anyhow!("line {}: {e}", index + 1))?;
            let listed = file.by_fingerprint.get(&fp);
            if let (Some(listed), Some(login)) =
                (listed.and_then(|g| g.login.as_ref()), &grant.login)
            {
                if listed != login {
                    bail!(
                        "line {}: this key is listed above with another login= policy",
                        index + 1
                    );
                }
            }
            if let (Some(listed), Some(plan)) = (listed.and_then(|g| g.plan.as_ref()), &grant.plan)
            {
                if listed != plan {
                    bail!(
                        "line {}: this key is listed above with another plan= ({listed})",
                        index + 1
                    );
                }
            }
            if let Some(plan) = &grant.plan {
                file.plans.push((index + 1, plan.clone()));
            }
            file.insert(fp, grant);
        }
        Ok(file)
    }

    /// A keys file made of `grants` (fingerprint → grant): what
    /// `--auth-url` granted, for the grant rule to read like the file.
    pub fn from_grants<'a>(grants: impl IntoIterator<Item = (&'a String, &'a Grant)>) -> KeysFile {
        let mut file = KeysFile::default();
        for (fp, grant) in grants {
            file.insert(fp.clone(), grant.clone());
        }
        file
    }

    fn insert(&mut self, fp: String, grant: Grant) {
        for name in &grant.names {
            self.name_owners
                .entry(name.clone())
                .or_default()
                .push(fp.clone());
        }
        for port in &grant.ports {
            self.port_owners.entry(*port).or_default().push(fp.clone());
        }
        match self.by_fingerprint.get_mut(&fp) {
            Some(listed) => listed.merge(grant),
            None => {
                self.by_fingerprint.insert(fp, grant);
            }
        }
    }

    /// Checks every `plan=` against the plans defined (`known`): the first
    /// unknown one is an error naming its line.
    pub fn check_plans(&self, known: impl Fn(&str) -> bool) -> Result<()> {
        match self.plans.iter().find(|(_, plan)| !known(plan)) {
            Some((line, plan)) => bail!("line {line}: plan {plan:?} is not defined (--plans-file)"),
            None => Ok(()),
        }
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

fn parse_line(line: &str, providers: &[String]) -> Result<(String, Grant)> {
    const KEY_TYPES: [&str; 4] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"];
    let start = line
        .split_whitespace()
        .position(|t| KEY_TYPES.iter().any(|p| t.starts_with(p)))
        .ok_or_else(|| anyhow!("no public key (expected e.g. `ssh-ed25519 AAAA…`)"))?;
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let options = tokens[..start].join(" ");
    let key_text = tokens[start..].join(" ");
    let key = PublicKey::from_openssh(&key_text).map_err(|e| anyhow!("bad public key: {e}"))?;
    let mut grant = parse_options(&options, providers)?;
    grant.comment = tokens
        .get(start + 2..)
        .map(|c| c.join(" "))
        .unwrap_or_default();
    Ok((fingerprint(&key), grant))
}

fn parse_options(options: &str, providers: &[String]) -> Result<Grant> {
    let mut raw = RawGrant::default();
    let mut current: Option<&str> = None;
    for item in split_options(options)? {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => {
                current = Some(match key.trim() {
                    "names" => "names",
                    "ports" => "ports",
                    "connect" => "connect",
                    "login" => "login",
                    "plan" => "plan",
                    other => bail!("unknown option {other:?} (known: names, ports, connect, login, plan)"),
                });
                (current.expect("just set"), value)
            }
            None => (
                current.ok_or_else(|| {
                    anyhow!("{item:?} is not an option (expected names=…, ports=…, connect=… or login=…)")
                })?,
                item.as_str(),
            ),
        };
        let value = value.trim().trim_matches('"');
        for value in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let list = match key {
                "names" => &mut raw.names,
                "ports" => &mut raw.ports,
                "connect" => &mut raw.connect,
                "plan" => &mut raw.plan,
                _ => &mut raw.login,
            };
            list.push(value.to_string());
        }
    }
    raw.grant(providers)
}

/// What a key is granted, as written (in the keys file, or in
/// `--auth-url`'s answer), before it is checked.
#[derive(Debug, Default)]
pub struct RawGrant {
    pub names: Vec<String>,
    pub ports: Vec<String>,
    pub connect: Vec<String>,
    /// Items of one `login=` policy.
    pub login: Vec<String>,
    /// The plan (one name).
    pub plan: Vec<String>,
}

impl RawGrant {
    /// The grant, every value checked: the one place a key's grant is
    /// validated, for the keys file and `--auth-url` alike.
    pub fn grant(self, providers: &[String]) -> Result<Grant> {
        let mut grant = Grant::default();
        for value in self.names {
            let name = value.to_ascii_lowercase();
            if !subdomain::is_valid_label(&name) {
                bail!("names: {value:?} is not a valid DNS label (a-z, 0-9, '-', at most 63)");
            }
            grant.names.push(name);
        }
        for value in self.connect {
            let pattern = value.to_ascii_lowercase();
            if !subdomain::is_valid_label(&pattern.replace('*', "a")) {
                bail!("connect: {value:?} is not a DNS label or a pattern with '*'");
            }
            grant.connect.push(pattern);
        }
        for value in self.ports {
            let port: u16 = value
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow!("ports: {value:?} is not a port number 1-65535"))?;
            grant.ports.push(port);
        }
        match self.plan.as_slice() {
            [] => {}
            [plan] => {
                crate::plans::model::valid_name(plan)?;
                grant.plan = Some(plan.clone());
            }
            _ => bail!("plan: one plan per key"),
        }
        if !self.login.is_empty() {
            let policy =
                LoginPolicy::parse(&self.login.join(","), providers).map_err(|e| anyhow!(e))?;
            grant.login = Some(policy);
        }
        Ok(grant)
    }
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
    /// The sign-in providers `login=` items may name.
    providers: Vec<String>,
    current: RwLock<Arc<KeysFile>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// The plans `plan=` may name (`None`: not checked yet).
    plan_names: RwLock<Option<Vec<String>>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Keys {
    /// Loads `path` (or an empty set without one); `login=` items may name
    /// `providers`. A bad file is an error at start-up.
    pub fn load(path: Option<&Path>, providers: &[String]) -> Result<Keys> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--keys-file {}: cannot read", path.display()))?;
                KeysFile::parse_for(&text, providers)
                    .with_context(|| format!("--keys-file {}", path.display()))?
            }
            None => KeysFile::default(),
        };
        Ok(Keys {
            path: path.map(Path::to_path_buf),
            providers: providers.to_vec(),
            stamp: Mutex::new(path.and_then(stamp)),
            current: RwLock::new(Arc::new(file)),
            plan_names: RwLock::new(None),
        })
    }

    /// Sets the plans `plan=` may name (the plans in force), checking the
    /// file in force against them: an error names the first line whose
    /// plan is not among them (and leaves the previous names in force).
    pub fn set_plans(&self, names: Vec<String>) -> Result<()> {
        let what = || match &self.path {
            Some(path) => format!("--keys-file {}", path.display()),
            None => "--keys-file".to_string(),
        };
        self.current()
            .check_plans(|plan| names.iter().any(|n| n == plan))
            .with_context(what)?;
        *self.plan_names.write().expect("plan names lock") = Some(names);
        Ok(())
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
        let file = KeysFile::parse_for(&text, &self.providers)
            .with_context(|| path.display().to_string())?;
        if let Some(names) = &*self.plan_names.read().expect("plan names lock") {
            file.check_plans(|plan| names.iter().any(|n| n == plan))
                .with_context(|| path.display().to_string())?;
        }
        let file = Arc::new(file);
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
    fn plans_are_named_and_checked() {
        let text = format!("plan=team {KEY_A}\nnames=x,plan=free {KEY_B}\n");
        let file = KeysFile::parse(&text).unwrap();
        assert_eq!(
            file.grant(&fp(KEY_A)).unwrap().plan.as_deref(),
            Some("team")
        );
        assert_eq!(file.grant(&fp(KEY_B)).unwrap().names, ["x"]);
        assert!(file.check_plans(|p| p == "team" || p == "free").is_ok());
        let err = file.check_plans(|p| p == "team").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"free\""), "{err}");
        let two = format!("names=x {KEY_A}\nplan=team {KEY_A}\n");
        let file = KeysFile::parse(&two).unwrap();
        assert_eq!(
            file.grant(&fp(KEY_A)).unwrap().plan.as_deref(),
            Some("team")
        );
        let clash = format!("plan=team {KEY_A}\nplan=free {KEY_A}\n");
        let err = KeysFile::parse(&clash).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("plan="), "{err}");
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
    fn a_login_on_any_line_of_a_key_binds_the_key() {
        let text = format!("names=api {KEY_A}\nnames=web,login=*@example.com {KEY_A}\n");
        let file = KeysFile::parse(&text).unwrap();
        let a = file.grant(&fp(KEY_A)).unwrap();
        assert_eq!(a.names, ["api", "web"]);
        let login = a.login.as_ref().expect("the second line's login=");
        assert_eq!(login.text(), "*@example.com");
        let same = format!("login=*@example.com {KEY_A}\nnames=web,login=*@example.com {KEY_A}\n");
        assert!(KeysFile::parse(&same).is_ok());
        let other = format!("login=*@example.com {KEY_A}\nnames=web,login=group:eng {KEY_A}\n");
        let err = KeysFile::parse(&other).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
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
            (format!("plan=Team {KEY_A}"), "plan name"),
            (format!("plan=a,b {KEY_A}"), "one plan per key"),
        ] {
            let err = format!("{:#}", KeysFile::parse(&text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
