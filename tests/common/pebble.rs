//! Harness for ACME tests: Debian's `pebble` (a test ACME CA) with
//! `pebble-challtestsrv` as the DNS server it asks, on random loopback
//! ports, and TLS clients that trust only pebble's issuing root.
//!
//! Debian's pebble ships no certificate for its own HTTPS listener, so each
//! test generates a CA and a `localhost`/`127.0.0.1` certificate for it and
//! hands burrow that CA with `--acme-ca-root`. Served certificates are
//! checked with a TLS client that trusts only pebble's root (fetched from
//! its management API), so a handshake that verifies proves the names.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::common::{free_port_range, spawn_reader, OutputBuf, TempDir};

/// Longest wait for one issuance (pebble answers in well under a second).
pub const ISSUE_WAIT: Duration = Duration::from_secs(30);

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    *free_port_range(1).ports().start()
}

/// Polls `f` every 100 ms until it gives `Some`, or panics after `limit`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pebble and (optionally) challtestsrv, configured but maybe not running.
pub struct Pebble {
    dir: TempDir,
    /// Where its HTTP-01 checks go: burrow's redirector.
    pub http: u16,
    pub port: u16,
    pub mgmt: u16,
    /// challtestsrv's DNS and management ports.
    pub dns: u16,
    pub dns_mgmt: u16,
    /// The CA of pebble's HTTPS listener (for --acme-ca-root).
    pub https_ca: PathBuf,
    https_ca_pem: String,
    procs: Vec<Proc>,
    /// What pebble logs (its issuances among it).
    pub log: OutputBuf,
}

impl Pebble {
    /// Writes pebble's config: HTTP-01 checks go to `http_port`, issued
    /// certificates live `validity` seconds (0: pebble's default).
    pub fn configure(http_port: u16, validity: u64) -> Pebble {
        let dir = TempDir::new("pebble");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let https_ca = dir.path().join("https-ca.pem");
        std::fs::write(&https_ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let (port, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        Pebble {
            dir,
            http: http_port,
            port,
            mgmt,
            dns,
            dns_mgmt,
            https_ca,
            https_ca_pem: ca_cert.pem(),
            procs: Vec::new(),
            log: OutputBuf::default(),
        }
    }

    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.port)
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.https_ca_pem.as_bytes()).unwrap(),
            )
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// Starts challtestsrv (the DNS server pebble asks, A records all
    /// 127.0.0.1) and returns its DNS address.
    pub async fn start_challtestsrv(&mut self) -> SocketAddr {
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns)])
            .args(["-management", &format!("127.0.0.1:{}", self.dns_mgmt)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "pebble-challtestsrv is not installed: apt-get install -y pebble (or run .ci/run)",
            );
        self.procs.push(Proc(child));
        let mgmt = self.dns_mgmt;
        poll("challtestsrv", Duration::from_secs(10), || async move {
            TcpStream::connect(("127.0.0.1", mgmt))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        self.dns_addr()
    }

    /// Starts pebble checking DNS at `dns` and waits for its directory.
    pub async fn start(&mut self, dns: SocketAddr) {
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pebble is not installed: apt-get install -y pebble (or run .ci/run)");
        spawn_reader(child.stdout.take().unwrap(), self.log.clone(), None);
        spawn_reader(child.stderr.take().unwrap(), self.log.clone(), None);
        self.procs.push(Proc(child));
        let (client, url) = (self.client(), self.directory());
        poll("pebble's directory", Duration::from_secs(10), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client.get(url).send().await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// Pebble with challtestsrv as its DNS server, both running, checking
    /// HTTP-01 on a free port (burrow's redirector goes there).
    pub async fn launch(validity: u64) -> Pebble {
        Pebble::launch_on(free_port(), validity).await
    }

    /// [`Pebble::launch`] checking HTTP-01 on `http_port`.
    pub async fn launch_on(http_port: u16, validity: u64) -> Pebble {
        let mut pebble = Pebble::configure(http_port, validity);
        let dns = pebble.start_challtestsrv().await;
        pebble.start(dns).await;
        pebble
    }

    /// How many certificates pebble has issued (it logs each).
    pub fn issued(&self) -> usize {
        self.log.text().matches("Issued certificate serial").count()
    }

    /// Sets a challtestsrv record through its management API (`what`:
    /// `add-a`, `set-txt`, …).
    pub async fn dns_set(&self, what: &str, body: serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/{what}", self.dns_mgmt))
            .body(body.to_string())
            .send()
            .await
            .expect("challtestsrv management API");
        assert!(resp.status().is_success(), "{what} {body}: {resp:?}");
    }

    /// challtestsrv's DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dns))
    }

    /// Stops pebble and challtestsrv (the config stays).
    pub fn stop(&mut self) {
        self.procs.clear();
    }

    /// Pebble's issuing root (changes with every pebble start).
    pub async fn root(&self) -> CertificateDer<'static> {
        let url = format!("https://localhost:{}/roots/0", self.mgmt);
        let pem = self
            .client()
            .get(url)
            .send()
            .await
            .expect("pebble management API")
            .text()
            .await
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pebble root PEM")
    }
}

/// A TLS client trusting only `root`.
pub fn client_config(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A verified TLS connection for `sni`, or the handshake error.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(client_config(root))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The serial of the certificate `tls` got.
pub fn serial(tls: &Tls) -> String {
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed.raw_serial_as_string()
}

/// Waits until burrow serves `sni` a certificate that verifies with
/// `root`; returns the connection.
pub async fn wait_verified(addr: SocketAddr, sni: &str, root: &CertificateDer<'static>) -> Tls {
    let deadline = Instant::now() + ISSUE_WAIT;
    loop {
        match connect(addr, sni, root).await {
            Ok(tls) => return tls,
            Err(err) if Instant::now() > deadline => {
                panic!("{sni}: no verified certificate in time: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
