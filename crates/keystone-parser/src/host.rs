//! The Host grammar (RFC 9112 §3.2, RFC 3986 §3.2.2-3.2.3), for the Host
//! header and for an absolute-form target's authority alike:
//!
//! ```text
//! Host        = uri-host [ ":" port ]
//! uri-host    = IP-literal / IPv4address / reg-name
//! IP-literal  = "[" IPv6address "]"
//! reg-name    = *( unreserved / pct-encoded / sub-delims )
//! port        = *DIGIT            (here: at most 65535)
//! ```
//!
//! Refused, each a smuggling or routing-confusion vector when two hops read
//! the authority differently: a userinfo (`user@host`), a path or query
//! (`host/path`), a comma (a list: `a.com, b.com`, though RFC 3986 lets a
//! reg-name hold one), a port that is not digits or is above 65535, an
//! empty host before a port (`:80`), a bracketed literal that is not an
//! IPv6 address (IPvFuture included), and any control, space or non-ASCII
//! byte. Nothing is copied: the checks read the bytes in place.

use crate::target::is_reg_name_byte;
use crate::ParseError;

/// Whether `authority` is a valid `uri-host [ ":" port ]`. The empty value
/// passes here; whether it is allowed depends on the request (see
/// `semantics`).
pub(crate) fn check_authority(authority: &[u8]) -> Result<(), ParseError> {
    let bad = Err(ParseError::BadHost);
    let (host, port) = if let Some(literal) = authority.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&byte| byte == b']') else {
            return bad;
        };
        let inside = std::str::from_utf8(&literal[..close]).map_err(|_| ParseError::BadHost)?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return bad;
        }
        match &literal[close + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return bad,
        }
    } else {
        match authority.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                if colon == 0 {
                    return bad; // a port with no host
                }
                (&authority[..colon], Some(&authority[colon + 1..]))
            }
            None => (authority, None),
        }
    };
    if !is_reg_name(host) {
        return bad;
    }
    if let Some(port) = port {
        check_port(port)?;
    }
    Ok(())
}

/// `*( unreserved / pct-encoded / sub-delims )` without the comma; an
/// IPv4address is a reg-name too (digits and dots).
fn is_reg_name(host: &[u8]) -> bool {
    let mut index = 0;
    while index < host.len() {
        match host[index] {
            b'%' => {
                let escaped = host.get(index + 1..index + 3);
                if !escaped.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                index += 3;
                continue;
            }
            // unreserved, then sub-delims less ","
            byte if is_reg_name_byte(byte) => {}
            _ => return false,
        }
        index += 1;
    }
    true
}

/// `*DIGIT`, at most 65535 (leading zeros allowed, as RFC 3986 allows).
/// An empty port (`host:`) is valid: RFC 3986 §3.2.3 lets it be omitted.
fn check_port(port: &[u8]) -> Result<(), ParseError> {
    let mut value = 0_u32;
    for &byte in port {
        if !byte.is_ascii_digit() {
            return Err(ParseError::BadHost);
        }
        value = value * 10 + u32::from(byte - b'0');
        if value > u32::from(u16::MAX) {
            return Err(ParseError::BadHost);
        }
    }
    Ok(())
}
