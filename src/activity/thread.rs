//! The thread session activity runs on: a runtime of its own, at a lower CPU priority than
//! the lifecycle, so that reading a flood of audit events and writing summaries never holds a
//! worker a grant or a revoke waits for, and the kernel runs those first when the CPU is short.

use tokio::sync::oneshot;
use tracing::debug;

/// How much lower than the operator's other threads. A nice-10 thread gets about a tenth of
/// the CPU a nice-0 one gets while both want it, and all that is idle otherwise: activity is
/// recorded as fast as ever on a machine with room, and waits (in the API server's own batch
/// buffer) only while grants and revokes need the CPU.
const NICENESS: i32 = 10;

/// Why the thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No runtime or no thread.
    #[error("failed to start the session activity thread")]
    Spawn(#[source] std::io::Error),
}

/// Runs what `work` makes on a thread of its own; the receiver completes when it is done.
pub(crate) fn spawn<Work, Done>(work: Work) -> Result<oneshot::Receiver<()>, Error>
where
    Work: FnOnce() -> Done + Send + 'static,
    Done: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("jit-activity-io")
        .build()
        .map_err(Error::Spawn)?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("jit-activity".to_owned())
        .spawn(move || {
            lower_priority();
            runtime.block_on(work());
            let _ = done.send(());
        })
        .map_err(Error::Spawn)?;
    Ok(finished)
}

/// Lowers the calling thread's priority (Linux: `setpriority` on a thread ID applies to that
/// thread alone). Raising one's own niceness needs no privilege; if it fails all the same, the
/// thread runs at the usual priority, as before.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICENESS)
    {
        debug!(%error, "the session activity thread keeps the usual CPU priority");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// What runs there: a runtime (timers, tasks, blocking work), on a thread that yields to
    /// the rest of the operator.
    #[tokio::test]
    async fn work_runs_to_its_end_on_a_thread_of_lower_priority() {
        let (seen, told) = oneshot::channel();
        let finished = spawn(move || async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let blocking = tokio::task::spawn_blocking(|| 2 + 2).await.unwrap();
            let name = std::thread::current().name().map(str::to_owned);
            #[cfg(target_os = "linux")]
            let niceness =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            #[cfg(not(target_os = "linux"))]
            let niceness = NICENESS;
            let _ = seen.send((blocking, name, niceness));
        })
        .unwrap();
        finished.await.unwrap();
        let (blocking, name, niceness) = told.await.unwrap();
        assert_eq!(blocking, 4);
        assert_eq!(name.as_deref(), Some("jit-activity"));
        assert!(niceness >= NICENESS, "niceness {niceness}");
    }
}
