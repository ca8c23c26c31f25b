//! Keys of the metadata the builder writes into every Cairn OSTree commit.

/// Release version (ostree's own well-known key, shown by `ostree admin status`).
pub const VERSION: &str = "version";
/// Target architecture, as Cairn names it (`x86_64`, `aarch64`).
pub const ARCH: &str = "cairn.arch";
/// The image variant a host of this commit takes updates for
/// (`prod-kunpeng920`; see [`crate::identity`]).
pub const VARIANT: &str = "cairn.variant";
/// The image flavor (`dev`, `prod`). Commits made before `cairn.variant`
/// existed hold the variant here; readers fall back to it.
pub const FLAVOR: &str = "cairn.flavor";
/// The platform (`generic`, `kunpeng920`, `phytium`).
pub const PLATFORM: &str = "cairn.platform";
/// Image name from the manifest.
pub const NAME: &str = "cairn.name";
/// Every Debian package in the tree, as a `a{ss}` name → version dictionary.
pub const PACKAGES: &str = "cairn.packages";
/// Content key of the package layer the commit was built on.
pub const BASE_KEY: &str = "cairn.base-key";
/// Kernel release (`uname -r`) shipped in the commit.
pub const KERNEL: &str = "cairn.kernel";
/// The Debian release (codename) the commit's packages come from.
/// Commits from before it was recorded have none.
pub const DEBIAN_RELEASE: &str = "cairn.debian-release";
/// The state of the Debian archive the package layer was installed from:
/// suite → `{'inrelease-sha256': …, 'date': …}` (`a{sa{ss}}`), the SHA-256
/// of each suite's `InRelease` as apt used it and its `Date:` (RFC 3339).
pub const DEBIAN_ARCHIVE: &str = "cairn.debian-archive";
/// The same for the manifest's own apt repositories (`[[repositories]]`),
/// keyed `<repository> <suite>`; absent when the image has none.
pub const APT_REPOSITORIES: &str = "cairn.apt-repositories";
