//! The one retry policy for transient failures: exponential backoff with jitter, built on
//! the `backon` crate.
//!
//! Store writes (next to ClickHouse's deduplication token, so every attempt of a batch
//! carries the same token), the durable queue's drain (acknowledged spans are retried until
//! the store takes them) and ClickHouse start-up (waiting for the server) all retry with this
//! policy, so there is one place that decides how long to wait and when to give up.
//! Callers run it with `backon::Retryable::retry(op, policy.backoff())` and their own
//! `when` (which errors are transient) and `notify` (logging and metrics).

use std::time::Duration;

/// How often and how patiently to retry an operation that failed transiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry; doubles per retry.
    pub first_delay: Duration,
    /// Longest delay between two attempts (before jitter).
    pub max_delay: Duration,
    /// Attempts in all, the first included; `None` retries until the operation succeeds
    /// or fails permanently.
    pub max_attempts: Option<u32>,
    /// Give up once this much time has been spent waiting between attempts.
    pub max_total_delay: Option<Duration>,
}

impl RetryPolicy {
    /// `max_attempts` attempts, delays from `first_delay` doubling up to `max_delay`.
    pub const fn attempts(max_attempts: u32, first_delay: Duration, max_delay: Duration) -> Self {
        Self {
            first_delay,
            max_delay,
            max_attempts: Some(max_attempts),
            max_total_delay: None,
        }
    }

    /// Retries without an attempt limit (until success or a permanent error).
    pub const fn forever(first_delay: Duration, max_delay: Duration) -> Self {
        Self {
            first_delay,
            max_delay,
            max_attempts: None,
            max_total_delay: None,
        }
    }

    /// Retries until `total` has been spent waiting.
    pub const fn within(total: Duration, first_delay: Duration, max_delay: Duration) -> Self {
        Self {
            first_delay,
            max_delay,
            max_attempts: None,
            max_total_delay: Some(total),
        }
    }

    /// The backoff to hand to `backon`. Each delay gets up to 100% jitter on top (so
    /// collectors that failed together do not retry in lockstep).
    pub fn backoff(&self) -> backon::ExponentialBuilder {
        let b = backon::ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay.max(self.first_delay))
            .with_factor(2.0)
            .with_jitter()
            .with_total_delay(self.max_total_delay);
        match self.max_attempts {
            // backon counts retries, not attempts.
            Some(n) => b.with_max_times(n.saturating_sub(1) as usize),
            None => b.without_max_times(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn delays_grow_with_jitter_and_stop_where_told() {
        let ms = Duration::from_millis;
        let p = RetryPolicy::attempts(4, ms(100), ms(250));
        let delays: Vec<Duration> = p.backoff().build().collect();
        assert_eq!(delays.len(), 3, "4 attempts: 3 waits");
        for (d, base) in delays.iter().zip([ms(100), ms(200), ms(250)]) {
            assert!(*d >= base && *d <= base * 2, "{d:?} for {base:?}");
        }
        let forever = RetryPolicy::forever(ms(10), ms(20));
        assert_eq!(forever.backoff().build().take(1000).count(), 1000);
        let within = RetryPolicy::within(ms(1000), ms(100), ms(100));
        let total: Duration = within.backoff().build().sum();
        assert!(total <= ms(1000));
        assert!(within.backoff().build().count() >= 5);
    }
}
