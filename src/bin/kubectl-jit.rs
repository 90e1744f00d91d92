//! The `kubectl jit` plugin binary: everything is in the library's `kubectl_jit` module.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    jit_operator::kubectl_jit::main().await
}
