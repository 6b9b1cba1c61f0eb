//! The engine's shape, checked by `cargo test`: which module may name which, that lapin stays
//! inside `broker/amqp` (no exception), and how long a file may grow.
//!
//! Every top-level module of this crate has a layer ([`LAYERS`], lowest first). A module names
//! (`crate::x` in code, doc comments aside) only modules of lower layers, so the actors depend
//! only downwards and no circle spans two of them; a circle inside one module's folder is its
//! own business. What does not hold yet is listed in [`KNOWN`] with the step that removes it;
//! the test fails on a new violation and on a listed one that is gone, so the list only
//! shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. Within a layer no module names another.
const LAYERS: &[&[&str]] = &[
    // Foundations: pure types and functions, no actor, no I/O of their own.
    &[
        "abort", "clock", "crontab", "error", "hostname", "metrics", "shutdown", "testkit",
    ],
    // Celery's wire formats.
    &["protocol"],
    // The units of work the actors hand each other.
    &["work"],
    // What the operator configured, typed and validated.
    &["settings"],
    // Services the actors use: the broker seam (and its transports), the Rust task API.
    &["broker", "task"],
    // The OS processes the pool and the helper start, and what they say on their pipes.
    &["process"],
    // The actors, each above those it sends to.
    &["pool"],
    &["scheduler"],
    &["revoke"],
    &["events"],
    &["backend"],
    &["helper"],
    &["consumer"],
    &["beat"],
    &["control"],
    // The root of the tree.
    &["supervisor"],
];

/// Upward references that remain, each with the change that removes it.
const KNOWN: &[(&str, &str)] = &[];

/// The most lines a file of the engine should have.
const MAX_LINES: usize = 700;

/// Files over [`MAX_LINES`], until they are split.
const KNOWN_LONG: &[&str] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`, as a path relative to `src/` with `/` separators.
fn files(dir: &Path, out: &mut Vec<String>) {
    let this = "layers.rs"; // names what it checks for
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src()).unwrap();
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel != this {
                out.push(rel);
            }
        }
    }
}

/// The top-level module a file belongs to (`consumer/acks.rs` -> `consumer`).
fn module_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The file's code without comment lines (`//`, `///`, `//!`).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`: `crate::a::b`, and each item of
/// `crate::{a::x, b::{y, z}}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `celeryd_actors::crate::…` does not occur; `mycrate::` is not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Items at depth 0 of the group, each up to its first `::`.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.extend(head(&item));
        } else {
            out.extend(head(rest));
        }
    }
    out
}

/// The leading identifier of a path.
fn head(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn modules_depend_only_downwards() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut unplaced = BTreeSet::new();
    for file in all.iter().filter(|f| f.as_str() != "lib.rs") {
        let from = module_of(file);
        let Some(from_layer) = layer_of(from) else {
            unplaced.insert(from.to_owned());
            continue;
        };
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        for to in named_modules(&code(&text)) {
            if to == from {
                continue;
            }
            let Some(to_layer) = layer_of(&to) else {
                continue; // not a module of ours (an item of lib.rs, or a local name)
            };
            if to_layer >= from_layer {
                found
                    .entry((from.to_owned(), to))
                    .or_default()
                    .push(file.clone());
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules without a layer in LAYERS: {unplaced:?}"
    );
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    let new: Vec<_> = found.iter().filter(|(k, _)| !known.contains(*k)).collect();
    assert!(
        new.is_empty(),
        "modules naming a module of their own or a higher layer: {new:?}"
    );
    let gone: Vec<_> = known.iter().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        gone.is_empty(),
        "no longer true, take them out of KNOWN: {gone:?}"
    );
}

#[test]
fn lapin_is_named_only_in_the_amqp_transport() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut naming = BTreeSet::new();
    for file in &all {
        if file == "broker/amqp.rs" || file.starts_with("broker/amqp/") {
            continue;
        }
        let text = code(&std::fs::read_to_string(src().join(file)).unwrap());
        let names = text.match_indices("lapin").any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + 5..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(before) && !word(after)
        });
        if names {
            naming.insert(file.clone());
        }
    }
    assert!(
        naming.is_empty(),
        "lapin named outside broker/amqp: {naming:?}"
    );
}

#[test]
fn files_stay_short() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut long = BTreeSet::new();
    for file in &all {
        let lines = std::fs::read_to_string(src().join(file))
            .unwrap()
            .lines()
            .count();
        if lines > MAX_LINES {
            long.insert(format!("{file} ({lines})"));
        }
    }
    let known: BTreeSet<&str> = KNOWN_LONG.iter().copied().collect();
    let new: Vec<_> = long
        .iter()
        .filter(|f| !known.contains(f.split(' ').next().unwrap_or_default()))
        .collect();
    assert!(new.is_empty(), "files over {MAX_LINES} lines: {new:?}");
    let gone: Vec<_> = known
        .iter()
        .filter(|k| !long.iter().any(|f| f.split(' ').next() == Some(**k)))
        .collect();
    assert!(
        gone.is_empty(),
        "now short, take them out of KNOWN_LONG: {gone:?}"
    );
}

#[test]
fn the_scanner_reads_grouped_and_nested_imports() {
    let names = named_modules(
        "use crate::{pool::{A, B}, work::Reserved};\nlet x = crate::broker::backoff(1);",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["broker", "pool", "work"]);
    assert_eq!(module_of("consumer/acks.rs"), "consumer");
    assert_eq!(module_of("pool.rs"), "pool");
}
