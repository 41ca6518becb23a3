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
                'raw: while j < n {
                    if s[j] == '"' && (0..hashes).all(|h| j + 1 + h < n && s[j + 1 + h] == '#') {
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
            while i < n && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
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
                    if k > 0 && self.toks[k - 1] == "pub" {
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

/// file → (file it names → the paths naming it)
fn import_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
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
            edges: BTreeMap::new(),
        };
        scan.run(module);
        graph.insert(file.clone(), scan.edges);
    }
    graph
}

fn pairs(
    graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
) -> Vec<(String, String, String)> {
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
