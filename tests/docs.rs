//! The docs stay true: every function that `docs/*.md` names exists in `src/`.
//!
//! The stories in docs/ walk the code function by function, and a rename or a rewrite leaves
//! them naming functions that are gone, which misleads the next reader more than no doc. This
//! test reads files only (no Postgres, no build of anything else).
//!
//! The rule, kept simple on purpose:
//! - Only inline code spans (`` `…` ``) count, outside fenced code blocks (the diagrams).
//! - A span is a function reference when it is `name()` or `path::name()` (empty parentheses),
//!   or a path of two or more identifiers joined by `::` whose last one starts with a lowercase
//!   letter or `_` (`Type::method`, `module::function`). An uppercase last segment is a type,
//!   variant or constant, and is not checked.
//! - A path that starts with `std`, `core`, `alloc` or a crate named in Cargo.toml's
//!   dependencies (`tokio::time::interval`) is someone else's, and is not checked.
//! - The reference holds when `fn <last segment>` followed by `(` or `<` appears in the text of
//!   some `.rs` file under `src/`. Only the last segment is looked for: the test catches names
//!   that are gone, not a method moved to another type.
//!
//! So the docs write a struct's field as `Type.field`, never `Type::field`, and a module as its
//! file (`src/storage/copies/`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Crates whose paths the docs may name without them being pgtide's.
fn foreign_crates(cargo_toml: &str) -> BTreeSet<String> {
    let mut crates: BTreeSet<String> = ["std", "core", "alloc"].map(String::from).into();
    let mut in_dependencies = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]" || line == "[dev-dependencies]";
        } else if let Some((name, _)) = line.split_once('=').filter(|_| in_dependencies) {
            crates.insert(name.trim().replace('-', "_"));
        }
    }
    crates
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The inline code spans of a markdown text, outside fenced code blocks.
fn code_spans(markdown: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Between the 1st and 2nd backtick, the 3rd and 4th, …
        spans.extend(line.split('`').skip(1).step_by(2).map(String::from));
    }
    spans
}

/// The name of the function a code span refers to, if it refers to one.
fn function_reference(span: &str, foreign: &BTreeSet<String>) -> Option<String> {
    let (path, called) = match span.strip_suffix("()") {
        Some(path) => (path, true),
        None => (span, false),
    };
    let segments: Vec<&str> = path.split("::").collect();
    if !segments.iter().all(|s| is_identifier(s)) || foreign.contains(segments[0]) {
        return None;
    }
    let name = *segments.last()?;
    let lowercase = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    (called || (segments.len() >= 2 && lowercase)).then(|| name.to_string())
}

/// Every function a markdown text names: (the span as written, the name to find).
fn function_references(markdown: &str, foreign: &BTreeSet<String>) -> Vec<(String, String)> {
    code_spans(markdown)
        .into_iter()
        .filter_map(|span| function_reference(&span, foreign).map(|name| (span, name)))
        .collect()
}

/// Whether `fn NAME(` or `fn NAME<` appears in the source text.
fn defines(source: &str, name: &str) -> bool {
    let needle = format!("fn {name}");
    source
        .match_indices(&needle)
        .any(|(at, _)| matches!(source[at + needle.len()..].chars().next(), Some('(' | '<')))
}

/// The text of every `.rs` file under `dir`, joined.
fn rust_sources(dir: &Path) -> String {
    let mut text = String::new();
    for entry in fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            text.push_str(&rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&fs::read_to_string(&path).expect("reading a source file"));
            text.push('\n');
        }
    }
    text
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_function_the_docs_name_exists() {
    let root = repo();
    let source = rust_sources(&root.join("src"));
    let foreign = foreign_crates(&fs::read_to_string(root.join("Cargo.toml")).unwrap());
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md found");
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in &docs {
        let text = fs::read_to_string(doc).unwrap();
        for (span, name) in function_references(&text, &foreign) {
            checked += 1;
            if !defines(&source, &name) {
                missing.push(format!(
                    "{}: `{span}` (no `fn {name}` in src/)",
                    doc.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        checked > 100,
        "only {checked} references found: is the rule broken?"
    );
    assert!(
        missing.is_empty(),
        "the docs name functions that do not exist:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_rule_finds_function_names_and_leaves_the_rest() {
    let foreign = foreign_crates("[package]\nname = \"x\"\n[dependencies]\ntokio = \"1\"\n");
    let markdown = "\
`CopySet::send` and `receiver::run` and `fill_status()` and `Quorum::no_such_method`,
not `Health::Down`, `LAG_LIMIT`, `receiver::STANDBY_NAME`, `Health::Down(reason)`,
`tokio::time::interval`, `std::sync::mpsc`, `wal_level = replica`, `CopyShared.flushed`.
```
CopySet::fenced_away
```
";
    let names: Vec<String> = function_references(markdown, &foreign)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert_eq!(names, ["send", "run", "fill_status", "no_such_method"]);
    let source = "impl CopySet {\n    pub fn send(&mut self) {}\n    fn run<T>() {}\n}\nfn fill_status(x: u8) {}\nfn sending() {}\n";
    assert!(defines(source, "send"));
    assert!(defines(source, "run"));
    assert!(defines(source, "fill_status"));
    assert!(
        !defines(source, "no_such_method"),
        "a made-up name is found"
    );
    assert!(
        !defines(source, "sen"),
        "a prefix of a name is not the name"
    );
}
