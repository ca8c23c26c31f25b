//! Cairn's QEMU harness: one way to build a QEMU command line (for tests and
//! for `cargo xtask run`), a serial-console reader with timeouts, and VMs
//! that are killed when dropped, even when a test panics.
//!
//! Privilege tiers: the unit tests of this crate need nothing; the tests in
//! `tests/` boot VMs and need images built by `cargo xtask test`, so they are
//! `#[ignore]`d and only that command runs them (with `--ignored`).

pub mod agent_status;
pub mod apt_repo;
pub mod artifacts;
pub mod boot_timing;
pub mod cloud_stand_ins;
pub mod console;
pub mod cri;
pub mod extensions;
pub mod fleet_lock;
pub mod guest_checks;
pub mod http;
pub mod kube_api;
pub mod metadata_server;
pub mod oci;
pub mod power_cut;
pub mod qemu;
pub mod releases;
pub mod seed;
pub mod ssh;
pub mod vm;

pub use artifacts::Artifacts;
pub use console::Console;
pub use qemu::{Accel, DiskInterface, QemuConfig};
pub use vm::Vm;
