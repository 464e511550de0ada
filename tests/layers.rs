//! The VMM's modules import downward only (issue 12, DESIGN.md):
//! main -> api -> vmm -> config -> devices / vstate -> arch -> the ground (audit, metrics,
//! logger, mmds, rate limiter, sandbox, seccomp). `devices` and `vstate` are one layer. This
//! test reads every file under src/ and fails on any `crate::<module>` path (code, not comments) that
//! names a module of a higher layer than the file's own, so a cycle cannot come back unseen.

use std::path::{Path, PathBuf};

/// Higher numbers sit higher; a file may name its own layer or lower ones.
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "api" => 6,
        "vmm" => 5,
        "config" => 4,
        "devices" | "vstate" => 3,
        "arch" => 2,
        "audit" | "metrics" | "logger" | "mmds" | "rate_limiter" | "sandbox" | "seccomp"
        | "snapshot" => 1,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under src/ belongs to (`src/devices/virtio/mmio.rs` ->
/// `devices`, `src/logger.rs` -> `logger`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Every module named as `crate::<name>` in the code of `text` (line comments dropped).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn modules_import_only_their_own_layer_or_lower_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let own = module_of(&src, file);
        let Some(own_layer) = layer(&own) else {
            continue; // lib.rs and main.rs sit on top.
        };
        let text = std::fs::read_to_string(file).expect("read file");
        for (line, name) in crate_paths(&text) {
            if layer(&name).is_some_and(|l| l > own_layer) {
                upward.push(format!(
                    "{}:{line}: {own} imports crate::{name}",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    assert!(files.len() > 50, "only {} files read", files.len());
}

#[test]
fn the_checker_sees_an_upward_path_and_ignores_comments() {
    let text = "use crate::config::X; // crate::api is fine here\n    crate::vmm::y();";
    let names: Vec<String> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["config", "vmm"]);
    assert!(layer("config") > layer("devices"));
    assert_eq!(layer("devices"), layer("vstate"));
}
