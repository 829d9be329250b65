//! Coalescing repeated handler errors: a production bug in one route must
//! not cut the server's capacity nor fill its disk. The first failure at a
//! *site* — the handler (of one loaded app: a reload's code is new code)
//! and the error's `file:line` — opens a window of
//! [`ERROR_WINDOW`]: that failure is reported with its traceback; further
//! failures at the same site within the window are only counted (no
//! traceback is built for them: the prelude's error handler asks
//! [`wants_trace`] first), and once the window has passed one summary
//! reports the count ([`take_repeats`]). Distinct sites never hide each
//! other: while every slot holds a live site, a new one is reported in full
//! rather than coalesced.
//!
//! One table per worker thread (thread-local, like the Lua state it
//! serves): no lock, no allocation after the first failure.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// How long failures at one site are counted after the one reported.
pub const ERROR_WINDOW: Duration = Duration::from_secs(1);
/// Sites tracked per worker at once; beyond, failures are reported whole.
const SITES_MAX: usize = 64;
/// Bytes kept of a site's `METHOD /path`, error location and first line.
const LABEL_BYTES: usize = 96;
const LOCATION_BYTES: usize = 128;
const FIRST_LINE_BYTES: usize = 240;

/// A fixed byte string (cut at its capacity).
#[derive(Clone, Copy)]
struct Text<const N: usize> {
    bytes: [u8; N],
    len: u16,
}

impl<const N: usize> Text<N> {
    const EMPTY: Text<N> = Text {
        bytes: [0; N],
        len: 0,
    };

    fn set(&mut self, parts: &[&[u8]]) {
        self.len = 0;
        for part in parts {
            let start = self.len as usize;
            let take = part.len().min(N - start);
            self.bytes[start..start + take].copy_from_slice(&part[..take]);
            self.len += take as u16;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

#[derive(Clone, Copy)]
struct Site {
    live: bool,
    /// The Lua state (`LuaWorker::generation`) and handler it failed in.
    app: u64,
    handler: u32,
    location: Text<LOCATION_BYTES>,
    label: Text<LABEL_BYTES>,
    first_line: Text<FIRST_LINE_BYTES>,
    since: Instant,
    repeats: u64,
}

thread_local! {
    /// The worker's sites, made at its first failure.
    static SITES: RefCell<Option<Box<[Site]>>> = const { RefCell::new(None) };
    /// The handler now running (0: none, e.g. a stream generator) and its
    /// state's generation.
    static HANDLER: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    /// The failure of the handler now running was reported in full.
    static TRACED: Cell<bool> = const { Cell::new(true) };
}

/// A handler starts.
pub(crate) fn begin(app: u64, handler: u32) {
    HANDLER.set((app, handler));
    TRACED.set(true);
}

/// Whether the running handler's failure (if any) is to be reported in
/// full, without ending it.
pub(crate) fn traced() -> bool {
    TRACED.get()
}

/// A handler ended; whether its failure (if any) is to be reported in full.
pub(crate) fn end() -> bool {
    HANDLER.set((0, 0));
    TRACED.replace(true)
}

/// The error location of a Lua message: its prefix up to and including
/// the line number (`app.lua:7` of `app.lua:7: boom`); the whole first
/// line when it has none.
fn location(message: &[u8]) -> &[u8] {
    let first_line = message.split(|&b| b == b'\n').next().unwrap_or(message);
    let mut at = 0;
    while let Some(colon) = first_line[at..].iter().position(|&b| b == b':') {
        let digits_start = at + colon + 1;
        let digits = first_line[digits_start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = digits_start + digits;
        if digits > 0 && first_line.get(end) == Some(&b':') {
            return &first_line[..end];
        }
        at = digits_start;
    }
    first_line
}

/// Called (through the prelude's error handler) when the running handler
/// fails with `message`, on behalf of the request `label`
/// (`METHOD /path`). True: report it in full (build the traceback); false:
/// a repeat at a site whose window is open, counted only.
pub(crate) fn wants_trace(label: &[u8], message: &[u8]) -> bool {
    let (app, handler) = HANDLER.get();
    if handler == 0 {
        return true; // not a handler (a stream generator): always whole
    }
    let now = Instant::now();
    let location = location(message);
    let traced = SITES.with(|sites| {
        let mut sites = sites.borrow_mut();
        let sites = sites.get_or_insert_with(|| {
            vec![
                Site {
                    live: false,
                    app: 0,
                    handler: 0,
                    location: Text::EMPTY,
                    label: Text::EMPTY,
                    first_line: Text::EMPTY,
                    since: now,
                    repeats: 0,
                };
                SITES_MAX
            ]
            .into_boxed_slice()
        });
        let open = |site: &Site| site.live && now < site.since + ERROR_WINDOW;
        if let Some(site) = sites.iter_mut().find(|site| {
            open(site)
                && site.app == app
                && site.handler == handler
                && site.location.as_bytes() == location
        }) {
            site.repeats += 1;
            return false;
        }
        // A site whose window passed with no repeats can be reused at once;
        // one with repeats waits for its summary.
        let free = sites
            .iter_mut()
            .find(|site| !site.live || (!open(site) && site.repeats == 0));
        if let Some(site) = free {
            let first_line = message.split(|&b| b == b'\n').next().unwrap_or(message);
            site.live = true;
            site.app = app;
            site.handler = handler;
            site.location.set(&[location]);
            site.label.set(&[label]);
            site.first_line.set(&[first_line]);
            site.since = now;
            site.repeats = 0;
        }
        true
    });
    TRACED.set(traced);
    traced
}

/// A summary of failures counted at one site.
pub struct Repeats<'a> {
    /// `METHOD /path` of the failure that was reported.
    pub label: &'a str,
    /// Its message's first line (`app.lua:7: boom`).
    pub first_line: &'a str,
    /// Failures counted after it in its window.
    pub count: u64,
}

/// Forgets every site on this thread: the next failure anywhere is
/// reported whole. For in-process test drivers (`keystone test`), where
/// each test must see its handler's traceback however recently the same
/// line failed in the test before.
pub fn forget_sites() {
    SITES.with(|sites| {
        if let Some(sites) = sites.borrow_mut().as_mut() {
            for site in sites.iter_mut() {
                site.live = false;
            }
        }
    });
}

/// Hands every site whose window has passed by `now` with repeats counted
/// to `summary`, and frees it. Call about once a second (the worker's
/// tick).
pub fn take_repeats(now: Instant, mut summary: impl FnMut(Repeats<'_>)) {
    SITES.with(|sites| {
        let mut sites = sites.borrow_mut();
        let Some(sites) = sites.as_mut() else { return };
        for site in sites.iter_mut() {
            if !site.live || now < site.since + ERROR_WINDOW {
                continue;
            }
            if site.repeats > 0 {
                summary(Repeats {
                    label: std::str::from_utf8(site.label.as_bytes()).unwrap_or("?"),
                    first_line: std::str::from_utf8(site.first_line.as_bytes()).unwrap_or("?"),
                    count: site.repeats,
                });
            }
            site.live = false;
            site.repeats = 0;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_file_and_line() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"app.lua:7: boom", b"app.lua:7"),
            (
                b"[string \"x:y\"]:12: bad\nstack traceback:",
                b"[string \"x:y\"]:12",
            ),
            (b"/srv/app.lua:120: x: y: z", b"/srv/app.lua:120"),
            (b"no location here", b"no location here"),
            (b"a:b:c", b"a:b:c"),
        ];
        for (message, expected) in cases {
            assert_eq!(
                location(message),
                *expected,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn one_report_per_site_and_window_then_one_summary() {
        begin(1, 7);
        assert!(wants_trace(b"GET /boom", b"app.lua:7: boom"));
        for _ in 0..41 {
            assert!(!wants_trace(b"GET /boom", b"app.lua:7: boom"));
        }
        // Another line, another handler: their own sites, reported whole.
        assert!(wants_trace(b"GET /boom", b"app.lua:9: other"));
        begin(1, 8);
        assert!(wants_trace(b"GET /else", b"app.lua:7: boom"));
        end();
        let mut summaries = Vec::new();
        take_repeats(Instant::now(), |r| summaries.push(r.count));
        assert!(summaries.is_empty(), "windows still open");
        take_repeats(Instant::now() + ERROR_WINDOW, |r| {
            summaries.push(r.count);
            assert_eq!((r.label, r.first_line), ("GET /boom", "app.lua:7: boom"));
        });
        assert_eq!(summaries, [41], "only the site with repeats sums up");
        // After its window, the next failure is reported again.
        begin(1, 7);
        assert!(wants_trace(b"GET /boom", b"app.lua:7: boom"));
        end();
    }

    #[test]
    fn a_reloaded_app_has_sites_of_its_own() {
        std::thread::spawn(|| {
            begin(1, 3);
            assert!(wants_trace(b"GET /", b"app.lua:2: boom"));
            assert!(!wants_trace(b"GET /", b"app.lua:2: boom"));
            begin(2, 3);
            assert!(
                wants_trace(b"GET /", b"app.lua:2: boom"),
                "new code, new site"
            );
            end();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn distinct_sites_past_the_table_are_never_hidden() {
        std::thread::spawn(|| {
            begin(1, 1);
            for line in 0..SITES_MAX + 10 {
                let message = format!("app.lua:{line}: distinct");
                assert!(wants_trace(b"GET /x", message.as_bytes()), "{message}");
            }
            // Repeats of the sites that fit are counted; of those that did
            // not fit, reported whole.
            assert!(!wants_trace(b"GET /x", b"app.lua:0: distinct"));
            let overflow = format!("app.lua:{}: distinct", SITES_MAX + 5);
            assert!(wants_trace(b"GET /x", overflow.as_bytes()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn generators_are_always_reported_whole() {
        std::thread::spawn(|| {
            assert!(wants_trace(b"", b"app.lua:3: gen"));
            assert!(wants_trace(b"", b"app.lua:3: gen"));
        })
        .join()
        .unwrap();
    }
}
