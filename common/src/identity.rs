//! What an image is, as one typed value both sides share: its architecture,
//! its variant (the flavor, plus the platform off `generic`) and its
//! update stream. The ostree ref, `VARIANT_ID`, release records and commit
//! metadata are renderings of it, parsed back through it.
//!
//! Words, one meaning each: a **flavor** is what `rootfs/image.toml`'s
//! `[flavors.*]` define (`dev`, `prod`); a **variant** is what a host takes
//! updates for: the flavor on the generic platform (`prod`), the flavor
//! and platform elsewhere (`prod-kunpeng920`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::layout::{Arch, Platform};

/// The first component of every Cairn ref.
const REF_PREFIX: &str = "cairn";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("flavor `{0}` must be lowercase letters, digits and single dashes, and not end in a platform's name")]
    Flavor(String),
    #[error("`{0}` is not a Cairn image ref (cairn/<arch>/<variant>/<stream>)")]
    Ref(String),
    #[error("stream `{0}` must be lowercase letters, digits, dots and dashes")]
    Stream(String),
    #[error("{0}")]
    Arch(String),
}

/// A flavor on a platform. Serialised as its name (`prod-kunpeng920`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Variant {
    pub flavor: String,
    pub platform: Platform,
}

fn is_name(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c))
}

impl Variant {
    pub fn new(flavor: &str, platform: Platform) -> Result<Variant, IdentityError> {
        let ends_in_platform = Platform::ALL
            .iter()
            .any(|p| flavor.ends_with(&format!("-{p}")) || flavor == p.as_str());
        if !is_name(flavor, &[]) || ends_in_platform {
            return Err(IdentityError::Flavor(flavor.to_owned()));
        }
        Ok(Variant {
            flavor: flavor.to_owned(),
            platform,
        })
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.platform {
            Platform::Generic => f.write_str(&self.flavor),
            other => write!(f, "{}-{other}", self.flavor),
        }
    }
}

impl FromStr for Variant {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        for p in Platform::ALL.into_iter().filter(|p| *p != Platform::Generic) {
            if let Some(flavor) = s.strip_suffix(&format!("-{p}")) {
                return Variant::new(flavor, p);
            }
        }
        Variant::new(s, Platform::Generic)
    }
}

impl TryFrom<String> for Variant {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Variant> for String {
    fn from(v: Variant) -> String {
        v.to_string()
    }
}

/// An image: architecture, variant, stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageId {
    pub arch: Arch,
    pub variant: Variant,
    pub stream: String,
}

impl ImageId {
    pub fn new(arch: Arch, variant: Variant, stream: &str) -> Result<ImageId, IdentityError> {
        if !is_name(stream, &['.']) {
            return Err(IdentityError::Stream(stream.to_owned()));
        }
        Ok(ImageId {
            arch,
            variant,
            stream: stream.to_owned(),
        })
    }

    /// The ostree ref its commits are made on: `cairn/<arch>/<variant>/<stream>`.
    pub fn ostree_ref(&self) -> String {
        format!("{REF_PREFIX}/{}/{}/{}", self.arch, self.variant, self.stream)
    }

    /// The image a ref names.
    pub fn from_ref(r: &str) -> Result<ImageId, IdentityError> {
        let bad = || IdentityError::Ref(r.to_owned());
        let parts: Vec<&str> = r.split('/').collect();
        let [REF_PREFIX, arch, variant, stream] = parts[..] else {
            return Err(bad());
        };
        let arch: Arch = arch.parse().map_err(IdentityError::Arch)?;
        ImageId::new(arch, variant.parse()?, stream)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ostree_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_name_the_platform_off_generic_and_parse_back() {
        for (flavor, platform, text) in [
            ("prod", Platform::Generic, "prod"),
            ("prod", Platform::Kunpeng920, "prod-kunpeng920"),
            ("dev", Platform::Phytium, "dev-phytium"),
            ("edge-lab", Platform::Generic, "edge-lab"),
        ] {
            let v = Variant::new(flavor, platform).unwrap();
            assert_eq!(v.to_string(), text);
            assert_eq!(text.parse::<Variant>().unwrap(), v);
        }
        for bad in ["", "Prod", "a--b", "-a", "x-phytium-kunpeng920", "kunpeng920", "a b"] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
        assert!(Variant::new("x-phytium", Platform::Kunpeng920).is_err());
    }

    #[test]
    fn refs_round_trip_and_bad_ones_say_why() {
        let id = ImageId::new(
            Arch::Aarch64,
            Variant::new("prod", Platform::Kunpeng920).unwrap(),
            "stable",
        )
        .unwrap();
        assert_eq!(id.ostree_ref(), "cairn/aarch64/prod-kunpeng920/stable");
        assert_eq!(ImageId::from_ref(&id.ostree_ref()).unwrap(), id);
        assert_eq!(
            ImageId::from_ref("cairn/x86_64/stable").unwrap_err().to_string(),
            "`cairn/x86_64/stable` is not a Cairn image ref (cairn/<arch>/<variant>/<stream>)"
        );
        assert!(ImageId::from_ref("cairn/riscv64/dev/stable")
            .unwrap_err()
            .to_string()
            .contains("riscv64"));
        assert!(ImageId::from_ref("other/x86_64/dev/stable").is_err());
        assert!(ImageId::from_ref("cairn/x86_64/dev/Stable Branch").is_err());
    }
}
