//! The client machine against scripted upstreams: every framing, interim
//! answers, pooling, backpressure, and each fault mapped to its failure.

use keystone_ringbuf::SendBuf;

use super::*;

/// What the scripted upstream does when asked.
#[derive(Clone, Debug)]
enum Step {
    /// Answer the next receive with these bytes.
    Bytes(&'static [u8]),
    /// Close (the next receive gets 0).
    Close,
    /// Reset (the next receive gets -ECONNRESET).
    Reset,
    /// Say nothing: the next receive stays in flight.
    Hang,
}

struct Run {
    sent: Vec<u8>,
    head: Option<(u16, ResponseBody)>,
    body: Vec<u8>,
    outcome: Option<Result<bool, Failure>>,
    /// A receive was left in flight (the upstream hangs).
    hanging: Option<SpareLoan>,
}

fn conn() -> UpstreamConn {
    let mut buffers = keystone_ringbuf::split_slab(2, 64 * 1024).expect("slab");
    let recv = buffers.pop().unwrap();
    let send = buffers.pop().unwrap();
    UpstreamConn::new(send, recv, 64 * 1024)
}

/// A connection whose receive buffer has room to buffer `extra` bytes
/// past a 32 KiB window.
fn buffering_conn(extra: u32) -> UpstreamConn {
    let send = keystone_ringbuf::split_slab(1, 64 * 1024)
        .expect("slab")
        .pop()
        .unwrap();
    let recv = keystone_ringbuf::split_slab(1, 32 * 1024 + extra)
        .expect("slab")
        .pop()
        .unwrap();
    UpstreamConn::new(send, recv, 32 * 1024)
}

/// Drives `conn` through one request: `connect` is the connect's result
/// (None: a pooled connection), the client side takes at most
/// `client_window` body bytes per turn.
fn run(
    conn: &mut UpstreamConn,
    request: &[u8],
    connect: Option<i32>,
    script: &[Step],
    head_request: bool,
) -> Run {
    conn.request_buffer().append(request).expect("room");
    conn.start(connect.is_none(), head_request);
    let mut steps = script.iter().cloned();
    let mut out = Run {
        sent: Vec::new(),
        head: None,
        body: Vec::new(),
        outcome: None,
        hanging: None,
    };
    for _ in 0..10_000 {
        if let Some((head, _)) = conn.response_head() {
            out.head = Some((head.status, head.body));
            conn.take_head();
        }
        let ready = conn.body().len() as u32;
        if ready > 0 {
            out.body.extend_from_slice(conn.body());
            conn.consume_body(ready);
        }
        if let Some(outcome) = conn.outcome() {
            out.outcome = Some(outcome);
            return out;
        }
        let Some(intent) = conn.poll() else {
            return out; // waiting (a hang): the pump would arm `timeout()`
        };
        let event = match intent {
            UpstreamIntent::Connect => UpstreamEvent::Connected {
                result: connect.expect("a fresh connection"),
            },
            UpstreamIntent::Send(buf) => sent_whole(buf, &mut out.sent),
            UpstreamIntent::Recv(mut loan) => match steps.next().unwrap_or(Step::Hang) {
                Step::Bytes(bytes) => {
                    let n = bytes.len().min(loan.len() as usize);
                    loan.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
                    UpstreamEvent::Received {
                        buf: loan,
                        result: n as i32,
                    }
                }
                Step::Close => UpstreamEvent::Received {
                    buf: loan,
                    result: 0,
                },
                Step::Reset => UpstreamEvent::Received {
                    buf: loan,
                    result: -104,
                },
                Step::Hang => {
                    out.hanging = Some(loan);
                    return out;
                }
            },
        };
        conn.on(event);
    }
    panic!("the machine did not settle");
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";

/// The socket took all of a send: its bytes are recorded in `sent`.
fn sent_whole(buf: SendBuf, sent: &mut Vec<u8>) -> UpstreamEvent {
    let SendBuf::Buffer(loan) = &buf else {
        panic!("only its own buffer")
    };
    sent.extend_from_slice(loan.as_slice());
    let len = loan.len() as i32;
    UpstreamEvent::Sent { buf, result: len }
}

#[test]
fn length_chunked_and_close_delimited_bodies() {
    use ResponseBody::*;
    type Row<'a> = (&'a [Step], (u16, ResponseBody), &'a [u8], bool);
    let rows: &[Row] = &[
        (
            &[Step::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            )],
            (200, Length(5)),
            b"hello",
            true,
        ),
        (
            &[
                Step::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel"),
                Step::Bytes(b"lo wo"),
                Step::Bytes(b"rld"),
            ],
            (200, Length(11)),
            b"hello world",
            true,
        ),
        (
            &[
                Step::Bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
                Step::Bytes(b"lo\r\n6\r\n world\r\n0\r\n\r\n"),
            ],
            (200, Chunked),
            b"hello world",
            true,
        ),
        (
            &[
                Step::Bytes(b"HTTP/1.1 200 OK\r\n\r\nuntil "),
                Step::Bytes(b"close"),
                Step::Close,
            ],
            (200, UntilClose),
            b"until close",
            false,
        ),
        (
            &[Step::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n")],
            (204, None),
            b"",
            true,
        ),
        (
            &[Step::Bytes(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            )],
            (201, Length(2)),
            b"ok",
            true,
        ),
        // An interim answer in a receive of its own (a backend answering
        // `Expect` or sending 103 Early Hints before it has the final
        // head): the next receive is armed for the final head.
        (
            &[
                Step::Bytes(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Step::Bytes(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
            ],
            (201, Length(2)),
            b"ok",
            true,
        ),
        (
            &[
                Step::Bytes(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),
                Step::Bytes(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le"),
                Step::Bytes(b"ngth: 2\r\n\r\nok"),
            ],
            (200, Length(2)),
            b"ok",
            true,
        ),
        // Half an interim head, then its end and the final head.
        (
            &[
                Step::Bytes(b"HTTP/1.1 100 Cont"),
                Step::Bytes(b"inue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
            ],
            (204, None),
            b"",
            true,
        ),
        (
            &[Step::Bytes(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            )],
            (200, Length(2)),
            b"ok",
            false,
        ),
        // More bytes than the framing said: delivered exactly, never reused.
        (
            &[Step::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            )],
            (200, Length(2)),
            b"ok",
            false,
        ),
    ];
    for (script, head, body, reusable) in rows {
        let mut upstream = conn();
        let got = run(&mut upstream, GET, Some(0), script, false);
        assert_eq!(got.sent, GET, "{script:?}");
        assert_eq!(got.head, Some(*head), "{script:?}");
        assert_eq!(got.body, *body, "{script:?}");
        assert_eq!(got.outcome, Some(Ok(*reusable)), "{script:?}");
    }
}

#[test]
fn a_head_request_reads_no_body_and_a_pooled_connection_serves_again() {
    let mut upstream = conn();
    let got = run(
        &mut upstream,
        b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        Some(0),
        &[Step::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        )],
        true,
    );
    assert_eq!(got.body, b"");
    assert_eq!(got.outcome, Some(Ok(true)));
    upstream.reset_for_pool();
    // Pooled: no connect this time.
    let got = run(
        &mut upstream,
        GET,
        None,
        &[Step::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        )],
        false,
    );
    assert_eq!(got.body, b"hi");
    assert_eq!(got.outcome, Some(Ok(true)));
}

#[test]
fn failures_map_to_their_status_and_retry_rule() {
    type Row<'a> = (Option<i32>, &'a [Step], Failure, u16, bool);
    let rows: &[Row] = &[
        (Some(-111), &[], Failure::Refused, 502, true),
        (Some(-113), &[], Failure::ConnectFailed(113), 502, true),
        (
            Some(0),
            &[Step::Close],
            Failure::ClosedBeforeHead { any_byte: false },
            502,
            true,
        ),
        (
            Some(0),
            &[Step::Reset],
            Failure::ClosedBeforeHead { any_byte: false },
            502,
            true,
        ),
        (
            Some(0),
            &[Step::Bytes(b"HTTP/1.1 200"), Step::Close],
            Failure::ClosedBeforeHead { any_byte: true },
            502,
            false,
        ),
        (
            Some(0),
            &[Step::Bytes(b"SSH-2.0-OpenSSH_9\r\n\r\n")],
            Failure::BadHead(ParseError::Malformed),
            502,
            false,
        ),
        (
            Some(0),
            &[Step::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            )],
            Failure::BadHead(ParseError::ConflictingFraming),
            502,
            false,
        ),
        (
            Some(0),
            &[
                Step::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
                Step::Close,
            ],
            Failure::BrokenBody,
            502,
            false,
        ),
        (
            Some(0),
            &[
                Step::Bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
                Step::Reset,
            ],
            Failure::BrokenBody,
            502,
            false,
        ),
        (
            Some(0),
            &[Step::Bytes(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            )],
            Failure::BrokenBody,
            502,
            false,
        ),
        (
            Some(0),
            &[Step::Bytes(b"HTTP/1.1 200 OK\r\n\r\npartial"), Step::Reset],
            Failure::BrokenBody,
            502,
            false,
        ),
    ];
    for (connect, script, failure, status, retryable) in rows {
        let mut upstream = conn();
        let got = run(&mut upstream, GET, *connect, script, false);
        assert_eq!(got.outcome, Some(Err(*failure)), "{script:?}");
        assert_eq!(failure.status(), *status, "{failure:?}");
        assert_eq!(failure.before_any_response(), *retryable, "{failure:?}");
        assert!(!failure.reason().is_empty());
    }
}

#[test]
fn a_bad_head_says_what_is_wrong_with_it() {
    let big_head: &'static [u8] = {
        let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        head.resize(head.len() + RESPONSE_HEAD_MAX as usize, b'a');
        head.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
        head.leak()
    };
    let rows: &[(&'static [u8], &str)] = &[
        (big_head, "malformed response head: larger than 16 KiB"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "malformed response head: both Content-Length and Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "malformed response head: invalid Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
            "malformed response head: a folded header line",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "malformed response head: a transfer coding other than chunked",
        ),
        (b"SSH-2.0-OpenSSH_9\r\n\r\n", "malformed response head"),
    ];
    for &(bytes, reason) in rows {
        let mut upstream = conn();
        let got = run(&mut upstream, GET, Some(0), &[Step::Bytes(bytes)], false);
        let Some(Err(failure @ Failure::BadHead(_))) = got.outcome else {
            panic!(
                "{:?}: {:?}",
                String::from_utf8_lossy(&bytes[..40]),
                got.outcome
            );
        };
        assert_eq!(failure.reason(), reason, "{failure:?}");
        assert_eq!(failure.status(), 502);
    }
}

#[test]
fn a_failed_tls_handshake_is_a_failed_connect() {
    // The pump tells the machine `Connected` only after the handshake, so
    // the connect timeout bounds both; a handshake that fails instead is
    // TlsFailed: 502, another peer may be tried, the request kept for it.
    let mut upstream = conn();
    upstream.request_buffer().append(GET).unwrap();
    upstream.start(false, false);
    assert!(matches!(upstream.poll(), Some(UpstreamIntent::Connect)));
    assert_eq!(upstream.timeout(), Some(Wait::Connect));
    upstream.on(UpstreamEvent::TlsFailed);
    assert_eq!(upstream.outcome(), Some(Err(Failure::Tls)));
    assert_eq!(Failure::Tls.status(), 502);
    assert!(Failure::Tls.before_any_response());
    assert_eq!(Failure::Tls.reason(), "TLS handshake failed");
    assert!(!upstream.sent_any());
    assert!(
        upstream.retry_fresh(),
        "the same request goes to another peer"
    );
    assert!(matches!(upstream.poll(), Some(UpstreamIntent::Connect)));

    // After the handshake it means nothing: the machine's own reads say
    // how a broken session ends.
    let mut upstream = conn();
    let got = run(&mut upstream, GET, Some(0), &[Step::Hang], false);
    upstream.on(UpstreamEvent::TlsFailed);
    assert_eq!(upstream.outcome(), None);
    upstream.on(UpstreamEvent::Received {
        buf: got.hanging.unwrap(),
        result: -104,
    });
    assert_eq!(
        upstream.outcome(),
        Some(Err(Failure::ClosedBeforeHead { any_byte: false }))
    );
}

#[test]
fn each_wait_has_its_timeout() {
    // The connect never completes.
    let mut upstream = conn();
    upstream.request_buffer().append(GET).unwrap();
    upstream.start(false, false);
    assert!(matches!(upstream.poll(), Some(UpstreamIntent::Connect)));
    assert_eq!(upstream.timeout(), Some(Wait::Connect));
    upstream.on(UpstreamEvent::TimedOut);
    assert_eq!(upstream.outcome(), Some(Err(Failure::ConnectTimeout)));
    assert_eq!(Failure::ConnectTimeout.status(), 504);

    // Connected, the request sent, no answer: a read timeout.
    let mut upstream = conn();
    let got = run(&mut upstream, GET, Some(0), &[Step::Hang], false);
    assert_eq!(got.outcome, None);
    assert_eq!(upstream.timeout(), Some(Wait::Read));
    upstream.on(UpstreamEvent::Received {
        buf: got.hanging.unwrap(),
        result: -125,
    });
    // A cancelled receive counts as the upstream going away; the pump
    // reports the timeout it armed.
    assert!(matches!(upstream.outcome(), Some(Err(_))));
    let mut upstream = conn();
    let got = run(&mut upstream, GET, Some(0), &[Step::Hang], false);
    let loan = got.hanging.unwrap();
    upstream.on(UpstreamEvent::TimedOut);
    assert_eq!(upstream.outcome(), Some(Err(Failure::ReadTimeout)));
    upstream.on(UpstreamEvent::Received {
        buf: loan,
        result: -125,
    });
    assert_eq!(
        upstream.outcome(),
        Some(Err(Failure::ReadTimeout)),
        "the timeout stays the reason"
    );
    assert_eq!(
        Duration::from_secs(2),
        UpstreamConn::timeout_for(
            Wait::Read,
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(2)
        )
    );
}

#[test]
fn a_slow_client_holds_the_upstream_to_one_buffer() {
    let mut upstream = conn();
    upstream.request_buffer().append(GET).unwrap();
    upstream.start(true, false);
    let Some(UpstreamIntent::Send(buf)) = upstream.poll() else {
        panic!()
    };
    let len = buf.ptr_len().1 as i32;
    upstream.on(UpstreamEvent::Sent { buf, result: len });
    let Some(UpstreamIntent::Recv(mut loan)) = upstream.poll() else {
        panic!()
    };
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n";
    loan.as_mut_slice()[..head.len()].copy_from_slice(head);
    let n = loan.len();
    loan.as_mut_slice()[head.len()..].fill(b'x');
    upstream.on(UpstreamEvent::Received {
        buf: loan,
        result: n as i32,
    });
    upstream.take_head();
    assert_eq!(upstream.body().len() as u32, n - head.len() as u32);
    // The client has not taken the bytes: no more receives.
    assert!(upstream.poll().is_none());
    assert_eq!(
        upstream.timeout(),
        None,
        "waiting for the client is not the upstream's timeout"
    );
    upstream.consume_body(10);
    assert!(upstream.poll().is_none(), "still bytes waiting");
    let rest = upstream.body().len() as u32;
    upstream.consume_body(rest);
    assert!(matches!(upstream.poll(), Some(UpstreamIntent::Recv(_))));
}

#[test]
fn a_pooled_connection_notices_its_upstream_closing() {
    let mut upstream = conn();
    let got = run(
        &mut upstream,
        GET,
        Some(0),
        &[Step::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
        false,
    );
    assert_eq!(got.outcome, Some(Ok(true)));
    upstream.reset_for_pool();
    assert!(upstream.is_pooled());
    // The probe: the upstream's keep-alive timeout closes it.
    let Some(UpstreamIntent::Recv(loan)) = upstream.poll() else {
        panic!("no probe")
    };
    upstream.on(UpstreamEvent::Received {
        buf: loan,
        result: 0,
    });
    assert!(matches!(
        upstream.outcome(),
        Some(Err(Failure::ClosedBeforeHead { any_byte: false }))
    ));
    upstream.discard();

    // Reused while the probe is armed: the probe's bytes are the answer.
    let got = run(
        &mut upstream,
        GET,
        Some(0),
        &[Step::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        )],
        false,
    );
    assert_eq!(got.outcome, Some(Ok(true)));
    upstream.reset_for_pool();
    let Some(UpstreamIntent::Recv(mut probe)) = upstream.poll() else {
        panic!("no probe")
    };
    upstream.request_buffer().append(GET).unwrap();
    upstream.start(true, false);
    let Some(UpstreamIntent::Send(buf)) = upstream.poll() else {
        panic!("no send")
    };
    let len = buf.ptr_len().1 as i32;
    upstream.on(UpstreamEvent::Sent { buf, result: len });
    assert!(upstream.poll().is_none(), "the probe is the receive");
    let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
    probe.as_mut_slice()[..answer.len()].copy_from_slice(answer);
    upstream.on(UpstreamEvent::Received {
        buf: probe,
        result: answer.len() as i32,
    });
    upstream.take_head();
    assert_eq!(upstream.outcome(), Some(Ok(true)));
}

#[test]
fn a_refused_connect_can_be_retried_with_the_same_request() {
    let mut upstream = conn();
    let got = run(&mut upstream, GET, Some(-111), &[], false);
    assert_eq!(got.outcome, Some(Err(Failure::Refused)));
    assert!(upstream.retry_fresh());
    let mut sent = Vec::new();
    let Some(UpstreamIntent::Connect) = upstream.poll() else {
        panic!()
    };
    upstream.on(UpstreamEvent::Connected { result: 0 });
    let Some(UpstreamIntent::Send(buf)) = upstream.poll() else {
        panic!()
    };
    if let SendBuf::Buffer(loan) = &buf {
        sent.extend_from_slice(loan.as_slice());
    }
    assert_eq!(sent, GET, "the whole request, again");
    let len = buf.ptr_len().1 as i32;
    upstream.on(UpstreamEvent::Sent { buf, result: len });
    // The upstream closes without answering (a stale pooled connection, a
    // crashed backend): the request went out, and is still kept whole.
    let Some(UpstreamIntent::Recv(loan)) = upstream.poll() else {
        panic!()
    };
    upstream.on(UpstreamEvent::Received {
        buf: loan,
        result: 0,
    });
    assert!(matches!(
        upstream.outcome(),
        Some(Err(Failure::ClosedBeforeHead { any_byte: false }))
    ));
    assert!(
        upstream.sent_any(),
        "the caller decides: idempotent requests only"
    );
    assert!(upstream.retry_fresh());
    let got = {
        let Some(UpstreamIntent::Connect) = upstream.poll() else {
            panic!()
        };
        upstream.on(UpstreamEvent::Connected { result: 0 });
        let Some(UpstreamIntent::Send(buf)) = upstream.poll() else {
            panic!()
        };
        let bytes = match &buf {
            SendBuf::Buffer(loan) => loan.as_slice().to_vec(),
            SendBuf::Pinned(_) => unreachable!(),
        };
        let len = bytes.len() as i32;
        upstream.on(UpstreamEvent::Sent { buf, result: len });
        bytes
    };
    assert_eq!(got, GET, "sent whole a third time");
    // Once an answer arrives, the request is gone: no retry after that.
    let Some(UpstreamIntent::Recv(mut loan)) = upstream.poll() else {
        panic!()
    };
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    loan.as_mut_slice()[..answer.len()].copy_from_slice(answer);
    upstream.on(UpstreamEvent::Received {
        buf: loan,
        result: answer.len() as i32,
    });
    upstream.take_head();
    assert_eq!(upstream.outcome(), Some(Ok(true)));
    assert!(!upstream.retry_fresh());
}

#[test]
fn a_request_sent_in_pieces_is_kept_until_its_answer() {
    let mut upstream = conn();
    let request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    upstream.request_buffer().append(request).unwrap();
    upstream.start(true, false);
    let mut sent = Vec::new();
    // The socket takes 7 bytes at a time.
    while let Some(UpstreamIntent::Send(buf)) = upstream.poll() {
        let SendBuf::Buffer(loan) = &buf else {
            panic!()
        };
        let take = loan.len().min(7);
        sent.extend_from_slice(&loan.as_slice()[..take as usize]);
        upstream.on(UpstreamEvent::Sent {
            buf,
            result: take as i32,
        });
    }
    assert_eq!(sent, request);
    // An early answer while the body is still going out: the rest is not
    // sent, and the connection is not reused.
    let mut early = conn();
    early.request_buffer().append(request).unwrap();
    early.start(true, false);
    let Some(UpstreamIntent::Send(buf)) = early.poll() else {
        panic!()
    };
    let Some(UpstreamIntent::Recv(mut loan)) = early.poll() else {
        panic!()
    };
    let answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n";
    loan.as_mut_slice()[..answer.len()].copy_from_slice(answer);
    early.on(UpstreamEvent::Received {
        buf: loan,
        result: answer.len() as i32,
    });
    early.on(UpstreamEvent::Sent { buf, result: 10 });
    assert!(
        early.poll().is_none(),
        "nothing more is sent after the answer"
    );
    early.take_head();
    assert_eq!(
        early.outcome(),
        Some(Ok(false)),
        "the upstream may still expect the body"
    );
}

/// Completes the send in flight (all of it), if any, recording its bytes.
fn complete_send(conn: &mut UpstreamConn, sent: &mut Vec<u8>) -> bool {
    match conn.poll() {
        Some(UpstreamIntent::Send(buf)) => {
            conn.on(sent_whole(buf, sent));
            true
        }
        Some(UpstreamIntent::Recv(loan)) => {
            // Keep the receive armed: hand it back empty-handed later.
            conn.on(UpstreamEvent::Received {
                buf: loan,
                result: -11,
            });
            false
        }
        _ => false,
    }
}

#[test]
fn a_streamed_body_is_chunk_framed_sent_as_it_comes_and_trimmed() {
    let mut conn = conn();
    let head = b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    conn.request_buffer().append(head).unwrap();
    conn.start(true, false);
    conn.stream_body(true);
    // The backend answers once the body is complete: no read timeout
    // while the client is still sending it.
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    assert_eq!(conn.timeout(), None);
    assert_eq!(conn.push_body(b"hello"), 5);
    assert_eq!(conn.push_body(&[b'x'; 300]), 300);
    assert!(complete_send(&mut conn, &mut sent));
    conn.end_body();
    assert!(complete_send(&mut conn, &mut sent));
    let mut expected = head.to_vec();
    expected.extend_from_slice(b"5\r\nhello\r\n12c\r\n");
    expected.extend_from_slice(&[b'x'; 300]);
    expected.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(sent, expected);
    // What went out was dropped: the buffer has room again, and the
    // request can no longer be sent elsewhere.
    assert!(conn.send.is_empty());
    assert!(conn.trimmed);
}

#[test]
fn a_full_buffer_takes_part_of_a_streamed_body_and_the_rest_after_a_send() {
    let mut conn = conn();
    conn.request_buffer()
        .append(b"PUT /u HTTP/1.1\r\nContent-Length: 200000\r\n\r\n")
        .unwrap();
    conn.start(true, false);
    conn.stream_body(false);
    let big = vec![7u8; 200_000];
    let first = conn.push_body(&big);
    assert!(first > 0 && first < 200_000, "took {first}");
    assert_eq!(
        conn.push_body(&big[first as usize..]),
        0,
        "no room until a send"
    );
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    let second = conn.push_body(&big[first as usize..]);
    assert!(second > 0);
}

#[test]
fn a_streamed_request_is_reused_only_once_all_of_it_went_out() {
    // The backend answered (whole) before the body ended: not reusable.
    let mut conn = conn();
    conn.request_buffer()
        .append(b"POST /u HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    conn.start(true, false);
    conn.stream_body(false);
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    conn.push_body(b"abc");
    let run = run_rest(
        &mut conn,
        b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(run, Some(Ok(false)));
    // The body ended and went out before the answer: reusable.
    let mut conn = self::conn();
    conn.request_buffer()
        .append(b"POST /u HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    conn.start(true, false);
    conn.stream_body(false);
    conn.push_body(b"abc");
    conn.end_body();
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    assert_eq!(conn.timeout(), None, "no receive armed yet");
    let run = run_rest(&mut conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(run, Some(Ok(true)));
}

/// Sends whatever is queued, then answers the next receive with `answer`
/// and takes head and body: the outcome.
fn run_rest(conn: &mut UpstreamConn, answer: &[u8]) -> Option<Result<bool, Failure>> {
    let mut sent = Vec::new();
    for _ in 0..100 {
        match conn.poll() {
            Some(UpstreamIntent::Send(buf)) => conn.on(sent_whole(buf, &mut sent)),
            Some(UpstreamIntent::Recv(mut loan)) => {
                loan.as_mut_slice()[..answer.len()].copy_from_slice(answer);
                conn.on(UpstreamEvent::Received {
                    buf: loan,
                    result: answer.len() as i32,
                });
            }
            Some(UpstreamIntent::Connect) => panic!("connected already"),
            None => {}
        }
        if conn.response_head().is_some() {
            conn.take_head();
        }
        let ready = conn.body().len() as u32;
        conn.consume_body(ready);
        if let Some(outcome) = conn.outcome() {
            return Some(outcome);
        }
    }
    None
}

#[test]
fn a_101_opens_a_tunnel_only_for_an_upgrade_request() {
    // Not asked for: a malformed answer.
    let mut conn = conn();
    let run = run(
        &mut conn,
        GET,
        None,
        &[Step::Bytes(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        )],
        false,
    );
    assert!(
        matches!(run.outcome, Some(Err(Failure::BadHead(_)))),
        "{:?}",
        run.outcome
    );
    // Asked for: the "body" is every byte until the upstream closes, and
    // pushed bytes go upstream unframed; never reused.
    let mut conn = self::conn();
    conn.request_buffer().append(GET).unwrap();
    conn.start(true, false);
    conn.expect_upgrade();
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    let Some(UpstreamIntent::Recv(mut loan)) = conn.poll() else {
        panic!("a receive for the answer")
    };
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
    loan.as_mut_slice()[..answer.len()].copy_from_slice(answer);
    conn.on(UpstreamEvent::Received {
        buf: loan,
        result: answer.len() as i32,
    });
    let (head, _) = conn.response_head().expect("the 101");
    assert_eq!((head.status, head.body), (101, ResponseBody::UntilClose));
    conn.take_head();
    assert_eq!(conn.body(), b"\x81\x02hi");
    conn.consume_body(4);
    assert_eq!(conn.push_body(b"\x81\x02yo"), 4);
    sent.clear();
    assert!(complete_send(&mut conn, &mut sent));
    assert_eq!(sent, b"\x81\x02yo", "only the new bytes, unframed");
    let Some(UpstreamIntent::Recv(loan)) = conn.poll() else {
        panic!("a receive for more")
    };
    conn.on(UpstreamEvent::Received {
        buf: loan,
        result: 0,
    });
    assert_eq!(conn.outcome(), Some(Ok(false)));
}

#[test]
fn a_buffered_body_is_shown_whole_with_its_head() {
    let mut conn = buffering_conn(64 * 1024);
    conn.request_buffer().append(GET).unwrap();
    conn.start(true, false);
    conn.buffer_body(10_000);
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    let pieces: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n7\r\n, worl",
        b"d\r\n0\r\n\r\n",
    ];
    for piece in pieces {
        assert!(
            conn.response_head().is_none(),
            "no head before the whole body"
        );
        let Some(UpstreamIntent::Recv(mut loan)) = conn.poll() else {
            panic!("a receive for more of the body")
        };
        loan.as_mut_slice()[..piece.len()].copy_from_slice(piece);
        conn.on(UpstreamEvent::Received {
            buf: loan,
            result: piece.len() as i32,
        });
    }
    assert_eq!(conn.buffered_body(), Some(&b"hello, world"[..]));
    let (head, _) = conn.response_head().expect("the head, with the body whole");
    assert_eq!(head.status, 200);
    conn.take_head();
    assert_eq!(conn.buffered_body(), None);
    assert_eq!(conn.body(), b"hello, world");
    conn.consume_body(12);
    assert_eq!(conn.outcome(), Some(Ok(true)));
}

#[test]
fn a_body_larger_than_the_buffer_limit_fails() {
    let mut conn = buffering_conn(64 * 1024);
    let run_head = b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n";
    conn.request_buffer().append(GET).unwrap();
    conn.start(true, false);
    conn.buffer_body(1000);
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    let Some(UpstreamIntent::Recv(mut loan)) = conn.poll() else {
        panic!("a receive")
    };
    let mut bytes = run_head.to_vec();
    bytes.extend_from_slice(&[b'z'; 2000]);
    loan.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
    conn.on(UpstreamEvent::Received {
        buf: loan,
        result: bytes.len() as i32,
    });
    assert_eq!(
        conn.outcome(),
        Some(Err(Failure::TooLargeToBuffer { limit: 1000 }))
    );
    assert_eq!(Failure::TooLargeToBuffer { limit: 1000 }.status(), 502);
}

#[test]
fn relaying_receives_take_one_window_whatever_the_capacity() {
    let mut conn = buffering_conn(256 * 1024);
    conn.request_buffer().append(GET).unwrap();
    conn.start(true, false);
    let mut sent = Vec::new();
    assert!(complete_send(&mut conn, &mut sent));
    let Some(UpstreamIntent::Recv(loan)) = conn.poll() else {
        panic!("a receive")
    };
    assert_eq!(loan.len(), 32 * 1024);
    conn.on(UpstreamEvent::Received {
        buf: loan,
        result: 0,
    });
}

#[test]
fn a_pooled_connections_probe_takes_one_window() {
    let mut conn = buffering_conn(256 * 1024);
    let run = run(
        &mut conn,
        GET,
        None,
        &[Step::Bytes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )],
        false,
    );
    assert_eq!(run.outcome, Some(Ok(true)));
    conn.reset_for_pool();
    let Some(UpstreamIntent::Recv(loan)) = conn.poll() else {
        panic!("the probe")
    };
    assert_eq!(
        loan.len(),
        32 * 1024,
        "the probe is one window, not the buffer"
    );
    conn.on(UpstreamEvent::Received {
        buf: loan,
        result: 0,
    });
}
