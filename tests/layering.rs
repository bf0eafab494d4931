//! The module layering of `src/`, checked: no import cycle between top-level modules, and no
//! import from a lower layer into a higher one.
//!
//! The allowed order is written once, in [`LAYERS`] (highest first); docs/ARCHITECTURE.md
//! explains it. A module may import modules of its own layer (as long as no cycle forms) and of
//! any layer below. Imports are read from the source text: every `crate::NAME` path and every
//! name inside `use crate::{...}`, comments excluded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, highest first. A new module must be added here.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["extauthz", "grpc", "admin", "tls", "listen", "fuzzing"],
    &[
        "reload",
        "svid",
        "shadow",
        "telemetry",
        "tooling",
        "tracing_otel",
        "audit",
    ],
    &["decision_log"],
    &["policy"],
    &["identity", "trust", "watch"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source text without `//` comments (doc comments included) and without string literals'
/// contents being mistaken for paths (good enough: the crate writes no `crate::` in strings).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Top-level module → the top-level modules it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = code_only(&std::fs::read_to_string(&file).expect("read source"));
        let targets = graph.entry(module.clone()).or_default();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let close = group.find('}').unwrap_or(group.len());
                for item in group[..close].split(',') {
                    let name = identifier_at(item.trim());
                    if !name.is_empty() && name != module {
                        targets.insert(name.to_string());
                    }
                }
            } else {
                let name = identifier_at(after);
                if !name.is_empty() && name != module {
                    targets.insert(name.to_string());
                }
            }
            rest = after;
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = import_graph()
        .into_keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in tests/layering.rs: {unplaced:?}"
    );
}

#[test]
fn no_import_cycle_between_modules() {
    let graph = import_graph();
    assert!(graph.len() > 5, "found too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_import_from_a_lower_layer_into_a_higher_one() {
    let mut violations = Vec::new();
    for (module, targets) in import_graph() {
        let Some(from) = layer_of(&module) else {
            continue;
        };
        for target in targets {
            match layer_of(&target) {
                Some(to) if to < from => violations.push(format!(
                    "{module} (layer {from}) imports {target} (layer {to}, higher)"
                )),
                Some(_) => {}
                None => violations.push(format!("{module} imports unknown module {target}")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_planted_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    let cycle = find_cycle(&graph).expect("cycle found");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 3);
}
