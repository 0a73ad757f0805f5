//! `meshlogic-operator`: see the crate documentation of `meshlogic_operator`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match meshlogic_operator::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Logging may not be set up yet (a bad setting stops start-up before it is).
            eprintln!("meshlogic-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}
