//! Cairn's on-host agent.
//!
//! Pure decisions, unit-tested without a host:
//! - [`config`]: TOML drop-ins merged in systemd's manner.
//! - [`lifecycle`]: which release to take; what a boot means for a trial.
//! - [`state`]: what the agent remembers across boots (atomic JSON in `/var`).
//!
//! Doing, each behind a narrow interface:
//! - [`boot_counter`]: GRUB's boot counter in the ESP's grubenv, via `fatfs`.
//! - [`grub_mkconfig`]: ostree's GRUB configuration generator
//!   (`OSTREE_GRUB2_EXEC`), the same code the image builder runs.
//! - [`grow_root`]: grows the root partition and filesystem to fill the disk.

pub mod boot_counter;
pub mod config;
pub mod grow_root;
pub mod grub_mkconfig;
pub mod lifecycle;
pub mod state;
