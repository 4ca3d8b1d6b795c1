//! The layout rules of the source tree, read from the code itself.
//!
//! The folders under `src/` are the parts of the architecture and imports run downward only.
//! These tests read every `crate::…` and `super::…` path in `src/` (code only: comments and
//! inline `#[cfg(test)]` modules are left out) and fail, naming the file and the line, when a
//! part imports one it must not, when two parts import each other, or when files of one folder
//! import each other round a loop. A folder's `mod.rs` is its face: its children may use what
//! it declares, so edges to and from `mod.rs` are not loops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Parts that must not import others, with the reason a reader is given.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "cache",
        &["proxy", "origin", "store", "migrate", "server", "tls"],
        "the cache knows no proxy hooks, media chain or places",
    ),
    (
        "store",
        &["proxy", "origin", "migrate", "server"],
        "places know nothing of the chain that orders them or of copying",
    ),
    (
        "migrate",
        &["proxy", "origin", "server"],
        "migrate needs stores, not the chain, and runs without a server",
    ),
    (
        "origin",
        &["proxy", "server"],
        "the chain is handed its route; it never reads proxy settings",
    ),
    (
        "upstream",
        &[
            "proxy", "cache", "origin", "store", "migrate", "server", "admin",
        ],
        "the core's groups and the mesh know nothing of the hooks, the cache or media",
    ),
    (
        "admin",
        &["proxy", "origin"],
        "the admin listener reads the core's groups, the cache and the fleet, not the hooks",
    ),
    (
        "config",
        &["server", "tls", "proxy", "connections", "reload", "upgrade"],
        "config is pure data and validation",
    ),
];

/// Leaves: they import nothing of ours.
const LEAVES: &[&str] = &["wire", "certs", "metrics", "encoding"];

struct Import {
    /// The file that imports, relative to `src/`.
    file: PathBuf,
    line: usize,
    /// The module path imported from, resolved to a file's module (`["cache", "meta"]`).
    target: Vec<String>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `cache/meta.rs` → `["cache", "meta"]`; `cache/mod.rs` → `["cache"]`; `lib.rs` → `[]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without its comments and without the inline test module at its end.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut raw = text.lines().enumerate().peekable();
    while let Some((number, line)) = raw.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && raw.peek().is_some_and(|(_, next)| next.contains("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // A `//` inside a string (a URL) is kept: only a `//` after the last quote is a comment.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        lines.push((number + 1, code.to_string()));
    }
    lines
}

/// Module paths named after `prefix` (`crate::` or `super::`), with `{a::b, c}` groups spread.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        found.extend(spread(rest));
    }
    found
}

/// The paths a `use` tail names: `a::b::C` → `[[a, b, C]]`; `{a::B, c}` → `[[a, B], [c]]`.
fn spread(tail: &str) -> Vec<Vec<String>> {
    if let Some(group) = tail.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut current = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        items.push(current);
        return items
            .iter()
            .filter(|item| !item.trim().is_empty())
            .flat_map(|item| spread(item.trim()))
            .collect();
    }
    let mut path = Vec::new();
    let mut rest = tail;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        path.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if next.starts_with('{') => {
                return spread(next)
                    .into_iter()
                    .map(|tail| path.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(next) => rest = next,
            None => break,
        }
    }
    vec![path]
}

/// The longest prefix of `path` that is a module of its own file.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

fn imports() -> Vec<Import> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).expect("under src")))
        .collect();
    let mut all = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src").to_path_buf();
        let module = module_of(&relative);
        // `super` of `cache/disk.rs` is `cache`; of `cache/mod.rs` it is the crate.
        let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, code) in code_lines(&text) {
            let named = paths_after(&code, "crate::").into_iter().chain(
                paths_after(&code, "super::")
                    .into_iter()
                    .map(|p| parent.iter().cloned().chain(p).collect()),
            );
            for path in named {
                if let Some(target) = resolve(&path, &modules) {
                    if target != module {
                        all.push(Import {
                            file: relative.clone(),
                            line,
                            target,
                        });
                    }
                }
            }
        }
    }
    all
}

fn part_of_module(module: &[String]) -> Option<&str> {
    module.first().map(String::as_str)
}

fn part_of_file(file: &Path) -> String {
    module_of(file).first().cloned().unwrap_or_default()
}

/// `unsafe` is denied crate-wide; the one place allowed it is borrowing pingora's socket
/// by its descriptor (`proxy/send_file.rs`). Any other `allow` of it is a broken rule.
#[test]
fn unsafe_code_is_allowed_in_one_place_only() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut allowed = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let relative = file.strip_prefix(src_dir()).expect("under src");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("unsafe_code") {
                allowed.push(format!("{}:{}", relative.display(), n + 1));
            }
        }
    }
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert!(allowed[0].starts_with("proxy/send_file.rs:"), "{allowed:?}");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    assert!(
        manifest.contains("unsafe_code = \"deny\""),
        "the crate no longer denies unsafe"
    );
}

#[test]
fn parts_import_only_downward() {
    let mut broken = Vec::new();
    for import in imports() {
        let from = part_of_file(&import.file);
        let Some(to) = part_of_module(&import.target) else {
            continue;
        };
        if from == to {
            continue;
        }
        for (part, never, why) in FORBIDDEN {
            if from == *part && never.contains(&to) {
                broken.push(format!(
                    "src/{}:{}: {from} imports {to} ({why})",
                    import.file.display(),
                    import.line
                ));
            }
        }
        if LEAVES.contains(&from.as_str()) {
            broken.push(format!(
                "src/{}:{}: the leaf {from} imports {to} (leaves import nothing of ours)",
                import.file.display(),
                import.line
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layout:\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_two_parts_import_each_other() {
    let mut arrows: BTreeMap<(String, String), String> = BTreeMap::new();
    for import in imports() {
        let from = part_of_file(&import.file);
        let Some(to) = part_of_module(&import.target) else {
            continue;
        };
        if from.is_empty() || from == to {
            continue;
        }
        arrows
            .entry((from, to.to_string()))
            .or_insert_with(|| format!("src/{}:{}", import.file.display(), import.line));
    }
    let mut loops = Vec::new();
    for ((from, to), at) in &arrows {
        if from < to {
            if let Some(back) = arrows.get(&(to.clone(), from.clone())) {
                loops.push(format!("{from} ⇄ {to}: {at} and {back}"));
            }
        }
    }
    assert!(
        loops.is_empty(),
        "parts that import each other:\n{}",
        loops.join("\n")
    );
}

#[test]
fn files_of_a_folder_import_each_other_round_no_loop() {
    // Edges between sibling files of one folder, leaving out the folder's `mod.rs`.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for import in imports() {
        let from = module_of(&import.file);
        if import.file.ends_with("mod.rs") || from.len() < 2 {
            continue;
        }
        let folder = &from[..from.len() - 1];
        if import.target.len() == from.len() && import.target.starts_with(folder) {
            edges
                .entry(from.clone())
                .or_default()
                .insert(import.target.clone());
        }
    }
    let mut loops = Vec::new();
    for start in edges.keys() {
        if let Some(cycle) = cycle_through(start, &edges) {
            loops.push(
                cycle
                    .iter()
                    .map(|m| m.join("/"))
                    .collect::<Vec<_>>()
                    .join(" → "),
            );
        }
    }
    assert!(
        loops.is_empty(),
        "files that import each other round a loop:\n{}",
        loops.join("\n")
    );
}

/// A path from `start` back to itself, if there is one.
fn cycle_through(
    start: &Vec<String>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Option<Vec<Vec<String>>> {
    let mut stack = vec![vec![start.clone()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty");
        for next in edges.get(last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_reader_follows_paths_and_groups() {
    assert_eq!(
        spread("{a::B, c::{D, e::F}}"),
        vec![
            vec!["a".to_string(), "B".to_string()],
            vec!["c".to_string(), "D".to_string()],
            vec!["c".to_string(), "e".to_string(), "F".to_string()],
        ]
    );
    assert_eq!(
        paths_after(
            "let x = crate::proxy::headers::content_length(h);",
            "crate::"
        ),
        vec![vec![
            "proxy".to_string(),
            "headers".to_string(),
            "content_length".to_string()
        ]]
    );
    let code = code_lines(
        "use crate::a::B; // crate::c\n// crate::d\n#[cfg(test)]\nmod tests {\n use crate::e;\n}\n",
    );
    assert_eq!(code, vec![(1, "use crate::a::B; ".to_string())]);
}
