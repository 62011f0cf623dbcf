//! The identity providers visitors sign in with, as the operator
//! configured them: one from `--oidc-issuer`/`--oidc-client-id`/
//! `--oidc-client-secret-file` (named `default`), and any number from
//! `--login-providers FILE`, one a line:
//!
//! ```text
//! # NAME  ISSUER                          CLIENT_ID  SECRET_FILE             [scopes=a,b] [groups=CLAIM]
//! corp    https://id.example.com/realms/x burrow     /etc/burrow/corp.secret groups=roles
//! google  https://accounts.google.com     123.apps…  /etc/burrow/google.secret
//! ```
//!
//! A bad line refuses the file with its line number.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{read_secret, LoginArgs};

/// The name of the provider given by the `--oidc-*` flags.
pub const DEFAULT: &str = "default";
/// Scopes asked for when a line names none.
const SCOPES: [&str; 3] = ["openid", "email", "profile"];
/// The claim that holds groups when a line names none.
const GROUPS: &str = "groups";

/// One configured provider.
#[derive(Clone)]
pub struct Provider {
    /// What `login=NAME:…` and the chooser page call it.
    pub name: String,
    /// The issuer URL (discovery document under it).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Scopes asked for (always with `openid`).
    pub scopes: Vec<String>,
    /// The ID token claim whose values `group:` items match.
    pub groups_claim: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Every configured provider (none: sign-in is off).
#[derive(Debug, Clone, Default)]
pub struct Providers(Vec<Provider>);

impl Providers {
    /// Reads the flags and the providers file.
    pub fn load(args: &LoginArgs, _domain: &str) -> Result<Providers> {
        let mut all = Vec::new();
        if let (Some(issuer), Some(id), Some(secret)) = (
            &args.oidc_issuer,
            &args.oidc_client_id,
            &args.oidc_client_secret_file,
        ) {
            let issuer = check_issuer(issuer).map_err(|e| anyhow!("--oidc-issuer {e}"))?;
            let mut scopes: Vec<String> = args.oidc_scopes.clone();
            scopes.retain(|s| !s.is_empty());
            if !scopes.iter().any(|s| s == "openid") {
                scopes.insert(0, "openid".into());
            }
            all.push(Provider {
                name: DEFAULT.into(),
                issuer,
                client_id: id.clone(),
                client_secret: read_secret("--oidc-client-secret-file", secret)?,
                scopes,
                groups_claim: args.oidc_groups_claim.clone(),
            });
        }
        if let Some(file) = &args.login_providers {
            all.extend(read_file(file)?);
        }
        let mut names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!(
                "--login-providers: the provider name {:?} is used twice",
                twice[0]
            );
        }
        Ok(Providers(all))
    }

    /// The providers' names, as `login=NAME:…` may use them.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|p| p.name.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn all(&self) -> &[Provider] {
        &self.0
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.0.iter().find(|p| p.name == name)
    }
}

fn read_file(path: &Path) -> Result<Vec<Provider>> {
    let context = || format!("--login-providers {}", path.display());
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", context()))?;
    parse_text(&text, |file| read_secret("the secret file", file))
        .map_err(|e| anyhow!("{}: {e}", context()))
}

/// The providers of a file's `text`; `secret` reads a line's SECRET_FILE
/// (`pub(crate)` for `crate::fuzzing`, which reads none).
pub(crate) fn parse_text(
    text: &str,
    secret: impl Fn(&Path) -> Result<String>,
) -> Result<Vec<Provider>> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let provider = parse_line(line, &secret).map_err(|e| anyhow!("line {}: {e}", index + 1))?;
        out.push(provider);
    }
    Ok(out)
}

fn parse_line(line: &str, secret: impl Fn(&Path) -> Result<String>) -> Result<Provider> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [name, issuer, client_id, secret_file, options @ ..] = words.as_slice() else {
        bail!("expected NAME ISSUER CLIENT_ID SECRET_FILE [scopes=…] [groups=CLAIM]");
    };
    if !crate::subdomain::is_valid_label(name) {
        bail!("{name:?} is no provider name (a-z, 0-9 and '-')");
    }
    let mut provider = Provider {
        name: name.to_string(),
        issuer: check_issuer(issuer).map_err(|e| anyhow!(e))?,
        client_id: client_id.to_string(),
        client_secret: secret(Path::new(secret_file))?,
        scopes: SCOPES.iter().map(|s| s.to_string()).collect(),
        groups_claim: GROUPS.into(),
    };
    for option in options {
        match option.split_once('=') {
            Some(("scopes", list)) => {
                let mut scopes: Vec<String> = list.split(',').map(str::to_string).collect();
                scopes.retain(|s| !s.is_empty());
                if !scopes.iter().any(|s| s == "openid") {
                    scopes.insert(0, "openid".into());
                }
                provider.scopes = scopes;
            }
            Some(("groups", claim)) if !claim.is_empty() => provider.groups_claim = claim.into(),
            _ => bail!("unknown option {option:?} (known: scopes=a,b and groups=CLAIM)"),
        }
    }
    Ok(provider)
}

/// An issuer URL must be `https://`, except on a loopback address (local
/// testing): the ID tokens and the client secret travel to it. The host is
/// the one a URL parser (the HTTP client's) finds, so userinfo
/// (`http://localhost:80@example.com`) cannot pass for it; an issuer with
/// userinfo is refused altogether.
pub fn check_issuer(issuer: &str) -> Result<String, String> {
    use openidconnect::url::{Host, Url};
    let url = issuer.trim().trim_end_matches('/');
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?}: an issuer URL has no spaces or controls"));
    }
    let parsed = Url::parse(url)
        .map_err(|e| format!("{url:?}: the issuer must be an https:// URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{url:?}: the issuer URL must not carry a user or password"
        ));
    }
    let loopback = match parsed.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(url.to_string()),
        "http" if loopback => Ok(url.to_string()),
        "http" => Err(format!(
            "{url:?}: the issuer must be https:// (plain http only on a loopback address)"
        )),
        _ => Err(format!("{url:?}: the issuer must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_or_loopback() {
        assert!(check_issuer("https://id.example.com/realms/x/").is_ok());
        assert!(check_issuer("http://127.0.0.1:9000").is_ok());
        assert!(check_issuer("http://localhost:9000").is_ok());
        assert!(check_issuer("http://[::1]:9000").is_ok());
        assert!(check_issuer("http://id.example.com").is_err());
        assert!(check_issuer("http://127.0.0.1.evil.com").is_err());
        assert!(check_issuer("ftp://x").is_err());
    }

    /// Found by writing the `login_providers` fuzz target: the check took
    /// whatever followed `http://` up to the last `:` for the host, so
    /// userinfo that named localhost let plain http reach another host.
    #[test]
    fn userinfo_does_not_pass_for_a_loopback_issuer() {
        for issuer in [
            "http://localhost:80@id.example.com",
            "http://127.0.0.1:1@id.example.com/realms/x",
            "http://[::1]:9000@id.example.com",
            "https://user:pw@id.example.com",
            "https://",
        ] {
            assert!(check_issuer(issuer).is_err(), "{issuer}");
        }
        assert_eq!(
            check_issuer("http://127.0.0.1:9000/realms/x/").as_deref(),
            Ok("http://127.0.0.1:9000/realms/x")
        );
    }

    /// Found by the fuzz target login_providers: `https://a/b \n/\x0b`
    /// came back with its inner whitespace (the URL parser drops newlines
    /// and tabs, so the provider saw another issuer than the one shown),
    /// and checking the answer again changed it.
    #[test]
    fn an_issuer_with_spaces_or_controls_is_refused() {
        for issuer in [
            "https://a/b \n/\u{b}",
            "https://a/\tb",
            "https://a b",
            "https://a/\u{7f}",
        ] {
            assert!(check_issuer(issuer).is_err(), "{issuer:?}");
        }
        assert_eq!(check_issuer(" https://a/b/ ").as_deref(), Ok("https://a/b"));
    }

    #[test]
    fn provider_lines_with_options_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "hush\n").unwrap();
        let file = dir.path().join("providers");
        let s = secret.display();
        std::fs::write(
            &file,
            format!(
                "# a comment\ncorp https://id.example.com corp-id {s} scopes=email groups=roles\n"
            ),
        )
        .unwrap();
        let providers = read_file(&file).unwrap();
        assert_eq!(providers[0].scopes, ["openid", "email"]);
        assert_eq!(providers[0].groups_claim, "roles");
        assert_eq!(providers[0].client_secret, "hush");
        std::fs::write(&file, format!("\nx http://id.example.com id {s}\n")).unwrap();
        let err = format!("{:#}", read_file(&file).unwrap_err());
        assert!(err.contains("line 2") && err.contains("https"), "{err}");
        std::fs::write(&file, format!("x https://a b {s} colour=red\n")).unwrap();
        assert!(read_file(&file).is_err());
    }
}
