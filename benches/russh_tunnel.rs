//! A tunnel client built on russh's client (the SSH library burrow itself
//! uses), for benchmarks: what a Rust program that opens a tunnel does.
//!
//! Connects to `127.0.0.1:PORT`, logs in (`none` first, as OpenSSH does,
//! then the key if one is given), asks for `tcpip-forward` on
//! `REMOTE_HOST:REMOTE_PORT` (burrow: `""`/`localhost` and 80, or a name;
//! OpenSSH's `sshd`: a plain remote forward on a free port), and relays
//! every `forwarded-tcpip` channel to `127.0.0.1:ORIGIN_PORT` in both
//! directions (`tokio::io::copy_bidirectional_with_sizes` over the channel's
//! stream, 256 KiB buffers each way). With `--session` it also opens a
//! session channel, asks for a shell and copies what the server writes
//! there (burrow's banner with the URL) to stdout. Runs until killed.
//!
//! ```sh
//! cargo build --profile fastrel --bench russh_tunnel
//! # the binary: target/fastrel/deps/russh_tunnel-<hash> (cargo prints it with
//! # --message-format json; benches/compare.sh finds it itself)
//! russh_tunnel --port 2222 --user random --key ~/.ssh/id_ed25519 \
//!     --remote-port 80 --origin-port 3000 --session
//! ```
//!
//! Used by `benches/compare.sh` (targets `burrow-https-russh` and
//! `sshd-russh`). Without arguments (as `cargo bench` runs every bench) it
//! prints this usage and exits 0. Host keys are not checked: loopback
//! benchmarks only.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Msg};
use russh::{Channel, ChannelMsg};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const USAGE: &str = "usage: russh_tunnel --port SSH_PORT --origin-port PORT \
[--user USER] [--key OPENSSH_PRIVATE_KEY] [--remote-host HOST] [--remote-port PORT] [--session]";

/// The relay's buffer in each direction.
const COPY_BUF: usize = 256 * 1024;

struct Args {
    port: u16,
    origin_port: u16,
    user: String,
    key: Option<String>,
    remote_host: String,
    remote_port: u32,
    session: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut it = std::env::args().skip(1);
    let mut port = None;
    let mut origin_port = None;
    let mut user = "random".to_string();
    let mut key = None;
    let mut remote_host = String::new();
    let mut remote_port = 80;
    let mut session = false;
    let mut any = false;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            // `cargo bench` passes `--bench`: no run without real arguments.
            "--bench" => continue,
            "--port" => {
                port = Some(
                    value("--port")?
                        .parse()
                        .map_err(|e| format!("--port: {e}"))?,
                )
            }
            "--origin-port" => {
                origin_port = Some(
                    value("--origin-port")?
                        .parse()
                        .map_err(|e| format!("--origin-port: {e}"))?,
                )
            }
            "--user" => user = value("--user")?,
            "--key" => key = Some(value("--key")?),
            "--remote-host" => remote_host = value("--remote-host")?,
            "--remote-port" => {
                remote_port = value("--remote-port")?
                    .parse()
                    .map_err(|e| format!("--remote-port: {e}"))?
            }
            "--session" => session = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Args {
        port: port.ok_or("--port is required")?,
        origin_port: origin_port.ok_or("--origin-port is required")?,
        user,
        key,
        remote_host,
        remote_port,
        session,
    }))
}

/// Relays forwarded channels to the origin; trusts any host key.
struct Relay {
    origin_port: u16,
}

impl client::Handler for Relay {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let origin_port = self.origin_port;
        tokio::spawn(async move {
            let app = match TcpStream::connect(("127.0.0.1", origin_port)).await {
                Ok(app) => app,
                Err(e) => {
                    eprintln!("russh_tunnel: origin 127.0.0.1:{origin_port}: {e}");
                    let _ = channel.close().await;
                    return;
                }
            };
            let _ = app.set_nodelay(true);
            let mut app = app;
            let mut stream = channel.into_stream();
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut app, COPY_BUF, COPY_BUF)
                    .await;
        });
        Ok(())
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = Arc::new(client::Config {
        nodelay: true,
        // No keepalives or timeouts of its own: the benchmark ends it.
        keepalive_interval: None,
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let mut handle = client::connect(
        config,
        ("127.0.0.1", args.port),
        Relay {
            origin_port: args.origin_port,
        },
    )
    .await
    .map_err(|e| format!("connect and key exchange: {e}"))?;
    // `none` first (burrow's `random` is accepted there), then the key.
    let mut authenticated = matches!(
        handle.authenticate_none(&args.user).await,
        Ok(client::AuthResult::Success)
    );
    if !authenticated {
        if let Some(path) = &args.key {
            let key =
                russh::keys::load_secret_key(path, None).map_err(|e| format!("key {path}: {e}"))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| format!("rsa hash: {e}"))?
                .flatten();
            let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            authenticated = handle
                .authenticate_publickey(&args.user, key)
                .await
                .map_err(|e| format!("publickey: {e}"))?
                .success();
        }
    }
    if !authenticated {
        return Err(format!("login as {:?} refused", args.user));
    }
    let granted = handle
        .tcpip_forward(&args.remote_host, args.remote_port)
        .await
        .map_err(|e| {
            format!(
                "tcpip-forward {}:{}: {e}",
                args.remote_host, args.remote_port
            )
        })?;
    eprintln!(
        "russh_tunnel: forwarding {}:{} (granted {granted}) to 127.0.0.1:{}",
        args.remote_host, args.remote_port, args.origin_port
    );
    if args.session {
        let mut channel = handle
            .channel_open_session()
            .await
            .map_err(|e| format!("session channel: {e}"))?;
        channel
            .request_shell(true)
            .await
            .map_err(|e| format!("shell request: {e}"))?;
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = channel.wait().await {
            if let ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } = msg {
                let _ = stdout.write_all(&data).await;
                let _ = stdout.flush().await;
            }
        }
        return Err("the server closed the session channel".into());
    }
    // Until killed, or until the connection ends.
    while !handle.is_closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the connection ended".into())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("russh_tunnel: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("russh_tunnel: {e}");
            ExitCode::FAILURE
        }
    }
}
