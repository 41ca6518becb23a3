//! `create_support_ticket`: raise a ticket for the session's merchant.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{blocking, to_value, transaction_id_schema, Db};
use crate::domain::payments::model::{NewTicket, TicketPriority, TicketType, UnknownValue};
use crate::tools::{str_arg, Tool, ToolContext, ToolError};

/// Creates a persisted support ticket (`tkt_...`) for the session's merchant. A write, but not
/// irreversible. With an idempotency key in the context, repeating the call returns the same
/// ticket.
pub struct CreateSupportTicket {
    db: Db,
    parameters: Value,
}

impl CreateSupportTicket {
    /// The tool over `db`.
    pub fn new(db: Db) -> Self {
        CreateSupportTicket {
            db,
            parameters: json!({
                "type": "object",
                "properties": {
                    "subject": {
                        "type": "string",
                        "description": "One-line summary, e.g. \"Settlement missing for pay_ABC123\".",
                        "minLength": 5,
                        "maxLength": 150,
                    },
                    "description": {
                        "type": "string",
                        "description": "What happened and what the merchant needs, with every relevant id (pay_, rfnd_, setl_), amount and date, and what was already checked.",
                        "minLength": 10,
                        "maxLength": 4000,
                    },
                    "priority": {
                        "type": "string",
                        "description": "urgent = P1 (all payments failing, checkout down, security incident); high = P2 (settlement delayed beyond its cycle, many payments failing for one method); medium = P3 (one payment, refund, dispute or KYC question); low = P4 (how-to, feature or document request).",
                        "enum": TicketPriority::names(),
                    },
                    "type": {
                        "type": "string",
                        "description": "The category of the issue.",
                        "enum": TicketType::names(),
                    },
                    "transaction_id": transaction_id_schema(
                        "The payment concerned, if the ticket is about one payment (optional)."
                    ),
                },
                "required": ["subject", "description", "priority", "type"],
                "additionalProperties": false,
            }),
        }
    }
}

#[async_trait]
impl Tool for CreateSupportTicket {
    fn name(&self) -> &str {
        "create_support_ticket"
    }

    fn description(&self) -> &str {
        "Raise a support ticket with the payment gateway's operations team for the current \
         merchant, when an issue needs human follow-up that you cannot resolve with the other \
         tools (a settlement missing beyond its cycle, a dispute, a stuck refund, a suspected \
         bug) or when the merchant asks for one. Put every relevant id, amount and date in the \
         description. Returns the ticket id (tkt_...), which you should give to the merchant. \
         Do not create a second ticket for the same issue in one conversation."
    }

    fn parameters(&self) -> &Value {
        &self.parameters
    }

    fn read_only(&self) -> bool {
        false
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "ticket_id": {"type": "string"},
                "subject": {"type": "string"},
                "priority": {"type": "string"},
                "status": {"type": "string"},
                "idempotent_replay": {"type": "boolean"},
            },
            "required": ["ticket_id"],
        }))
    }

    fn progress(&self, _args: &Value) -> String {
        "Creating a support ticket".into()
    }

    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let priority: TicketPriority = str_arg(&args, "priority")?
            .parse()
            .map_err(|e: UnknownValue| ToolError::InvalidArgs(e.to_string()))?;
        let ticket_type: TicketType = str_arg(&args, "type")?
            .parse()
            .map_err(|e: UnknownValue| ToolError::InvalidArgs(e.to_string()))?;
        let transaction_id = match args.get("transaction_id") {
            None | Some(Value::Null) => None,
            Some(_) => Some(str_arg(&args, "transaction_id")?.to_owned()),
        };
        let new = NewTicket {
            subject: str_arg(&args, "subject")?.trim().to_owned(),
            description: str_arg(&args, "description")?.trim().to_owned(),
            priority,
            ticket_type,
            transaction_id,
        };
        if new.subject.is_empty() || new.description.is_empty() {
            return Err(ToolError::InvalidArgs(
                "subject and description must not be blank".into(),
            ));
        }
        let db = self.db.clone();
        let ctx = ctx.clone();
        let outcome = blocking(move || {
            db.create_ticket(
                &ctx.merchant,
                &ctx.session_id,
                ctx.idempotency_key.as_deref(),
                &new,
            )
        })
        .await?;
        let mut out = json!({ "ticket_id": outcome.ticket.id });
        let ticket = to_value(&outcome.ticket)?;
        if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), ticket) {
            for (k, v) in fields {
                if k != "id" {
                    out.insert(k, v);
                }
            }
        }
        out["idempotent_replay"] = Value::Bool(outcome.replayed);
        Ok(out)
    }
}
