//! Counters for operators. Each worker owns its [`WorkerStats`] and is its
//! only writer (a relaxed load and store, no read-modify-write, no lock);
//! the admin listener reads every worker's counters at scrape time and sums
//! them. Route names change only on load and reload, so they sit behind a
//! mutex that the request path never takes.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Distinct route names one worker counts; a reload that brings more
/// routes than this counts the extra ones under `other`.
pub const ROUTE_COUNTERS_MAX: usize = 256;

/// A counter with one writer.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (single writer: load + store, no locked instruction).
    pub fn add(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets the value (a count kept elsewhere, published).
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Subtracts `n` (gauges).
    pub fn sub(&self, n: u64) {
        let value = self.0.load(Ordering::Relaxed);
        self.0.store(value.wrapping_sub(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters.
pub struct WorkerStats {
    /// Responses by status class: 1xx … 5xx.
    pub responses: [Counter; 5],
    /// Request bytes received.
    pub bytes_in: Counter,
    /// Response bytes sent (buffered, pinned and spliced).
    pub bytes_out: Counter,
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections open now (gauge).
    pub open: Counter,
    /// Handlers (or generators) that raised an error.
    pub lua_errors: Counter,
    /// Handlers stopped by the budget.
    pub lua_stopped: Counter,
    /// Successful reloads.
    pub reloads: Counter,
    /// Requests by route slot (names in `route_names`).
    pub routes: Box<[Counter]>,
    /// Requests served from static directories.
    pub static_files: Counter,
    /// Requests handed to an upstream (`ctx.upstream`).
    pub proxied: Counter,
    /// Proxied body bytes moved upstream socket → pipe by splice (never
    /// through user space).
    pub proxied_spliced: Counter,
    /// Receives that completed into a buffer registered with the ring
    /// (`READ_FIXED`).
    pub receives_registered: Counter,
    /// Receives that completed into an unregistered buffer (plain `recv`:
    /// a connection's first read, reads past the registered window, or no
    /// registration available).
    pub receives_plain: Counter,
    /// Connection slots whose receive window is registered with the ring
    /// now (gauge); a closed connection's slot keeps it for the next one.
    pub registered_buffers: Counter,
    /// Log lines this worker dropped because its log did not drain
    /// (the log's own count, stored each loop turn).
    pub log_dropped: Counter,
    /// Times the worker's once-a-second tick had to be re-armed because the
    /// kernel ended it (a completion-ring overflow ends multishot
    /// operations).
    pub tick_rearmed: Counter,
    /// TLS handshakes finished (user space and kernel TLS together).
    pub tls_handshakes: Counter,
    /// Of those, connections whose sends the kernel seals (kernel TLS).
    pub tls_kernel: Counter,
    /// TLS connections refused by rustls (a bad record or a refused
    /// handshake).
    pub tls_failed: Counter,
    /// Cleartext HTTP requests sent to a TLS port (answered with a 400).
    pub tls_plain_http: Counter,
    route_names: Mutex<Vec<String>>,
    /// Per upstream peer (names in `peer_names`; the last slot: peers past
    /// `PEER_COUNTERS_MAX`).
    pub peers: Box<[PeerCounters]>,
    peer_names: Mutex<Vec<(String, String)>>,
}

/// Upstream peers counted by name; more share one "other" slot. A gateway
/// has a few pools of a few peers each.
pub const PEER_COUNTERS_MAX: usize = 64;

/// Why a proxied request failed, as `/metrics` labels it (`tls`: a TLS
/// pool's handshake failed, its certificate unverified among the reasons).
pub const UPSTREAM_FAILURES: [&str; 7] = [
    "connect",
    "timeout",
    "closed",
    "bad_head",
    "broken_body",
    "too_large",
    "tls",
];

/// One upstream peer's counters (one worker's share).
#[derive(Default)]
pub struct PeerCounters {
    /// Requests sent to it (each try of a retried request counts).
    pub requests: Counter,
    /// Response heads it sent, by class (1xx..5xx).
    pub responses: [Counter; 5],
    /// Failures by reason ([`UPSTREAM_FAILURES`]).
    pub failures: [Counter; UPSTREAM_FAILURES.len()],
    /// Idle connections to it in this worker's pool now (gauge).
    pub idle: Counter,
    /// Requests in progress on it now (gauge): sent or being sent, their
    /// response not yet complete.
    pub active: Counter,
    /// From a new connection's socket to its connect completing.
    pub connect: Histogram,
    /// From a request's start to the upstream's response head (the wait
    /// for the first byte of the answer; nginx's `$upstream_header_time`).
    pub response: Histogram,
}

/// Upper bounds of the latency histograms' buckets, in seconds (the
/// `+Inf` bucket follows): Prometheus' default buckets, which cover a
/// loopback connect (well under a millisecond) to a timed-out backend.
pub const LATENCY_BUCKETS_SECONDS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram one worker writes: per-bucket counts (not
/// cumulative; the last is `+Inf`) and the sum in microseconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [Counter; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_micros: Counter,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[bucket].add(1);
        self.sum_micros
            .add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The count in bucket `index` (not cumulative).
    pub fn bucket(&self, index: usize) -> u64 {
        self.buckets[index].get()
    }

    /// The sum of observations, in microseconds.
    pub fn sum_micros(&self) -> u64 {
        self.sum_micros.get()
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            responses: Default::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            accepted: Counter::default(),
            open: Counter::default(),
            lua_errors: Counter::default(),
            lua_stopped: Counter::default(),
            reloads: Counter::default(),
            routes: (0..ROUTE_COUNTERS_MAX + 1)
                .map(|_| Counter::default())
                .collect(),
            static_files: Counter::default(),
            proxied: Counter::default(),
            proxied_spliced: Counter::default(),
            receives_registered: Counter::default(),
            receives_plain: Counter::default(),
            registered_buffers: Counter::default(),
            log_dropped: Counter::default(),
            tick_rearmed: Counter::default(),
            tls_handshakes: Counter::default(),
            tls_kernel: Counter::default(),
            tls_failed: Counter::default(),
            tls_plain_http: Counter::default(),
            route_names: Mutex::new(Vec::new()),
            peers: (0..PEER_COUNTERS_MAX + 1)
                .map(|_| PeerCounters::default())
                .collect(),
            peer_names: Mutex::new(Vec::new()),
        }
    }
}

impl WorkerStats {
    /// Counts one response from its status code.
    pub fn response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].add(1);
    }

    /// Maps an app's upstream peers, `(pool, peer)` names, to counter
    /// slots, adding names not seen before (a reload keeps the counts of
    /// peers it keeps); peers past [`PEER_COUNTERS_MAX`] share the last.
    pub fn peer_slots(&self, peers: &[(String, String)]) -> Vec<u16> {
        let mut names = self.peer_names.lock().expect("peer names poisoned");
        peers
            .iter()
            .map(|name| {
                let slot = match names.iter().position(|n| n == name) {
                    Some(slot) => slot,
                    None if names.len() < PEER_COUNTERS_MAX => {
                        names.push(name.clone());
                        names.len() - 1
                    }
                    None => PEER_COUNTERS_MAX,
                };
                slot as u16
            })
            .collect()
    }

    /// Maps an app's route keys (handler id `i + 1` is `keys[i]`) to counter
    /// slots, adding names not seen before; returns the slot per handler id
    /// (index 0 unused). Called at load and reload, never per request.
    pub fn route_slots(&self, keys: &[String]) -> Vec<u16> {
        let mut names = self.route_names.lock().expect("route names poisoned");
        let mut slots = vec![ROUTE_COUNTERS_MAX as u16; keys.len() + 1];
        for (index, key) in keys.iter().enumerate() {
            let slot = match names.iter().position(|n| n == key) {
                Some(slot) => slot,
                None if names.len() < ROUTE_COUNTERS_MAX => {
                    names.push(key.clone());
                    names.len() - 1
                }
                None => ROUTE_COUNTERS_MAX,
            };
            slots[index + 1] = slot as u16;
        }
        slots
    }
}

/// Everything the admin listener reads.
pub struct Shared {
    /// One entry per worker.
    pub workers: Vec<Arc<WorkerStats>>,
    /// Set once SIGTERM/SIGINT started the drain: `/health` answers 503.
    pub draining: AtomicBool,
    /// Log lines the main thread dropped (its log did not drain).
    pub main_log_dropped: Counter,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

type Read = fn(&WorkerStats) -> u64;

/// Families that are one number summed over workers.
const SUMMED: [(&str, &str, &str, Read); 13] = [
    (
        "keystone_received_bytes_total",
        "counter",
        "Request bytes received.",
        |w| w.bytes_in.get(),
    ),
    (
        "keystone_sent_bytes_total",
        "counter",
        "Response bytes sent.",
        |w| w.bytes_out.get(),
    ),
    (
        "keystone_connections_accepted_total",
        "counter",
        "Connections accepted.",
        |w| w.accepted.get(),
    ),
    (
        "keystone_connections_open",
        "gauge",
        "Connections open now.",
        |w| w.open.get(),
    ),
    (
        "keystone_lua_errors_total",
        "counter",
        "Lua handlers or generators that raised an error.",
        |w| w.lua_errors.get(),
    ),
    (
        "keystone_lua_stopped_total",
        "counter",
        "Lua handlers stopped by the time budget.",
        |w| w.lua_stopped.get(),
    ),
    (
        "keystone_reloads_total",
        "counter",
        "Successful app reloads, summed over workers.",
        |w| w.reloads.get(),
    ),
    (
        "keystone_static_requests_total",
        "counter",
        "Requests served from static directories.",
        |w| w.static_files.get(),
    ),
    (
        "keystone_proxied_requests_total",
        "counter",
        "Requests handed to an upstream pool (ctx.upstream), summed over workers.",
        |w| w.proxied.get(),
    ),
    (
        "keystone_proxied_spliced_bytes_total",
        "counter",
        "Proxied response body bytes moved from the upstream's socket by splice, never through user space.",
        |w| w.proxied_spliced.get(),
    ),
    (
        "keystone_receives_registered_total",
        "counter",
        "Receives completed into buffers registered with io_uring (READ_FIXED).",
        |w| w.receives_registered.get(),
    ),
    (
        "keystone_receives_plain_total",
        "counter",
        "Receives completed into unregistered buffers (first read of a connection, past the registered window).",
        |w| w.receives_plain.get(),
    ),
    (
        "keystone_registered_buffers",
        "gauge",
        "Receive buffers (connection slots) registered with io_uring now: a slot keeps its registration across connections and gives it back when its connection idles.",
        |w| w.registered_buffers.get(),
    ),
];

/// Renders the Prometheus text exposition (format 0.0.4); `extra` is
/// appended (the eBPF observer's families, when observing).
pub fn prometheus(shared: &Shared, extra: &str) -> String {
    let mut out = String::new();
    let sum =
        |read: &dyn Fn(&WorkerStats) -> u64| shared.workers.iter().map(|w| read(w)).sum::<u64>();
    family(
        &mut out,
        "keystone_responses_total",
        "counter",
        "Responses sent, by status class.",
    );
    for (index, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let total = sum(&|w| w.responses[index].get());
        let _ = writeln!(out, "keystone_responses_total{{class=\"{class}\"}} {total}");
    }
    for (name, kind, help, read) in SUMMED {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {}", sum(&read));
    }
    family(
        &mut out,
        "keystone_worker_responses_total",
        "counter",
        "Responses sent, by worker.",
    );
    for (index, worker) in shared.workers.iter().enumerate() {
        let total: u64 = worker.responses.iter().map(Counter::get).sum();
        let _ = writeln!(
            out,
            "keystone_worker_responses_total{{worker=\"{index}\"}} {total}"
        );
    }
    family(
        &mut out,
        "keystone_route_requests_total",
        "counter",
        "Requests that matched a route, by route key.",
    );
    for (name, count) in route_totals(shared) {
        let _ = writeln!(
            out,
            "keystone_route_requests_total{{route=\"{}\"}} {count}",
            escape_label(&name)
        );
    }
    upstream_families(&mut out, shared);
    family(
        &mut out,
        "keystone_log_dropped_total",
        "counter",
        "Log lines dropped because the log's destination did not drain (workers and the main thread).",
    );
    let dropped = sum(&|w| w.log_dropped.get()) + shared.main_log_dropped.get();
    let _ = writeln!(out, "keystone_log_dropped_total {dropped}");
    family(
        &mut out,
        "keystone_tick_rearmed_total",
        "counter",
        "Times a worker's once-a-second tick was re-armed after the kernel ended it (completion-ring overflow).",
    );
    let rearmed = sum(&|w| w.tick_rearmed.get());
    let _ = writeln!(out, "keystone_tick_rearmed_total {rearmed}");
    family(
        &mut out,
        "keystone_tls_connections_total",
        "counter",
        "TLS connections whose handshake finished, by where their records are encrypted (userspace or ktls).",
    );
    let handshakes = sum(&|w| w.tls_handshakes.get());
    let kernel = sum(&|w| w.tls_kernel.get());
    let userspace = handshakes.saturating_sub(kernel);
    let _ = writeln!(
        out,
        "keystone_tls_connections_total{{path=\"userspace\"}} {userspace}"
    );
    let _ = writeln!(
        out,
        "keystone_tls_connections_total{{path=\"ktls\"}} {kernel}"
    );
    family(
        &mut out,
        "keystone_tls_failed_total",
        "counter",
        "TLS connections closed because a record or the handshake was refused.",
    );
    let failed = sum(&|w| w.tls_failed.get());
    let _ = writeln!(out, "keystone_tls_failed_total {failed}");
    family(
        &mut out,
        "keystone_tls_plain_http_total",
        "counter",
        "Cleartext HTTP requests sent to a TLS port (answered 400, then closed).",
    );
    let plain = sum(&|w| w.tls_plain_http.get());
    let _ = writeln!(out, "keystone_tls_plain_http_total {plain}");
    let draining = u8::from(shared.draining.load(Ordering::Relaxed));
    family(
        &mut out,
        "keystone_draining",
        "gauge",
        "1 once SIGTERM started the drain.",
    );
    let _ = writeln!(out, "keystone_draining {draining}");
    out.push_str(extra);
    out
}

/// The per-peer families, summed over workers (only when some worker has
/// upstream peers).
fn upstream_families(out: &mut String, shared: &Shared) {
    let mut names: Vec<(String, String)> = Vec::new();
    for worker in &shared.workers {
        for name in worker
            .peer_names
            .lock()
            .expect("peer names poisoned")
            .iter()
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    if names.is_empty() {
        return;
    }
    // A peer's counters: the sum over workers of the slot each gave it.
    let total = |name: &(String, String), read: &dyn Fn(&PeerCounters) -> u64| -> u64 {
        shared
            .workers
            .iter()
            .filter_map(|worker| {
                let slots = worker.peer_names.lock().expect("peer names poisoned");
                let slot = slots.iter().position(|n| n == name)?;
                Some(read(&worker.peers[slot]))
            })
            .sum()
    };
    let labels = |(pool, peer): &(String, String)| {
        format!(
            "upstream=\"{}\",peer=\"{}\"",
            escape_label(pool),
            escape_label(peer)
        )
    };
    // A family with one value per peer.
    let per_peer = |out: &mut String,
                    metric: &str,
                    kind: &str,
                    help: &str,
                    read: &dyn Fn(&PeerCounters) -> u64| {
        family(out, metric, kind, help);
        for name in &names {
            let count = total(name, read);
            let _ = writeln!(out, "{metric}{{{}}} {count}", labels(name));
        }
    };
    per_peer(
        out,
        "keystone_upstream_requests_total",
        "counter",
        "Requests sent to an upstream peer (each try of a retried request).",
        &|p| p.requests.get(),
    );
    family(
        out,
        "keystone_upstream_responses_total",
        "counter",
        "Response heads an upstream peer sent, by status class.",
    );
    for name in &names {
        for (class, label) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let count = total(name, &|p| p.responses[class].get());
            let _ = writeln!(
                out,
                "keystone_upstream_responses_total{{{},class=\"{label}\"}} {count}",
                labels(name)
            );
        }
    }
    family(
        out,
        "keystone_upstream_failures_total",
        "counter",
        "Proxied requests an upstream peer failed, by reason.",
    );
    for name in &names {
        for (kind, reason) in UPSTREAM_FAILURES.iter().enumerate() {
            let count = total(name, &|p| p.failures[kind].get());
            let _ = writeln!(
                out,
                "keystone_upstream_failures_total{{{},reason=\"{reason}\"}} {count}",
                labels(name)
            );
        }
    }
    per_peer(
        out,
        "keystone_upstream_idle_connections",
        "gauge",
        "Idle kept-alive connections to an upstream peer now.",
        &|p| p.idle.get(),
    );
    per_peer(
        out,
        "keystone_upstream_active_requests",
        "gauge",
        "Requests in progress on an upstream peer now.",
        &|p| p.active.get(),
    );
    type Pick = fn(&PeerCounters) -> &Histogram;
    let histograms: [(&str, &str, Pick); 2] = [
        (
            "keystone_upstream_connect_seconds",
            "Time to connect to an upstream peer (new connections).",
            |p| &p.connect,
        ),
        (
            "keystone_upstream_response_seconds",
            "Time from a proxied request's start to the upstream's response head.",
            |p| &p.response,
        ),
    ];
    for (metric, help, histogram) in histograms {
        family(out, metric, "histogram", help);
        for name in &names {
            let labels = labels(name);
            let mut cumulative = 0;
            for (index, upper) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
                cumulative += total(name, &|p| histogram(p).bucket(index));
                let _ = writeln!(
                    out,
                    "{metric}_bucket{{{labels},le=\"{upper}\"}} {cumulative}"
                );
            }
            cumulative += total(name, &|p| {
                histogram(p).bucket(LATENCY_BUCKETS_SECONDS.len())
            });
            let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = total(name, &|p| histogram(p).sum_micros()) as f64 / 1e6;
            let _ = writeln!(out, "{metric}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{metric}_count{{{labels}}} {cumulative}");
        }
    }
}

fn route_totals(shared: &Shared) -> Vec<(String, u64)> {
    let mut totals: Vec<(String, u64)> = Vec::new();
    for worker in &shared.workers {
        let names = worker
            .route_names
            .lock()
            .expect("route names poisoned")
            .clone();
        let other = ("other".to_owned(), worker.routes[ROUTE_COUNTERS_MAX].get());
        let counted = names
            .into_iter()
            .enumerate()
            .map(|(slot, name)| (name, worker.routes[slot].get()));
        for (name, count) in counted.chain(std::iter::once(other)) {
            match totals.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += count,
                None => totals.push((name, count)),
            }
        }
    }
    totals.retain(|(name, count)| name != "other" || *count > 0);
    totals
}

/// One worker's figures for `keystone stats` (JSON, hand-written: the
/// shape is small and stable).
pub fn worker_json(shared: &Shared, extra: &str) -> String {
    let mut out = String::from("{\"workers\":[");
    for (index, w) in shared.workers.iter().enumerate() {
        let requests: u64 = w.responses.iter().map(Counter::get).sum();
        if index > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"worker\":{index},\"requests\":{requests},\"open\":{},\"accepted\":{},\"errors_5xx\":{},\"bytes_in\":{},\"bytes_out\":{}}}",
            w.open.get(),
            w.accepted.get(),
            w.responses[4].get(),
            w.bytes_in.get(),
            w.bytes_out.get()
        );
    }
    let draining = shared.draining.load(Ordering::Relaxed);
    let _ = write!(out, "],\"draining\":{draining}{extra}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_of(workers: Vec<Arc<WorkerStats>>) -> Shared {
        Shared {
            workers,
            draining: AtomicBool::new(false),
            main_log_dropped: Counter::default(),
        }
    }

    #[test]
    fn counter_adds_and_subtracts_with_wrap() {
        let counter = Counter::default();
        counter.add(3);
        counter.sub(1);
        assert_eq!(counter.get(), 2);
        counter.sub(3);
        assert_eq!(counter.get(), u64::MAX, "a gauge wraps, never panics");
    }

    #[test]
    fn responses_count_by_class_clamped_to_1xx_5xx() {
        let stats = WorkerStats::default();
        for (status, class) in [
            (100, 0),
            (204, 1),
            (304, 2),
            (404, 3),
            (503, 4),
            (99, 0),
            (600, 4),
        ] {
            let before = stats.responses[class].get();
            stats.response(status);
            assert_eq!(stats.responses[class].get(), before + 1, "status {status}");
        }
    }

    #[test]
    fn peer_slots_reuse_names_and_share_the_excess() {
        let stats = WorkerStats::default();
        let name = |pool: &str, peer: usize| (pool.to_string(), format!("10.0.0.1:{peer}"));
        assert_eq!(stats.peer_slots(&[name("a", 1), name("a", 2)]), [0, 1]);
        // A reload keeps a peer's slot and adds the new one.
        assert_eq!(stats.peer_slots(&[name("a", 2), name("b", 1)]), [1, 2]);
        let many: Vec<(String, String)> =
            (0..PEER_COUNTERS_MAX + 5).map(|i| name("c", i)).collect();
        let slots = stats.peer_slots(&many);
        assert_eq!(
            *slots.last().unwrap(),
            PEER_COUNTERS_MAX as u16,
            "the shared slot"
        );
    }

    #[test]
    fn route_slots_reuse_names_and_send_the_excess_to_other() {
        let stats = WorkerStats::default();
        let keys: Vec<String> = (0..ROUTE_COUNTERS_MAX + 1)
            .map(|i| format!("GET /{i}"))
            .collect();
        let slots = stats.route_slots(&keys[..2]);
        assert_eq!(slots, [ROUTE_COUNTERS_MAX as u16, 0, 1]);
        let reloaded = stats.route_slots(&[keys[1].clone(), "GET /new".into()]);
        assert_eq!(
            reloaded,
            [ROUTE_COUNTERS_MAX as u16, 1, 2],
            "kept and added"
        );
        // "GET /new" took slot 2, so keys[2..] start at slot 3 and the
        // table fills at keys[254]; keys[255] is the first name past it.
        let all = stats.route_slots(&keys);
        assert_eq!(all[255], ROUTE_COUNTERS_MAX as u16 - 1, "the last slot");
        assert_eq!(all[256], ROUTE_COUNTERS_MAX as u16, "past the limit: other");
        assert_eq!(all[257], ROUTE_COUNTERS_MAX as u16);
    }

    #[test]
    fn exposition_and_json_are_pinned() {
        let (first, second) = (
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        );
        let slots = first.route_slots(&["GET /a\"\\".into()]);
        first.routes[slots[1] as usize].add(2);
        second.route_slots(&["GET /a\"\\".into()]);
        second.routes[0].add(1);
        second.routes[ROUTE_COUNTERS_MAX].add(4);
        first.response(200);
        first.response(500);
        second.response(404);
        first.bytes_in.add(10);
        second.bytes_out.add(20);
        first.accepted.add(1);
        first.open.add(1);
        let shared = shared_of(vec![first, second]);
        let text = prometheus(&shared, "# extra\n");
        let expected = "\
# HELP keystone_responses_total Responses sent, by status class.
# TYPE keystone_responses_total counter
keystone_responses_total{class=\"1xx\"} 0
keystone_responses_total{class=\"2xx\"} 1
keystone_responses_total{class=\"3xx\"} 0
keystone_responses_total{class=\"4xx\"} 1
keystone_responses_total{class=\"5xx\"} 1
# HELP keystone_received_bytes_total Request bytes received.
# TYPE keystone_received_bytes_total counter
keystone_received_bytes_total 10
# HELP keystone_sent_bytes_total Response bytes sent.
# TYPE keystone_sent_bytes_total counter
keystone_sent_bytes_total 20
# HELP keystone_connections_accepted_total Connections accepted.
# TYPE keystone_connections_accepted_total counter
keystone_connections_accepted_total 1
# HELP keystone_connections_open Connections open now.
# TYPE keystone_connections_open gauge
keystone_connections_open 1
# HELP keystone_lua_errors_total Lua handlers or generators that raised an error.
# TYPE keystone_lua_errors_total counter
keystone_lua_errors_total 0
# HELP keystone_lua_stopped_total Lua handlers stopped by the time budget.
# TYPE keystone_lua_stopped_total counter
keystone_lua_stopped_total 0
# HELP keystone_reloads_total Successful app reloads, summed over workers.
# TYPE keystone_reloads_total counter
keystone_reloads_total 0
# HELP keystone_static_requests_total Requests served from static directories.
# TYPE keystone_static_requests_total counter
keystone_static_requests_total 0
# HELP keystone_proxied_requests_total Requests handed to an upstream pool (ctx.upstream), summed over workers.
# TYPE keystone_proxied_requests_total counter
keystone_proxied_requests_total 0
# HELP keystone_proxied_spliced_bytes_total Proxied response body bytes moved from the upstream's socket by splice, never through user space.
# TYPE keystone_proxied_spliced_bytes_total counter
keystone_proxied_spliced_bytes_total 0
# HELP keystone_receives_registered_total Receives completed into buffers registered with io_uring (READ_FIXED).
# TYPE keystone_receives_registered_total counter
keystone_receives_registered_total 0
# HELP keystone_receives_plain_total Receives completed into unregistered buffers (first read of a connection, past the registered window).
# TYPE keystone_receives_plain_total counter
keystone_receives_plain_total 0
# HELP keystone_registered_buffers Receive buffers (connection slots) registered with io_uring now: a slot keeps its registration across connections and gives it back when its connection idles.
# TYPE keystone_registered_buffers gauge
keystone_registered_buffers 0
# HELP keystone_worker_responses_total Responses sent, by worker.
# TYPE keystone_worker_responses_total counter
keystone_worker_responses_total{worker=\"0\"} 2
keystone_worker_responses_total{worker=\"1\"} 1
# HELP keystone_route_requests_total Requests that matched a route, by route key.
# TYPE keystone_route_requests_total counter
keystone_route_requests_total{route=\"GET /a\\\"\\\\\"} 3
keystone_route_requests_total{route=\"other\"} 4
# HELP keystone_log_dropped_total Log lines dropped because the log's destination did not drain (workers and the main thread).
# TYPE keystone_log_dropped_total counter
keystone_log_dropped_total 0
# HELP keystone_tick_rearmed_total Times a worker's once-a-second tick was re-armed after the kernel ended it (completion-ring overflow).
# TYPE keystone_tick_rearmed_total counter
keystone_tick_rearmed_total 0
# HELP keystone_tls_connections_total TLS connections whose handshake finished, by where their records are encrypted (userspace or ktls).
# TYPE keystone_tls_connections_total counter
keystone_tls_connections_total{path=\"userspace\"} 0
keystone_tls_connections_total{path=\"ktls\"} 0
# HELP keystone_tls_failed_total TLS connections closed because a record or the handshake was refused.
# TYPE keystone_tls_failed_total counter
keystone_tls_failed_total 0
# HELP keystone_tls_plain_http_total Cleartext HTTP requests sent to a TLS port (answered 400, then closed).
# TYPE keystone_tls_plain_http_total counter
keystone_tls_plain_http_total 0
# HELP keystone_draining 1 once SIGTERM started the drain.
# TYPE keystone_draining gauge
keystone_draining 0
# extra
";
        assert_eq!(text, expected);
        shared.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            worker_json(&shared, ",\"x\":1"),
            "{\"workers\":[\
{\"worker\":0,\"requests\":2,\"open\":1,\"accepted\":1,\"errors_5xx\":1,\"bytes_in\":10,\"bytes_out\":0},\
{\"worker\":1,\"requests\":1,\"open\":0,\"accepted\":0,\"errors_5xx\":0,\"bytes_in\":0,\"bytes_out\":20}\
],\"draining\":true,\"x\":1}"
        );
    }
}
