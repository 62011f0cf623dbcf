//! The public addresses users are told: tunnel URLs, TCP addresses and the
//! command that opens a tunnel. One place, so every banner, page and notice
//! spells them the same way.

use super::{is_custom_key, Kind};

/// The domain and the ports the world reaches this server on (ports may
/// differ from the bound ones behind a firewall or load balancer).
#[derive(Debug, Clone)]
pub struct Public {
    pub domain: String,
    pub https_port: u16,
    pub ssh_port: u16,
}

impl Public {
    /// `:PORT` when the public HTTPS port is not 443, else empty.
    pub fn port_suffix(&self) -> String {
        match self.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        }
    }

    /// The public URL of name `key` (a label under the domain, or a custom
    /// domain: the only keys with a dot).
    pub fn url(&self, key: &str) -> String {
        if is_custom_key(key) {
            return format!("https://{key}{}", self.port_suffix());
        }
        format!("https://{key}.{}{}", self.domain, self.port_suffix())
    }

    /// The public address of TCP port `port`.
    pub fn tcp_url(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.domain)
    }

    /// The public address of a tunnel: its HTTPS URL, `tcp://DOMAIN:PORT`,
    /// or for a private alias the command that reaches it.
    pub fn tunnel_url(&self, key: &str, kind: Kind) -> String {
        match kind {
            Kind::Tcp(port) => self.tcp_url(port),
            Kind::Name => self.url(key),
            Kind::Private(port) => self.private_command(super::private::name_of(key), port),
        }
    }

    /// How an allowed key reaches the private alias `name`:`port`: a jump
    /// for SSH (port 22), a local forward for anything else.
    pub fn private_command(&self, name: &str, port: u16) -> String {
        let host = match self.ssh_port {
            22 => self.domain.clone(),
            ssh => format!("{}:{ssh}", self.domain),
        };
        match port {
            22 => format!("ssh -J {host} USER@{name}"),
            port => {
                let p = match self.ssh_port {
                    22 => String::new(),
                    ssh => format!("-p {ssh} "),
                };
                format!("ssh {p}-N -L {port}:{name}:{port} {}", self.domain)
            }
        }
    }

    /// The command a user runs to open a tunnel to their port 3000.
    pub fn connect_command(&self) -> String {
        self.connect_command_as(None)
    }

    /// [`Public::connect_command`] logging in as `user`.
    pub fn connect_command_as(&self, user: Option<&str>) -> String {
        let port = match self.ssh_port {
            22 => String::new(),
            port => format!("-p {port} "),
        };
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        format!("ssh {port}-R 80:localhost:3000 {user}{}", self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_commands() {
        let public = Public {
            domain: "tunnel.example".into(),
            https_port: 443,
            ssh_port: 2200,
        };
        assert_eq!(public.url("api"), "https://api.tunnel.example");
        assert_eq!(public.url("app.example.org"), "https://app.example.org");
        assert_eq!(
            public.tunnel_url("tcp:20001", Kind::Tcp(20001)),
            "tcp://tunnel.example:20001"
        );
        assert_eq!(
            public.tunnel_url("private:pi-7:22", Kind::Private(22)),
            "ssh -J tunnel.example:2200 USER@pi-7"
        );
        assert_eq!(
            public.tunnel_url("private:db:5432", Kind::Private(5432)),
            "ssh -p 2200 -N -L 5432:db:5432 tunnel.example"
        );
        assert_eq!(
            public.connect_command_as(Some("random")),
            "ssh -p 2200 -R 80:localhost:3000 random@tunnel.example"
        );
        let odd = Public {
            https_port: 8443,
            ssh_port: 22,
            ..public
        };
        assert_eq!(odd.url("api"), "https://api.tunnel.example:8443");
        assert_eq!(
            odd.connect_command(),
            "ssh -R 80:localhost:3000 tunnel.example"
        );
    }
}
