//! Latency figures.

use std::time::Duration;

/// Sorted latencies, reported as p50/p99/max in ms.
#[derive(Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// `n=… p50 … max …` in ms.
    pub fn summary(&self) -> String {
        format!(
            "n={} p50 {} max {}",
            self.len(),
            ms(self.quantile(0.5)),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
