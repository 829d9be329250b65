//! Reads a connection's output back as back-to-back HTTP/1.1 responses and
//! checks each is well formed — what every driver of the state machine
//! asserts, whatever the input (shared by the conformance tests, the
//! property tests and the fuzz targets).
//!
//! Policy apps under test never echo raw request bytes into a response
//! body (they echo hex or lengths), so no body can begin with `HTTP/1.`:
//! that is how the checker tells a response to HEAD (Content-Length, no
//! body) from one with a body without knowing the requests.

/// Header lines a response may carry; the engine writes about six.
const RESPONSE_HEADERS_MAX: usize = 64;

/// One response read back from the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `Connection: close` was sent.
    pub close: bool,
    /// The body, de-chunked for `Transfer-Encoding: chunked`.
    pub body: Vec<u8>,
    /// A length was announced but no body followed (a response to HEAD).
    pub bodyless: bool,
}

/// Reads `out` as back-to-back HTTP/1.1 responses; `Err` says what is
/// wrong and where. Checks: each head parses (httparse) completely, version
/// 1.1, status 100 (interim, no headers) or 200..=999 (the range policy may
/// set), header values free of control bytes, one framing header at most
/// and no duplicate Content-Length, the body matches its framing, and
/// nothing follows a `Connection: close` response.
pub fn check_responses(out: &[u8]) -> Result<Vec<Response>, String> {
    check(out, false)
}

/// [`check_responses`] for a connection that aborted a response (a stream
/// whose generator failed, stalled or broke its declared length): the last
/// response may stop short of its body — a well-formed head, then fewer
/// body bytes than announced, or a chunked body without its end — and is
/// returned with what arrived of its body.
pub fn check_responses_aborted(out: &[u8]) -> Result<Vec<Response>, String> {
    check(out, true)
}

/// Messages of a body that stops short: acceptable only at the very end,
/// after an abort.
const TRUNCATED: &str = "truncated body: ";

fn check(out: &[u8], aborted: bool) -> Result<Vec<Response>, String> {
    let mut responses = Vec::new();
    let mut at = 0;
    while at < out.len() {
        if responses.last().is_some_and(|r: &Response| r.close) {
            return Err(format!("bytes after a Connection: close response at {at}"));
        }
        let (response, len) = match check_one(&out[at..]) {
            Ok(checked) => checked,
            Err(e) if aborted && e.starts_with(TRUNCATED) => {
                let (head, _) =
                    split_head(&out[at..]).ok_or("an aborted response without a head")?;
                let body = out[at + head..].to_vec();
                (response(0, true, body, false), out.len() - at)
            }
            Err(e) => return Err(format!("response {} at byte {at}: {e}", responses.len())),
        };
        responses.push(response);
        at += len;
    }
    Ok(responses)
}

/// The length of the head at the start of `bytes` (through its blank line).
fn split_head(bytes: &[u8]) -> Option<(usize, ())> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((end + 4, ()))
}

/// Checks the response at the start of `bytes`; returns it and its length.
fn check_one(bytes: &[u8]) -> Result<(Response, usize), String> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated head".into()),
        Err(e) => return Err(format!("bad head: {e}: {:?}", show(bytes))),
    };
    if parsed.version != Some(1) {
        return Err(format!("version {:?}", parsed.version));
    }
    let status = parsed.code.expect("complete head has a code");
    if !bytes.starts_with(b"HTTP/1.1 ") {
        return Err("status line does not start with HTTP/1.1".into());
    }
    let rest = &bytes[head_len..];
    if status == 100 {
        if !parsed.headers.is_empty() {
            return Err("100 Continue with headers".into());
        }
        return Ok((response(status, false, Vec::new(), false), head_len));
    }
    if !(200..=999).contains(&status) {
        return Err(format!("status {status}"));
    }
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for header in parsed.headers.iter() {
        if let Some(bad) = header
            .value
            .iter()
            .find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(format!("control byte {bad:#x} in header {}", header.name));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| "non-UTF-8 Content-Length")?;
            let n: usize = text
                .parse()
                .map_err(|_| format!("Content-Length {text:?}"))?;
            if length.replace(n).is_some() {
                return Err("two Content-Length headers".into());
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if header.value != b"chunked" || chunked {
                return Err(format!("Transfer-Encoding {:?}", show(header.value)));
            }
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("connection") {
            close |= header.value.eq_ignore_ascii_case(b"close");
        }
    }
    if chunked && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    let no_body = status == 204 || status == 304;
    if no_body && (chunked || length.is_some()) {
        return Err(format!("{status} with a framing header"));
    }
    // A response to HEAD announces a length (or chunked) and sends nothing.
    let bodyless = rest.is_empty() || rest.starts_with(b"HTTP/1.");
    if no_body || ((chunked || length.is_some()) && bodyless) {
        let announced = length.is_some_and(|n| n > 0) || chunked;
        return Ok((response(status, close, Vec::new(), announced), head_len));
    }
    if let Some(n) = length {
        if rest.len() < n {
            return Err(format!(
                "{TRUNCATED}Content-Length {n} but {} bytes follow",
                rest.len()
            ));
        }
        return Ok((
            response(status, close, rest[..n].to_vec(), false),
            head_len + n,
        ));
    }
    if chunked {
        let (body, used) = dechunk(rest)?;
        return Ok((response(status, close, body, false), head_len + used));
    }
    // Delimited by close (a stream to HTTP/1.0): must say so, and be last.
    if !close {
        return Err("body without length, chunking or Connection: close".into());
    }
    Ok((response(status, close, rest.to_vec(), false), bytes.len()))
}

fn response(status: u16, close: bool, body: Vec<u8>, bodyless: bool) -> Response {
    Response {
        status,
        close,
        body,
        bodyless,
    }
}

/// Decodes a complete chunked body (the engine sends no extensions or
/// trailers); returns the payload and the bytes the framing used.
fn dechunk(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut body = Vec::new();
    let mut at = 0;
    // Each pass consumes a size line: bounded by bytes.len().
    loop {
        let line_end = bytes[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(format!("{TRUNCATED}no chunk size line"))?;
        let line = std::str::from_utf8(&bytes[at..at + line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(line, 16).map_err(|_| format!("chunk size {line:?}"))?;
        at += line_end + 2;
        if bytes.len() < at + size + 2 {
            return Err(format!("{TRUNCATED}a chunk cut short"));
        }
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
        if size == 0 {
            return Ok((body, at));
        }
    }
}

/// A short, printable excerpt for error messages.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned()
}

/// `out` with every `Date:` header line removed and interim `100 Continue`
/// responses dropped: what two runs of the same input must agree on (the
/// clock may tick between them; whether 100 Continue is sent depends on how
/// the bytes arrived). Output that does not check is returned unchanged.
pub fn normalize(out: &[u8]) -> Vec<u8> {
    let mut normalized = Vec::with_capacity(out.len());
    let mut at = 0;
    while at < out.len() {
        let Ok((response, len)) = check_one(&out[at..]) else {
            return out.to_vec();
        };
        let one = &out[at..at + len];
        at += len;
        if response.status == 100 {
            continue;
        }
        let head_end = one
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a checked head ends")
            + 4;
        for line in one[..head_end].split_inclusive(|&b| b == b'\n') {
            if !line.starts_with(b"Date: ") {
                normalized.extend_from_slice(line);
            }
        }
        normalized.extend_from_slice(&one[head_end..]);
    }
    normalized
}
