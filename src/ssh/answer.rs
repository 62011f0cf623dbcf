//! A client that stops answering (`--client-answer-timeout`): a key
//! exchange it never finishes, a socket it stopped reading, channel opens
//! it never confirms while it keeps the connection alive with other
//! packets. russh's keepalive cannot see these (any packet from the client
//! counts as life), and each unanswered open holds a task.
//!
//! A channel open towards the client that has waited the timeout makes the
//! connection ask the client something it must answer: a global request
//! (RFC 4254 §4; `cancel-tcpip-forward` for nothing, which every client
//! refuses at once, since only servers take it). A live client whose own
//! app is slow to connect answers that in one round trip and keeps its
//! opens; one that does not answer within the timeout either is
//! disconnected with the limit's name (and its socket cut, since a stalled
//! key exchange cannot carry the disconnect).

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::server::Handle;
use tokio_util::sync::CancellationToken;

use crate::limits::{human, Refusal, Refusals, Side};

/// The bind address of the question: a forward nobody holds.
const QUESTION: &str = "burrow-answer-check";

/// Watches the opens of one connection.
#[derive(Clone)]
pub struct Probe {
    /// `--client-answer-timeout` (zero: never asked).
    pub timeout: Duration,
    pub handle: Handle,
    /// Cuts the connection's socket.
    pub kill: CancellationToken,
    pub refusals: Arc<Refusals>,
    pub ip: IpAddr,
    /// A question is out: one at a time per connection, however many
    /// opens wait.
    pub asking: Arc<AtomicBool>,
}

impl Probe {
    /// Waits for `open` (a channel open towards the client); once it has
    /// waited the timeout, the client is asked for an answer.
    pub async fn watch<T>(&self, open: impl Future<Output = T>) -> T {
        if self.timeout.is_zero() {
            return open.await;
        }
        tokio::pin!(open);
        tokio::select! {
            done = &mut open => return done,
            _ = tokio::time::sleep(self.timeout) => self.ask(),
        }
        open.await
    }

    /// Asks the client (unless a question is out already); ends the
    /// connection if no answer comes in time.
    fn ask(&self) {
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let probe = self.clone();
        tokio::spawn(async move {
            let question = probe.handle.cancel_forward_tcpip(QUESTION.into(), 0);
            // Refused, or the connection went: either way it ended.
            let answered = tokio::time::timeout(probe.timeout, question).await.is_ok();
            probe.asking.store(false, Ordering::Release);
            if !answered {
                probe.end();
            }
        });
    }

    fn end(&self) {
        let wait = human(self.timeout);
        let refusal = Refusal::new(
            "client-answer-timeout",
            format!("the client left a channel open unanswered for {wait} and then did not answer the server for {wait}"),
        );
        self.refusals
            .refuse(&refusal, self.ip, Side::Client, "ssh connection");
        let reason = format!("{}: {}", refusal.limit, refusal.message);
        let (handle, kill) = (self.handle.clone(), self.kill.clone());
        tokio::spawn(super::killable::disconnect_then_kill(handle, kill, reason));
    }
}
