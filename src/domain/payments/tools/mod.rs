//! The five payments tools the agent can call. Each holds what it needs (the database or the
//! knowledge base), declares its schema once, and runs blocking work on tokio's blocking pool.

mod create_ticket;
mod get_merchant_account;
mod get_transaction;
mod initiate_refund;
mod search_knowledge_base;

use std::sync::Arc;

use serde_json::{json, Value};

use super::error::PaymentsError;
use super::model::TRANSACTION_ID_PATTERN;
use crate::tools::ToolError;

pub use create_ticket::CreateSupportTicket;
pub use get_merchant_account::GetMerchantAccount;
pub use get_transaction::GetTransaction;
pub use initiate_refund::InitiateRefund;
pub use search_knowledge_base::SearchKnowledgeBase;

/// The schema of a `transaction_id` argument.
fn transaction_id_schema(description: &str) -> Value {
    json!({
        "type": "string",
        "description": description,
        "pattern": TRANSACTION_ID_PATTERN,
    })
}

/// Runs blocking `f` on the blocking pool, mapping both its error and a failed task.
async fn blocking<T, F>(f: F) -> Result<T, ToolError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, PaymentsError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ToolError::from),
        Err(e) => Err(ToolError::from(PaymentsError::Task(e))),
    }
}

/// Serialises a result record, which cannot fail for the plain structs of this module.
fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError::Internal(format!("cannot encode result: {e}")))
}

/// Shared handle type of the database, for the tools' constructors.
pub(crate) type Db = Arc<super::PaymentsDb>;
