//! Plan validation, before anything runs: well-formed unique step ids, known tools, arguments
//! that satisfy each tool's schema (with `$ref` values checked for form and target instead),
//! dependencies that exist and are not the step itself, references only to other steps of the
//! plan (a reference adds its step to `depends_on`, so it always runs first), no cycles, no step
//! repeating another's exact call, and at most a configured number of steps. Every problem
//! found is reported, as a sentence the model can act on.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::plan::{shown, DraftStep};
use super::refs;
use crate::tools::ToolRegistry;

pub use super::plan::{valid_step_id, MAX_STEP_ID_LEN};

/// Validates `steps` against `tools`; returns them with arguments normalised by their
/// schemas, or every problem found.
pub fn validate(
    steps: &[DraftStep],
    tools: &ToolRegistry,
    max_steps: usize,
) -> Result<Vec<DraftStep>, Vec<String>> {
    let mut errors = Vec::new();
    if steps.is_empty() {
        return Err(vec!["the plan has no steps".to_string()]);
    }
    if steps.len() > max_steps {
        errors.push(format!(
            "the plan has {} steps; the limit is {max_steps}: combine or drop steps",
            steps.len()
        ));
    }
    // Ids.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        if !valid_step_id(&s.id) {
            errors.push(format!(
                "step {}: a step id must be 1 to {MAX_STEP_ID_LEN} letters, digits, _ or - (e.g. \"1\")",
                shown(&s.id)
            ));
        } else if index.insert(s.id.as_str(), i).is_some() {
            errors.push(format!(
                "step id {} is used by more than one step",
                shown(&s.id)
            ));
        }
    }
    // Tools and arguments.
    let mut out = steps.to_vec();
    for (i, s) in steps.iter().enumerate() {
        if tools.get(&s.tool).is_none() {
            errors.push(format!(
                "step {}: unknown tool {}; available tools: {}",
                shown(&s.id),
                shown(&s.tool),
                tools.names().join(", ")
            ));
            continue;
        }
        let mut ref_errors = Vec::new();
        let (masked, removed) = mask_refs(&s.args, &mut ref_errors);
        for e in ref_errors {
            errors.push(format!("step {}: {e}", shown(&s.id)));
        }
        match tools.validate(&s.tool, &masked.to_string()) {
            Ok(normalised) => {
                if removed.is_empty() {
                    out[i].args = normalised;
                }
            }
            Err(crate::tools::ArgError::Schema { violations, .. }) => {
                let tolerated: HashSet<String> = removed
                    .iter()
                    .map(|(parent, key)| {
                        let msg = format!(
                            "missing required property {}",
                            crate::tools::quote_for_display(key)
                        );
                        if parent.is_empty() {
                            msg
                        } else {
                            format!("{parent}: {msg}")
                        }
                    })
                    .collect();
                let left: Vec<String> = violations
                    .into_iter()
                    .filter(|v| !tolerated.contains(v))
                    .collect();
                if !left.is_empty() {
                    errors.push(format!(
                        "step {}: invalid arguments for {}: {}",
                        shown(&s.id),
                        s.tool,
                        left.join("; ")
                    ));
                }
            }
            Err(e) => errors.push(format!("step {}: {e}", shown(&s.id))),
        }
    }
    // References: a step may only use the output of a step that runs before it. A reference
    // to a step not listed in `depends_on` makes that step an implicit dependency.
    for (i, s) in steps.iter().enumerate() {
        for text in refs::refs_in(&s.args) {
            let Ok(r) = refs::parse(&text) else { continue };
            if r.step == s.id {
                errors.push(format!(
                    "step {}: $ref {} refers to the step itself",
                    shown(&s.id),
                    shown(&text)
                ));
            } else if !index.contains_key(r.step.as_str()) {
                errors.push(format!(
                    "step {}: $ref {} names step {}, which is not in the plan",
                    shown(&s.id),
                    shown(&text),
                    shown(&r.step)
                ));
            } else if !out[i].depends_on.contains(&r.step) {
                out[i].depends_on.push(r.step.clone());
            }
        }
    }
    // Dependencies.
    let mut deps_ok = true;
    for s in steps {
        let mut seen = HashSet::new();
        for d in &s.depends_on {
            if d == &s.id {
                errors.push(format!("step {} depends on itself", shown(&s.id)));
                deps_ok = false;
            } else if !index.contains_key(d.as_str()) {
                errors.push(format!(
                    "step {} depends on {}, which is not a step of this plan",
                    shown(&s.id),
                    shown(d)
                ));
                deps_ok = false;
            } else if !seen.insert(d.as_str()) {
                errors.push(format!(
                    "step {} lists dependency {} twice",
                    shown(&s.id),
                    shown(d)
                ));
            }
        }
    }
    if deps_ok {
        if let Some(cycle) = find_cycle(&out, &index) {
            errors.push(format!(
                "the dependencies form a cycle: {}; a plan must be acyclic",
                cycle
                    .iter()
                    .map(|i| shown(&out[*i].id))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ));
        }
    }
    // The plan-level loop guard: the same call twice.
    let mut calls: HashMap<String, &str> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        if !refs::refs_in(&s.args).is_empty() {
            continue;
        }
        let key = crate::agent::guards::call_key(&s.tool, &out[i].args);
        if let Some(first) = calls.get(&key) {
            errors.push(format!(
                "step {} repeats step {}'s call exactly (same tool and arguments); use {{\"$ref\": \"{}.result\"}} instead",
                shown(&s.id),
                shown(first),
                first
            ));
        } else {
            calls.insert(key, s.id.as_str());
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `args` without its `$ref` values (so the rest can be schema-checked), the (parent path,
/// key) of every reference removed from an object, and form errors of the references.
fn mask_refs(args: &Value, errors: &mut Vec<String>) -> (Value, Vec<(String, String)>) {
    let mut removed = Vec::new();
    let masked = mask(args, "", &mut removed, errors);
    (masked, removed)
}

fn mask(
    v: &Value,
    path: &str,
    removed: &mut Vec<(String, String)>,
    errors: &mut Vec<String>,
) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, x) in map {
                if let Some(text) = refs::as_ref_text(x) {
                    if let Err(e) = refs::parse(text) {
                        errors.push(e.0);
                    }
                    removed.push((path.to_string(), k.clone()));
                    continue;
                }
                if let Value::Object(inner) = x {
                    if inner.contains_key("$ref") {
                        errors.push(format!(
                            "{}: a reference must be {{\"$ref\": \"STEP.result.FIELD\"}} with nothing else",
                            shown(k)
                        ));
                    }
                }
                if let Value::Array(items) = x {
                    if items.iter().any(|i| refs::as_ref_text(i).is_some()) {
                        // A list holding references is checked once resolved, as a whole.
                        for t in items.iter().filter_map(refs::as_ref_text) {
                            if let Err(e) = refs::parse(t) {
                                errors.push(e.0);
                            }
                        }
                        removed.push((path.to_string(), k.clone()));
                        continue;
                    }
                }
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.insert(k.clone(), mask(x, &child, removed, errors));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    if let Some(text) = refs::as_ref_text(x) {
                        if let Err(e) = refs::parse(text) {
                            errors.push(e.0);
                        }
                        None
                    } else {
                        Some(mask(x, &format!("{path}[{i}]"), removed, errors))
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A cycle among the steps, as step indexes (first repeated at the end), if there is one.
fn find_cycle(steps: &[DraftStep], index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = finished.
    let mut state = vec![0u8; steps.len()];
    let mut path: Vec<usize> = Vec::new();
    fn dfs(
        i: usize,
        steps: &[DraftStep],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for d in &steps[i].depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            if state[j] == 1 {
                let start = path.iter().position(|&p| p == j).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if state[j] == 0 {
                if let Some(c) = dfs(j, steps, index, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..steps.len() {
        if state[i] == 0 {
            if let Some(mut c) = dfs(i, steps, index, &mut state, &mut path) {
                // Walk it in execution order (dependency first) for the message.
                c.reverse();
                return Some(c);
            }
        }
    }
    None
}
