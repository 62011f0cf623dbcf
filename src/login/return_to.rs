//! Where a sign-in may send a visitor back to. The return URL comes from
//! the visitor (`/start?return=URL`), so it is read strictly: HTTPS on
//! this server's port, no user info, a path that is neither
//! protocol-relative nor holds a backslash, and a host that is a DNS name
//! (never one a browser reads as an IP address) other than the sign-in
//! host itself. Whether that host is one of this
//! server's tunnels (a label under the domain, or a custom domain bound
//! now) is the caller's last check.

/// A return URL, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo<'a> {
    /// The host: lower case, without its port; a valid DNS name.
    pub host: String,
    /// The path and query from their `/` (`/` when the URL has none).
    pub path: &'a str,
    /// `host` is a valid tunnel label under the domain; otherwise only a
    /// custom domain bound now may be it.
    pub under_domain: bool,
}

/// What the URL to read is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Server<'a> {
    /// The server's domain (lower case).
    pub domain: &'a str,
    /// `:PORT` when visitors reach HTTPS on another port than 443, else
    /// empty.
    pub port_suffix: &'a str,
    /// The sign-in host (`login.DOMAIN`), never a return target.
    pub login_host: &'a str,
}

/// Reads `url` as a return target on `server`; `None` for anything that
/// may not be one.
pub fn read<'a>(url: &'a str, server: Server<'_>) -> Option<ReturnTo<'a>> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.contains('@') || path.starts_with("//") || path.contains('\\') {
        return None;
    }
    let host = crate::subdomain::strip_port(authority).to_ascii_lowercase();
    let port = &authority[host.len()..];
    let name_ok =
        crate::subdomain::is_valid_domain(&host) && crate::subdomain::browser_reads_as_is(&host);
    if port != server.port_suffix || !name_ok || host == server.login_host {
        return None;
    }
    let label = host
        .strip_suffix(server.domain)
        .and_then(|l| l.strip_suffix('.'));
    let under_domain = match label {
        Some(label) if crate::subdomain::is_valid_label(label) => true,
        Some(_) => return None,
        None => false,
    };
    Some(ReturnTo {
        host,
        path,
        under_domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Server<'static> = Server {
        domain: "tunnel.example",
        port_suffix: "",
        login_host: "login.tunnel.example",
    };

    #[test]
    fn a_tunnel_or_a_custom_domain_with_its_path() {
        let to = read("https://Happy-Tiger.tunnel.example/a?b=c", SERVER).unwrap();
        assert_eq!(to.host, "happy-tiger.tunnel.example");
        assert_eq!(to.path, "/a?b=c");
        assert!(to.under_domain);
        let to = read("https://app.example.com", SERVER).unwrap();
        assert_eq!((to.host.as_str(), to.path), ("app.example.com", "/"));
        assert!(!to.under_domain);
    }

    #[test]
    fn anything_that_could_leave_the_server_is_refused() {
        for url in [
            "http://a.tunnel.example/",
            "https://evil.example@a.tunnel.example/",
            "https://a.tunnel.example//evil.example/",
            "https://a.tunnel.example/\\evil.example",
            "https://a.tunnel.example:8443/",
            "https://a.tunnel.example./",
            "https://evil.example?.tunnel.example/",
            "https://a_b.tunnel.example/",
            "https://-a.tunnel.example/",
            "https://a.b.tunnel.example/",
            "https://login.tunnel.example/",
            "https://LOGIN.tunnel.example:/",
            "https://[::1]/",
            "https://1.2.3.4/",
            "https://a.tuntdash.1/",
            "https://evil.0x7f/",
            "https://evil.XN--ex4ps/",
            "https://",
            "//a.tunnel.example/",
        ] {
            assert_eq!(read(url, SERVER), None, "{url}");
        }
    }

    #[test]
    fn the_port_must_be_the_servers() {
        let server = Server {
            port_suffix: ":8443",
            ..SERVER
        };
        assert!(read("https://a.tunnel.example:8443/x", server).is_some());
        assert!(read("https://a.tunnel.example/x", server).is_none());
        assert!(read("https://a.tunnel.example:443/x", server).is_none());
    }
}
