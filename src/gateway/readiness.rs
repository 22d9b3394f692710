//! The gateway is ready while the users service says it is; the answer is cached for 1 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::Client;

use crate::http::ops::CHECK_TIMEOUT;

const CACHE_FOR: Duration = Duration::from_secs(1);

/// The last answer of the users service's `/health/ready`, shared by all workers.
#[derive(Clone, Default)]
pub struct UpstreamReadiness {
    last: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl UpstreamReadiness {
    /// True if `url` answered 200 within 1 s, asking at most once a second.
    pub async fn check(&self, client: &Client, url: &str) -> bool {
        if let Ok(last) = self.last.lock()
            && let Some((at, up)) = *last
            && at.elapsed() < CACHE_FOR
        {
            return up;
        }
        let up = match client.get(url).timeout(CHECK_TIMEOUT).send().await {
            Ok(mut res) => {
                // Read the (small) body so the connection can go back to the pool.
                let _ = res.body().limit(64 * 1024).await;
                res.status().as_u16() == 200
            }
            Err(_) => false,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), up));
        }
        up
    }
}
