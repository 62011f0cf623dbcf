//! What the SSH user's terminal shows (issue 7): the QR code under the URL,
//! decoded back from the half-block characters the session printed.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(15);
/// The colours burrow forces around every QR row: black on white.
const QR_COLORS: &str = "\x1b[38;5;16;48;5;231m";

/// The QR code rows in `text` (between the colour escape and the reset),
/// turned back into modules: `true` = dark.
fn qr_modules(text: &str) -> Vec<Vec<bool>> {
    let mut modules = Vec::new();
    for line in text.lines() {
        let Some(start) = line.find(QR_COLORS) else {
            continue;
        };
        let row = &line[start + QR_COLORS.len()..];
        let row = row.split("\x1b[0m").next().unwrap_or("");
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in row.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            top.push(t);
            bottom.push(b);
        }
        modules.push(top);
        modules.push(bottom);
    }
    modules
}

/// Decodes the modules with `rqrr`, as a phone camera would.
fn decode(modules: &[Vec<bool>]) -> Option<String> {
    const SCALE: usize = 4;
    let height = modules.len() * SCALE;
    let width = modules.iter().map(Vec::len).max()? * SCALE;
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        let dark = modules
            .get(y / SCALE)
            .and_then(|row| row.get(x / SCALE))
            .copied()
            .unwrap_or(false);
        if dark {
            0
        } else {
            255
        }
    });
    let grids = image.detect_grids();
    let (_, content) = grids.first()?.decode().ok()?;
    Some(content)
}

async fn banner(
    burrow: &Burrow,
    origin: &Origin,
    args: &[&str],
    options: &[&str],
) -> (String, Ssh) {
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut all = args.to_vec();
    all.extend(["-R", fwd.as_str()]);
    let ssh = Ssh::spawn_cmd(burrow, &all, options);
    let url = ssh.url().await;
    // The key line comes after the QR code's place in the banner: once it is
    // in, a QR code would be too.
    ssh.stdout
        .wait_contains("Stable URL from your SSH key", WAIT)
        .await
        .expect("the banner");
    (url.url, ssh)
}

/// On a terminal, the banner carries a QR code of the URL that decodes to
/// exactly that URL, in forced black-on-white.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_under_the_url_decodes_to_it() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("qr").await;
    let (url, ssh) = banner(&burrow, &origin, &["-tt"], &[]).await;
    // The code may reach ssh's stdout after the banner text: wait until what
    // arrived decodes (or time runs out).
    let decoded = ssh
        .stdout
        .wait_for(WAIT, |text| decode(&qr_modules(text)))
        .await
        .unwrap_or_else(|text| panic!("no decodable QR code was printed:\n{text}"));
    assert_eq!(decoded, url, "{}", ssh.stdout.text());
}

/// No QR code without a terminal, and none with `qr=off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_skipped_without_a_terminal_or_with_qr_off() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("qr").await;
    let (_, no_pty) = banner(&burrow, &origin, &["-T"], &["--", "host=localhost"]).await;
    let (_, off) = banner(&burrow, &origin, &["-tt"], &["--", "qr=off"]).await;
    for (what, ssh) in [("no terminal", &no_pty), ("qr=off", &off)] {
        let text = ssh.stdout.text();
        assert!(!text.contains(QR_COLORS), "{what}: no QR code\n{text}");
        assert!(qr_modules(&text).is_empty(), "{what}");
    }
}
