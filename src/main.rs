//! The `wardgate` binary: parse the command line and hand over to [`wardgate::cli`].

fn main() -> std::process::ExitCode {
    wardgate::cli::main()
}
