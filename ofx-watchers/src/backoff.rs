//! Capped, jittered exponential backoff between reconnection attempts.
//!
//! The pause doubles from [`FIRST`] to at most [`MAX`], each one spread by ±[`SPREAD`] so that
//! the hosts that lost one server together do not all come back at the same moment. It starts
//! over once a connection has lasted [`STABLE`]: a connection that breaks as soon as it is made
//! keeps backing off, while one that served a while and was then cut (a session terminated by
//! an administrator, a server restarted) is made again at once.

use std::time::Duration;

/// The first pause.
pub(crate) const FIRST: Duration = Duration::from_millis(100);
/// The longest pause (before jitter).
pub(crate) const MAX: Duration = Duration::from_secs(10);
/// How long a connection must have lasted for the pauses to start over at [`FIRST`].
pub(crate) const STABLE: Duration = Duration::from_secs(1);
/// How far a pause may be from its nominal value, as a fraction of it.
pub(crate) const SPREAD: f64 = 0.25;

/// The pauses between attempts to reach a server or re-establish a watch.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// A backoff whose first pause is [`FIRST`].
    pub(crate) const fn new() -> Self {
        Self { next: FIRST }
    }

    /// The pause before the next attempt; the one after it will be twice as long, up to [`MAX`].
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = jitter(self.next, SPREAD);
        self.next = (self.next * 2).min(MAX);
        pause
    }

    /// A connection that was up for `lasted` ended: start over if it lasted [`STABLE`] or more.
    pub(crate) fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE {
            self.next = FIRST;
        }
    }
}

/// `period` spread uniformly by ±`spread` (a fraction of it).
pub(crate) fn jitter(period: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    period.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(pause: Duration, nominal: Duration) -> bool {
        pause >= nominal.mul_f64(1.0 - SPREAD) && pause <= nominal.mul_f64(1.0 + SPREAD)
    }

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let mut nominal = FIRST;
        for _ in 0..20 {
            let pause = backoff.next_pause();
            assert!(within(pause, nominal), "{pause:?} is not {nominal:?} ±25%");
            nominal = (nominal * 2).min(MAX);
        }
        assert_eq!(nominal, MAX);
    }

    #[test]
    fn starts_over_only_after_a_connection_that_lasted() {
        let mut backoff = Backoff::new();
        for _ in 0..5 {
            backoff.next_pause();
        }
        backoff.connection_ended(STABLE / 2);
        assert!(within(backoff.next_pause(), FIRST * 32));
        backoff.connection_ended(STABLE);
        assert!(within(backoff.next_pause(), FIRST));
    }

    #[test]
    fn jitter_is_spread_around_the_period() {
        let period = Duration::from_secs(1);
        let pauses: Vec<Duration> = (0..200).map(|_| jitter(period, SPREAD)).collect();
        assert!(pauses.iter().all(|pause| within(*pause, period)));
        assert!(pauses.iter().any(|pause| *pause < period));
        assert!(pauses.iter().any(|pause| *pause > period));
    }
}
