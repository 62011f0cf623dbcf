//! Who a signed-in visitor is, and who may visit: the identity an OpenID
//! provider vouched for, and `login=` policies — written by a tunnel's
//! owner (`ssh … -- login=*@example.com,group:eng`), by the operator per key
//! (keys file `login=`, `--auth-url`'s answer) or for the whole server
//! (`--login-required`). Parsed here for all of them, so the three cannot
//! disagree on what a pattern means.
//!
//! A policy is a comma-separated list; a visitor passes when any item
//! matches:
//! - `any`: anyone who can sign in at the provider;
//! - `NAME@DOMAIN`, `*@DOMAIN`, `*`-patterns: a *verified* e-mail address
//!   (case-insensitive; `*` is any run of characters);
//! - `group:NAME`: a value of the provider's groups claim;
//! - any of the above after `PROVIDER:` (`corp:group:eng`): only for
//!   identities from that provider (with several providers configured).

use serde::{Deserialize, Serialize};

use crate::subdomain::glob;

/// Longest policy accepted (an SSH command is short; this bounds work).
const MAX_POLICY: usize = 2048;
/// Most items in one policy.
const MAX_ITEMS: usize = 64;

/// Who a visitor is, as their provider said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The provider's name (`default` for the `--oidc-*` one).
    #[serde(rename = "p")]
    pub provider: String,
    /// The provider's subject identifier.
    #[serde(rename = "s")]
    pub subject: String,
    /// The e-mail address, when the provider gave one.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the provider verified that address (only verified ones
    /// match e-mail patterns).
    #[serde(rename = "v", default)]
    pub email_verified: bool,
    /// The display name, when the provider gave one.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The values of the provider's groups claim.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Identity {
    /// How the visitor is named to people: their e-mail, else their name,
    /// else the subject at the provider.
    pub fn label(&self) -> String {
        match (&self.email, &self.name) {
            (Some(email), _) => email.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => format!("{} at {}", self.subject, self.provider),
        }
    }

    /// The verified e-mail address, lowercase.
    fn verified_email(&self) -> Option<String> {
        self.email
            .as_ref()
            .filter(|_| self.email_verified)
            .map(|e| e.to_ascii_lowercase())
    }
}

/// One item of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// Anyone who signs in.
    Any,
    /// A verified e-mail matching the (lowercase) `*`-pattern.
    Email(String),
    /// A value of the groups claim (exact).
    Group(String),
}

/// One item, possibly for one provider only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    provider: Option<String>,
    rule: Rule,
}

/// Who may visit: any item matching lets the visitor in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    items: Vec<Item>,
    /// As written, for the banner and the help.
    text: String,
}

impl LoginPolicy {
    /// Parses `text`; the error says which item is wrong and why.
    /// `providers`: the names of the configured providers (a `NAME:` prefix
    /// must be one of them; with only the default one, prefixes are
    /// refused as unknown).
    pub fn parse(text: &str, providers: &[String]) -> Result<LoginPolicy, String> {
        if text.len() > MAX_POLICY {
            return Err(format!("login= is longer than {MAX_POLICY} characters"));
        }
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        if items.len() > MAX_ITEMS {
            return Err(format!("login= has more than {MAX_ITEMS} items"));
        }
        let items = items
            .into_iter()
            .map(|item| parse_item(item, providers))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoginPolicy {
            items,
            text: text.trim().to_string(),
        })
    }

    /// Whether `who` may visit.
    pub fn allows(&self, who: &Identity) -> bool {
        let email = who.verified_email();
        self.items.iter().any(|item| {
            let provider_ok = item.provider.as_ref().is_none_or(|p| *p == who.provider);
            provider_ok
                && match &item.rule {
                    Rule::Any => true,
                    Rule::Email(pattern) => email.as_deref().is_some_and(|e| glob(pattern, e)),
                    Rule::Group(group) => who.groups.iter().any(|g| g == group),
                }
        })
    }

    /// The policy as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The providers whose identities it may let in (`None`: any).
    pub fn providers(&self) -> Option<Vec<&str>> {
        let mut named = Vec::new();
        for item in &self.items {
            match &item.provider {
                None => return None,
                Some(p) if !named.contains(&p.as_str()) => named.push(p.as_str()),
                Some(_) => {}
            }
        }
        Some(named)
    }
}

impl std::fmt::Display for LoginPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The operator's side of sign-in, as the SSH server needs it: the
/// providers' names (`login=NAME:…`) and `--login-required`.
#[derive(Debug, Clone, Default)]
pub struct Operator {
    pub providers: Vec<String>,
    pub required: Option<LoginPolicy>,
}

/// Several policies that must all let a visitor in: the server's default,
/// the one the operator gave the owner's key, the owner's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies(Vec<LoginPolicy>);

impl Policies {
    pub fn new(policies: impl IntoIterator<Item = LoginPolicy>) -> Policies {
        Policies(policies.into_iter().collect())
    }

    /// Whether anyone must sign in at all.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `who` passes every policy.
    pub fn allow(&self, who: &Identity) -> bool {
        self.0.iter().all(|p| p.allows(who))
    }

    /// For people: `*@example.com; group:eng` (each must pass).
    pub fn describe(&self) -> String {
        let texts: Vec<&str> = self.0.iter().map(LoginPolicy::text).collect();
        texts.join("; and ")
    }

    /// The one provider every policy names, when there is exactly one (the
    /// visitor is sent straight to it).
    pub fn only_provider(&self) -> Option<String> {
        let mut only: Option<&str> = None;
        for policy in &self.0 {
            let named = policy.providers()?;
            for p in named {
                match only {
                    Some(o) if o != p => return None,
                    _ => only = Some(p),
                }
            }
        }
        only.map(str::to_string)
    }
}

fn parse_item(item: &str, providers: &[String]) -> Result<Item, String> {
    if item.is_empty() {
        return Err("login= has an empty item".into());
    }
    // A configured provider's name before the first `:` is a prefix, even
    // when what follows is an e-mail pattern (`corp:*@example.com`).
    if let Some((provider, rest)) = item.split_once(':') {
        if provider != "group" && providers.iter().any(|p| p == provider) {
            return match parse_rule(rest)? {
                Some(rule) => Ok(Item {
                    provider: Some(provider.to_string()),
                    rule,
                }),
                None => Err(format!("login={item}: nothing usable after {provider}:")),
            };
        }
    }
    if let Some(rule) = parse_rule(item)? {
        return Ok(Item {
            provider: None,
            rule,
        });
    }
    match item.split_once(':') {
        Some((provider, _)) => Err(format!(
            "login={item}: no sign-in provider is called {provider:?} (configured: {})",
            providers.join(", ")
        )),
        None => Err(format!(
            "login={item}: expected any, an e-mail pattern (*@example.com), group:NAME or PROVIDER:…"
        )),
    }
}

/// `any`, `group:…` or an e-mail pattern; `None` for something else (a
/// provider prefix, perhaps).
fn parse_rule(item: &str) -> Result<Option<Rule>, String> {
    if item.eq_ignore_ascii_case("any") {
        return Ok(Some(Rule::Any));
    }
    if let Some(group) = item.strip_prefix("group:") {
        if group.is_empty() || group.chars().any(|c| c.is_control()) {
            return Err(format!("login={item}: a group needs a name"));
        }
        return Ok(Some(Rule::Group(group.to_string())));
    }
    let Some((local, domain)) = item.rsplit_once('@') else {
        return Ok(None);
    };
    let valid = |part: &str, allow_dot: bool| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "*-_+".contains(c) || (allow_dot && c == '.'))
    };
    if !valid(local, true) || !valid(domain, true) || domain.starts_with('.') {
        return Err(format!("login={item}: not an e-mail address or pattern"));
    }
    Ok(Some(Rule::Email(item.to_ascii_lowercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(email: &str, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            provider: "default".into(),
            subject: "s".into(),
            email: Some(email.into()),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_match_verified_emails_groups_and_anyone() {
        let none: [String; 0] = [];
        let p = LoginPolicy::parse("*@example.com, contractor@example.org", &none).unwrap();
        assert!(p.allows(&who("Alice@Example.com", true, &[])));
        assert!(p.allows(&who("contractor@example.org", true, &[])));
        assert!(
            !p.allows(&who("alice@example.com", false, &[])),
            "unverified"
        );
        assert!(!p.allows(&who("eve@example.com.evil", true, &[])));
        let g = LoginPolicy::parse("group:eng,group:ops", &none).unwrap();
        assert!(g.allows(&who("x@y.z", false, &["ops"])));
        assert!(!g.allows(&who("x@y.z", true, &["sales"])));
        assert!(LoginPolicy::parse("any", &none)
            .unwrap()
            .allows(&who("x@y.z", false, &[])));
    }

    #[test]
    fn provider_prefixes_name_configured_providers_only() {
        let providers = ["corp".to_string(), "github".to_string()];
        let p = LoginPolicy::parse("corp:group:eng", &providers).unwrap();
        let mut alice = who("a@b.c", true, &["eng"]);
        alice.provider = "corp".into();
        assert!(p.allows(&alice));
        alice.provider = "github".into();
        assert!(!p.allows(&alice));
        assert!(LoginPolicy::parse("gitlab:any", &providers).is_err());
        let all = Policies::new([p, LoginPolicy::parse("corp:*@b.c", &providers).unwrap()]);
        assert_eq!(all.only_provider().as_deref(), Some("corp"));
    }

    #[test]
    fn every_policy_must_pass() {
        let none: [String; 0] = [];
        let server = LoginPolicy::parse("*@example.com", &none).unwrap();
        let owner = LoginPolicy::parse("group:eng", &none).unwrap();
        let both = Policies::new([server, owner]);
        assert!(both.allow(&who("a@example.com", true, &["eng"])));
        assert!(!both.allow(&who("a@example.com", true, &["ops"])));
        assert!(!both.allow(&who("a@other.com", true, &["eng"])));
        assert!(!Policies::default().required());
    }

    #[test]
    fn malformed_policies_are_refused() {
        let none: [String; 0] = [];
        for bad in [
            "",
            "a,,b",
            "not an email",
            "@example.com",
            "x@",
            "group:",
            "foo:bar",
        ] {
            assert!(LoginPolicy::parse(bad, &none).is_err(), "{bad:?}");
        }
    }
}
