//! Cairn's image builder. `cairn-build` is a thin shim over [`cli::run`].

pub mod apt_repos;
pub mod apt_sources;
pub mod archive;
pub mod cli;
pub mod compose;
pub mod disk;
pub mod disk_formats;
pub mod image;
pub mod initramfs;
pub mod kernel_check;
pub mod keys;
pub mod manifest;
pub mod module_prune;
pub mod ostree;
pub mod ostree_layout;
pub mod publish;
pub mod scratch;
pub mod sysext;
pub mod tuf_repo;
