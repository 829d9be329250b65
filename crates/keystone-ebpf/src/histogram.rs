//! The latency histogram's buckets and percentiles: log2 of microseconds,
//! as `ebpf/latency.c` fills them.

use std::time::Duration;

/// Buckets of the latency histogram. Bucket `i` counts read-to-write turns
/// that took [2^i, 2^(i+1)) microseconds; bucket 0 also holds those under
/// 1 µs and the last bucket everything from 2^31 µs (~36 minutes) up, so
/// no sample is dropped. Must equal `BUCKETS` in `ebpf/latency.c`.
pub const BUCKETS: usize = 32;

/// A histogram as [`crate::Observer::latency_histogram`] returns it.
pub type LatencyHistogram = [u64; BUCKETS];

/// The largest bucket index whose upper bound fits a `u64` of microseconds
/// shifted from 1; keeps `1 << (index + 1)` from overflowing.
const _: () = assert!(BUCKETS < 63);

/// The exclusive upper bound of bucket `index`: 2^(index+1) µs. `None` for
/// the last bucket, which is open-ended.
pub fn bucket_upper_bound(index: usize) -> Option<Duration> {
    assert!(index < BUCKETS, "bucket {index} of {BUCKETS}");
    if index == BUCKETS - 1 {
        return None;
    }
    Some(Duration::from_micros(1 << (index + 1)))
}

/// The upper bound of the bucket holding the `percent`-th percentile
/// (0 < `percent` <= 100; e.g. 50.0, 99.9): an over-estimate by at most a
/// factor of two. `None` when the histogram is empty, or when that
/// percentile lies in the open-ended last bucket (at least 2^31 µs).
///
/// The percentile is the sample of rank ceil(percent/100 × total), the
/// nearest-rank definition: p100 is the slowest sample's bucket.
pub fn percentile(histogram: &LatencyHistogram, percent: f64) -> Option<Duration> {
    assert!(
        percent > 0.0 && percent <= 100.0,
        "percentile {percent} outside (0, 100]"
    );
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    // Float rounding can put the rank a hair past `total`; clamp it.
    let rank = ((percent / 100.0 * total as f64).ceil() as u64).clamp(1, total);
    let mut seen: u64 = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_bound(index);
        }
    }
    unreachable!("rank {rank} <= total {total}, so some bucket reaches it")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(entries: &[(usize, u64)]) -> LatencyHistogram {
        let mut histogram = [0; BUCKETS];
        for &(index, count) in entries {
            histogram[index] = count;
        }
        histogram
    }

    fn check(entries: &[(usize, u64)], percent: f64, expected_micros: Option<u64>) {
        let actual = percentile(&histogram(entries), percent);
        assert_eq!(
            actual,
            expected_micros.map(Duration::from_micros),
            "{entries:?} p{percent}"
        );
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        check(&[], 50.0, None);
        // One sample in bucket 0 ([0, 2) µs): every percentile is 2 µs.
        check(&[(0, 1)], 0.1, Some(2));
        check(&[(0, 1)], 100.0, Some(2));
        // 90 fast ([64, 128) µs), 10 slow ([8, 16) ms).
        let split = [(6, 90), (13, 10)];
        check(&split, 50.0, Some(128));
        check(&split, 90.0, Some(128));
        check(&split, 90.1, Some(16_384));
        check(&split, 100.0, Some(16_384));
        // The open-ended last bucket has no upper bound.
        check(&[(BUCKETS - 1, 1)], 50.0, None);
        check(&[(0, 1), (BUCKETS - 1, 1)], 50.0, Some(2));
    }

    #[test]
    fn bucket_bounds_at_the_edges() {
        assert_eq!(bucket_upper_bound(0), Some(Duration::from_micros(2)));
        assert_eq!(
            bucket_upper_bound(BUCKETS - 2),
            Some(Duration::from_micros(1 << (BUCKETS - 1)))
        );
        assert_eq!(bucket_upper_bound(BUCKETS - 1), None);
    }

    #[test]
    fn percent_at_its_limits() {
        let one = histogram(&[(3, 1)]);
        assert_eq!(percentile(&one, 100.0), Some(Duration::from_micros(16)));
        let outside = std::panic::catch_unwind(|| percentile(&one, 100.1));
        assert!(outside.is_err(), "p100.1 must be refused");
        let zero = std::panic::catch_unwind(|| percentile(&one, 0.0));
        assert!(zero.is_err(), "p0 must be refused");
    }
}
