//! The layering rule of docs/ARCHITECTURE.md, checked on the source: a module of the `natrium`
//! crate refers (`use crate::x`, or a `crate::x::...` path) only to modules of a lower layer,
//! or to its own top-level module. Comments are not read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first; a top-level module of the crate belongs to exactly one.
const LAYERS: &[&[&str]] = &[
    &["util", "logging"],
    &["perms"],
    &["router"],
    &["auth"],
    &["conn"],
    &["cluster"],
    &["leaf"],
    &["jetstream"],
    &["options"],
    &["observe"],
    &["monitor", "sys", "resolver"],
    &["server"],
    &["cli"],
    // The binary's own modules (declared in main.rs, not lib.rs): above everything.
    &["sd_notify", "tenant"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules `source` refers to through `crate::`.
fn referenced_modules(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::B, c};`, on this line.
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Items of the crate root (`crate::VERSION`) are not modules.
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

/// Every violation in the files under `src`: `(file, module it refers to)`.
fn violations(src: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_string())
                .unwrap_or_default();
            if top == "lib" || top == "main" {
                continue;
            }
            let own = layer_of(&top)
                .unwrap_or_else(|| panic!("module {top:?} ({}) has no layer", rel.display()));
            let source = std::fs::read_to_string(&path).expect("read file");
            for module in referenced_modules(&source) {
                if module == top {
                    continue;
                }
                let theirs = layer_of(&module).unwrap_or_else(|| {
                    panic!("{} refers to unknown module {module:?}", rel.display())
                });
                if theirs >= own {
                    found.push((rel.to_path_buf(), module));
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn no_module_refers_to_a_layer_above_or_beside_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v = violations(&src);
    assert!(
        v.is_empty(),
        "modules referring to a layer not below their own: {v:?}"
    );
}

#[test]
fn the_check_reads_grouped_and_inline_references() {
    let found = referenced_modules(
        "use crate::router::{Account, Msg};\n\
         use crate::{conn::Client, perms};\n\
         let v = crate::util::time::now_nanos(); // crate::server::Server in a comment\n\
         let w = crate::VERSION;\n",
    );
    let want: BTreeSet<String> = ["router", "conn", "perms", "util"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, want);

    // An upward reference is caught: a router file naming the server.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("router")).expect("mkdir");
    std::fs::write(
        dir.path().join("router/delivery.rs"),
        "use crate::server::Server;\nuse crate::perms::Permissions;\n",
    )
    .expect("write");
    assert_eq!(
        violations(dir.path()),
        vec![(PathBuf::from("router/delivery.rs"), "server".to_string())]
    );
}

/// Files may refer to each other within a layer, in cycles of at most this many files
/// (docs/ARCHITECTURE.md).
const MAX_CYCLE: usize = 3;

type ModPath = Vec<String>;

/// The module paths of the files under `src` (`a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs`
/// and `main.rs` the root) with their text, unit tests at the end of a file left out.
fn modules(src: &Path) -> Vec<(ModPath, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut m: ModPath = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            let mut text = std::fs::read_to_string(&path).expect("read file");
            if let Some(i) = text.find("#[cfg(test)]\nmod tests {") {
                text.truncate(i);
            }
            out.push((m, text));
        }
    }
    out
}

/// The module paths `text` (the file of module `own`) names through `crate::` and `super::`.
fn named_paths(own: &[String], text: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", own[..own.len().saturating_sub(1)].to_vec()),
    ] {
        let mut at = 0;
        while let Some(i) = text[at..].find(prefix) {
            let start = at + i;
            at = start + prefix.len();
            let before = text[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let mut path = base.clone();
            let mut rest = &text[at..];
            loop {
                let seg: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if seg.is_empty() {
                    break;
                }
                rest = &rest[seg.len()..];
                path.push(seg);
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            out.push(path);
        }
    }
    out
}

/// The largest set of files that refer to each other in a cycle, per crate under `crates`
/// (edges between a module and its own parent or child are not counted).
fn largest_cycles(crates: &Path) -> Vec<(String, Vec<String>)> {
    let mut result = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(crates)
        .expect("crates")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    names.sort();
    for krate in names {
        let mods = modules(&krate.join("src"));
        let index: std::collections::HashMap<&[String], usize> = mods
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.as_slice(), i))
            .collect();
        let mut edges = vec![BTreeSet::new(); mods.len()];
        for (i, (own, text)) in mods.iter().enumerate() {
            for path in named_paths(own, text) {
                let Some(t) = (1..=path.len())
                    .rev()
                    .find_map(|n| index.get(&path[..n]).copied())
                else {
                    continue;
                };
                let target = &mods[t].0;
                if t == i || own.starts_with(target) || target.starts_with(own) {
                    continue;
                }
                edges[i].insert(t);
            }
        }
        let largest = strongly_connected(&edges)
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap_or_default();
        let mut files: Vec<String> = largest.iter().map(|&i| mods[i].0.join("/")).collect();
        files.sort();
        result.push((
            krate.file_name().unwrap().to_string_lossy().into_owned(),
            files,
        ));
    }
    result
}

/// Tarjan's strongly connected components (iterative: no recursion depth to worry about).
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
    let (mut on, mut stack, mut comps, mut next) = (vec![false; n], Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on[root] = true;
        work.push((root, edges[root].iter().copied().collect()));
        while let Some((v, todo)) = work.last_mut() {
            let v = *v;
            if let Some(w) = todo.pop() {
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on[w] = true;
                    work.push((w, edges[w].iter().copied().collect()));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _)) = work.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comps.push(comp);
            }
        }
    }
    comps
}

#[test]
fn no_import_cycle_spans_more_than_three_files() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cycles = largest_cycles(&crates);
    assert!(cycles.iter().any(|(c, _)| c == "natrium"), "{cycles:?}");
    let over: Vec<_> = cycles
        .iter()
        .filter(|(_, files)| files.len() > MAX_CYCLE)
        .collect();
    assert!(
        over.is_empty(),
        "import cycles larger than {MAX_CYCLE} files: {over:?}"
    );
}

#[test]
fn the_cycle_check_finds_a_cycle_and_ignores_parent_child_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("k/src");
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    let files = [
        ("lib.rs", "mod a; mod b; mod c; mod d;"),
        // a/mod.rs and its child refer to each other: not counted.
        (
            "a/mod.rs",
            "mod x; pub use crate::a::x::X; use crate::b::B; pub struct A;",
        ),
        ("a/x.rs", "use super::Y; pub struct X;"),
        // a -> b -> c -> d -> a: four files.
        ("b.rs", "use crate::c::{C}; pub struct B;"),
        ("c.rs", "pub fn c() { crate::d::f() }"),
        ("d.rs", "pub fn f() { let _ = crate::a::A; }"),
    ];
    for (f, text) in files {
        std::fs::write(src.join(f), text).expect("write");
    }
    let cycles = largest_cycles(dir.path());
    assert_eq!(
        cycles,
        vec![(
            "k".to_string(),
            vec!["a".into(), "b".into(), "c".into(), "d".into()]
        )]
    );
}
