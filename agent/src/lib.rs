//! Cairn's on-host agent.
//!
//! Pure decisions, unit-tested without a host:
//! - [`config`]: TOML drop-ins merged key by key.
//! - [`dropins`]: folders of drop-ins merged in systemd's manner.
//! - [`lifecycle`]: the update lifecycle as one typed state, and planners
//!   returning the ordered effects of each step (power-safe order, tested
//!   by cutting a simulated host's power after each effect).
//! - [`selection`]: which release to take.
//! - [`kargs`]: the kernel arguments a staged release boots with.
//! - [`state`]: what the agent remembers across boots (atomic JSON in `/var`).
//! - [`schedule`]: check intervals with jitter, maintenance windows, the
//!   daemon's next step.
//! - [`status`]: the typed, versioned `status --json` document.
//! - [`report`]: `status` and `history` for people.
//! - [`platform`]: which platform the host runs on (DMI, `cairn.platform=`).
//! - [`metadata`]: each cloud's metadata service as a sequence of requests
//!   over a narrow HTTP interface, parsed and time-bounded.
//!
//! Doing, each behind a narrow interface:
//! - [`boot_report`]: the boot's verdict on the console (kernel log).
//! - [`boot_counter`]: GRUB's boot counter in the ESP's grubenv, via `fatfs`.
//! - [`grub_mkconfig`]: ostree's GRUB configuration generator
//!   (`OSTREE_GRUB2_EXEC`), the same code the image builder runs.
//! - [`grow_root`]: grows the root partition and filesystem to fill the disk.
//! - [`releases`]: the releases TUF vouches for (the `tough` client).
//! - [`sysroot`]: ostree deployments, pull, stage, undeploy.
//! - [`health`]: the health gate of a trial boot.
//! - [`provision`]: first-boot provisioning from Ignition or cloud-config
//!   (readers and the decision pure; sources and the applier behind narrow
//!   interfaces).
//! - [`updater`]: the executor: the planners' effects carried out against
//!   the host, each system behind a trait.

pub mod boot_counter;
pub mod boot_report;
pub mod config;
pub mod dropins;
pub mod grow_root;
pub mod grub_mkconfig;
pub mod health;
pub mod kargs;
pub mod kubernetes;
pub mod lifecycle;
pub mod metadata;
pub mod metrics;
pub mod platform;
pub mod provision;
pub mod reboot_gate;
pub mod releases;
pub mod report;
pub mod schedule;
pub mod selection;
pub mod state;
pub mod status;
pub mod sysroot;
pub mod updater;
pub mod wake;
