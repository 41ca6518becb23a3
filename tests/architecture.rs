//! Architecture checks on the source tree itself.
//!
//! **No two files in `src/` import each other.** Every `src/**/*.rs` file is read, its
//! comments and literals stripped, and every path it names is collected: `use` trees and
//! paths in code (`crate::…`, `super::…`, `self::…`, or a child module's name `child::…`).
//! A path is resolved to a module (inline `mod x { … }` blocks, such as `mod tests`, are
//! followed), and the module to the file that holds it (`a.rs` or `a/mod.rs` is the module
//! `a`; `lib.rs` the crate root). A pair of files each naming the other fails the test, listed
//! with the paths that make each edge.
//!
//! What is not an import: `mod child;` (a declaration), and `pub use`/`pub(…) use`
//! re-exports (a module's public face, not code that depends on the child). So a child using
//! `super::Thing` while its parent's code uses `child::Other` is a cycle; a parent that only
//! declares and re-exports its children is not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["planner", "executor"]`) → file, relative to `src/`.
type Files = BTreeMap<Vec<String>, String>;

fn collect(dir: &Path, root: &Path, out: &mut Files) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "main.rs" || rel.starts_with("bin/") {
            continue;
        }
        let mut parts: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        if parts.last().map(String::as_str) == Some("mod") || rel == "lib.rs" {
            parts.pop();
        }
        out.insert(parts, rel);
    }
}

/// Identifiers and the punctuation the checker needs; comments, strings and chars dropped.
fn lex(src: &str) -> Vec<String> {
    lex_with(src, false)
}

/// As [`lex`]; with `keep_strings`, each string literal is one token: `"` and its raw content
/// (escapes left as written), so word checks can read what a string says.
fn lex_with(src: &str, keep_strings: bool) -> Vec<String> {
    let s: Vec<char> = src.chars().collect();
    let n = s.len();
    let mut toks = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_alphabetic() || c == '_';
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < n {
        let c = s[i];
        if c == '/' && i + 1 < n && s[i + 1] == '/' {
            while i < n && s[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && i + 1 < n && s[i + 1] == '*' {
            let mut depth = 1;
            i += 2;
            while i < n && depth > 0 {
                if s[i] == '/' && i + 1 < n && s[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && i + 1 < n && s[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            continue;
        }
        let prev_ident = i > 0 && ident_char(s[i - 1]);
        // Raw strings: r"…", r#"…"#, br#"…"#.
        if !prev_ident && (c == 'r' || (c == 'b' && i + 1 < n && s[i + 1] == 'r')) {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while j < n && s[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if j < n && s[j] == '"' {
                j += 1;
                let body = j;
                'raw: while j < n {
                    if s[j] == '"' && (0..hashes).all(|h| j + 1 + h < n && s[j + 1 + h] == '#') {
                        if keep_strings {
                            toks.push(format!("\"{}", s[body..j].iter().collect::<String>()));
                        }
                        j += 1 + hashes;
                        break 'raw;
                    }
                    j += 1;
                }
                i = j;
                continue;
            }
        }
        if c == '"' || (!prev_ident && c == 'b' && i + 1 < n && s[i + 1] == '"') {
            i += if c == 'b' { 2 } else { 1 };
            let body = i;
            while i < n && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            if keep_strings {
                toks.push(format!(
                    "\"{}",
                    s[body..i.min(n)].iter().collect::<String>()
                ));
            }
            i += 1;
            continue;
        }
        if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if i + 2 < n && s[i + 1] == '\\' {
                // Skip the backslash and the escaped character (which may be a quote).
                let mut j = i + 3;
                while j < n && s[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if i + 2 < n && s[i + 2] == '\'' {
                i += 3;
            } else {
                i += 1;
            }
            continue;
        }
        if ident_start(c) {
            let start = i;
            while i < n && ident_char(s[i]) {
                i += 1;
            }
            toks.push(s[start..i].iter().collect());
            continue;
        }
        if c == ':' && i + 1 < n && s[i + 1] == ':' {
            toks.push("::".into());
            i += 2;
            continue;
        }
        if !c.is_whitespace() {
            toks.push(c.to_string());
        }
        i += 1;
    }
    toks
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The file of the longest prefix of `module` that is a file.
fn file_of<'a>(files: &'a Files, module: &[String]) -> Option<&'a String> {
    (0..=module.len())
        .rev()
        .find_map(|k| files.get(&module[..k]))
}

/// Resolves `path`, named inside module `cur`, to a module path; `None` when it is not ours
/// (an extern crate, a local item).
fn resolve(files: &Files, path: &[String], cur: &[String]) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => Some([cur, &path[1..]].concat()),
        "super" => {
            let mut base = cur.to_vec();
            let mut i = 0;
            while i < path.len() && path[i] == "super" {
                base.pop();
                i += 1;
            }
            Some([&base[..], &path[i..]].concat())
        }
        _ => {
            let child = [cur, std::slice::from_ref(first)].concat();
            files.contains_key(&child).then(|| [cur, path].concat())
        }
    }
}

struct Scan<'a> {
    files: &'a Files,
    file: &'a str,
    toks: Vec<String>,
    /// Whether `pub use` re-exports count as imports (the layer check), or not (the cycle check).
    reexports: bool,
    /// target file → paths naming it
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Scan<'_> {
    fn add(&mut self, path: &[String], cur: &[String]) {
        let Some(module) = resolve(self.files, path, cur) else {
            return;
        };
        if let Some(target) = file_of(self.files, &module) {
            if target != self.file {
                self.edges
                    .entry(target.clone())
                    .or_default()
                    .insert(path.join("::"));
            }
        }
    }

    /// Parses one use tree starting at `i` under `prefix`; returns the index after it.
    fn use_tree(&mut self, mut i: usize, prefix: &[String], cur: &[String]) -> usize {
        let mut path = prefix.to_vec();
        loop {
            let Some(t) = self.toks.get(i).cloned() else {
                return i;
            };
            match t.as_str() {
                "{" => {
                    i += 1;
                    while i < self.toks.len() && self.toks[i] != "}" {
                        i = self.use_tree(i, &path, cur);
                        if self.toks.get(i).map(String::as_str) == Some(",") {
                            i += 1;
                        }
                    }
                    return i + 1;
                }
                "*" => {
                    if !path.is_empty() {
                        self.add(&path, cur);
                    }
                    return i + 1;
                }
                "::" => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if t == "self" && !path.is_empty() {
                self.add(&path, cur);
                i += 1;
            } else {
                path.push(t);
                i += 1;
            }
            if self.toks.get(i).map(String::as_str) == Some("as") {
                i += 2;
            }
            if self.toks.get(i).map(String::as_str) != Some("::") {
                if path.last().map(String::as_str) != Some("self") {
                    let p = path.clone();
                    self.add(&p, cur);
                }
                return i;
            }
        }
    }

    fn run(&mut self, module: &[String]) {
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        while i < self.toks.len() {
            let cur: Vec<String> = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(m, _)| m.clone()))
                .collect();
            let t = self.toks[i].clone();
            let prev = if i > 0 { self.toks[i - 1].as_str() } else { "" };
            if t == "mod" && self.toks.get(i + 2).map(String::as_str) == Some("{") {
                inline.push((self.toks[i + 1].clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            match t.as_str() {
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                }
                "use" if prev != "::" => {
                    // `pub use` / `pub(crate) use`: a re-export, not an import.
                    let mut k = i;
                    if k > 0 && self.toks[k - 1] == ")" {
                        while k > 0 && self.toks[k - 1] != "(" {
                            k -= 1;
                        }
                        k = k.saturating_sub(1);
                    }
                    if k > 0 && self.toks[k - 1] == "pub" && !self.reexports {
                        while i < self.toks.len() && self.toks[i] != ";" {
                            i += 1;
                        }
                        continue;
                    }
                    i = self.use_tree(i + 1, &[], &cur);
                    continue;
                }
                _ if is_ident(&t)
                    && self.toks.get(i + 1).map(String::as_str) == Some("::")
                    && !matches!(prev, "::" | "$" | "in") =>
                {
                    let mut path = vec![t.clone()];
                    let mut j = i + 1;
                    while j + 1 < self.toks.len()
                        && self.toks[j] == "::"
                        && is_ident(&self.toks[j + 1])
                    {
                        path.push(self.toks[j + 1].clone());
                        j += 2;
                    }
                    let ours = matches!(t.as_str(), "crate" | "self" | "super")
                        || self
                            .files
                            .contains_key(&[&cur[..], std::slice::from_ref(&t)].concat());
                    if ours {
                        self.add(&path, &cur);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// file → (file it names → the paths naming it); `pub use` re-exports are not imports.
fn import_graph(src: &Path) -> Graph {
    import_graph_with(src, false)
}

/// As [`import_graph`]; with `reexports`, a `pub use` names its target too.
fn import_graph_with(src: &Path, reexports: bool) -> Graph {
    let mut files = Files::new();
    collect(src, src, &mut files);
    assert!(
        files.len() > 20,
        "expected the crate's files under {}",
        src.display()
    );
    let mut graph = BTreeMap::new();
    for (module, file) in &files {
        let text =
            std::fs::read_to_string(src.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let mut scan = Scan {
            files: &files,
            file,
            toks: lex(&text),
            reexports,
            edges: BTreeMap::new(),
        };
        scan.run(module);
        graph.insert(file.clone(), scan.edges);
    }
    graph
}

fn pairs(graph: &Graph) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (a, edges) in graph {
        for (b, ab) in edges {
            if a < b {
                if let Some(ba) = graph.get(b).and_then(|e| e.get(a)) {
                    let list =
                        |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
                    out.push((
                        a.clone(),
                        b.clone(),
                        format!(
                            "src/{a} <-> src/{b}\n    {a} names {}\n    {b} names {}",
                            list(ab),
                            list(ba)
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn no_two_files_in_src_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let found = pairs(&graph);
    assert!(
        found.is_empty(),
        "{} pair(s) of files in src/ import each other (move the shared items into a module of \
         their own, or pass them in):\n{}",
        found.len(),
        found
            .iter()
            .map(|(_, _, why)| why.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker itself finds what it must: a child naming `super::Item` while the parent's code
/// names `child::Other`, sibling cycles, `crate::` paths in code, and it ignores comments,
/// strings, `mod tests` blocks, `mod child;` and `pub use` re-exports.
#[test]
fn the_checker_sees_cycles_and_ignores_non_imports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    // 22 filler modules so the tree looks like a crate.
    let mut lib = String::from("pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    for k in 0..22 {
        write(&format!("f{k}.rs"), "pub fn f() {}\n");
        lib.push_str(&format!("pub mod f{k};\n"));
    }
    write("lib.rs", &lib);
    // a: parent and child in a cycle (child `super::`, parent code `child::`).
    write(
        "a/mod.rs",
        "mod child;\npub struct Thing;\npub fn go() { child::Other::new(); }\n",
    );
    write(
        "a/child.rs",
        "use super::Thing;\npub struct Other;\nimpl Other { pub fn new() -> Self { Other } }\n",
    );
    // b: siblings in a cycle, one through a `crate::` path in code.
    write("b/mod.rs", "pub mod x;\npub mod y;\npub use x::X;\n");
    write(
        "b/x.rs",
        "pub struct X;\npub fn f() { crate::b::y::g(); }\n",
    );
    write("b/y.rs", "use super::{x::{self, X}};\npub fn g() {}\n");
    // c: only declarations, re-exports, comments, strings and a tests block: no cycle.
    write(
        "c/mod.rs",
        "mod inner;\npub use inner::Inner;\n// inner::Hidden in a comment\n\
         pub const S: &str = \"inner::Hidden\";\n/* inner::X */\n",
    );
    write(
        "c/inner.rs",
        "use super::super::f0;\npub struct Inner;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n\
         pub fn lt<'a>(s: &'a str) -> &'a str { let _ = '{'; let _ = '\\''; s }\n\
         pub fn q() -> &'static str { \"super::super::a::Thing\" }\n",
    );
    // d: `self::` and a grouped `use` reaching a deeper module.
    write("d/mod.rs", "pub mod e;\nuse self::e::deep::Z;\n");
    write("d/e/mod.rs", "pub mod deep;\n");
    write("d/e/deep.rs", "pub struct Z;\nuse crate::d::*;\n");
    let graph = import_graph(src);
    let found: Vec<(String, String)> = pairs(&graph).into_iter().map(|(a, b, _)| (a, b)).collect();
    assert_eq!(
        found,
        vec![
            ("a/child.rs".to_string(), "a/mod.rs".to_string()),
            ("b/x.rs".to_string(), "b/y.rs".to_string()),
            ("d/e/deep.rs".to_string(), "d/mod.rs".to_string()),
        ],
        "graph: {graph:#?}"
    );
    // A re-export is not an edge; the tests block's `super::*` is the file itself.
    assert!(!graph["c/mod.rs"].contains_key("c/inner.rs"), "{graph:#?}");
    assert!(graph["c/inner.rs"].contains_key("f0.rs"), "{graph:#?}");
    assert!(!graph["c/inner.rs"].contains_key("c/mod.rs"), "{graph:#?}");
    // Paths inside string and char literals are not paths.
    assert!(!graph["c/inner.rs"].contains_key("a/mod.rs"), "{graph:#?}");
}

/// The planner's prompts are domain-free: with the neutral hints they name no payments word,
/// and the payments domain's hints give back exactly its wording.
#[test]
fn planner_prompts_take_their_domain_words_from_the_domain() {
    use memex::agent::{Domain, NoDomain};
    use memex::domain::payments::PaymentsDomain;
    use memex::planner::prompt::{planning_system, summary_request};
    use memex::tools::ToolRegistry;

    let tools = ToolRegistry::new();
    let neutral = NoDomain.planner_hints();
    let system = planning_system("MID001", &tools, 5, None, &neutral);
    let summary = summary_request("MID001", "a task", &[], &neutral);
    let summary = serde_json::to_string(&summary.messages).expect("json");
    for text in [&system, &summary] {
        let lower = text.to_lowercase();
        for word in [
            "refund",
            "payment",
            "transaction",
            "ticket",
            "merchant-support",
        ] {
            assert!(
                !lower.contains(word),
                "{word:?} in a neutral prompt:\n{text}"
            );
        }
    }
    assert!(system.contains("You are the planner of a support agent, working for merchant MID001."));
    assert!(
        system.contains(r#"(e.g. {"id": {"$ref": "1.result.id"}})"#),
        "{system}"
    );
    assert!(system.contains("5. Tools marked irreversible are held for a human's approval"));
    assert!(summary.contains("Never claim an irreversible action was carried out unless"));

    let payments = PaymentsDomain.planner_hints();
    let system = planning_system("MID001", &tools, 5, None, &payments);
    assert!(system.contains(
        "You are the planner of a payment gateway's merchant-support agent, working for merchant \
         MID001. Turn the task into a plan of tool calls."
    ));
    assert!(
        system.contains(r#"(e.g. {"transaction_id": {"$ref": "1.result.id"}}) and list"#),
        "{system}"
    );
    assert!(
        system.contains("5. Tools marked irreversible (refunds) are held for a human's approval")
    );
    let summary = summary_request("MID001", "a task", &[], &payments);
    let summary = serde_json::to_string(&summary.messages).expect("json");
    assert!(
        summary.contains("what was done (tickets, refunds), what failed"),
        "{summary}"
    );
    assert!(summary.contains("Never claim a refund was made unless a step result shows it."));
}

/// Every `.rs` file under `dir`, with its path relative to `root`.
fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p
                .strip_prefix(root)
                .expect("under src")
                .display()
                .to_string();
            out.push((rel, std::fs::read_to_string(&p).expect("read")));
        }
    }
}

/// **One guarded call path.** A tool runs only with a `ToolContext`, and only the call gate
/// (`src/agent/gate.rs`) makes one (`src/tools/mod.rs` defines it): a second path that calls a
/// tool itself — as the MCP server once did, skipping rate limits, the loop guard, timeouts and
/// metrics — fails this test. Code in comments and strings counts too, so the rule is plain.
#[test]
fn only_the_call_gate_makes_a_tool_context() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let allowed = ["agent/gate.rs", "tools/mod.rs"];
    let offenders: Vec<String> = files
        .iter()
        .filter(|(rel, _)| !allowed.contains(&rel.as_str()))
        .filter(|(_, text)| {
            text.contains("ToolContext::new(")
                || text.contains("ToolContext {")
                || text.contains("ToolContext{")
        })
        .map(|(rel, _)| rel.clone())
        .collect();
    assert!(
        offenders.is_empty(),
        "only agent/gate.rs may make a ToolContext (every tool call goes through CallGate): {offenders:?}"
    );
    let gate = files
        .iter()
        .find(|(rel, _)| rel == "agent/gate.rs")
        .expect("the gate exists");
    assert!(
        gate.1.contains("ToolContext::new("),
        "the gate makes the contexts"
    );
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// The layers of the crate, bottom first. A top-level module of `src/` names modules of its own
/// layer or of a lower one, never of a higher one (within a layer, the cycle check above keeps
/// files from naming each other). ARCHITECTURE.md, "Layers", is this table.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "fsutil",
            "merchant",
            "offload",
            "paths",
            "sqlite",
            "redisdb",
            "store_url",
            "embed",
            "index",
        ],
    ),
    (
        "memory and seams",
        &[
            "kb",
            "episodic",
            "conversation",
            "state",
            "llm",
            "tools",
            "testkit",
        ],
    ),
    ("agent", &["agent", "planner", "approvals", "sources"]),
    ("domains", &["domain"]),
    ("front doors", &["mcp", "serve", "eval"]),
    ("binary", &["cli"]),
];

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs` and `main.rs`).
fn top_module(rel: &str) -> Option<&str> {
    if rel == "lib.rs" || rel == "main.rs" {
        return None;
    }
    let first = rel.split('/').next()?;
    Some(first.strip_suffix(".rs").unwrap_or(first))
}

fn layer_of(layers: &[(&str, &[&str])], module: &str) -> Option<usize> {
    layers.iter().position(|(_, ms)| ms.contains(&module))
}

/// Every path by which a module names a module of a higher layer, one line each. `use` trees,
/// `pub use` re-exports and paths in code (`crate::…`, `super::…`) count; comments and strings
/// do not.
fn upward_references(src: &Path, layers: &[(&str, &[&str])]) -> Vec<String> {
    let graph = import_graph_with(src, true);
    let mut out = Vec::new();
    for (file, edges) in &graph {
        let Some(from) = top_module(file) else {
            continue;
        };
        let Some(lf) = layer_of(layers, from) else {
            continue;
        };
        for (target, paths) in edges {
            let Some(to) = top_module(target) else {
                continue;
            };
            let Some(lt) = layer_of(layers, to) else {
                continue;
            };
            if lt > lf {
                out.push(format!(
                    "src/{file} (`{from}`, layer \"{}\") names {} (src/{target}: `{to}`, layer \"{}\")",
                    layers[lf].0,
                    paths.iter().cloned().collect::<Vec<_>>().join(", "),
                    layers[lt].0
                ));
            }
        }
    }
    out
}

/// **The layer order.** No module names a module of a higher layer (`LAYERS`), and every
/// top-level module of `src/` is placed in exactly one layer.
#[test]
fn modules_name_only_their_own_layer_or_lower() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().to_string();
        if p.is_dir() {
            modules.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                modules.insert(stem.to_string());
            }
        }
    }
    let listed: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, ms)| ms.iter().copied())
        .collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a module is listed in two layers"
    );
    let unplaced: Vec<&String> = modules
        .iter()
        .filter(|m| !unique.contains(m.as_str()))
        .collect();
    let gone: Vec<&&str> = unique.iter().filter(|m| !modules.contains(**m)).collect();
    assert!(
        unplaced.is_empty() && gone.is_empty(),
        "LAYERS (and ARCHITECTURE.md, \"Layers\") must list exactly the top-level modules of \
         src/: not placed {unplaced:?}, no longer in src/ {gone:?}"
    );
    let up = upward_references(&src, LAYERS);
    assert!(
        up.is_empty(),
        "{} reference(s) to a higher layer (move the item down, or pass it in from above):\n{}",
        up.len(),
        up.join("\n")
    );
}

/// The layer checker itself: an upward `use`, an upward `pub use` and an upward `super::super::`
/// path in code are found; the same names in comments and strings, and downward references,
/// are not.
#[test]
fn the_layer_checker_sees_upward_references_and_re_exports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    let mut lib = String::from("pub mod low;\npub mod low2;\npub mod high;\npub mod fine;\n");
    for k in 0..22 {
        write(&format!("f{k}.rs"), "pub fn f() {}\n");
        lib.push_str(&format!("pub mod f{k};\n"));
    }
    write("lib.rs", &lib);
    write(
        "low.rs",
        "pub use crate::high::H;\n// crate::high::H in a comment\n\
         pub const S: &str = \"crate::high::H\";\npub struct L;\n",
    );
    write("low2/mod.rs", "mod inner;\n");
    write("low2/inner.rs", "pub fn f() { super::super::high::g(); }\n");
    write(
        "fine.rs",
        "use crate::low::L;\npub fn f() { crate::f0::f(); }\n",
    );
    write(
        "high.rs",
        "use crate::low::L;\npub struct H;\npub fn g() {}\n",
    );
    let layers: &[(&str, &[&str])] =
        &[("low", &["low", "low2", "f0"]), ("high", &["high", "fine"])];
    let up = upward_references(src, layers);
    assert_eq!(up.len(), 2, "{up:#?}");
    assert!(
        up[0].starts_with("src/low.rs") && up[0].contains("crate::high::H"),
        "{up:#?}"
    );
    assert!(
        up[1].starts_with("src/low2/inner.rs") && up[1].contains("super::super::high::g"),
        "{up:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Token scans of src/
// ---------------------------------------------------------------------------------------------

/// `toks` without the items under `#[cfg(test)]` (a `mod tests { … }` block, a test-only
/// function or `use`).
fn without_test_items(toks: Vec<String>) -> Vec<String> {
    const ATTR: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks.len() - i >= ATTR.len() && ATTR.iter().zip(&toks[i..]).all(|(a, t)| a == t) {
            let mut j = i + ATTR.len();
            let mut nest = 0usize; // () and [] before the item's body
            while j < toks.len() {
                match toks[j].as_str() {
                    "(" | "[" => nest += 1,
                    ")" | "]" => nest = nest.saturating_sub(1),
                    ";" if nest == 0 => break,
                    "{" if nest == 0 => {
                        let mut depth = 0usize;
                        while j < toks.len() {
                            match toks[j].as_str() {
                                "{" => depth += 1,
                                "}" => {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                            j += 1;
                        }
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j + 1;
            continue;
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// Every `.rs` file of `src/` (path relative to `src/`) with its tokens: comments dropped,
/// string literals kept as `"`-prefixed tokens when `keep_strings`, test items kept or not.
fn src_tokens(keep_strings: bool, test_items: bool) -> Vec<(String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|(rel, text)| {
            let toks = lex_with(&text, keep_strings);
            let toks = if test_items {
                toks
            } else {
                without_test_items(toks)
            };
            (rel.replace('\\', "/"), toks)
        })
        .collect()
}

/// Whether `toks` holds `seq` (each element matched exactly, or as a prefix when it ends in `*`).
fn has_seq(toks: &[String], seq: &[&str]) -> bool {
    toks.windows(seq.len()).any(|w| {
        w.iter().zip(seq).all(|(t, s)| match s.strip_suffix('*') {
            Some(prefix) => t.starts_with(prefix),
            None => t == s,
        })
    })
}

/// The files (relative to `src/`) whose code holds any of `seqs`, test code included.
fn files_with(seqs: &[&[&str]]) -> BTreeSet<String> {
    src_tokens(false, true)
        .into_iter()
        .filter(|(_, toks)| seqs.iter().any(|s| has_seq(toks, s)))
        .map(|(rel, _)| rel)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// **One SQLite opener.** Only `src/sqlite.rs` calls rusqlite's `Connection::open*`; every
/// store opens its file through `sqlite::OpenOptions` / `sqlite::open_wal`.
#[test]
fn sqlite_files_are_opened_only_in_src_sqlite_rs() {
    assert_eq!(
        files_with(&[&["Connection", "::", "open*"]]),
        set(&["sqlite.rs"]),
        "open SQLite files through memex::sqlite::OpenOptions, not rusqlite::Connection::open*"
    );
}

/// **One atomic write.** Only `src/fsutil.rs` renames files (`write_atomic*`, `install_dir`):
/// `rename(` and tempfile's `persist(` / `persist_noclobber(`, which rename too.
#[test]
fn files_are_renamed_only_in_src_fsutil_rs() {
    assert_eq!(
        files_with(&[
            &["rename", "("],
            &["persist", "("],
            &["persist_noclobber", "("]
        ]),
        set(&["fsutil.rs"]),
        "write files that must never be seen half-written through fsutil::write_atomic*"
    );
}

/// **One Redis layer.** Only `redisdb.rs` makes a `redis::Client` or a connection: every store
/// (episodes, conversations, agent state, plans, keys, leases, the tool cache) and the
/// `/readyz` probe take a named view of the process's one `RedisDb` for their URL.
#[test]
fn redis_clients_and_connections_are_made_in_redisdb_only() {
    assert_eq!(
        files_with(&[&["Client", "::", "open"]]),
        set(&["redisdb.rs"]),
        "open Redis through memex::redisdb::RedisDb::open, not a client of your own"
    );
    let connects: BTreeSet<String> = [
        "get_connection",
        "get_connection_with_timeout",
        "get_multiplexed_async_connection",
        "get_multiplexed_async_connection_with_config",
        "get_connection_manager",
        "get_connection_manager_with_config",
    ]
    .iter()
    .flat_map(|m| files_with(&[&[*m, "("]]))
    .chain(files_with(&[&["ConnectionManager", "::", "new*"]]))
    .collect();
    assert_eq!(
        connects,
        set(&["redisdb.rs"]),
        "Redis connections are made by memex::redisdb only"
    );
}

/// **One composition root.** In the binary, only `cli/compose.rs` (`Memex`) builds an agent, a
/// planner or the MCP tools' dependencies: `memex ask`/`chat`/`plan`/`approve`, `memex serve`
/// and `memex mcp` all take them from there, so a setting reaches every surface the same way.
#[test]
fn the_binary_builds_agents_planners_and_mcp_deps_only_in_the_composition_root() {
    let builders: BTreeSet<String> = files_with(&[
        &["Agent", "::", "new"],
        &["Planner", "::", "new"],
        &["McpDeps", "::", "with_gate"],
        &["McpDeps", "::", "new"],
        &["AgentService", "::", "new"],
    ])
    .into_iter()
    .filter(|f| f.starts_with("cli/"))
    .collect();
    assert_eq!(
        builders,
        set(&["cli/compose.rs", "cli/serve.rs"]),
        "build agents, planners and MCP deps through cli/compose.rs's Memex"
    );
    let serve =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli/serve.rs"))
            .expect("read serve.rs");
    assert!(
        serve.contains("root.agent()") && serve.contains("root.planner.clone()"),
        "memex serve's agent service is built from the root's agent and planner settings"
    );
}

/// **Where payments is registered.** Outside `src/domain/`, exactly three files name the
/// payments domain: `cli/compose.rs` (the composition root: its tools, rules and escalation),
/// `cli/agent.rs` (`memex init --demo` seeds its database) and `cli/mod.rs` (the default
/// `--payments-db` file name). The domain's tools and `PaymentsDomain` are wired in
/// `cli/compose.rs` only.
#[test]
fn payments_is_named_by_three_cli_files_and_wired_in_compose_only() {
    let naming: BTreeSet<String> = src_tokens(false, true)
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("domain/"))
        .filter(|(_, toks)| {
            has_seq(toks, &["domain", "::", "payments"])
                || toks.iter().any(|t| {
                    t.starts_with("Payments") || t == "payments_tools" || t == "payments_registry"
                })
        })
        .map(|(rel, _)| rel)
        .collect();
    assert_eq!(
        naming,
        set(&["cli/agent.rs", "cli/compose.rs", "cli/mod.rs"]),
        "the payments domain is named outside src/domain/ only by the binary's composition"
    );
    let wiring: BTreeSet<String> = src_tokens(false, true)
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("domain/"))
        .filter(|(_, toks)| {
            toks.iter()
                .any(|t| t == "PaymentsDomain" || t == "payments_tools" || t == "payments_registry")
        })
        .map(|(rel, _)| rel)
        .collect();
    assert_eq!(
        wiring,
        set(&["cli/compose.rs"]),
        "the payments domain's tools, rules and escalation are wired in cli/compose.rs only"
    );
}

/// Words of the payments domain (lower case; matched inside identifiers and strings).
const DOMAIN_WORDS: &[&str] = &[
    "payment",
    "refund",
    "payout",
    "dispute",
    "chargeback",
    "settlement",
    "get_transaction",
    "get_merchant_account",
    "create_support_ticket",
    "initiate_refund",
    "rfnd_",
];

/// **No domain names in the agent core.** The library outside `src/domain/` (the agent, the
/// planner, the tools layer, the stores, the front doors) names no payments word in its code
/// (identifiers and strings; comments and `#[cfg(test)]` items aside), except the places pinned
/// here, which may only go away (then remove them here and in ARCHITECTURE.md).
#[test]
fn the_library_outside_src_domain_names_no_payments_words_but_the_pinned_ones() {
    let known: BTreeMap<&str, &[&str]> = BTreeMap::from([
        // The `ask_user` tool's description: "several payments or refunds could match".
        ("agent/mod.rs", &["payment", "refund"][..]),
        // `memex approve`'s one-line outcome reads a result's `refund_id`.
        ("approvals.rs", &["refund"][..]),
        // The summariser's instructions: a payments-support conversation and its identifiers.
        (
            "conversation/summarise.rs",
            &["dispute", "payment", "payout", "refund", "settlement"][..],
        ),
        // An example document id in the OpenAPI table: "guides/refunds.md".
        ("serve/openapi.rs", &["refund"][..]),
    ]);
    let mut found: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (rel, toks) in src_tokens(true, false) {
        if rel.starts_with("domain/") || rel.starts_with("cli/") || rel == "main.rs" {
            continue;
        }
        for t in &toks {
            let lower = t.to_lowercase();
            for w in DOMAIN_WORDS {
                if lower.contains(w) {
                    found.entry(rel.clone()).or_default().insert(w);
                }
            }
        }
    }
    let expected: BTreeMap<String, BTreeSet<&str>> = known
        .iter()
        .map(|(f, ws)| (f.to_string(), ws.iter().copied().collect()))
        .collect();
    assert_eq!(
        found, expected,
        "payments words in the library outside src/domain/ (take the wording from the Domain \
         instead); a pinned place that is gone must leave the list here and in ARCHITECTURE.md"
    );
}

/// **The binary owns presentation.** `anyhow` appears only in `src/cli/` and `src/main.rs`;
/// the library returns typed errors.
#[test]
fn anyhow_is_only_in_the_binary() {
    let offenders: Vec<String> = files_with(&[&["anyhow"]])
        .into_iter()
        .filter(|rel| !rel.starts_with("cli/") && rel != "main.rs")
        .collect();
    assert!(offenders.is_empty(), "anyhow in the library: {offenders:?}");
}

/// Whether every occurrence of `item` in `toks` is right after `#[cfg(feature = "FEATURE")]`
/// (an optional `pub` between), and there is at least one.
fn gated(toks: &[String], feature: &str, item: &[&str]) -> bool {
    let attr: Vec<String> = ["#", "[", "cfg", "(", "feature", "="]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("\"{feature}"), ")".into(), "]".into()])
        .collect();
    let mut seen = 0;
    for i in 0..toks.len() {
        if toks.len() - i < item.len() || !item.iter().zip(&toks[i..]).all(|(a, t)| a == t) {
            continue;
        }
        seen += 1;
        let mut start = i;
        if start > 0 && toks[start - 1] == "pub" {
            start -= 1;
        }
        if start < attr.len() || toks[start - attr.len()..start] != attr[..] {
            return false;
        }
    }
    seen > 0
}

/// **Test and benchmark code is not in the default build.** `memex::testkit` and
/// `llm::ScriptedModel` compile only with `test-util`, `memex bench` only with `bench`; no
/// other library code names them, and the default features are empty of both.
#[test]
fn test_support_is_behind_the_test_util_feature() {
    let files: BTreeMap<String, Vec<String>> = src_tokens(true, false).into_iter().collect();
    assert!(
        gated(&files["lib.rs"], "test-util", &["mod", "testkit"]),
        "src/lib.rs: `pub mod testkit` needs #[cfg(feature = \"test-util\")]"
    );
    assert!(
        gated(&files["llm/mod.rs"], "test-util", &["mod", "scripted"])
            && gated(&files["llm/mod.rs"], "test-util", &["use", "scripted"]),
        "src/llm/mod.rs: `mod scripted` and its re-export need #[cfg(feature = \"test-util\")]"
    );
    assert!(
        gated(&files["cli/mod.rs"], "bench", &["mod", "kb_bench"]),
        "src/cli/mod.rs: `mod kb_bench` needs #[cfg(feature = \"bench\")]"
    );
    let allowed = |rel: &str| {
        rel.starts_with("testkit/")
            || ["lib.rs", "llm/mod.rs", "llm/scripted.rs", "cli/kb_bench.rs"].contains(&rel)
    };
    let offenders: Vec<&String> = files
        .iter()
        .filter(|(rel, toks)| {
            !allowed(rel) && toks.iter().any(|t| t == "testkit" || t == "ScriptedModel")
        })
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        offenders.is_empty(),
        "non-test code naming testkit/ScriptedModel outside the gated files: {offenders:?}"
    );
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let default = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("default ="))
        .expect("a default feature list");
    assert!(
        !default.contains("test-util") && !default.contains("bench"),
        "default features must not carry test support: {default}"
    );
}

/// **Every test file runs.** The integration tests are one binary (`autotests = false` in
/// Cargo.toml): a `tests/NAME.rs` not declared as `mod NAME;` in `tests/integration.rs` would
/// never be compiled or run, and nothing else would notice.
#[test]
fn every_test_file_is_a_module_of_the_one_test_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let files: BTreeSet<String> = std::fs::read_dir(&tests)
        .expect("read tests/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|stem| stem != "integration")
        .collect();
    let root = std::fs::read_to_string(tests.join("integration.rs")).expect("read integration.rs");
    let declared: BTreeSet<String> = root
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_string)
        .filter(|m| m != "support")
        .collect();
    assert_eq!(
        files, declared,
        "each tests/NAME.rs must be declared as `mod NAME;` in tests/integration.rs (and each \
         module there must have its file)"
    );
    assert!(files.len() > 40, "the test files were not found: {files:?}");
}
