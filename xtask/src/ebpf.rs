//! `build-ebpf` and the up-to-date check of `test`: compiles `ebpf/*.c` to
//! `ebpf/<name>.bpf.o`, deterministically, so that comparing a fresh build
//! with the committed object byte for byte is meaningful.
//!
//! Determinism: clang runs in the workspace root on the relative path
//! `ebpf/<name>.c` with `-fdebug-prefix-map=<root>=.`, and `llvm-strip -g`
//! then drops the DWARF sections (which name the build directory). The
//! `.BTF` and `.BTF.ext` sections stay: aya needs BTF to create the
//! BTF-defined maps (`SEC(".maps")`) and they carry only relative paths.
//!
//! The bytes also depend on the clang release, so the clang version that
//! built the committed objects is recorded in [`TOOLCHAIN_FILE`]; the check
//! is skipped (with a note) under another clang instead of failing falsely.

use crate::run_checked;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Records `clang --version`'s first line for the committed objects.
const TOOLCHAIN_FILE: &str = "ebpf/toolchain.txt";

/// Where the kernel UAPI `asm/` headers live (linux/bpf.h includes
/// linux/types.h, which includes asm/types.h). `-target bpf` does not search
/// the multiarch directory, so it is passed with `-I`.
const ASM_INCLUDE_CANDIDATES: &[&str] = &[
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
];

/// First line of `clang --version`, e.g. "Debian clang version 14.0.6".
pub fn clang_version() -> Option<String> {
    let output = Command::new("clang").arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_owned())
}

/// `ebpf/*.c`, sorted so the build order (and any error) is stable.
fn sources(root: &Path) -> Result<Vec<PathBuf>> {
    let directory = root.join("ebpf");
    let mut sources = Vec::new();
    for entry in fs::read_dir(&directory).with_context(|| format!("reading {directory:?}"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "c") {
            sources.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    sources.sort();
    Ok(sources)
}

/// `ebpf/reuseport.c` → `reuseport.bpf.o`.
fn object_name(source: &Path) -> Result<String> {
    let stem = source
        .file_stem()
        .and_then(|stem| stem.to_str())
        .with_context(|| format!("{source:?}: not a UTF-8 file name"))?;
    Ok(format!("{stem}.bpf.o"))
}

fn llvm_strip() -> &'static str {
    // Debian's `llvm` package provides the unversioned name; fall back to the
    // versioned one clang 14 ships with.
    for candidate in ["llvm-strip", "llvm-strip-14"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return candidate;
        }
    }
    "llvm-strip"
}

/// Compiles `source` (relative to `root`) into `output`.
fn compile(root: &Path, source: &Path, output: &Path) -> Result<()> {
    let mut clang = Command::new("clang");
    clang
        .current_dir(root)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-fdebug-prefix-map={}=.", root.display()));
    for include in ASM_INCLUDE_CANDIDATES {
        if Path::new(include).join("asm/types.h").exists() {
            clang.arg("-I").arg(include);
        }
    }
    clang.arg("-c").arg(source).arg("-o").arg(output);
    run_checked(&mut clang)?;
    run_checked(Command::new(llvm_strip()).arg("-g").arg(output))
}

/// `cargo xtask build-ebpf`.
pub fn build(root: &Path) -> Result<()> {
    let version = clang_version().context("clang not found: install clang (Debian: clang)")?;
    for source in sources(root)? {
        let output = root.join("ebpf").join(object_name(&source)?);
        compile(root, &source, &output)?;
        println!(
            "built {} with {version}",
            output.strip_prefix(root)?.display()
        );
    }
    fs::write(root.join(TOOLCHAIN_FILE), format!("{version}\n"))?;
    Ok(())
}

/// The up-to-date check of `cargo xtask test`: rebuilds every object into a
/// temporary directory and compares bytes with the committed one.
pub fn check_up_to_date(root: &Path) -> Result<()> {
    let Some(version) = clang_version() else {
        println!("clang not found: skipping the BPF object up-to-date check");
        return Ok(());
    };
    let recorded = fs::read_to_string(root.join(TOOLCHAIN_FILE)).unwrap_or_default();
    if recorded.trim() != version {
        println!(
            "skipped: committed BPF objects were built with {:?}, this machine has {version:?}; \
             the bytes would differ for that reason alone",
            recorded.trim()
        );
        return Ok(());
    }
    let scratch = std::env::temp_dir().join(format!("keystone-ebpf-check-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = compare_all(root, &scratch);
    // Best effort: a leftover temp dir is not worth failing the step for.
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn compare_all(root: &Path, scratch: &Path) -> Result<()> {
    let mut stale = Vec::new();
    for source in sources(root)? {
        let name = object_name(&source)?;
        let fresh = scratch.join(&name);
        compile(root, &source, &fresh)?;
        let committed = root.join("ebpf").join(&name);
        let committed_bytes = fs::read(&committed).unwrap_or_default();
        if fs::read(&fresh)? != committed_bytes {
            stale.push(format!("ebpf/{name}"));
        } else {
            println!("ebpf/{name} is up to date");
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} out of date with its source: run `cargo xtask build-ebpf` and commit the result",
            stale.join(", ")
        );
    }
    Ok(())
}
