//! One SSH connection as the rest of the server sees it: the
//! [`tunnel::Client`](crate::tunnel::Client) of its tunnels. It opens
//! `forwarded-tcpip` channels through the connection's russh handle, holds
//! the options given as the SSH command, and writes notices and the
//! request log to the session channel, as text or `output=json` events.
//!
//! Nothing here waits on russh's session loop from inside it: notices are
//! written from their own task, and closing a connection sends the
//! disconnect, then cuts the socket if the client ignores it. A channel
//! open waits for the client in a task of its own, holding one of the
//! connection's pending-open slots ([`super::quota`]); one left unanswered
//! too long makes the connection ask the client for any answer at all
//! ([`super::answer`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelWriteHalf};

use super::answer::Probe;
use super::banner;
use super::killable::disconnect_then_kill;
use super::quota::Quota;
use crate::config::{ConnectionArgs, RequestLogArgs};
use crate::limits::{Refusal, Refusals, Side};
use crate::pipe::channel::ChannelIo;
use crate::pipe::spool::Budget;
use crate::plans::Account;
use crate::request_log::{Event, RequestLog, Terminal};
use crate::tunnel::options::{Output, TunnelOptions};
use crate::tunnel::{Bind, BoxFuture, ByteStream, Client, ConnId, Notice, OpenError, Traffic};

/// How long a closed session's client gets to leave by itself before the
/// connection is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One SSH connection.
pub struct Session {
    id: ConnId,
    ip: IpAddr,
    /// Cancelling it cuts the socket (see `ssh::killable`).
    kill: tokio_util::sync::CancellationToken,
    authenticated: AtomicBool,
    /// Options given as the SSH command; they apply to every tunnel.
    options: RwLock<Arc<TunnelOptions>>,
    /// Becomes true once the options are known (the session's shell or
    /// exec request arrived, or clearly never will).
    settled: tokio::sync::watch::Sender<bool>,
    /// The connection's russh handle, once the key exchange is done.
    handle: OnceLock<Handle>,
    /// The session channel notices go to, while it is open.
    channel: Mutex<Option<ChannelId>>,
    /// The live request log, once the client opened a session to show it.
    log: OnceLock<RequestLog>,
    /// Memory and disk for data the visitors of its channels read slowly.
    spool: Arc<Budget>,
    /// The user's plan account (when plans are configured), from login.
    account: OnceLock<Arc<Account>>,
    /// Cancelled when the connection ends (its tasks stop).
    gone: tokio_util::sync::CancellationToken,
    /// What the connection may make the server hold or do.
    quota: Quota,
    /// Where the connection's refusals are recorded, as its client's.
    refusals: Arc<Refusals>,
    /// `--client-answer-timeout`: how long an open may wait before the
    /// client is asked for an answer ([`Probe`]).
    answer_timeout: Duration,
    /// A question to the client is out ([`Probe`]).
    asking: Arc<AtomicBool>,
}

/// What a connection's [`Session`] is built from, besides its id and IP.
pub struct Parts<'a> {
    pub spool: Arc<Budget>,
    pub refusals: Arc<Refusals>,
    pub limits: &'a ConnectionArgs,
}

impl Session {
    pub fn new(id: ConnId, ip: IpAddr, parts: Parts<'_>) -> Self {
        let Parts {
            spool,
            refusals,
            limits,
        } = parts;
        Session {
            id,
            ip,
            kill: Default::default(),
            authenticated: Default::default(),
            options: RwLock::new(Arc::new(TunnelOptions::default())),
            settled: tokio::sync::watch::Sender::new(false),
            handle: OnceLock::new(),
            channel: Mutex::new(None),
            log: OnceLock::new(),
            spool,
            account: OnceLock::new(),
            gone: Default::default(),
            quota: Quota::new(limits),
            refusals,
            answer_timeout: limits.client_answer_timeout,
            asking: Arc::default(),
        }
    }

    /// The connection's per-connection limits.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The connection's refusals: counted and logged as the client's.
    pub fn refused(&self, refusal: &Refusal, what: &str) {
        self.refusals.refuse(refusal, self.ip, Side::Client, what);
    }

    /// Watches channel opens towards the client through `handle`.
    fn probe(&self, handle: Handle) -> Probe {
        Probe {
            timeout: self.answer_timeout,
            handle,
            kill: self.kill.clone(),
            refusals: Arc::clone(&self.refusals),
            ip: self.ip,
            asking: Arc::clone(&self.asking),
        }
    }

    /// The user's plan account, once logged in (with plans configured).
    pub fn account(&self) -> Option<&Arc<Account>> {
        self.account.get()
    }

    /// Puts the connection on `account`: its bytes count there, and the
    /// account's quota alerts reach this connection as `NOTICE:` lines.
    pub fn set_account(self: &Arc<Self>, account: Arc<Account>) {
        let mut alerts = account.alerts();
        if self.account.set(account).is_err() {
            return;
        }
        let session = Arc::downgrade(self);
        let gone = self.gone.clone();
        tokio::spawn(async move {
            let mut told = *alerts.borrow_and_update();
            loop {
                tokio::select! {
                    _ = gone.cancelled() => return,
                    changed = alerts.changed() => if changed.is_err() { return },
                }
                let now = *alerts.borrow_and_update();
                let Some(session) = session.upgrade() else {
                    return;
                };
                for line in super::usage::quota_notices(told, now, session.account.get()) {
                    session.say(&line);
                }
                told = now;
            }
        });
    }

    /// The connection ended: its tasks stop.
    pub fn ended(&self) {
        self.gone.cancel();
    }

    /// Cancelled to cut the connection's socket.
    pub fn kill_switch(&self) -> tokio_util::sync::CancellationToken {
        self.kill.clone()
    }

    /// Starts the request log on the session channel `out`; it waits
    /// (briefly) for the options, so no line comes before the banner.
    pub fn start_log(&self, out: ChannelWriteHalf<Msg>, limits: &RequestLogArgs) {
        let _ = self.log.get_or_init(|| {
            let settled = self.settled.subscribe();
            RequestLog::start(SessionOut(out), settled, limits)
        });
    }

    /// The client asked for a terminal: the request log gets colour.
    pub fn log_in_colour(&self) {
        if let Some(log) = self.log.get() {
            log.set_colour(true);
        }
    }

    /// Sets the connection's options and marks them settled.
    pub fn set_options(&self, options: TunnelOptions) {
        *self.options.write().expect("options lock") = Arc::new(options);
        self.settle();
    }

    /// Marks the options as final (none will come).
    pub fn settle(&self) {
        self.settled.send_replace(true);
    }

    /// Resolves once the options are final.
    pub async fn settled(&self) {
        let mut settled = self.settled.subscribe();
        let _ = settled.wait_for(|s| *s).await;
    }

    pub fn has_session(&self) -> bool {
        self.channel.lock().expect("session lock").is_some()
    }

    /// The connection's options as known now.
    pub fn options(&self) -> Arc<TunnelOptions> {
        Arc::clone(&self.options.read().expect("options lock"))
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// `line` as the user's session shows it (text, or `output=json`).
    pub fn render(&self, line: &banner::Line) -> String {
        line.render(self.options().output)
    }

    pub fn output(&self) -> Output {
        self.options().output
    }

    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    pub fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// Records the session channel (or its end) so notices can reach it.
    pub fn set_channel(&self, channel: Option<ChannelId>) {
        *self.channel.lock().expect("session lock") = channel;
    }

    fn target(&self) -> Option<(Handle, ChannelId)> {
        let channel = (*self.channel.lock().expect("session lock"))?;
        Some((self.handle.get()?.clone(), channel))
    }

    /// Writes `line` to the user's terminal, if they have a session. Never
    /// waits: the write happens in its own task.
    pub fn say(&self, line: &banner::Line) {
        let text = self.render(line);
        if let Some((handle, channel)) = self.target() {
            tokio::spawn(async move {
                let _ = handle.data(channel, text.into_bytes()).await;
            });
        }
    }

    /// Says `line` (if there is a session), then ends the connection with
    /// `reason` as the SSH disconnect message.
    pub fn end(&self, line: &banner::Line, reason: String) {
        let text = self.render(line);
        let target = self.target();
        let kill = self.kill.clone();
        let Some(handle) = self.handle.get().cloned() else {
            kill.cancel();
            return;
        };
        tokio::spawn(async move {
            if let Some((_, channel)) = target {
                let _ = handle.data(channel, text.into_bytes()).await;
                let _ = handle.exit_status_request(channel, 1).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
                // OpenSSH exits by itself once its session closes, after
                // printing what we sent; a disconnect right now could beat
                // the text to the terminal. Only a client that stays gets it.
                tokio::time::sleep(CLOSE_GRACE).await;
            }
            disconnect_then_kill(handle, kill, reason).await;
        });
    }

    /// Sends a disconnect with `reason`, and cuts the socket if the
    /// connection is still there after a grace period (a client that
    /// ignores it, or a stalled key exchange that cannot carry it).
    pub fn disconnect_then_kill(&self, reason: String) {
        let Some(handle) = self.handle.get().cloned() else {
            self.kill.cancel();
            return;
        };
        tokio::spawn(disconnect_then_kill(handle, self.kill.clone(), reason));
    }
}

impl Client for Session {
    fn id(&self) -> ConnId {
        Session::id(self)
    }

    fn ip(&self) -> IpAddr {
        self.ip
    }

    fn open<'a>(
        &'a self,
        bind: &'a Bind,
        visitor: SocketAddr,
        traffic: &'a Arc<Traffic>,
    ) -> BoxFuture<'a, Result<ByteStream, OpenError>> {
        let handle = self.handle.get().cloned();
        let (spool, traffic) = (Arc::clone(&self.spool), Arc::clone(traffic));
        let account = self.account.get().cloned();
        let (address, port) = (bind.address.clone(), bind.port);
        let slot = self.quota.pending_open().inspect_err(|refusal| {
            self.refused(refusal, "channel open");
        });
        Box::pin(async move {
            let handle = handle.ok_or(OpenError::Gone)?;
            let slot = slot.map_err(OpenError::Limited)?;
            let probe = self.probe(handle.clone());
            // In a task of its own: a visitor who gives up while the client
            // is still connecting to its app must not leave the channel,
            // once confirmed, open with nobody to close it. It holds its
            // slot until the client answers (or its connection goes).
            let opened = tokio::spawn(async move {
                let open = handle.channel_open_forwarded_tcpip(
                    address,
                    port,
                    visitor.ip().to_string(),
                    u32::from(visitor.port()),
                );
                let channel = probe.watch(open).await;
                drop(slot);
                Ok(ChannelIo::new(channel?, spool, traffic, account))
            });
            match opened.await.map_err(|_| OpenError::Gone)? {
                Ok(io) => Ok(Box::new(io) as ByteStream),
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    Err(OpenError::Refused(reason.description().to_string()))
                }
                Err(_) => Err(OpenError::Gone),
            }
        })
    }

    fn options(&self) -> Arc<TunnelOptions> {
        Session::options(self)
    }

    fn options_final(&self) -> bool {
        *self.settled.borrow()
    }

    fn options_settle(&self) -> BoxFuture<'_, ()> {
        let mut settled = self.settled.subscribe();
        Box::pin(async move {
            let _ = settled.wait_for(|s| *s).await;
        })
    }

    fn notify(&self, notice: Notice) {
        self.say(&banner::notice(&notice));
    }

    fn close(&self, notice: Notice, reason: String) {
        self.end(&banner::notice(&notice), reason);
    }

    fn log(&self, event: Event, answered: bool) {
        if let Some(log) = self.log.get() {
            log.push(event, answered, self.output() == Output::Json);
        }
    }

    fn has_log(&self) -> bool {
        self.log.get().is_some()
    }

    fn account(&self) -> Option<Arc<Account>> {
        self.account.get().cloned()
    }
}

/// The session channel as the request log's terminal: a write waits for
/// the channel's SSH window (`Handle::data` would queue without bound).
struct SessionOut(ChannelWriteHalf<Msg>);

impl Terminal for SessionOut {
    async fn write(&self, text: bytes::Bytes) -> Result<(), ()> {
        self.0.data_bytes(text).await.map_err(|_| ())
    }
}
