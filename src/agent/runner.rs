//! Execution tokens: who is executing something right now (a plan, an approved action), so
//! that a second process (or a second task in this one) can tell a live holder from one that
//! crashed and may be taken over.
//!
//! A token is `PID:UUID`. It is *alive* while its [`RunnerToken`] exists in this process, or —
//! for another process — while that process id exists (`kill(pid, 0)` on Unix; elsewhere a
//! foreign holder is presumed gone).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

fn active() -> &'static Mutex<HashSet<String>> {
    static ACTIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    ACTIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A live execution token of this process; dropping it (even by cancellation) ends it.
#[derive(Debug)]
pub struct RunnerToken(String);

impl RunnerToken {
    /// A new live token.
    pub fn new() -> Self {
        let token = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        if let Ok(mut a) = active().lock() {
            a.insert(token.clone());
        }
        RunnerToken(token)
    }

    /// The token text stored beside what it holds.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunnerToken {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunnerToken {
    fn drop(&mut self) {
        if let Ok(mut a) = active().lock() {
            a.remove(&self.0);
        }
    }
}

/// Whether the holder `PID:TOKEN` may still be running.
pub fn alive(holder: &str) -> bool {
    match holder.split(':').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) if pid == std::process::id() => {
            active().lock().map(|a| a.contains(holder)).unwrap_or(false)
        }
        Some(pid) => process_exists(pid),
        None => false,
    }
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_while_held_and_dead_processes_are_dead() {
        let t = RunnerToken::new();
        let text = t.as_str().to_string();
        assert!(alive(&text));
        drop(t);
        assert!(!alive(&text));
        // PID 1 exists on every Unix system; a huge PID does not.
        #[cfg(unix)]
        assert!(alive("1:x"));
        assert!(!alive("4000000000:x"));
        assert!(!alive("garbage"));
    }
}
