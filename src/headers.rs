//! HTTP headers on the wire: `List(Header)` to and from `http::HeaderMap`, minus hop-by-hop ones.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use http::StatusCode;

use crate::capstan_capnp::header as wire;
use crate::capstan_capnp::response;

/// Headers that describe one connection rather than the message (RFC 9110 section 7.6.1),
/// plus the pre-standard `keep-alive` and `proxy-connection`. Each hop sets its own.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// True when `name` belongs to one hop only: the fixed list, `upgrade`, or a name the
/// message's own `Connection` header lists (except `host`, which routes the message and
/// so is never one hop's).
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || name == header::UPGRADE
        || name != header::HOST
            && headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Writes the end-to-end headers of `headers`, plus `extra`, into a new list in `list`.
///
/// Repeated names stay repeated, in their order.
pub fn write<'b>(
    headers: &HeaderMap,
    extra: &[(&str, &[u8])],
    init: impl FnOnce(u32) -> capnp::struct_list::Builder<'b, wire::Owned>,
) {
    let kept: Vec<(&str, &[u8])> = headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name, headers))
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let mut list = init((kept.len() + extra.len()) as u32);
    for (i, (name, value)) in kept.into_iter().chain(extra.iter().copied()).enumerate() {
        let mut entry = list.reborrow().get(i as u32);
        entry.set_name(name);
        entry.set_value(value);
    }
}

/// Reads a header list from the wire into a map, refusing names or values that HTTP
/// forbids, and dropping hop-by-hop headers a careless peer may have sent.
pub fn read(list: capnp::struct_list::Reader<'_, wire::Owned>) -> capnp::Result<HeaderMap> {
    let mut map = HeaderMap::with_capacity(list.len() as usize);
    for entry in list {
        let name = entry.get_name()?.to_str()?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| capnp::Error::failed(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_bytes(entry.get_value()?)
            .map_err(|_| capnp::Error::failed(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    let hop: Vec<HeaderName> = map
        .keys()
        .filter(|name| is_hop_by_hop(name, &map))
        .cloned()
        .collect();
    for name in hop {
        map.remove(name);
    }
    Ok(map)
}

/// Reads a `Response`'s status and headers, refusing a status outside 100-599 (RFC 9110
/// section 15 defines no others, and clients treat them in unknown ways).
pub fn read_head(response: response::Reader<'_>) -> capnp::Result<(StatusCode, HeaderMap)> {
    let code = response.get_status();
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|_| (100..=599).contains(&code))
        .ok_or_else(|| capnp::Error::failed(format!("bad status {code}: not in 100-599")))?;
    Ok((status, read(response.get_headers()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_repeats_and_drops_hop_by_hop() {
        let mut map = HeaderMap::new();
        map.append("set-cookie", HeaderValue::from_static("a=1"));
        map.append("set-cookie", HeaderValue::from_static("b=2"));
        map.append(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        map.append("x-private", HeaderValue::from_static("hop"));
        map.append("transfer-encoding", HeaderValue::from_static("chunked"));
        map.append("content-type", HeaderValue::from_static("text/plain"));

        let mut message = capnp::message::Builder::new_default();
        let mut builder = message.init_root::<response::Builder<'_>>();
        write(&map, &[("x-forwarded-proto", b"http")], |n| {
            builder.reborrow().init_headers(n)
        });
        let read_back = read(builder.into_reader().get_headers().unwrap()).unwrap();

        let cookies: Vec<_> = read_back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(read_back["content-type"], "text/plain");
        assert_eq!(read_back["x-forwarded-proto"], "http");
        for gone in ["connection", "x-private", "transfer-encoding"] {
            assert!(!read_back.contains_key(gone), "{gone} should be dropped");
        }
    }
}
