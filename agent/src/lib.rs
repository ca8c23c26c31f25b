//! Cairn's on-host agent.
//!
//! - [`grub_mkconfig`]: ostree's GRUB configuration generator
//!   (`OSTREE_GRUB2_EXEC`), the same code the image builder runs.
//! - [`grow_root`]: grows the root partition and filesystem to fill the disk.
//!
//! Signed updates and rollback build on this crate next.

pub mod grow_root;
pub mod grub_mkconfig;
