//! `get_transaction`: one of the merchant's payments, by id.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{blocking, to_value, transaction_id_schema, Db};
use crate::domain::payments::error::PaymentsError;
use crate::tools::{str_arg, Tool, ToolContext, ToolError};

/// Reads one payment of the session's merchant. Another merchant's payment is `not_found`,
/// exactly like a missing one.
pub struct GetTransaction {
    db: Db,
    parameters: Value,
}

impl GetTransaction {
    /// The tool over `db`.
    pub fn new(db: Db) -> Self {
        GetTransaction {
            db,
            parameters: json!({
                "type": "object",
                "properties": {
                    "transaction_id": transaction_id_schema(
                        "The payment id, e.g. pay_ABC123 (\"pay_\" followed by 6 to 32 letters or digits)."
                    ),
                },
                "required": ["transaction_id"],
                "additionalProperties": false,
            }),
        }
    }
}

#[async_trait]
impl Tool for GetTransaction {
    fn name(&self) -> &str {
        "get_transaction"
    }

    fn description(&self) -> &str {
        "Look up one payment of the current merchant by its payment id (pay_...). Returns the \
         customer name, amount and currency (amounts are whole rupees: 4999 means INR 4,999), \
         status (created, authorized, captured, failed, refunded, partially_refunded), payment \
         method (upi, card, netbanking, wallet), error_code for failed payments, created_at \
         (UTC), settlement_id and settled_at (null while the payment is not settled yet), \
         refunded_amount, refundable_amount (what can still be refunded) and the refunds \
         issued through this assistant. Use it before answering anything about a specific \
         payment and before any refund. Returns a not_found error when the merchant has no \
         payment with that id."
    }

    fn parameters(&self) -> &Value {
        &self.parameters
    }

    fn read_only(&self) -> bool {
        true
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "merchant_id": {"type": "string"},
                "amount": {"type": "integer"},
                "currency": {"type": "string"},
                "status": {"type": "string"},
                "method": {"type": "string"},
                "refunds": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["id", "status", "refunds"],
        }))
    }

    fn progress(&self, args: &Value) -> String {
        match args.get("transaction_id").and_then(Value::as_str) {
            Some(id) => format!("Looking up transaction {}", crate::tools::sanitize_id(id)),
            None => "Looking up a transaction".into(),
        }
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let id = str_arg(&args, "transaction_id")?.to_owned();
        let db = self.db.clone();
        let merchant = ctx.merchant.clone();
        let (txn, refunds) = blocking(move || {
            let txn = db
                .transaction(&merchant, &id)?
                .ok_or_else(|| PaymentsError::NotFound {
                    what: "transaction",
                    id: id.clone(),
                })?;
            let refunds = db.refunds_for_transaction(&merchant, &id)?;
            Ok((txn, refunds))
        })
        .await?;
        let mut out = to_value(&txn)?;
        out["refunds"] = Value::Array(
            refunds
                .iter()
                .map(|r| {
                    json!({
                        "refund_id": r.id,
                        "amount": r.amount,
                        "status": r.status,
                        "reason": r.reason,
                        "created_at": r.created_at,
                    })
                })
                .collect(),
        );
        Ok(out)
    }
}
