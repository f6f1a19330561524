//! The core's one structural rule, checked on every `make check`: a module
//! imports from its own folder (at its own layer) or from a lower layer,
//! never upwards, so that no circle crosses folders. The layers, bottom to
//! top (docs/architecture.md says why each is where it is):
//!
//! 0. `trace`, `ifname`, `ports`, `mac` (words every layer speaks)
//! 1. `config::model` (the config's data)
//! 2. `error`
//! 3. `kernel`
//! 4. `security`
//! 5. `config` (the facade: reading, validating, choosing)
//! 6. `firewall`, `switch`, `services`, `shaping`
//! 7. `ops`
//! 8. `report`
//! 9. `cli`
//!
//! Lower layers reach the config's data through `config::model`, never the
//! facade. Comments are not imports: only code is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A module's layer and folder, from its path under `src/` (`kernel/wire`).
fn place(module: &str) -> Option<(u8, &'static str)> {
    let first = module.split('/').next()?;
    Some(match (first, module) {
        (_, "config/model") => (1, "config"),
        ("trace" | "ifname" | "ports" | "mac", _) => (0, "root"),
        ("error", _) => (2, "root"),
        ("kernel", _) => (3, "kernel"),
        ("security", _) => (4, "security"),
        ("config", _) => (5, "config"),
        ("firewall", _) => (6, "firewall"),
        ("switch", _) => (6, "switch"),
        ("services", _) => (6, "services"),
        ("shaping", _) => (6, "shaping"),
        ("ops", _) => (7, "ops"),
        ("report", _) => (8, "report"),
        ("cli", _) => (9, "root"),
        ("lib", _) => (10, "root"),
        _ => return None,
    })
}

/// The source without comments (line, block and doc comments) and
/// without string and character literals.
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            (b'"', _) => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            (c, _) => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// The modules `crate::a::b::...` paths in `code` name, as `a/b` paths
/// cut to the deepest module that exists under `src`.
fn imports(code: &str, src: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let mut module = String::new();
        let mut deepest = None;
        for part in parts {
            let candidate = if module.is_empty() { part.to_owned() } else { format!("{module}/{part}") };
            if src.join(format!("{candidate}.rs")).is_file() || src.join(&candidate).join("mod.rs").is_file() {
                deepest = Some(candidate.clone());
                module = candidate;
            } else {
                break;
            }
        }
        if let Some(module) = deepest {
            found.insert(module);
        }
    }
    found
}

fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `kernel/mod.rs` is module `kernel`; `kernel/wire.rs` is `kernel/wire`.
fn module_of(file: &Path, src: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src").with_extension("");
    let text = relative.to_string_lossy().into_owned();
    text.strip_suffix("/mod").map(str::to_owned).unwrap_or(text)
}

#[test]
fn no_module_imports_from_a_higher_layer_or_another_folder_of_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        let Some((layer, folder)) = place(&module) else {
            broken.push(format!("{module} is in no layer: give it one in tests/layers.rs and docs/architecture.md"));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).expect("a source file"));
        for target in imports(&code, &src) {
            let Some((target_layer, target_folder)) = place(&target) else { continue };
            let same_folder = folder != "root" && folder == target_folder && layer == target_layer;
            if target_layer < layer || same_folder || target == module {
                continue;
            }
            broken.push(format!("{module} (layer {layer}) imports {target} (layer {target_layer})"));
        }
    }
    assert!(broken.is_empty(), "imports against the layers:\n  {}", broken.join("\n  "));
}

#[test]
fn the_checker_reads_code_not_comments() {
    let code = code_of("use crate::a::b; // crate::c\n/* crate::d */ let s = \"crate::e\";\n/// [`crate::f`]\n");
    assert!(code.contains("crate::a::b") && !code.contains("crate::c") && !code.contains("crate::d"));
    assert!(!code.contains("crate::e") && !code.contains("crate::f"));
    assert_eq!(place("config/model"), Some((1, "config")));
    assert_eq!(place("config/file"), Some((5, "config")));
    assert_eq!(place("firewall/nftables/antispoof"), Some((6, "firewall")));
}
