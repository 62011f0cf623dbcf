//! The pages burrow answers with itself: landing, 400, 404, 502, 504.
//!
//! Each page is small self-contained HTML for browsers (no external assets:
//! the server may have no internet) and plain text for everything else,
//! with the same safety headers on both.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use hyper::{HeaderMap, Response, StatusCode};

use super::Body;

/// One block of a page.
pub enum Block {
    Text(String),
    /// A command the reader may copy.
    Code(String),
    /// A link the reader may follow.
    Link {
        text: String,
        href: String,
    },
    /// A button that POSTs `fields` (hidden) to `action`.
    Form {
        action: String,
        fields: Vec<(String, String)>,
        button: String,
    },
}

/// A generated page before it is rendered for the client.
pub struct Page {
    pub status: StatusCode,
    pub title: String,
    pub blocks: Vec<Block>,
    /// Why burrow answered, in words for the tunnel's owner (their request
    /// log); `None` when there is nothing to explain.
    pub why: Option<String>,
    /// Fields an API client (`Accept: application/json`) gets besides
    /// `status`, `error` (the title) and `message` (the text).
    pub fields: Vec<(&'static str, serde_json::Value)>,
}

impl Page {
    pub fn new(status: StatusCode, title: impl Into<String>) -> Self {
        Page {
            status,
            title: title.into(),
            blocks: Vec::new(),
            why: None,
            fields: Vec::new(),
        }
    }

    /// A field for the JSON rendering.
    pub fn field(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    /// The reason the tunnel's owner sees under this request's log line.
    pub fn why(mut self, why: impl Into<String>) -> Self {
        self.why = Some(why.into());
        self
    }

    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.blocks.push(Block::Text(text.into()));
        self
    }

    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.blocks.push(Block::Code(code.into()));
        self
    }

    pub fn link(mut self, text: impl Into<String>, href: impl Into<String>) -> Self {
        let (text, href) = (text.into(), href.into());
        self.blocks.push(Block::Link { text, href });
        self
    }

    /// A button POSTing `fields` to `action`.
    pub fn form(
        mut self,
        action: impl Into<String>,
        fields: Vec<(String, String)>,
        button: impl Into<String>,
    ) -> Self {
        self.blocks.push(Block::Form {
            action: action.into(),
            fields,
            button: button.into(),
        });
        self
    }

    /// Renders as HTML when the client accepts it, as JSON for API clients
    /// (`Accept: application/json` without HTML), else as plain text.
    pub fn render(self, request_headers: &HeaderMap) -> Response<Body> {
        let accept = request_headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let html = accept.contains("text/html");
        let json = !html && accept.contains("application/json");
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", self.html())
        } else if json {
            ("application/json", self.json())
        } else {
            ("text/plain; charset=utf-8", self.plain())
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static(content_type));
        set_page_headers(headers);
        response
            .extensions_mut()
            .insert(crate::request_log::Answered(self.why));
        response
    }

    fn json(&self) -> String {
        let texts: Vec<&str> = self
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let mut value = serde_json::json!({
            "status": self.status.as_u16(),
            "error": self.title,
            "message": texts.join(" "),
        });
        for (name, field) in &self.fields {
            value[*name] = field.clone();
        }
        value.to_string()
    }

    fn plain(&self) -> String {
        let mut out = format!("{} {}\n\n", self.status.as_u16(), self.title);
        for block in &self.blocks {
            match block {
                Block::Text(text) => out.push_str(&format!("{text}\n\n")),
                Block::Code(code) => out.push_str(&format!("    {code}\n\n")),
                Block::Link { text, href } => out.push_str(&format!("{text}: {href}\n\n")),
                Block::Form { action, button, .. } => {
                    out.push_str(&format!("{button}: POST {action}\n\n"))
                }
            }
        }
        out
    }

    fn html(&self) -> String {
        let mut body = String::new();
        for block in &self.blocks {
            match block {
                Block::Text(text) => body.push_str(&format!("<p>{}</p>\n", escape(text))),
                Block::Code(code) => body.push_str(&format!("<pre>{}</pre>\n", escape(code))),
                Block::Link { text, href } => body.push_str(&format!(
                    "<p><a href=\"{}\">{}</a></p>\n",
                    escape(href),
                    escape(text)
                )),
                Block::Form {
                    action,
                    fields,
                    button,
                } => body.push_str(&form_html(action, fields, button)),
            }
        }
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{status} {title}</title><style>{STYLE}</style></head>\n\
             <body><main><h1>{title}</h1>\n{body}<footer>burrow</footer></main></body></html>\n",
            status = self.status.as_u16(),
            title = escape(&self.title),
        )
    }
}

fn form_html(action: &str, fields: &[(String, String)], button: &str) -> String {
    let inputs: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\">{inputs}<button type=\"submit\" id=\"submit\">{}</button></form>\n",
        escape(action),
        escape(button)
    )
}

const STYLE: &str =
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:40rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:8px;\
box-shadow:0 1px 4px #0002}h1{font-size:1.4rem;margin-top:0}\
pre{background:#1d2330;color:#e8eaf0;padding:.75rem 1rem;border-radius:6px;overflow-x:auto}\
footer{margin-top:2rem;color:#8a90a0;font-size:.85rem}";

/// The request headers [`Page::render`] looks at, copied out of a request
/// that is about to be consumed.
pub fn negotiation_headers(request_headers: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(accept) = request_headers.get(ACCEPT) {
        headers.insert(ACCEPT, accept.clone());
    }
    headers
}

/// Headers every generated page carries.
pub fn set_page_headers(headers: &mut HeaderMap) {
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "referrer-policy",
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
}

/// A redirect to `location` (the 301 from :80 to HTTPS, the sign-in's
/// 302s), with a line of text saying where for a client that does not
/// follow it.
pub fn redirect(status: StatusCode, location: HeaderValue) -> Response<Body> {
    let text = format!("Moved to {}\n", location.to_str().unwrap_or_default());
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    set_page_headers(headers);
    response
}

/// A JSON answer of the operator's endpoints (stats, admin API, dashboard
/// data): never cached, never sniffed.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_text(status, json_body(value))
}

/// The text of a [`json`] answer (the fuzz target `render` checks it).
/// Visitors' strings are in it (the inspector's paths, headers, bodies):
/// controls (DEL and C1 too) and bidi/format characters are `\uXXXX`
/// escapes, as in the request log's JSON lines, so the answer is safe on a
/// terminal (`curl`) and decodes to the same values.
pub fn json_body(value: &impl serde::Serialize) -> String {
    crate::escape::json_safe(&serde_json::to_string(value).expect("JSON answers serialize"))
}

/// [`json`] for a body already serialized.
pub fn json_text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(full(body))
        .expect("static response parts are valid")
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Minimal HTML escaping for text we put into pages (host names, paths).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The bare domain: what this server is and how to use it.
pub fn landing(domain: &str, connect: &str) -> Page {
    Page::new(StatusCode::OK, format!("burrow tunnels at {domain}"))
        .text("This server gives the app on your computer a public HTTPS URL, with nothing to install: just SSH.")
        .text("Start your app (say on port 3000), then run:")
        .code(connect)
        .text("The URL appears in your terminal. Press Ctrl+C there to close the tunnel.")
}

pub fn not_found(host: &str) -> Page {
    Page::new(StatusCode::NOT_FOUND, "No tunnel here")
        .text(format!("There is no live tunnel at {host}."))
        .text("Tunnels exist only while their SSH connection is open: if you own it, reconnect and use the new URL.")
}

pub fn foreign_host(domain: &str) -> Page {
    Page::new(StatusCode::BAD_REQUEST, "Unknown host").text(format!(
        "This server only answers for {domain} and its subdomains."
    ))
}

pub fn bad_request(why: &str) -> Page {
    Page::new(StatusCode::BAD_REQUEST, "Bad request").text(why.to_string())
}

/// `ssh_said`: the client's reason for refusing the channel (OpenSSH
/// sends its connect() error, e.g. `Connection refused`). The server never
/// learns the local address behind `-R`, so the reason names the forward.
pub fn local_app_down(host: &str, port_hint: &str, ssh_said: &str) -> Page {
    Page::new(StatusCode::BAD_GATEWAY, "Nothing answers on the local port")
        .text(format!("The tunnel {host} is up, but nothing answers on the local port it forwards to ({port_hint})."))
        .text("If this is your tunnel: start your app, or check the port you gave after -R.")
        .why(format!(
            "your local app refused the connection (ssh said: {ssh_said}): is it running on the local port of {port_hint}?"
        ))
}

pub fn local_app_failed(host: &str, error: &str) -> Page {
    Page::new(StatusCode::BAD_GATEWAY, "The local app did not answer")
        .text(format!("The tunnel {host} is up, but the app behind it closed the connection without a valid HTTP response."))
        .why(format!("your local app closed the connection without a valid HTTP response ({error})"))
}

/// A cluster node holding the tunnel could not be reached (`why`).
pub fn node_unreachable(node: &str, why: &str) -> Page {
    Page::new(
        StatusCode::BAD_GATEWAY,
        "The tunnel's server cannot be reached",
    )
    .text(format!(
        "This tunnel is served by node {node} of this service, which does not answer now: {why}."
    ))
    .text("Try again in a few seconds: its client reconnects to another node if that one is gone.")
}

/// The cluster cannot say where a tunnel is right now (its shared
/// directory is unreachable).
pub fn directory_down(host: &str) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "The tunnel cannot be found right now",
    )
    .text(format!(
        "This server cannot look up {host} at the moment: its directory is unreachable."
    ))
    .text("Try again in a few seconds.")
}

/// Every client of the tunnel was on a node that is gone: they are
/// reconnecting elsewhere.
pub fn tunnel_moving(host: &str) -> Page {
    Page::new(StatusCode::SERVICE_UNAVAILABLE, "The tunnel is moving")
        .text(format!(
            "The server that held {host} went away; its client is reconnecting to another one."
        ))
        .text("Try again in a few seconds.")
}

pub fn channel_timeout(host: &str, limit: std::time::Duration) -> Page {
    let limit = crate::limits::human(limit);
    Page::new(StatusCode::GATEWAY_TIMEOUT, "The tunnel did not answer")
        .text(format!("The SSH client behind {host} did not open a connection to its local app within {limit} (stream-open-timeout)."))
        .why(format!("your ssh client did not open a connection to the local app within {limit} (stream-open-timeout)"))
}

pub fn too_large(limit: u64) -> Page {
    Page::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
        .text(format!(
            "This server accepts request bodies up to {limit} bytes (max-body-size)."
        ))
        .why(format!(
            "request body larger than {} (max-body-size): not sent to your app",
            crate::limits::human_bytes(limit)
        ))
}

/// The visitor's request body broke off malformed (`error`, e.g. an
/// invalid chunk size): the visitor's fault, not the app's.
pub fn malformed_body(error: &str) -> Page {
    Page::new(StatusCode::BAD_REQUEST, "Malformed request body")
        .text("The body of this request could not be read: it is not valid HTTP.")
        .code(error.to_string())
        .why(format!(
            "the visitor sent a malformed request body ({error}): answered 400, the request to your app was cancelled"
        ))
}

pub fn response_too_large(host: &str, limit: u64) -> Page {
    Page::new(StatusCode::BAD_GATEWAY, "Response too large")
        .text(format!("The app behind {host} sent a response larger than this server relays ({limit} bytes, max-body-size)."))
        .why(format!(
            "your app's response is larger than {} (max-body-size, from its Content-Length): not relayed",
            crate::limits::human_bytes(limit)
        ))
}

pub fn request_idle(host: &str, idle: std::time::Duration) -> Page {
    let idle = crate::limits::human(idle);
    Page::new(StatusCode::GATEWAY_TIMEOUT, "The local app stopped answering")
        .text(format!(
            "No bytes moved between you and the app behind {host} for {idle} (request-idle-timeout), so the request was cancelled."
        ))
        .why(format!("your app sent nothing for {idle} (request-idle-timeout): request cancelled"))
}

/// A visitor limit refused the request.
pub fn limited(status: StatusCode, refusal: &crate::limits::Refusal) -> Page {
    if matches!(refusal.limit, "transfer" | "requests") {
        return quota_used_up(status, refusal);
    }
    let title = if status == StatusCode::SERVICE_UNAVAILABLE {
        "Tunnel busy"
    } else {
        "Too many requests"
    };
    // Wrong passwords are counted per visitor too.
    let who = if refusal.limit.contains("visitor") || refusal.limit == "auth-attempts-rate" {
        "this visitor"
    } else {
        "your tunnel"
    };
    let mut page = Page::new(status, title)
        .text(refusal.message.clone())
        .why(format!(
            "rate limit for {who} ({}): {}",
            refusal.limit, refusal.message
        ));
    if let Some(secs) = refusal.retry_secs() {
        page = page.text(format!("Try again in {secs} s. (limit: {})", refusal.limit));
    }
    page
}

/// The tunnel owner's plan quota is used up until it resets.
fn quota_used_up(status: StatusCode, refusal: &crate::limits::Refusal) -> Page {
    let mut page = Page::new(status, "Quota used up")
        .text(format!(
            "Quota used up for this tunnel: {}.",
            refusal.message
        ))
        .why(format!(
            "plan quota ({}): {}",
            refusal.limit, refusal.message
        ))
        .field("limit", refusal.limit)
        .field("quota", refusal.limit);
    if let Some(secs) = refusal.retry_secs() {
        let resets = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
        page = page.field("retry_after", secs).field(
            "resets",
            humantime::format_rfc3339_seconds(resets).to_string(),
        );
    }
    page
}

/// The visitor's IP is blocked (by the operator, or for abuse).
pub fn blocked(until_utc: &str, reason: &str) -> Page {
    Page::new(StatusCode::FORBIDDEN, "Blocked")
        .text(format!("Your IP address is blocked until {until_utc}."))
        .text(format!("Reason: {reason}"))
        .why(format!(
            "this visitor's IP is blocked on this server until {until_utc} ({reason})"
        ))
}

/// A TLS-passthrough tunnel reached through burrow's own TLS (a Host header
/// that does not match the SNI): only the app's TLS may serve it.
pub fn misdirected(host: &str) -> Page {
    Page::new(StatusCode::MISDIRECTED_REQUEST, "Misdirected request").text(format!(
        "{host} serves its own TLS certificate; connect to it with that name in TLS (SNI)."
    ))
    .why("tls=passthrough: the request came through burrow's TLS under another name, so it was not relayed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_headers_set() {
        let mut req = HeaderMap::new();
        req.insert(ACCEPT, HeaderValue::from_static("text/html,*/*"));
        let page = not_found("<script>x</script>.example").render(&req);
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        assert!(page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    #[test]
    fn plain_text_for_non_browsers() {
        let page = landing("t.example", "ssh -R 80:localhost:3000 t.example");
        let text = page.plain();
        assert!(text.contains("    ssh -R 80:localhost:3000 t.example"));
        assert!(escape("<a href='x'>&</a>").find('<').is_none());
    }

    #[test]
    fn json_answers_escape_controls_and_bidi_characters() {
        let path = "/a\u{7f}b\u{9b}31m\u{202e}gnp.exe";
        let body = json_body(&serde_json::json!({ "path": path }));
        assert!(!body.chars().any(crate::escape::is_unsafe), "{body}");
        let back: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(back["path"], path);
    }
}
