//! Request vectors: one raw request, the exact status it must get, and
//! whether the connection must close. A vector is sent with [`FOLLOW`]
//! right behind it in the same write: after a closing vector nothing may
//! ever answer those bytes; after a kept-alive one they must be answered.
//! The app under test must answer `GET /ping` with `pong`.

use std::time::Duration;

use crate::{Response, Server};

/// A valid request sent right behind every vector, in the same write.
pub const FOLLOW: &[u8] = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n";

/// How long a connection must stay quiet and open to count as kept alive.
pub const QUIET: Duration = Duration::from_millis(200);

/// One hostile (or merely unusual) request and the exact answer it must get.
pub struct Vector {
    pub name: &'static str,
    pub request: &'static [u8],
    pub status: u16,
    /// The response body, when the row pins it.
    pub body: Option<&'static str>,
    /// Whether the server must close after answering (and ignore `FOLLOW`).
    pub closes: bool,
}

pub const fn row(
    name: &'static str,
    request: &'static [u8],
    status: u16,
    body: Option<&'static str>,
    closes: bool,
) -> Vector {
    Vector {
        name,
        request,
        status,
        body,
        closes,
    }
}

/// Sends `vector` with [`FOLLOW`] behind it; checks the status, the body
/// when pinned, the response's framing, and that the connection closed
/// with nothing more said, or stayed open and answered `FOLLOW`.
pub fn check_vector(server: &Server, vector: &Vector) -> Response {
    let name = vector.name;
    let mut client = server.raw();
    let mut bytes = vector.request.to_vec();
    bytes.extend_from_slice(FOLLOW);
    client.send(&bytes);
    let method = if vector.request.starts_with(b"HEAD ") {
        "HEAD"
    } else {
        "POST"
    };
    let response = client
        .try_read_response_to(method)
        .unwrap_or_else(|error| panic!("{name}: no response: {error}"));
    assert_eq!(response.status, vector.status, "{name}: {response:?}");
    if let Some(body) = vector.body {
        assert_eq!(response.body_str(), body, "{name}");
    }
    assert_framing(&response, name);
    if vector.closes {
        assert!(response.closes(), "{name}: lacks Connection: close");
        let rest = client.expect_closed(name);
        assert!(
            rest.is_empty(),
            "{name}: the request behind the bad one was answered: {:?}",
            String::from_utf8_lossy(&rest)
        );
    } else {
        assert!(!response.closes(), "{name}: says close");
        let follow = client.read_response();
        assert_eq!(follow.body_str(), "pong", "{name}: request behind it");
        client.expect_open(QUIET, name);
    }
    response
}

/// A response never carries both Content-Length and Transfer-Encoding, nor either twice.
pub fn assert_framing(response: &Response, what: &str) {
    assert!(
        response.header("content-length").is_none()
            || response.header("transfer-encoding").is_none(),
        "{what}: both Content-Length and Transfer-Encoding: {response:?}"
    );
    assert!(
        response.header_count("content-length") <= 1,
        "{what}: {response:?}"
    );
}
