//! The `memex` command-line tool: a thin layer over the library.

mod cli;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

fn main() -> std::process::ExitCode {
    // A closed stdout (`memex … | head -1`) ends the process quietly, in one place for every
    // command: see `cli::pipe`.
    cli::pipe::install_quiet_hook();
    match catch_unwind(AssertUnwindSafe(cli::main)) {
        Ok(code) => code,
        Err(payload) if cli::pipe::is_broken_pipe_panic(payload.as_ref()) => cli::pipe::exit_code(),
        Err(payload) => resume_unwind(payload),
    }
}
