//! Planner overhead, excluding LLM calls: planning-reply parsing, validation, persistence of
//! the plan and of every step transition, scheduling, reference resolution, guards and the
//! audit log, for a 10-step plan over instant tools; the model is a `ScriptedModel` that
//! answers instantly (the plan, then the summary). Peer in the same run: the same 10 tool
//! calls made directly, one after the other, with no planner.
//!
//! Also: the wall time of a plan with two independent 200 ms steps (target ≤ 300 ms), next to
//! the same plan with the concurrency bound set to 1 (the steps then run one after the other).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Silent};
use memex::conversation::SqliteConversationStore;
use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::llm::{ChatResponse, ResponseFormat, ScriptedModel};
use memex::merchant::MerchantId;
use memex::planner::{Planner, PlannerConfig};
use memex::tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{json, Value};

/// An instant tool that echoes its arguments.
struct Echo {
    name: String,
    schema: Value,
}

#[async_trait]
impl Tool for Echo {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        "Echoes its input."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        Ok(json!({"echo": args["x"], "id": format!("obj_{}", args["x"])}))
    }
}

/// Sleeps 200 ms.
struct Sleep {
    schema: Value,
}

#[async_trait]
impl Tool for Sleep {
    fn name(&self) -> &str {
        "sleep_200ms"
    }
    fn description(&self) -> &str {
        "Waits 200 ms."
    }
    fn parameters(&self) -> &Value {
        &self.schema
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, ToolError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(json!({"slept": args["x"]}))
    }
}

/// A 10-step diamond-shaped plan over the echo tools with `$ref`s between steps.
fn ten_step_plan() -> String {
    let mut steps =
        vec![json!({"id": "1", "tool": "echo_0", "args": {"x": "root"}, "depends_on": []})];
    for i in 2..=5 {
        steps.push(
            json!({"id": i.to_string(), "tool": format!("echo_{}", i % 4),
            "args": {"x": {"$ref": "1.result.id"}, "n": i}, "depends_on": ["1"]}),
        );
    }
    steps.push(
        json!({"id": "6", "tool": "echo_1", "args": {"x": {"$ref": "2.result.id"}, "n": 6},
        "depends_on": ["2", "3", "4", "5"]}),
    );
    for i in 7..=8 {
        steps.push(json!({"id": i.to_string(), "tool": "echo_2", "args": {"x": {"$ref": "6.result.echo"}, "n": i}, "depends_on": ["6"]}));
    }
    steps.push(
        json!({"id": "9", "tool": "echo_3", "args": {"x": "nine"}, "depends_on": ["7", "8"]}),
    );
    steps.push(json!({"id": "10", "tool": "echo_0", "args": {"x": {"$ref": "9.result.id"}}, "depends_on": ["9"]}));
    json!({"steps": steps}).to_string()
}

fn registry() -> ToolRegistry {
    let schema = json!({"type": "object", "properties": {"x": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["x"], "additionalProperties": false});
    let mut tools: Vec<Arc<dyn Tool>> = (0..4)
        .map(|i| {
            Arc::new(Echo {
                name: format!("echo_{i}"),
                schema: schema.clone(),
            }) as Arc<dyn Tool>
        })
        .collect();
    tools.push(Arc::new(Sleep { schema }));
    ToolRegistry::with_tools(tools).expect("tools")
}

fn planner(
    dir: &std::path::Path,
    embedder: Arc<dyn Embedder>,
    plan: String,
    rt: &tokio::runtime::Runtime,
    max_concurrency: usize,
) -> Planner {
    let model = ScriptedModel::from_fn(move |req| {
        Ok(
            if matches!(req.response_format, Some(ResponseFormat::JsonObject)) {
                ChatResponse::text(plan.clone())
            } else {
                ChatResponse::text("All steps finished.")
            },
        )
    });
    let episodes = rt
        .block_on(memex::episodic::open(None, dir))
        .expect("episodes");
    // The benchmark measures the planner, not the rate limiter.
    let config = AgentConfig {
        tool_rate: (1e9, 1e9),
        llm_rate: (1e9, 1e9),
        ..AgentConfig::default()
    };
    let agent = Agent::new(AgentParts {
        model: Arc::new(model),
        tools: registry(),
        embedder,
        kb: None,
        episodes,
        conversations: Arc::new(SqliteConversationStore::open_in(dir).expect("conversations")),
        store: Arc::new(AgentStore::open_in(dir).expect("store")),
        config,
    });
    Planner::new(
        Arc::new(agent),
        PlannerConfig {
            use_memory: false,
            save_episode: false,
            max_concurrency,
            ..PlannerConfig::default()
        },
    )
    .expect("planner")
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99))
}

fn bench(c: &mut Criterion) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let embedder: Arc<dyn Embedder> = Arc::new(
        MiniLmEmbedder::load(
            &root.join("models/all-MiniLM-L6-v2"),
            EmbedderOptions::default(),
        )
        .expect("model loads"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mid = MerchantId::parse("MID001").expect("merchant");
    let plan = ten_step_plan();
    let p = planner(dir.path(), Arc::clone(&embedder), plan.clone(), &rt, 4);

    // Sanity: the plan runs to completion.
    let r = rt
        .block_on(p.run(&mid, "run the ten steps", &Silent))
        .expect("plan runs");
    assert_eq!(r.summary.done, 10, "{r:?}");

    // Direct peer: the same ten calls, sequential, no planner.
    let reg = registry();
    let ctx = ToolContext::new(mid.clone(), "bench");
    let direct_calls: Vec<(String, Value)> = r
        .steps
        .iter()
        .map(|s| (s.tool.clone(), s.args.clone()))
        .collect();

    let n = 300;
    let mut planned = Vec::with_capacity(n);
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let r = rt
            .block_on(p.run(&mid, "run the ten steps", &Silent))
            .expect("plan");
        planned.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.summary.done, 10);
        let t0 = Instant::now();
        rt.block_on(async {
            for (tool, args) in &direct_calls {
                let t = reg.get(tool).expect("tool");
                t.call(args.clone(), &ctx).await.expect("call");
            }
        });
        direct.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (p50, p99) = percentiles(planned);
    let (d50, d99) = percentiles(direct);
    eprintln!(
        "planner, 10-step plan incl. plan + summary calls to an instant scripted model ({n} runs): p50 {p50:.3} ms, p99 {p99:.3} ms; the same 10 calls made directly: p50 {d50:.3} ms, p99 {d99:.3} ms; overhead p50 {:.3} ms",
        p50 - d50
    );

    // Two independent 200 ms steps, concurrent vs one slot.
    let two = json!({"steps": [
        {"id": "a", "tool": "sleep_200ms", "args": {"x": "a"}},
        {"id": "b", "tool": "sleep_200ms", "args": {"x": "b"}}
    ]})
    .to_string();
    for (label, slots) in [("concurrent (4 slots)", 4), ("one slot", 1)] {
        let d = tempfile::tempdir().expect("temp dir");
        let p2 = planner(d.path(), Arc::clone(&embedder), two.clone(), &rt, slots);
        let mut walls = Vec::new();
        for _ in 0..10 {
            let t0 = Instant::now();
            let r = rt
                .block_on(p2.run(&mid, "two slow checks", &Silent))
                .expect("plan");
            walls.push(t0.elapsed().as_secs_f64() * 1e3);
            assert_eq!(r.summary.done, 2);
        }
        let (w50, w99) = percentiles(walls);
        eprintln!(
            "two independent 200 ms steps, {label}: wall p50 {w50:.1} ms, max-ish p99 {w99:.1} ms"
        );
    }

    let mut g = c.benchmark_group("planner");
    g.sample_size(50);
    g.bench_function("run_10_step_plan", |b| {
        b.iter(|| {
            rt.block_on(p.run(&mid, "run the ten steps", &Silent))
                .expect("plan")
        })
    });
    g.bench_function("direct_10_calls", |b| {
        b.iter(|| {
            rt.block_on(async {
                for (tool, args) in &direct_calls {
                    let t = reg.get(tool).expect("tool");
                    t.call(args.clone(), &ctx).await.expect("call");
                }
            })
        })
    });
    g.bench_function("parse_and_validate_10_steps", |b| {
        b.iter(|| {
            let d = memex::planner::plan::parse_draft(&plan).expect("parses");
            memex::planner::validate::validate(&d, &reg, 12).expect("valid")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
