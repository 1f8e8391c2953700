//! Counting running work so that SIGTERM can drain: every request or call holds a
//! [`WorkGuard`]; shutdown waits until none is left or the drain time runs out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct WorkTracker {
    running: AtomicUsize,
    idle: Notify,
    gauge: IntGauge,
}

/// Held while one unit of work runs.
#[derive(Debug)]
pub struct WorkGuard(Arc<WorkTracker>);

impl WorkTracker {
    pub fn new(gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            gauge,
        })
    }

    pub fn start(self: &Arc<Self>) -> WorkGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.gauge.inc();
        WorkGuard(self.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves once no work is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
