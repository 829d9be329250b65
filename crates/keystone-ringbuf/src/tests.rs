//! Conformance tests: table-driven unit tests, then a proptest state machine
//! checked against a `VecDeque<u8>` model.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

const SLOT_BYTES: u32 = 256;

fn one_buffer(slot_bytes: u32) -> RingBuffer {
    split_slab(1, slot_bytes)
        .expect("map")
        .pop()
        .expect("one buffer")
}

#[test]
fn span_basics() {
    let cases: &[(Span, u32, bool, &[u8])] = &[
        (Span::EMPTY, 0, true, b""),
        (Span::new(0, 3), 3, false, b"GET"),
        (Span::new(4, 1), 5, false, b"/"),
        (Span::new(5, 0), 5, true, b""),
    ];
    let bytes = b"GET / HTTP/1.1";
    for &(span, end, empty, expected) in cases {
        assert_eq!(span.end(), end, "{span:?}");
        assert_eq!(span.is_empty(), empty, "{span:?}");
        assert_eq!(span.slice(bytes), expected, "{span:?}");
    }
}

#[test]
fn span_slice_out_of_range_panics() {
    let result = std::panic::catch_unwind(|| Span::new(2, 3).slice(b"abcd").len());
    assert!(result.is_err());
}

#[test]
fn split_slab_regions_are_disjoint() {
    let mut buffers = split_slab(4, 100).expect("map");
    assert_eq!(buffers.len(), 4);
    for (index, buffer) in buffers.iter_mut().enumerate() {
        assert_eq!(buffer.capacity(), 100);
        assert!(buffer.filled().is_empty());
        let fill = [index as u8 + 1; 100];
        buffer.append(&fill).expect("room");
    }
    for (index, buffer) in buffers.iter().enumerate() {
        assert!(buffer.unconsumed().iter().all(|&b| b == index as u8 + 1));
    }
    let bases: Vec<usize> = buffers.iter().map(|b| b.base_ptr() as usize).collect();
    // Each buffer ends before the next begins (regions are whole pages,
    // starts staggered by cache lines: see buffers_start_on_staggered_cache_lines).
    for pair in bases.windows(2) {
        assert!(pair[1] >= pair[0] + 100, "{pair:?}");
    }
}

#[test]
fn split_slab_rejects_invalid_sizes() {
    let cases: &[(u32, u32)] = &[(0, 4096), (4096, 0), (0, 0)];
    for &(slot_count, slot_bytes) in cases {
        let error = split_slab(slot_count, slot_bytes).expect_err("invalid");
        assert_eq!(
            error,
            RingError::Map {
                slot_count,
                slot_bytes,
                errno: libc::EINVAL
            }
        );
        assert!(error.to_string().contains("cannot map"));
    }
}

#[test]
fn mapping_outlives_the_vec() {
    let mut buffers = split_slab(3, 64).expect("map");
    let mut last = buffers.pop().expect("buffer");
    drop(buffers);
    last.append(b"still mapped").expect("room");
    assert_eq!(last.unconsumed(), b"still mapped");
}

/// One step of a scripted scenario and what the cursors must read after it.
enum Step {
    Append(&'static [u8]),
    Recv(&'static [u8]),
    Consume(u32),
    Compact { shift: u32 },
    Cut { at: u32, len: u32 },
}

#[test]
fn scripted_cursor_moves() {
    // (step, head, tail, unconsumed)
    let table: &[(Step, u32, u32, &[u8])] = &[
        (Step::Recv(b"hello "), 0, 6, b"hello "),
        (Step::Append(b"world"), 0, 11, b"hello world"),
        (Step::Consume(6), 6, 11, b"world"),
        (Step::Cut { at: 7, len: 2 }, 6, 9, b"wld"),
        (Step::Compact { shift: 6 }, 0, 3, b"wld"),
        (Step::Compact { shift: 0 }, 0, 3, b"wld"),
        (Step::Consume(3), 0, 0, b""),
        (Step::Recv(b"x"), 0, 1, b"x"),
        (Step::Cut { at: 1, len: 0 }, 0, 1, b"x"),
        (Step::Cut { at: 0, len: 1 }, 0, 0, b""),
    ];
    let mut buffer = one_buffer(SLOT_BYTES);
    for (index, (step, head, tail, unconsumed)) in table.iter().enumerate() {
        match *step {
            Step::Append(bytes) => buffer.append(bytes).expect("room"),
            Step::Recv(bytes) => {
                let mut loan = buffer.lend_spare();
                assert!(bytes.len() <= loan.len() as usize);
                loan.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
                buffer.return_spare(loan, bytes.len() as u32);
            }
            Step::Consume(n) => buffer.consume(n),
            Step::Compact { shift } => assert_eq!(buffer.compact(), shift, "step {index}"),
            Step::Cut { at, len } => buffer.cut(at, len),
        }
        assert_eq!(buffer.head(), *head, "step {index}");
        assert_eq!(buffer.tail(), *tail, "step {index}");
        assert_eq!(buffer.unconsumed(), *unconsumed, "step {index}");
        assert_eq!(buffer.len() + buffer.spare() + buffer.head(), SLOT_BYTES);
    }
}

#[test]
fn append_is_all_or_nothing_at_the_limit() {
    // (already filled, append length, accepted)
    let table: &[(u32, u32, bool)] =
        &[(0, 16, true), (0, 17, false), (10, 6, true), (10, 7, false)];
    for &(filled, append_len, accepted) in table {
        let mut buffer = one_buffer(16);
        buffer.append(&vec![b'a'; filled as usize]).expect("room");
        let result = buffer.append(&vec![b'b'; append_len as usize]);
        if accepted {
            assert_eq!(result, Ok(()));
            assert_eq!(buffer.tail(), filled + append_len);
        } else {
            let spare = 16 - filled;
            assert_eq!(
                result,
                Err(RingError::Full {
                    needed: append_len,
                    spare
                })
            );
            assert_eq!(buffer.tail(), filled, "no partial write");
        }
    }
}

#[test]
fn contract_violations_panic() {
    type Violation = fn(&mut RingBuffer);
    let table: &[(&str, Violation)] = &[
        ("commit past spare", |b| b.commit(SLOT_BYTES + 1)),
        ("consume past len", |b| b.consume(5)),
        ("get past tail", |b| {
            b.get(Span::new(2, 3));
        }),
        ("get_mut past tail", |b| {
            b.get_mut(Span::new(0, 5));
        }),
        ("cut before head", |b| {
            b.consume(1);
            b.cut(0, 1);
        }),
        ("cut past tail", |b| b.cut(3, 2)),
    ];
    for (name, violation) in table {
        let result = std::panic::catch_unwind(|| {
            let mut buffer = one_buffer(SLOT_BYTES);
            buffer.append(b"abcd").expect("room");
            violation(&mut buffer);
        });
        assert!(result.is_err(), "{name} must panic");
    }
}

#[test]
fn generation_bumps_on_compact_and_reset_only() {
    let mut buffer = one_buffer(SLOT_BYTES);
    let start = buffer.generation();
    buffer.append(b"abc").expect("room");
    buffer.consume(1);
    buffer.cut(1, 1);
    assert_eq!(buffer.generation(), start);
    buffer.compact();
    assert_eq!(buffer.generation(), start + 1);
    buffer.reset_for_reuse();
    assert_eq!(buffer.generation(), start + 2);
    assert!(buffer.is_empty());
    assert_eq!(buffer.tail(), 0);
}

/// Two pipelined requests: the second's span stays valid while the first is
/// consumed, and after compact (between requests) its bytes sit at offset 0.
#[test]
fn compaction_rule_for_pipelined_requests() {
    let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(first).expect("room");
    buffer.append(second).expect("room");
    let second_span = Span::new(first.len() as u32, second.len() as u32);
    let generation = buffer.generation();

    buffer.consume(first.len() as u32);
    assert_eq!(buffer.head(), first.len() as u32);
    assert_eq!(buffer.get(second_span), second, "span valid until compact");
    assert_eq!(buffer.generation(), generation);

    let shift = buffer.compact();
    assert_eq!(shift, first.len() as u32);
    assert_ne!(
        buffer.generation(),
        generation,
        "holders can detect the move"
    );
    let moved = Span::new(second_span.offset - shift, second_span.len);
    assert_eq!(moved.offset, 0);
    assert_eq!(buffer.get(moved), second);
    assert_eq!(buffer.unconsumed(), second);
    assert_eq!(buffer.spare(), SLOT_BYTES - second.len() as u32);
}

#[test]
fn consume_to_empty_resets_without_copy() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"request").expect("room");
    let generation = buffer.generation();
    buffer.consume(7);
    assert_eq!((buffer.head(), buffer.tail()), (0, 0));
    assert_eq!(buffer.spare(), SLOT_BYTES);
    assert_eq!(buffer.generation(), generation);
}

#[test]
fn get_mut_edits_in_place() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"hello").expect("room");
    buffer.get_mut(Span::new(1, 3)).copy_from_slice(b"ELL");
    assert_eq!(buffer.filled(), b"hELLo");
    assert_eq!(buffer.get(Span::new(1, 3)), b"ELL");
}

fn resident_pages() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    statm
        .split_whitespace()
        .nth(1)
        .expect("resident")
        .parse()
        .expect("number")
}

/// Filling past the threshold and resetting gives the pages back: on
/// anonymous memory MADV_DONTNEED makes them read as zero, which proves the
/// advice ran; the first page is kept (its bytes survive).
#[test]
fn reset_for_reuse_releases_pages_past_the_threshold() {
    const SLOT: u32 = 1024 * 1024;
    let mut buffer = one_buffer(SLOT);
    let before = resident_pages();
    buffer.append(&vec![0xAB; SLOT as usize]).expect("room");
    let filled = resident_pages();
    buffer.reset_for_reuse();
    let after = resident_pages();
    let spare = buffer.spare_mut();
    let page = page_bytes().get();
    assert!(
        spare[..page].iter().all(|&b| b == 0xAB),
        "first page kept warm"
    );
    assert!(spare[page..].iter().all(|&b| b == 0), "rest released");
    // RSS is process-wide and other tests run concurrently: only report it.
    eprintln!("resident pages: before {before}, filled {filled}, after {after}");
}

/// A pinned prefix (registered with an io_uring) survives both releases;
/// the pages after it are still given back, and unpinning lets the idle
/// release take everything.
#[test]
fn pinned_prefix_is_never_released() {
    const SLOT: u32 = 1024 * 1024;
    let page = page_bytes().get();
    let pin = 3 * page as u32 + 100; // ends inside page 3: that page is kept whole
    let mut buffer = one_buffer(SLOT);
    let (ptr, len) = buffer.pin_prefix(pin);
    assert_eq!((ptr as *const u8, len), (buffer.base_ptr(), pin));
    assert_eq!(buffer.pinned(), pin);

    buffer.append(&vec![0xCD; SLOT as usize]).expect("room");
    buffer.reset_for_reuse();
    let kept = 4 * page;
    let spare = buffer.spare_mut();
    assert!(
        spare[..kept].iter().all(|&b| b == 0xCD),
        "pinned pages kept"
    );
    assert!(
        spare[kept..].iter().all(|&b| b == 0),
        "pages after the pin released"
    );

    buffer.append(&[0xEE; 8192]).expect("room");
    buffer.consume(8192);
    buffer.release_idle();
    let spare = buffer.spare_mut();
    assert!(
        spare[..kept].iter().any(|&b| b != 0),
        "idle release honours the pin"
    );

    buffer.unpin();
    assert_eq!(buffer.pinned(), 0);
    buffer.append(&[1; 8]).expect("room");
    buffer.consume(8);
    buffer.release_idle();
    assert!(
        buffer.spare_mut()[..kept].iter().all(|&b| b == 0),
        "unpinned: all released"
    );
    assert_eq!(
        buffer.pin_prefix(u32::MAX).1,
        SLOT,
        "clamped to the capacity"
    );
}

/// Pages a connection touched and a reset kept (below the threshold) are
/// still given back by the next idle release, whatever the next connection
/// wrote.
#[test]
fn idle_release_covers_pages_kept_by_an_earlier_reset() {
    let mut buffer = one_buffer(2 * RELEASE_THRESHOLD_BYTES);
    buffer.append(&vec![9; 50 * 1024]).expect("room");
    buffer.reset_for_reuse();
    assert!(buffer.touched(), "kept pages are still resident");
    buffer.append(b"small").expect("room");
    buffer.consume(5);
    buffer.release_idle();
    assert!(!buffer.touched());
    assert!(
        buffer.spare_mut()[..50 * 1024].iter().all(|&b| b == 0),
        "the first connection's pages were given back too"
    );
}

#[test]
fn reset_below_threshold_keeps_pages() {
    let mut buffer = one_buffer(2 * RELEASE_THRESHOLD_BYTES);
    buffer
        .append(&vec![7; RELEASE_THRESHOLD_BYTES as usize])
        .expect("room");
    buffer.reset_for_reuse();
    let spare = buffer.spare_mut();
    assert!(spare[..RELEASE_THRESHOLD_BYTES as usize]
        .iter()
        .all(|&b| b == 7));
}

/// Releasing must never touch a neighbour, even when regions share pages.
#[test]
fn release_never_touches_neighbouring_regions() {
    let slot_bytes = 3 * RELEASE_THRESHOLD_BYTES + 123; // not page-aligned
    let mut buffers = split_slab(3, slot_bytes).expect("map");
    for (index, buffer) in buffers.iter_mut().enumerate() {
        buffer
            .append(&vec![index as u8 + 1; slot_bytes as usize])
            .expect("room");
    }
    buffers[1].reset_for_reuse();
    assert!(buffers[0].filled().iter().all(|&b| b == 1));
    assert!(buffers[2].filled().iter().all(|&b| b == 3));
}

#[derive(Clone, Debug)]
enum Op {
    Recv(Vec<u8>),
    Append(Vec<u8>),
    Consume(u32),
    Compact,
    Cut { at: u32, len: u32 },
    Reset,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Recv),
        2 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Append),
        3 => any::<u32>().prop_map(Op::Consume),
        1 => Just(Op::Compact),
        2 => (any::<u32>(), any::<u32>()).prop_map(|(at, len)| Op::Cut { at, len }),
        1 => Just(Op::Reset),
    ]
}

fn apply(buffer: &mut RingBuffer, model: &mut VecDeque<u8>, op: &Op) {
    match op {
        Op::Recv(bytes) => {
            let n = bytes.len().min(buffer.spare() as usize);
            buffer.spare_mut()[..n].copy_from_slice(&bytes[..n]);
            buffer.commit(n as u32);
            model.extend(&bytes[..n]);
        }
        Op::Append(bytes) => {
            let fits = bytes.len() <= buffer.spare() as usize;
            assert_eq!(buffer.append(bytes).is_ok(), fits);
            if fits {
                model.extend(bytes);
            }
        }
        Op::Consume(n) => {
            let n = n % (buffer.len() + 1);
            buffer.consume(n);
            model.drain(..n as usize);
        }
        Op::Compact => {
            let head = buffer.head();
            assert_eq!(buffer.compact(), head);
            assert_eq!(buffer.head(), 0);
        }
        Op::Cut { at, len } => {
            let relative = at % (buffer.len() + 1);
            let len = len % (buffer.len() - relative + 1);
            buffer.cut(buffer.head() + relative, len);
            model.drain(relative as usize..(relative + len) as usize);
        }
        Op::Reset => {
            buffer.reset_for_reuse();
            model.clear();
        }
    }
}

proptest! {
    #[test]
    fn behaves_like_a_deque(ops in proptest::collection::vec(op_strategy(), 0..200)) {
        let mut buffer = one_buffer(SLOT_BYTES);
        let mut model = VecDeque::new();
        for op in &ops {
            apply(&mut buffer, &mut model, op);
            let expected: Vec<u8> = model.iter().copied().collect();
            prop_assert_eq!(buffer.unconsumed(), &expected[..]);
            prop_assert_eq!(buffer.len() as usize, model.len());
            prop_assert!(buffer.head() <= buffer.tail());
            prop_assert!(buffer.tail() <= buffer.capacity());
            prop_assert_eq!(buffer.spare(), SLOT_BYTES - buffer.tail());
        }
    }
}

#[test]
fn release_idle_returns_every_touched_page() {
    let mut rings = split_slab(2, 16 * 1024).unwrap();
    let ring = &mut rings[0];
    ring.append(&[7u8; 9000]).unwrap();
    ring.consume(9000);
    ring.release_idle();
    assert!(ring.is_empty());
    assert_eq!(ring.spare(), ring.capacity());
    // DONTNEED on private anonymous memory reads back as zero: the pages
    // really went back to the kernel.
    assert!(ring.spare_mut()[..9000].iter().all(|&b| b == 0));
    // The neighbour is untouched.
    rings[1].append(b"x").unwrap();
    assert_eq!(rings[1].unconsumed(), b"x");
}

#[test]
fn a_spare_loan_is_filled_in_place_and_returned() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"GET ").expect("room");
    let mut loan = buffer.lend_spare();
    assert_eq!((loan.offset(), loan.len()), (4, SLOT_BYTES - 4));
    assert!(buffer.spare_lent());
    loan.as_mut_slice()[..3].copy_from_slice(b"/ H");
    buffer.return_spare(loan, 3);
    assert!(!buffer.spare_lent());
    assert_eq!(buffer.unconsumed(), b"GET / H");
}

#[test]
fn an_advanced_spare_loan_writes_past_its_front_and_goes_back_rewound() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"GET ").expect("room");
    let mut loan = buffer.lend_spare();
    loan.as_mut_slice()[..2].copy_from_slice(b"/ ");
    loan.advance(2);
    assert_eq!((loan.offset(), loan.len()), (6, SLOT_BYTES - 6));
    assert_eq!(loan.as_mut_slice().len(), (SLOT_BYTES - 6) as usize);
    loan.as_mut_slice()[..4].copy_from_slice(b"HTTP");
    assert_eq!(loan.rewind(), 2);
    assert_eq!((loan.offset(), loan.len()), (4, SLOT_BYTES - 4));
    buffer.return_spare(loan, 6);
    assert_eq!(buffer.unconsumed(), b"GET / HTTP");
}

#[test]
#[should_panic(expected = "a loan returned while advanced")]
fn an_advanced_loan_cannot_go_back_unrewound() {
    let mut buffer = one_buffer(SLOT_BYTES);
    let mut loan = buffer.lend_spare();
    loan.advance(1);
    buffer.return_spare(loan, 1);
}

#[test]
#[should_panic(expected = "advance")]
fn a_loan_cannot_be_advanced_past_its_end() {
    let mut buffer = one_buffer(SLOT_BYTES);
    let mut loan = buffer.lend_spare();
    loan.advance(SLOT_BYTES);
}

#[test]
fn an_unsent_loan_lets_appends_go_on_and_consumes_what_was_sent() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"first").expect("room");
    let loan = buffer.lend_unsent();
    assert_eq!(loan.as_slice(), b"first");
    buffer
        .append(b"second")
        .expect("appends go past the lent bytes");
    assert_eq!(loan.as_slice(), b"first", "lent bytes never move");
    buffer.return_unsent(loan, 3);
    assert_eq!(buffer.unconsumed(), b"stsecond");
}

#[test]
fn a_drained_buffer_does_not_rewind_under_a_spare_loan() {
    let mut buffer = one_buffer(SLOT_BYTES);
    buffer.append(b"head").expect("room");
    let unsent = buffer.lend_unsent();
    let mut spare = buffer.lend_spare();
    assert_eq!(spare.offset(), 4);
    buffer.return_unsent(unsent, 4);
    assert!(buffer.is_empty());
    assert_eq!(
        (buffer.head(), buffer.tail()),
        (4, 4),
        "kept under the loan"
    );
    spare.as_mut_slice()[..4].copy_from_slice(b"body");
    buffer.return_spare(spare, 4);
    assert_eq!(buffer.unconsumed(), b"body");
}

#[test]
fn lent_bytes_refuse_whatever_would_move_or_overwrite_them() {
    type Violation = fn(&mut RingBuffer);
    let spare_lent: &[(&str, Violation)] = &[
        ("append", |b| {
            let _ = b.append(b"x");
        }),
        ("commit", |b| b.commit(1)),
        ("spare_mut", |b| {
            b.spare_mut();
        }),
        ("compact", |b| {
            b.compact();
        }),
        ("cut", |b| b.cut(0, 1)),
        ("reset_for_reuse", |b| b.reset_for_reuse()),
        ("lend_spare twice", |b| drop(b.lend_spare())),
    ];
    for (name, violation) in spare_lent {
        let result = std::panic::catch_unwind(|| {
            let mut buffer = one_buffer(SLOT_BYTES);
            buffer.append(b"abcd").expect("room");
            let loan = buffer.lend_spare();
            violation(&mut buffer);
            drop(loan);
        });
        assert!(result.is_err(), "{name} while the spare is lent must panic");
    }
    let unsent_lent: &[(&str, Violation)] = &[
        ("consume", |b| b.consume(1)),
        ("compact", |b| {
            b.compact();
        }),
        ("cut", |b| b.cut(0, 1)),
        ("reset_for_reuse", |b| b.reset_for_reuse()),
        ("lend_unsent twice", |b| drop(b.lend_unsent())),
    ];
    for (name, violation) in unsent_lent {
        let result = std::panic::catch_unwind(|| {
            let mut buffer = one_buffer(SLOT_BYTES);
            buffer.append(b"abcd").expect("room");
            let loan = buffer.lend_unsent();
            violation(&mut buffer);
            drop(loan);
        });
        assert!(result.is_err(), "{name} while bytes are lent must panic");
    }
}

#[test]
fn a_loan_returned_to_another_buffer_panics() {
    let mut buffers = split_slab(2, SLOT_BYTES).expect("map");
    let mut second = buffers.pop().expect("two");
    let mut first = buffers.pop().expect("two");
    let loan = first.lend_spare();
    let _ = second.lend_spare();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        second.return_spare(loan, 0)
    }));
    assert!(result.is_err());
}

#[test]
fn a_loan_keeps_the_mapping_alive() {
    let mut buffers = split_slab(1, SLOT_BYTES).expect("map");
    let mut loan = buffers[0].lend_spare();
    drop(buffers);
    loan.as_mut_slice()[0] = 7; // still mapped: the loan holds the slab
    assert_eq!(loan.as_mut_slice()[0], 7);
}

#[test]
fn pinned_bytes_advance_and_split() {
    let text = b"hello, world";
    // SAFETY: `text` is a static byte string, alive and unchanged.
    let mut pinned = unsafe { PinnedBytes::new(text.as_ptr(), text.len()) };
    let front = pinned.split_to(5);
    assert_eq!(front.as_slice(), b"hello");
    assert_eq!(pinned.as_slice(), b", world");
    pinned.advance(2);
    assert_eq!(pinned.as_slice(), b"world");
    pinned.advance(5);
    assert!(pinned.is_empty());
    assert_eq!(pinned.as_slice(), b"");
    // SAFETY: a null pointer makes an empty view.
    let null = unsafe { PinnedBytes::new(std::ptr::null(), 10) };
    assert!(null.is_empty());
}

#[test]
fn lending_after_kept_bytes_consumes_nothing() {
    let mut ring = split_slab(1, 4096).unwrap().pop().unwrap();
    ring.append(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let loan = ring.lend_unsent_after(4);
    assert_eq!(loan.as_slice(), b"/ HTTP/1.1\r\n\r\n");
    ring.append(b"more").unwrap(); // appends go on meanwhile
    ring.return_kept(loan);
    assert_eq!(
        ring.unconsumed(),
        b"GET / HTTP/1.1\r\n\r\nmore",
        "kept whole"
    );
    let again = ring.lend_unsent_after(0);
    assert_eq!(again.len(), ring.len());
    ring.return_kept(again);
    ring.consume(ring.len());
    assert!(ring.is_empty());
}

#[test]
fn a_spare_loan_can_be_bounded_by_a_window() {
    let mut buf = split_slab(1, 64 * 1024).unwrap().pop().unwrap();
    let loan = buf.lend_spare_up_to(4096);
    assert_eq!(loan.len(), 4096);
    assert!(buf.spare_lent());
    buf.return_spare(loan, 100);
    assert_eq!(buf.len(), 100);
    // Past what is spare, the loan is what is spare.
    let loan = buf.lend_spare_up_to(1 << 20);
    assert_eq!(loan.len(), 64 * 1024 - 100);
    buf.return_spare(loan, 0);
}

/// Buffers start staggered by cache lines, slot after slot, in regions
/// that are page-aligned: the first lines of 64 consecutive buffers fall in
/// 64 distinct cache sets (not all in one, as equal strides would put them).
#[test]
fn buffers_start_on_staggered_cache_lines() {
    let page = page_bytes().get();
    let buffers = split_slab(130, 64 * 1024).unwrap();
    for (slot, buffer) in buffers.iter().enumerate() {
        assert_eq!(
            buffer.base_ptr() as usize % page,
            (slot % 64) * 64,
            "slot {slot}"
        );
    }
    let mut lines: Vec<usize> = buffers[..64]
        .iter()
        .map(|b| b.base_ptr() as usize / 64 % 64)
        .collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), 64);
}

/// A staggered buffer's idle release gives back its region's first page
/// too (the lines before its start are padding nobody touches), and never
/// a neighbour's bytes.
#[test]
fn staggered_buffer_releases_its_first_page() {
    let mut buffers = split_slab(8, 64 * 1024).unwrap();
    let page = page_bytes().get();
    buffers[4].append(&[0x11; 64 * 1024]).expect("room");
    buffers[5].append(&[0x22; 100]).expect("room");
    buffers[5].consume(100);
    buffers[5].release_idle();
    assert!(
        buffers[5].spare_mut()[..page].iter().all(|&b| b == 0),
        "the first page went back"
    );
    buffers[4].consume(64 * 1024);
    buffers[4].append(&[0x33; 10]).expect("room");
    let mut neighbour = [0u8; 64 * 1024];
    neighbour[..10].fill(0x33);
    neighbour[10..].fill(0x11);
    assert_eq!(buffers[4].filled(), &neighbour[..10]);
    assert!(
        buffers[4].spare_mut().iter().all(|&b| b == 0x11),
        "the neighbour kept its bytes"
    );
}
