//! A thread of its own, with a current-thread runtime and a `LocalSet`, for `!Send` RPC work.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// A thread running one future on a `LocalSet`, told to stop when this is stopped or
/// dropped. `GatewayThread` and `TunnelThread` are built on it.
#[derive(Debug)]
pub struct LocalThread<T> {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<T>>>,
}

/// Why a [`LocalThread`] gave no result.
#[derive(Debug, thiserror::Error)]
pub enum LocalThreadError {
    /// Its runtime could not be built.
    #[error("the thread's runtime could not start: {0}")]
    Runtime(io::Error),
    /// It panicked.
    #[error("the thread panicked")]
    Panicked,
}

impl<T: Send + 'static> LocalThread<T> {
    /// Runs `run(stopped)` on a new thread called `name`; `stopped` resolves once the
    /// thread is asked to stop.
    pub fn spawn<F, Fut>(name: &str, run: F) -> io::Result<Self>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(tokio::task::LocalSet::new().block_on(&runtime, run(stopped)))
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Asks the thread to stop and waits for it. `Ok(None)`: it was joined before.
    pub fn stop_and_join(&mut self) -> Result<Option<T>, LocalThreadError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(()); // It may have ended on its own.
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(result))) => Ok(Some(result)),
            Some(Ok(Err(err))) => Err(LocalThreadError::Runtime(err)),
            Some(Err(_)) => Err(LocalThreadError::Panicked),
            None => Ok(None),
        }
    }
}

impl<T> Drop for LocalThread<T> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
