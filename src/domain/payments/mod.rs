//! The payments demo domain: a merchant-support desk for a payment gateway.
//!
//! * [`PaymentsDb`] — merchants, payments, settlements, refunds and support tickets in one
//!   SQLite file (`payments.db` in the data directory), loaded from `data/payments/seed.json`;
//! * five [`Tool`]s over it: [`GetTransaction`], [`GetMerchantAccount`],
//!   [`SearchKnowledgeBase`] (through the [`KnowledgeSearch`] seam), [`CreateSupportTicket`]
//!   and the irreversible [`InitiateRefund`];
//! * [`payments_tools`] / [`payments_registry`] to hand them to an agent.
//!
//! Every tool is scoped to [`ToolContext::merchant`](crate::tools::ToolContext): it reads and
//! writes only that merchant's rows, and reports another merchant's payment as `not_found`,
//! exactly like one that does not exist. Amounts are whole rupees (`i64`).
//!
//! This module knows nothing about approvals, the LLM or the agent loop: `initiate_refund`
//! only insists on an idempotency key (the approval id) and refunds at most once per key.

mod agent;
mod db;
mod error;
mod knowledge;
mod model;
mod seed;
mod tools;

use std::sync::Arc;

use crate::tools::{RegistryError, Tool, ToolRegistry};

pub use agent::{KbSearch, PaymentsDomain};
pub use db::{PaymentsDb, BUSY_TIMEOUT, MAX_IDEMPOTENCY_KEY_LEN, RECENT_SETTLEMENTS};
pub use error::PaymentsError;
pub use knowledge::{KnowledgeError, KnowledgeHit, KnowledgeSearch};
pub use model::{
    MerchantAccount, NewTicket, Refund, RefundOutcome, RefundRequest, SeedReport, Settlement,
    Ticket, TicketOutcome, TicketPriority, TicketType, Transaction, UnknownValue,
    REFUNDABLE_STATUSES, TRANSACTION_ID_PATTERN, TRANSACTION_STATUSES,
};
pub use seed::SeedError;
pub use tools::{
    CreateSupportTicket, GetMerchantAccount, GetTransaction, InitiateRefund, SearchKnowledgeBase,
};

/// The five payments tools, in the order the model sees them.
pub fn payments_tools(db: Arc<PaymentsDb>, kb: Arc<dyn KnowledgeSearch>) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(GetTransaction::new(Arc::clone(&db))),
        Arc::new(GetMerchantAccount::new(Arc::clone(&db))),
        Arc::new(SearchKnowledgeBase::new(kb)),
        Arc::new(CreateSupportTicket::new(Arc::clone(&db))),
        Arc::new(InitiateRefund::new(db)),
    ]
}

/// A [`ToolRegistry`] holding [`payments_tools`].
pub fn payments_registry(
    db: Arc<PaymentsDb>,
    kb: Arc<dyn KnowledgeSearch>,
) -> Result<ToolRegistry, RegistryError> {
    ToolRegistry::with_tools(payments_tools(db, kb))
}
