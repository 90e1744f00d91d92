//! Logging set-up: `RUST_LOG`-style filtering, text or JSON lines on stdout.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::LogFormat;

/// The filter used when `RUST_LOG` is unset: our own info, only warnings from libraries.
const DEFAULT_FILTER: &str = "info,kube=warn,tower=warn,hyper=warn";

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .init(),
    }
}

/// An error and all its sources on one line, `outer: inner: innermost`, for logs, conditions
/// and Events. An API server refusal ends the chain with just its message, not the whole
/// Status it came in.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        if !text.is_empty() {
            text.push_str(": ");
        }
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            text.push_str(&status.message);
            break;
        }
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

/// Cuts text to at most `limit` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let marker = "…";
    let mut end = limit.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_the_limit_and_characters() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn api_refusals_end_the_chain_with_their_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to revoke")]
        struct Outer(#[source] kube::Error);
        let status = kube::core::Status::failure("rolebindings is forbidden", "Forbidden");
        let error = Outer(kube::Error::Api(Box::new(status)));
        assert_eq!(
            error_chain(&error),
            "failed to revoke: rolebindings is forbidden"
        );
    }
}
