//! `initiate_refund`: refund one of the merchant's payments. Irreversible.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{blocking, transaction_id_schema, Db};
use crate::domain::payments::model::RefundRequest;
use crate::tools::{int_arg, sanitize_id, str_arg, Tool, ToolContext, ToolError};

/// Largest refund one call may ask for, in whole rupees (the schema's `maximum`).
pub const MAX_REFUND_AMOUNT: i64 = 10_000_000;

/// Refunds a payment of the session's merchant. Irreversible: it runs only with an
/// idempotency key (the approval id), and a key refunds at most once.
pub struct InitiateRefund {
    db: Db,
    parameters: Value,
}

impl InitiateRefund {
    /// The tool over `db`.
    pub fn new(db: Db) -> Self {
        InitiateRefund {
            db,
            parameters: json!({
                "type": "object",
                "properties": {
                    "transaction_id": transaction_id_schema("The payment to refund, e.g. pay_ABC123."),
                    "amount": {
                        "type": "integer",
                        "description": "Amount to refund in whole rupees (4999 means INR 4,999); at most the payment's refundable_amount.",
                        "minimum": 1,
                        "maximum": MAX_REFUND_AMOUNT,
                    },
                    "reason": {
                        "type": "string",
                        "description": "Why the merchant is refunding, e.g. \"item out of stock\" or \"duplicate payment\".",
                        "minLength": 3,
                        "maxLength": 500,
                    },
                },
                "required": ["transaction_id", "amount", "reason"],
                "additionalProperties": false,
            }),
        }
    }
}

#[async_trait]
impl Tool for InitiateRefund {
    fn name(&self) -> &str {
        "initiate_refund"
    }

    fn description(&self) -> &str {
        "Refund a captured or partially refunded payment of the current merchant to the \
         customer, in full or in part. IRREVERSIBLE: a refund cannot be cancelled once created, \
         so the call is not executed right away; it is shown to a human for approval and runs \
         only once they approve it. Only call it when the merchant has asked for the refund, \
         after checking the payment with get_transaction; the amount is in whole rupees and \
         must not exceed the payment's refundable_amount. Failed, authorized (uncaptured) and \
         fully refunded payments cannot be refunded. Returns the refund id (rfnd_...), the \
         amount, and the payment's new status, refunded_amount and refundable_amount."
    }

    fn parameters(&self) -> &Value {
        &self.parameters
    }

    fn irreversible(&self) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        false
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "refund_id": {"type": "string"},
                "transaction_id": {"type": "string"},
                "amount": {"type": "integer"},
                "currency": {"type": "string"},
                "status": {"type": "string"},
                "reason": {"type": "string"},
                "idempotent_replay": {"type": "boolean"},
            },
            "required": ["refund_id", "transaction_id", "amount", "status"],
        }))
    }

    fn progress(&self, args: &Value) -> String {
        match (
            args.get("transaction_id").and_then(Value::as_str),
            args.get("amount").and_then(Value::as_i64),
        ) {
            (Some(id), Some(amount)) => {
                format!("Refunding INR {amount} on payment {}", sanitize_id(id))
            }
            _ => "Initiating a refund".into(),
        }
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let Some(key) = ctx.idempotency_key.clone().filter(|k| !k.is_empty()) else {
            return Err(ToolError::Refused(
                "initiate_refund is irreversible and runs only after a human approves it; \
                 this call carried no approval, so nothing was refunded"
                    .into(),
            ));
        };
        let request = RefundRequest {
            transaction_id: str_arg(&args, "transaction_id")?.to_owned(),
            amount: int_arg(&args, "amount")?,
            reason: str_arg(&args, "reason")?.trim().to_owned(),
        };
        if request.amount < 1 || request.amount > MAX_REFUND_AMOUNT {
            return Err(ToolError::InvalidArgs(format!(
                "amount must be 1 to {MAX_REFUND_AMOUNT} rupees"
            )));
        }
        if request.reason.is_empty() {
            return Err(ToolError::InvalidArgs("reason must not be blank".into()));
        }
        let db = self.db.clone();
        let merchant = ctx.merchant.clone();
        let session = ctx.session_id.clone();
        let outcome = blocking(move || db.refund(&merchant, &session, &key, &request)).await?;
        let (r, t) = (&outcome.refund, &outcome.transaction);
        Ok(json!({
            "refund_id": r.id,
            "transaction_id": r.transaction_id,
            "amount": r.amount,
            "currency": r.currency,
            "status": r.status,
            "reason": r.reason,
            "created_at": r.created_at,
            "transaction_status": t.status,
            "refunded_amount": t.refunded_amount,
            "refundable_amount": t.refundable_amount,
            "idempotent_replay": outcome.replayed,
        }))
    }
}
