//! Short synchronous store calls (a SQLite statement, a Redis round trip) from async code,
//! without holding an async worker while they block.
//!
//! On a multi-thread runtime the call runs in place under [`tokio::task::block_in_place`]: the
//! worker's other tasks move to another thread while this one blocks, and the call itself starts
//! at once. Anywhere else (a current-thread runtime, as in `#[tokio::test]`) it goes to the
//! blocking pool with [`tokio::task::spawn_blocking`].
//!
//! Why not always `spawn_blocking`: a plan makes about 40 store calls of tens of microseconds
//! each, and a blocking-pool round trip (two thread wake-ups, ≈ 40 µs on the 2-core benchmark
//! machine) for each one tripled the planner's overhead (BENCHMARKS.md §7). A panic inside `f`
//! unwinds into the caller on the in-place path, as it would in synchronous code.

/// Runs `f` without holding an async worker; see the module documentation.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_in_place_on_a_multi_thread_runtime() {
        let caller = std::thread::current().id();
        let ran_on = super::blocking(move || std::thread::current().id())
            .await
            .expect("runs");
        assert_eq!(ran_on, caller);
    }

    #[tokio::test]
    async fn goes_to_the_blocking_pool_on_a_current_thread_runtime() {
        let caller = std::thread::current().id();
        let ran_on = super::blocking(move || std::thread::current().id())
            .await
            .expect("runs");
        assert_ne!(ran_on, caller);
    }
}
