//! `--observe`: the eBPF observers' figures (syscalls per worker thread,
//! io_uring_enter calls, kernel-seen request latency) and the steering
//! program's accepts per worker, rendered for the admin listener. Nothing
//! here runs on a worker: the admin thread reads BPF maps at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;

use keystone_ebpf::{
    bucket_upper_bound, percentile, LatencyHistogram, Observer, ReuseportSteering, BUCKETS,
};

/// What the process observes about itself.
pub struct Observed {
    /// The observers, when `--observe` and the kernel allowed them.
    pub observer: Option<Observer>,
    /// The steering program, when attached (its per-worker counters).
    pub steering: Option<ReuseportSteering>,
}

fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| format!("tid-{tid}"))
}

/// The `percent`-th percentile's bucket upper bound in microseconds, -1
/// when the histogram is empty (or the percentile is past 2^31 µs).
fn micros_of(histogram: &LatencyHistogram, percent: f64) -> f64 {
    percentile(histogram, percent).map_or(-1.0, |d| d.as_secs_f64() * 1e6)
}

impl Observed {
    /// Prometheus families (text exposition).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        if let Some(steering) = &self.steering {
            if let Ok(selections) = steering.selections_per_worker() {
                let _ = writeln!(out, "# HELP keystone_steered_connections_total Connections the eBPF reuseport program sent to each worker.\n# TYPE keystone_steered_connections_total counter");
                for (worker, count) in selections.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "keystone_steered_connections_total{{worker=\"{worker}\"}} {count}"
                    );
                }
            }
        }
        let Some(observer) = &self.observer else {
            return out;
        };
        if let Ok(threads) = observer.syscalls_by_thread() {
            let _ = writeln!(out, "# HELP keystone_syscalls_total System calls made by this process, by thread (eBPF).\n# TYPE keystone_syscalls_total counter");
            for (tid, count) in threads {
                let _ = writeln!(
                    out,
                    "keystone_syscalls_total{{thread=\"{}\",tid=\"{tid}\"}} {count}",
                    thread_name(tid)
                );
            }
        }
        if let Ok(count) = observer.io_uring_enter_count() {
            let _ = writeln!(out, "# HELP keystone_io_uring_enter_total io_uring_enter calls of this process (eBPF).\n# TYPE keystone_io_uring_enter_total counter\nkeystone_io_uring_enter_total {count}");
        }
        if let Ok(histogram) = observer.latency_histogram() {
            let _ = writeln!(out, "# HELP keystone_kernel_latency_seconds One socket's read-to-write turn seen from the kernel (eBPF): parse, Lua, serialize, queueing in the worker and the send; not the network. _sum is estimated from bucket midpoints.\n# TYPE keystone_kernel_latency_seconds histogram");
            let mut cumulative = 0u64;
            let mut sum_seconds = 0.0;
            for (index, count) in histogram.iter().enumerate().take(BUCKETS) {
                cumulative += count;
                if let Some(upper) = bucket_upper_bound(index) {
                    sum_seconds += *count as f64 * upper.as_secs_f64() * 0.75;
                    let _ = writeln!(
                        out,
                        "keystone_kernel_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
                        upper.as_secs_f64()
                    );
                }
            }
            let _ = writeln!(
                out,
                "keystone_kernel_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "keystone_kernel_latency_seconds_sum {sum_seconds}");
            let _ = writeln!(out, "keystone_kernel_latency_seconds_count {cumulative}");
        }
        out
    }

    /// JSON fields for `/stats.json` (leading comma included, or empty).
    pub fn json(&self) -> String {
        let Some(observer) = &self.observer else {
            return String::new();
        };
        let syscalls: u64 = observer
            .syscalls_by_number()
            .map(|n| n.iter().map(|(_, c)| c).sum())
            .unwrap_or(0);
        let enters = observer.io_uring_enter_count().unwrap_or(0);
        let histogram = observer.latency_histogram().unwrap_or([0; BUCKETS]);
        let samples: u64 = histogram.iter().sum();
        let micros = |p: f64| micros_of(&histogram, p);
        // Every thread that made a syscall or answered a turn (an io-wq
        // thread may send without entering a syscall), by tid.
        let mut by_tid: BTreeMap<u32, (u64, LatencyHistogram)> = observer
            .syscalls_by_thread()
            .unwrap_or_default()
            .into_iter()
            .map(|(tid, count)| (tid, (count, [0; BUCKETS])))
            .collect();
        for (tid, thread_histogram) in observer.latency_by_thread().unwrap_or_default() {
            by_tid.entry(tid).or_insert((0, [0; BUCKETS])).1 = thread_histogram;
        }
        let mut threads = String::new();
        for (index, (tid, (count, thread_histogram))) in by_tid.into_iter().enumerate() {
            if index > 0 {
                threads.push(',');
            }
            let _ = write!(
                threads,
                "{{\"tid\":{tid},\"name\":\"{}\",\"syscalls\":{count},\"p50_us\":{},\"p99_us\":{}}}",
                thread_name(tid),
                micros_of(&thread_histogram, 50.0),
                micros_of(&thread_histogram, 99.0)
            );
        }
        format!(
            ",\"observe\":{{\"syscalls\":{syscalls},\"io_uring_enter\":{enters},\"latency_samples\":{samples},\"p50_us\":{},\"p99_us\":{},\"threads\":[{threads}]}}",
            micros(50.0),
            micros(99.0)
        )
    }
}
