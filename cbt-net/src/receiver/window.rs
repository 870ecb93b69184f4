//! The block window: how many bytes of blocks are requested at once.

use super::*;

/// Sizes the block window: the delivery rate times twice the shortest
/// time from a NEED_BLOCKS to its first block (about twice the
/// bandwidth-delay product) plus [`WINDOW_SLACK`], plus
/// [`MIN_BLOCK_WINDOW`], at most the configured `window_bytes`.
///
/// Requesting more than the link needs gains nothing: the surplus waits in
/// queues along the path (socket buffers, a shaper, a relay), and every
/// GROUPS and DIGESTS frame the sender sends waits behind it, so the
/// receiver learns which blocks it needs next seconds late, runs out of
/// blocks to request and the link idles. Starting at the floor, the window
/// at least doubles per rate sample while the link keeps up (the rate
/// measured with a window of `w` is at most `w` per latency, and the next
/// window is more than twice that), like TCP's slow start.
pub(super) struct Pace {
    pub(super) cap: u64,
    pub(super) floor: u64,
    /// Shortest time seen from a NEED_BLOCKS to its first block.
    pub(super) min_latency: Option<Duration>,
    /// The first block of a NEED_BLOCKS being timed, and when it was sent.
    pub(super) timing: Option<(u64, Instant)>,
    /// The current rate sample: since when, bytes received; `None` while
    /// nothing is requested (idle time must not lower the rate).
    pub(super) sample: Option<(Instant, u64)>,
    /// Recent delivery rates (bytes of blocks per second).
    pub(super) rates: VecDeque<f64>,
}

impl Pace {
    pub(super) fn new(cap: u64) -> Self {
        Pace {
            cap,
            floor: MIN_BLOCK_WINDOW.min(cap),
            min_latency: None,
            timing: None,
            sample: None,
            rates: VecDeque::with_capacity(RATE_SAMPLES + 1),
        }
    }

    /// Bytes of blocks to keep requested.
    pub(super) fn window(&self) -> u64 {
        let rate = self.rates.iter().copied().fold(0.0, f64::max);
        let latency = self.min_latency.map_or(0.0, |d| d.as_secs_f64());
        let w = self.floor as f64 + rate * (2.0 * latency + WINDOW_SLACK.as_secs_f64());
        (w.min(self.cap as f64) as u64).max(self.floor)
    }

    /// A NEED_BLOCKS starting with `first` goes out; `idle`: nothing was
    /// outstanding before it.
    pub(super) fn requested(&mut self, first: u64, idle: bool) {
        let now = Instant::now();
        if self.timing.is_none() {
            self.timing = Some((first, now));
        }
        if idle || self.sample.is_none() {
            self.sample = Some((now, 0));
        }
    }

    /// Block `index` of `len` bytes arrived; `idle`: nothing is outstanding
    /// any more.
    pub(super) fn received(&mut self, index: u64, len: u32, idle: bool) {
        let now = Instant::now();
        if let Some((first, sent)) = self.timing {
            if first == index {
                let latency = now.duration_since(sent);
                self.min_latency = Some(self.min_latency.map_or(latency, |m| m.min(latency)));
                self.timing = None;
            }
        }
        let Some((since, bytes)) = self.sample.as_mut() else {
            return;
        };
        *bytes += u64::from(len);
        let span = now.duration_since(*since);
        let interval = self.min_latency.unwrap_or_default().max(MIN_RATE_INTERVAL);
        if span >= interval || (idle && span >= MIN_RATE_INTERVAL / 4) {
            let rate = *bytes as f64 / span.as_secs_f64();
            if self.rates.len() == RATE_SAMPLES {
                self.rates.pop_front();
            }
            self.rates.push_back(rate);
            self.sample = Some((now, 0));
        }
        if idle {
            self.sample = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_window_follows_the_bandwidth_delay_product() {
        let mut p = Pace::new(32 << 20);
        assert_eq!(p.window(), MIN_BLOCK_WINDOW);
        p.min_latency = Some(Duration::from_millis(20));
        p.rates.push_back(10e6);
        assert!(p.window().abs_diff(MIN_BLOCK_WINDOW + 900_000) < 10);
        p.rates.push_back(1e9);
        assert_eq!(p.window(), 32 << 20);
        assert_eq!(Pace::new(1 << 20).window(), 1 << 20);
    }

    #[test]
    fn block_window_measures_latency_and_rate() {
        let mut p = Pace::new(32 << 20);
        p.requested(10, true);
        p.received(10, 4096, false);
        assert!(p.min_latency.is_some());
        thread::sleep(MIN_RATE_INTERVAL);
        p.received(11, 4096, true);
        assert_eq!(p.rates.len(), 1);
        assert!(p.sample.is_none(), "idle time is not sampled");
        assert!(p.rates[0] > 0.0);
    }
}
