//! The operator binary: parses flags, sets up logging and runs the operator until signalled.

use std::process::ExitCode;

use clap::Parser;
use jit_operator::{cli::Args, operator, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    // Test builds only: read crash points from FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    match operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %telemetry::error_chain(&error), hint = error.hint(), "operator stopped");
            ExitCode::FAILURE
        }
    }
}
