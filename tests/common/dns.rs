//! A DNS server for tests: Debian's `pebble-challtestsrv`, whose records a
//! test sets through its HTTP management API (custom domains' proofs).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port_range, SshKeyPair, DOMAIN};

const WAIT: Duration = Duration::from_secs(15);

/// A `pebble-challtestsrv` on two free loopback ports, answering only the
/// records a test sets (its default A/AAAA answers are turned off). Killed
/// on drop.
pub struct Dns {
    child: Child,
    /// Where burrow sends its queries.
    pub addr: SocketAddr,
    management: String,
    http: reqwest::Client,
}

impl Dns {
    pub async fn start() -> Dns {
        let ports = free_port_range(2);
        let mut ports = ports.ports();
        let (dns, mgmt) = (ports.next().unwrap(), ports.next().unwrap());
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "pebble-challtestsrv is not installed: apt-get install -y pebble (or run .ci/run)",
            );
        let dns = Dns {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], dns)),
            management: format!("http://127.0.0.1:{mgmt}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        dns.wait_up().await;
        dns.post("/set-default-ipv4", serde_json::json!({ "ip": "" }))
            .await;
        dns.post("/set-default-ipv6", serde_json::json!({ "ip": "" }))
            .await;
        // The server's own name, which A/AAAA records are compared with.
        dns.add_a(DOMAIN, "127.0.0.1").await;
        dns
    }

    /// Polls the management API until it answers.
    pub async fn wait_up(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = serde_json::json!({ "host": "probe.invalid." });
            let sent = self
                .http
                .post(format!("{}/clear-txt", self.management))
                .body(body.to_string())
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pebble-challtestsrv did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.management))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("challtestsrv {path}: {e}"));
        assert!(resp.status().is_success(), "challtestsrv {path}: {resp:?}");
    }

    pub async fn set_txt(&self, name: &str, value: &str) {
        let host = format!("_burrow.{name}.");
        self.post(
            "/set-txt",
            serde_json::json!({ "host": host, "value": value }),
        )
        .await;
    }

    pub async fn set_cname(&self, name: &str, target: &str) {
        let body =
            serde_json::json!({ "host": format!("{name}."), "target": format!("{target}.") });
        self.post("/set-cname", body).await;
    }

    pub async fn add_a(&self, name: &str, ip: &str) {
        let body = serde_json::json!({ "host": format!("{name}."), "addresses": [ip] });
        self.post("/add-a", body).await;
    }

    /// TXT with `key`'s fingerprint and a CNAME to DOMAIN: a name `key` owns.
    pub async fn prove(&self, name: &str, key: &SshKeyPair) {
        self.set_txt(name, &key.fingerprint).await;
        self.set_cname(name, DOMAIN).await;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
