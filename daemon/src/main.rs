//! The `gxd` binary: see `gxd --help`. Everything lives in the library (`gxd::commands`).

fn main() -> std::process::ExitCode {
    gxd::commands::main()
}
