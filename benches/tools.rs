//! Tool-layer overheads the agent pays per call, without the LLM: argument validation,
//! canonical JSON, the OpenAI tools list, and real tool calls on a seeded SQLite file
//! (a read, an idempotent refund replay, and a ticket insert).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use memex::domain::payments::{payments_registry, KnowledgeHit, KnowledgeSearch, PaymentsDb};
use memex::merchant::MerchantId;
use memex::tools::{canonical_json, ToolContext};
use serde_json::json;

struct NoKb;

impl KnowledgeSearch for NoKb {
    fn search(
        &self,
        _query: &str,
        _k: usize,
    ) -> Result<Vec<KnowledgeHit>, memex::domain::payments::KnowledgeError> {
        Ok(Vec::new())
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = PaymentsDb::open_in_dir(dir.path()).expect("open payments db");
    db.seed_from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/payments/seed.json"))
        .expect("seed");
    let reg = payments_registry(Arc::new(db), Arc::new(NoKb)).expect("registry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let merchant = MerchantId::parse("MID001").expect("merchant id");
    let ctx = ToolContext::new(merchant, "bench");

    let refund_raw =
        r#"{"transaction_id":"pay_ABC123","amount":1000,"reason":"customer returned the item"}"#;
    let ticket_raw = json!({
        "subject": "Settlement missing for pay_ABC123",
        "description": "Customer was charged INR 4,999 on 28 March; no settlement received yet.",
        "priority": "high", "type": "settlement", "transaction_id": "pay_ABC123"
    })
    .to_string();

    c.bench_function("validate/initiate_refund", |b| {
        b.iter(|| reg.validate("initiate_refund", refund_raw).expect("valid"))
    });
    c.bench_function("validate/create_support_ticket", |b| {
        b.iter(|| {
            reg.validate("create_support_ticket", &ticket_raw)
                .expect("valid")
        })
    });
    let args = reg
        .validate("create_support_ticket", &ticket_raw)
        .expect("valid");
    c.bench_function("canonical_json/ticket_args", |b| {
        b.iter(|| canonical_json(&args))
    });
    c.bench_function("openai_tools", |b| b.iter(|| reg.openai_tools()));

    let get = reg.get("get_transaction").expect("tool");
    let get_args = json!({"transaction_id": "pay_ABC123"});
    c.bench_function("call/get_transaction", |b| {
        b.iter(|| {
            rt.block_on(get.call(get_args.clone(), &ctx))
                .expect("found")
        })
    });

    let refund = reg.get("initiate_refund").expect("tool");
    let refund_args = reg.validate("initiate_refund", refund_raw).expect("valid");
    let keyed = ctx.clone().with_idempotency_key("bench-approval");
    rt.block_on(refund.call(refund_args.clone(), &keyed))
        .expect("first refund");
    c.bench_function("call/initiate_refund_replay", |b| {
        b.iter(|| {
            rt.block_on(refund.call(refund_args.clone(), &keyed))
                .expect("replay")
        })
    });

    let ticket = reg.get("create_support_ticket").expect("tool");
    c.bench_function("call/create_support_ticket", |b| {
        b.iter(|| {
            rt.block_on(ticket.call(args.clone(), &ctx))
                .expect("ticket")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
