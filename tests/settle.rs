//! How long a new tunnel's first visitors wait for the client's options
//! (`auth=`, `allow=`, `tls=`, given as the SSH command): as long as the
//! connection's own round trips say the options may still come, and no
//! longer — and the wait shows in the request log and the stats.
//!
//! * a program that opens a session channel and never execs (scripts on
//!   russh, paramiko, asyncssh do) is served within a few round trips;
//! * `ssh -N` likewise;
//! * the options still always apply to the first request: stock OpenSSH
//!   and an in-process client that sends its exec a round trip late, both
//!   over a link with a 200–300 ms round trip.

mod common;
#[path = "common/russh_client.rs"]
mod russh_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use russh_client::{RusshClient, SlowLink};

fn ssh_addr(burrow: &Burrow) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], burrow.ssh_port()))
}

/// The request log's line for a request held for the options.
const HELD: &str = "for the client's options";

/// A script's tunnel (a forward, then a session channel, no shell, no
/// exec) serves a visitor who came at once within a few round trips of
/// loopback, not after a fixed guess of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_never_execs_is_served_within_a_few_round_trips() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("measured").await;
    let mut client = RusshClient::connect(ssh_addr(&burrow), origin.port).await;
    client
        .forward("measure", 80)
        .await
        .expect("forward granted");
    let started = Instant::now();
    let visitor = tokio::spawn(async move {
        let burrow = burrow;
        let resp = burrow.get("measure.localhost", "/whoami").await;
        (resp.status(), resp.text().await.unwrap(), burrow)
    });
    client.open_session().await;
    let (status, body, _burrow) = visitor.await.unwrap();
    let took = started.elapsed();
    assert_eq!((status.as_u16(), body.as_str()), (200, "measured"));
    assert!(
        took < Duration::from_millis(300),
        "the first request took {took:?}: the hold is not bound by the round trip"
    );
}

/// A request held for the options says so: its request-log line ("held …
/// for the client's options"), its inspector entry (`held_ms`, within its
/// duration), the stats and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_says_so_in_the_log_the_inspector_and_the_stats() {
    let rtt = Duration::from_millis(200);
    let burrow = std::sync::Arc::new(Burrow::start(&[]).await);
    let origin = Origin::start("held-visibly").await;
    let link = SlowLink::start(ssh_addr(&burrow), rtt / 2).await;
    let mut client = RusshClient::connect(link.addr, origin.port).await;
    client.forward("held", 80).await.expect("forward granted");
    let visitor = {
        let burrow = std::sync::Arc::clone(&burrow);
        tokio::spawn(async move { burrow.get("held.localhost", "/whoami").await.status() })
    };
    client.open_session().await;
    tokio::time::sleep(rtt).await;
    client.exec("inspect=on").await;
    assert_eq!(visitor.await.unwrap(), 200);

    let log = client
        .wait_output(HELD, Duration::from_secs(5))
        .await
        .unwrap_or_else(|seen| panic!("no held line in the request log: {seen:?}"));
    let line = log.lines().find(|l| l.contains(HELD)).unwrap();
    assert!(line.contains("↳ held "), "{line}");

    let answer = client.direct_get("localhost", 4040, "/api/entries").await;
    let json = &answer[answer.find('{').expect("a JSON body")..];
    let entries: serde_json::Value = serde_json::from_str(json).unwrap();
    let entry = &entries["entries"][0];
    let held = entry["held_ms"].as_u64().unwrap_or(0);
    assert!(
        held > 0,
        "the inspector entry does not show the hold: {entry}"
    );
    assert!(entry["duration_ms"].as_u64() >= Some(held), "{entry}");

    let stats = burrow.stats().await;
    assert!(stats["held_for_options"].as_u64() >= Some(1), "{stats}");
    assert!(
        stats["held_for_options_ms"].as_u64() >= Some(held),
        "{stats}"
    );
    let metrics = burrow.metrics().await;
    assert!(
        metrics.contains("burrow_options_hold_seconds_count"),
        "{metrics}"
    );
}

/// `ssh -N` (no session channel, no options) is served at once after the
/// bound: well before the half second a fixed guess used to cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_n_is_served_a_few_round_trips_after_its_forward() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("minus-n").await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn_keyless(&burrow, &["-N", "-R", &forward]);
    // Keyless: the name is shown during authentication, before the forward
    // is even asked for.
    let host = ssh.url_from_stderr().await.host();
    let started = Instant::now();
    let resp = burrow.get(&host, "/whoami").await;
    let took = started.elapsed();
    let resp = expect_status(resp, 200, "-N's first visitor").await;
    assert_eq!(resp.text().await.unwrap(), "minus-n");
    assert!(
        took < Duration::from_millis(400),
        "-N's first request took {took:?}"
    );
}

/// Stock OpenSSH with `-- auth=…` over a link with a 300 ms round trip:
/// the very first request, sent the moment the name is known, is held
/// until the options arrive and gets 401 — never the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_options_guard_the_first_request_on_a_slow_link() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("openssh-must-not-leak").await;
    let link = SlowLink::start(ssh_addr(&burrow), Duration::from_millis(150)).await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let ssh = SshSpec {
        port: link.addr.port(),
        args: &["-R", &forward],
        remote_cmd: &["--", "auth=u:p"],
        keyed: false,
        ..SshSpec::default()
    }
    .spawn();
    let host = ssh.url_from_stderr().await.host();
    let resp = burrow.get(&host, "/whoami").await;
    assert_eq!(
        resp.status(),
        401,
        "the first request slipped past auth=: {:?}",
        resp.text().await
    );
    assert_eq!(origin.hits("/whoami"), 0, "the app was reached");
}

/// An in-process client on a link with a 200 ms round trip that sends its
/// exec (`auth=…`) one round trip after the session channel is confirmed,
/// with its forward: the first request, sent as soon as the forward is
/// granted, is still held until the options arrive, and gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_a_round_trip_late_still_guards_the_first_request() {
    let rtt = Duration::from_millis(200);
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("script-must-not-leak").await;
    let link = SlowLink::start(ssh_addr(&burrow), rtt / 2).await;
    let mut client = RusshClient::connect(link.addr, origin.port).await;
    client.open_session().await;
    let client = std::sync::Arc::new(client);
    let late = {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            tokio::time::sleep(rtt).await;
            client.exec("auth=u:p").await;
        })
    };
    client
        .forward("late-exec", 80)
        .await
        .expect("forward granted");
    let resp = burrow.get("late-exec.localhost", "/whoami").await;
    assert_eq!(
        resp.status(),
        401,
        "the first request slipped past auth=: {:?}",
        resp.text().await
    );
    assert_eq!(origin.hits("/whoami"), 0, "the app was reached");
    late.await.unwrap();
    let stats = burrow.stats().await;
    assert!(stats["held_for_options"].as_u64() >= Some(1), "{stats}");
}
