//! Criterion micro-benchmarks of the request path's CPU stages, without I/O:
//! parse (Keystone's parser vs `httparse`), route lookup, response head
//! serialization, and the whole exchange → Lua handler → response bytes
//! round trip. Run with `cargo bench -p keystone-benches`.
//!
//! Before the timings, it prints heap allocations per request of the round
//! trip, counted by a `#[global_allocator]` (house rule 7: the hot path
//! allocates nothing; this reports it, the server's tests assert it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput};
use keystone_exchange::HttpExchange;
use keystone_lua::{AppSource, LoadedApp, Outcome};
use keystone_parser::{Head, Limits, ParseStatus, Parser};
use keystone_response::{write_head, DateCache, Framing};
use keystone_ringbuf::Span;
use keystone_router::{RouteMatch, Router, RouterBuilder};

/// Counts allocations so the round trip can report allocs/request.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments, so
// System's guarantees are ours; the counter has no effect on memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What wrk sends for `GET /`: the plaintext scenario's request.
const PLAINTEXT_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A browser-like request: 8 headers, the shape parsers are usually
/// compared on.
const BROWSER_REQUEST: &[u8] = b"GET /users/42?fields=name HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json,text/plain;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\n\
Cookie: session=4f2a9c0e1b7d; theme=dark\r\n\
Cache-Control: no-cache\r\n\r\n";

/// The bench app: the bundled example's routes.
const APP: &str = r#"
return {
  routes = {
    ["GET /"] = function(ctx)
      ctx.body = "Hello, World!"
    end,
    ["GET /users/{id}"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"id":' .. ctx.params.id .. '}'
    end,
  },
}
"#;

/// Response head buffer, as the server's send headroom.
const HEAD_BYTES: usize = 1024;

const KEEP_ALIVE: Framing = Framing {
    keep_alive: true,
    head_request: false,
    minor_version: 1,
};

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, request) in [
        ("plaintext", PLAINTEXT_REQUEST),
        ("browser", BROWSER_REQUEST),
    ] {
        group.throughput(Throughput::Bytes(request.len() as u64));
        let limits = Limits::default();
        let mut parser = Parser::new();
        let mut head = Box::new(Head::new());
        group.bench_function(format!("keystone/{name}"), |b| {
            b.iter(|| {
                parser.reset();
                let status = parser.parse(black_box(request), 0, &limits, &mut head);
                assert_eq!(status, Ok(ParseStatus::Complete));
                black_box(head.header_count)
            })
        });
        group.bench_function(format!("httparse/{name}"), |b| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Request::new(&mut headers);
                let status = parsed.parse(black_box(request)).expect("valid request");
                assert!(status.is_complete());
                black_box(parsed.headers.len())
            })
        });
    }
    group.finish();
}

fn bench_router() -> Router {
    let mut builder = RouterBuilder::new();
    let keys = [
        "GET /",
        "GET /json",
        "GET /users/{id}",
        "POST /users",
        "GET /users/{id}/posts/{post}",
        "GET /static/{*path}",
        "DELETE /users/{id}",
        "GET /health",
    ];
    for (handler, key) in keys.iter().enumerate() {
        builder.add(key, handler as u32).expect("valid route key");
    }
    builder.build()
}

fn route(c: &mut Criterion) {
    let router = bench_router();
    let mut group = c.benchmark_group("route");
    for (name, path) in [
        ("static", &b"/json"[..]),
        ("param", b"/users/42"),
        ("two-params", b"/users/42/posts/7"),
    ] {
        // As the app looks routes up: into a match on the caller's stack.
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut found = RouteMatch::EMPTY;
                router
                    .lookup_into(b"GET", black_box(path), 0, &mut found)
                    .expect("route exists");
                black_box(found.param_count);
                black_box(found.handler)
            })
        });
    }
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let mut exchange = HttpExchange::new_boxed(0);
    exchange
        .set_header(b"Content-Type", b"application/json")
        .expect("valid header");
    let date = DateCache::new();
    let mut out = [0u8; HEAD_BYTES];
    c.bench_function("serialize/write_head", |b| {
        b.iter(|| {
            let written = write_head(black_box(&exchange), 8, KEEP_ALIVE, &date, &mut out);
            black_box(written.expect("head fits"))
        })
    });
}

/// What one request's CPU path needs: the app, a parser and its head, the
/// date, the response's bytes.
struct RoundTrip {
    app: LoadedApp,
    parser: Parser,
    head: Box<Head>,
    date: DateCache,
    out: [u8; HEAD_BYTES],
}

impl RoundTrip {
    fn new() -> RoundTrip {
        RoundTrip {
            app: load_app(),
            parser: Parser::new(),
            head: Box::new(Head::new()),
            date: DateCache::new(),
            out: [0u8; HEAD_BYTES],
        }
    }

    /// See [`round_trip`].
    fn run(&mut self, request: &[u8]) -> usize {
        let RoundTrip {
            app,
            parser,
            head,
            date,
            out,
        } = self;
        round_trip(app, parser, head, date, request, out)
    }
}

/// Parse, route, bind, run the Lua handler, write the response, expire: the
/// CPU work of one request minus I/O. Returns the response length.
fn round_trip(
    app: &mut LoadedApp,
    parser: &mut Parser,
    head: &mut Head,
    date: &DateCache,
    request: &[u8],
    out: &mut [u8],
) -> usize {
    parser.reset();
    let status = parser.parse(request, 0, &Limits::default(), head);
    assert_eq!(status, Ok(ParseStatus::Complete));
    let path = head.path.slice(request);
    let mut matched = RouteMatch::EMPTY;
    app.router
        .lookup_into(b"GET", path, head.path.offset, &mut matched)
        .expect("route exists");
    app.lua.exchange_mut().bind(
        request,
        head,
        matched.params(),
        Span::EMPTY,
        keystone_exchange::PeerAddr::NONE,
    );
    let Outcome::Done = app.lua.run(matched.handler) else {
        panic!("handler failed");
    };
    let exchange = app.lua.exchange();
    let bytes = exchange.response_body().unwrap_or(&[]);
    let head_len = write_head(exchange, bytes.len() as u64, KEEP_ALIVE, date, out)
        .expect("head fits")
        .bytes;
    let response_len = head_len + bytes.len();
    out[head_len..response_len].copy_from_slice(bytes);
    app.lua.exchange_mut().expire();
    response_len
}

fn load_app() -> LoadedApp {
    LoadedApp::load(&AppSource::bundled("bench.lua", APP), 0, |_| {}).expect("bench app loads")
}

const ROUND_TRIP_REQUESTS: [(&str, &[u8]); 2] = [
    ("plaintext", PLAINTEXT_REQUEST),
    (
        "param-json",
        b"GET /users/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    ),
];

fn lua_round_trip(c: &mut Criterion) {
    let mut trip = RoundTrip::new();
    let mut group = c.benchmark_group("round-trip");
    for (name, request) in ROUND_TRIP_REQUESTS {
        group.bench_function(name, |b| b.iter(|| trip.run(black_box(request))));
    }
    group.finish();
}

/// Prints heap allocations per request of the round trip after a warm-up
/// (LuaJIT's allocator counts too: it allocates through the system heap).
fn report_allocations() {
    /// Warm-up requests: the JIT traces and the Lua string table settle.
    const WARM_UP: usize = 10_000;
    /// Measured requests.
    const MEASURED: u64 = 100_000;
    let mut trip = RoundTrip::new();
    for (name, request) in ROUND_TRIP_REQUESTS {
        for _ in 0..WARM_UP {
            trip.run(request);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..MEASURED {
            trip.run(request);
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "round-trip/{name}: {:.4} heap allocations per request ({allocations} in {MEASURED})",
            allocations as f64 / MEASURED as f64
        );
    }
}

/// `KEYSTONE_ROUND_TRIPS=N` (no criterion): runs N round trips of each
/// request and exits: a fixed workload for `perf record` (see README.md).
/// Not callgrind: valgrind 3.19 cannot decode picohttpparser's SSE4.2
/// string instructions.
fn count_round_trips(count: usize) {
    let mut trip = RoundTrip::new();
    for (_, request) in ROUND_TRIP_REQUESTS {
        for _ in 0..count {
            black_box(trip.run(black_box(request)));
        }
    }
}

fn main() {
    if let Ok(count) = std::env::var("KEYSTONE_ROUND_TRIPS") {
        let count = count
            .parse()
            .expect("KEYSTONE_ROUND_TRIPS is a number of round trips");
        count_round_trips(count);
        return;
    }
    report_allocations();
    let mut criterion = Criterion::default().configure_from_args();
    parse(&mut criterion);
    route(&mut criterion);
    serialize(&mut criterion);
    lua_round_trip(&mut criterion);
    criterion.final_summary();
}
