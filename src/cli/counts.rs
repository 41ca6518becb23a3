//! Bounds on every count a user passes on the command line, so that a typo like `--threads
//! 10000` is a clear clap error instead of a slow or crashing run.

use clap::builder::RangedU64ValueParser;

/// A parser for a `usize` flag accepting `lo..=hi`; clap's message names the range.
pub fn bounded(lo: usize, hi: usize) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(lo as u64..=hi as u64)
}

/// How many embedder threads per CPU `--threads` may ask for at most.
pub const THREADS_PER_CPU: usize = 2;

/// The CPUs this process may use.
fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `--threads` (and `MEMEX_THREADS`): 1 to [`THREADS_PER_CPU`] × the CPU count.
pub(crate) fn threads(raw: &str) -> Result<usize, String> {
    let cpus = cpus();
    let max = cpus * THREADS_PER_CPU;
    let n: usize = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a whole number of threads"))?;
    if n == 0 || n > max {
        return Err(format!(
            "{n} is out of range: 1 to {max} ({THREADS_PER_CPU} per CPU, {cpus} CPU(s) here)"
        ));
    }
    Ok(n)
}
