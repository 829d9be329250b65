//! The request head sent upstream, re-serialized from the parsed client
//! head: never the client's raw bytes, so nothing a client smuggles (a
//! second framing header, a hop-by-hop instruction, a bare-LF trick the
//! parser let through) reaches a backend. Written into caller-owned bytes;
//! nothing is allocated.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Room for a forwarded head: the client's head limit (16 KiB by
/// default) plus policy's overrides and the `X-Forwarded-*` lines.
pub const FORWARDED_HEAD_MAX: usize = 32 * 1024;

/// How the forwarded body is framed (the engine re-frames; the client's
/// own framing headers are never copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardFraming {
    /// No body and no framing header (a GET without a body).
    None,
    /// `Content-Length: n` (the client's length, forwarded as is).
    Length(u64),
    /// `Transfer-Encoding: chunked` (a chunked client body, re-chunked).
    Chunked,
}

/// The scheme the client reached us with, sent as `X-Forwarded-Proto`
/// (nginx's `$scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// A cleartext client connection.
    Http,
    /// An encrypted (TLS) client connection.
    Https,
}

impl Scheme {
    /// `Https` for an encrypted client connection, else `Http`.
    pub fn of(encrypted: bool) -> Scheme {
        if encrypted {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// "http" or "https".
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Scheme::Http => b"http",
            Scheme::Https => b"https",
        }
    }
}

/// What one forwarded head says.
#[derive(Clone, Copy, Debug)]
pub struct ForwardRequest<'a> {
    pub method: &'a [u8],
    /// Path and query sent upstream (`ctx.upstream_path`, or the client's).
    pub target: &'a [u8],
    pub framing: ForwardFraming,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client: Option<IpAddr>,
    /// The client connection's scheme, sent as `X-Forwarded-Proto`.
    pub scheme: Scheme,
    /// A WebSocket handshake: `Connection: upgrade` and `Upgrade` pass.
    pub websocket: bool,
    /// The `Host` sent when neither the client (an HTTP/1.0 request may
    /// have none) nor policy gave one: the request goes out as HTTP/1.1,
    /// which requires it (RFC 9112 §3.2). nginx's `$proxy_host`: the
    /// pool's name.
    pub default_host: &'a [u8],
    /// An absolute-form target's authority (`GET http://a.example/x`):
    /// it is the request's host, whatever `Host` says (RFC 9112 §3.2.2),
    /// so it is sent as `Host` in place of the client's.
    pub authority: Option<&'a [u8]>,
}

/// The head did not fit `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardError {
    pub needed_more_than: usize,
}

pub use keystone_parser::text::is_hop_by_hop;
use keystone_parser::text::list_has;

/// Writes the head for `request` into `out` and returns its length.
///
/// `headers` are the client's (name, value) pairs in order; `overrides`
/// are policy's (`ctx.upstream_headers`): `Some(value)` sets or replaces a
/// header by name (case-insensitive), `None` removes it. Dropped: the
/// hop-by-hop fields and any field a `Connection` header names, the
/// client's `Content-Length` (the engine writes the framing), `Expect`
/// (the engine answered the client's `100-continue` itself and sends the
/// body without waiting for the upstream's; nginx's proxy drops it too),
/// and `X-Forwarded-Proto` (set anew: the request's scheme, or policy's
/// value when it set one — or none when it removed it —, never both).
/// `X-Forwarded-For` keeps the client's list and appends the client's
/// address; `Host` passes as received (`request.authority` in its place
/// for an absolute-form target; `request.default_host` when there is
/// none).
pub fn write_forward_head<'h, H, O>(
    request: &ForwardRequest<'_>,
    headers: H,
    overrides: O,
    out: &mut [u8],
) -> Result<usize, ForwardError>
where
    H: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    O: Iterator<Item = (&'h [u8], Option<&'h [u8]>)> + Clone,
{
    let mut w = Out {
        out,
        len: 0,
        full: false,
    };
    w.put(request.method);
    w.put(b" ");
    w.put(request.target);
    w.put(b" HTTP/1.1\r\n");
    let named_by_connection = |name: &[u8]| {
        headers.clone().any(|(header, value)| {
            header.eq_ignore_ascii_case(b"connection") && list_has(value, name)
        })
    };
    let overridden = |name: &[u8]| {
        overrides
            .clone()
            .any(|(set, _)| set.eq_ignore_ascii_case(name))
    };
    let mut forwarded_for = false;
    for (name, value) in headers.clone() {
        let upgrade_passes = request.websocket
            && (name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"connection"));
        let dropped = (!upgrade_passes && (is_hop_by_hop(name) || named_by_connection(name)))
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || overridden(name);
        if dropped || name.eq_ignore_ascii_case(b"x-forwarded-for") {
            continue;
        }
        match request.authority {
            Some(authority) if name.eq_ignore_ascii_case(b"host") => w.line(name, authority),
            _ => w.line(name, value),
        }
    }
    // Policy's last write of `Host` decides (a removal sends the default),
    // else the client's.
    let policy_host = overrides
        .clone()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"host"))
        .last()
        .map(|(_, value)| value.is_some());
    let client_has_host = headers
        .clone()
        .any(|(name, _)| name.eq_ignore_ascii_case(b"host"));
    match (policy_host, request.authority) {
        // An absolute-form request without a Host line (HTTP/1.0): its
        // authority is the host.
        (None, Some(authority)) if !client_has_host => w.line(b"Host", authority),
        _ if !policy_host.unwrap_or(client_has_host) && !request.default_host.is_empty() => {
            w.line(b"Host", request.default_host);
        }
        _ => {}
    }
    for (index, (name, value)) in overrides.clone().enumerate() {
        // The last write of a name wins, as in `ctx.headers`.
        let later = overrides
            .clone()
            .skip(index + 1)
            .any(|(other, _)| other.eq_ignore_ascii_case(name));
        if let (Some(value), false) = (value, later) {
            let forwarded = name.eq_ignore_ascii_case(b"x-forwarded-for")
                || name.eq_ignore_ascii_case(b"x-forwarded-proto");
            if !forwarded {
                w.line(name, value);
            }
        }
    }
    // X-Forwarded-For: policy's list, or every one of the client's lines
    // joined in order (RFC 9110 §5.3: one list, its order kept; nginx's
    // `$proxy_add_x_forwarded_for`), then the client.
    let mut put_list = |w: &mut Out<'_>, list: &[u8]| {
        if list.is_empty() {
            return;
        }
        w.put(if forwarded_for {
            b", "
        } else {
            b"X-Forwarded-For: "
        });
        w.put(list);
        forwarded_for = true;
    };
    let policy_list = overrides
        .clone()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"x-forwarded-for"))
        .last()
        .map(|(_, value)| value);
    match policy_list {
        Some(list) => put_list(&mut w, list.unwrap_or_default()),
        None => {
            for (name, value) in headers.clone() {
                if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                    put_list(&mut w, value);
                }
            }
        }
    }
    if let Some(client) = request.client {
        w.put(if forwarded_for {
            b", "
        } else {
            b"X-Forwarded-For: "
        });
        w.put_display(client);
        forwarded_for = true;
    }
    if forwarded_for {
        w.put(b"\r\n");
    }
    // X-Forwarded-Proto: the scheme, unless policy's last write of it says
    // otherwise (a value, or none for a removal).
    let proto = overrides
        .clone()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"x-forwarded-proto"))
        .last()
        .map_or(Some(request.scheme.as_bytes()), |(_, value)| value);
    if let Some(proto) = proto {
        w.line(b"X-Forwarded-Proto", proto);
    }
    match request.framing {
        ForwardFraming::None => {}
        ForwardFraming::Length(length) => {
            w.put(b"Content-Length: ");
            w.put_display(length);
            w.put(b"\r\n");
        }
        ForwardFraming::Chunked => w.line(b"Transfer-Encoding", b"chunked"),
    }
    w.put(b"\r\n");
    if w.full {
        return Err(ForwardError {
            needed_more_than: w.out.len(),
        });
    }
    Ok(w.len)
}

/// A bounded writer: past the end it only remembers that it overflowed.
struct Out<'o> {
    out: &'o mut [u8],
    len: usize,
    full: bool,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        match self.out.get_mut(self.len..self.len + bytes.len()) {
            Some(room) if !self.full => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            _ => self.full = true,
        }
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.put(name);
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }

    fn put_display(&mut self, value: impl std::fmt::Display) {
        // Numbers and addresses only: at most 45 bytes (an IPv6 address).
        let mut text = Small::default();
        let _ = write!(text, "{value}");
        self.put(&text.bytes[..text.len]);
    }
}

/// A stack buffer `write!` can format into.
struct Small {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Small {
    fn default() -> Small {
        Small {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self
            .bytes
            .get_mut(self.len..self.len + s.len())
            .ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        request: &ForwardRequest<'_>,
        headers: &[(&str, &str)],
        overrides: &[(&str, Option<&str>)],
    ) -> String {
        let headers: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let overrides: Vec<(&[u8], Option<&[u8]>)> = overrides
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.map(str::as_bytes)))
            .collect();
        let mut out = [0_u8; 4096];
        let len = write_forward_head(
            request,
            headers.iter().copied(),
            overrides.iter().copied(),
            &mut out,
        )
        .expect("fits");
        String::from_utf8(out[..len].to_vec()).unwrap()
    }

    const GET: ForwardRequest<'static> = ForwardRequest {
        method: b"GET",
        target: b"/v2/users?id=7",
        framing: ForwardFraming::None,
        client: None,
        scheme: Scheme::Http,
        websocket: false,
        default_host: b"api",
        authority: None,
    };

    #[test]
    fn hop_by_hop_and_framing_never_pass() {
        let request = ForwardRequest {
            method: b"POST",
            framing: ForwardFraming::Length(5),
            client: Some("10.0.0.9".parse().unwrap()),
            ..GET
        };
        let got = head(
            &request,
            &[
                ("Host", "api.example"),
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "drop me"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "999"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic x"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Forwarded-Proto", "https"),
                ("Expect", "100-continue"),
                ("Accept", "*/*"),
            ],
            &[],
        );
        assert_eq!(
            got,
            "POST /v2/users?id=7 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\n\
             X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_for_appends_and_overrides_apply() {
        let request = ForwardRequest {
            client: Some("2001:db8::1".parse().unwrap()),
            framing: ForwardFraming::Chunked,
            scheme: Scheme::Https,
            ..GET
        };
        let got = head(
            &request,
            &[
                ("Host", "h"),
                ("X-Forwarded-For", "203.0.113.5"),
                ("X-User", "from-client"),
                ("Cookie", "a=1"),
            ],
            &[
                ("x-user", Some("42")),
                ("Cookie", None),
                ("X-New", Some("1")),
                ("X-New", Some("2")),
            ],
        );
        assert_eq!(
            got,
            "GET /v2/users?id=7 HTTP/1.1\r\nHost: h\r\nx-user: 42\r\nX-New: 2\r\n\
             X-Forwarded-For: 203.0.113.5, 2001:db8::1\r\nX-Forwarded-Proto: https\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        // Several client lines are one list, joined in order (an empty one
        // adds nothing); policy's write replaces them all.
        let lines = [
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", ""),
            ("X-Forwarded-For", "198.51.100.9, 192.0.2.1"),
        ];
        let xff = |overrides: &[(&str, Option<&str>)]| {
            let got = head(&request, &lines, overrides);
            got.split("\r\n")
                .find(|line| line.starts_with("X-Forwarded-For"))
                .map(str::to_string)
        };
        assert_eq!(
            xff(&[]).as_deref(),
            Some("X-Forwarded-For: 203.0.113.7, 198.51.100.9, 192.0.2.1, 2001:db8::1")
        );
        assert_eq!(
            xff(&[("X-Forwarded-For", Some("10.0.0.1"))]).as_deref(),
            Some("X-Forwarded-For: 10.0.0.1, 2001:db8::1")
        );
        assert_eq!(
            xff(&[("X-Forwarded-For", None)]).as_deref(),
            Some("X-Forwarded-For: 2001:db8::1")
        );
    }

    /// `X-Forwarded-Proto` is the client connection's scheme, whatever the
    /// client sent; policy's write of it wins (a removal sends none), and
    /// exactly one line goes either way.
    #[test]
    fn forwarded_proto_is_the_connections_scheme() {
        // (scheme, the client's X-Forwarded-Proto, policy's writes, sent)
        type Overrides = &'static [(&'static str, Option<&'static str>)];
        let cases: [(Scheme, Option<&str>, Overrides, Option<&str>); 7] = [
            (Scheme::Http, None, &[], Some("http")),
            (Scheme::Https, None, &[], Some("https")),
            (Scheme::Https, Some("http"), &[], Some("https")),
            (Scheme::Http, Some("https"), &[], Some("http")),
            (
                Scheme::Http,
                None,
                &[("X-Forwarded-Proto", Some("https"))],
                Some("https"),
            ),
            (
                Scheme::Https,
                Some("http"),
                &[
                    ("x-forwarded-proto", Some("wss")),
                    ("X-Forwarded-Proto", Some("ws")),
                ],
                Some("ws"),
            ),
            (
                Scheme::Https,
                Some("https"),
                &[("X-Forwarded-Proto", None)],
                None,
            ),
        ];
        for (scheme, sent, overrides, expected) in cases {
            let request = ForwardRequest { scheme, ..GET };
            let mut headers = vec![("Host", "h")];
            headers.extend(sent.map(|sent| ("X-Forwarded-Proto", sent)));
            let got = head(&request, &headers, overrides);
            let lines: Vec<&str> = got
                .split("\r\n")
                .filter(|line| line.to_ascii_lowercase().starts_with("x-forwarded-proto:"))
                .collect();
            let expected: Vec<String> = expected
                .map(|value| format!("X-Forwarded-Proto: {value}"))
                .into_iter()
                .collect();
            assert_eq!(lines, expected, "{scheme:?} {sent:?} {overrides:?}: {got}");
        }
        assert_eq!(Scheme::of(true), Scheme::Https);
        assert_eq!(Scheme::of(false), Scheme::Http);
    }

    /// An HTTP/1.0 client may send no `Host`; the forwarded HTTP/1.1
    /// request always has one: the client's, policy's, else the pool's
    /// name.
    #[test]
    fn a_request_without_host_gets_the_pools_name() {
        // The Host lines `request` is forwarded with.
        fn host_lines_of(
            request: &ForwardRequest<'_>,
            headers: &[(&str, &str)],
            overrides: &[(&str, Option<&str>)],
        ) -> Vec<String> {
            head(request, headers, overrides)
                .split("\r\n")
                .filter(|line| line.to_ascii_lowercase().starts_with("host:"))
                .map(str::to_string)
                .collect()
        }
        let host_lines = |headers: &[(&str, &str)], overrides: &[(&str, Option<&str>)]| {
            host_lines_of(&GET, headers, overrides)
        };
        assert_eq!(host_lines(&[], &[]), ["Host: api"]);
        assert_eq!(host_lines(&[("host", "h")], &[]), ["host: h"]);
        assert_eq!(host_lines(&[], &[("Host", Some("p"))]), ["Host: p"]);
        assert_eq!(
            host_lines(&[("Host", "h")], &[("Host", None)]),
            ["Host: api"]
        );
        assert_eq!(
            host_lines(&[("Host", "h")], &[("Host", Some("p"))]),
            ["Host: p"]
        );
        // An absolute-form target: its authority is the host, whatever
        // (or whether) the client's Host said; policy still decides last.
        let absolute = ForwardRequest {
            authority: Some(b"good.example"),
            ..GET
        };
        let host_lines = |headers: &[(&str, &str)], overrides: &[(&str, Option<&str>)]| {
            host_lines_of(&absolute, headers, overrides)
        };
        assert_eq!(
            host_lines(&[("Host", "evil.example")], &[]),
            ["Host: good.example"]
        );
        assert_eq!(host_lines(&[("Host", "")], &[]), ["Host: good.example"]);
        assert_eq!(host_lines(&[], &[]), ["Host: good.example"]);
        assert_eq!(
            host_lines(&[("Host", "evil.example")], &[("Host", Some("p"))]),
            ["Host: p"]
        );
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade() {
        let request = ForwardRequest {
            websocket: true,
            ..GET
        };
        let got = head(
            &request,
            &[
                ("Host", "h"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "k"),
            ],
            &[],
        );
        assert!(
            got.contains("\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\nSec-WebSocket-Key: k\r\n"), "{got}");
    }

    #[test]
    fn a_head_that_does_not_fit_is_an_error() {
        let mut out = [0_u8; 20];
        let none: [(&[u8], &[u8]); 0] = [];
        let no_overrides: [(&[u8], Option<&[u8]>); 0] = [];
        assert_eq!(
            write_forward_head(
                &GET,
                none.iter().copied(),
                no_overrides.iter().copied(),
                &mut out
            ),
            Err(ForwardError {
                needed_more_than: 20
            })
        );
    }
}
