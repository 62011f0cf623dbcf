//! Micro-benchmarks for the pure code on every proxied request: routing a
//! Host header to a tunnel name, validating a DNS label, rewriting the
//! visitor's request into the one the local app gets, and what sign-in adds
//! to a request that carries a valid session.
//!
//! Run: `cargo bench --bench micro` (add a filter such as `route` to run
//! part of it; `-- --quick` for a fast, rougher pass).

use std::hint::black_box;
use std::net::SocketAddr;

use burrow::edge::router::route;
use burrow::http::rewrite::to_origin_request;
use burrow::http::Scheme;
use burrow::identity::{Identity, LoginPolicy, Policies};
use burrow::login::assertion::Signer;
use burrow::login::opened::{Opened, Visit};
use burrow::login::tokens::{self, Sealer, Session};
use burrow::store::secret::Secret;
use burrow::subdomain::is_valid_label;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Method, Request, Version};

const DOMAIN: &str = "tunnel.example";

fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let cases = [
        ("tunnel", "happy-tiger-1a2b3c4d.tunnel.example"),
        (
            "tunnel_mixed_case_port",
            "Happy-Tiger-1a2b3c4d.Tunnel.Example:443",
        ),
        ("apex", "tunnel.example"),
        ("foreign", "www.google.com"),
        ("malformed_nested", "a.b.tunnel.example"),
    ];
    for (name, host) in cases {
        group.bench_function(name, |b| {
            b.iter(|| route(black_box(host), black_box(DOMAIN)))
        });
    }
    group.finish();
}

fn bench_is_valid_label(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_valid_label");
    let cases = [
        ("typical", "happy-tiger-1a2b3c4d"),
        (
            "max_len_63",
            "a123456789b123456789c123456789d123456789e123456789f123456789xyz",
        ),
        ("invalid_upper", "Happy-Tiger"),
    ];
    for (name, label) in cases {
        group.bench_function(name, |b| b.iter(|| is_valid_label(black_box(label))));
    }
    group.finish();
}

/// What Chrome sends on a top-level navigation to a tunnel that has passed
/// the warning page, plus a spoofed `X-Forwarded-For`/`X-Real-IP` that must
/// be dropped and burrow's own cookie that must be stripped.
fn browser_request() -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri("/dashboard/settings?tab=profile&page=2")
        .version(Version::HTTP_11)
        .header("host", "happy-tiger-1a2b3c4d.tunnel.example")
        .header("connection", "keep-alive")
        .header("cache-control", "max-age=0")
        .header(
            "sec-ch-ua",
            r#""Chromium";v="130", "Google Chrome";v="130", "Not?A_Brand";v="99""#,
        )
        .header("sec-ch-ua-mobile", "?0")
        .header("sec-ch-ua-platform", r#""Linux""#)
        .header("upgrade-insecure-requests", "1")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/130.0.0.0 Safari/537.36",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
             image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
        )
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-user", "?1")
        .header("sec-fetch-dest", "document")
        .header(
            "referer",
            "https://happy-tiger-1a2b3c4d.tunnel.example/dashboard",
        )
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("accept-language", "en-GB,en;q=0.9,de;q=0.8")
        .header(
            "cookie",
            "sessionid=8f2c1a9e7b6d4c3f2a1b0c9d8e7f6a5b; csrftoken=Zx8Qw3Er5Ty7Ui9Op; \
             burrow_warned_happy-tiger-1a2b3c4d=1; theme=dark; _ga=GA1.1.123456789.1700000000",
        )
        .header("x-forwarded-for", "6.6.6.6, 10.0.0.1")
        .header("x-real-ip", "6.6.6.6")
        .body(())
        .expect("static request is valid")
}

/// The same navigation without anything burrow has to strip but hop-by-hop
/// headers (the common case once a browser has no burrow cookie).
fn plain_request() -> Request<()> {
    let mut req = browser_request();
    let headers = req.headers_mut();
    headers.remove("x-forwarded-for");
    headers.remove("x-real-ip");
    headers.insert(
        "cookie",
        http::HeaderValue::from_static(
            "sessionid=8f2c1a9e7b6d4c3f2a1b0c9d8e7f6a5b; csrftoken=Zx8Qw3Er5Ty7Ui9Op; theme=dark",
        ),
    );
    req
}

/// The rewrite as the proxy calls it for an HTTPS visitor (the one place to
/// touch if `to_origin_request`'s signature changes).
fn rewrite(req: Request<()>, visitor: SocketAddr, rewrite_host: Option<&str>) -> Request<()> {
    to_origin_request(
        req,
        black_box(visitor),
        black_box(HOST),
        black_box(rewrite_host),
        false,
        Scheme::Https,
    )
}

const HOST: &str = "happy-tiger-1a2b3c4d.tunnel.example";

fn bench_to_origin_request(c: &mut Criterion) {
    let visitor: SocketAddr = "203.0.113.7:51234".parse().expect("valid address");

    // Sanity: the benchmark measures the real rewrite, not an early exit.
    let out = rewrite(browser_request(), visitor, None);
    assert_eq!(out.headers()["x-forwarded-for"], "203.0.113.7");
    assert!(out.headers().get("x-real-ip").is_none());
    assert!(!out.headers()["cookie"]
        .to_str()
        .expect("ascii cookie")
        .contains("burrow_"));

    let mut group = c.benchmark_group("to_origin_request");
    group.bench_function("browser_spoofed_xff_burrow_cookie", |b| {
        b.iter_batched(
            browser_request,
            |req| rewrite(req, visitor, None),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("browser_plain", |b| {
        b.iter_batched(
            plain_request,
            |req| rewrite(req, visitor, None),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("browser_rewrite_host", |b| {
        b.iter_batched(
            browser_request,
            |req| rewrite(req, visitor, Some("localhost:5173")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// What the sign-in gate does for a request with a valid session, beyond
/// what every request does: find the cookie, open it (AES-256-GCM and
/// JSON), judge the policy, and make the three headers the app gets (the
/// `X-Burrow-Identity` assertion from the per-session cache). A tunnel
/// without `login=` only builds an empty policy list and asks whether it is
/// required (`no_login`).
fn bench_sign_in(c: &mut Criterion) {
    let root = Secret::from_bytes([7; 32]);
    let sealer = Sealer::new(&root);
    let signer = Signer::new(&root, "login.tunnel.example").unwrap();
    let host = "happy-tiger-1a2b3c4d.tunnel.example";
    let session = Session {
        identity: Identity {
            provider: "default".into(),
            subject: "248289761001".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice Example".into()),
            groups: vec!["eng".into(), "ops".into()],
        },
        id: tokens::random_id(),
        expires: tokens::now() + 3600,
    };
    let cookie = format!(
        "_ga=GA1.2.3; __Host-burrow_session={}; theme=dark",
        sealer.seal_session(host, &session)
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, cookie.parse().unwrap());
    let policy = LoginPolicy::parse("*@example.com,group:eng", &[]).unwrap();
    signer.assertion(host, &session); // warm the cache, as the first request does

    let mut group = c.benchmark_group("sign_in");
    // The gate's path for a request with a valid session cookie: the
    // cookie found, its visit (opened a few seconds ago), the policies
    // judged, the vouched headers handed on.
    let opened = Opened::default();
    group.bench_function("valid_session", |b| {
        b.iter(|| {
            let policies = Policies::new([policy.clone()]);
            let token = burrow::http::cookies::cookie(black_box(&headers), "__Host-burrow_session")
                .unwrap();
            let open = || Visit::open(&sealer, &signer, host, token);
            let visit = opened
                .get(black_box(host), token, tokens::now(), open)
                .unwrap();
            assert!(policies.required() && policies.allow(&visit.session.identity));
            black_box((visit.user.clone(), visit.headers.clone()))
        })
    });
    // A cookie seen for the first time (or KEEP after it was last opened).
    group.bench_function("first_request", |b| {
        b.iter(|| {
            let token = burrow::http::cookies::cookie(black_box(&headers), "__Host-burrow_session")
                .unwrap();
            black_box(Visit::open(&sealer, &signer, black_box(host), token).unwrap())
        })
    });
    group.bench_function("no_login", |b| {
        b.iter(|| {
            let policies = Policies::new([None::<LoginPolicy>, None, None].into_iter().flatten());
            black_box(policies.required())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_route,
    bench_is_valid_label,
    bench_to_origin_request,
    bench_sign_in
);
criterion_main!(benches);
