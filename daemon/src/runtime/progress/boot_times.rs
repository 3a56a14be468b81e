//! How long each image's servers took to answer after their container started, on this node:
//! what the progress bar measures a booting server against.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Boots remembered per image; the median of these is the expected boot time.
pub const KEEP: usize = 9;
/// What a boot is expected to take for an image this node has not started yet.
pub const DEFAULT_EXPECTED: Duration = Duration::from_secs(8);
/// Images remembered at most; past it the table starts afresh (it is only a hint).
pub const MAX_IMAGES: usize = 1024;

/// Recent start→ready durations per image, in memory: a restart forgets them, and the first
/// spawn after one falls back to [`DEFAULT_EXPECTED`].
#[derive(Default)]
pub struct BootTimes {
    by_image: Mutex<HashMap<String, VecDeque<Duration>>>,
}

impl BootTimes {
    /// Remembers that a server of `image` took `took` to answer.
    pub fn record(&self, image: &str, took: Duration) {
        let mut map = self
            .by_image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_IMAGES && !map.contains_key(image) {
            map.clear();
        }
        let times = map.entry(image.to_owned()).or_default();
        if times.len() >= KEEP {
            times.pop_front();
        }
        times.push_back(took);
    }

    /// The median of `image`'s recent boots, or `None` when none is known.
    pub fn expected(&self, image: &str) -> Option<Duration> {
        let map = self
            .by_image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let times = map.get(image).filter(|t| !t.is_empty())?;
        let mut sorted: Vec<Duration> = times.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }
}

/// What the user reads `elapsed` into a boot: a clock that moves, and a word when it takes
/// longer than usual. No "usually about N s": what is measured here is only the server's own
/// boot, while the user also waits for the pull, the hub and JupyterLab to load, so any such
/// figure would read below the wait (3 s said, 7 s waited from the click).
pub fn message(elapsed: Duration, expected: Option<Duration>) -> String {
    let so_far = elapsed.as_secs();
    let slow = expected.is_some_and(|e| so_far > e.as_secs().max(1).saturating_mul(2));
    if slow {
        format!("Your server is starting up: {so_far} s so far, longer than usual.")
    } else {
        format!("Your server is starting up: {so_far} s so far.")
    }
}

/// The bar's position `elapsed` into a boot expected to take `expected`: from `from` toward
/// `to`, fast at first and ever slower, so it keeps moving past the expected time without
/// ever reaching `to` (a late server must not look done).
pub fn percent(elapsed: Duration, expected: Duration, from: u8, to: u8) -> u8 {
    let expected = expected.max(Duration::from_millis(100)).as_secs_f64();
    // 1 - e^(-t/T): about 63% of the way at the expected time, 86% at twice it.
    let share = 1.0 - (-elapsed.as_secs_f64() / expected).exp();
    let span = f64::from(to.saturating_sub(from).saturating_sub(1));
    // Truncation is the intent: the bar never rounds up to `to`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let step = (span * share) as u8;
    from + step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_recent_boots_is_expected() {
        let t = BootTimes::default();
        assert_eq!(t.expected("img"), None);
        for ms in [900, 1000, 30_000] {
            t.record("img", Duration::from_millis(ms));
        }
        assert_eq!(t.expected("img"), Some(Duration::from_millis(1000)));
        for _ in 0..KEEP {
            t.record("img", Duration::from_secs(3));
        }
        assert_eq!(
            t.expected("img"),
            Some(Duration::from_secs(3)),
            "old boots are forgotten"
        );
        assert_eq!(t.expected("other"), None);
    }

    #[test]
    fn the_bar_moves_and_stays_below_its_end() {
        let exp = Duration::from_secs(4);
        let mut last = 0;
        for tenth in 0..600 {
            let p = percent(Duration::from_millis(tenth * 100), exp, 60, 95);
            assert!(p >= last, "the bar never goes back");
            assert!((60..95).contains(&p), "{p} out of 60..95");
            last = p;
        }
        assert!(
            percent(exp, exp, 60, 95) > 70,
            "well on the way at the expected time"
        );
        assert_eq!(percent(Duration::ZERO, exp, 60, 95), 60);
    }

    #[test]
    fn the_boot_message_is_a_clock_that_says_when_it_is_slow_and_never_promises_a_time() {
        let secs = Duration::from_secs;
        assert_eq!(
            message(Duration::from_millis(4200), Some(secs(8))),
            "Your server is starting up: 4 s so far."
        );
        assert_eq!(
            message(secs(20), Some(secs(8))),
            "Your server is starting up: 20 s so far, longer than usual."
        );
        assert_eq!(
            message(Duration::from_millis(4200), None),
            "Your server is starting up: 4 s so far."
        );
    }
}
