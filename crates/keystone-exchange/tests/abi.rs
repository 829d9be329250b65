//! The exchange is an ABI: the Lua prelude's `ffi.cdef` reads these exact
//! offsets. A change here is a breaking change and must change the prelude
//! in the same commit (the prelude also checks at start-up).

use std::mem::{align_of, offset_of, size_of};

use keystone_exchange::{
    tls_cipher_name, tls_protocol_name, HeaderError, HttpExchange, ParamView, PeerAddr,
    ResponseHeader, TlsFacts, TLS_CIPHER_NAMES, TLS_SNI_MAX, TLS_VERSION_1_2, TLS_VERSION_1_3,
    TLS_VERSION_CLEARTEXT, TLS_VERSION_PENDING,
};
use keystone_parser::{Head, HeaderSpan, Limits, ParseStatus, Parser};
use keystone_ringbuf::Span;
use keystone_router::{Param, RouterBuilder};

#[test]
fn layout_is_pinned() {
    assert_eq!(size_of::<Span>(), 8);
    assert_eq!(size_of::<HeaderSpan>(), 16);
    assert_eq!(size_of::<ParamView>(), 24);
    assert_eq!(size_of::<ResponseHeader>(), 16);
    assert_eq!(align_of::<HttpExchange>(), 8);
    let offsets = [
        ("generation", offset_of!(HttpExchange, generation), 0),
        ("worker", offset_of!(HttpExchange, worker), 4),
        ("base", offset_of!(HttpExchange, base), 8),
        ("method", offset_of!(HttpExchange, method), 16),
        ("target", offset_of!(HttpExchange, target), 24),
        ("path", offset_of!(HttpExchange, path), 32),
        ("query", offset_of!(HttpExchange, query), 40),
        ("body", offset_of!(HttpExchange, body), 48),
        ("headers", offset_of!(HttpExchange, headers), 56),
        ("header_count", offset_of!(HttpExchange, header_count), 64),
        ("param_count", offset_of!(HttpExchange, param_count), 68),
        ("params", offset_of!(HttpExchange, params), 72),
        (
            "minor_version",
            offset_of!(HttpExchange, minor_version),
            264,
        ),
        ("body_kind", offset_of!(HttpExchange, body_kind), 266),
        ("status", offset_of!(HttpExchange, status), 268),
        (
            "response_header_count",
            offset_of!(HttpExchange, response_header_count),
            272,
        ),
        ("arena_len", offset_of!(HttpExchange, arena_len), 276),
        ("body_ptr", offset_of!(HttpExchange, body_ptr), 280),
        ("body_len", offset_of!(HttpExchange, body_len), 288),
        (
            "response_headers",
            offset_of!(HttpExchange, response_headers),
            296,
        ),
        ("arena", offset_of!(HttpExchange, arena), 1320),
        ("scratch", offset_of!(HttpExchange, scratch), 9512),
        ("peer", offset_of!(HttpExchange, peer), 17704),
        ("found", offset_of!(HttpExchange, found), 17724),
        ("upstream", offset_of!(HttpExchange, upstream), 17732),
        (
            "upstream_header_count",
            offset_of!(HttpExchange, upstream_header_count),
            17736,
        ),
        (
            "upstream_path_len",
            offset_of!(HttpExchange, upstream_path_len),
            17740,
        ),
        (
            "upstream_path",
            offset_of!(HttpExchange, upstream_path),
            17744,
        ),
        (
            "upstream_key",
            offset_of!(HttpExchange, upstream_key),
            17752,
        ),
        (
            "upstream_key_len",
            offset_of!(HttpExchange, upstream_key_len),
            17760,
        ),
        (
            "upstream_headers",
            offset_of!(HttpExchange, upstream_headers),
            17764,
        ),
        ("on_response", offset_of!(HttpExchange, on_response), 18276),
        (
            "upstream_status",
            offset_of!(HttpExchange, upstream_status),
            18280,
        ),
        (
            "upstream_response_header_count",
            offset_of!(HttpExchange, upstream_response_header_count),
            18284,
        ),
        (
            "upstream_base",
            offset_of!(HttpExchange, upstream_base),
            18288,
        ),
        (
            "upstream_response_headers",
            offset_of!(HttpExchange, upstream_response_headers),
            18296,
        ),
        (
            "upstream_peer",
            offset_of!(HttpExchange, upstream_peer),
            18304,
        ),
        (
            "body_streamed",
            offset_of!(HttpExchange, body_streamed),
            18324,
        ),
        (
            "upstream_buffer",
            offset_of!(HttpExchange, upstream_buffer),
            18328,
        ),
        (
            "upstream_body_len",
            offset_of!(HttpExchange, upstream_body_len),
            18332,
        ),
        (
            "upstream_body",
            offset_of!(HttpExchange, upstream_body),
            18336,
        ),
        ("tls", offset_of!(HttpExchange, tls), 18344),
    ];
    for (name, actual, expected) in offsets {
        assert_eq!(actual, expected, "offset of {name}");
    }
    // 18344 + 262 bytes of TLS facts, rounded up to the 8-byte alignment.
    assert_eq!(size_of::<HttpExchange>(), 18608);
}

#[test]
fn tls_facts_layout_is_pinned() {
    assert_eq!(size_of::<TlsFacts>(), 262);
    assert_eq!(align_of::<TlsFacts>(), 2);
    let offsets = [
        ("version", offset_of!(TlsFacts, version), 0),
        ("cipher", offset_of!(TlsFacts, cipher), 2),
        ("sni_len", offset_of!(TlsFacts, sni_len), 4),
        ("sni", offset_of!(TlsFacts, sni), 6),
        ("offload", offset_of!(TlsFacts, offload), 6 + TLS_SNI_MAX),
    ];
    for (name, actual, expected) in offsets {
        assert_eq!(actual, expected, "offset of TlsFacts::{name}");
    }
}

fn parse(request: &[u8], head: &mut Head) {
    let mut parser = Parser::new();
    let status = parser.parse(request, 0, &Limits::default(), head).unwrap();
    assert!(matches!(status, ParseStatus::Complete));
}

#[test]
fn bind_exposes_views_and_expire_invalidates() {
    let request = b"GET /users/42?a=1 HTTP/1.1\r\nHost: x\r\nX-Token: t0k\r\n\r\n";
    let mut head = Head::new();
    parse(request, &mut head);
    let mut builder = RouterBuilder::new();
    builder.add("GET /users/{id}", 1).unwrap();
    let router = builder.build();
    let matched = router
        .lookup(b"GET", b"/users/42", head.path.offset)
        .unwrap();
    let mut ex = HttpExchange::new_boxed(3);
    let generation = ex.generation;
    ex.bind(
        request,
        &head,
        matched.params(),
        Span::EMPTY,
        PeerAddr::NONE,
    );
    assert!(ex.is_bound());
    assert_eq!(ex.worker, 3);
    assert_eq!(ex.request_bytes(ex.method), b"GET");
    assert_eq!(ex.request_bytes(ex.path), b"/users/42");
    assert_eq!(ex.request_bytes(ex.query), b"a=1");
    assert_eq!(ex.request_header(b"x-token"), Some(&b"t0k"[..]));
    assert_eq!(ex.request_header(b"absent"), None);
    assert_eq!(ex.param_index(b"id"), Some(0));
    assert_eq!(ex.request_bytes(ex.params[0].value), b"42");
    ex.expire();
    assert!(!ex.is_bound());
    assert_ne!(ex.generation, generation);
    assert_eq!(ex.request_headers().count(), 0);
    assert_eq!(ex.param_index(b"id"), None);
}

#[test]
fn bind_with_no_params() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut head = Head::new();
    parse(request, &mut head);
    let mut ex = HttpExchange::new_boxed(0);
    let params: [Param<'_>; 0] = [];
    ex.bind(request, &head, &params, Span::EMPTY, PeerAddr::NONE);
    assert_eq!(ex.query.len, 0);
    assert_eq!(ex.status, 200);
    ex.expire();
}

#[test]
fn response_headers_set_replace_add_remove() {
    let mut ex = HttpExchange::new_boxed(0);
    ex.set_header(b"Content-Type", b"text/html").unwrap();
    ex.set_header(b"content-type", b"application/json").unwrap();
    assert_eq!(ex.response_headers().count(), 1);
    assert_eq!(
        ex.response_header(b"CONTENT-TYPE"),
        Some(&b"application/json"[..])
    );
    ex.add_header(b"Set-Cookie", b"a=1").unwrap();
    ex.add_header(b"Set-Cookie", b"b=2").unwrap();
    assert_eq!(
        ex.response_headers()
            .filter(|(n, _)| *n == b"Set-Cookie")
            .count(),
        2
    );
    ex.remove_header(b"set-cookie").unwrap();
    assert_eq!(ex.response_headers().count(), 1);
}

#[test]
fn response_header_errors() {
    let cases: &[(&[u8], &[u8], HeaderError)] = &[
        (b"Bad Name", b"v", HeaderError::InvalidName),
        (b"", b"v", HeaderError::InvalidName),
        (b"X-Split", b"a\r\nInjected: 1", HeaderError::InvalidValue),
        (b"X-Nul", b"a\0", HeaderError::InvalidValue),
        (b"connection", b"close", HeaderError::Reserved),
        (b"Transfer-Encoding", b"chunked", HeaderError::Reserved),
        (b"transfer-encoding", b"identity", HeaderError::Reserved),
        (b"Date", b"today", HeaderError::Reserved),
        (b"Keep-Alive", b"timeout=5", HeaderError::Reserved),
        (b"Upgrade", b"h2c", HeaderError::Reserved),
        (b"Content-Length", b"-1", HeaderError::InvalidContentLength),
        (b"content-length", b"+5", HeaderError::InvalidContentLength),
        (b"Content-Length", b"", HeaderError::InvalidContentLength),
        (b"Content-Length", b"1 2", HeaderError::InvalidContentLength),
        (
            b"Content-Length",
            b"5, 5",
            HeaderError::InvalidContentLength,
        ),
        (b"Content-Length", b"1.5", HeaderError::InvalidContentLength),
        (b"Content-Length", b"1e3", HeaderError::InvalidContentLength),
        (
            b"Content-Length",
            b"18446744073709551616",
            HeaderError::InvalidContentLength,
        ),
        // The general value check comes first: a split stays InvalidValue.
        (b"Content-Length", b"5\r\nX: 1", HeaderError::InvalidValue),
        (b"Content-Length", b" 5", HeaderError::InvalidValue),
    ];
    for (name, value, expected) in cases {
        let mut ex = HttpExchange::new_boxed(0);
        assert_eq!(ex.set_header(name, value), Err(*expected), "{name:?}");
        assert_eq!(
            ex.response_headers().count(),
            0,
            "nothing stored for {name:?}"
        );
        assert_eq!(HeaderError::from_code(expected.code()), Some(*expected));
    }
}

#[test]
fn header_error_codes_are_stable_and_round_trip() {
    let expected = [-1, -2, -3, -4, -5, -6];
    for (err, code) in HeaderError::ALL.iter().zip(expected) {
        assert_eq!(err.code(), code, "{err:?}");
        assert_eq!(HeaderError::from_code(code), Some(*err));
        assert!(!err.message().is_empty());
    }
    assert_eq!(HeaderError::from_code(-7), None);
    assert_eq!(HeaderError::from_code(0), None);
    assert!(HeaderError::InvalidContentLength
        .message()
        .contains("Content-Length"));
}

/// Policy may declare the body's length in any case, as a string of digits;
/// it replaces an earlier one, a second one in a list is refused, and a
/// refused value leaves the earlier one in place.
#[test]
fn content_length_may_be_declared_by_policy() {
    let mut ex = HttpExchange::new_boxed(0);
    assert_eq!(ex.declared_length(), None);
    ex.set_header(b"X-Other", b"1").unwrap();
    assert_eq!(ex.declared_length(), None);
    for (name, value, length) in [
        (&b"Content-Length"[..], &b"5"[..], 5u64),
        (b"content-length", b"0", 0),
        (b"CONTENT-LENGTH", b"0042", 42),
        (b"cOnTeNt-LeNgTh", b"18446744073709551615", u64::MAX),
    ] {
        ex.set_header(name, value).unwrap();
        assert_eq!(ex.declared_length(), Some(length), "{name:?} {value:?}");
        assert_eq!(
            ex.response_headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
                .count(),
            1
        );
    }
    assert_eq!(
        ex.set_header(b"Content-Length", b"nope"),
        Err(HeaderError::InvalidContentLength)
    );
    assert_eq!(ex.declared_length(), Some(u64::MAX), "kept after a refusal");
    assert_eq!(
        ex.add_header(b"content-length", b"7"),
        Err(HeaderError::InvalidContentLength),
        "a second Content-Length"
    );
    ex.remove_header(b"Content-Length").unwrap();
    assert_eq!(ex.declared_length(), None);
    ex.add_header(b"Content-Length", b"7").unwrap();
    assert_eq!(ex.declared_length(), Some(7));
}

#[test]
fn response_header_limits_at_and_past() {
    let mut ex = HttpExchange::new_boxed(0);
    for i in 0..keystone_exchange::RESPONSE_HEADERS_MAX {
        ex.add_header(format!("X-{i}").as_bytes(), b"v").unwrap();
    }
    assert_eq!(ex.add_header(b"X-Extra", b"v"), Err(HeaderError::TooMany));
    let mut ex = HttpExchange::new_boxed(0);
    let big = vec![b'v'; keystone_exchange::RESPONSE_ARENA_BYTES - 1];
    ex.add_header(b"X", &big).unwrap();
    assert_eq!(ex.add_header(b"Y", b"v"), Err(HeaderError::ArenaFull));
}

#[test]
fn headers_overwritten_many_times_never_fill_the_arena() {
    // A handler that sets one header in a loop (a counter, a retry) leaves
    // the old values' bytes behind; the arena squeezes them out, so only
    // what is live counts against its limit.
    let mut ex = HttpExchange::new_boxed(0);
    ex.add_header(b"Set-Cookie", b"a=1").unwrap();
    ex.set_upstream_header(b"X-Up", Some(b"first")).unwrap();
    let value = vec![b'v'; 1000];
    for i in 0..100 {
        let counter = format!("{i}");
        ex.set_header(b"X-Counter", counter.as_bytes()).unwrap();
        ex.set_header(b"X-Big", &value).unwrap();
        ex.set_upstream_header(b"X-Up", Some(counter.as_bytes()))
            .unwrap();
    }
    ex.add_header(b"Set-Cookie", b"b=2").unwrap();
    let headers: Vec<(Vec<u8>, Vec<u8>)> = ex
        .response_headers()
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect();
    assert_eq!(
        headers,
        vec![
            (b"Set-Cookie".to_vec(), b"a=1".to_vec()),
            (b"X-Counter".to_vec(), b"99".to_vec()),
            (b"X-Big".to_vec(), value.clone()),
            (b"Set-Cookie".to_vec(), b"b=2".to_vec()),
        ],
        "order and values kept through compaction"
    );
    let upstream: Vec<_> = ex.upstream_overrides().collect();
    assert_eq!(upstream, vec![(&b"X-Up"[..], Some(&b"99"[..]))]);
    // 100 KiB of values went through an 8 KiB arena.
    // What cannot fit even then is refused, and a refused replacement
    // leaves the earlier value in place.
    let huge = vec![b'h'; keystone_exchange::RESPONSE_ARENA_BYTES];
    assert_eq!(ex.set_header(b"X-Big", &huge), Err(HeaderError::ArenaFull));
    assert_eq!(ex.response_header(b"x-big"), Some(&value[..]));
    assert_eq!(
        ex.set_upstream_header(b"X-Up", Some(&huge)),
        Err(HeaderError::ArenaFull)
    );
    assert_eq!(
        ex.upstream_overrides().collect::<Vec<_>>(),
        vec![(&b"X-Up"[..], Some(&b"99"[..]))]
    );
}

#[test]
fn peer_addresses_are_plain_bytes_in_the_abi() {
    assert_eq!(align_of::<PeerAddr>(), 2);
    let cases = ["192.0.2.7:4711", "[2001:db8::1]:80"];
    for text in cases {
        let addr: std::net::SocketAddr = text.parse().unwrap();
        let peer = PeerAddr::new(Some(addr));
        assert_eq!(peer.ip(), Some(addr.ip()), "{text}");
        assert_eq!(peer.port, addr.port());
    }
    assert_eq!(PeerAddr::new(None), PeerAddr::NONE);
    assert_eq!(PeerAddr::NONE.ip(), None);
    let v4 = PeerAddr::new(Some("10.1.2.3:9".parse().unwrap()));
    assert_eq!((v4.family, &v4.addr[..4]), (4, &[10, 1, 2, 3][..]));
}

/// The three states `version` carries, and what each says.
#[test]
fn tls_facts_cleartext_pending_and_finished() {
    let cleartext = TlsFacts::CLEARTEXT;
    assert_eq!(cleartext.version, TLS_VERSION_CLEARTEXT);
    assert!(!cleartext.is_encrypted());
    assert!(!cleartext.is_pending());
    assert_eq!(TlsFacts::default(), cleartext);
    let pending = TlsFacts::pending();
    assert_eq!(pending.version, TLS_VERSION_PENDING);
    assert!(pending.is_encrypted());
    assert!(pending.is_pending());
    assert_eq!(
        (pending.protocol_name(), pending.cipher_name()),
        (None, None)
    );
    assert_eq!(pending.sni(), None);
    let done = TlsFacts::new(TLS_VERSION_1_3, 0x1301, Some("example.com"));
    assert!(done.is_encrypted());
    assert!(!done.is_pending());
    assert_eq!(done.protocol_name(), Some("TLSv1.3"));
    assert_eq!(done.cipher_name(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(done.sni(), Some(&b"example.com"[..]));
    let no_name = TlsFacts::new(TLS_VERSION_1_2, 0xc02f, None);
    assert_eq!(no_name.sni(), None);
    assert_eq!(no_name.protocol_name(), Some("TLSv1.2"));
    assert_eq!(TlsFacts::new(TLS_VERSION_1_2, 0xc02f, Some("")).sni(), None);
    // A version without a name is still encrypted.
    let unknown = TlsFacts::new(0x0305, 0x9999, None);
    assert!(unknown.is_encrypted());
    assert_eq!(
        (unknown.protocol_name(), unknown.cipher_name()),
        (None, None)
    );
}

/// A server name is kept up to `TLS_SNI_MAX` bytes; a longer one is
/// dropped whole, never cut.
#[test]
fn tls_sni_at_and_past_its_limit() {
    let at = "a".repeat(TLS_SNI_MAX);
    let facts = TlsFacts::new(TLS_VERSION_1_3, 0x1302, Some(&at));
    assert_eq!(facts.sni(), Some(at.as_bytes()));
    assert_eq!(facts.sni_len as usize, TLS_SNI_MAX);
    let past = "a".repeat(TLS_SNI_MAX + 1);
    let facts = TlsFacts::new(TLS_VERSION_1_3, 0x1302, Some(&past));
    assert_eq!(facts.sni(), None);
    assert_eq!(facts.sni_len, 0);
    assert_eq!(facts.cipher_name(), Some("TLS_AES_256_GCM_SHA384"));
}

/// OpenSSL's names, as nginx's `$ssl_cipher` and `$ssl_protocol` show them.
#[test]
fn tls_names_are_openssls() {
    let cases: [(u16, Option<&str>); 11] = [
        (0x1301, Some("TLS_AES_128_GCM_SHA256")),
        (0x1302, Some("TLS_AES_256_GCM_SHA384")),
        (0x1303, Some("TLS_CHACHA20_POLY1305_SHA256")),
        (0xc02b, Some("ECDHE-ECDSA-AES128-GCM-SHA256")),
        (0xc02c, Some("ECDHE-ECDSA-AES256-GCM-SHA384")),
        (0xcca9, Some("ECDHE-ECDSA-CHACHA20-POLY1305")),
        (0xc02f, Some("ECDHE-RSA-AES128-GCM-SHA256")),
        (0xc030, Some("ECDHE-RSA-AES256-GCM-SHA384")),
        (0xcca8, Some("ECDHE-RSA-CHACHA20-POLY1305")),
        (0x0000, None),
        (0x009c, None),
    ];
    for (id, name) in cases {
        assert_eq!(tls_cipher_name(id), name, "{id:#06x}");
    }
    assert_eq!(TLS_CIPHER_NAMES.len(), 9);
    let protocols = [
        (TLS_VERSION_1_2, Some("TLSv1.2")),
        (TLS_VERSION_1_3, Some("TLSv1.3")),
        (TLS_VERSION_CLEARTEXT, None),
        (TLS_VERSION_PENDING, None),
        (0x0302, None),
    ];
    for (version, name) in protocols {
        assert_eq!(tls_protocol_name(version), name, "{version:#06x}");
    }
}

/// The facts travel with every bind, like the peer: a TLS request shows
/// them, `expire` clears them, and a cleartext bind after a TLS one shows
/// none of the earlier facts.
#[test]
fn bind_carries_tls_facts_and_expire_clears_them() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut head = Head::new();
    parse(request, &mut head);
    let mut ex = HttpExchange::new_boxed(0);
    assert_eq!(ex.tls, TlsFacts::CLEARTEXT);
    let facts = TlsFacts::new(TLS_VERSION_1_3, 0x1303, Some("api.example"));
    let peer = PeerAddr::new(Some("192.0.2.1:443".parse().unwrap()));
    ex.bind_with_tls(request, &head, &[], Span::EMPTY, peer, &facts);
    assert_eq!(ex.tls, facts);
    assert_eq!(ex.tls.sni(), Some(&b"api.example"[..]));
    assert_eq!(ex.peer, peer);
    ex.expire();
    assert_eq!(ex.tls, TlsFacts::CLEARTEXT);
    assert!(!ex.tls.is_encrypted());
    ex.bind_with_tls(request, &head, &[], Span::EMPTY, peer, &facts);
    ex.expire();
    ex.bind(request, &head, &[], Span::EMPTY, peer);
    assert_eq!(ex.tls, TlsFacts::CLEARTEXT, "a cleartext bind shows no TLS");
    assert_eq!(ex.tls.sni(), None);
    ex.expire();
}
