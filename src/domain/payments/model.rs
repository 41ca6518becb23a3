//! The records of the payments domain, as stored and as returned to the model. Amounts are
//! whole rupees (major INR units) as `i64`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The schema pattern of a payment id: `pay_` and 6 to 32 ASCII letters or digits.
pub const TRANSACTION_ID_PATTERN: &str = "^pay_[A-Za-z0-9]{6,32}$";

/// Payment statuses the database accepts.
pub const TRANSACTION_STATUSES: &[&str] = &[
    "created",
    "authorized",
    "captured",
    "failed",
    "refunded",
    "partially_refunded",
];

/// Statuses on which a refund can be created.
pub const REFUNDABLE_STATUSES: &[&str] = &["captured", "partially_refunded"];

/// A payment, as returned by `get_transaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Payment id (`pay_...`).
    pub id: String,
    /// Merchant the payment belongs to.
    pub merchant_id: String,
    /// The paying customer's name.
    pub customer_name: String,
    /// Amount paid, in whole rupees.
    pub amount: i64,
    /// ISO currency code (always `INR` in the demo data).
    pub currency: String,
    /// One of [`TRANSACTION_STATUSES`].
    pub status: String,
    /// `upi`, `card`, `netbanking` or `wallet`.
    pub method: String,
    /// Why the payment failed, for failed payments.
    pub error_code: Option<String>,
    /// When the payment was created (RFC 3339, UTC).
    pub created_at: String,
    /// The settlement (`setl_...`) that paid the amount out to the merchant, once settled.
    pub settlement_id: Option<String>,
    /// When that settlement was credited (RFC 3339, UTC).
    pub settled_at: Option<String>,
    /// Total refunded on the payment so far.
    pub refunded_amount: i64,
    /// What can still be refunded: `amount - refunded_amount` for captured or partially
    /// refunded payments, 0 otherwise.
    pub refundable_amount: i64,
}

impl Transaction {
    /// The refundable amount for a payment with these fields.
    pub fn refundable(status: &str, amount: i64, refunded_amount: i64) -> i64 {
        if REFUNDABLE_STATUSES.contains(&status) {
            (amount - refunded_amount).max(0)
        } else {
            0
        }
    }
}

/// One settlement (payout of collected payments to the merchant's bank account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Settlement id (`setl_...`).
    pub settlement_id: String,
    /// When it was credited (RFC 3339, UTC).
    pub settled_at: String,
    /// Gross amount of the payments it covered, after refunds at the time of settlement.
    pub amount: i64,
    /// Number of payments it covered.
    pub payment_count: i64,
}

/// A merchant's account, as returned by `get_merchant_account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantAccount {
    /// Merchant id.
    pub merchant_id: String,
    /// Contact person.
    pub name: String,
    /// Registered business name.
    pub business_name: String,
    /// Registered email.
    pub email: String,
    /// Account status (`active`, `under_review`, `suspended`, `activated_kyc_pending`).
    pub status: String,
    /// KYC status (`verified`, `pending`, `under_review`, `rekyc_pending`).
    pub kyc_status: String,
    /// Masked settlement bank account.
    pub settlement_account: String,
    /// Settlement cycle, e.g. `T+2`.
    pub settlement_cycle: String,
    /// `kyc` or `risk` when settlements are on hold, else `None`.
    pub settlement_hold: Option<String>,
    /// Currency of the amounts below.
    pub currency: String,
    /// Gross amount collected and not yet settled, after refunds.
    pub balance: i64,
    /// Part of the balance due in upcoming settlements.
    pub pending_settlement: i64,
    /// Gross amount settled this month, after refunds.
    pub settled_this_month: i64,
    /// The latest settlements, newest first.
    pub recent_settlements: Vec<Settlement>,
}

/// A refund created through `initiate_refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Refund id (`rfnd_...`).
    pub id: String,
    /// Merchant that issued it.
    pub merchant_id: String,
    /// The refunded payment.
    pub transaction_id: String,
    /// Amount refunded, in whole rupees.
    pub amount: i64,
    /// Currency of the amount.
    pub currency: String,
    /// Why the merchant refunded.
    pub reason: String,
    /// Refund status (`processed`).
    pub status: String,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// The agent session that created it.
    pub session_id: String,
    /// The key (approval id) that makes it happen at most once.
    pub idempotency_key: String,
}

/// Result of [`PaymentsDb::refund`](super::PaymentsDb::refund).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The refund (the earlier one when `replayed`).
    pub refund: Refund,
    /// The payment after the refund.
    pub transaction: Transaction,
    /// Whether the idempotency key had been used already, so nothing new was refunded.
    pub replayed: bool,
}

/// A refund request from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The payment to refund.
    pub transaction_id: String,
    /// Amount to refund, in whole rupees (at least 1).
    pub amount: i64,
    /// Why the merchant refunds.
    pub reason: String,
}

/// A string that is none of an enumeration's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be one of {}", .allowed.join(", "))]
pub struct UnknownValue {
    /// The enumeration (`TicketPriority`, …).
    pub kind: &'static str,
    /// Its values, in schema order.
    pub allowed: Vec<&'static str>,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name as used in schemas and storage.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The names of all values, in schema order.
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownValue {
                        kind: stringify!($name),
                        allowed: Self::names(),
                    })
            }
        }
    };
}

string_enum! {
    /// How urgent a support ticket is (urgent = P1, high = P2, medium = P3, low = P4).
    TicketPriority {
        /// P4: how-to questions, feature or document requests.
        Low = "low",
        /// P3: a single payment, refund, dispute or KYC question.
        Medium = "medium",
        /// P2: settlement delayed beyond its cycle, many payments failing for one method.
        High = "high",
        /// P1: all payments failing, checkout down, suspected security breach.
        Urgent = "urgent",
    }
}

string_enum! {
    /// What a support ticket is about.
    TicketType {
        /// A customer dispute or chargeback.
        Dispute = "dispute",
        /// A missing, delayed or mismatched settlement.
        Settlement = "settlement",
        /// A refund problem.
        Refund = "refund",
        /// Integration, API, webhook or checkout problems.
        Technical = "technical",
        /// KYC, activation, account status or limits.
        Account = "account",
        /// Anything else.
        Other = "other",
    }
}

/// A support ticket to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// One-line summary.
    pub subject: String,
    /// Full description.
    pub description: String,
    /// Priority.
    pub priority: TicketPriority,
    /// Category.
    pub ticket_type: TicketType,
    /// The payment concerned, if any (must belong to the merchant).
    pub transaction_id: Option<String>,
}

/// A stored support ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Ticket id (`tkt_...`).
    pub id: String,
    /// Merchant that raised it.
    pub merchant_id: String,
    /// One-line summary.
    pub subject: String,
    /// Full description.
    pub description: String,
    /// Priority.
    pub priority: TicketPriority,
    /// Category.
    #[serde(rename = "type")]
    pub ticket_type: TicketType,
    /// The payment concerned, if any.
    pub transaction_id: Option<String>,
    /// Ticket status (`open`).
    pub status: String,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// The agent session that created it.
    pub session_id: String,
}

/// Result of [`PaymentsDb::create_ticket`](super::PaymentsDb::create_ticket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketOutcome {
    /// The ticket (the earlier one when `replayed`).
    pub ticket: Ticket,
    /// Whether the idempotency key had been used already, so no new ticket was created.
    pub replayed: bool,
}

/// What [`PaymentsDb::seed_from_file`](super::PaymentsDb::seed_from_file) added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    /// Merchants inserted (existing ones are left untouched).
    pub merchants_added: usize,
    /// Payments inserted.
    pub transactions_added: usize,
    /// Settlements inserted.
    pub settlements_added: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for p in TicketPriority::ALL {
            assert_eq!(p.as_str().parse::<TicketPriority>().unwrap(), *p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        for t in TicketType::ALL {
            assert_eq!(t.as_str().parse::<TicketType>().unwrap(), *t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!("critical".parse::<TicketPriority>().is_err());
        assert_eq!(TicketPriority::names(), ["low", "medium", "high", "urgent"]);
    }

    #[test]
    fn refundable_depends_on_status() {
        assert_eq!(Transaction::refundable("captured", 4999, 0), 4999);
        assert_eq!(
            Transaction::refundable("partially_refunded", 8999, 1299),
            7700
        );
        assert_eq!(Transaction::refundable("failed", 12500, 0), 0);
        assert_eq!(Transaction::refundable("authorized", 15000, 0), 0);
        assert_eq!(Transaction::refundable("refunded", 499, 499), 0);
    }
}
