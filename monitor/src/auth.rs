//! auth.rs: the optional token or basic-auth check in front of every route but `/healthz`.
//!
//! A token is accepted as `Authorization: Bearer T`, or once as `?token=T`, which is answered
//! with a redirect (303) to the same URL without the token, setting an HttpOnly, SameSite=Strict
//! cookie so that the page's own requests carry it: the token leaves the address bar, the
//! history and any Referer. The cookie is not `Secure`: the monitor serves plain HTTP, where a
//! browser would not send a Secure cookie back (docs/src/monitor.md, "Security"). Comparisons
//! take the same time whatever prefix matches.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const COOKIE: &str = "al_monitor_token";

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Token(String),
    /// The whole expected `Authorization` header value: `Basic base64(user:pass)`.
    Basic(String),
}

impl Auth {
    pub fn basic(user: &str, pass: &str) -> Auth {
        Auth::Basic(format!(
            "Basic {}",
            base64(format!("{user}:{pass}").as_bytes())
        ))
    }
}

/// base64 is the standard alphabet with padding (RFC 4648), for the expected basic-auth header.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// same compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| crate::pages::percent_decode(v))
    })
}

fn cookie_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

pub async fn check(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    // Liveness for a supervisor: says nothing about the trail.
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match &*auth {
        Auth::None => next.run(req).await,
        Auth::Basic(expected) => {
            if given_header.is_some_and(|g| same(g.as_bytes(), expected.as_bytes())) {
                next.run(req).await
            } else {
                let mut r = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Basic realm=\"activity_log monitor\", charset=\"UTF-8\"",
                    ),
                );
                r
            }
        }
        Auth::Token(t) => {
            let bearer = given_header
                .as_deref()
                .and_then(|g| g.strip_prefix("Bearer "))
                .is_some_and(|g| same(g.as_bytes(), t.as_bytes()));
            let cookie = cookie_token(&req).is_some_and(|c| same(c.as_bytes(), t.as_bytes()));
            let in_query = req
                .uri()
                .query()
                .and_then(query_token)
                .is_some_and(|q| same(q.as_bytes(), t.as_bytes()));
            if bearer || cookie {
                next.run(req).await
            } else if in_query {
                let path = req.uri().path().to_string();
                let rest: Vec<&str> = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("token"))
                    .collect();
                let location = if rest.is_empty() {
                    path
                } else {
                    format!("{path}?{}", rest.join("&"))
                };
                let mut r = (StatusCode::SEE_OTHER, "signed in\n").into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                // The token is only ever compared, so any byte a cookie may not hold is refused
                // at the start; what is set here is the token as given.
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"
                )) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "authentication required: send Authorization: Bearer <token>, or open the page once with ?token=<token>\n",
                )
                    .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_examples() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(Auth::basic("u", "p"), Auth::Basic("Basic dTpw".into()));
    }

    #[test]
    fn same_needs_equal_bytes() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
