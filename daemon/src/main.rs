//! The `gxd` binary: see `gxd --help`. Everything lives in the library (`gxd::cli`).

fn main() -> std::process::ExitCode {
    gxd::cli::main()
}
