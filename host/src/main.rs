use std::process::ExitCode;

fn main() -> ExitCode {
    secrets_webhook::cli::main()
}
