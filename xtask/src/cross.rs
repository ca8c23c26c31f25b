//! The agent for a foreign architecture, built on this host with Debian's
//! Rust toolchain (`rustc-web`, whose `libstd-rust-web-dev:<arch>` carries
//! the target's std; rustup here cannot fetch one) and the GNU cross linker.
//! The binaries are static (`+crt-static`): the image needs no matching libc
//! and one binary serves every ARMv8 server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_common::layout::Arch;
use cairn_common::process::Cmd;

use crate::paths;

/// GNU triple of the C cross toolchain (`gcc-<triple>`).
pub fn gnu_triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Aarch64 => "aarch64-linux-gnu",
    }
}

/// Rust's target triple.
pub fn rust_target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Aarch64 => "aarch64-unknown-linux-gnu",
    }
}

/// Its own target folder: Debian's rustc is another compiler version than
/// rustup's, and sharing one folder would rebuild everything on each switch.
fn target_dir() -> PathBuf {
    paths::workspace().join("target/cross")
}

/// Where the cross-built release binaries land.
pub fn release_bin(arch: Arch) -> PathBuf {
    target_dir().join(rust_target(arch)).join("release")
}

/// `/usr/bin/cargo` (Debian's, not rustup's shim) set up for `arch`.
fn cargo(arch: Arch) -> Cmd {
    let env_target = rust_target(arch).to_uppercase().replace('-', "_");
    let triple = gnu_triple(arch);
    let cc_target = rust_target(arch).replace('-', "_");
    Cmd::new("/usr/bin/cargo")
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env(format!("CARGO_TARGET_{env_target}_LINKER"), format!("{triple}-gcc"))
        .env(
            format!("CARGO_TARGET_{env_target}_RUSTFLAGS"),
            "-C target-feature=+crt-static",
        )
        // Unit tests run under qemu-user (static binaries: no -L needed).
        .env(
            format!("CARGO_TARGET_{env_target}_RUNNER"),
            format!("qemu-{}-static", arch.as_str()),
        )
        .env(format!("CC_{cc_target}"), format!("{triple}-gcc"))
        .env(format!("AR_{cc_target}"), format!("{triple}-ar"))
        .arg("--quiet")
        .current_dir(paths::workspace())
}

/// Build the agent's binaries for `arch`; returns their folder.
pub fn agent(arch: Arch) -> Result<PathBuf> {
    cargo(arch)
        .args([
            "build",
            "--release",
            "--package",
            "cairn-agent",
            "--target",
            rust_target(arch),
        ])
        .arg("--target-dir")
        .arg(target_dir())
        .progress()
        .run()
        .with_context(|| format!("cross-building the agent for {arch}"))?;
    Ok(release_bin(arch))
}

/// The agent's and the shared crate's unit tests, built for `arch` and run
/// under qemu-user.
pub fn unit_tests(arch: Arch) -> Result<()> {
    cargo(arch)
        .args([
            "test",
            "--package",
            "cairn-agent",
            "--package",
            "cairn-common",
            "--target",
            rust_target(arch),
        ])
        .arg("--target-dir")
        .arg(target_dir())
        .run_inherited()
        .with_context(|| format!("the agent's unit tests for {arch} under qemu-user"))
}
