pub mod apt_sources;
pub mod manifest;
pub mod disk;
pub mod keys;
pub mod ostree_layout;
