//! System extensions made for tests with `cairn-build sysext`, each with a
//! marker file, a static busybox and a unit of its own, so a test sees
//! that it merged (`/usr/lib/<name>/marker`) and that its unit runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_common::process::Cmd;
use serde_json::Value;

use crate::Artifacts;

/// Run the builder; returns the JSON report it prints.
pub fn cairn_build(a: &Artifacts, args: &[&str]) -> Result<Value> {
    let out = Cmd::new(&a.builder).args(args).output()?;
    serde_json::from_str(&out.stdout).with_context(|| format!("cairn-build printed no JSON:\n{}", out.stdout))
}

/// Where the inputs of extensions written to `out` are made (beside it:
/// `out` holds only extensions).
fn inputs_of(out: &Path) -> PathBuf {
    out.with_extension("inputs")
}

/// `cairn-build sysext` (with `more` arguments) of a folder holding
/// `usr/lib/<name>/marker` (`<name>`), a static busybox beside it, and the
/// unit `<name>.service`, which runs busybox and stays active; written to
/// `out/<name>.raw` for the image of `manifest`. Returns the builder's
/// report (`path`, `hash`, `fits`, …).
pub fn make(a: &Artifacts, manifest: &Path, out: &Path, name: &str, more: &[&str]) -> Result<Value> {
    let dir = inputs_of(out).join(name);
    let lib = dir.join("usr/lib").join(name);
    std::fs::create_dir_all(&lib)?;
    std::fs::write(lib.join("marker"), format!("{name}\n"))?;
    std::fs::copy(&a.busybox, lib.join("busybox")).context("copying busybox")?;
    let units = dir.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    std::fs::write(
        units.join(format!("{name}.service")),
        format!(
            "[Unit]\nDescription=Cairn test: a unit a system extension carries\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/lib/{name}/busybox true\n[Install]\nWantedBy=multi-user.target\n"
        ),
    )?;
    let path = |p: &Path| p.to_str().map(str::to_owned).context("a path that is not UTF-8");
    let mut args = vec![
        "sysext".to_owned(),
        "--manifest".to_owned(),
        path(manifest)?,
        "--arch".to_owned(),
        a.arch.as_str().to_owned(),
        "--name".to_owned(),
        name.to_owned(),
        "--dir".to_owned(),
        path(&dir)?,
        "--output".to_owned(),
        path(out)?,
    ];
    args.extend(more.iter().map(|m| m.to_string()));
    cairn_build(a, &args.iter().map(String::as_str).collect::<Vec<_>>())
}
