//! Running totals of token usage, shared by every call of a client.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Usage;

/// Calls made and tokens used, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Completed calls (a streamed call counts when its `Done` event is read).
    pub calls: u64,
    /// Tokens used by those calls.
    pub usage: Usage,
}

/// Thread-safe accumulator of [`Usage`].
#[derive(Debug, Default)]
pub struct UsageMeter {
    calls: AtomicU64,
    prompt: AtomicU64,
    completion: AtomicU64,
    total: AtomicU64,
}

impl UsageMeter {
    /// Records one completed call.
    pub fn record(&self, usage: &Usage) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.prompt
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        self.total.fetch_add(usage.total_tokens, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn totals(&self) -> UsageTotals {
        UsageTotals {
            calls: self.calls.load(Ordering::Relaxed),
            usage: Usage {
                prompt_tokens: self.prompt.load(Ordering::Relaxed),
                completion_tokens: self.completion.load(Ordering::Relaxed),
                total_tokens: self.total.load(Ordering::Relaxed),
            },
        }
    }
}
