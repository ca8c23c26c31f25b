//! Shared model of Cairn: what the image builder writes and the on-host agent
//! reads must agree byte for byte, so it is defined once, here.
//!
//! - [`layout`]: partition labels, type GUIDs and where the boot counter lives.
//! - [`bootcfg`]: ostree's BLS entries to the GRUB configuration, with the
//!   boot-counter header that makes GRUB fall back to the previous deployment.
//! - [`duration`]: `90s`, `6h`, `1h30m` as written in configuration.
//! - [`fsutil`]: atomic file replacement; line/column of an offset.
//! - [`grubenv`]: the GRUB environment block that holds the boot counter.
//! - [`identity`]: what an image is (arch, variant, stream), and its ref.
//! - [`kargs`]: the kernel arguments a release carries (`kargs.d`).
//! - [`metadata`]: keys of the OSTree commit metadata.
//! - [`release`]: what an update repository says of one release.
//! - [`process`]: the one way any Cairn program runs another program.
//! - [`logging`]: the one way any Cairn program sets up tracing.

pub mod bootcfg;
pub mod duration;
pub mod fsutil;
pub mod grubenv;
pub mod identity;
pub mod kargs;
pub mod layout;
pub mod logging;
pub mod metadata;
pub mod process;
pub mod release;
