//! An in-process tunnel client built on russh's client (the library burrow
//! itself uses), for tests that need what stock `ssh` cannot do: open a
//! session channel and never exec, send the exec late, or misbehave on
//! purpose. Forwarded channels are relayed to a local TCP port, as `ssh -R`
//! does; everything the server writes to the session channel is collected.
//!
//! Every wait is bounded by the caller; dropping the client ends the
//! connection.
//!
//! [`RusshClient::misbehaving`] connects one that does what no stock client
//! does with forwarded channels ([`OnForward`]) and can stop reading its
//! socket on demand ([`Reads`]); tests/hostile.rs uses it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::{self, Msg};
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the client does with the server's `forwarded-tcpip` opens.
#[derive(Clone, Copy, Debug)]
pub enum OnForward {
    /// Accepts and relays to the local app, as `ssh -R` does.
    Relay,
    /// Accepts, then never reads the channel: russh's queue for it fills,
    /// and then the client's whole session waits on it.
    NeverRead,
    /// Answers each open this long after it came.
    ConfirmAfter(Duration),
    /// Never answers at all.
    NeverConfirm,
}

/// Where forwarded channels go: a local app's port.
#[derive(Clone)]
pub struct Forwarder {
    /// The local port every forwarded-tcpip channel is connected to.
    target: u16,
    on_forward: OnForward,
    /// What the client keeps so it is not dropped (unread channels,
    /// unanswered opens).
    kept: Arc<Mutex<Vec<Box<dyn std::any::Any + Send>>>>,
    /// Once the connection ended: the server's disconnect message, if
    /// it sent one.
    disconnect: Arc<Mutex<Option<Option<String>>>>,
    /// The client's channel opens the server refused: `CODE TEXT` each.
    open_failures: Arc<Mutex<Vec<String>>>,
}

impl client::Handler for Forwarder {
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
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        match self.on_forward {
            OnForward::Relay => {}
            OnForward::NeverRead => {
                reply.accept().await;
                self.kept.lock().unwrap().push(Box::new(channel));
                return Ok(());
            }
            OnForward::ConfirmAfter(delay) => {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    reply.accept().await;
                    // The channel is dropped here: nothing relays it.
                    drop(channel);
                });
                return Ok(());
            }
            OnForward::NeverConfirm => {
                self.kept.lock().unwrap().push(Box::new((channel, reply)));
                return Ok(());
            }
        }
        reply.accept().await;
        let target = self.target;
        tokio::spawn(async move {
            let Ok(mut app) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut app).await;
        });
        Ok(())
    }

    async fn channel_open_failure(
        &mut self,
        _channel: russh::ChannelId,
        reason: russh::ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let code = reason.code();
        self.open_failures
            .lock()
            .unwrap()
            .push(format!("{code} {description}"));
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        *self.disconnect.lock().unwrap() = Some(match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => Some(info.message.clone()),
            client::DisconnectReason::Error(_) => None,
        });
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// A socket whose reading can be stopped: the client then reads nothing
/// more from the server (and russh's session waits for it) while it can
/// still write.
pub struct Reads {
    inner: TcpStream,
    stopped: Arc<AtomicBool>,
}

impl AsyncRead for Reads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stopped.load(Ordering::SeqCst) {
            // Never woken: reading stopped for good.
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Reads {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One connection of the in-process client.
pub struct RusshClient {
    handle: client::Handle<Forwarder>,
    /// What the server wrote to the session channel, once one is open.
    output: Arc<Mutex<String>>,
    session: Option<russh::ChannelId>,
    /// The session channel's write half, for an exec sent later.
    session_channel: Option<Arc<russh::ChannelWriteHalf<Msg>>>,
    /// Once the connection ended: the server's disconnect message, if
    /// it sent one.
    disconnect: Arc<Mutex<Option<Option<String>>>>,
    /// Set to stop reading the socket ([`RusshClient::stop_reading`]).
    stopped: Arc<AtomicBool>,
    /// The channel opens the server refused: `CODE TEXT` each.
    open_failures: Arc<Mutex<Vec<String>>>,
}

impl RusshClient {
    /// Connects to `addr` and logs in with a fresh ed25519 key (so it may
    /// ask for a name); forwarded channels go to `127.0.0.1:target`.
    pub async fn connect(addr: SocketAddr, target: u16) -> RusshClient {
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .expect("generate an ed25519 key");
        Self::connect_with(addr, target, key).await
    }

    /// [`RusshClient::connect`] with `key`.
    pub async fn connect_with(
        addr: SocketAddr,
        target: u16,
        key: russh::keys::PrivateKey,
    ) -> RusshClient {
        Self::connect_as(addr, target, key, OnForward::Relay).await
    }

    /// [`RusshClient::connect`] from the local address `from`, doing
    /// `on_forward` with forwarded channels; `Err` when the server turns it
    /// away before the login is done.
    pub async fn misbehaving(
        addr: SocketAddr,
        from: std::net::IpAddr,
        target: u16,
        on_forward: OnForward,
    ) -> Result<RusshClient, russh::Error> {
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .expect("generate an ed25519 key");
        Self::misbehaving_as(addr, from, target, on_forward, key).await
    }

    /// [`RusshClient::misbehaving`], logged in with `key`.
    pub async fn misbehaving_as(
        addr: SocketAddr,
        from: std::net::IpAddr,
        target: u16,
        on_forward: OnForward,
        key: russh::keys::PrivateKey,
    ) -> Result<RusshClient, russh::Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let socket = socket.connect(addr).await?;
        Self::log_in(socket, target, key, on_forward).await
    }

    async fn connect_as(
        addr: SocketAddr,
        target: u16,
        key: russh::keys::PrivateKey,
        on_forward: OnForward,
    ) -> RusshClient {
        let socket = TcpStream::connect(addr).await.expect("connect to burrow");
        Self::log_in(socket, target, key, on_forward)
            .await
            .expect("russh client: log in")
    }

    async fn log_in(
        socket: TcpStream,
        target: u16,
        key: russh::keys::PrivateKey,
        on_forward: OnForward,
    ) -> Result<RusshClient, russh::Error> {
        let config = Arc::new(client::Config {
            nodelay: true,
            ..client::Config::default()
        });
        let disconnect = Arc::new(Mutex::new(None));
        let open_failures = Arc::new(Mutex::new(Vec::new()));
        let forwarder = Forwarder {
            target,
            on_forward,
            kept: Arc::default(),
            disconnect: Arc::clone(&disconnect),
            open_failures: Arc::clone(&open_failures),
        };
        let stopped = Arc::new(AtomicBool::new(false));
        socket.set_nodelay(true)?;
        let socket = Reads {
            inner: socket,
            stopped: Arc::clone(&stopped),
        };
        let mut handle = client::connect_stream(config, socket, forwarder).await?;
        let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
        let auth = handle.authenticate_publickey("test", key).await?;
        if !auth.success() {
            return Err(russh::Error::NotAuthenticated);
        }
        Ok(RusshClient {
            handle,
            output: Arc::default(),
            session: None,
            session_channel: None,
            disconnect,
            stopped,
            open_failures,
        })
    }

    /// The channel opens the server refused so far, as `CODE TEXT` (the
    /// open-failure reason code and the text burrow gave).
    pub fn open_failures(&self) -> Vec<String> {
        self.open_failures.lock().unwrap().clone()
    }

    /// The session channel's write half (after [`RusshClient::open_session`]),
    /// for requests this file has no method for.
    pub fn session_channel(&self) -> &russh::ChannelWriteHalf<Msg> {
        self.session_channel.as_ref().expect("open_session first")
    }

    /// The connection's handle, for requests this file has no method for.
    pub fn handle(&self) -> &client::Handle<Forwarder> {
        &self.handle
    }

    /// The server's disconnect message, if one came.
    pub fn disconnect_reason(&self) -> Option<String> {
        self.disconnect.lock().unwrap().clone().flatten()
    }

    /// Waits (at most `timeout`) for the connection to end (russh tells
    /// the handler last, after the handle reads as closed); the server's
    /// disconnect message, if it sent one.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<Option<String>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ended) = self.disconnect.lock().unwrap().clone() {
                return Ok(ended);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops reading the socket, for good: what the server sends from now
    /// on stays in the kernel's buffers.
    pub fn stop_reading(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// `tcpip-forward` for `address:port` (`-R address:port:…`): the port
    /// the server granted.
    pub async fn forward(&self, address: &str, port: u32) -> Result<u32, russh::Error> {
        self.handle.tcpip_forward(address, port).await
    }

    /// Opens the session channel (no pty, no exec yet) and collects what
    /// the server writes to it.
    pub async fn open_session(&mut self) {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .expect("russh client: session channel");
        self.session = Some(channel.id());
        let (mut read, write) = channel.split();
        self.session_channel = Some(Arc::new(write));
        let output = Arc::clone(&self.output);
        tokio::spawn(async move {
            while let Some(msg) = read.wait().await {
                if let ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } = msg {
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&data));
                }
            }
        });
    }

    /// Sends `command` as the session's exec request (burrow's options).
    pub async fn exec(&self, command: &str) {
        let channel = self.session_channel.as_ref().expect("open_session first");
        channel
            .exec(true, command)
            .await
            .expect("russh client: exec");
    }

    /// `GET path` over a `direct-tcpip` channel to `host:port` (`-L`'s
    /// way; burrow's inspector answers `localhost:4040`): the whole
    /// response as text (the request asks the server to close after it).
    pub async fn direct_get(&self, host: &str, port: u32, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, port, "127.0.0.1", 50000)
            .await
            .expect("russh client: direct-tcpip");
        let mut stream = channel.into_stream();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    /// What the server wrote to the session channel so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) until the session output contains `text`.
    pub async fn wait_output(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = self.output();
            if seen.contains(text) {
                return Ok(seen);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TCP proxy on loopback that delays every byte by `one_way` in each
/// direction: a link with a round-trip time of twice that, for tests of
/// what depends on it. Stops with the test's runtime.
pub struct SlowLink {
    pub addr: SocketAddr,
}

impl SlowLink {
    pub async fn start(to: SocketAddr, one_way: Duration) -> SlowLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(delayed(in_read, out_write, one_way));
                tokio::spawn(delayed(out_read, in_write, one_way));
            }
        });
        SlowLink { addr }
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read
/// (chunks keep their order; reading never waits for writing).
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = tokio::time::Instant::now() + delay;
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
