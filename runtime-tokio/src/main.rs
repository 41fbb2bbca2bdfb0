//! The `roost` broker binary on tokio.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "roost: the broker cannot run yet: the tokio runtime is not built (see the standalone-broker issue)"
    );
    ExitCode::FAILURE
}
