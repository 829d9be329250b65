//! Deadlines of many owners, executed by one repeating timeout: a hashed
//! timing wheel of one-second buckets. Owners (connection slots) say when
//! their next deadline is — it is data their state machine returns — and
//! the wheel hands back those whose moment has passed; nothing sweeps every
//! owner. Set, clear and expiry are O(1) per owner (intrusive lists in
//! arrays sized at start-up; nothing allocates afterwards).

use std::time::{Duration, Instant};

/// Buckets: deadlines further than this many ticks ahead wrap around and
/// are checked (and kept) when their bucket comes up early. 128 s covers the
/// default timeouts (75 s keep-alive) in one lap.
const BUCKETS: usize = 128;
/// The wheel's resolution: deadlines fire on the first tick at or after
/// them (so up to one tick late, never early).
pub const TICK: Duration = Duration::from_secs(1);
// `tick_of` counts in whole seconds.
const _: () = assert!(TICK.subsec_nanos() == 0 && TICK.as_secs() > 0);

const NONE: u32 = u32::MAX;

/// The wheel for owners `0..owners`.
pub struct TimerWheel {
    start: Instant,
    /// First tick not yet processed.
    next_tick: u64,
    heads: [u32; BUCKETS],
    next: Box<[u32]>,
    prev: Box<[u32]>,
    /// Each owner's deadline, as the tick it fires on; `None`: not set.
    due: Box<[Option<u64>]>,
}

impl TimerWheel {
    /// A wheel for `owners` owners, starting at `now`.
    pub fn new(owners: u32, now: Instant) -> TimerWheel {
        TimerWheel {
            start: now,
            next_tick: 1,
            heads: [NONE; BUCKETS],
            next: vec![NONE; owners as usize].into_boxed_slice(),
            prev: vec![NONE; owners as usize].into_boxed_slice(),
            due: vec![None; owners as usize].into_boxed_slice(),
        }
    }

    /// The tick a deadline fires on: the first at or after it.
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        // Whole seconds, rounded up, then whole ticks: u64 arithmetic (a
        // u128 division by the tick's nanoseconds was a libgcc call on
        // every timer change, twice per keep-alive request).
        let seconds = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        let ticks = seconds.div_ceil(TICK.as_secs());
        ticks.max(self.next_tick)
    }

    /// Sets (or, with `None`, clears) `owner`'s deadline.
    pub fn set(&mut self, owner: u32, at: Option<Instant>) {
        let tick = at.map(|at| self.tick_of(at));
        if self.due[owner as usize] == tick {
            return;
        }
        self.unlink(owner);
        if let Some(tick) = tick {
            self.link(owner, tick);
        }
    }

    /// `owner`'s deadline tick, if set.
    pub fn due(&self, owner: u32) -> Option<u64> {
        self.due[owner as usize]
    }

    fn link(&mut self, owner: u32, tick: u64) {
        let bucket = (tick % BUCKETS as u64) as usize;
        let head = self.heads[bucket];
        self.next[owner as usize] = head;
        self.prev[owner as usize] = NONE;
        if head != NONE {
            self.prev[head as usize] = owner;
        }
        self.heads[bucket] = owner;
        self.due[owner as usize] = Some(tick);
    }

    fn unlink(&mut self, owner: u32) {
        let Some(tick) = self.due[owner as usize].take() else {
            return;
        };
        let (next, prev) = (self.next[owner as usize], self.prev[owner as usize]);
        if prev == NONE {
            let bucket = (tick % BUCKETS as u64) as usize;
            debug_assert_eq!(self.heads[bucket], owner);
            self.heads[bucket] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next != NONE {
            self.prev[next as usize] = prev;
        }
    }

    /// Calls `expired` for every owner whose deadline is at or before
    /// `now` (each is cleared first, so the call may set it again).
    pub fn expire(&mut self, now: Instant, mut expired: impl FnMut(u32)) {
        let now_tick = now.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos();
        let now_tick = now_tick as u64;
        // Each pass handles one tick's bucket; a long pause is caught up at
        // most one lap (every bucket once).
        let first = self
            .next_tick
            .max(now_tick.saturating_sub(BUCKETS as u64 - 1));
        for tick in first..=now_tick {
            let bucket = (tick % BUCKETS as u64) as usize;
            let mut owner = self.heads[bucket];
            while owner != NONE {
                let next = self.next[owner as usize];
                if self.due[owner as usize].is_some_and(|due| due <= now_tick) {
                    self.unlink(owner);
                    expired(owner);
                }
                owner = next;
            }
        }
        self.next_tick = self.next_tick.max(now_tick + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(wheel: &mut TimerWheel, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.expire(now, |owner| out.push(owner));
        out.sort_unstable();
        out
    }

    #[test]
    fn deadlines_fire_on_the_first_tick_at_or_after_them_never_before() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(8, start);
        let second = Duration::from_secs(1);
        wheel.set(0, Some(start + second / 2));
        wheel.set(1, Some(start + second * 3));
        wheel.set(2, Some(start + second * 3 + second / 10));
        wheel.set(3, Some(start + second * 300)); // past one lap
        assert_eq!(collect(&mut wheel, start + second / 4), Vec::<u32>::new());
        assert_eq!(collect(&mut wheel, start + second), vec![0]);
        assert_eq!(collect(&mut wheel, start + second * 2), Vec::<u32>::new());
        assert_eq!(collect(&mut wheel, start + second * 3), vec![1]);
        assert_eq!(collect(&mut wheel, start + second * 4), vec![2]);
        // Owner 3 sits in a bucket visited twice before its lap: kept.
        assert_eq!(collect(&mut wheel, start + second * 200), Vec::<u32>::new());
        assert_eq!(wheel.due(3), Some(300));
        assert_eq!(collect(&mut wheel, start + second * 301), vec![3]);
        assert_eq!(wheel.due(3), None);
    }

    #[test]
    fn moving_and_clearing_a_deadline() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(4, start);
        let second = Duration::from_secs(1);
        for owner in 0..4 {
            wheel.set(owner, Some(start + second * 5));
        }
        wheel.set(1, Some(start + second * 2));
        wheel.set(2, None);
        wheel.set(3, Some(start + second * 9));
        assert_eq!(collect(&mut wheel, start + second * 2), vec![1]);
        assert_eq!(collect(&mut wheel, start + second * 6), vec![0]);
        assert_eq!(collect(&mut wheel, start + second * 9), vec![3]);
        assert_eq!(collect(&mut wheel, start + second * 20), Vec::<u32>::new());
    }

    #[test]
    fn an_expired_owner_may_set_itself_again() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(2, start);
        let second = Duration::from_secs(1);
        wheel.set(0, Some(start + second));
        let mut fired = 0;
        wheel.expire(start + second, |_| fired += 1);
        assert_eq!(fired, 1);
        wheel.set(0, Some(start + second * 2));
        assert_eq!(collect(&mut wheel, start + second * 2), vec![0]);
        // A deadline already past is due on the next tick processed.
        wheel.set(1, Some(start));
        assert_eq!(collect(&mut wheel, start + second * 3), vec![1]);
    }

    /// Many owners setting, moving and clearing deadlines at random
    /// (a fixed xorshift sequence) against a plain model: every owner
    /// fires exactly on the first tick at or after its deadline, once.
    #[test]
    fn random_sets_moves_and_clears_fire_as_a_model_says() {
        const OWNERS: u32 = 64;
        let start = Instant::now();
        let mut wheel = TimerWheel::new(OWNERS, start);
        let mut model: Vec<Option<u64>> = vec![None; OWNERS as usize];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for now_secs in 1..400_u64 {
            for _ in 0..random(40) {
                let owner = random(u64::from(OWNERS)) as u32;
                if random(5) == 0 {
                    wheel.set(owner, None);
                    model[owner as usize] = None;
                } else {
                    // Up to two laps ahead, at sub-second offsets.
                    let at_ms = now_secs * 1000 + random(256_000);
                    wheel.set(owner, Some(start + Duration::from_millis(at_ms)));
                    model[owner as usize] = Some(at_ms.div_ceil(1000).max(now_secs + 1));
                }
                assert_eq!(wheel.due(owner), model[owner as usize]);
            }
            let now = start + Duration::from_secs(now_secs + 1);
            let fired = collect(&mut wheel, now);
            let mut expected: Vec<u32> = (0..OWNERS)
                .filter(|&owner| model[owner as usize].is_some_and(|due| due <= now_secs + 1))
                .collect();
            expected.sort_unstable();
            assert_eq!(fired, expected, "at {now_secs} s");
            for owner in expected {
                model[owner as usize] = None;
            }
        }
    }
}
