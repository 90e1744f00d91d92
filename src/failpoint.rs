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
