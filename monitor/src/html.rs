//! html.rs: escaping, the page frame and the security headers.
//!
//! Every value that reaches HTML goes through `esc` (text and attribute values alike: it
//! escapes the five characters that matter in both). No value is ever placed inside a
//! `<script>` or `<style>` element or an event-handler attribute; the page's script is a static
//! file and receives data as JSON through fetch(), never through the markup.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The policy: only this server's script and style; no inline script or style attribute, no
/// plugin, no framing, forms and fetches to this server only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// esc makes any text safe as HTML text or as a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
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

/// The pages in the navigation bar: path and title.
pub const PAGES: &[(&str, &str)] = &[
    ("/activity", "Activity"),
    ("/changes", "Change log"),
    ("/health", "Health & pipeline"),
    ("/analytics", "Analytics"),
    ("/migration", "Trigger migration"),
];

/// page wraps a body in the common frame: navigation, the database picker, the script. `data`
/// is a small set of attributes for the script (each value escaped here).
pub fn page(
    title: &str,
    path: &str,
    targets: &[String],
    db: usize,
    refresh_ms: u64,
    body: &str,
) -> String {
    let mut nav = String::new();
    for (p, t) in PAGES {
        let cur = if *p == path { " class=\"current\"" } else { "" };
        nav.push_str(&format!("<a href=\"{p}?db={db}\"{cur}>{}</a>", esc(t)));
    }
    let mut picker = String::from(
        "<form method=\"get\" class=\"dbpick\"><label>database <select name=\"db\" id=\"dbpick\">",
    );
    for (i, name) in targets.iter().enumerate() {
        let sel = if i == db { " selected" } else { "" };
        picker.push_str(&format!(
            "<option value=\"{i}\"{sel}>{}</option>",
            esc(name)
        ));
    }
    picker.push_str("</select></label><noscript><button>go</button></noscript></form>");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · activity_log</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\
<body data-page=\"{}\" data-db=\"{db}\" data-refresh-ms=\"{refresh_ms}\">\
<header><span class=\"brand\">activity_log</span><nav>{nav}</nav>{picker}</header>\
<main>{body}</main><script src=\"/static/app.js\"></script></body></html>\n",
        esc(title),
        esc(path),
    )
}

/// security_headers adds the policy and its companions to every response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("plain ü"), "plain ü");
    }
}
