//! End-to-end tests for plans (issue 28), through the real `burrow` binary
//! and the stock OpenSSH client:
//!
//! * two keys on two plans (keys file `plan=`): max-tunnels refused with
//!   the plan named, `-- usage` (text and `output=json`);
//! * a transfer quota reached mid-download: the download finishes, the
//!   80% and 100% notices, 429 (page and JSON) for the next request, new
//!   tunnels refused, `-- usage`, the admin API (`/usage`, reset) and the
//!   refusal metric;
//! * bandwidth shaped within ±10% over ~10 s: HTTP download, upload, and a
//!   raw TCP tunnel;
//! * usage kept across a restart (SIGTERM, and `kill -9` within the save
//!   interval);
//! * keyless clients accounted per IP;
//! * the plans file reloaded, and a broken one rejected with its line.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEXT_WAIT: Duration = Duration::from_secs(15);
const EXIT_WAIT: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

fn fwd(origin_port: u16) -> String {
    format!("80:127.0.0.1:{origin_port}")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An ssh client with `key` (or a fresh key) forwarding `args`.
fn client(burrow: &Burrow, key: &SshKeyPair, args: &[&str], cmd: &[&str]) -> Ssh {
    SshSpec {
        port: burrow.ssh_port(),
        args,
        remote_cmd: cmd,
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

/// `ssh HOST -- usage [output=json]` with `key`: its stdout, after a
/// clean exit.
async fn usage(burrow: &Burrow, key: Option<&SshKeyPair>, json: bool) -> String {
    let cmd: &[&str] = if json {
        &["--", "usage", "output=json"]
    } else {
        &["--", "usage"]
    };
    let spec = SshSpec {
        port: burrow.ssh_port(),
        remote_cmd: cmd,
        stdin: SshStdin::Null,
        keyed: key.is_some(),
        ..SshSpec::default()
    };
    let mut ssh = match key {
        Some(key) => spec.spawn_with_key(key),
        None => spec.spawn(),
    };
    let status = ssh.wait_exit(EXIT_WAIT).await.expect("usage exits");
    assert!(
        status.success(),
        "usage exit {status:?}: {}",
        ssh.all_output()
    );
    ssh.stdout.text()
}

/// The stats listener's `path` with the admin token, as (status, JSON).
async fn admin(burrow: &Burrow, method: &str, path: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", burrow.addrs.stats);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let resp = burrow
        .admin(method, path)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

fn encode(account: &str) -> String {
    account
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace(':', "%3A")
}

/// Downloads `/bytes?n=N` through `host`; returns the bytes read.
async fn download(burrow: &Burrow, host: &str, n: u64) -> u64 {
    let client = burrow.https_client_no_timeout();
    let url = burrow.https_url(host, &format!("/bytes?n={n}"));
    let mut resp = tokio::time::timeout(Duration::from_secs(60), client.get(&url).send())
        .await
        .expect("download starts in time")
        .expect("download");
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("download moves")
        .expect("download chunk")
    {
        got += chunk.len() as u64;
    }
    got
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_on_two_plans() {
    let dir = TempDir::new("burrow-plans-two");
    let (free, team) = (SshKeyPair::generate(), SshKeyPair::generate());
    let plans = dir.path().join("plans");
    write(
        &plans,
        "free max-tunnels=1 transfer=1GiB/day\nteam max-tunnels=5 transfer=100GiB/month\n",
    );
    let keys = dir.path().join("keys");
    write(
        &keys,
        &format!("plan=free {}\nplan=team {}\n", free.public, team.public),
    );
    let mut flags = vec![
        "--plans-file",
        path_str(&plans),
        "--keys-file",
        path_str(&keys),
    ];
    flags.extend(SSH_LIMITS_OFF);
    let burrow = Burrow::start(&flags).await;
    let origin = Origin::start("plans-two").await;

    // The free key may hold one tunnel: its second forward is refused,
    // naming the plan.
    let f = client(
        &burrow,
        &free,
        &[
            "-R",
            &fwd(origin.port),
            "-R",
            &format!("0:127.0.0.1:{}", origin.port),
        ],
        &[],
    );
    f.stdout
        .wait_contains(
            "ERROR: plan-max-tunnels: the free plan allows 1 tunnels",
            TEXT_WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", f.all_output()));
    f.stdout
        .wait_contains("free plan: 0.0 of 1 GiB this day", TEXT_WAIT)
        .await
        .unwrap_or_else(|e| panic!("banner usage line: {e}: {}", f.all_output()));
    // The team key holds two.
    let t = client(
        &burrow,
        &team,
        &[
            "-R",
            &fwd(origin.port),
            "-R",
            &format!("0:127.0.0.1:{}", origin.port),
        ],
        &[],
    );
    let urls = t.urls(2).await;
    assert_eq!(urls.len(), 2);
    assert!(!t.all_output().contains("ERROR"), "{}", t.all_output());
    let resp = burrow.get(&urls[0].host(), "/hello").await;
    assert_eq!(resp.status(), 200);

    let text = usage(&burrow, Some(&team), false).await;
    assert!(text.contains("team plan: "), "{text}");
    assert!(text.contains("of 100 GiB this month, resets "), "{text}");
    let json = usage(&burrow, Some(&free), true).await;
    let event: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(event["event"], "usage");
    assert_eq!(event["plan"], "free");
    assert_eq!(event["transfer"]["limit"], 1u64 << 30);
    assert_eq!(event["account"], free.fingerprint);
    let metrics = burrow.metrics().await;
    assert!(
        metrics.contains("burrow_quota_refusals_total{plan=\"free\",limit=\"max-tunnels\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_quota_reached_mid_download() {
    let key = SshKeyPair::generate();
    let mut flags = vec!["--default-plan-transfer", "2MiB/day"];
    flags.extend(SSH_LIMITS_OFF);
    let burrow = Burrow::start(&flags).await;
    let origin = Origin::start("plans-quota").await;
    let ssh = client(&burrow, &key, &["-R", &fwd(origin.port)], &[]);
    let host = ssh.url().await.host();

    // The download that crosses the quota finishes.
    assert_eq!(download(&burrow, &host, 3 * MIB).await, 3 * MIB);
    for notice in [
        "NOTICE: default plan: 80% of the transfer quota for this day is used",
        "NOTICE: default plan: the transfer quota for this day is used up",
    ] {
        ssh.stdout
            .wait_contains(notice, TEXT_WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", ssh.all_output()));
    }
    // The next request: 429, saying so and when it resets.
    let resp = burrow.get(&host, "/hello").await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 86_400, "{retry}");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("Quota used up") && body.contains("transfer quota"),
        "{body}"
    );
    let resp = burrow
        .https_client()
        .get(burrow.https_url(&host, "/hello"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["quota"], "transfer", "{json}");
    assert!(json["resets"].as_str().is_some(), "{json}");

    // New tunnels are refused, naming the plan.
    let again = client(
        &burrow,
        &key,
        &["-R", &format!("0:127.0.0.1:{}", origin.port)],
        &[],
    );
    again
        .stdout
        .wait_contains(
            "ERROR: transfer: the default plan's transfer quota",
            TEXT_WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", again.all_output()));
    drop(again);

    let text = usage(&burrow, Some(&key), false).await;
    assert!(
        text.contains("default plan: ") && text.contains("of 2 MiB this day"),
        "{text}"
    );

    // The admin API: the account, the list, the reset.
    let fp = encode(&key.fingerprint);
    let (status, one) = admin(&burrow, "GET", &format!("/usage/{fp}")).await;
    assert_eq!(status, 200, "{one}");
    assert!(
        one["transfer"]["used"].as_u64().unwrap() >= 3 * MIB,
        "{one}"
    );
    let (status, list) = admin(&burrow, "GET", "/usage?page=1&per_page=10").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["accounts"][0]["account"], key.fingerprint);
    let metrics = burrow.metrics().await;
    assert!(
        metrics.contains("burrow_quota_refusals_total{plan=\"default\",limit=\"transfer\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("burrow_plan_accounts_at_quota{plan=\"default\"} 1"),
        "{metrics}"
    );
    let (status, _) = admin(&burrow, "POST", &format!("/usage/{fp}/reset")).await;
    assert_eq!(status, 200);
    let resp = burrow.get(&host, "/hello").await;
    assert_eq!(resp.status(), 200, "after the reset");
    let (status, _) = admin(&burrow, "GET", "/usage/SHA256%3Anobody").await;
    assert_eq!(status, 404);
}

/// Times `what` and checks the rate of `bytes` is within ±10% of `rate`.
fn assert_rate(what: &str, bytes: u64, elapsed: Duration, rate: u64) {
    let measured = bytes as f64 / elapsed.as_secs_f64();
    let error = (measured - rate as f64).abs() / rate as f64;
    assert!(
        error <= 0.10,
        "{what}: {measured:.0} B/s over {elapsed:?}, plan {rate} B/s ({:.1}% off)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_shaped_within_ten_percent() {
    const RATE: u64 = 512 * 1024;
    const SIZE: u64 = 5 * MIB; // ~10 s at RATE
    let range = free_port_range(8);
    let burrow = Burrow::start(&[
        "--default-plan-bandwidth",
        "512KiB/s",
        "--tcp-ports",
        &range.arg(),
    ])
    .await;
    let origin = Origin::start("plans-bw").await;
    let key = SshKeyPair::generate();
    let ssh = client(&burrow, &key, &["-R", &fwd(origin.port)], &[]);
    let host = ssh.url().await.host();

    // HTTP download.
    let started = Instant::now();
    assert_eq!(download(&burrow, &host, SIZE).await, SIZE);
    assert_rate("download", SIZE, started.elapsed(), RATE);

    // HTTP upload (the app reads it as fast as it comes).
    let body = vec![7u8; SIZE as usize];
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        burrow
            .https_client_no_timeout()
            .post(burrow.https_url(&host, "/slowsink?kbps=1000000"))
            .body(body)
            .send(),
    )
    .await
    .expect("upload in time")
    .expect("upload");
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    assert_rate("upload", SIZE, started.elapsed(), RATE);

    // A raw TCP tunnel: the bytes both ways count together.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let port = range.ports().next().unwrap();
    let tcp = client(
        &burrow,
        &key,
        &["-R", &format!("{port}:127.0.0.1:{app_port}")],
        &[],
    );
    tcp.stdout
        .wait_contains(&format!(":{port}"), TEXT_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", tcp.all_output()));
    let half = SIZE / 2;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let started = Instant::now();
    let (mut r, mut w) = conn.split();
    let send = async {
        w.write_all(&vec![1u8; half as usize]).await.unwrap();
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < half {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "echo ended early at {got}");
            got += n as u64;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("echo in time");
    assert_rate("tcp echo", SIZE, started.elapsed(), RATE);
}

/// Polls `/usage/{fp}` until its transfer reaches `at_least`.
async fn wait_usage(burrow: &Burrow, fp: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + TEXT_WAIT;
    loop {
        let (status, one) = admin(burrow, "GET", &format!("/usage/{}", encode(fp))).await;
        let used = one["transfer_used"].as_u64().unwrap_or(0);
        if status == 200 && used >= at_least {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "usage {one} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the state file until it records `at_least` bytes for `fp`.
async fn wait_saved(file: &Path, fp: &str, at_least: u64) {
    let deadline = Instant::now() + TEXT_WAIT;
    loop {
        let saved = std::fs::read(file)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok());
        let used = saved.as_ref().and_then(|s| {
            s["accounts"]
                .as_array()?
                .iter()
                .find(|a| a["account"] == fp)?["transfer"]["used"]
                .as_u64()
        });
        if used.is_some_and(|u| u >= at_least) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{file:?} never saved {at_least}: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_a_restart_and_a_crash() {
    let state = TempDir::new("burrow-plans-state");
    let args = [
        "--state-dir",
        path_str(state.path()),
        "--default-plan-transfer",
        "1GiB/month",
        "--usage-save-interval",
        "1s",
    ];
    let key = SshKeyPair::generate();
    let origin = Origin::start("plans-restart").await;

    let mut burrow = Burrow::start(&args).await;
    let ssh = client(&burrow, &key, &["-R", &fwd(origin.port)], &[]);
    let host = ssh.url().await.host();
    assert_eq!(download(&burrow, &host, MIB).await, MIB);
    let before = wait_usage(&burrow, &key.fingerprint, MIB).await;
    drop(ssh);
    // SIGTERM: everything counted is written at shutdown.
    burrow.signal("TERM");
    assert!(
        burrow.wait_exit(EXIT_WAIT).await.is_some(),
        "burrow exits on SIGTERM"
    );
    let mut burrow = Burrow::start(&args).await;
    let after = wait_usage(&burrow, &key.fingerprint, before).await;
    assert!(
        after >= before,
        "a clean restart loses nothing: {after} < {before}"
    );

    // kill -9 after the save interval: at most that interval is lost, so
    // what the file holds (waited for) comes back.
    let ssh = client(&burrow, &key, &["-R", &fwd(origin.port)], &[]);
    let host = ssh.url().await.host();
    assert_eq!(download(&burrow, &host, MIB).await, MIB);
    let counted = wait_usage(&burrow, &key.fingerprint, before + MIB).await;
    wait_saved(&state.path().join("usage.json"), &key.fingerprint, counted).await;
    drop(ssh);
    burrow.signal("KILL");
    assert!(burrow.wait_exit(EXIT_WAIT).await.is_some());
    let burrow = Burrow::start(&args).await;
    let after = wait_usage(&burrow, &key.fingerprint, counted).await;
    assert!(after >= before + MIB, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_clients_are_accounted_per_ip() {
    let burrow = Burrow::start(&["--default-plan-max-tunnels", "1"]).await;
    let origin = Origin::start("plans-keyless").await;
    let first = Ssh::spawn_keyless(&burrow, &["-R", &fwd(origin.port)]);
    let url = first.url_from_stderr().await;
    let resp = burrow.get(&url.host(), "/hello").await;
    assert_eq!(resp.status(), 200);
    // A second keyless connection from the same IP is the same account.
    let second = Ssh::spawn_keyless(&burrow, &["-R", &fwd(origin.port)]);
    second
        .stdout
        .wait_contains(
            "ERROR: plan-max-tunnels: the default plan allows 1 tunnels",
            TEXT_WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", second.all_output()));
    let (status, one) = admin(&burrow, "GET", "/usage/ip%3A127.0.0.1").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["plan"], "default");
    assert!(one["requests_used"].as_u64().unwrap() >= 1, "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plans_file_is_reloaded_and_a_broken_one_rejected() {
    let dir = TempDir::new("burrow-plans-reload");
    let key = SshKeyPair::generate();
    let plans = dir.path().join("plans");
    write(&plans, "team transfer=100GiB/month\n");
    let keys = dir.path().join("keys");
    write(&keys, &format!("plan=team {}\n", key.public));
    let burrow = Burrow::start(&[
        "--plans-file",
        path_str(&plans),
        "--keys-file",
        path_str(&keys),
    ])
    .await;
    let origin = Origin::start("plans-reload").await;
    let ssh = client(&burrow, &key, &["-R", &fwd(origin.port)], &[]);
    let host = ssh.url().await.host();
    assert_eq!(burrow.get(&host, "/hello").await.status(), 200);

    // Broken: rejected with its line number, the old plans stay.
    write(&plans, "team transfer=100GiB/month\nteam2 colour=red\n");
    if let Err(seen) = burrow
        .stderr
        .wait_for(TEXT_WAIT, |t| {
            t.lines()
                .any(|l| l.contains("plans file rejected") && l.contains("line 2"))
                .then_some(())
        })
        .await
    {
        panic!("no log line rejecting the broken plans file: {seen}");
    }
    assert_eq!(burrow.get(&host, "/hello").await.status(), 200);
    // Dropping a plan the keys file names is rejected too.
    write(&plans, "other transfer=1GiB/day\n");
    let deadline = Instant::now() + TEXT_WAIT;
    while !burrow.stderr.text().contains("is not defined") {
        assert!(
            Instant::now() < deadline,
            "no rejection: {}",
            burrow.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A valid change applies to the live account at once.
    write(&plans, "team transfer=100B/month\n");
    let deadline = Instant::now() + TEXT_WAIT;
    loop {
        let status = burrow.get(&host, "/hello").await.status();
        if status == 429 {
            break;
        }
        assert!(Instant::now() < deadline, "the new quota never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = usage(&burrow, Some(&key), false).await;
    assert!(text.contains("of 100 B this month"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused_at_start_with_their_line() {
    let dir = TempDir::new("burrow-plans-bad");
    let plans = dir.path().join("plans");
    write(&plans, "# ok\nfree transfer=1GiB/year\n");
    let mut args = cli_base_args(dir.path());
    args.extend(["--plans-file".to_string(), path_str(&plans).to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_burrow_expect_exit(&args).await;
    assert!(
        run.stderr.contains("line 2") && run.stderr.contains("not day, week or month"),
        "{}",
        run.stderr
    );
    let key = SshKeyPair::generate();
    let keys = dir.path().join("keys");
    write(&keys, &format!("\nplan=gold {}\n", key.public));
    let mut args = cli_base_args(dir.path());
    args.extend(["--keys-file".to_string(), path_str(&keys).to_string()]);
    args.push("--default-plan-bandwidth=-1MiB/s".to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_burrow_expect_exit(&args).await;
    assert!(
        run.stderr.contains("--default-plan-bandwidth"),
        "{}",
        run.stderr
    );
    let mut args = cli_base_args(dir.path());
    args.extend(["--keys-file".to_string(), path_str(&keys).to_string()]);
    args.extend([
        "--default-plan-transfer".to_string(),
        "1GiB/day".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_burrow_expect_exit(&args).await;
    assert!(
        run.stderr.contains("line 2") && run.stderr.contains("\"gold\" is not defined"),
        "{}",
        run.stderr
    );
}
