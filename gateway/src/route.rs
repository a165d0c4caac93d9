//! Routing: the visitor's `Host` to a tunnel, the tunnel connect endpoint, or nothing.

use std::rc::Rc;

use http::header::HOST;
use http::Request;

use crate::registry::{Lookup, Tunnel};
use crate::State;

/// Where one request goes.
pub(crate) enum Route {
    /// A tunnel client opening its WebSocket.
    Connect,
    Tunnel(Rc<Tunnel>),
    /// The name belongs to a tunnel that is reconnecting.
    Offline(String),
    /// No tunnel has this host.
    Unknown(String),
}

/// The host a request is for, lowercase, without port or trailing dot.
///
/// An absolute-form target (`GET http://host/x`) names it, whatever `Host` says (RFC 9112
/// section 3.2.2): so a request for a foreign host is never routed to a tunnel by its
/// `Host` header, and the gateway is no open proxy.
pub(crate) fn host_of<B>(request: &Request<B>) -> String {
    let raw = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    strip_port(raw).trim_end_matches('.').to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080".
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

pub(crate) fn route<B>(state: &State, request: &Request<B>) -> Route {
    let host = host_of(request);
    let suffix = &state.options.domain;
    let label = host
        .strip_suffix(suffix.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|label| !label.is_empty());
    if let Some(label) = label {
        return match state.registry.borrow_mut().lookup(label) {
            Lookup::Live(tunnel) => Route::Tunnel(tunnel),
            Lookup::Held => Route::Offline(label.to_owned()),
            Lookup::Unknown => Route::Unknown(host),
        };
    }
    if request.uri().path() == capstan::CONNECT_PATH {
        return Route::Connect;
    }
    if state.options.bare_to_single_tunnel {
        if let Some(tunnel) = state.registry.borrow().single() {
            return Route::Tunnel(tunnel);
        }
    }
    Route::Unknown(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> String {
        host_of(&Request::get("/").header(HOST, h).body(()).unwrap())
    }

    #[test]
    fn an_absolute_target_names_the_host_whatever_host_says() {
        let request = Request::get("http://evil.example/x")
            .header(HOST, "demo.localhost")
            .body(())
            .unwrap();
        assert_eq!(host_of(&request), "evil.example");
    }

    #[test]
    fn hosts_lose_port_case_and_dot() {
        assert_eq!(host("Demo.LocalHost:8080"), "demo.localhost");
        assert_eq!(host("demo.localhost."), "demo.localhost");
        assert_eq!(host("[::1]:8080"), "::1");
        assert_eq!(host("127.0.0.1"), "127.0.0.1");
    }
}
