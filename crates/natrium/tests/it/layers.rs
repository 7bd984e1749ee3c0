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
