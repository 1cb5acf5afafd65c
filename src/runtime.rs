// SPDX-License-Identifier: MPL-2.0

//! The plugin's one shared tokio runtime, and a wait that a GStreamer thread can abort.
//!
//! Elements never block a streaming thread on the network directly: they hand the work to [`RUNTIME`] and,
//! where they must wait for it (a control-plane call in `start()`, EOS draining, the next chunk of a
//! GetMedia response), they wait through a [`Canceller`]. `BaseSink::unlock()` / `BaseSrc::unlock()`, flushes
//! and state changes call [`Canceller::cancel`], which ends every wait in progress at once and makes new
//! ones fail until [`Canceller::reset`] (`unlock_stop()`), so a pipeline going to NULL never hangs on a
//! stalled connection.

use std::future::Future;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};

/// The runtime every element of the plugin uses: one per process, started on first use.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvs-runtime")
        .build()
        // Only fails when the OS refuses threads or an epoll instance: nothing a plugin can recover from.
        .expect("kvs: cannot start the tokio runtime")
});

/// Why a [`Canceller::wait`] did not return the future's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// [`Canceller::cancel`] was called (flush, unlock, state change) before or during the wait.
    Cancelled,
    /// The future did not finish within the given time.
    TimedOut(Duration),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Cancelled => write!(f, "cancelled"),
            WaitError::TimedOut(d) => write!(f, "timed out after {:.3} s", d.as_secs_f64()),
        }
    }
}

impl std::error::Error for WaitError {}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    next_id: u64,
    waiting: Vec<(u64, AbortHandle)>,
}

/// Lets GStreamer threads block on futures that another thread can abort at once.
///
/// Several threads may wait through one `Canceller` at the same time; [`cancel`](Self::cancel) ends all of
/// them. A cancelled `Canceller` stays cancelled (every new wait fails at once with
/// [`WaitError::Cancelled`]) until [`reset`](Self::reset), which mirrors `unlock()` / `unlock_stop()`.
#[derive(Debug, Default)]
pub struct Canceller {
    state: Mutex<CancelState>,
}

impl Canceller {
    fn lock(&self) -> MutexGuard<'_, CancelState> {
        // A panic while holding this lock cannot leave the state inconsistent: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Aborts every wait in progress and makes later waits fail until [`reset`](Self::reset).
    pub fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        for (_, handle) in state.waiting.drain(..) {
            handle.abort();
        }
    }

    /// Allows waits again after [`cancel`](Self::cancel).
    pub fn reset(&self) {
        self.lock().cancelled = false;
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Runs `future` to completion on the calling thread (its I/O and timers are driven by [`RUNTIME`]),
    /// unless it is cancelled or `timeout` passes first.
    ///
    /// Must not be called from inside the runtime (an async task); GStreamer threads are fine.
    pub fn wait<F: Future>(
        &self,
        future: F,
        timeout: Option<Duration>,
    ) -> Result<F::Output, WaitError> {
        let (handle, registration) = AbortHandle::new_pair();
        let id = {
            let mut state = self.lock();
            if state.cancelled {
                return Err(WaitError::Cancelled);
            }
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push((id, handle));
            id
        };
        let abortable = Abortable::new(future, registration);
        let result = RUNTIME.block_on(async move {
            match timeout {
                Some(limit) => match tokio::time::timeout(limit, abortable).await {
                    Ok(Ok(output)) => Ok(output),
                    Ok(Err(_aborted)) => Err(WaitError::Cancelled),
                    Err(_elapsed) => Err(WaitError::TimedOut(limit)),
                },
                None => abortable.await.map_err(|_aborted| WaitError::Cancelled),
            }
        });
        self.lock().waiting.retain(|(other, _)| *other != id);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn cancel_ends_a_wait_on_a_never_ready_future_at_once() {
        let canceller = Arc::new(Canceller::default());
        let waiter = {
            let canceller = canceller.clone();
            std::thread::spawn(move || {
                let result = canceller.wait(std::future::pending::<()>(), None);
                (result, Instant::now())
            })
        };
        // Let the waiter get into the wait before cancelling.
        while canceller.lock().waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let cancelled_at = Instant::now();
        canceller.cancel();
        let (result, returned_at) = waiter.join().unwrap();
        assert_eq!(result, Err(WaitError::Cancelled));
        let latency = returned_at.duration_since(cancelled_at);
        assert!(
            // Never ready: any return proves the cancel; the bound only keeps a loaded machine from failing it.
            latency < Duration::from_secs(2),
            "wait returned {latency:?} after cancel"
        );
    }

    #[test]
    fn cancel_ends_all_concurrent_waits() {
        let canceller = Arc::new(Canceller::default());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let canceller = canceller.clone();
                std::thread::spawn(move || canceller.wait(std::future::pending::<()>(), None))
            })
            .collect();
        while canceller.lock().waiting.len() < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        canceller.cancel();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Err(WaitError::Cancelled));
        }
        assert!(canceller.lock().waiting.is_empty());
    }

    #[test]
    fn a_cancelled_canceller_refuses_waits_until_reset() {
        let canceller = Canceller::default();
        canceller.cancel();
        assert!(canceller.is_cancelled());
        assert_eq!(canceller.wait(async { 7 }, None), Err(WaitError::Cancelled));
        canceller.reset();
        assert!(!canceller.is_cancelled());
        assert_eq!(canceller.wait(async { 7 }, None), Ok(7));
    }

    #[test]
    fn timeout_ends_the_wait_with_timed_out() {
        let canceller = Canceller::default();
        let limit = Duration::from_millis(20);
        let started = Instant::now();
        let result = canceller.wait(std::future::pending::<()>(), Some(limit));
        assert_eq!(result, Err(WaitError::TimedOut(limit)));
        assert!(started.elapsed() >= limit);
        assert!(canceller.lock().waiting.is_empty());
    }

    #[test]
    fn a_wait_drives_runtime_io_and_timers() {
        let canceller = Canceller::default();
        let value = canceller.wait(
            async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
                tokio::net::TcpStream::connect(addr).await.unwrap();
                accept.await.unwrap().unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                42
            },
            Some(Duration::from_secs(5)),
        );
        assert_eq!(value, Ok(42));
    }
}
