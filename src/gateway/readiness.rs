//! The gateway is ready while the users service says it is; the answer is cached for 1 s and
//! asked single-flight: however many probes arrive together (on any worker), one request to
//! users' `/health/ready` is in flight and the others wait for its answer.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use awc::Client;
use tokio::sync::watch;

use crate::http::ops::CHECK_TIMEOUT;

const CACHE_FOR: Duration = Duration::from_secs(1);

/// The last answer of the users service's `/health/ready` and the probe in flight, shared by
/// all workers.
#[derive(Clone, Default)]
pub struct UpstreamReadiness(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The last answer and when it came.
    last: Option<(Instant, bool)>,
    /// The probe in flight, if one is: its answer arrives on this channel (`None` until then).
    probing: Option<(u64, watch::Receiver<Option<bool>>)>,
    /// Numbers the probes, so a probe that ends never clears a newer one's place.
    probes_started: u64,
}

/// What a caller does: answer from the cache, or wait for the probe in flight.
enum Next {
    Cached(bool),
    Wait(watch::Receiver<Option<bool>>),
}

impl UpstreamReadiness {
    /// True if `url` answered 200 within 1 s, asking at most once a second.
    pub async fn check(&self, client: &Client, url: &str) -> bool {
        self.check_with(|| probe(client.clone(), url.to_owned()))
            .await
    }

    /// The cached answer, or the answer of the probe in flight, starting it with `probe` if
    /// none is. Waits at most the probe's timeout.
    async fn check_with<F, P>(&self, probe: F) -> bool
    where
        F: FnOnce() -> P,
        P: Future<Output = bool> + 'static,
    {
        let mut answer = match self.next(probe) {
            Next::Cached(up) => return up,
            Next::Wait(answer) => answer,
        };
        // The probe ends within CHECK_TIMEOUT; the bound holds even if it did not. A closed
        // channel (the probe's task dropped unanswered) reads as not ready.
        match tokio::time::timeout(CHECK_TIMEOUT, answer.wait_for(Option::is_some)).await {
            Ok(Ok(up)) => up.unwrap_or(false),
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Decides under the lock (never held across an await) and starts a probe if none is in
    /// flight and the cached answer is stale.
    fn next<F, P>(&self, probe: F) -> Next
    where
        F: FnOnce() -> P,
        P: Future<Output = bool> + 'static,
    {
        let (in_flight, answer) = {
            let mut state = self.lock();
            if let Some((at, up)) = state.last
                && at.elapsed() < CACHE_FOR
            {
                return Next::Cached(up);
            }
            if let Some((_, answer)) = &state.probing {
                return Next::Wait(answer.clone());
            }
            state.probes_started += 1;
            let number = state.probes_started;
            let (tell, answer) = watch::channel(None);
            state.probing = Some((number, answer.clone()));
            let in_flight = InFlight {
                readiness: self.clone(),
                number,
                tell: Some(tell),
            };
            (in_flight, answer)
        };
        let probe = probe();
        // Its own task, not the caller's future: a caller that goes away (its client hung up,
        // its own check timed out) does not cancel the probe the others wait for.
        actix_web::rt::spawn(async move {
            let up = tokio::time::timeout(CHECK_TIMEOUT, probe)
                .await
                .unwrap_or(false);
            in_flight.finish(up);
        });
        Next::Wait(answer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole, so a poisoned lock is still sound.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The probe in flight, held by its task: records and announces its answer, or, if the task
/// is dropped unanswered (its worker stopping), gives the place up so the next caller probes.
struct InFlight {
    readiness: UpstreamReadiness,
    number: u64,
    tell: Option<watch::Sender<Option<bool>>>,
}

impl InFlight {
    fn finish(mut self, up: bool) {
        if let Some(tell) = self.tell.take() {
            {
                let mut state = self.readiness.lock();
                state.last = Some((Instant::now(), up));
                self.give_up_place(&mut state);
            }
            tell.send_replace(Some(up));
        }
    }

    fn give_up_place(&self, state: &mut State) {
        if state
            .probing
            .as_ref()
            .is_some_and(|(number, _)| *number == self.number)
        {
            state.probing = None;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.tell.is_some() {
            // The sender goes with it: the waiters see the channel closed (not ready).
            let mut state = self.readiness.lock();
            self.give_up_place(&mut state);
        }
    }
}

/// One request to users' `/health/ready`: true on 200.
async fn probe(client: Client, url: String) -> bool {
    match client.get(&url).timeout(CHECK_TIMEOUT).send().await {
        Ok(mut res) => {
            // Read the (small) body so the connection can go back to the pool.
            let _ = res.body().limit(64 * 1024).await;
            res.status().as_u16() == 200
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use futures_util::future::join_all;
    use tokio::sync::oneshot;

    use super::*;

    /// A probe that counts itself and answers `up` once `release` fires.
    fn held_probe(
        count: &Rc<Cell<usize>>,
        release: oneshot::Receiver<()>,
        up: bool,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = bool>>> {
        let count = count.clone();
        move || {
            count.set(count.get() + 1);
            Box::pin(async move {
                let _ = release.await;
                up
            })
        }
    }

    #[actix_web::test]
    async fn concurrent_callers_share_one_probe_and_its_answer_then_the_cache() {
        let readiness = UpstreamReadiness::default();
        let count = Rc::new(Cell::new(0));
        let (release, released) = oneshot::channel();
        let mut released = Some(released);
        let callers = join_all((0..10).map(|_| {
            // Only the first caller's probe may run; each gets one to prove the others unused.
            let probe = match released.take() {
                Some(r) => held_probe(&count, r, true),
                None => held_probe(&count, oneshot::channel().1, false),
            };
            let readiness = readiness.clone();
            async move { readiness.check_with(probe).await }
        }));
        let release_after_all_joined = async {
            tokio::task::yield_now().await;
            let _ = release.send(());
        };
        let (answers, ()) = tokio::join!(callers, release_after_all_joined);
        assert_eq!(answers, vec![true; 10]);
        assert_eq!(count.get(), 1);
        // Within the cache period: the answer, no probe.
        let (_unused, never) = oneshot::channel();
        assert!(readiness.check_with(held_probe(&count, never, false)).await);
        assert_eq!(count.get(), 1);
    }

    #[actix_web::test]
    async fn a_probe_whose_task_ends_unanswered_gives_its_place_up() {
        let readiness = UpstreamReadiness::default();
        // The probe's task is dropped without an answer (here: it panics).
        let dropped = readiness
            .check_with(|| async { panic!("the probe's task ends unanswered") })
            .await;
        assert!(!dropped, "its callers read not ready");
        // The next caller probes again instead of waiting for a probe that is gone.
        let count = Rc::new(Cell::new(0));
        let (release, released) = oneshot::channel();
        let _ = release.send(());
        assert!(
            readiness
                .check_with(held_probe(&count, released, true))
                .await
        );
        assert_eq!(count.get(), 1);
    }
}
