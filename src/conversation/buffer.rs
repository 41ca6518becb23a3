//! [`ConversationBuffer`]: system prompt + rolling summary + recent turns, within a token
//! budget, persisted per session.

use std::sync::Arc;

use crate::llm::{ChatModel, Message};

use super::store::{validate_session_id, ConversationStore};
use super::summarise::{summarise, SUMMARY_HEADING};
use super::tokens::{EstimatedTokens, TokenCounter};
use super::turns::turn_ranges;
use super::ConversationError;

/// Default token budget of the whole prompt the buffer builds.
pub const DEFAULT_TOKEN_BUDGET: usize = 3_000;

/// How the buffer behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationConfig {
    /// The agent's instructions, first in every prompt. Not persisted: it comes from the code
    /// (or configuration) that opens the buffer, so a new version takes effect on resume.
    pub system_prompt: String,
    /// Budget, in tokens, for everything [`ConversationBuffer::messages`] returns. Going over it
    /// triggers a compression; the last [`keep_recent_turns`](Self::keep_recent_turns) turns are
    /// never compressed, so the prompt can exceed the budget when they alone do.
    pub token_budget: usize,
    /// Turns (a user message and everything up to the next) always kept verbatim; at least 1.
    pub keep_recent_turns: usize,
    /// A compression folds the oldest turns until the prompt, without the summary's growth,
    /// fits in `compress_target × token_budget` (so compressions do not happen every turn).
    pub compress_target: f64,
    /// `max_tokens` of the summarisation request.
    pub summary_max_tokens: u32,
    /// Re-attach identifiers and amounts the summariser dropped (see
    /// [`keep_identifiers`](super::keep_identifiers)).
    pub preserve_identifiers: bool,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            system_prompt: String::new(),
            token_budget: DEFAULT_TOKEN_BUDGET,
            keep_recent_turns: 2,
            compress_target: 0.6,
            summary_max_tokens: 600,
            preserve_identifiers: true,
        }
    }
}

impl ConversationConfig {
    /// The default configuration with this system prompt.
    pub fn with_system_prompt(prompt: impl Into<String>) -> Self {
        ConversationConfig {
            system_prompt: prompt.into(),
            ..Default::default()
        }
    }
}

/// What an append did about compression.
#[derive(Debug, Clone, PartialEq)]
pub enum Compression {
    /// The prompt is within the budget.
    NotNeeded,
    /// Over the budget, but every turn is among the last `keep_recent_turns`.
    NothingToCompress,
    /// The oldest turns were folded into the summary and removed.
    Compressed {
        /// Turns folded.
        turns: usize,
        /// Messages folded.
        messages: usize,
        /// Prompt tokens before.
        tokens_before: usize,
        /// Prompt tokens after.
        tokens_after: usize,
    },
    /// Summarisation (or saving its result) failed: the raw turns are kept and compression is
    /// tried again at the next append.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The result of [`ConversationBuffer::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct AppendReport {
    /// Sequence number the message was stored under.
    pub seq: u64,
    /// What happened about compression.
    pub compression: Compression,
    /// Prompt tokens after the append (and compression, if any).
    pub tokens: usize,
}

/// The conversation memory of one session.
///
/// It holds the system prompt, a rolling summary of older turns and the recent turns verbatim.
/// Every appended message is persisted before it counts; when the prompt goes over the token
/// budget, whole oldest turns (never splitting an assistant `tool_calls` message from its tool
/// results, never touching the last `keep_recent_turns`) are folded into the summary by the
/// summariser model, and the new summary, its watermark and the deletion of the folded messages
/// are committed in one transaction. If summarisation fails or returns nothing usable, the raw
/// turns stay and the next append tries again. Opening the same session again resumes exactly
/// where the store is.
pub struct ConversationBuffer {
    store: Arc<dyn ConversationStore>,
    summariser: Arc<dyn ChatModel>,
    counter: Arc<dyn TokenCounter>,
    session: String,
    config: ConversationConfig,
    summary: String,
    watermark: u64,
    compressions: u64,
    seqs: Vec<u64>,
    messages: Vec<Message>,
    tokens: Vec<usize>,
    next_seq: u64,
    last_error: Option<String>,
}

impl std::fmt::Debug for ConversationBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationBuffer")
            .field("session", &self.session)
            .field("messages", &self.messages.len())
            .field("summary_chars", &self.summary.len())
            .field("watermark", &self.watermark)
            .field("compressions", &self.compressions)
            .finish()
    }
}

impl ConversationBuffer {
    /// Opens (or resumes) `session` from `store`; `summariser` is the model that writes the
    /// rolling summary. Tokens are counted with [`EstimatedTokens`] unless
    /// [`ConversationBuffer::with_token_counter`] says otherwise.
    pub async fn open(
        store: Arc<dyn ConversationStore>,
        summariser: Arc<dyn ChatModel>,
        session: impl Into<String>,
        config: ConversationConfig,
    ) -> Result<Self, ConversationError> {
        let session = session.into();
        validate_session_id(&session)?;
        let mut config = config;
        config.keep_recent_turns = config.keep_recent_turns.max(1);
        let mut buffer = ConversationBuffer {
            store,
            summariser,
            counter: Arc::new(EstimatedTokens),
            session,
            config,
            summary: String::new(),
            watermark: 0,
            compressions: 0,
            seqs: Vec::new(),
            messages: Vec::new(),
            tokens: Vec::new(),
            next_seq: 1,
            last_error: None,
        };
        buffer.reload().await?;
        Ok(buffer)
    }

    /// Counts tokens with `counter` (e.g. a real tokenizer) instead of the estimate.
    pub fn with_token_counter(mut self, counter: Arc<dyn TokenCounter>) -> Self {
        self.tokens = self.messages.iter().map(|m| counter.message(m)).collect();
        self.counter = counter;
        self
    }

    /// Re-reads the session from the store, dropping the in-memory state.
    pub async fn reload(&mut self) -> Result<(), ConversationError> {
        let stored = self.store.load(&self.session).await?;
        self.summary = stored.summary;
        self.watermark = stored.watermark;
        self.compressions = stored.compressions;
        self.seqs = stored.messages.iter().map(|(s, _)| *s).collect();
        self.messages = stored.messages.into_iter().map(|(_, m)| m).collect();
        self.tokens = self
            .messages
            .iter()
            .map(|m| self.counter.message(m))
            .collect();
        self.next_seq = self.seqs.last().copied().unwrap_or(0).max(self.watermark) + 1;
        Ok(())
    }

    /// Adds `message` to the conversation: persists it, then compresses if the prompt is over
    /// the budget. An `Err` means the message could not be stored (and is not in the buffer);
    /// a failed compression is reported in the [`AppendReport`], not as an error.
    pub async fn append(&mut self, message: Message) -> Result<AppendReport, ConversationError> {
        let seq = self.next_seq;
        // Advance first: if this call is cancelled after the row is written, the next append
        // must not reuse the number.
        self.next_seq += 1;
        self.store.append(&self.session, seq, &message).await?;
        self.tokens.push(self.counter.message(&message));
        self.seqs.push(seq);
        self.messages.push(message);
        let compression = if self.token_count() > self.config.token_budget {
            self.compress().await
        } else {
            Compression::NotNeeded
        };
        Ok(AppendReport {
            seq,
            compression,
            tokens: self.token_count(),
        })
    }

    /// The messages for the next LLM request: one system message (the system prompt, then the
    /// summary under a heading when there is one), then the recent turns verbatim.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        out.extend(self.system_message());
        out.extend(self.messages.iter().cloned());
        out
    }

    /// Tokens of [`ConversationBuffer::messages`], as the configured counter counts them.
    pub fn token_count(&self) -> usize {
        self.header_tokens() + self.tokens.iter().sum::<usize>()
    }

    /// The rolling summary (empty before the first compression).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The messages kept verbatim, oldest first.
    pub fn recent(&self) -> &[Message] {
        &self.messages
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// Sequence number of the last message folded into the summary (0 before any).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Compressions this session went through (persisted).
    pub fn compressions(&self) -> u64 {
        self.compressions
    }

    /// Why the last compression failed, until one succeeds.
    pub fn last_compression_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ConversationConfig {
        &self.config
    }

    fn system_message(&self) -> Option<Message> {
        let prompt = self.config.system_prompt.trim_end();
        let summary = self.summary.trim();
        match (prompt.is_empty(), summary.is_empty()) {
            (true, true) => None,
            (false, true) => Some(Message::system(prompt)),
            (true, false) => Some(Message::system(format!("{SUMMARY_HEADING}\n{summary}"))),
            (false, false) => Some(Message::system(format!(
                "{prompt}\n\n{SUMMARY_HEADING}\n{summary}"
            ))),
        }
    }

    fn header_tokens(&self) -> usize {
        self.system_message()
            .map_or(0, |m| self.counter.message(&m))
    }

    /// How many leading messages to fold: whole turns, oldest first, never the last
    /// `keep_recent_turns`; `None` when no turn may be folded.
    fn plan(&self) -> Option<(usize, usize)> {
        let ranges = turn_ranges(&self.messages);
        let eligible = ranges.len().checked_sub(self.config.keep_recent_turns)?;
        if eligible == 0 {
            return None;
        }
        let header = self.header_tokens();
        let target = (self.config.token_budget as f64 * self.config.compress_target) as usize;
        let mut remaining: usize = self.tokens.iter().sum();
        let mut cut = 0;
        let mut turns = 0;
        for range in &ranges[..eligible] {
            remaining -= self.tokens[range.clone()].iter().sum::<usize>();
            cut = range.end;
            turns += 1;
            if header + remaining <= target {
                break;
            }
        }
        Some((cut, turns))
    }

    async fn compress(&mut self) -> Compression {
        let Some((cut, turns)) = self.plan() else {
            return Compression::NothingToCompress;
        };
        let tokens_before = self.token_count();
        let result = summarise(
            self.summariser.as_ref(),
            &self.summary,
            &self.messages[..cut],
            self.config.summary_max_tokens,
            self.config.preserve_identifiers,
        )
        .await;
        let new_summary = match result {
            Ok(s) => s,
            Err(reason) => return self.failed(reason),
        };
        let watermark = self.seqs[cut - 1];
        if let Err(e) = self
            .store
            .commit_summary(&self.session, &new_summary, watermark)
            .await
        {
            let conflict = matches!(e, ConversationError::Conflict { .. });
            let report = self.failed(format!("the new summary could not be saved: {e}"));
            if conflict {
                // Someone else moved the session on: adopt the stored state.
                if let Err(reload) = self.reload().await {
                    tracing::warn!(session = %self.session, error = %reload, "reload after a conflict failed");
                }
            }
            return report;
        }
        self.summary = new_summary;
        self.watermark = watermark;
        self.compressions += 1;
        self.seqs.drain(..cut);
        self.messages.drain(..cut);
        self.tokens.drain(..cut);
        self.last_error = None;
        let tokens_after = self.token_count();
        tracing::debug!(
            session = %self.session,
            turns,
            messages = cut,
            tokens_before,
            tokens_after,
            "conversation compressed"
        );
        Compression::Compressed {
            turns,
            messages: cut,
            tokens_before,
            tokens_after,
        }
    }

    fn failed(&mut self, reason: String) -> Compression {
        tracing::warn!(session = %self.session, %reason, "conversation compression failed; keeping the raw turns");
        self.last_error = Some(reason.clone());
        Compression::Failed { reason }
    }
}
