//! Test crash points: with the `failpoints` feature and the `FAILPOINTS` environment variable
//! (see the `fail` crate), the process aborts at a named point, as a kill would; without the
//! feature they compile to nothing.

/// Aborts the process here when the failpoint `name` fires.
pub(crate) fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        if fail::eval(name, |_| ()).is_some() {
            tracing::error!(failpoint = %name, "failpoint: crashing");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Waits here as many milliseconds as the failpoint `name` returns (`name=return(3000)`), as
/// a slow network or API server would; without the feature it does nothing.
pub(crate) async fn delay_point(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let delay = fail::eval(name, |argument| {
            argument.and_then(|millis| millis.parse::<u64>().ok())
        });
        if let Some(Some(millis)) = delay {
            tracing::warn!(failpoint = %name, millis, "failpoint: delaying");
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
