//! host.rs: the Host header check against DNS rebinding. A web page on an attacker's site can
//! make its own name resolve to 127.0.0.1 and then read the monitor as a same-origin page; its
//! requests then carry the attacker's name in Host. So a request is answered only when Host is
//! a loopback name or address, the address the monitor listens on, any IP address when it
//! listens on all interfaces (a rebinding attack always uses a name), or a name given with
//! `--allowed-host`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub struct Hosts {
    pub listen: SocketAddr,
    /// Names given with --allowed-host, lower case.
    pub allowed: Vec<String>,
}

impl Hosts {
    /// allows says whether a Host header value (name or address, with or without a port) is one
    /// this monitor answers to.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // Strip the port: [v6]:port, name:port or v4:port.
        let name = if let Some(r) = host.strip_prefix('[') {
            match r.split_once(']') {
                Some((a, _)) => a.to_string(),
                None => return false,
            }
        } else {
            match host.rsplit_once(':') {
                Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
                Some(_) => return false,
                None => host.clone(),
            }
        };
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified();
        }
        self.allowed.contains(&name)
    }
}

pub async fn check(State(hosts): State<Arc<Hosts>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(str::to_string);
    match host {
        Some(h) if hosts.allows(&h) => next.run(req).await,
        Some(h) => (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this monitor does not answer to the name \"{}\" (a defence against DNS rebinding)\n\
                 Hint: open it as http://{}/, or start it with --allowed-host NAME for a name that resolves to it.\n",
                h.escape_default(),
                hosts.listen
            ),
        )
            .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            "the request has no Host header\nHint: send Host, as HTTP/1.1 requires.\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listen_address_and_allowed_names_only() {
        let h = Hosts {
            listen: "127.0.0.1:8080".parse().unwrap(),
            allowed: vec!["monitor.internal".into()],
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
            "monitor.internal:8080",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:8080",
            "[::1",
            "localhost:x",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let any = Hosts {
            listen: "0.0.0.0:8080".parse().unwrap(),
            allowed: vec![],
        };
        assert!(any.allows("10.0.0.1:8080"));
        assert!(!any.allows("evil.example:8080"));
    }
}
