//! The seed file format (`data/payments/seed.json`) and its validation.
//!
//! ```json
//! {"units": "...", "as_of": "...", "merchants": [{"id": "MID001", ...}],
//!  "transactions": [{"id": "pay_ABC123", "merchant_id": "MID001", ...}]}
//! ```
//!
//! Every record is checked before anything is written: ids, statuses, amounts, timestamps,
//! the consistency of refunds with statuses, and that each payment's merchant exists.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::model::{TRANSACTION_ID_PATTERN, TRANSACTION_STATUSES};
use crate::merchant::MerchantId;
use crate::tools::Pattern;

/// Why a seed file cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The file could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// The file is not JSON of the seed format.
    #[error("not a valid seed file: {0}")]
    Json(#[source] serde_json::Error),
    /// A record breaks a rule of the format (the sentence names the record and the rule).
    #[error("{0}")]
    Invalid(String),
}

/// A merchant record of the seed file.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeedMerchant {
    pub id: String,
    pub name: String,
    pub business_name: String,
    pub email: String,
    pub status: String,
    pub kyc_status: String,
    pub settlement_account: String,
    pub settlement_cycle: String,
    pub settlement_hold: Option<String>,
    pub balance: i64,
    pub pending_settlement: i64,
    pub settled_this_month: i64,
}

/// A payment record of the seed file.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeedTransaction {
    pub id: String,
    pub merchant_id: String,
    pub customer_name: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub method: String,
    pub error_code: Option<String>,
    pub created_at: String,
    pub settlement_id: Option<String>,
    pub settled_at: Option<String>,
    pub refunded_amount: i64,
}

/// A settlement derived from the payments that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeedSettlement {
    pub id: String,
    pub merchant_id: String,
    pub settled_at: String,
    pub amount: i64,
    pub payment_count: i64,
}

/// The whole seed file.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SeedFile {
    pub merchants: Vec<SeedMerchant>,
    pub transactions: Vec<SeedTransaction>,
}

const METHODS: &[&str] = &["upi", "card", "netbanking", "wallet"];
const HOLDS: &[&str] = &["kyc", "risk"];

fn check_time(what: &str, t: &str) -> Result<(), String> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|_| ())
        .map_err(|_| format!("{what} {t:?} is not an RFC 3339 timestamp"))
}

impl SeedFile {
    /// Parses and validates seed JSON. `known_merchants` are merchants already stored, which
    /// payments may refer to besides the file's own.
    pub fn parse(json: &str, known_merchants: &HashSet<String>) -> Result<SeedFile, SeedError> {
        let seed: SeedFile = serde_json::from_str(json).map_err(SeedError::Json)?;
        seed.check(known_merchants).map_err(SeedError::Invalid)?;
        Ok(seed)
    }

    fn check(&self, known_merchants: &HashSet<String>) -> Result<(), String> {
        let mut merchants = known_merchants.clone();
        let mut seen = HashSet::new();
        for m in &self.merchants {
            MerchantId::parse(&m.id).map_err(|e| format!("merchant {:?}: {e}", m.id))?;
            if !seen.insert(m.id.as_str()) {
                return Err(format!("merchant {} appears twice", m.id));
            }
            if let Some(hold) = &m.settlement_hold {
                if !HOLDS.contains(&hold.as_str()) {
                    return Err(format!(
                        "merchant {}: settlement_hold {hold:?} is not null, \"kyc\" or \"risk\"",
                        m.id
                    ));
                }
            }
            if m.pending_settlement < 0 || m.settled_this_month < 0 {
                return Err(format!("merchant {}: amounts must not be negative", m.id));
            }
            merchants.insert(m.id.clone());
        }
        let id_pattern = Pattern::compile(TRANSACTION_ID_PATTERN).map_err(|e| e.0)?;
        let mut ids = HashSet::new();
        for t in &self.transactions {
            let who = format!("transaction {:?}", t.id);
            if !id_pattern.is_match(&t.id) {
                return Err(format!(
                    "{who}: the id does not match {TRANSACTION_ID_PATTERN}"
                ));
            }
            if !ids.insert(t.id.as_str()) {
                return Err(format!("{who} appears twice"));
            }
            if !merchants.contains(&t.merchant_id) {
                return Err(format!("{who}: unknown merchant {:?}", t.merchant_id));
            }
            if !TRANSACTION_STATUSES.contains(&t.status.as_str()) {
                return Err(format!("{who}: unknown status {:?}", t.status));
            }
            if !METHODS.contains(&t.method.as_str()) {
                return Err(format!("{who}: unknown method {:?}", t.method));
            }
            if t.amount <= 0 {
                return Err(format!("{who}: amount must be positive"));
            }
            if t.refunded_amount < 0 || t.refunded_amount > t.amount {
                return Err(format!(
                    "{who}: refunded_amount must be between 0 and amount"
                ));
            }
            let refund_ok = match t.status.as_str() {
                "refunded" => t.refunded_amount == t.amount,
                "partially_refunded" => t.refunded_amount > 0 && t.refunded_amount < t.amount,
                _ => t.refunded_amount == 0,
            };
            if !refund_ok {
                return Err(format!(
                    "{who}: refunded_amount {} does not fit status {}",
                    t.refunded_amount, t.status
                ));
            }
            if t.currency.len() != 3 || !t.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "{who}: currency {:?} is not an ISO code",
                    t.currency
                ));
            }
            check_time(&format!("{who}: created_at"), &t.created_at)?;
            match (&t.settlement_id, &t.settled_at) {
                (Some(_), Some(at)) => check_time(&format!("{who}: settled_at"), at)?,
                (None, None) => {}
                _ => {
                    return Err(format!(
                        "{who}: settlement_id and settled_at must be both set or both null"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The settlements named by the payments, with their totals.
    pub fn settlements(&self) -> Result<Vec<SeedSettlement>, SeedError> {
        self.settlements_checked().map_err(SeedError::Invalid)
    }

    fn settlements_checked(&self) -> Result<Vec<SeedSettlement>, String> {
        let mut by_id: BTreeMap<&str, SeedSettlement> = BTreeMap::new();
        for t in &self.transactions {
            let (Some(id), Some(at)) = (&t.settlement_id, &t.settled_at) else {
                continue;
            };
            let s = by_id.entry(id).or_insert_with(|| SeedSettlement {
                id: id.clone(),
                merchant_id: t.merchant_id.clone(),
                settled_at: at.clone(),
                amount: 0,
                payment_count: 0,
            });
            if s.merchant_id != t.merchant_id || s.settled_at != *at {
                return Err(format!(
                    "settlement {id} mixes merchants or settlement times (transaction {})",
                    t.id
                ));
            }
            s.amount += t.amount - t.refunded_amount;
            s.payment_count += 1;
        }
        Ok(by_id.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/payments/seed.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_demo_seed_is_valid_and_settlements_match_the_merchant_totals() {
        let seed = SeedFile::parse(&seed_text(), &HashSet::new()).unwrap();
        assert_eq!(seed.merchants.len(), 8);
        assert_eq!(seed.transactions.len(), 60);
        let settlements = seed.settlements().unwrap();
        // settled_this_month is the sum of the merchant's settlements (all in March 2026).
        for m in &seed.merchants {
            let total: i64 = settlements
                .iter()
                .filter(|s| s.merchant_id == m.id)
                .map(|s| s.amount)
                .sum();
            assert_eq!(total, m.settled_this_month, "{}", m.id);
        }
    }

    #[test]
    fn invalid_records_are_rejected_with_the_record_named() {
        let base: serde_json::Value = serde_json::from_str(&seed_text()).unwrap();
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "unknown merchant",
                Box::new(|v| v["transactions"][0]["merchant_id"] = "MID999".into()),
            ),
            (
                "does not match",
                Box::new(|v| v["transactions"][0]["id"] = "pay_x".into()),
            ),
            (
                "unknown status",
                Box::new(|v| v["transactions"][0]["status"] = "lost".into()),
            ),
            (
                "between 0 and amount",
                Box::new(|v| v["transactions"][1]["refunded_amount"] = 999_999.into()),
            ),
            (
                "does not fit status",
                Box::new(|v| v["transactions"][1]["refunded_amount"] = 1.into()),
            ),
            (
                "RFC 3339",
                Box::new(|v| v["transactions"][1]["created_at"] = "yesterday".into()),
            ),
            (
                "appears twice",
                Box::new(|v| {
                    let first = v["transactions"][0].clone();
                    v["transactions"].as_array_mut().unwrap().push(first);
                }),
            ),
            (
                "only ASCII",
                Box::new(|v| v["merchants"][0]["id"] = "MID 1".into()),
            ),
            (
                "not a valid seed file",
                Box::new(|v| v["merchants"][0]["balance"] = "lots".into()),
            ),
        ];
        for (needle, mutate) in cases {
            let mut v = base.clone();
            mutate(&mut v);
            let err = SeedFile::parse(&v.to_string(), &HashSet::new()).unwrap_err();
            let err = err.to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
