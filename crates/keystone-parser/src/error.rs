//! Parse errors and the one place they become HTTP statuses.

use std::fmt;

/// Why a request was rejected. Every variant is a peer error: the server
/// answers with [`ParseError::status`] and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x syntax (bad request line, bad header line, control bytes).
    Malformed,
    /// The head is longer than `limit` bytes.
    HeadTooLarge { limit: u32 },
    /// More than `limit` header lines.
    TooManyHeaders { limit: u16 },
    /// The request-target is longer than `limit` bytes.
    UriTooLong { limit: u32 },
    /// Content-Length is not a plain decimal, overflows u64, or values differ.
    BadContentLength,
    /// Both Content-Length and Transfer-Encoding: a request-smuggling vector.
    ConflictingFraming,
    /// Transfer-Encoding whose final coding is not chunked, or sent with HTTP/1.0.
    BadTransferEncoding,
    /// A transfer coding this server does not know.
    UnsupportedTransferEncoding,
    /// HTTP/1.1 request without Host (RFC 9112 §3.2).
    MissingHost,
    /// More than one Host header.
    DuplicateHost,
    /// A Host value (or an absolute-form authority) outside
    /// `uri-host [ ":" port ]`, or an empty Host on an HTTP/1.1 request
    /// whose target has no authority.
    BadHost,
    /// A method longer than `limit` bytes (`MAX_METHOD_BYTES`).
    MethodTooLong { limit: u32 },
    /// A header continuation line (obs-fold, RFC 9112 §5.2).
    ObsFold,
    /// A well-formed version other than HTTP/1.0 or HTTP/1.1.
    VersionNotSupported,
    /// The declared (Content-Length) or decoded (chunked) body exceeds `limit`.
    BodyTooLarge { limit: u64, declared: u64 },
    /// Chunked framing is malformed.
    BadChunk,
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1: 417).
    ExpectationFailed,
    /// A `.` or `..` segment in the path, written or percent-encoded
    /// (`/a/../b`, `/a/%2e%2e/b`): routes and upstream paths are matched
    /// and built from the path as sent, so a dot-segment would reach a
    /// route (or a backend, which resolves it) other than the one its
    /// text names. Clients resolve them before sending (RFC 3986 §5.2.4).
    DotSegment,
}

impl ParseError {
    /// The one place parse errors become HTTP statuses.
    pub fn status(self) -> u16 {
        match self {
            ParseError::Malformed
            | ParseError::BadContentLength
            | ParseError::ConflictingFraming
            | ParseError::BadTransferEncoding
            | ParseError::MissingHost
            | ParseError::DuplicateHost
            | ParseError::BadHost
            | ParseError::MethodTooLong { .. }
            | ParseError::ObsFold
            | ParseError::DotSegment
            | ParseError::BadChunk => 400,
            ParseError::HeadTooLarge { .. } | ParseError::TooManyHeaders { .. } => 431,
            ParseError::UriTooLong { .. } => 414,
            ParseError::BodyTooLarge { .. } => 413,
            ParseError::UnsupportedTransferEncoding => 501,
            ParseError::VersionNotSupported => 505,
            ParseError::ExpectationFailed => 417,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::Malformed => f.write_str("malformed request"),
            ParseError::HeadTooLarge { limit } => {
                write!(f, "request head larger than {limit} bytes")
            }
            ParseError::TooManyHeaders { limit } => write!(f, "more than {limit} headers"),
            ParseError::UriTooLong { limit } => {
                write!(f, "request target longer than {limit} bytes")
            }
            ParseError::BadContentLength => f.write_str("invalid Content-Length"),
            ParseError::ConflictingFraming => {
                f.write_str("both Content-Length and Transfer-Encoding")
            }
            ParseError::BadTransferEncoding => f.write_str("invalid Transfer-Encoding"),
            ParseError::UnsupportedTransferEncoding => f.write_str("unsupported transfer coding"),
            ParseError::DotSegment => f.write_str("a dot-segment in the path"),
            ParseError::MissingHost => f.write_str("HTTP/1.1 request without Host"),
            ParseError::DuplicateHost => f.write_str("more than one Host header"),
            ParseError::BadHost => f.write_str("invalid Host"),
            ParseError::MethodTooLong { limit } => write!(f, "method longer than {limit} bytes"),
            ParseError::ObsFold => f.write_str("obsolete header line folding"),
            ParseError::VersionNotSupported => f.write_str("HTTP version not supported"),
            ParseError::BodyTooLarge { limit, declared } => {
                write!(f, "body of {declared} bytes exceeds {limit}")
            }
            ParseError::BadChunk => f.write_str("invalid chunked encoding"),
            ParseError::ExpectationFailed => f.write_str("unsupported expectation"),
        }
    }
}

impl std::error::Error for ParseError {}
