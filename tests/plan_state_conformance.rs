//! One conformance suite for the plan store on every state backend: each case runs against a
//! real SQLite file (`agent.db`) and a real `redis-server` of its own on a free loopback port.
//! Every case gets two store instances on the same backend — two "workers" — and checks that
//! what one writes the other reads, and that concurrent writers lose nothing.

use crate::support::redis as redis_support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use memex::planner::plan::DraftStep;
use memex::planner::store::{PlanRow, PlanStore};
use memex::planner::{PlanError, PlanStatus, StepStatus};
use memex::state::StateUrl;
use serde_json::{json, Value};

/// Two stores on one backend, and what must outlive them (a temp dir, a Redis server).
struct Pair {
    a: Arc<PlanStore>,
    b: Arc<PlanStore>,
    _guard: Box<dyn std::any::Any>,
}

fn sqlite_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let state = StateUrl::Sqlite(dir.path().join("agent.db"));
    Pair {
        a: Arc::new(PlanStore::open_state(&state).unwrap()),
        b: Arc::new(PlanStore::open_state(&state).unwrap()),
        _guard: Box::new(dir),
    }
}

fn redis_pair() -> Pair {
    let server = redis_support::RedisServer::spawn();
    let state = StateUrl::Redis(server.url());
    Pair {
        a: Arc::new(PlanStore::open_state(&state).unwrap()),
        b: Arc::new(PlanStore::open_state(&state).unwrap()),
        _guard: Box::new(server),
    }
}

fn draft(id: &str, tool: &str, args: Value, deps: &[&str]) -> DraftStep {
    DraftStep {
        id: id.into(),
        description: format!("step {id}"),
        tool: tool.into(),
        args,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

fn row(id: &str, merchant: &str, task: &str) -> PlanRow {
    PlanRow {
        id: id.into(),
        session: format!("ses_{}", uuid::Uuid::new_v4().simple()),
        merchant: merchant.into(),
        task: task.into(),
        status: PlanStatus::Planned,
        answer: None,
        turn: 3,
    }
}

fn three_steps() -> Vec<DraftStep> {
    vec![
        draft(
            "1",
            "get_transaction",
            json!({"transaction_id": "pay_1"}),
            &[],
        ),
        draft(
            "2",
            "get_merchant_account",
            json!({"merchant_id": {"$ref": "1.result.merchant_id"}}),
            &["1"],
        ),
        draft(
            "3",
            "search_knowledge_base",
            json!({"query": "T+2 ✓ \"quoted\" / slash"}),
            &["1", "2"],
        ),
    ]
}

// ---------------------------------------------------------------- cases

fn round_trip(p: Pair) {
    let r = row("plan_rt", "MID001", "look up pay_1");
    p.a.insert(&r, &three_steps()).unwrap();
    assert_eq!(p.b.plan("plan_rt").unwrap(), Some(r.clone()));
    let steps = p.b.steps("plan_rt").unwrap();
    assert_eq!(
        steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    for (s, d) in steps.iter().zip(three_steps()) {
        assert_eq!(s.status, StepStatus::Pending);
        assert_eq!(s.attempts, 0);
        assert_eq!(s.args, d.args);
        assert_eq!(s.depends_on, d.depends_on);
        assert_eq!(s.tool, d.tool);
        assert_eq!(s.description, d.description);
        assert_eq!(s.result, Value::Null);
        assert!(s.error.is_none() && s.started_at.is_none() && s.finished_at.is_none());
        assert!(s.action_id.is_none());
    }
    let planned = p.a.planned_args("plan_rt").unwrap();
    assert_eq!(planned.len(), 3);
    assert_eq!(planned[1].0, "2");
    assert_eq!(planned[1].1["merchant_id"]["$ref"], "1.result.merchant_id");

    // A different plan under a taken id is refused and changes nothing.
    let other = row("plan_rt", "MID002", "someone else's");
    assert!(p.b.insert(&other, &[]).is_err());
    assert_eq!(p.a.plan("plan_rt").unwrap(), Some(r));
    assert_eq!(p.a.steps("plan_rt").unwrap().len(), 3);

    assert_eq!(p.a.plan("plan_missing").unwrap(), None);
    assert!(p.a.steps("plan_missing").unwrap().is_empty());
    // A plan without steps is a plan.
    p.a.insert(&row("plan_empty", "MID001", "nothing"), &[])
        .unwrap();
    assert!(p.b.steps("plan_empty").unwrap().is_empty());
    assert!(p.b.plan("plan_empty").unwrap().is_some());
}

fn step_updates_and_status(p: Pair) {
    p.a.insert(&row("plan_up", "MID001", "t"), &three_steps())
        .unwrap();
    let resolved = json!({"merchant_id": "MID001"});
    p.a.update_step(
        "plan_up",
        "2",
        StepStatus::Running,
        1,
        Some(&resolved),
        None,
        None,
        None,
    )
    .unwrap();
    let s = &p.b.steps("plan_up").unwrap()[1];
    assert_eq!(s.status, StepStatus::Running);
    assert_eq!(s.attempts, 1);
    assert_eq!(
        s.args, resolved,
        "a step that ran shows its resolved arguments"
    );
    let started = s.started_at.clone().expect("a running step has started");
    assert!(s.finished_at.is_none());

    // A transient failure: the error is recorded, the resolved arguments kept.
    p.b.update_step(
        "plan_up",
        "2",
        StepStatus::Pending,
        1,
        None,
        None,
        Some("timeout"),
        None,
    )
    .unwrap();
    let s = &p.a.steps("plan_up").unwrap()[1];
    assert_eq!(s.error.as_deref(), Some("timeout"));
    assert_eq!(s.args, resolved);
    assert_eq!(s.started_at.as_deref(), Some(started.as_str()));

    // Held for approval: the action id is linked; then done, with the link kept.
    let held = json!({"approval": "needed"});
    p.a.update_step(
        "plan_up",
        "2",
        StepStatus::PendingApproval,
        2,
        None,
        Some(&held),
        None,
        Some("act_42"),
    )
    .unwrap();
    let result = json!({"id": "MID001", "name": "Priya ✓"});
    p.b.update_step(
        "plan_up",
        "2",
        StepStatus::Done,
        3,
        None,
        Some(&result),
        None,
        None,
    )
    .unwrap();
    let s = &p.a.steps("plan_up").unwrap()[1];
    assert_eq!(s.status, StepStatus::Done);
    assert_eq!(s.attempts, 3);
    assert_eq!(s.result, result);
    assert!(s.error.is_none(), "a later update clears the error");
    assert_eq!(s.action_id.as_deref(), Some("act_42"));
    assert!(s.finished_at.is_some());
    assert_eq!(
        p.b.planned_args("plan_up").unwrap()[1].1["merchant_id"]["$ref"],
        "1.result.merchant_id",
        "the planned arguments keep their references"
    );
    // The others are untouched.
    let steps = p.a.steps("plan_up").unwrap();
    assert_eq!(steps[0].status, StepStatus::Pending);
    assert_eq!(steps[2].status, StepStatus::Pending);

    // Updating a step or plan that does not exist creates nothing.
    p.a.update_step("plan_up", "9", StepStatus::Done, 1, None, None, None, None)
        .unwrap();
    assert_eq!(p.a.steps("plan_up").unwrap().len(), 3);
    p.a.update_step(
        "plan_nope",
        "1",
        StepStatus::Done,
        1,
        None,
        None,
        None,
        None,
    )
    .unwrap();
    assert!(p.b.steps("plan_nope").unwrap().is_empty());
    p.a.set_status("plan_nope", PlanStatus::Running, Some("x"))
        .unwrap();
    assert_eq!(p.b.plan("plan_nope").unwrap(), None);

    // Status and answer; a later status without an answer keeps it.
    p.a.set_status(
        "plan_up",
        PlanStatus::AwaitingApproval,
        Some("waiting for act_42"),
    )
    .unwrap();
    p.b.set_status("plan_up", PlanStatus::Running, None)
        .unwrap();
    let r = p.a.plan("plan_up").unwrap().unwrap();
    assert_eq!(r.status, PlanStatus::Running);
    assert_eq!(r.answer.as_deref(), Some("waiting for act_42"));
    p.b.set_status("plan_up", PlanStatus::Completed, Some("done ✓"))
        .unwrap();
    let r = p.a.plan("plan_up").unwrap().unwrap();
    assert_eq!(r.status, PlanStatus::Completed);
    assert_eq!(r.answer.as_deref(), Some("done ✓"));
}

fn concurrent_step_updates_lose_nothing(p: Pair) {
    const THREADS: usize = 8;
    const STEPS_EACH: usize = 2;
    const ROUNDS: u32 = 25;
    let steps: Vec<DraftStep> = (0..THREADS * STEPS_EACH)
        .map(|i| draft(&format!("s{i}"), "get_transaction", json!({"n": i}), &[]))
        .collect();
    p.a.insert(&row("plan_race", "MID001", "t"), &steps)
        .unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            // Half the threads write through one worker's store, half through the other's.
            let store = Arc::clone(if t % 2 == 0 { &p.a } else { &p.b });
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for round in 1..=ROUNDS {
                    for k in 0..STEPS_EACH {
                        let id = format!("s{}", t * STEPS_EACH + k);
                        let (status, result) = if round == ROUNDS {
                            (StepStatus::Done, Some(json!({"by": t, "step": id})))
                        } else {
                            (StepStatus::Running, None)
                        };
                        store
                            .update_step(
                                "plan_race",
                                &id,
                                status,
                                round,
                                None,
                                result.as_ref(),
                                None,
                                None,
                            )
                            .unwrap();
                    }
                    if round % 5 == 0 {
                        store
                            .set_status("plan_race", PlanStatus::Running, None)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let steps = p.a.steps("plan_race").unwrap();
    assert_eq!(steps.len(), THREADS * STEPS_EACH);
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.id, format!("s{i}"), "plan order kept");
        assert_eq!(s.status, StepStatus::Done, "{s:?}");
        assert_eq!(s.attempts, ROUNDS, "{s:?}");
        assert_eq!(s.result, json!({"by": i / STEPS_EACH, "step": s.id}));
        assert!(s.started_at.is_some() && s.finished_at.is_some());
    }
    assert_eq!(
        p.b.plan("plan_race").unwrap().unwrap().status,
        PlanStatus::Running
    );
}

fn claim_is_exclusive_and_released(p: Pair) {
    p.a.insert(&row("plan_claim", "MID001", "t"), &three_steps())
        .unwrap();
    const THREADS: usize = 8;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(if t % 2 == 0 { &p.a } else { &p.b });
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let me = format!("runner{t}");
                // Every other runner is alive.
                let won = store.claim("plan_claim", &me, |_| true).unwrap();
                (me, won)
            })
        })
        .collect();
    let results: Vec<(String, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&String> = results.iter().filter(|r| r.1).map(|r| &r.0).collect();
    assert_eq!(winners.len(), 1, "exactly one runner claims: {results:?}");
    let winner = winners[0].clone();
    let loser = results.iter().find(|r| !r.1).unwrap().0.clone();

    // The holder may claim again; others still may not; a stranger's release does nothing.
    assert!(p.b.claim("plan_claim", &winner, |_| true).unwrap());
    assert!(!p.a.claim("plan_claim", &loser, |_| true).unwrap());
    p.a.release("plan_claim", &loser).unwrap();
    assert!(!p.b.claim("plan_claim", &loser, |_| true).unwrap());
    // `alive` is asked about the holder, and only about it.
    let asked = std::sync::Mutex::new(Vec::new());
    assert!(!p
        .a
        .claim("plan_claim", &loser, |h| {
            asked.lock().unwrap().push(h.to_string());
            true
        })
        .unwrap());
    assert_eq!(*asked.lock().unwrap(), vec![winner.clone()]);

    // Released by its holder, the plan is free.
    p.b.release("plan_claim", &winner).unwrap();
    assert!(p.a.claim("plan_claim", &loser, |_| true).unwrap());
    // A dead holder is taken over.
    assert!(p
        .b
        .claim("plan_claim", "runner_new", |h| h != loser)
        .unwrap());
    assert!(!p.a.claim("plan_claim", &loser, |_| true).unwrap());

    match p.a.claim("plan_unknown", "r", |_| true) {
        Err(PlanError::UnknownPlan(id)) => assert_eq!(id, "plan_unknown"),
        other => panic!("claiming an unknown plan: {other:?}"),
    }
    assert_eq!(p.b.plan("plan_unknown").unwrap(), None, "no ghost plan");
    // Claims leave the plan itself alone.
    let r = p.a.plan("plan_claim").unwrap().unwrap();
    assert_eq!(r.task, "t");
    assert_eq!(p.a.steps("plan_claim").unwrap().len(), 3);
}

fn step_for_action(p: Pair) {
    p.a.insert(&row("plan_act", "MID001", "t"), &three_steps())
        .unwrap();
    p.a.insert(&row("plan_act2", "MID002", "t"), &three_steps())
        .unwrap();
    assert_eq!(p.b.step_for_action("act_1").unwrap(), None);
    p.a.update_step(
        "plan_act",
        "3",
        StepStatus::PendingApproval,
        1,
        None,
        None,
        None,
        Some("act_1"),
    )
    .unwrap();
    p.b.update_step(
        "plan_act2",
        "1",
        StepStatus::PendingApproval,
        1,
        None,
        None,
        None,
        Some("act_2"),
    )
    .unwrap();
    assert_eq!(
        p.b.step_for_action("act_1").unwrap(),
        Some(("plan_act".to_string(), "3".to_string()))
    );
    assert_eq!(
        p.a.step_for_action("act_2").unwrap(),
        Some(("plan_act2".to_string(), "1".to_string()))
    );
    // Later updates without an action id keep the link.
    p.a.update_step(
        "plan_act",
        "3",
        StepStatus::Done,
        2,
        None,
        Some(&json!({"ok": 1})),
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        p.b.step_for_action("act_1").unwrap(),
        Some(("plan_act".to_string(), "3".to_string()))
    );
    for hostile in ["act_*", "act_1*", "*", "", "act_1\n", "../act_1", "act:1"] {
        assert_eq!(p.a.step_for_action(hostile).unwrap(), None, "{hostile:?}");
    }
    // A missing step gets no link.
    p.a.update_step(
        "plan_act",
        "nope",
        StepStatus::PendingApproval,
        1,
        None,
        None,
        None,
        Some("act_3"),
    )
    .unwrap();
    assert_eq!(p.a.step_for_action("act_3").unwrap(), None);
}

fn list_order_filters_and_merchants(p: Pair) {
    let mut inserted = Vec::new();
    for (i, m) in ["MID001", "MID002", "MID001", "MID0011", "MID002", "MID001"]
        .iter()
        .enumerate()
    {
        let id = format!("plan_l{i}");
        let store = if i % 2 == 0 { &p.a } else { &p.b };
        store
            .insert(&row(&id, m, &format!("task {i}")), &[])
            .unwrap();
        inserted.push((id, m.to_string()));
        // Creation times are kept to the millisecond: keep them apart.
        std::thread::sleep(Duration::from_millis(15));
    }
    p.a.set_status("plan_l0", PlanStatus::Completed, Some("ok"))
        .unwrap();

    let all = p.b.list(None, 100).unwrap();
    let ids: Vec<&str> = all.iter().map(|l| l.plan_id.as_str()).collect();
    assert_eq!(
        ids,
        ["plan_l5", "plan_l4", "plan_l3", "plan_l2", "plan_l1", "plan_l0"]
    );
    assert_eq!(all[5].status, "completed");
    assert_eq!(all[5].task, "task 0");
    assert_eq!(all[0].status, "planned");
    for w in all.windows(2) {
        assert!(w[0].created_at >= w[1].created_at, "{w:?}");
    }

    let m1 = p.a.list(Some("MID001"), 100).unwrap();
    assert_eq!(
        m1.iter().map(|l| l.plan_id.as_str()).collect::<Vec<_>>(),
        ["plan_l5", "plan_l2", "plan_l0"]
    );
    assert!(m1.iter().all(|l| l.merchant == "MID001"), "{m1:?}");
    let m2 = p.b.list(Some("MID002"), 100).unwrap();
    assert_eq!(
        m2.iter().map(|l| l.plan_id.as_str()).collect::<Vec<_>>(),
        ["plan_l4", "plan_l1"]
    );
    assert!(m2.iter().all(|l| l.merchant == "MID002"));
    let m11 = p.a.list(Some("MID0011"), 100).unwrap();
    assert_eq!(m11.len(), 1);
    assert_eq!(m11[0].plan_id, "plan_l3");

    // Limits.
    let two = p.a.list(None, 2).unwrap();
    assert_eq!(
        two.iter().map(|l| l.plan_id.as_str()).collect::<Vec<_>>(),
        ["plan_l5", "plan_l4"]
    );
    assert_eq!(p.a.list(Some("MID001"), 1).unwrap()[0].plan_id, "plan_l5");
    assert!(p.a.list(None, 0).unwrap().is_empty());
    assert_eq!(p.a.list(None, usize::MAX).unwrap().len(), 6);

    // Nobody else's plans, and no patterns.
    for m in [
        "MID003", "MID00", "MID00*", "*", "MID00?", "", "MID001 ", "mid001",
    ] {
        assert!(p.b.list(Some(m), 100).unwrap().is_empty(), "{m:?}");
    }
}

fn hostile_plan_ids(p: Pair) {
    let long = "p".repeat(300);
    let hostile = [
        "a:b*",
        "../x",
        "{x}",
        "plan_h}:steps",
        "plan_h",
        "~706c616e5f68",
        "x y\nz",
        "é✓",
        "",
        "index:created",
        "action:act_1",
        long.as_str(),
    ];
    for (i, id) in hostile.iter().enumerate() {
        let steps = vec![draft("1", "get_transaction", json!({"i": i}), &[])];
        let store = if i % 2 == 0 { &p.a } else { &p.b };
        store
            .insert(
                &row(id, &format!("MID{i:03}"), &format!("task {i}")),
                &steps,
            )
            .unwrap();
    }
    for (i, id) in hostile.iter().enumerate() {
        let r =
            p.b.plan(id)
                .unwrap()
                .unwrap_or_else(|| panic!("{id:?} lost"));
        assert_eq!(r.task, format!("task {i}"), "{id:?}");
        assert_eq!(r.id, *id);
        let steps = p.a.steps(id).unwrap();
        assert_eq!(steps.len(), 1, "{id:?}");
        assert_eq!(steps[0].args, json!({"i": i}), "{id:?}");
    }
    // Each one's updates stay its own.
    p.a.update_step(
        "a:b*",
        "1",
        StepStatus::Done,
        1,
        None,
        Some(&json!(7)),
        None,
        Some("act_h"),
    )
    .unwrap();
    p.b.set_status("plan_h}:steps", PlanStatus::Completed, Some("h"))
        .unwrap();
    assert_eq!(p.b.steps("a:b*").unwrap()[0].status, StepStatus::Done);
    assert_eq!(
        p.b.step_for_action("act_h").unwrap(),
        Some(("a:b*".into(), "1".into()))
    );
    for id in hostile.iter().filter(|id| **id != "a:b*") {
        assert_eq!(
            p.a.steps(id).unwrap()[0].status,
            StepStatus::Pending,
            "{id:?}"
        );
    }
    assert_eq!(
        p.a.plan("plan_h}:steps").unwrap().unwrap().status,
        PlanStatus::Completed
    );
    assert_eq!(
        p.a.plan("plan_h").unwrap().unwrap().status,
        PlanStatus::Planned
    );
    assert!(p.a.claim("../x", "r1", |_| true).unwrap());
    assert!(!p.b.claim("../x", "r2", |_| true).unwrap());
    assert!(p.b.claim("{x}", "r2", |_| true).unwrap());
    // Patterns and near misses find nothing.
    for id in ["a:b", "a:*", "*", "..", "{x", "plan_h}", "p"] {
        assert_eq!(p.a.plan(id).unwrap(), None, "{id:?}");
    }
    let listed: HashSet<String> =
        p.a.list(None, 100)
            .unwrap()
            .into_iter()
            .map(|l| l.plan_id)
            .collect();
    assert_eq!(listed.len(), hostile.len());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::$case(super::sqlite_pair()) } )*
        }
        mod redis {
            $( #[test] fn $case() { super::$case(super::redis_pair()) } )*
        }
    };
}

conformance!(
    round_trip,
    step_updates_and_status,
    concurrent_step_updates_lose_nothing,
    claim_is_exclusive_and_released,
    step_for_action,
    list_order_filters_and_merchants,
    hostile_plan_ids,
);

// ---------------------------------------------------------------- Redis only

/// A Redis that is gone is a typed error naming it (never its password), at open and later.
#[test]
fn redis_gone_is_a_typed_error_without_the_password() {
    let mut server = redis_support::RedisServer::spawn_with_password("hunter2-secret");
    let url = server.url();
    assert!(
        url.contains("hunter2-secret"),
        "the test's URL carries the password"
    );
    let store = PlanStore::open_state(&StateUrl::Redis(url.clone())).unwrap();
    store
        .insert(&row("plan_gone", "MID001", "t"), &three_steps())
        .unwrap();
    server.stop();
    let err = store.plan("plan_gone").unwrap_err();
    assert!(matches!(err, PlanError::RedisUnreachable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
    let err = PlanStore::open_state(&StateUrl::Redis(url.clone())).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("unreachable") && !text.contains("hunter2"),
        "{text}"
    );

    // Back again (empty: this server keeps nothing), the same store reconnects by itself.
    server.restart();
    assert_eq!(store.plan("plan_gone").unwrap(), None);
    store.insert(&row("plan_back", "MID001", "t"), &[]).unwrap();
    assert!(store.plan("plan_back").unwrap().is_some());
    // A wrong password is refused with a typed error that does not repeat it.
    let wrong = url.replace("hunter2-secret", "badpass-xyz");
    let err = PlanStore::open_state(&StateUrl::Redis(wrong)).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::Redis { .. } | PlanError::RedisUnreachable { .. }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("badpass-xyz"), "{err:?}");
}
