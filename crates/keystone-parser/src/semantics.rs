//! Header rules picohttpparser leaves to its caller: framing
//! (Content-Length / Transfer-Encoding), Host, Connection and Expect.

use crate::host::check_authority;
use crate::text::{list_elements, parse_decimal, trim_ows};
use crate::{BodyFraming, Head, Limits, ParseError, Persistence, Span};

/// What the header walk found; turned into `Head` fields by [`finish`].
#[derive(Default)]
pub(crate) struct HeaderFacts {
    content_length: Option<u64>,
    transfer_encoding: Option<TransferCodings>,
    host_count: u16,
    host_empty: bool,
    /// The target is absolute-form: its authority is the host, and an
    /// empty Host header is allowed (RFC 9112 §3.2.2).
    pub(crate) absolute_form: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
    expect_unknown: bool,
}

/// The Transfer-Encoding list seen so far (several headers form one list).
#[derive(Default, Clone, Copy)]
struct TransferCodings {
    coding_count: u16,
    last_is_chunked: bool,
}

/// The one transfer coding the engine decodes; anything else (`gzip`,
/// `deflate`, `compress`, retired `identity`, unknown ones) is 501 (RFC
/// 9112 §6.1: a coding the server does not understand), as nginx answers:
/// accepted undecoded, a `gzip, chunked` body reached the handler, or an
/// upstream with no `Content-Encoding`, as raw compressed bytes.
const KNOWN_CODINGS: [&[u8]; 1] = [b"chunked"];

impl HeaderFacts {
    /// Records one header; `value` is already trimmed and `value_span` is
    /// its absolute span (kept for Host).
    pub(crate) fn record(
        &mut self,
        head: &mut Head,
        name: &[u8],
        value: &[u8],
        value_span: Span,
    ) -> Result<(), ParseError> {
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                self.host_count += 1;
                head.host = value_span;
                self.host_empty = value.is_empty();
                check_authority(value)?;
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                let continues = value.eq_ignore_ascii_case(b"100-continue");
                self.expect_continue |= continues;
                self.expect_unknown |= !continues;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for option in list_elements(value) {
                    self.connection_close |= option.eq_ignore_ascii_case(b"close");
                    self.connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                self.record_content_length(value)?;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.record_transfer_encoding(value)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// `1*DIGIT`, possibly repeated as a list ("5, 5") or across headers;
    /// all values must be equal (RFC 9110 §8.6).
    fn record_content_length(&mut self, value: &[u8]) -> Result<(), ParseError> {
        let mut elements = 0_u32;
        for element in value.split(|&byte| byte == b',') {
            let element = trim_ows(element);
            let length = parse_decimal(element).ok_or(ParseError::BadContentLength)?;
            if self.content_length.is_some_and(|seen| seen != length) {
                return Err(ParseError::BadContentLength);
            }
            self.content_length = Some(length);
            elements += 1;
        }
        debug_assert!(elements >= 1);
        Ok(())
    }

    fn record_transfer_encoding(&mut self, value: &[u8]) -> Result<(), ParseError> {
        let mut codings = self.transfer_encoding.unwrap_or_default();
        for element in list_elements(value) {
            let name_end = element.iter().position(|&byte| byte == b';');
            let coding = trim_ows(&element[..name_end.unwrap_or(element.len())]);
            if !KNOWN_CODINGS
                .iter()
                .any(|known| coding.eq_ignore_ascii_case(known))
            {
                return Err(ParseError::UnsupportedTransferEncoding);
            }
            if codings.last_is_chunked {
                // chunked must be the final coding, applied exactly once.
                return Err(ParseError::BadTransferEncoding);
            }
            codings.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            codings.coding_count += 1;
        }
        self.transfer_encoding = Some(codings);
        Ok(())
    }

    /// Applies the whole-request rules and fills the framing fields of `head`.
    /// Order: Host duplicates, missing or empty Host, CL+TE, TE in 1.0, TE
    /// final coding, body limit.
    pub(crate) fn finish(self, head: &mut Head, limits: &Limits) -> Result<(), ParseError> {
        if self.host_count > 1 {
            return Err(ParseError::DuplicateHost);
        }
        head.has_host = self.host_count == 1;
        if head.minor_version == 1 && !head.has_host {
            return Err(ParseError::MissingHost);
        }
        if head.minor_version == 1 && self.host_empty && !self.absolute_form {
            return Err(ParseError::BadHost);
        }
        head.body = self.framing(head.minor_version, limits)?;
        // HTTP/1.0 clients know no expectations: ignored there (RFC 9110 §10.1.1).
        if head.minor_version == 1 && self.expect_unknown {
            return Err(ParseError::ExpectationFailed);
        }
        head.persistence = match (head.minor_version, self.connection_close) {
            (_, true) => Persistence::Close,
            (1, false) => Persistence::KeepAlive,
            _ if self.connection_keep_alive => Persistence::KeepAlive,
            _ => Persistence::Close,
        };
        head.expect_continue = head.minor_version == 1 && self.expect_continue;
        Ok(())
    }

    fn framing(&self, minor_version: u8, limits: &Limits) -> Result<BodyFraming, ParseError> {
        match (self.content_length, self.transfer_encoding) {
            (Some(_), Some(_)) => Err(ParseError::ConflictingFraming),
            (None, Some(_)) if minor_version == 0 => Err(ParseError::BadTransferEncoding),
            (None, Some(codings)) if codings.coding_count == 0 || !codings.last_is_chunked => {
                Err(ParseError::BadTransferEncoding)
            }
            (None, Some(_)) => Ok(BodyFraming::Chunked),
            (Some(declared), None) if declared > limits.max_body_bytes => {
                Err(ParseError::BodyTooLarge {
                    limit: limits.max_body_bytes,
                    declared,
                })
            }
            (Some(declared), None) => Ok(BodyFraming::Length(declared)),
            (None, None) => Ok(BodyFraming::None),
        }
    }
}
