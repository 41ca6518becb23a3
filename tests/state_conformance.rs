//! One conformance suite for every agent-state backend: each case runs against a real SQLite
//! file and a real Redis (our own `redis-server` on a free loopback port). Every fixture opens
//! TWO store instances on the same state, standing for two `memex serve` workers.

use crate::support::redis as redis_support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use memex::agent::{ActionStatus, AgentError, AgentStore, AuditEntry, ModelUse, TurnRecord};
use memex::merchant::MerchantId;
use memex::serve::keys::KeyStore;
use memex::state::StateUrl;
use serde_json::json;

/// Two "workers" on one state, and whatever must outlive them.
struct Fx {
    a: Arc<AgentStore>,
    b: Arc<AgentStore>,
    state: StateUrl,
    /// How long an abandoned runner lease can take to expire.
    lease_ttl: Duration,
    _guard: Box<dyn std::any::Any>,
}

impl Fx {
    fn keys(&self) -> KeyStore {
        KeyStore::open_state(&self.state).unwrap()
    }
}

const TTL: Duration = Duration::from_millis(600);

fn sqlite() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let state = StateUrl::Sqlite(dir.path().join("agent.db"));
    Fx {
        a: Arc::new(AgentStore::open_state(&state).unwrap()),
        b: Arc::new(AgentStore::open_state(&state).unwrap()),
        state,
        lease_ttl: Duration::ZERO,
        _guard: Box::new(dir),
    }
}

fn redis() -> Fx {
    let server = redis_support::RedisServer::spawn();
    let url = server.url();
    Fx {
        a: Arc::new(AgentStore::open_redis(&url, TTL).unwrap()),
        b: Arc::new(AgentStore::open_redis(&url, TTL).unwrap()),
        state: StateUrl::Redis(url),
        lease_ttl: TTL,
        _guard: Box::new(server),
    }
}

fn mid(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn entry(session: &str, merchant: &str, turn: u32, i: usize, status: &str) -> AuditEntry {
    AuditEntry {
        session: session.into(),
        merchant: merchant.into(),
        turn,
        call_id: format!("call_{i}"),
        tool: "lookup_payment".into(),
        args: json!({"payment_id": format!("pay_{i}"), "n": i}),
        result: json!({"ok": true, "i": i}),
        status: status.into(),
        latency_ms: i as f64,
        at: "2026-01-01T00:00:00.000Z".into(),
        model: i.is_multiple_of(2).then(|| "small-model".to_string()),
    }
}

fn turn(outcome: &str, latency_ms: f64) -> TurnRecord {
    TurnRecord {
        outcome: outcome.into(),
        latency_ms,
        prompt_tokens: 10,
        completion_tokens: 5,
        context: json!({"kb": ["doc"], "latency": latency_ms}),
        kind: "message".into(),
        message: format!("a message ending in {outcome}"),
        answer: format!("an answer ending in {outcome}"),
        models: vec![
            ModelUse {
                model: "small-model".into(),
                role: "tools".into(),
                calls: 2,
                prompt_tokens: 6,
                completion_tokens: 2,
                latency_ms: latency_ms / 4.0,
            },
            ModelUse {
                model: "big:model|v2".into(),
                role: "answer".into(),
                calls: 1,
                prompt_tokens: 4,
                completion_tokens: 3,
                latency_ms: latency_ms / 2.0,
            },
        ],
    }
}

/// Polls `f` until it is true or `limit` has passed.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sessions_and_turns(fx: Fx) {
    let m = mid("MID001");
    assert_eq!(fx.a.begin_session("s1", &m).unwrap(), 0);
    assert_eq!(fx.a.next_turn("s1").unwrap(), 1);
    assert_eq!(fx.b.next_turn("s1").unwrap(), 2);
    assert_eq!(fx.b.begin_session("s1", &m).unwrap(), 2);
    assert!(matches!(
        fx.b.begin_session("s1", &mid("MID002")),
        Err(AgentError::SessionMerchant { .. })
    ));
    assert_eq!(fx.b.session_merchant("s1").unwrap(), Some(m.clone()));
    assert_eq!(fx.a.session_merchant("nope").unwrap(), None);
    assert!(fx.a.next_turn("nope").is_err());
    // Turn counters are atomic across workers: 8 threads × 10 turns, no number twice.
    fx.a.begin_session("race", &m).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 {
                fx.a.clone()
            } else {
                fx.b.clone()
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..10)
                    .map(|_| s.next_turn("race").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(unique.len(), 80);
    assert_eq!(unique, (1..=80).collect());
    // Turn records and their contexts, in order, from either worker.
    fx.a.record_turn("s1", &m, 1, &turn("answer", 1.0)).unwrap();
    fx.b.record_turn("s1", &m, 2, &turn("answer", 2.0)).unwrap();
    let ctx = fx.a.turn_contexts("s1").unwrap();
    assert_eq!(ctx.len(), 2);
    assert_eq!(ctx[1]["latency"], json!(2.0));
    // Ending: the episode summarises the session until its next turn.
    assert_eq!(fx.a.ended_episode("s1").unwrap(), None);
    fx.a.end_session("s1", "ep_1").unwrap();
    assert_eq!(fx.b.ended_episode("s1").unwrap().as_deref(), Some("ep_1"));
    fx.b.next_turn("s1").unwrap();
    assert_eq!(fx.a.ended_episode("s1").unwrap(), None);
}

fn audit_order(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    for i in 0..20 {
        let s = if i % 2 == 0 { &fx.a } else { &fx.b };
        s.audit(&entry("s", "MID001", 1, i, "ok")).unwrap();
    }
    let log = fx.b.audit_log("s").unwrap();
    assert_eq!(log.len(), 20);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e, &entry("s", "MID001", 1, i, "ok"));
    }
    assert!(fx.a.audit_log("other").unwrap().is_empty());
}

fn actions_lifecycle(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    let args = json!({"payment_id": "pay_1", "amount": 12.5});
    let id =
        fx.a.create_action("s", &m, 1, "call_1", "refund", &args)
            .unwrap();
    let id2 =
        fx.a.create_action("s", &m, 1, "call_2", "refund", &json!({}))
            .unwrap();
    let got = fx.b.action("s", &id).unwrap().unwrap();
    assert_eq!(got.status, ActionStatus::Pending);
    assert_eq!(got.args, args);
    assert_eq!(got.merchant, "MID001");
    assert_eq!(got.call_id, "call_1");
    assert!(fx.b.action("other", &id).unwrap().is_none());
    assert_eq!(fx.b.action_by_call("s", "call_1").unwrap().unwrap().id, id);
    assert!(fx.b.action_by_call("other", "call_1").unwrap().is_none());
    assert_eq!(fx.b.action_by_id(&id).unwrap().unwrap().session, "s");
    assert!(fx.b.action_by_id("act_none").unwrap().is_none());
    let pending =
        fx.b.actions_with_status(Some(ActionStatus::Pending), 10)
            .unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        vec![id.clone(), id2.clone()]
    );
    assert_eq!(fx.b.actions_with_status(None, 1).unwrap().len(), 1);
    // pending → rejected once; not again.
    assert!(fx
        .a
        .transition(&id2, &[ActionStatus::Pending], ActionStatus::Rejected, None)
        .unwrap());
    assert!(!fx
        .b
        .transition(&id2, &[ActionStatus::Pending], ActionStatus::Rejected, None)
        .unwrap());
    let rejected =
        fx.a.actions_with_status(Some(ActionStatus::Rejected), 10)
            .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].id, id2);
    // claim → executed with a result.
    assert!(fx.b.claim_execution(&id, "w1:t", |_| true).unwrap());
    let result = json!({"refund_id": "re_1"});
    assert!(fx
        .b
        .transition(
            &id,
            &[ActionStatus::Approved],
            ActionStatus::Executed,
            Some(&result)
        )
        .unwrap());
    let done = fx.a.action("s", &id).unwrap().unwrap();
    assert_eq!(done.status, ActionStatus::Executed);
    assert_eq!(done.result, Some(result));
    assert!(!fx.a.claim_execution(&id, "w2:t", |_| false).unwrap());
    assert!(fx
        .a
        .actions_with_status(Some(ActionStatus::Pending), 10)
        .unwrap()
        .is_empty());
}

fn claim_exactly_once(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    for round in 0..5 {
        let id =
            fx.a.create_action("s", &m, 1, &format!("c{round}"), "refund", &json!({}))
                .unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = if i % 2 == 0 {
                    fx.a.clone()
                } else {
                    fx.b.clone()
                };
                let (barrier, id) = (barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // Every other claimant is alive: only one may win.
                    s.claim_execution(&id, &format!("runner{i}"), |_| true)
                        .unwrap()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1, "round {round}");
        // A dead executor's approved action is taken over, once.
        assert!(fx.b.claim_execution(&id, "taker", |_| false).unwrap());
        assert!(!fx.a.claim_execution(&id, "other", |_| true).unwrap());
        assert_eq!(
            fx.a.action_by_id(&id).unwrap().unwrap().status,
            ActionStatus::Approved
        );
    }
}

fn transition_atomic(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    let id =
        fx.a.create_action("s", &m, 1, "c", "refund", &json!({}))
            .unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 {
                fx.a.clone()
            } else {
                fx.b.clone()
            };
            let (barrier, id) = (barrier.clone(), id.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let to = if i % 2 == 0 {
                    ActionStatus::Rejected
                } else {
                    ActionStatus::Approved
                };
                s.transition(&id, &[ActionStatus::Pending], to, None)
                    .unwrap()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
    let status = fx.b.action_by_id(&id).unwrap().unwrap().status;
    let listed: usize = [
        ActionStatus::Pending,
        ActionStatus::Approved,
        ActionStatus::Rejected,
    ]
    .into_iter()
    .map(|s| fx.a.actions_with_status(Some(s), 10).unwrap().len())
    .sum();
    assert_eq!(listed, 1, "the action is listed under exactly one status");
    assert_eq!(
        fx.a.actions_with_status(Some(status), 10).unwrap()[0].id,
        id
    );
}

fn stats_counters(fx: Fx) {
    assert_eq!(fx.a.stats().unwrap(), memex::agent::Stats::default());
    let m = mid("MID001");
    fx.a.begin_session("s1", &m).unwrap();
    fx.b.begin_session("s2", &m).unwrap();
    fx.b.begin_session("s1", &m).unwrap();
    for i in 1..=10 {
        let outcome = match i {
            1..=6 => "answer",
            7 => "pending_action",
            8 => "escalation",
            _ => "error",
        };
        let s = if i % 2 == 0 { &fx.a } else { &fx.b };
        s.record_turn("s1", &m, i, &turn(outcome, f64::from(i) * 10.0))
            .unwrap();
    }
    for (i, status) in ["ok", "ok", "error", "loop_detected", "pending_approval"]
        .iter()
        .enumerate()
    {
        fx.a.audit(&entry("s1", "MID001", 1, i, status)).unwrap();
    }
    let s = fx.b.stats().unwrap();
    assert_eq!(s.sessions, 2);
    assert_eq!(s.turns, 10);
    assert!((s.success_rate - 0.7).abs() < 1e-9, "{s:?}");
    assert_eq!(s.tool_calls, 5);
    assert!((s.tool_failure_rate - 0.2).abs() < 1e-9, "{s:?}");
    assert_eq!(s.loop_detections, 1);
    assert_eq!(s.blocked_irreversible, 1);
    assert_eq!(s.escalations, 1);
    assert_eq!(s.llm_tokens, 150);
    assert_eq!(s.latency_ms.p50, 50.0);
    assert_eq!(s.latency_ms.p95, 100.0);
    assert_eq!(s.latency_ms.p99, 100.0);
    // Each model's share over the ten turns (a name with `:` and `|` survives).
    assert_eq!(s.models.len(), 2, "{:?}", s.models);
    let small = s.models.iter().find(|m| m.model == "small-model").unwrap();
    assert_eq!(
        (small.role.as_str(), small.turns, small.calls),
        ("tools", 10, 20)
    );
    assert_eq!((small.prompt_tokens, small.completion_tokens), (60, 20));
    assert!((small.latency_ms - 137.5).abs() < 1e-6, "{small:?}");
    assert!((small.mean_call_ms - 6.875).abs() < 1e-6, "{small:?}");
    let big = s.models.iter().find(|m| m.model == "big:model|v2").unwrap();
    assert_eq!(
        (big.role.as_str(), big.turns, big.calls),
        ("answer", 10, 10)
    );
    assert_eq!((big.prompt_tokens, big.completion_tokens), (40, 30));
    assert_eq!(s.models[0].model, "small-model", "most tokens first");
    assert_eq!(fx.a.stats().unwrap(), s);
}

fn turn_records_and_sessions(fx: Fx) {
    let (ma, mb) = (mid("MID001"), mid("MID002"));
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(1);
    fx.a.begin_session("a1", &ma).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    fx.b.begin_session("b1", &mb).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    fx.a.begin_session("a2", &ma).unwrap();
    fx.b.record_turn("a1", &ma, 1, &turn("clarification", 3.0))
        .unwrap();
    fx.a.record_turn("a1", &ma, 2, &turn("answer", 4.0))
        .unwrap();
    let turns = fx.b.turn_records("a1").unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].turn, 1);
    assert_eq!(turns[0].kind, "message");
    assert_eq!(turns[0].message, "a message ending in clarification");
    assert_eq!(turns[1].answer, "an answer ending in answer");
    assert_eq!(turns[1].outcome, "answer");
    assert_eq!(turns[1].models, turn("answer", 4.0).models);
    assert_eq!(turns[1].context["latency"], json!(4.0));
    assert_eq!(
        (turns[1].prompt_tokens, turns[1].completion_tokens),
        (10, 5)
    );
    assert!(fx.a.turn_records("nobody").unwrap().is_empty());

    let all: Vec<String> =
        fx.a.sessions(None, None)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    assert_eq!(all, ["a1", "b1", "a2"]);
    let of_a = fx.b.sessions(Some(&ma), Some(t0)).unwrap();
    assert_eq!(
        of_a.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert!(of_a
        .iter()
        .all(|s| s.merchant == "MID001" && !s.created_at.is_empty()));
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert!(fx.a.sessions(None, Some(later)).unwrap().is_empty());
    assert!(fx
        .a
        .sessions(Some(&mid("MID404")), None)
        .unwrap()
        .is_empty());
}

fn forget_per_merchant(fx: Fx) {
    let (ma, mb) = (mid("MID001"), mid("MID002"));
    let hostile = ["a:b*", "../x", "s{1}", "sess:x"];
    for s in &hostile {
        fx.a.begin_session(s, &ma).unwrap();
        fx.a.audit(&entry(s, "MID001", 1, 1, "ok")).unwrap();
        fx.a.record_turn(s, &ma, 1, &turn("answer", 1.0)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let cutoff = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(20));
    fx.b.begin_session("late", &ma).unwrap();
    fx.b.begin_session("b1", &mb).unwrap();
    fx.b.audit(&entry("b1", "MID002", 1, 7, "ok")).unwrap();
    fx.b.record_turn("b1", &mb, 1, &turn("answer", 1.0))
        .unwrap();

    let mut expected: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
    let before = fx.b.merchant_sessions(&ma, Some(cutoff)).unwrap();
    let got: HashSet<&String> = before.iter().collect();
    assert_eq!(got, expected.iter().collect::<HashSet<_>>());
    expected.push("late".into());
    assert_eq!(fx.a.merchant_sessions(&ma, None).unwrap().len(), 5);
    assert_eq!(
        fx.a.merchant_sessions(&mb, None).unwrap(),
        vec!["b1".to_string()]
    );
    assert!(fx
        .a
        .merchant_sessions(&mid("MID003"), None)
        .unwrap()
        .is_empty());

    // Asking to redact merchant B's session as merchant A touches nothing of B's.
    let mut ask = before.clone();
    ask.push("b1".into());
    let r = fx.a.redact_sessions(&ma, &ask).unwrap();
    assert_eq!(r.audit_rows, 4);
    assert_eq!(r.turns, 4);
    for s in &hostile {
        let log = fx.b.audit_log(s).unwrap();
        assert_eq!(log[0].args, json!("[forgotten]"));
        assert_eq!(log[0].result, json!("[forgotten]"));
        assert_eq!(log[0].status, "ok");
        assert_eq!(
            fx.b.turn_contexts(s).unwrap(),
            vec![json!({"forgotten": true})]
        );
    }
    assert_eq!(
        fx.a.audit_log("b1").unwrap()[0],
        entry("b1", "MID002", 1, 7, "ok")
    );
    assert_ne!(
        fx.a.turn_contexts("b1").unwrap()[0],
        json!({"forgotten": true})
    );
    // The turns' message and answer go with the context.
    for s in &hostile {
        let t = &fx.b.turn_records(s).unwrap()[0];
        assert_eq!(
            (t.message.as_str(), t.answer.as_str()),
            ("[forgotten]", "[forgotten]")
        );
        assert_eq!(t.outcome, "answer");
    }
    assert_ne!(fx.a.turn_records("b1").unwrap()[0].message, "[forgotten]");
    // Safe to repeat: nothing changes the second time.
    let again = fx.b.redact_sessions(&ma, &ask).unwrap();
    assert_eq!(again, memex::agent::Redacted::default());
}

fn session_locks(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    assert!(fx.a.lock_session("s", "h1", |_| true).unwrap());
    assert!(fx.a.lock_session("s", "h1", |_| true).unwrap());
    assert!(!fx.b.lock_session("s", "h2", |_| true).unwrap());
    // A holder found dead is taken over.
    assert!(fx.b.lock_session("s", "h2", |h| h != "h1").unwrap());
    fx.a.unlock_session("s", "h1").unwrap();
    assert!(!fx.a.lock_session("s", "h1", |_| true).unwrap());
    fx.b.unlock_session("s", "h2").unwrap();
    assert!(fx.a.lock_session("s", "h1", |_| true).unwrap());
}

fn keys_shared(fx: Fx) {
    let (ka, kb) = (fx.keys(), fx.keys());
    let m = mid("MID001");
    let merchant = ka.create(Some(&m), Some("bot")).unwrap();
    let admin = kb.create(None, None).unwrap();
    let owner = kb.authenticate(&merchant.key).unwrap().unwrap();
    assert_eq!(owner.merchant, Some(m));
    assert_eq!(owner.id, merchant.id);
    assert_eq!(
        ka.authenticate(&admin.key).unwrap().unwrap().role,
        memex::serve::keys::Role::Admin
    );
    assert!(ka.authenticate("mx_wrong").unwrap().is_none());
    let listed = ka.list().unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        vec![merchant.id.clone(), admin.id.clone()]
    );
    assert_eq!(listed[0].name.as_deref(), Some("bot"));
    let json = serde_json::to_string(&listed).unwrap();
    assert!(!json.contains(&merchant.key) && !json.contains(&admin.key));
    kb.revoke(&merchant.id).unwrap();
    kb.revoke(&merchant.id).unwrap();
    assert!(ka.authenticate(&merchant.key).unwrap().is_none());
    assert!(ka.list().unwrap()[0].revoked_at.is_some());
    assert!(ka.authenticate(&admin.key).unwrap().is_some());
    assert!(matches!(
        ka.revoke("key_none"),
        Err(memex::serve::keys::KeyError::NotFound(_))
    ));
}

fn runner_leases(fx: Fx) {
    let (la, lb) = (fx.a.runner_locks(), fx.b.runner_locks());
    let held = la.try_own("plan", "p1").unwrap().expect("free");
    assert!(lb.try_own("plan", "p1").unwrap().is_none());
    assert!(la.try_own("plan", "p1").unwrap().is_none());
    assert!(lb.try_own("plan", "p2").unwrap().is_some());
    assert!(lb.try_own("action", "p1").unwrap().is_some());
    // A live holder keeps its lease past the ttl (renewal).
    std::thread::sleep(fx.lease_ttl * 3);
    assert!(lb.try_own("plan", "p1").unwrap().is_none());
    drop(held);
    let again = lb.try_own("plan", "p1").unwrap().expect("released on drop");
    // A holder that stops renewing (a crashed worker) is taken over once its lease expires.
    again.abandon();
    let limit = fx.lease_ttl * 4 + Duration::from_secs(5);
    let mut taken = None;
    assert!(eventually(limit, || {
        taken = la.try_own("plan", "p1").unwrap();
        taken.is_some()
    }));
    assert!(lb.try_own("plan", "p1").unwrap().is_none());
    // Hostile names stay separate things.
    let x = la.try_own("session", "a:b*").unwrap().expect("free");
    assert!(lb.try_own("session", "a:b").unwrap().is_some());
    assert!(lb.try_own("session", "a:b*").unwrap().is_none());
    drop(x);
}

/// Forgetting a session redacts every one of its actions, also two made for the same call id
/// (MCP clients of one merchant reuse JSON-RPC ids), and rejects the pending ones so none can
/// run with the forgotten words; another merchant's action is untouched.
fn forget_redacts_every_action_of_a_session(fx: Fx) {
    let m = mid("MID001");
    fx.a.begin_session("s", &m).unwrap();
    let secret = json!({"reason": "zqx private words"});
    let first =
        fx.a.create_action("s", &m, 1, "mcp:1", "refund", &secret)
            .unwrap();
    let second =
        fx.b.create_action("s", &m, 1, "mcp:1", "refund", &secret)
            .unwrap();
    let other = mid("MID002");
    fx.a.begin_session("t", &other).unwrap();
    let theirs =
        fx.a.create_action("t", &other, 1, "mcp:1", "refund", &secret)
            .unwrap();
    let r = fx.b.redact_sessions(&m, &["s".to_string()]).unwrap();
    assert_eq!(r.actions, 2, "{r:?}");
    for id in [&first, &second] {
        let a = fx.a.action_by_id(id).unwrap().unwrap();
        assert_eq!(a.args, json!("[forgotten]"));
        assert_eq!(a.status, ActionStatus::Rejected, "{id}");
    }
    let kept = fx.a.action_by_id(&theirs).unwrap().unwrap();
    assert_eq!(kept.args, secret);
    assert_eq!(kept.status, ActionStatus::Pending);
    // Safe to repeat.
    assert_eq!(
        fx.a.redact_sessions(&m, &["s".to_string()])
            .unwrap()
            .actions,
        0
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite_backend {
            $( #[test] fn $case() { super::$case(super::sqlite()) } )*
        }
        mod redis_backend {
            $( #[test] fn $case() { super::$case(super::redis()) } )*
        }
    };
}

conformance!(
    sessions_and_turns,
    audit_order,
    actions_lifecycle,
    claim_exactly_once,
    transition_atomic,
    stats_counters,
    turn_records_and_sessions,
    forget_per_merchant,
    forget_redacts_every_action_of_a_session,
    session_locks,
    keys_shared,
    runner_leases,
);

#[test]
fn redis_gone_is_a_typed_error_naming_the_server_without_its_password() {
    let mut server = redis_support::RedisServer::spawn_with_password("hunter2");
    let url = server.url();
    let store = AgentStore::open_redis(&url, TTL).unwrap();
    server.stop();
    let err = store.begin_session("s", &mid("MID001")).unwrap_err();
    assert!(matches!(err, AgentError::Redis(_)), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains(&format!(":{}", server.port())), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(std::error::Error::source(&err).is_some());
}
