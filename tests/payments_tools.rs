//! The five payments tools called the way the agent calls them (validated arguments, a
//! `ToolContext`), on a real SQLite file: merchant scoping, refund rules, idempotency across
//! retries, concurrent callers and restarts, tickets and knowledge search.

use crate::support::payments as payments_support;

use std::sync::Arc;
use std::time::Duration;

use memex::domain::payments::{payments_registry, PaymentsDb};
use memex::tools::{ToolContext, ToolError, ToolRegistry};
use payments_support::{ctx, mid, BrokenKb, KeywordKb, SeededDb};
use serde_json::{json, Value};

fn registry(db: Arc<PaymentsDb>) -> ToolRegistry {
    payments_registry(db, KeywordKb::load()).unwrap()
}

/// Validates `raw` for `tool` like the agent does, then calls it.
async fn call(
    reg: &ToolRegistry,
    tool: &str,
    raw: &str,
    ctx: &ToolContext,
) -> Result<Value, ToolError> {
    let args = reg.validate(tool, raw).unwrap();
    reg.get(tool).unwrap().call(args, ctx).await
}

fn refund_args(txn: &str, amount: i64) -> String {
    json!({"transaction_id": txn, "amount": amount, "reason": "customer returned the item"})
        .to_string()
}

#[tokio::test]
async fn get_transaction_returns_the_payment_with_refundable_amount() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let out = call(
        &reg,
        "get_transaction",
        r#"{"transaction_id":"pay_ABC123"}"#,
        &ctx("MID001"),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({
            "id": "pay_ABC123", "merchant_id": "MID001", "customer_name": "Priya Sharma",
            "amount": 4999, "currency": "INR", "status": "captured", "method": "upi",
            "error_code": null, "created_at": "2026-03-28T14:23:00Z", "settlement_id": null,
            "settled_at": null, "refunded_amount": 0, "refundable_amount": 4999, "refunds": []
        })
    );
    let xyz = call(
        &reg,
        "get_transaction",
        r#"{"transaction_id":"pay_XYZ789"}"#,
        &ctx("MID002"),
    )
    .await
    .unwrap();
    assert_eq!(xyz["customer_name"], "Rahul Kumar");
    assert_eq!(xyz["amount"], 12500);
    assert_eq!(xyz["status"], "failed");
    assert_eq!(xyz["method"], "card");
    assert_eq!(xyz["error_code"], "GATEWAY_ERROR");
    let tool = reg.get("get_transaction").unwrap();
    assert_eq!(
        tool.progress(&json!({"transaction_id": "pay_ABC123"})),
        "Looking up transaction pay_ABC123"
    );
}

#[tokio::test]
async fn another_merchants_payment_is_indistinguishable_from_a_missing_one() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let mid2 = ctx("MID002");
    let theirs = call(
        &reg,
        "get_transaction",
        r#"{"transaction_id":"pay_ABC123"}"#,
        &mid2,
    )
    .await
    .unwrap_err();
    let missing = call(
        &reg,
        "get_transaction",
        r#"{"transaction_id":"pay_ABC999"}"#,
        &mid2,
    )
    .await
    .unwrap_err();
    assert!(matches!(theirs, ToolError::NotFound(_)), "{theirs:?}");
    assert_eq!(theirs.to_json()["error"], "not_found");
    // Same shape and wording, only the echoed id differs.
    assert_eq!(
        theirs.message().replace("pay_ABC123", "ID"),
        missing.message().replace("pay_ABC999", "ID")
    );
    assert!(!theirs.message().contains("MID001"));
    assert!(!theirs.message().contains("Priya"));

    // Nor can MID002 refund it or raise a ticket about it.
    let keyed = mid2.clone().with_idempotency_key("approval-x");
    let refund = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 100),
        &keyed,
    )
    .await
    .unwrap_err();
    assert!(matches!(refund, ToolError::NotFound(_)), "{refund:?}");
    let ticket = call(
        &reg,
        "create_support_ticket",
        &json!({"subject": "Where is my money", "description": "Settlement missing for pay_ABC123",
                "priority": "high", "type": "settlement", "transaction_id": "pay_ABC123"})
        .to_string(),
        &mid2,
    )
    .await
    .unwrap_err();
    assert!(matches!(ticket, ToolError::NotFound(_)), "{ticket:?}");
    // Nothing changed for MID001.
    let t =
        f.db.transaction(&mid("MID001"), "pay_ABC123")
            .unwrap()
            .unwrap();
    assert_eq!(t.refunded_amount, 0);
    assert!(f.db.list_refunds(&mid("MID002")).unwrap().is_empty());
    assert!(f.db.list_tickets(&mid("MID002")).unwrap().is_empty());
}

#[tokio::test]
async fn merchant_account_reads_only_the_session_merchant() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let a = call(&reg, "get_merchant_account", "", &ctx("MID002"))
        .await
        .unwrap();
    assert_eq!(a["merchant_id"], "MID002");
    assert_eq!(a["business_name"], "Kaveri Ayurveda Pvt Ltd");
    assert_eq!(a["balance"], 11999);
    assert_eq!(a["currency"], "INR");
    assert!(a["recent_settlements"].as_array().unwrap().len() <= 5);
    let none = call(&reg, "get_merchant_account", "{}", &ctx("MID999"))
        .await
        .unwrap_err();
    assert!(matches!(none, ToolError::NotFound(_)), "{none:?}");
    // Naming the session's own merchant is allowed; naming another is not_found, like a
    // missing account, and reveals nothing.
    let same = call(
        &reg,
        "get_merchant_account",
        r#"{"merchant_id": "MID002"}"#,
        &ctx("MID002"),
    )
    .await
    .unwrap();
    assert_eq!(same, a);
    let other = call(
        &reg,
        "get_merchant_account",
        r#"{"merchant_id": "MID001"}"#,
        &ctx("MID002"),
    )
    .await
    .unwrap_err();
    assert!(matches!(other, ToolError::NotFound(_)), "{other:?}");
    assert!(!other.message().contains("MID002"));
}

#[tokio::test]
async fn refund_without_an_approval_key_is_refused_and_changes_nothing() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 100),
        &ctx("MID001"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err:?}");
    assert!(err.message().contains("approv"), "{err}");
    assert!(!err.retryable());
    // An empty key is no approval either.
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 100),
        &ctx("MID001").with_idempotency_key(""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err:?}");
    assert!(f.db.list_refunds(&mid("MID001")).unwrap().is_empty());
    assert_eq!(
        f.db.transaction(&mid("MID001"), "pay_ABC123")
            .unwrap()
            .unwrap()
            .refunded_amount,
        0
    );
}

#[tokio::test]
async fn refunds_above_refundable_or_on_unrefundable_payments_are_refused() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let c = ctx("MID001").with_idempotency_key("a1");
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 5000),
        &c,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err:?}");
    assert!(err.message().contains("only INR 4999"), "{err}");
    // A refused attempt does not burn the key: the same approval can still run a valid refund.
    let ok = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 4999),
        &c,
    )
    .await
    .unwrap();
    assert_eq!(ok["transaction_status"], "refunded");

    // Failed payment (MID002's pay_XYZ789), authorized payment (MID003) and an already fully
    // refunded payment (MID001's pay_bCZJ5mVZwX4Vdl).
    for (merchant, txn, needle) in [
        ("MID002", "pay_XYZ789", "failed"),
        ("MID003", "pay_YPmvdNgeutZpYZ", "never captured"),
        ("MID001", "pay_bCZJ5mVZwX4Vdl", "already been refunded"),
    ] {
        let c = ctx(merchant).with_idempotency_key(format!("k-{txn}"));
        let err = call(&reg, "initiate_refund", &refund_args(txn, 1), &c)
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Refused(_)), "{txn}: {err:?}");
        assert!(err.message().contains(needle), "{txn}: {err}");
    }
    assert_eq!(f.db.list_refunds(&mid("MID002")).unwrap().len(), 0);
}

#[tokio::test]
async fn partial_refunds_accumulate_until_the_payment_is_fully_refunded() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    // pay_TWT1HfKmJWXGfp: MID002, 8999, partially refunded 1299 in the seed.
    let mut refundable = 8999 - 1299;
    for (i, amount) in [1000, 2500, 4200].into_iter().enumerate() {
        let c = ctx("MID002").with_idempotency_key(format!("approval-{i}"));
        let out = call(
            &reg,
            "initiate_refund",
            &refund_args("pay_TWT1HfKmJWXGfp", amount),
            &c,
        )
        .await
        .unwrap();
        refundable -= amount;
        assert_eq!(out["amount"], amount);
        assert_eq!(out["refundable_amount"], refundable);
        assert_eq!(out["refunded_amount"], 8999 - refundable);
        assert_eq!(out["idempotent_replay"], false);
        let expected = if refundable == 0 {
            "refunded"
        } else {
            "partially_refunded"
        };
        assert_eq!(out["transaction_status"], expected);
    }
    assert_eq!(refundable, 0);
    let txn = call(
        &reg,
        "get_transaction",
        r#"{"transaction_id":"pay_TWT1HfKmJWXGfp"}"#,
        &ctx("MID002"),
    )
    .await
    .unwrap();
    assert_eq!(txn["refunded_amount"], 8999);
    assert_eq!(txn["refundable_amount"], 0);
    assert_eq!(txn["refunds"].as_array().unwrap().len(), 3);
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_TWT1HfKmJWXGfp", 1),
        &ctx("MID002").with_idempotency_key("approval-9"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)));
    // Balance went down by exactly what was refunded.
    let acct = f.db.merchant_account(&mid("MID002")).unwrap().unwrap();
    assert_eq!(acct.balance, 11999 - 7700);
}

#[tokio::test]
async fn the_same_key_refunds_once_across_retries_and_restarts() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let c = ctx("MID001").with_idempotency_key("act_42");
    let first = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 1500),
        &c,
    )
    .await
    .unwrap();
    let again = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 1500),
        &c,
    )
    .await
    .unwrap();
    assert_eq!(first["idempotent_replay"], false);
    assert_eq!(again["idempotent_replay"], true);
    assert_eq!(first["refund_id"], again["refund_id"]);
    assert_eq!(again["refunded_amount"], 1500);

    // "Restart": drop every handle, reopen the file, build fresh tools, approve again.
    drop(reg);
    let path = f.path();
    let SeededDb { db, dir } = f;
    drop(db);
    let db = Arc::new(PaymentsDb::open(&path).unwrap());
    let reg = registry(db.clone());
    let after = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 1500),
        &c,
    )
    .await
    .unwrap();
    assert_eq!(after["refund_id"], first["refund_id"]);
    assert_eq!(after["idempotent_replay"], true);
    let refunds = db.list_refunds(&mid("MID001")).unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].idempotency_key, "act_42");
    let t = db
        .transaction(&mid("MID001"), "pay_ABC123")
        .unwrap()
        .unwrap();
    assert_eq!(t.refunded_amount, 1500);
    assert_eq!(
        db.merchant_account(&mid("MID001"))
            .unwrap()
            .unwrap()
            .balance,
        11997 - 1500
    );

    // The key cannot be reused for a different refund, nor by another merchant.
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 1600),
        &c,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err:?}");
    let other = ctx("MID002").with_idempotency_key("act_42");
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_TWT1HfKmJWXGfp", 100),
        &other,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err:?}");
    assert!(!err.message().contains("MID001"));
    assert_eq!(db.list_refunds(&mid("MID001")).unwrap().len(), 1);
    assert!(db.list_refunds(&mid("MID002")).unwrap().is_empty());
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_with_one_key_refund_exactly_once() {
    let f = SeededDb::new();
    // Half the callers share one connection, half have their own (like separate processes).
    let mut regs = vec![Arc::new(registry(f.db.clone()))];
    for _ in 0..3 {
        regs.push(Arc::new(registry(f.reopen())));
    }
    let c = ctx("MID001").with_idempotency_key("act_concurrent");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let reg = Arc::clone(&regs[i % regs.len()]);
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &reg,
                "initiate_refund",
                &refund_args("pay_ABC123", 2000),
                &c,
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        ids.push(out["refund_id"].as_str().unwrap().to_owned());
        if out["idempotent_replay"] == false {
            fresh += 1;
        }
        assert_eq!(out["refunded_amount"], 2000);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(fresh, 1);
    assert_eq!(f.db.list_refunds(&mid("MID001")).unwrap().len(), 1);
    let t =
        f.db.transaction(&mid("MID001"), "pay_ABC123")
            .unwrap()
            .unwrap();
    assert_eq!(t.refunded_amount, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_distinct_refunds_never_exceed_the_payment() {
    let f = SeededDb::new();
    let regs: Vec<_> = (0..4).map(|_| Arc::new(registry(f.reopen()))).collect();
    // 10 approvals of 1000 each on a 4999 payment: exactly 4 can succeed.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let reg = Arc::clone(&regs[i % regs.len()]);
        let c = ctx("MID001").with_idempotency_key(format!("act_{i}"));
        tasks.push(tokio::spawn(async move {
            call(
                &reg,
                "initiate_refund",
                &refund_args("pay_ABC123", 1000),
                &c,
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ToolError::Refused(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 4);
    let t =
        f.db.transaction(&mid("MID001"), "pay_ABC123")
            .unwrap()
            .unwrap();
    assert_eq!(t.refunded_amount, 4000);
    assert_eq!(f.db.list_refunds(&mid("MID001")).unwrap().len(), 4);
}

#[tokio::test]
async fn tickets_are_persisted_scoped_and_idempotent_with_a_key() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let args = json!({
        "subject": "Settlement missing for pay_ABC123",
        "description": "Customer was charged INR 4,999 on 28 March; no settlement received yet.",
        "priority": "high",
        "type": "settlement",
        "transaction_id": "pay_ABC123"
    })
    .to_string();
    let out = call(&reg, "create_support_ticket", &args, &ctx("MID001"))
        .await
        .unwrap();
    let id = out["ticket_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tkt_"), "{out}");
    assert_eq!(out["priority"], "high");
    assert_eq!(out["type"], "settlement");
    assert_eq!(out["status"], "open");
    assert_eq!(out["transaction_id"], "pay_ABC123");
    assert_eq!(out["idempotent_replay"], false);

    let listed = f.db.list_tickets(&mid("MID001")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].session_id, "test-session");
    assert!(f.db.list_tickets(&mid("MID002")).unwrap().is_empty());

    // Without a key every call is a new ticket; with one, a repeat returns the first.
    let keyed = ctx("MID001").with_idempotency_key("escalation-turn-3");
    let a = call(&reg, "create_support_ticket", &args, &keyed)
        .await
        .unwrap();
    let b = call(&reg, "create_support_ticket", &args, &keyed)
        .await
        .unwrap();
    assert_eq!(a["ticket_id"], b["ticket_id"]);
    assert_eq!(b["idempotent_replay"], true);
    assert_eq!(f.db.list_tickets(&mid("MID001")).unwrap().len(), 2);

    // No transaction_id is fine too.
    let plain = json!({"subject": "How do I download GST invoices?", "description": "Need the March invoice for filing.", "priority": "low", "type": "account"});
    let out = call(
        &reg,
        "create_support_ticket",
        &plain.to_string(),
        &ctx("MID001"),
    )
    .await
    .unwrap();
    assert_eq!(out["transaction_id"], Value::Null);
    assert_eq!(f.db.list_tickets(&mid("MID001")).unwrap().len(), 3);
}

#[tokio::test]
async fn knowledge_search_returns_passages_as_data() {
    let f = SeededDb::new();
    let reg = registry(f.db.clone());
    let out = call(
        &reg,
        "search_knowledge_base",
        r#"{"query": "partial refund amount exceeded", "k": 3}"#,
        &ctx("MID001"),
    )
    .await
    .unwrap();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results.iter().any(|r| r["source"] == "partial-refunds.md"),
        "{out}"
    );
    for r in results {
        for field in ["chunk_id", "source", "heading", "text", "score"] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
    }
    assert!(out["note"]
        .as_str()
        .unwrap()
        .contains("not contain instructions"));
    // Default k is 5.
    let out = call(
        &reg,
        "search_knowledge_base",
        r#"{"query": "settlement refund upi"}"#,
        &ctx("MID001"),
    )
    .await
    .unwrap();
    assert_eq!(out["results"].as_array().unwrap().len(), 5);
    // Blank queries and a failing backend are errors, not panics.
    let err = call(
        &reg,
        "search_knowledge_base",
        r#"{"query": "   "}"#,
        &ctx("MID001"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::InvalidArgs(_)), "{err:?}");
    let broken = payments_registry(f.db.clone(), Arc::new(BrokenKb)).unwrap();
    let err = call(
        &broken,
        "search_knowledge_base",
        r#"{"query": "refunds"}"#,
        &ctx("MID001"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "internal");
    assert!(err.message().contains("index file is missing"), "{err}");
}

#[tokio::test]
async fn a_busy_database_is_a_transient_error() {
    let f = SeededDb::new();
    let db = PaymentsDb::open_with_timeout(&f.path(), Duration::from_millis(200)).unwrap();
    let reg = registry(Arc::new(db));
    // Another "process" holds the write lock longer than the busy timeout.
    let blocker = rusqlite::Connection::open(f.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 10),
        &ctx("MID001").with_idempotency_key("act_busy"),
    )
    .await
    .unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert!(
        err.message().contains("busy (gave up after 200 ms)"),
        "{err}"
    );
    assert_eq!(err.to_json()["error"], "transient");
    blocker.execute_batch("ROLLBACK").unwrap();
    // Once the lock is gone the retry with the same key succeeds, once.
    let out = call(
        &reg,
        "initiate_refund",
        &refund_args("pay_ABC123", 10),
        &ctx("MID001").with_idempotency_key("act_busy"),
    )
    .await
    .unwrap();
    assert_eq!(out["idempotent_replay"], false);
    assert_eq!(f.db.list_refunds(&mid("MID001")).unwrap().len(), 1);
}
