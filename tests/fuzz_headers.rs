//! Property tests of `capstan::headers`: arbitrary header lists, statuses and messages in and out of the wire form.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use capstan::capstan_capnp::response;
use capstan::headers::{is_hop_by_hop, read, read_head, write};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::select;

/// Cases per property unless `PROPTEST_CASES` says otherwise: a few seconds in a debug
/// build, which is what CI runs. docs/fuzzing.md has the command for a long run.
const CI_CASES: u32 = 256;

/// The run's configuration (see `common::fuzz_config`).
fn config() -> ProptestConfig {
    common::fuzz_config(CI_CASES)
}

// ---- The oracle: RFC 9110, written out independently of the code under test. ----

/// Hop-by-hop names that hold whatever the message says (RFC 9110 section 7.6.1, plus the
/// pre-standard `keep-alive` and `proxy-connection`).
const FIXED_HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `token` of RFC 9110 section 5.6.2; uppercase is allowed, the reader lowercases it.
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// A field value may hold any byte but the controls (HTAB excepted): CR, LF and NUL would
/// split or end the line on HTTP/1.1, and the others are invalid (RFC 9110 section 5.5).
fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The names a message's `Connection` headers make hop-by-hop, with the fixed ones;
/// never `host`, which routes the message.
///
/// A `Connection` value with bytes outside visible ASCII is not a token list and names
/// nothing; the code under test reads it the same way (`HeaderValue::to_str`).
fn hop_by_hop_names<'a>(connection_values: impl Iterator<Item = &'a [u8]>) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = FIXED_HOP_BY_HOP.iter().map(|n| n.to_string()).collect();
    for value in connection_values {
        if value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            let value = std::str::from_utf8(value).expect("visible ASCII is UTF-8");
            names.extend(value.split(',').map(|t| t.trim().to_ascii_lowercase()));
        }
    }
    names.remove("host");
    names
}

/// Values by name, in order: what a header map means. Order across different names
/// carries no meaning (RFC 9110 section 5.3), and `HeaderMap` does not keep it.
type ByName = BTreeMap<String, Vec<Vec<u8>>>;

fn by_name<'a>(pairs: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) -> ByName {
    let mut map = ByName::new();
    for (name, value) in pairs {
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(value.as_bytes().to_vec());
    }
    map
}

// ---- Generators. ----

/// Header names as peers send them: valid tokens, uppercase, hop-by-hop names, names a
/// `Connection` header lists, and bytes that are no token at all.
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_name(),
        // Letters mixed with bytes a token must not hold.
        1 => prop::collection::vec(
            select(&[b'a', b'B', b'-', b' ', b':', b'\n', b'\r', b'\0', b'"', 0x7f, 0xc3, 0xff][..]),
            0..8
        ),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

/// Names HTTP allows, in any case, hop-by-hop or not.
fn valid_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9!#$%&'*+.^_`|~-]{1,12}".prop_map(String::into_bytes),
        "[A-Za-z0-9-]{1,12}".prop_map(String::into_bytes),
        select(
            &[
                "connection",
                "Connection",
                "keep-alive",
                "proxy-connection",
                "proxy-authenticate",
                "proxy-authorization",
                "te",
                "TE",
                "trailer",
                "transfer-encoding",
                "Transfer-Encoding",
                "upgrade",
                "x-private",
                "X-Private",
                "x-hop",
                "set-cookie",
                "content-type",
                "host",
            ][..]
        )
        .prop_map(|n| n.as_bytes().to_vec()),
    ]
}

/// Header values: arbitrary bytes (control bytes and non-UTF-8 included), visible ASCII,
/// and `Connection`-style lists naming some of the names above.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_value(),
        1 => prop::collection::vec(any::<u8>(), 0..16),
        1 => prop::collection::vec(
            select(&[b'v', b' ', b'\t', b'\n', b'\r', b'\0', 0x7f, 0x80, 0xff][..]),
            0..6
        ),
    ]
}

/// Values HTTP allows: visible ASCII, obs-text, and `Connection`-style lists.
fn valid_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~\t]{0,16}".prop_map(String::into_bytes),
        prop::collection::vec(select(&[b'v', b' ', b'\t', 0x80, 0xe9, 0xff][..]), 0..6),
        prop::collection::vec(
            select(
                &[
                    "x-private",
                    " X-Private ",
                    "x-hop",
                    "keep-alive",
                    "close",
                    "set-cookie",
                    "content-type",
                    "",
                    "\u{e9}",
                ][..]
            ),
            0..4
        )
        .prop_map(|tokens| tokens.join(",").into_bytes()),
    ]
}

/// A header entry as it may stand on the wire; `None` leaves the field unset (null).
#[derive(Debug, Clone)]
struct WireHeader {
    name: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Lists that are all valid half of the time, so that what `read` keeps gets checked as
/// often as what it refuses.
fn wire_headers() -> impl Strategy<Value = Vec<WireHeader>> {
    let valid = (valid_name(), valid_value()).prop_map(|(name, value)| WireHeader {
        name: Some(name),
        value: Some(value),
    });
    let any = (
        prop::option::weighted(0.95, name()),
        prop::option::weighted(0.95, value()),
    )
        .prop_map(|(name, value)| WireHeader { name, value });
    prop_oneof![
        prop::collection::vec(valid, 0..12),
        prop::collection::vec(any, 0..12),
    ]
}

/// Mostly valid lists, so that the status, not the headers, decides most cases.
fn mostly_valid_headers() -> impl Strategy<Value = Vec<WireHeader>> {
    prop_oneof![
        4 => prop::collection::vec(
            ("[a-z-]{1,8}", "[ -~]{0,8}").prop_map(|(name, value)| WireHeader {
                name: Some(name.into_bytes()),
                value: Some(value.into_bytes()),
            }),
            0..4
        ),
        1 => wire_headers(),
    ]
}

/// A `Response` with `status` and `headers` set through the capnp builders, the way a
/// peer in any language could write it, invalid names and values included.
fn wire_response(
    status: u16,
    headers: &[WireHeader],
) -> capnp::message::Builder<capnp::message::HeapAllocator> {
    let mut message = capnp::message::Builder::new_default();
    let mut root = message.init_root::<response::Builder<'_>>();
    root.set_status(status);
    let mut list = root.init_headers(headers.len() as u32);
    for (i, header) in headers.iter().enumerate() {
        let mut entry = list.reborrow().get(i as u32);
        if let Some(name) = &header.name {
            entry.set_name(capnp::text::Reader::from(&name[..]));
        }
        if let Some(value) = &header.value {
            entry.set_value(value);
        }
    }
    message
}

/// What `read` must make of `headers`: `None` when it must refuse them.
fn expected_read(headers: &[WireHeader]) -> Option<ByName> {
    let mut pairs = Vec::new();
    for header in headers {
        let name = header.name.as_deref().unwrap_or_default();
        let value = header.value.as_deref().unwrap_or_default();
        if !is_token(name) || !is_field_value(value) {
            return None;
        }
        pairs.push((name.to_ascii_lowercase(), value));
    }
    let connection = pairs
        .iter()
        .filter(|(name, _)| name == b"connection")
        .map(|(_, value)| *value);
    let hop = hop_by_hop_names(connection);
    let mut map = ByName::new();
    for (name, value) in &pairs {
        let name = String::from_utf8(name.clone()).expect("a token is ASCII");
        if !hop.contains(&name) {
            map.entry(name).or_default().push(value.to_vec());
        }
    }
    Some(map)
}

/// The map a sender holds: only what `http` lets into a `HeaderMap`.
fn header_map(entries: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in entries {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

proptest! {
    #![proptest_config(config())]

    /// What a sender writes, a receiver reads back: the end-to-end headers, each name's
    /// values in order, repeats kept; nothing hop-by-hop crosses.
    #[test]
    fn write_then_read_keeps_exactly_the_end_to_end_headers(
        entries in prop::collection::vec((name(), value()), 0..12),
    ) {
        let map = header_map(&entries);
        let mut message = capnp::message::Builder::new_default();
        let mut root = message.init_root::<response::Builder<'_>>();
        write(&map, &[], |n| root.reborrow().init_headers(n));
        let read_back = read(root.into_reader().get_headers().unwrap()).unwrap();

        let hop = hop_by_hop_names(map.get_all("connection").iter().map(HeaderValue::as_bytes));
        let end_to_end: Vec<_> = map.iter().filter(|(name, _)| !hop.contains(name.as_str())).collect();
        // Nothing is dropped on the way back, so even the order across names holds.
        prop_assert_eq!(read_back.iter().collect::<Vec<_>>(), end_to_end);
    }

    /// `extra` headers (the gateway's `X-Forwarded-*`) follow the map's, after its values
    /// of the same name.
    #[test]
    fn write_appends_extra_headers_after_the_map(
        entries in prop::collection::vec((name(), value()), 0..8),
        extra in prop::collection::vec(
            (select(&["x-forwarded-for", "x-forwarded-proto", "x-extra"][..]), "[ -~]{0,8}"),
            0..4,
        ),
    ) {
        let mut map = header_map(&entries);
        // An extra name the map's `Connection` lists would be dropped on read; the callers
        // never send one, so leave such lists out.
        map.remove("connection");
        let extra: Vec<(&str, &[u8])> = extra.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let mut message = capnp::message::Builder::new_default();
        let mut root = message.init_root::<response::Builder<'_>>();
        write(&map, &extra, |n| root.reborrow().init_headers(n));
        let read_back = read(root.into_reader().get_headers().unwrap()).unwrap();

        let hop = hop_by_hop_names(std::iter::empty());
        let mut expected = by_name(map.iter().filter(|(name, _)| !hop.contains(name.as_str())));
        for (name, value) in &extra {
            expected.entry(name.to_string()).or_default().push(value.to_vec());
        }
        prop_assert_eq!(by_name(read_back.iter()), expected);
    }

    /// `read` of any list never panics; it refuses a list with any invalid name or value,
    /// and otherwise keeps exactly the valid end-to-end headers, each name's values in order.
    #[test]
    fn read_refuses_invalid_lists_and_keeps_only_end_to_end_headers(headers in wire_headers()) {
        let message = wire_response(200, &headers);
        let list = message.get_root_as_reader::<response::Reader<'_>>().unwrap().get_headers().unwrap();
        match (read(list), expected_read(&headers)) {
            (Err(_), None) => {}
            (Ok(map), Some(expected)) => {
                for name in map.keys() {
                    prop_assert!(!is_hop_by_hop(name, &map), "{name} is hop-by-hop");
                    prop_assert!(!FIXED_HOP_BY_HOP.contains(&name.as_str()), "{name} is hop-by-hop");
                }
                prop_assert_eq!(by_name(map.iter()), expected);
            }
            (Ok(map), None) => prop_assert!(false, "accepted an invalid list as {map:?}"),
            (Err(err), Some(_)) => prop_assert!(false, "refused a valid list: {err}"),
        }
    }

    /// `is_hop_by_hop` is the fixed list plus the names `Connection` lists, in any case.
    #[test]
    fn is_hop_by_hop_is_the_fixed_list_plus_connection(
        name in name(),
        entries in prop::collection::vec((name(), value()), 0..8),
    ) {
        let Ok(name) = HeaderName::from_bytes(&name) else {
            return Ok(());
        };
        let map = header_map(&entries);
        let hop = hop_by_hop_names(map.get_all("connection").iter().map(HeaderValue::as_bytes));
        prop_assert_eq!(is_hop_by_hop(&name, &map), hop.contains(name.as_str()));
    }

    /// `read_head` never panics, refuses invalid headers and statuses below 100, and
    /// accepts 100 to 599 with valid headers. What it does with 600 to 999 is the next
    /// property's business.
    #[test]
    fn read_head_checks_status_and_headers(
        status in prop_oneof![any::<u16>(), 0u16..1000],
        headers in mostly_valid_headers(),
    ) {
        let message = wire_response(status, &headers);
        let wire = message.get_root_as_reader::<response::Reader<'_>>().unwrap();
        let result = read_head(wire);
        match expected_read(&headers) {
            None => prop_assert!(result.is_err(), "invalid headers accepted: {result:?}"),
            Some(_) if status < 100 => prop_assert!(result.is_err(), "status {status} accepted"),
            Some(expected) if status <= 599 => {
                let (got_status, map) = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got_status.as_u16(), status);
                prop_assert_eq!(by_name(map.iter()), expected);
            }
            Some(_) => {}
        }
    }

    /// The project's rule: a status outside 100 to 599 is refused (the visitor gets 502).
    #[test]
    fn read_head_accepts_exactly_statuses_100_to_599_with_valid_headers(
        status in prop_oneof![any::<u16>(), 0u16..1000],
        headers in mostly_valid_headers(),
    ) {
        let message = wire_response(status, &headers);
        let wire = message.get_root_as_reader::<response::Reader<'_>>().unwrap();
        let accepted = read_head(wire).is_ok();
        let valid = (100..=599).contains(&status) && expected_read(&headers).is_some();
        prop_assert_eq!(accepted, valid, "status {}", status);
    }

    /// `read_head` of any bytes taken as a message never panics: a peer controls every
    /// pointer in it, not only the fields' contents.
    #[test]
    fn read_head_of_arbitrary_words_never_panics(
        words in prop::collection::vec(any::<u64>(), 0..48),
        segments in 1u32..3,
    ) {
        let mut frame = Vec::new();
        frame.extend_from_slice(&(segments - 1).to_le_bytes());
        // Split the words between the segments; a second segment gets what the first leaves.
        let first = words.len() as u32 / segments;
        frame.extend_from_slice(&first.to_le_bytes());
        if segments == 2 {
            frame.extend_from_slice(&(words.len() as u32 - first).to_le_bytes());
            frame.extend_from_slice(&[0; 4]);
        }
        for word in &words {
            frame.extend_from_slice(&word.to_le_bytes());
        }
        let message = capnp::serialize::read_message(&mut &frame[..], capstan::transport::reader_options())
            .expect("the framing is valid");
        if let Ok(wire) = message.get_root::<response::Reader<'_>>() {
            let _ = read_head(wire);
        }
    }
}

// ---- Regressions: fixed inputs that properties found. ----

/// Found by `read_head_accepts_exactly_statuses_100_to_599_with_valid_headers`: the
/// gateway passes 600 (and anything up to 999) to the visitor instead of answering 502.
#[test]
fn a_status_of_600_is_refused() {
    for status in [600, 999] {
        let message = wire_response(status, &[]);
        let wire = message
            .get_root_as_reader::<response::Reader<'_>>()
            .unwrap();
        assert!(read_head(wire).is_err(), "status {status} accepted");
    }
}
