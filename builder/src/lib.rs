pub mod apt_sources;
pub mod manifest;
