//! Test harness for burrow's end-to-end tests.
//!
//! * [`Burrow`] runs the real `burrow` binary on `127.0.0.1:0` listeners with
//!   a test TLS certificate and parses its `burrow ready:` line.
//! * [`Ssh`] runs the system OpenSSH client against it and collects its
//!   stdout/stderr so tests can wait for text (tunnel URLs, banners, errors).
//! * [`Origin`] is a real local HTTP/1.1 app (hyper) that the tunnels point to.
//!
//! Every wait is bounded; nothing here loops forever.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The domain every test instance serves.
pub const DOMAIN: &str = "localhost";

/// Flags that turn off the per-IP SSH limits, for tests that open many
/// connections from loopback (tests/limits.rs covers those caps).
pub const SSH_LIMITS_OFF: [&str; 6] = [
    "--max-conns-per-minute",
    "0",
    "--max-handshakes-per-ip",
    "0",
    "--max-tunnels-per-ip",
    "0",
];

/// How long to wait for burrow to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for ssh to print a tunnel URL.
pub const URL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and `*.localhost`.
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let ck =
            rcgen::generate_simple_self_signed(vec![DOMAIN.to_string(), format!("*.{DOMAIN}")])
                .expect("rcgen: generate self-signed cert");
        TestCert {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            cert_der: ck.cert.der().clone(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`, returning their paths.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem).expect("write cert.pem");
        std::fs::write(&key, &self.key_pem).expect("write key.pem");
        (cert, key)
    }
}

fn crypto_provider() -> Arc<CryptoProvider> {
    // Both ring and aws-lc-rs are compiled into test builds (reqwest pulls in
    // ring), so the process-wide default provider is ambiguous: always name
    // one explicitly.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Trusts exactly the test certificate.
///
/// rustls (like NSS) refuses a wildcard with fewer than two labels after it,
/// so `*.localhost` would never validate through the normal webpki path even
/// with the cert added as a root. Instead we pin the exact certificate, check
/// that the name is `localhost` or a subdomain of it, and still verify the
/// handshake signatures properly.
#[derive(Debug)]
struct PinnedCertVerifier {
    /// `None`: any certificate for any name (signatures are still checked),
    /// so a failed handshake can only be the server's doing.
    cert: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(cert) = &self.cert else {
            return Ok(ServerCertVerified::assertion());
        };
        if end_entity.as_ref() != cert.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        }
        let name_ok = match server_name {
            ServerName::DnsName(name) => {
                let n = name.as_ref().to_ascii_lowercase();
                n == DOMAIN || n.ends_with(&format!(".{DOMAIN}"))
            }
            _ => false,
        };
        if !name_ok {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Which protocols the client offers through ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1` (server picks; burrow should pick h2).
    Any,
    /// `http/1.1` only.
    Http1,
    /// `h2` only (and HTTP/2 prior knowledge on the client).
    Http2,
}

fn client_tls_config(cert: &CertificateDer<'static>, alpn: Alpn) -> rustls::ClientConfig {
    let provider = crypto_provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
            cert: Some(cert.clone()),
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = match alpn {
        Alpn::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::Http2 => vec![b"h2".to_vec()],
    };
    cfg
}

/// Resolves every name to 127.0.0.1 (the port comes from the URL), so test
/// clients can use `NAME.localhost` URLs without touching /etc/hosts and can
/// never reach anything off this machine.
struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

pub fn base_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(LoopbackResolver))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
}

// ---------------------------------------------------------------------------
// Burrow process
// ---------------------------------------------------------------------------

/// How long an exited process's output may take to be read to its end.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Shared, growing text buffer filled by a reader thread.
#[derive(Clone, Default)]
pub struct OutputBuf {
    inner: Arc<(Mutex<OutputState>, Notify)>,
}

#[derive(Default)]
struct OutputState {
    text: String,
    closed: bool,
}

impl OutputBuf {
    fn push(&self, chunk: &[u8]) {
        let (m, n) = &*self.inner;
        m.lock()
            .unwrap()
            .text
            .push_str(&String::from_utf8_lossy(chunk));
        n.notify_waiters();
    }

    fn close(&self) {
        let (m, n) = &*self.inner;
        m.lock().unwrap().closed = true;
        n.notify_waiters();
    }

    pub fn text(&self) -> String {
        self.inner.0.lock().unwrap().text.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.0.lock().unwrap().closed
    }

    /// Waits until `f` returns `Some` on the accumulated text, or `timeout`
    /// passes (then `Err` with the text seen so far).
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closed = {
                let st = self.inner.0.lock().unwrap();
                if let Some(v) = f(&st.text) {
                    return Ok(v);
                }
                st.closed
            };
            if closed {
                return Err(format!("<stream closed> {}", self.text()));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("<timeout after {timeout:?}> {}", self.text()));
            }
        }
    }

    /// Waits (bounded) until the reader has seen the end of the stream, so
    /// that the text is all the process wrote. A process that has exited
    /// closes its pipes, but its reader thread may not have read the last
    /// lines yet.
    pub async fn wait_closed(&self, timeout: Duration) {
        let _ = self.wait_for(timeout, |_| None::<()>).await;
    }

    /// Waits for `needle` to appear in the text.
    pub async fn wait_contains(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        self.wait_for(timeout, |t| t.contains(needle).then_some(()))
            .await
    }
}

/// Spawns a thread copying `r` into `buf`; if `echo_prefix` is set every
/// line is also echoed to this test's stderr.
/// Captures a child's stdout and stderr (both piped) into buffers, echoed
/// to the test's output as `[TAG stdout]` / `[TAG stderr]` when `tag` is given.
pub fn capture_output(child: &mut Child, tag: Option<&str>) -> (OutputBuf, OutputBuf) {
    let (out, err) = (OutputBuf::default(), OutputBuf::default());
    let prefix = |stream: &str| tag.map(|t| format!("[{t} {stream}] "));
    spawn_reader(child.stdout.take().unwrap(), out.clone(), prefix("stdout"));
    spawn_reader(child.stderr.take().unwrap(), err.clone(), prefix("stderr"));
    (out, err)
}

pub fn spawn_reader(r: impl Read + Send + 'static, buf: OutputBuf, echo_prefix: Option<String>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(p) = &echo_prefix {
                        eprint!("{p}{}", String::from_utf8_lossy(&line));
                        if !line.ends_with(b"\n") {
                            eprintln!();
                        }
                    }
                    buf.push(&line);
                }
            }
        }
        buf.close();
    });
}

/// Addresses parsed from the `burrow ready:` line.
#[derive(Clone, Debug)]
pub struct ReadyLine {
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// The stats listener over TCP (`0.0.0.0:0` when it is a Unix socket).
    pub stats: SocketAddr,
    /// The stats listener's Unix socket (`stats=unix:/PATH`), if it is one.
    pub stats_unix: Option<PathBuf>,
    pub domain: String,
}

/// Parses `burrow ready: ssh=A http=B https=C stats=D domain=E`.
pub fn parse_ready_line(line: &str) -> Option<ReadyLine> {
    let rest = line.trim().strip_prefix("burrow ready:")?;
    let mut kv = BTreeMap::new();
    for tok in rest.split_whitespace() {
        let (k, v) = tok.split_once('=')?;
        kv.insert(k.to_string(), v.to_string());
    }
    Some(ReadyLine {
        ssh: kv.get("ssh")?.parse().ok()?,
        http: kv.get("http")?.parse().ok()?,
        https: kv.get("https")?.parse().ok()?,
        stats: match kv.get("stats")?.strip_prefix("unix:") {
            Some(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            None => kv.get("stats")?.parse().ok()?,
        },
        stats_unix: kv.get("stats")?.strip_prefix("unix:").map(PathBuf::from),
        domain: kv.get("domain")?.clone(),
    })
}

/// A running `burrow` binary, killed on drop.
pub struct Burrow {
    child: Option<Child>,
    pub dir: TempDir,
    pub cert: TestCert,
    pub addrs: ReadyLine,
    pub stdout: OutputBuf,
    pub stderr: OutputBuf,
    exit: Option<ExitStatus>,
    /// Where burrow keeps its admin token (`--admin-token-file`, or
    /// `admin_token` in its state directory).
    pub admin_token_file: PathBuf,
}

/// Where a burrow started with `args` and `env` in `dir` keeps its admin
/// token.
fn admin_token_file(dir: &Path, args: &[String], env: &[(&str, &str)]) -> PathBuf {
    let flag = |name: &str, var: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.to_string())
            })
            .map(|p| dir.join(p))
    };
    flag("--admin-token-file", "ADMIN_TOKEN_FILE").unwrap_or_else(|| {
        flag("--state-dir", "STATE_DIR")
            .unwrap_or_else(|| dir.join("state"))
            .join("admin_token")
    })
}

/// The only environment burrow gets in tests: every flag has an env
/// fallback (DOMAIN, TLS_CERT, MAX_BODY_SIZE, ...), so anything else set in
/// the developer's or CI's environment could silently change the server.
fn passthrough_env() -> Vec<(String, String)> {
    [
        "PATH",
        "HOME",
        "TMPDIR",
        "RUST_BACKTRACE",
        "LLVM_PROFILE_FILE",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect()
}

/// The burrow binary under test: the one cargo built, or `BURROW_BIN`
/// (a long soak runs a copy, so rebuilding meanwhile cannot swap it).
pub fn burrow_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BURROW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_burrow").to_string())
    })
}

impl Burrow {
    /// Starts burrow with `--domain localhost`, all listeners on
    /// `127.0.0.1:0`, a fresh host key and the test certificate, plus
    /// `extra_args`. Panics if the ready line does not show up in time.
    pub async fn start(extra_args: &[&str]) -> Burrow {
        Self::start_with_env(extra_args, &[]).await
    }

    /// [`Burrow::start`] with extra environment variables (on top of the
    /// minimal environment burrow always gets).
    pub async fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Burrow {
        let dir = TempDir::new("burrow-test");
        let cert = TestCert::generate();
        let mut args: Vec<String> = [
            "--ssh-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--https-addr",
            "127.0.0.1:0",
            "--stats-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--host-key".into());
        args.push(dir.path().join("host_key").display().to_string());
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::launch(dir, cert, &args, env).await
    }

    /// Starts burrow with `--domain localhost`, `cert` as its certificate
    /// (written into `dir`, which is also its working directory) and
    /// `args` (listen addresses, host key, anything else).
    pub async fn launch(
        dir: TempDir,
        cert: TestCert,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Burrow {
        let (cert_path, key_path) = cert.write_to(dir.path());
        let mut all: Vec<String> = vec!["--domain".into(), DOMAIN.into()];
        all.push("--tls-cert".into());
        all.push(cert_path.display().to_string());
        all.push("--tls-key".into());
        all.push(key_path.display().to_string());
        all.extend(args.iter().cloned());
        Self::launch_as(dir, cert, DOMAIN, &all, env).await
    }

    /// Starts burrow with exactly `args` (its domain, and certificate flags
    /// if any) in `dir`; its ready line must name `domain`. `cert` is what
    /// the test's HTTPS clients trust.
    pub async fn launch_as(
        dir: TempDir,
        cert: TestCert,
        domain: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Burrow {
        let mut cmd = Command::new(burrow_bin());
        cmd.args(args)
            // The default --state-dir is relative: keep it in the test's dir.
            .current_dir(dir.path())
            .env_clear()
            .envs(passthrough_env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn burrow binary");
        let (stdout, stderr) = capture_output(&mut child, Some("burrow"));

        let ready = stdout
            .wait_for(READY_TIMEOUT, |t| t.lines().find_map(parse_ready_line))
            .await;
        let addrs = match ready {
            Ok(a) => a,
            Err(seen) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "burrow did not print a valid `burrow ready:` line: stdout={seen:?} stderr={:?}",
                    stderr.text()
                );
            }
        };
        assert_eq!(addrs.domain, domain, "ready line domain");
        let stats = addrs.stats_unix.is_none().then_some(addrs.stats);
        for a in [addrs.ssh, addrs.http, addrs.https]
            .into_iter()
            .chain(stats)
        {
            assert!(a.ip().is_loopback(), "listener not on loopback: {a}");
            assert_ne!(a.port(), 0, "ready line must show the bound port");
        }
        let admin_token_file = admin_token_file(dir.path(), args, env);
        Burrow {
            child: Some(child),
            dir,
            cert,
            addrs,
            stdout,
            stderr,
            exit: None,
            admin_token_file,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("burrow child").id()
    }

    pub fn ssh_port(&self) -> u16 {
        self.addrs.ssh.port()
    }

    pub fn https_port(&self) -> u16 {
        self.addrs.https.port()
    }

    pub fn http_port(&self) -> u16 {
        self.addrs.http.port()
    }

    /// `https://HOST:HTTPSPORT/PATH`
    pub fn https_url(&self, host: &str, path_and_query: &str) -> String {
        format!("https://{host}:{}{path_and_query}", self.https_port())
    }

    /// `http://HOST:HTTPPORT/PATH`
    pub fn http_url(&self, host: &str, path_and_query: &str) -> String {
        format!("http://{host}:{}{path_and_query}", self.http_port())
    }

    /// rustls client config trusting the test cert.
    pub fn tls_config(&self, alpn: Alpn) -> rustls::ClientConfig {
        client_tls_config(&self.cert.cert_der, alpn)
    }

    fn client_with(&self, alpn: Alpn) -> reqwest::Client {
        let mut b = base_client_builder().use_preconfigured_tls(self.tls_config(alpn));
        match alpn {
            Alpn::Any => {}
            Alpn::Http1 => b = b.http1_only(),
            Alpn::Http2 => b = b.http2_prior_knowledge(),
        }
        b.build().expect("build reqwest client")
    }

    /// HTTPS client offering h2 and http/1.1 via ALPN. Every host name
    /// resolves to 127.0.0.1, so use [`Burrow::https_url`] for URLs.
    pub fn https_client(&self) -> reqwest::Client {
        self.client_with(Alpn::Any)
    }

    /// Same as [`Burrow::https_client`]; kept as the per-host entry point.
    pub fn client_for(&self, _host: &str) -> reqwest::Client {
        self.https_client()
    }

    /// HTTPS client that only speaks HTTP/1.1.
    pub fn https_client_h1(&self) -> reqwest::Client {
        self.client_with(Alpn::Http1)
    }

    /// HTTPS client that only speaks HTTP/2 (ALPN h2, prior knowledge).
    pub fn https_client_h2(&self) -> reqwest::Client {
        self.client_with(Alpn::Http2)
    }

    /// `GET https://HOST:PORT{path}` with [`Burrow::https_client`].
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.https_client()
            .get(self.https_url(host, path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET https://{host}{path}: {e:?}"))
    }

    /// Like [`Burrow::https_client`] but without a total request timeout
    /// (for long downloads; bound those with `tokio::time::timeout`).
    pub fn https_client_no_timeout(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(LoopbackResolver))
            .connect_timeout(Duration::from_secs(10))
            .use_preconfigured_tls(self.tls_config(Alpn::Any))
            .build()
            .expect("build reqwest client")
    }

    /// Plain-HTTP client (for the :80 redirector), redirects not followed.
    pub fn http_client(&self) -> reqwest::Client {
        base_client_builder().build().expect("build reqwest client")
    }

    /// `GET /` on the stats listener, parsed.
    pub async fn stats(&self) -> serde_json::Value {
        self.stats_path("/").await
    }

    /// `GET /?subdomains=true` on the stats listener, parsed (the names
    /// reveal users: it needs the admin token).
    pub async fn stats_with_subdomains(&self) -> serde_json::Value {
        let url = format!("http://{}/?subdomains=true", self.addrs.stats);
        let resp = self
            .admin(reqwest::Method::GET, "/?subdomains=true")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "stats status for {url}");
        let text = resp.text().await.expect("stats body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON {text:?}: {e}"))
    }

    /// The admin token burrow wrote (or was given), read from its file.
    pub fn admin_token(&self) -> String {
        let text = std::fs::read_to_string(&self.admin_token_file).unwrap_or_else(|e| {
            panic!(
                "read the admin token {}: {e}",
                self.admin_token_file.display()
            )
        });
        text.lines().next().unwrap_or_default().trim().to_string()
    }

    /// A request for `path` on the stats listener (over TCP) carrying the
    /// admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http_client()
            .request(method, format!("http://{}{path}", self.addrs.stats))
            .bearer_auth(self.admin_token())
    }

    /// `GET /tunnels` on the admin API, parsed.
    pub async fn admin_tunnels(&self) -> serde_json::Value {
        let resp = self
            .admin(reqwest::Method::GET, "/tunnels")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /tunnels: {e}"));
        assert_eq!(resp.status(), 200, "GET /tunnels");
        resp.json().await.expect("the tunnel list is JSON")
    }

    /// `GET /metrics` on the stats listener, as text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addrs.stats);
        let resp = self
            .http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "metrics status for {url}");
        resp.text().await.expect("metrics body")
    }

    /// `burrow_refusals_total{limit="LIMIT"}` now (0 before the first).
    pub async fn refusals(&self, limit: &str) -> u64 {
        let needle = format!("burrow_refusals_total{{limit=\"{limit}\"}} ");
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn stats_path(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.addrs.stats);
        let resp = self
            .http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "stats status for {url}");
        let text = resp.text().await.expect("stats body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON {text:?}: {e}"))
    }

    /// Polls the stats endpoint until `field` equals `want`, for at most
    /// `timeout`. Returns the last stats seen on success, panics otherwise.
    pub async fn wait_stat(&self, field: &str, want: u64, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats().await;
            if s[field].as_u64() == Some(want) {
                return s;
            }
            if Instant::now() >= deadline {
                panic!("stats field {field} did not become {want} within {timeout:?}: {s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a WebSocket over TLS to `wss://HOST:HTTPSPORT/PATH` on the
    /// HTTPS listener.
    pub async fn ws_connect(
        &self,
        host: &str,
        path: &str,
    ) -> (
        WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ) {
        let url = format!("wss://{host}:{}{path}", self.https_port());
        let tcp = tokio::net::TcpStream::connect(self.addrs.https)
            .await
            .expect("connect to https listener");
        let connector =
            tokio_tungstenite::Connector::Rustls(Arc::new(self.tls_config(Alpn::Http1)));
        let handshake = tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            tcp,
            None,
            Some(connector),
        );
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Err(_) => panic!("websocket handshake to {url} timed out"),
            Ok(Err(e)) => panic!("websocket handshake to {url}: {e}"),
            Ok(Ok(pair)) => pair,
        }
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Waits (bounded) for the burrow process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit {
            return Some(st);
        }
        let child = self.child.as_mut()?;
        let st = wait_child(child, timeout).await;
        self.exit = st;
        if st.is_some() {
            self.stdout.wait_closed(OUTPUT_DRAIN).await;
            self.stderr.wait_closed(OUTPUT_DRAIN).await;
        }
        st
    }

    /// VmRSS of the burrow process in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }
}

impl Drop for Burrow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Returns `resp` if its status is `want`; otherwise panics showing the
/// status, the headers and the body (so a wrong page is easy to diagnose).
pub async fn expect_status(resp: reqwest::Response, want: u16, ctx: &str) -> reqwest::Response {
    if resp.status().as_u16() == want {
        return resp;
    }
    let status = resp.status();
    let url = resp.url().to_string();
    let headers = format!("{:?}", resp.headers());
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    panic!("{url}: expected status {want}, got {status} ({ctx})\nheaders: {headers}\nbody: {body}");
}

/// Polls `try_wait` until the child exits or `timeout` passes.
pub async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// VmRSS of `pid` in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Output of a burrow run that was expected to fail on its own.
pub struct FailedRun {
    pub status: ExitStatus,
    pub stderr: String,
    pub stdout: String,
}

/// Runs burrow with exactly `args` (no defaults added) and waits for it to
/// exit by itself within 10 s. Panics if it is still running then.
pub async fn run_burrow_expect_exit(args: &[&str]) -> FailedRun {
    // Its own empty working directory, so the default --state-dir can never
    // be shared with another test run.
    let cwd = TempDir::new("burrow-cli-cwd");
    let mut child = Command::new(burrow_bin())
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .envs(passthrough_env())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn burrow");
    let (out, err) = capture_output(&mut child, None);
    let st = wait_child(&mut child, Duration::from_secs(10)).await;
    let Some(status) = st else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "burrow {args:?} did not exit within 10 s; stdout={:?} stderr={:?}",
            out.text(),
            err.text()
        );
    };
    err.wait_closed(OUTPUT_DRAIN).await;
    out.wait_closed(OUTPUT_DRAIN).await;
    FailedRun {
        status,
        stderr: err.text(),
        stdout: out.text(),
    }
}

// ---------------------------------------------------------------------------
// SSH client
// ---------------------------------------------------------------------------

/// A tunnel URL as printed by burrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelUrl {
    /// `adjective-noun-0123abcd`
    pub name: String,
    /// The `:PORT` part, if printed.
    pub port: Option<u16>,
    /// The full URL text as printed.
    pub url: String,
}

impl TunnelUrl {
    /// `NAME.localhost`
    pub fn host(&self) -> String {
        format!("{}.{DOMAIN}", self.name)
    }
}

/// Checks `[a-z]+-[a-z]+-[0-9a-f]{8}`.
pub fn is_tunnel_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && !parts[1].is_empty()
        && parts[1].bytes().all(|b| b.is_ascii_lowercase())
        && parts[2].len() == 8
        && parts[2]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Finds every `https://([a-z]+-[a-z]+-[0-9a-f]{8})\.localhost(:\d+)?` in
/// `text`, de-duplicated, in order of first appearance.
pub fn find_tunnel_urls(text: &str) -> Vec<TunnelUrl> {
    let mut out: Vec<TunnelUrl> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("https://") {
        let after = &rest[i + "https://".len()..];
        rest = after;
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            .count();
        let name = &after[..name_len];
        if !is_tunnel_name(name) {
            continue;
        }
        let Some(tail) = after[name_len..].strip_prefix(&format!(".{DOMAIN}")) else {
            continue;
        };
        // The domain must end here (not e.g. `.localhost.evil`).
        if tail
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            continue;
        }
        let mut port = None;
        let mut url_len = "https://".len() + name_len + 1 + DOMAIN.len();
        if let Some(p) = tail.strip_prefix(':') {
            let digits: String = p
                .bytes()
                .take_while(u8::is_ascii_digit)
                .map(char::from)
                .collect();
            if !digits.is_empty() {
                port = digits.parse().ok();
                url_len += 1 + digits.len();
            }
        }
        let start = text.len() - after.len() - "https://".len();
        let url = text[start..start + url_len].to_string();
        let t = TunnelUrl {
            name: name.to_string(),
            port,
            url,
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// A running `ssh` client connected to a [`Burrow`], killed on drop.
pub struct Ssh {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: OutputBuf,
    pub stderr: OutputBuf,
    exit: Option<ExitStatus>,
    /// What the client reads while it runs (its key, its HOME), removed
    /// only once no client uses it.
    _key_dir: Arc<TempDir>,
}

/// Generates a throwaway ed25519 key (once per call) in a fresh temp dir.
pub fn ssh_keygen() -> (Arc<TempDir>, PathBuf) {
    ssh_keygen_with_comment("burrow-test")
}

fn ssh_keygen_with_comment(comment: &str) -> (Arc<TempDir>, PathBuf) {
    let dir = TempDir::new("burrow-test-sshkey");
    let key = dir.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-C", comment, "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen is not installed: apt-get install -y openssh-client (or run .ci/run)");
    assert!(st.success(), "ssh-keygen failed");
    (Arc::new(dir), key)
}

/// Which stdin the ssh client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SshStdin {
    /// A pipe kept open until [`Ssh`] is dropped (or [`Ssh::close_stdin`]).
    Pipe,
    /// /dev/null: immediate EOF.
    Null,
}

impl Ssh {
    /// `ssh -F /dev/null -i KEY ... -p SSHPORT <args> test@127.0.0.1`
    /// (`args` may end with a remote command; it goes after the
    /// destination if `remote_cmd` is given via [`Ssh::spawn_cmd`]).
    pub fn spawn(burrow: &Burrow, args: &[&str]) -> Ssh {
        Self::spawn_full(burrow, args, &[], SshStdin::Pipe)
    }

    /// Like [`Ssh::spawn`] with a remote command after the destination.
    pub fn spawn_cmd(burrow: &Burrow, args: &[&str], remote_cmd: &[&str]) -> Ssh {
        Self::spawn_full(burrow, args, remote_cmd, SshStdin::Pipe)
    }

    pub fn spawn_full(burrow: &Burrow, args: &[&str], remote_cmd: &[&str], stdin: SshStdin) -> Ssh {
        SshSpec {
            port: burrow.ssh_port(),
            args,
            remote_cmd,
            stdin,
            ..SshSpec::default()
        }
        .spawn()
    }

    /// A client with no SSH key and without BatchMode (which would disable
    /// the keyboard-interactive login keyless clients use): a random name,
    /// shown on stderr during login.
    pub fn spawn_keyless(burrow: &Burrow, args: &[&str]) -> Ssh {
        SshSpec {
            port: burrow.ssh_port(),
            args,
            keyed: false,
            ..SshSpec::default()
        }
        .spawn()
    }

    /// Waits for the first tunnel URL on ssh's stdout (session banner).
    pub async fn url(&self) -> TunnelUrl {
        self.urls(1).await.remove(0)
    }

    /// Waits until `n` distinct tunnel URLs have appeared on stdout.
    pub async fn urls(&self, n: usize) -> Vec<TunnelUrl> {
        match self
            .stdout
            .wait_for(URL_TIMEOUT, |t| {
                let u = find_tunnel_urls(t);
                (u.len() >= n).then_some(u)
            })
            .await
        {
            Ok(u) => u,
            Err(seen) => panic!(
                "ssh stdout did not show {n} tunnel URL(s): stdout={seen:?} stderr={:?}",
                self.stderr.text()
            ),
        }
    }

    /// Waits for the first tunnel URL on ssh's stderr (auth banner, -N mode).
    pub async fn url_from_stderr(&self) -> TunnelUrl {
        match self
            .stderr
            .wait_for(URL_TIMEOUT, |t| find_tunnel_urls(t).into_iter().next())
            .await
        {
            Ok(u) => u,
            Err(seen) => panic!(
                "ssh stderr did not show a tunnel URL: stderr={seen:?} stdout={:?}",
                self.stdout.text()
            ),
        }
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        let s = self.stdin.as_mut().expect("ssh stdin is not a pipe");
        s.write_all(data).expect("write to ssh stdin");
        s.flush().expect("flush ssh stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the ssh client.
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// SIGKILLs the ssh client and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Waits (bounded) for ssh to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout).await;
            if self.exit.is_some() {
                self.stdout.wait_closed(OUTPUT_DRAIN).await;
                self.stderr.wait_closed(OUTPUT_DRAIN).await;
            }
        }
        self.exit
    }

    /// stdout + stderr text so far.
    pub fn all_output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Local origin app
// ---------------------------------------------------------------------------

type OriginBody = BoxBody<Bytes, Infallible>;

/// The text `GET /hello` answers.
pub const HELLO: &str = "hello from origin";

/// The deterministic pattern `/bytes` serves: byte `i` is `i % 251`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A local HTTP/1.1 app on 127.0.0.1:PORT. Routes:
/// `GET /hello`, `POST /echo`, `GET /headers`, `GET /bytes?n=N`,
/// `GET /ws` (WebSocket echo), `GET /whoami` (the origin's label).
/// Stopped on drop.
pub struct Origin {
    pub port: u16,
    pub label: String,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Starts an origin on the current tokio runtime.
    pub async fn start(label: &str) -> Origin {
        Self::start_on(0, label).await
    }

    /// Starts an origin on `port` (0 = any free port). Dropping it closes
    /// its listener and every connection it has open, like a stopped app.
    pub async fn start_on(port: u16, label: &str) -> Origin {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind origin");
        let port = listener.local_addr().unwrap().port();
        let label_s = label.to_string();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                // As nginx does by default (tcp_nodelay on).
                let _ = stream.set_nodelay(true);
                let label = label_s.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let label = label.clone();
                        async move { Ok::<_, Infallible>(origin_handle(req, &label).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            port,
            label: label.to_string(),
            task,
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<OriginBody> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn origin_handle(req: Request<Incoming>, label: &str) -> Response<OriginBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    record_origin_hit(label, &path);
    if let Some(resp) = limits_routes(req.method().as_str(), &path, &query).await {
        return resp;
    }
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/hello") => full(StatusCode::OK, HELLO),
        ("GET", "/whoami") => full(StatusCode::OK, label.to_string()),
        ("POST", "/echo") => match req.into_body().collect().await {
            Ok(c) => full(StatusCode::OK, c.to_bytes()),
            Err(e) => full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
        },
        ("GET", "/headers") => {
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            for (name, value) in req.headers() {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                map.entry(name.as_str().to_ascii_lowercase())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
            let mut resp = full(StatusCode::OK, serde_json::to_vec(&map).unwrap());
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        ("GET", "/bytes") => {
            let n: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("n="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            bytes_response(n)
        }
        ("GET", "/ws") => ws_upgrade(req),
        // Reads the request body at most `kbps` KiB per second (a slow app
        // taking an upload), then answers with the byte count.
        ("POST", "/slowsink") => {
            let kbps = query_u64(&query, "kbps").unwrap_or(256).max(1);
            let started = std::time::Instant::now();
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return full(StatusCode::BAD_REQUEST, "body error");
                };
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                total += len;
                SLOWSINK_BYTES.fetch_add(len, Ordering::SeqCst);
                let due = Duration::from_secs_f64(total as f64 / (kbps * 1024) as f64);
                tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            }
            full(StatusCode::OK, total.to_string())
        }
        // Headers first, the body a moment later, as two writes: as nginx
        // does with sendfile, and what exposes Nagle/delayed-ACK stalls.
        ("GET", "/split") => {
            let body = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(HELLO.as_bytes())))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_LENGTH, HELLO.len())
                .body(BodyExt::boxed(StreamBody::new(body)))
                .unwrap()
        }
        // Answers and asks for the connection to be closed.
        ("GET", "/close") => {
            let mut resp = full(StatusCode::OK, HELLO);
            resp.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            resp
        }
        _ => full(StatusCode::NOT_FOUND, "origin: no such route"),
    }
}

/// Streams `n` bytes of the pattern in 64 KiB chunks, generated lazily.
fn bytes_response(n: u64) -> Response<OriginBody> {
    const CHUNK: usize = 64 * 1024;
    // pattern[k..k + CHUNK] is the pattern starting at any offset ≡ k (mod 251)
    let pattern: Arc<Vec<u8>> = Arc::new((0..(CHUNK as u64 + 251)).map(pattern_byte).collect());
    let stream = futures_util::stream::unfold(0u64, move |off| {
        let pattern = pattern.clone();
        async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(CHUNK as u64) as usize;
            let start = (off % 251) as usize;
            let chunk = Bytes::copy_from_slice(&pattern[start..start + len]);
            Some((Ok::<_, Infallible>(Frame::data(chunk)), off + len as u64))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_LENGTH, n.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn ws_upgrade(mut req: Request<Incoming>) -> Response<OriginBody> {
    let is_upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|v| v.as_bytes().to_vec());
    let (true, Some(key)) = (is_upgrade, key) else {
        return full(
            StatusCode::BAD_REQUEST,
            "origin: expected a websocket upgrade",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A loopback port with nothing listening on it (bound, then released).
/// Sends signal `sig` (`STOP`, `TERM`, …) to `pid` with the `kill` command.
pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

pub fn dead_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}

/// Random-ish bytes (xorshift; no extra dependency needed).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A seed that differs between runs.
pub fn time_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

// ---------------------------------------------------------------------------
// Additions for the abuse-limit tests (tests/limits.rs)
// ---------------------------------------------------------------------------

/// Every request any [`Origin`] in this test process received, as
/// `(label, path)`, in arrival order. Lets tests check that a request was
/// refused *before* it reached the app.
static ORIGIN_HITS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record_origin_hit(label: &str, path: &str) {
    ORIGIN_HITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((label.to_string(), path.to_string()));
}

impl Origin {
    /// How many requests for `path` reached this origin so far (counted by
    /// label: give each origin a label unique in the test binary).
    pub fn hits(&self, path: &str) -> usize {
        ORIGIN_HITS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(l, p)| *l == self.label && p == path)
            .count()
    }
}

/// Bytes every origin's `/slowsink` has taken so far in this test process.
static SLOWSINK_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn slowsink_bytes() -> u64 {
    SLOWSINK_BYTES.load(Ordering::SeqCst)
}

fn query_u64(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Extra origin routes for the limits tests:
///
/// * `GET /drip?n=N&ms=M`: `N` pattern bytes (Content-Length N), one byte
///   every `M` ms (the first at once).
/// * `GET /delay?ms=M`: answers [`HELLO`] after `M` ms.
/// * `GET /hang`: never answers.
/// * `GET /stall?first=K`: headers with Content-Length K+1, then K bytes,
///   then nothing ever again.
/// * `GET /chunked?n=N`: `N` pattern bytes without Content-Length
///   (chunked), in 4 KiB pieces.
/// * `GET /own-headers`: sets its own `Referrer-Policy: no-referrer`.
async fn limits_routes(method: &str, path: &str, query: &str) -> Option<Response<OriginBody>> {
    match (method, path) {
        ("GET", "/drip") => {
            let n = query_u64(query, "n").unwrap_or(10);
            let ms = query_u64(query, "ms").unwrap_or(100);
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let byte = Bytes::copy_from_slice(&[pattern_byte(i)]);
                Some((Ok::<_, Infallible>(Frame::data(byte)), i + 1))
            });
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(hyper::header::CONTENT_LENGTH, n.to_string())
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap(),
            )
        }
        ("GET", "/delay") => {
            let ms = query_u64(query, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some(full(StatusCode::OK, HELLO))
        }
        ("GET", "/hang") => std::future::pending().await,
        ("GET", "/stall") => {
            let first = query_u64(query, "first").unwrap_or(100);
            let head = futures_util::stream::once(async move {
                let data: Vec<u8> = (0..first).map(pattern_byte).collect();
                Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
            });
            let stream = head.chain(futures_util::stream::pending());
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(hyper::header::CONTENT_LENGTH, (first + 1).to_string())
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap(),
            )
        }
        ("GET", "/chunked") => {
            const PIECE: u64 = 4096;
            let n = query_u64(query, "n").unwrap_or(0);
            let stream = futures_util::stream::unfold(0u64, move |off| async move {
                if off >= n {
                    return None;
                }
                let len = (n - off).min(PIECE);
                let data: Vec<u8> = (off..off + len).map(pattern_byte).collect();
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(data))),
                    off + len,
                ))
            });
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap(),
            )
        }
        ("GET", "/own-headers") => {
            let mut resp = full(StatusCode::OK, "own headers");
            resp.headers_mut().insert(
                hyper::header::REFERRER_POLICY,
                hyper::header::HeaderValue::from_static("no-referrer"),
            );
            Some(resp)
        }
        _ => None,
    }
}

/// A TLS stream to burrow's HTTPS listener, for hand-written HTTP.
pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl Burrow {
    /// Opens a raw TLS connection to the HTTPS listener with SNI `host`
    /// (bounded: panics after 10 s).
    pub async fn tls_connect(&self, host: &str, alpn: Alpn) -> RawTls {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(self.addrs.https)
                .await
                .expect("connect to https listener");
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config(alpn)));
            let name = ServerName::try_from(host.to_string()).expect("server name");
            connector.connect(name, tcp).await.expect("TLS handshake")
        };
        tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .expect("TLS connect timed out")
    }

    /// Like [`Burrow::ws_connect`] with extra request headers, returning the
    /// handshake error (e.g. `Error::Http` with a 429) instead of panicking.
    pub async fn ws_try_connect(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<
        (
            WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("wss://{host}:{}{path}", self.https_port());
        let mut request = url.as_str().into_client_request()?;
        for (k, v) in headers {
            request.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                hyper::header::HeaderValue::from_str(v).expect("header value"),
            );
        }
        let tcp = tokio::net::TcpStream::connect(self.addrs.https)
            .await
            .expect("connect to https listener");
        let connector =
            tokio_tungstenite::Connector::Rustls(Arc::new(self.tls_config(Alpn::Http1)));
        let handshake =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector));
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Err(_) => panic!("websocket handshake to {url} timed out"),
            Ok(result) => result,
        }
    }
}

/// Reads `r` until EOF or a read error (both mean the peer closed), for at
/// most `timeout`. Returns the bytes read and when the stream ended (`None`:
/// still open when the timeout passed).
pub async fn read_until_closed<R>(r: &mut R, timeout: Duration) -> (Vec<u8>, Option<Instant>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

impl Ssh {
    /// Like [`Ssh::spawn`] (same options, throwaway key, stdin a pipe) but
    /// to `127.0.0.1:port`, e.g. a relay the test puts in front of burrow.
    pub fn spawn_port(port: u16, args: &[&str]) -> Ssh {
        SshSpec {
            port,
            args,
            ..SshSpec::default()
        }
        .spawn()
    }
}

/// How to start one `ssh` client.
pub struct SshSpec<'a> {
    pub port: u16,
    pub args: &'a [&'a str],
    pub remote_cmd: &'a [&'a str],
    pub stdin: SshStdin,
    /// A fresh throwaway key and BatchMode (the default), or neither.
    pub keyed: bool,
    pub user: &'a str,
    /// The address ssh connects to (a node of a cluster may listen on
    /// 127.0.0.2).
    pub host: &'a str,
}

impl Default for SshSpec<'_> {
    fn default() -> Self {
        SshSpec {
            port: 0,
            args: &[],
            remote_cmd: &[],
            stdin: SshStdin::Pipe,
            keyed: true,
            user: "test",
            host: "127.0.0.1",
        }
    }
}

impl SshSpec<'_> {
    pub fn spawn(&self) -> Ssh {
        let (key_dir, key) = ssh_keygen();
        self.spawn_using(key_dir, &key)
    }

    /// Like [`SshSpec::spawn`] but authenticating with `key` (so several
    /// clients can share one key); `keyed` must be true.
    pub fn spawn_with_key(&self, key: &SshKeyPair) -> Ssh {
        assert!(self.keyed, "spawn_with_key needs a keyed SshSpec");
        self.spawn_using(Arc::clone(&key.dir), &key.path)
    }

    fn spawn_using(&self, key_dir: Arc<TempDir>, key: &Path) -> Ssh {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null"])
            .args(["-o", "IdentitiesOnly=yes"]);
        if self.keyed {
            cmd.arg("-i").arg(key).args(["-o", "BatchMode=yes"]);
        } else {
            cmd.args(["-o", "PubkeyAuthentication=no"])
                .args(["-o", "IdentityAgent=none"])
                .args(["-o", "KbdInteractiveAuthentication=yes"]);
        }
        cmd.args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=10"])
            // Default LogLevel (INFO) on purpose: QUIET/ERROR would hide
            // the login-time URL line that keyless clients get on stderr.
            .arg("-p")
            .arg(self.port.to_string())
            .args(self.args)
            .arg(format!("{}@{}", self.user, self.host))
            .args(self.remote_cmd)
            .stdin(match self.stdin {
                SshStdin::Pipe => Stdio::piped(),
                SshStdin::Null => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn ssh");
        Ssh::adopt(child, "ssh", key_dir)
    }
}

impl Ssh {
    /// Wraps an SSH client process started elsewhere (any client: plink,
    /// dbclient, a script), spawned with stdout and stderr piped and stdin
    /// piped or null, so tests drive it like `ssh`: [`Ssh::url`],
    /// [`Ssh::close_stdin`], [`Ssh::kill`]. Its output is echoed as
    /// `[TAG stdout]`/`[TAG stderr]`; `keep` (its key files, its HOME)
    /// lives as long as the client.
    pub fn adopt(mut child: Child, tag: &str, keep: Arc<TempDir>) -> Ssh {
        let (stdout, stderr) = capture_output(&mut child, Some(tag));
        let stdin = child.stdin.take();
        Ssh {
            child,
            stdin,
            stdout,
            stderr,
            exit: None,
            _key_dir: keep,
        }
    }
}

/// The next data message of a WebSocket (pings and pongs skipped), within
/// 10 s.
pub async fn ws_next<S>(ws: &mut S) -> tokio_tungstenite::tungstenite::Message
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("websocket echo timed out")
            .expect("websocket closed early")
            .expect("websocket error");
        if !matches!(
            m,
            tokio_tungstenite::tungstenite::Message::Ping(_)
                | tokio_tungstenite::tungstenite::Message::Pong(_)
        ) {
            return m;
        }
    }
}

/// The flags every CLI test passes: all listeners on loopback port 0 and a
/// host key in `dir` (which must not exist afterwards if burrow refused).
pub fn cli_base_args(dir: &std::path::Path) -> Vec<String> {
    [
        "--domain",
        "localhost",
        "--ssh-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--https-addr",
        "127.0.0.1:0",
        "--stats-addr",
        "127.0.0.1:0",
        "--host-key",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.join("host_key").display().to_string()])
    .collect()
}

// ---------------------------------------------------------------------------
// Additions for the raw TCP / passthrough / balance / admin tests
// (tests/tunnels.rs)
// ---------------------------------------------------------------------------

/// A throwaway ed25519 key pair that several ssh clients can share (see
/// [`SshSpec::spawn_with_key`]); its directory lives as long as any client
/// using it.
pub struct SshKeyPair {
    dir: Arc<TempDir>,
    /// The private key file.
    pub path: PathBuf,
    /// The `.pub` line: `ssh-ed25519 AAAA… comment`.
    pub public: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

impl SshKeyPair {
    pub fn generate() -> SshKeyPair {
        Self::with_comment("burrow-test")
    }

    /// A fresh key whose `.pub` line ends in `comment`.
    pub fn with_comment(comment: &str) -> SshKeyPair {
        let (dir, path) = ssh_keygen_with_comment(comment);
        let pub_path = path.with_extension("pub");
        let public = std::fs::read_to_string(&pub_path)
            .expect("read .pub")
            .trim()
            .to_string();
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&pub_path)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh-keygen -lf");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let fingerprint = listing
            .split_whitespace()
            .nth(1)
            .filter(|f| f.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("ssh-keygen -lf printed {listing:?}"))
            .to_string();
        SshKeyPair {
            dir,
            path,
            public,
            fingerprint,
        }
    }
}

/// An inclusive range of loopback ports for `--tcp-ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `FIRST-LAST`, as `--tcp-ports` takes it.
    pub fn arg(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }
}

/// True if nothing holds `127.0.0.1:port` right now (bound, then released).
pub fn port_is_free(port: u16) -> bool {
    StdTcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Where the next [`free_port_range`] starts looking (0: not chosen yet).
static NEXT_PORT_RANGE: Mutex<u16> = Mutex::new(0);

/// `len` consecutive loopback ports that are all free right now, for
/// `--tcp-ports`. Ranges start at a random place below the kernel's
/// ephemeral ports (so outgoing connections never sit on them), and ranges
/// handed out in one test process never overlap.
pub fn free_port_range(len: u16) -> PortRange {
    assert!((1..=1000).contains(&len), "port range length {len}");
    const LOW: u16 = 20000;
    let (eph_lo, eph_hi) = ephemeral_ports();
    // Below the ephemeral ports if there is room, else above them.
    let (lo, hi) = if eph_lo >= LOW + 2000 {
        (LOW, eph_lo - 1)
    } else {
        (eph_hi.saturating_add(1).max(LOW), u16::MAX)
    };
    assert!(
        u32::from(hi - lo) > u32::from(len) * 4,
        "no room for a test port range between {lo} and {hi}"
    );
    let mut next = NEXT_PORT_RANGE.lock().unwrap_or_else(|e| e.into_inner());
    if *next == 0 {
        let span = u64::from(hi - lo - len);
        let seed = time_seed() ^ (u64::from(std::process::id()) << 20);
        *next = lo + (seed % span) as u16;
    }
    for _ in 0..500 {
        if u32::from(*next) + u32::from(len) > u32::from(hi) {
            *next = lo;
        }
        let range = PortRange {
            first: *next,
            last: *next + len - 1,
        };
        // One spare port between ranges.
        *next = range.last + 2;
        if range.ports().all(port_is_free) {
            return range;
        }
    }
    panic!("no free range of {len} loopback ports between {lo} and {hi}");
}

impl Burrow {
    /// Like [`Burrow::https_client`] but connecting from the local address
    /// `local` (e.g. `127.0.0.2`: a second visitor IP on loopback).
    pub fn https_client_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        base_client_builder()
            .local_address(local)
            .use_preconfigured_tls(self.tls_config(Alpn::Any))
            .build()
            .expect("build reqwest client")
    }
}

/// A rustls client config that trusts exactly `cert` (for `localhost` and
/// its subdomains), as [`Burrow::tls_config`] trusts burrow's: e.g. a test
/// origin's own certificate.
pub fn tls_config_pinned(cert: &CertificateDer<'static>, alpn: Alpn) -> rustls::ClientConfig {
    client_tls_config(cert, alpn)
}

/// A rustls client config that accepts whatever certificate the server
/// shows: for checking that the *server* ends a handshake.
pub fn tls_config_accept_any() -> rustls::ClientConfig {
    let provider = crypto_provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
            cert: None,
            provider,
        }))
        .with_no_client_auth()
}

/// A rustls server config presenting `cert_der`/`key_der` (PKCS#8), for
/// test origins that terminate TLS themselves.
pub fn tls_server_config(
    cert_der: CertificateDer<'static>,
    key_pkcs8_der: Vec<u8>,
) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_pkcs8_der.into()),
        )
        .expect("test origin certificate and key")
}

/// `ssh ARGS -W TARGET DESTINATION` sending one HTTP/1.1 `GET /hello` (an
/// [`Origin`] plays the device's service behind a private alias); its
/// output once it exits, within `within`.
pub async fn ssh_w_get_hello(
    args: &[String],
    target: &str,
    destination: &str,
    within: Duration,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("ssh")
        .args(args)
        .args(["-W", target, destination])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run ssh -W");
    let mut stdin = child.stdin.take().expect("ssh's stdin");
    stdin
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write the request to ssh -W");
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ssh -W {target} hung"))
        .expect("wait for ssh -W");
    drop(stdin);
    out
}

/// The options of a keyed, non-interactive throwaway `ssh` to a test
/// server on loopback `port`: no config file, no known hosts, only `key`.
pub fn keyed_ssh_opts(port: u16, key: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-p".into(), port.to_string(), "-i".into()])
    .chain([key.display().to_string()])
    .collect()
}
