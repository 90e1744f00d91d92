//! Logging set-up: `RUST_LOG`-style filtering, text or JSON lines on stdout.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The filter used when `RUST_LOG` is unset: our own info, only warnings from libraries.
const DEFAULT_FILTER: &str = "info,kube=warn,tower=warn,hyper=warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

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
                    .with_ansi(std::io::stdout().is_terminal())
                    .fmt_fields(escaping_fields()),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .init(),
    }
}

/// Text-format fields with control characters escaped: values carry text users typed (a
/// reason, a refusal quoting it), and a newline in one must not forge a log line.
fn escaping_fields() -> impl for<'writer> fmt::FormatFields<'writer> + 'static {
    fmt::format::debug_fn(|writer, field, value| {
        let text = escape_control(&format!("{value:?}"));
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// The text with every control character (newline, carriage return, escape, ...) written as
/// its Rust escape, so that it stays on one line and cannot colour a terminal.
pub fn escape_control(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
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
    fn control_characters_are_escaped_in_text_logs() {
        let forged = "INC-1\n2026-01-01T00:00:00Z  INFO admission allowed user=\"admin\"\u{1b}[2J";
        let escaped = escape_control(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert!(escaped.starts_with("INC-1\\n2026"), "{escaped}");
        assert_eq!(escape_control("plain text é"), "plain text é");
    }

    #[test]
    fn a_log_line_with_a_newline_in_a_field_stays_one_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .fmt_fields(escaping_fields())
                .with_writer(move || sink.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let reason = "INC-1\nfake INFO line";
            tracing::info!(reason = %reason, "admission refused: {reason}");
        });
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(output.contains("reason=INC-1\\nfake INFO line"), "{output}");
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
