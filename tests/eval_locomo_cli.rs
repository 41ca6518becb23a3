//! `memex eval locomo` on a slice of one LoCoMo conversation (sessions 1–2 of conversation 26,
//! `tests/fixtures/locomo_26_s1_s2.json`), through the real binary and model. The expected
//! recall is recomputed here from the fixture and the retrieved turn ids, independently of the
//! evaluator's own scoring.

use crate::support::model;

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/locomo_26_s1_s2.json"
);

/// (category, evidence ids, question).
type Q = (u64, Vec<String>, String);

/// (category, evidence ids, question) of every question of categories 1–4 with evidence,
/// parsed the way the dataset README says.
fn questions() -> (HashSet<String>, Vec<Q>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let mut turns = HashSet::new();
    for s in ["session_1", "session_2"] {
        for t in v[s].as_array().unwrap() {
            turns.insert(t["dia_id"].as_str().unwrap().to_owned());
        }
    }
    let mut out = Vec::new();
    for q in v["qa"].as_array().unwrap() {
        let cat = q["category"].as_u64().unwrap();
        let mut ev: Vec<String> = Vec::new();
        for e in q["evidence"].as_array().unwrap() {
            for p in e.as_str().unwrap().split(';') {
                let p = p.trim().to_owned();
                if !p.is_empty() && !ev.contains(&p) {
                    ev.push(p);
                }
            }
        }
        if (1..=4).contains(&cat) && !ev.is_empty() {
            out.push((cat, ev, q["question"].as_str().unwrap().to_owned()));
        }
    }
    (turns, out)
}

#[test]
fn eval_locomo_reports_recall_that_matches_an_independent_count() {
    let (turns, qs) = questions();
    let out = Command::new(env!("CARGO_BIN_EXE_memex"))
        .env_remove("MEMEX_EPISODIC_URL")
        .env("MEMEX_LOG", "warn")
        .env("MEMEX_MODEL_DIR", model::model_dir())
        .args([
            "eval",
            "locomo",
            FIXTURE,
            "-k",
            "1,5,10",
            "--json",
            "--details",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["episodes"], turns.len() as u64);
    assert_eq!(report["questions"], qs.len() as u64);
    let details = report["details"].as_array().unwrap();
    assert_eq!(details.len(), qs.len());

    let mut sums = [0f64; 3];
    let mut any_sums = [0f64; 3];
    let mut all_sums = [0f64; 3];
    let mut per_cat: std::collections::BTreeMap<u64, (usize, f64)> = Default::default();
    for (d, (cat, ev, question)) in details.iter().zip(&qs) {
        assert_eq!(
            d["question"].as_str().unwrap(),
            question,
            "questions keep file order"
        );
        let retrieved: Vec<String> = d["retrieved"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(retrieved.len(), 10);
        let unique: HashSet<&String> = retrieved.iter().collect();
        assert_eq!(unique.len(), 10, "no turn twice");
        assert!(retrieved.iter().all(|r| turns.contains(r)));
        for (i, k) in [1usize, 5, 10].into_iter().enumerate() {
            let hit = ev.iter().filter(|e| retrieved[..k].contains(e)).count();
            let r = hit as f64 / ev.len() as f64;
            sums[i] += r;
            any_sums[i] += f64::from(u8::from(hit > 0));
            all_sums[i] += f64::from(u8::from(hit == ev.len()));
            if k == 10 {
                let e = per_cat.entry(*cat).or_default();
                e.0 += 1;
                e.1 += r;
            }
        }
    }
    for (i, k) in ["1", "5", "10"].into_iter().enumerate() {
        let expected = sums[i] / qs.len() as f64;
        let got = report["recall"][k].as_f64().unwrap();
        assert!((got - expected).abs() < 1e-9, "R@{k}: {got} vs {expected}");
        // any@k and all@k, as other LoCoMo retrieval reports give them.
        let any = report["any"][k].as_f64().unwrap();
        let all = report["all"][k].as_f64().unwrap();
        assert!(
            (any - any_sums[i] / qs.len() as f64).abs() < 1e-9,
            "any@{k}"
        );
        assert!(
            (all - all_sums[i] / qs.len() as f64).abs() < 1e-9,
            "all@{k}"
        );
        assert!(all <= got && got <= any, "all@k <= recall@k <= any@k");
    }
    for (cat, (n, sum)) in per_cat {
        let c = &report["per_category"][cat.to_string()];
        assert_eq!(c["questions"], n as u64);
        assert!((c["recall"]["10"].as_f64().unwrap() - sum / n as f64).abs() < 1e-9);
    }
    // Far better than chance (10 of 35 turns is 0.29) on this slice.
    assert!(report["recall"]["10"].as_f64().unwrap() > 0.5, "{report}");
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50);
}
