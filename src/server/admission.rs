//! Admission: at most `concurrency` requests are worked on at once, at most `queue` more
//! wait, and the rest are told to come back (429 with `Retry-After`) instead of piling up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;
use super::ServeError;

pub struct Admission {
    permits: Arc<Semaphore>,
    concurrency: usize,
    queue: usize,
    waiting: AtomicUsize,
    /// A moving average of how long a worked-on request holds its permit, in ms: the basis
    /// of the `Retry-After` a rejected client is given.
    mean_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A request's right to run; counts it as running until dropped.
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    started: Instant,
    admission: Arc<Admission>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .metrics
            .running
            .fetch_sub(1, Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        // An exponential average (1/8 new): follows a change of load in a few requests.
        let old = self.admission.mean_ms.load(Ordering::Relaxed);
        let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
        self.admission.mean_ms.store(new, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(concurrency: usize, queue: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let concurrency = concurrency.max(1);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            queue,
            waiting: AtomicUsize::new(0),
            mean_ms: AtomicU64::new(0),
            metrics,
        })
    }

    /// Waits for a worker, at most `patience`; refuses at once when the queue is full.
    pub async fn admit(self: &Arc<Self>, patience: Duration) -> Result<Ticket, ServeError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Reserve a place in the queue, or refuse.
                let reserved =
                    self.waiting
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                            (w < self.queue).then_some(w + 1)
                        });
                if reserved.is_err() {
                    return Err(ServeError::Overloaded {
                        retry_after: self.retry_after(),
                    });
                }
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
                let got =
                    tokio::time::timeout(patience, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(ServeError::ShuttingDown),
                    Err(_) => {
                        return Err(ServeError::Overloaded {
                            retry_after: self.retry_after(),
                        })
                    }
                }
            }
        };
        self.metrics.running.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            _permit: permit,
            started: Instant::now(),
            admission: self.clone(),
        })
    }

    /// Seconds until a place is likely free: the queue ahead, worked off at the recent pace.
    fn retry_after(&self) -> u64 {
        let mean = self.mean_ms.load(Ordering::Relaxed).max(1000);
        let ahead = self.waiting.load(Ordering::Relaxed) as u64 + 1;
        (mean * ahead / self.concurrency as u64)
            .div_ceil(1000)
            .clamp(1, 600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_queue_and_admits_when_a_place_frees() {
        let a = Admission::new(1, 1, Arc::new(Metrics::default()));
        let first = a.admit(Duration::from_secs(1)).await.unwrap();
        let a2 = a.clone();
        let queued = tokio::spawn(async move { a2.admit(Duration::from_secs(5)).await.is_ok() });
        // Let the second request take the one queue place.
        while a.waiting.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match a.admit(Duration::from_secs(1)).await {
            Err(ServeError::Overloaded { retry_after }) => assert!(retry_after >= 1),
            Err(e) => panic!("expected overload, got {e}"),
            Ok(_) => panic!("a third request was admitted past a queue of one"),
        }
        drop(first);
        assert!(queued.await.unwrap(), "the queued request was not admitted");
        // A queued request that waits past its patience is turned away, not left hanging.
        let held = a.admit(Duration::from_secs(1)).await.unwrap();
        let e = a.admit(Duration::from_millis(50)).await;
        assert!(matches!(e, Err(ServeError::Overloaded { .. })));
        drop(held);
    }
}
