//! Exiting quietly when the reader of our output goes away (`memex search … | head -1`), as Unix
//! tools do: a write error `EPIPE` — whether returned to a command as an error or raised as the
//! panic of `println!` — ends the process with status 141 (128 + SIGPIPE) and no message.
//!
//! `SIGPIPE` itself stays ignored (Rust's default): restoring it would also let a peer closing
//! a socket kill the process in the middle of an HTTP or Redis call.

use std::any::Any;
use std::process::ExitCode;

/// Exit status after a broken pipe (what a shell reports for a process killed by SIGPIPE).
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// The status to exit with after a broken pipe.
pub fn exit_code() -> ExitCode {
    ExitCode::from(EXIT_BROKEN_PIPE)
}

/// Whether `err` (or any error in its chain) is a broken pipe.
pub fn is_broken_pipe_error(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}

/// Whether a panic payload is `println!`'s "failed printing to stdout: Broken pipe".
pub fn is_broken_pipe_panic(payload: &(dyn Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.starts_with("failed printing to std") && text.contains("Broken pipe")
}

/// Installs a panic hook that stays silent for a broken-pipe panic and otherwise reports as
/// the default hook does.
pub fn install_quiet_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe_panic(info.payload()) {
            default(info);
        }
    }));
}
