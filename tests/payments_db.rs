//! The payments database on a real SQLite file: seeding, the demo fixtures, merchant scoping
//! and the invariants the schema enforces.

use crate::support::payments as payments_support;

use memex::domain::payments::{
    NewTicket, PaymentsDb, PaymentsError, RefundRequest, SeedReport, TicketPriority, TicketType,
};
use payments_support::{mid, seed_path, SeededDb};

#[test]
fn seeding_is_idempotent_and_keeps_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = PaymentsDb::open_in_dir(&dir.path().join("nested/data")).unwrap();
    let first = db.seed_from_file(&seed_path()).unwrap();
    assert_eq!(first.merchants_added, 8);
    assert_eq!(first.transactions_added, 60);
    assert!(first.settlements_added > 10, "{first:?}");
    assert_eq!(
        db.seed_from_file(&seed_path()).unwrap(),
        SeedReport::default()
    );

    // A refund made after seeding survives a second seed (and a reopen + seed).
    let m = mid("MID001");
    db.refund(
        &m,
        "s1",
        "approval-1",
        &RefundRequest {
            transaction_id: "pay_ABC123".into(),
            amount: 1000,
            reason: "damaged".into(),
        },
    )
    .unwrap();
    drop(db);
    let db = PaymentsDb::open_in_dir(&dir.path().join("nested/data")).unwrap();
    assert_eq!(
        db.seed_from_file(&seed_path()).unwrap(),
        SeedReport::default()
    );
    let t = db.transaction(&m, "pay_ABC123").unwrap().unwrap();
    assert_eq!(t.refunded_amount, 1000);
    assert_eq!(t.status, "partially_refunded");
    assert_eq!(db.list_refunds(&m).unwrap().len(), 1);
}

#[test]
fn the_demo_payments_are_there() {
    let f = SeededDb::new();
    let abc =
        f.db.transaction(&mid("MID001"), "pay_ABC123")
            .unwrap()
            .unwrap();
    assert_eq!(abc.merchant_id, "MID001");
    assert_eq!(abc.customer_name, "Priya Sharma");
    assert_eq!(abc.amount, 4999);
    assert_eq!(abc.currency, "INR");
    assert_eq!(abc.status, "captured");
    assert_eq!(abc.method, "upi");
    assert_eq!(abc.created_at, "2026-03-28T14:23:00Z");
    assert_eq!(abc.error_code, None);
    assert_eq!(abc.settlement_id, None);
    assert_eq!(abc.refunded_amount, 0);
    assert_eq!(abc.refundable_amount, 4999);

    let xyz =
        f.db.transaction(&mid("MID002"), "pay_XYZ789")
            .unwrap()
            .unwrap();
    assert_eq!(xyz.merchant_id, "MID002");
    assert_eq!(xyz.customer_name, "Rahul Kumar");
    assert_eq!(xyz.amount, 12500);
    assert_eq!(xyz.status, "failed");
    assert_eq!(xyz.method, "card");
    assert_eq!(xyz.error_code.as_deref(), Some("GATEWAY_ERROR"));
    assert_eq!(xyz.created_at, "2026-03-29T09:11:00Z");
    assert_eq!(xyz.refundable_amount, 0);

    // Scoped: each is invisible to the other merchant.
    assert_eq!(
        f.db.transaction(&mid("MID002"), "pay_ABC123").unwrap(),
        None
    );
    assert_eq!(
        f.db.transaction(&mid("MID001"), "pay_XYZ789").unwrap(),
        None
    );
    assert_eq!(
        f.db.transaction(&mid("MID001"), "pay_NOPE00").unwrap(),
        None
    );
}

#[test]
fn merchant_account_has_balances_and_recent_settlements() {
    let f = SeededDb::new();
    let acct = f.db.merchant_account(&mid("MID001")).unwrap().unwrap();
    assert_eq!(acct.business_name, "Sharma Handicrafts");
    assert_eq!(acct.status, "active");
    assert_eq!(acct.kyc_status, "verified");
    assert_eq!(acct.settlement_cycle, "T+2");
    assert_eq!(acct.settlement_hold, None);
    assert_eq!(acct.balance, 11997);
    assert_eq!(acct.pending_settlement, 11997);
    assert_eq!(acct.settled_this_month, 19494);
    assert_eq!(acct.recent_settlements.len(), 5);
    let latest = &acct.recent_settlements[0];
    assert_eq!(latest.settlement_id, "setl_E0hlriCYOVNwGx");
    assert_eq!(latest.settled_at, "2026-03-27T07:30:00Z");
    assert_eq!(latest.amount, 4999 + 1499 + 3499);
    assert_eq!(latest.payment_count, 3);
    assert!(acct
        .recent_settlements
        .windows(2)
        .all(|w| w[0].settled_at >= w[1].settled_at));

    let held = f.db.merchant_account(&mid("MID003")).unwrap().unwrap();
    assert_eq!(held.settlement_hold.as_deref(), Some("kyc"));
    assert_eq!(held.kyc_status, "rekyc_pending");
    assert!(held.recent_settlements.is_empty());
    assert_eq!(f.db.merchant_account(&mid("MID999")).unwrap(), None);
}

#[test]
fn refunds_move_balances_and_respect_the_refundable_amount() {
    let f = SeededDb::new();
    let m = mid("MID001");
    let req = |amount| RefundRequest {
        transaction_id: "pay_ABC123".into(),
        amount,
        reason: "customer returned the item".into(),
    };
    let out = f.db.refund(&m, "s", "k1", &req(1999)).unwrap();
    assert!(!out.replayed);
    assert!(out.refund.id.starts_with("rfnd_") && out.refund.id.len() == 19);
    assert_eq!(out.transaction.refunded_amount, 1999);
    assert_eq!(out.transaction.refundable_amount, 3000);
    let acct = f.db.merchant_account(&m).unwrap().unwrap();
    assert_eq!(acct.balance, 11997 - 1999);
    assert_eq!(acct.pending_settlement, 11997 - 1999);

    match f.db.refund(&m, "s", "k2", &req(3001)) {
        Err(PaymentsError::Refused(msg)) => {
            assert!(msg.contains("only INR 3000"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    let out = f.db.refund(&m, "s", "k3", &req(3000)).unwrap();
    assert_eq!(out.transaction.status, "refunded");
    assert_eq!(out.transaction.refundable_amount, 0);
    assert!(matches!(
        f.db.refund(&m, "s", "k4", &req(1)),
        Err(PaymentsError::Refused(_))
    ));
    assert_eq!(f.db.list_refunds(&m).unwrap().len(), 2);
    assert_eq!(
        f.db.refunds_for_transaction(&m, "pay_ABC123")
            .unwrap()
            .iter()
            .map(|r| r.amount)
            .collect::<Vec<_>>(),
        [1999, 3000]
    );
    // Another merchant sees none of it.
    assert!(f.db.list_refunds(&mid("MID002")).unwrap().is_empty());
    assert!(f
        .db
        .refunds_for_transaction(&mid("MID002"), "pay_ABC123")
        .unwrap()
        .is_empty());
}

#[test]
fn tickets_are_listed_per_merchant_in_order() {
    let f = SeededDb::new();
    let new = |subject: &str, txn: Option<&str>| NewTicket {
        subject: subject.into(),
        description: "Settlement not received for this payment".into(),
        priority: TicketPriority::High,
        ticket_type: TicketType::Settlement,
        transaction_id: txn.map(Into::into),
    };
    let a =
        f.db.create_ticket(&mid("MID001"), "s", None, &new("first", Some("pay_ABC123")))
            .unwrap();
    let b =
        f.db.create_ticket(&mid("MID001"), "s", None, &new("second", None))
            .unwrap();
    f.db.create_ticket(&mid("MID002"), "s", None, &new("theirs", None))
        .unwrap();
    assert_ne!(a.ticket.id, b.ticket.id);
    let mine = f.db.list_tickets(&mid("MID001")).unwrap();
    assert_eq!(
        mine.iter().map(|t| t.subject.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(mine[0], a.ticket);
    assert_eq!(mine[0].priority, TicketPriority::High);
    assert_eq!(mine[0].ticket_type, TicketType::Settlement);
    assert_eq!(mine[0].status, "open");
    assert_eq!(f.db.list_tickets(&mid("MID002")).unwrap().len(), 1);
    // A ticket for a merchant that does not exist is refused as not found.
    assert!(matches!(
        f.db.create_ticket(&mid("MID999"), "s", None, &new("ghost", None)),
        Err(PaymentsError::NotFound { .. })
    ));
}

#[test]
fn the_schema_itself_forbids_over_refunding() {
    // Even a direct write that bypasses PaymentsDb cannot push refunded_amount past amount.
    let f = SeededDb::new();
    let conn = rusqlite::Connection::open(f.path()).unwrap();
    let err = conn
        .execute(
            "UPDATE transactions SET refunded_amount = amount + 1 WHERE id = 'pay_ABC123'",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[test]
fn bad_seed_files_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = PaymentsDb::open_in_dir(dir.path()).unwrap();
    let missing = db
        .seed_from_file(&dir.path().join("nope.json"))
        .unwrap_err();
    assert!(matches!(missing, PaymentsError::Seed { .. }), "{missing}");

    let mut seed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(seed_path()).unwrap()).unwrap();
    seed["transactions"][59]["amount"] = (-5).into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, seed.to_string()).unwrap();
    let err = db.seed_from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("amount must be positive"), "{err}");
    // Validation happens before any write.
    assert_eq!(db.merchant_account(&mid("MID001")).unwrap(), None);

    std::fs::write(&bad, "{ not json").unwrap();
    let err = db.seed_from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("not a valid seed file"), "{err}");
}

#[test]
fn opening_a_directory_as_the_database_fails_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let err = PaymentsDb::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
