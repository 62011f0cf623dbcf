//! Checks of the test harness itself (no burrow, no ssh): the parsers and
//! the local origin app. If these fail, the end-to-end results in core.rs
//! mean nothing.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[test]
fn ready_line_parses() {
    let r = parse_ready_line(
        "burrow ready: ssh=127.0.0.1:41001 http=127.0.0.1:41002 https=127.0.0.1:41003 stats=127.0.0.1:41004 domain=localhost",
    )
    .expect("parse");
    assert_eq!(r.ssh.port(), 41001);
    assert_eq!(r.http.port(), 41002);
    assert_eq!(r.https.port(), 41003);
    assert_eq!(r.stats.port(), 41004);
    assert_eq!(r.domain, "localhost");
    assert!(parse_ready_line("burrow ready: ssh=127.0.0.1:1").is_none());
    assert!(parse_ready_line("something else").is_none());
}

#[test]
fn tunnel_urls_found() {
    let text = "\r\n  https://brave-otter-0a1b2c3d.localhost:8443 -> localhost:3000\r\n\
                https://calm-fox-deadbeef.localhost\n\
                https://brave-otter-0a1b2c3d.localhost:8443 again\n\
                https://Bad-Name-0a1b2c3d.localhost https://x-y-0a1b2c3.localhost \
                https://x-y-0a1b2c3g.localhost https://a-b-01234567.localhost.evil:1\n";
    let urls = find_tunnel_urls(text);
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert_eq!(urls[0].name, "brave-otter-0a1b2c3d");
    assert_eq!(urls[0].port, Some(8443));
    assert_eq!(urls[0].url, "https://brave-otter-0a1b2c3d.localhost:8443");
    assert_eq!(urls[1].name, "calm-fox-deadbeef");
    assert_eq!(urls[1].port, None);
    assert_eq!(urls[1].host(), "calm-fox-deadbeef.localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_routes_work() {
    let origin = Origin::start("me").await;
    let base = format!("http://127.0.0.1:{}", origin.port);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();

    let r = c.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), HELLO);
    let r = c.get(format!("{base}/whoami")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "me");

    let body = random_bytes(300_000, 7);
    let r = c
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap()[..] == body[..]);

    let r = c
        .get(format!("{base}/headers"))
        .header("x-a", "1")
        .header("X-Multi", "a")
        .header("x-multi", "b")
        .send()
        .await
        .unwrap();
    let h: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(h["x-a"], "1");
    assert_eq!(h["x-multi"], "a, b");

    let r = c
        .get(format!("{base}/bytes?n=300001"))
        .send()
        .await
        .unwrap();
    let b = r.bytes().await.unwrap();
    assert_eq!(b.len(), 300_001);
    assert!(b
        .iter()
        .enumerate()
        .all(|(i, &x)| x == pattern_byte(i as u64)));

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", origin.port))
            .await
            .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hi".into())
    );
    ws.close(None).await.unwrap();
}

#[test]
fn dead_port_refuses() {
    let p = dead_port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", p)).is_err());
}
