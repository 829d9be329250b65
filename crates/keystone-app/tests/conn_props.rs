//! Properties of one connection — keystone-conn's state machine with the
//! real policy (router, Lua, response builder), driven in-process by its
//! `sim` driver: whatever bytes arrive, the output is a sequence of
//! well-formed HTTP/1.1 responses; how the bytes are split across reads
//! and how sends complete partially does not change it; pipelined requests
//! are answered one each, in order; nothing follows a framing error. The
//! app and the connection are shared with the fuzz targets
//! (`fuzz/src/lib.rs`).

// The fuzz targets' helpers this file does not use are dead code here.
#[allow(dead_code)]
#[path = "../../../fuzz/src/lib.rs"]
mod support;

use keystone_parser::Limits;
use proptest::prelude::*;
use support::{check_responses, connection, normalize, Response, Sim, MAX_PIPELINE_DEFAULT};

type Connection = Sim<keystone_app::AppPolicy>;

/// Limits small enough that arbitrary input reaches them: a 1 KiB receive
/// buffer (512 head + 512 body).
const SMALL_LIMITS: Limits = Limits {
    max_header_bytes: 512,
    max_headers: 16,
    max_uri_bytes: 128,
    max_body_bytes: 512,
};

/// Valid requests that keep the connection open, with the body each answer
/// must carry (`None`: checked elsewhere, e.g. the status only).
const KEEP_ALIVE: &[(&[u8], Option<&[u8]>)] = &[
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"hello")),
    (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        Some(b"len=3 hex=616263"),
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nab\r\n1\r\nc\r\n0\r\nTrailer: x\r\n\r\n",
        Some(b"len=3 hex=616263"),
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        Some(b"len=2 hex=6869"),
    ),
    (
        b"GET http://example.com/n/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        Some(b"n=78"),
    ),
    (b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"chunk1chunk2chunk3")),
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"")),
    (b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"Not Found\n")),
    (b"DELETE /n/1 HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET /h?q=a%0d%0aSet-Cookie:%20x HTTP/1.1\r\nHost: a\r\n\r\n", None),
    (b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"")),
    (b"PATCH /any HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"method=5041544348")),
];

/// Valid requests after which the connection closes.
const CLOSING: &[&[u8]] = &[
    b"GET /n/abc HTTP/1.0\r\n\r\n",
    b"GET /stream HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
];

/// Requests the engine must refuse with an error and a close.
const MALFORMED: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
];

fn default_connection() -> Connection {
    connection(Limits::default(), MAX_PIPELINE_DEFAULT)
}

/// Feeds `pieces` in order (each arrives as one read) and returns all
/// output.
fn feed_all(conn: &mut Connection, pieces: &[&[u8]]) -> Vec<u8> {
    for piece in pieces {
        conn.feed(piece);
    }
    conn.take_output()
}

/// Feeds `bytes`, returns what it caused.
fn feed(conn: &mut Connection, bytes: &[u8]) -> Vec<u8> {
    conn.feed(bytes);
    conn.take_output()
}

/// The connection said it is done: its FIN is out (or it closed).
fn closed(conn: &Connection) -> bool {
    conn.write_shut() || conn.closed()
}

/// Partial-send patterns: sizes each send completes with (empty: whole).
fn send_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5000, 0..3)
}

/// Cuts `bytes` at the (sorted, clamped) `cuts`.
fn split_at<'b>(bytes: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        pieces.push(&bytes[start..cut]);
        start = cut;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// Checks `out`, panicking with the input on failure.
fn responses(out: &[u8], input: &[u8]) -> Vec<Response> {
    match check_responses(out) {
        Ok(responses) => responses,
        Err(e) => panic!(
            "{e}\ninput: {:?}\noutput: {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(out)
        ),
    }
}

/// Final responses only (interim 100 Continue dropped).
fn finals(responses: Vec<Response>) -> Vec<Response> {
    responses.into_iter().filter(|r| r.status != 100).collect()
}

/// Bytes that push the parser into interesting places when spliced in.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\0",
    b":",
    b"HEAD",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"0\r\n\r\n",
    b"ffffffff\r\n",
    b"%0d%0a",
    b"HTTP/1.0",
];

/// One edit of a request sequence: (position seed, kind, byte or token).
fn mutation() -> impl Strategy<Value = (usize, u8, u8)> {
    (any::<usize>(), 0u8..4, any::<u8>())
}

fn apply(bytes: &mut Vec<u8>, (at, kind, value): (usize, u8, u8)) {
    let at = at % (bytes.len() + 1);
    match kind {
        0 if at < bytes.len() => bytes[at] = value,
        1 if at < bytes.len() => {
            bytes.remove(at);
        }
        2 => bytes.insert(at, value),
        _ => {
            let token = TOKENS[value as usize % TOKENS.len()];
            bytes.splice(at..at, token.iter().copied());
        }
    }
}

/// A few valid requests (any of the tables), back to back.
fn valid_sequence() -> impl Strategy<Value = Vec<u8>> {
    let any_request = prop_oneof![
        (0..KEEP_ALIVE.len()).prop_map(|i| KEEP_ALIVE[i].0),
        (0..CLOSING.len()).prop_map(|i| CLOSING[i]),
    ];
    prop::collection::vec(any_request, 1..5).prop_map(|requests| requests.concat())
}

/// Arbitrary bytes, or valid requests with a few edits.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (valid_sequence(), prop::collection::vec(mutation(), 0..5)).prop_map(
            |(mut bytes, edits)| {
                for edit in edits {
                    apply(&mut bytes, edit);
                }
                bytes
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any input, any split: no panic, well-formed responses, and once the
    /// connection is closed nothing more comes out.
    #[test]
    fn any_bytes_give_well_formed_responses(
        input in hostile_input(),
        cuts in prop::collection::vec(any::<usize>(), 0..3),
        small in any::<bool>(),
        sends in send_sizes(),
    ) {
        let mut conn = if small {
            connection(SMALL_LIMITS, 4)
        } else {
            default_connection()
        };
        if !sends.is_empty() {
            conn.send_sizes(sends);
        }
        let out = feed_all(&mut conn, &split_at(&input, &cuts));
        let responses = responses(&out, &input);
        if closed(&conn) {
            prop_assert!(responses.last().is_some_and(|r| r.close));
            prop_assert!(feed(&mut conn, KEEP_ALIVE[0].0).is_empty());
        }
    }

    /// Where the reads split a valid sequence, and how the sends complete
    /// (any partial-send pattern), does not change the answers.
    #[test]
    fn split_points_and_partial_sends_do_not_change_output(
        input in valid_sequence(),
        cuts in prop::collection::vec(any::<usize>(), 1..4),
        sends in send_sizes(),
    ) {
        let whole = feed(&mut default_connection(), &input);
        let mut conn = default_connection();
        if !sends.is_empty() {
            conn.send_sizes(sends);
        }
        let split = feed_all(&mut conn, &split_at(&input, &cuts));
        prop_assert_eq!(normalize(&split), normalize(&whole));
    }

    /// N pipelined requests: exactly N answers, in order, whatever
    /// `--max-pipeline` and however the bytes are split.
    #[test]
    fn pipelined_requests_answered_in_order(
        picks in prop::collection::vec((0..KEEP_ALIVE.len(), any::<u16>()), 1..80),
        max_pipeline in prop::sample::select(vec![1u32, 3, 64]),
        cuts in prop::collection::vec(any::<usize>(), 0..3),
        sends in send_sizes(),
    ) {
        let mut input = Vec::new();
        let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
        for (index, tag) in picks {
            // Alternate table requests with one naming its position.
            if tag % 2 == 0 {
                let (request, body) = KEEP_ALIVE[index];
                input.extend_from_slice(request);
                expected.push(body.map(<[u8]>::to_vec));
            } else {
                let request = format!("GET /n/{tag} HTTP/1.1\r\nHost: a\r\n\r\n");
                input.extend_from_slice(request.as_bytes());
                let hex: String = tag.to_string().bytes().map(|b| format!("{b:02x}")).collect();
                expected.push(Some(format!("n={hex}").into_bytes()));
            }
        }
        let mut conn = connection(Limits::default(), max_pipeline);
        if !sends.is_empty() {
            conn.send_sizes(sends);
        }
        let out = feed_all(&mut conn, &split_at(&input, &cuts));
        let answers = finals(responses(&out, &input));
        prop_assert_eq!(answers.len(), expected.len());
        for (answer, body) in answers.iter().zip(&expected) {
            prop_assert!(!answer.close);
            if let Some(body) = body {
                prop_assert_eq!(&answer.body, body);
            }
        }
        prop_assert!(!closed(&conn));
    }

    /// After a framing error (an error status with Connection: close) the
    /// connection produces nothing more, whatever follows.
    #[test]
    fn nothing_after_a_framing_error(
        before in prop::collection::vec(0..KEEP_ALIVE.len(), 0..4),
        bad in 0..MALFORMED.len(),
        after in hostile_input(),
        later in hostile_input(),
    ) {
        let mut input: Vec<u8> = before.iter().flat_map(|&i| KEEP_ALIVE[i].0.to_vec()).collect();
        input.extend_from_slice(MALFORMED[bad]);
        input.extend_from_slice(&after);
        let mut conn = default_connection();
        let out = feed(&mut conn, &input);
        let answers = finals(responses(&out, &input));
        prop_assert_eq!(answers.len(), before.len() + 1, "output: {:?}", String::from_utf8_lossy(&out));
        let last = answers.last().expect("one answer at least");
        prop_assert!(last.status >= 400, "status {}", last.status);
        prop_assert!(last.close);
        prop_assert!(closed(&conn));
        prop_assert!(feed(&mut conn, &later).is_empty());
    }
}

/// Every valid request, split at every byte boundary, gives the same
/// answer as when it arrives in one read.
#[test]
fn every_split_point_gives_the_same_answer() {
    let requests = KEEP_ALIVE
        .iter()
        .map(|(r, _)| *r)
        .chain(CLOSING.iter().copied());
    for request in requests {
        let whole = normalize(&feed(&mut default_connection(), request));
        assert!(!whole.is_empty());
        let mut conn = default_connection();
        for cut in 0..=request.len() {
            if closed(&conn) {
                conn = default_connection();
            }
            let split = feed_all(&mut conn, &[&request[..cut], &request[cut..]]);
            assert_eq!(
                normalize(&split),
                whole,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(request)
            );
        }
    }
}

/// The table's bodies come back exactly; closing requests close.
#[test]
fn table_requests_get_their_answers() {
    for (request, body) in KEEP_ALIVE {
        let out = feed(&mut default_connection(), request);
        let answers = finals(responses(&out, request));
        assert_eq!(answers.len(), 1, "{:?}", String::from_utf8_lossy(request));
        if let Some(body) = body {
            assert_eq!(
                answers[0].body,
                *body,
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
    }
    for request in CLOSING {
        let mut conn = default_connection();
        let answers = responses(&feed(&mut conn, request), request);
        assert!(answers.last().is_some_and(|r| r.close && r.status == 200));
        assert!(closed(&conn));
    }
    for request in MALFORMED {
        let mut conn = default_connection();
        let answers = responses(&feed(&mut conn, request), request);
        assert_eq!(answers.len(), 1, "{:?}", String::from_utf8_lossy(request));
        assert!(answers[0].status >= 400 && answers[0].close);
    }
}

/// A body larger than the send buffer is pinned in Lua and still arrives
/// whole, followed by the next pipelined answer.
#[test]
fn pinned_body_then_next_answer() {
    let input = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = feed(&mut default_connection(), input);
    let answers = responses(&out, input);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].body, vec![b'b'; 100_000]);
    assert_eq!(answers[1].body, b"hello");
}

/// Regression: the receive buffer fills in the middle of a chunked body
/// whose head does not start at offset 0 (an earlier request was consumed),
/// so the worker compacts it; the decoder's saved offsets must follow.
#[test]
fn chunked_body_survives_compaction() {
    let mut first = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    first.resize(466, b'p');
    first.extend_from_slice(b"\r\n\r\n");
    let mut input = first.clone();
    input.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n",
    );
    input.extend(std::iter::repeat_n(b'd', 500));
    input.extend_from_slice(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut conn = connection(SMALL_LIMITS, 64);
    let out = feed(&mut conn, &input);
    let answers = responses(&out, &input);
    assert_eq!(answers.len(), 3, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(answers[0].body, b"hello");
    let hex: String = std::iter::repeat_n("64", 500).collect();
    assert_eq!(answers[1].body, format!("len=500 hex={hex}").into_bytes());
    assert_eq!(answers[2].body, b"hello");
}
