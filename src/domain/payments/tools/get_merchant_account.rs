//! `get_merchant_account`: the session merchant's account, balances and recent settlements.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{blocking, to_value, Db};
use crate::domain::payments::error::PaymentsError;
use crate::tools::{Tool, ToolContext, ToolError};

/// Reads the account of the session's merchant. Its only argument, an optional `merchant_id`,
/// must name that same merchant: any other id is `not_found`, exactly like an unknown one, so
/// the tool cannot be pointed at another merchant.
pub struct GetMerchantAccount {
    db: Db,
    parameters: Value,
}

impl GetMerchantAccount {
    /// The tool over `db`.
    pub fn new(db: Db) -> Self {
        GetMerchantAccount {
            db,
            parameters: json!({
                "type": "object",
                "properties": {
                    "merchant_id": {
                        "type": "string",
                        "description": "Optional: the merchant id (e.g. MID001). It must be this conversation's merchant; leave it out to read that merchant.",
                        "minLength": 1,
                        "maxLength": 64,
                    },
                },
                "additionalProperties": false,
            }),
        }
    }
}

#[async_trait]
impl Tool for GetMerchantAccount {
    fn name(&self) -> &str {
        "get_merchant_account"
    }

    fn description(&self) -> &str {
        "Get the current merchant's account: business name, account status (active, \
         under_review, suspended, activated_kyc_pending), kyc_status, masked settlement bank \
         account, settlement_cycle (e.g. T+2), settlement_hold (null, or \"kyc\"/\"risk\" when \
         settlements are on hold), balance (collected and not yet settled, after refunds), \
         pending_settlement (part of the balance due in upcoming settlements), \
         settled_this_month, and the five most recent settlements (settlement_id, settled_at, \
         amount, payment_count). Amounts are whole rupees (INR). Use it for questions about \
         settlements, holds, KYC or the account's state. It always reads the merchant of this \
         conversation: merchant_id is optional and any other merchant's id is not_found."
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
                "merchant_id": {"type": "string"},
                "status": {"type": "string"},
                "kyc_status": {"type": "string"},
                "settlement_cycle": {"type": "string"},
                "balance": {"type": "integer"},
                "recent_settlements": {"type": "array", "items": {"type": "object"}},
            },
        }))
    }

    fn progress(&self, _args: &Value) -> String {
        "Checking the merchant account".into()
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        if let Some(asked) = args.get("merchant_id").and_then(Value::as_str) {
            if asked != ctx.merchant.as_str() {
                // Another merchant's account is reported exactly like a missing one.
                return Err(ToolError::NotFound(format!(
                    "no merchant account {}",
                    crate::tools::sanitize_id(asked)
                )));
            }
        }
        let db = self.db.clone();
        let merchant = ctx.merchant.clone();
        let account = blocking(move || {
            db.merchant_account(&merchant)?
                .ok_or_else(|| PaymentsError::NotFound {
                    what: "merchant account",
                    id: merchant.to_string(),
                })
        })
        .await?;
        to_value(&account)
    }
}
