//! HTTP/1.1 as a test client and a fake backend see it: requests written
//! from a spec's table, responses parsed back (status, headers, the body
//! decoded from its framing), the engine's forwarded requests parsed for a
//! fake upstream and the fake's answer serialized. httparse does the head
//! grammar; framing is done here. Test support: it allocates freely.

/// Most header lines parsed in a response or a forwarded request.
const HEADERS_MAX: usize = 256;

/// A request a spec asked for, before it becomes bytes.
pub struct RequestSpec<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// Add `Content-Length` (a body was given and the headers frame none).
    pub content_length: bool,
    /// Add `Host: localhost` (the headers have none).
    pub host: bool,
}

impl RequestSpec<'_> {
    /// The request's bytes.
    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/");
        out.extend_from_slice(self.version.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.host {
            out.extend_from_slice(b"Host: localhost\r\n");
        }
        for (name, value) in self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.content_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        out
    }
}

/// A parsed response.
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// `1.1` or `1.0`.
    pub version: &'static str,
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded from its framing (chunks joined).
    pub body: Vec<u8>,
    /// The body ended as its framing says (`false`: cut short).
    pub complete: bool,
    /// Bytes of the response, head and framing included.
    pub len: usize,
}

/// Whether `bytes` begin with a whole final (non-1xx) response head.
pub fn has_response(bytes: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut head = httparse::Response::new(&mut headers);
        match head.parse(&bytes[at..]) {
            Ok(httparse::Status::Complete(used)) => match head.code {
                Some(code) if (100..200).contains(&code) && code != 101 => at += used,
                _ => return true,
            },
            _ => return false,
        }
    }
}

/// The first final response in `bytes` (interim 1xx ones skipped), to a
/// request that was a `HEAD` when `head_request`. `None`: no whole head.
pub fn parse_response(bytes: &[u8], head_request: bool) -> Result<Option<Response>, String> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut head = httparse::Response::new(&mut headers);
        let used = match head.parse(&bytes[at..]) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(format!("the response is not HTTP/1.1: {err}")),
        };
        let status = head.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            at += used;
            continue;
        }
        let fields = fields(head.headers);
        let rest = &bytes[at + used..];
        let no_body = head_request || status == 204 || status == 304 || status == 101;
        let (body, complete, body_len) = if no_body {
            (Vec::new(), true, 0)
        } else if chunked(&fields) {
            match dechunk(rest) {
                Some((body, used)) => (body, true, used),
                // Cut short: the whole chunks that came.
                None => (dechunk_partial(rest), false, rest.len()),
            }
        } else if let Some(length) = content_length(&fields) {
            let take = rest.len().min(length);
            (rest[..take].to_vec(), take == length, take)
        } else {
            (rest.to_vec(), true, rest.len())
        };
        return Ok(Some(Response {
            status,
            reason: head.reason.unwrap_or("").to_string(),
            version: if head.version == Some(0) {
                "1.0"
            } else {
                "1.1"
            },
            headers: fields,
            body,
            complete,
            len: at + used + body_len,
        }));
    }
}

/// A request the engine forwarded, as its backend sees it.
pub struct ForwardedRequest {
    pub method: String,
    /// The request target as sent (`/v1/orders?id=7`).
    pub target: String,
    /// The target's path (before `?`).
    pub path: String,
    /// The target's query (after `?`), if any.
    pub query: Option<String>,
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded from its framing.
    pub body: Vec<u8>,
    /// The exact bytes.
    pub raw: Vec<u8>,
    /// The peer it was sent to, as the app names it (filled by the engine).
    pub peer: String,
}

/// The first whole request in `bytes` and how many bytes it took.
pub fn parse_forwarded(bytes: &[u8]) -> Option<(ForwardedRequest, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut head = httparse::Request::new(&mut headers);
    let used = match head.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        _ => return None,
    };
    let fields = fields(head.headers);
    let rest = &bytes[used..];
    let (body, body_len) = if chunked(&fields) {
        dechunk(rest)?
    } else {
        let length = content_length(&fields).unwrap_or(0);
        if rest.len() < length {
            return None;
        }
        (rest[..length].to_vec(), length)
    };
    let target = head.path.unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (target.clone(), None),
    };
    let total = used + body_len;
    Some((
        ForwardedRequest {
            method: head.method.unwrap_or("").to_string(),
            target,
            path,
            query,
            headers: fields,
            body,
            raw: bytes[..total].to_vec(),
            peer: String::new(),
        },
        total,
    ))
}

/// A fake backend's answer as bytes: `Content-Length` added unless its
/// headers frame the body (or the status has none); `chunks` are sent
/// chunked instead.
pub fn write_response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    chunks: Option<&[Vec<u8>]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    let reason = keystone_response::reason(status);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    let framed = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    match chunks {
        Some(chunks) => {
            if !framed {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            out.extend_from_slice(b"\r\n");
            for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        None => {
            if !framed && !bodiless {
                out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
    out
}

fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn chunked(fields: &[(String, String)]) -> bool {
    fields.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding")
            && value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

fn content_length(fields: &[(String, String)]) -> Option<usize> {
    fields
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
}

/// A chunked body decoded, and the bytes it took (trailers included);
/// `None` until its last chunk and trailers are all there.
pub fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = find_crlf(&bytes[at..])? + at;
        let line = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let end = find_crlf(&bytes[at..])? + at;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

/// The data of the whole chunks at the start of a chunked body that was
/// cut short.
fn dechunk_partial(bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut at = 0;
    while let Some(end) = find_crlf(&bytes[at..]).map(|n| n + at) {
        let Some(size) = std::str::from_utf8(&bytes[at..end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
        else {
            break;
        };
        let start = end + 2;
        if size == 0 || bytes.len() < start + size + 2 {
            break;
        }
        body.extend_from_slice(&bytes[start..start + size]);
        at = start + size + 2;
    }
    body
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;x=1\r\nhello\r\n1\r\n!\r\n0\r\nEtag: 1\r\n\r\nNEXT";
        let (body, used) = dechunk(wire).expect("whole");
        assert_eq!(body, b"hello!");
        assert_eq!(&wire[used..], b"NEXT");
        assert!(dechunk(b"5\r\nhel").is_none());
        assert!(dechunk(b"0\r\n").is_none());
    }

    #[test]
    fn responses_skip_interim_ones_and_honour_framing() {
        let wire =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokMORE";
        let res = parse_response(wire, false).unwrap().expect("whole");
        assert_eq!(
            (res.status, res.body.as_slice(), res.complete),
            (200, &b"ok"[..], true)
        );
        assert_eq!(&wire[res.len..], b"MORE");
        let head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .expect("whole");
        assert!(head.body.is_empty() && head.complete);
        let cut = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", false)
            .unwrap()
            .expect("whole");
        assert!(!cut.complete);
        let cut = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde",
            false,
        )
        .unwrap()
        .expect("whole");
        assert_eq!((cut.body.as_slice(), cut.complete), (&b"abc"[..], false));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false)
            .unwrap()
            .is_none());
        assert!(!has_response(b"HTTP/1.1 100 Continue\r\n\r\n"));
    }

    #[test]
    fn forwarded_requests_wait_for_their_whole_body() {
        let wire = b"POST /v1/orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        assert!(parse_forwarded(&wire[..wire.len() - 1]).is_none());
        let (req, used) = parse_forwarded(wire).expect("whole");
        assert_eq!(used, wire.len());
        assert_eq!(
            (req.path.as_str(), req.query.as_deref()),
            ("/v1/orders", Some("x=1"))
        );
        assert_eq!(req.body, b"{}");
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        assert_eq!(parse_forwarded(chunked).expect("whole").0.body, b"ab");
    }

    #[test]
    fn answers_are_framed() {
        let bytes = write_response(201, &[], b"{}", None);
        assert_eq!(
            bytes,
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
        );
        let chunks = [b"a".to_vec(), Vec::new(), b"bc".to_vec()];
        let bytes = write_response(200, &[], b"", Some(&chunks));
        assert!(
            bytes.ends_with(b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")
        );
        let bytes = write_response(204, &[], b"", None);
        assert_eq!(bytes, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
