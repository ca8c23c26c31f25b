//! The GRUB environment block: exactly 1024 bytes, a signature line, then
//! `name=value` lines, padded with `#`. GRUB's `save_env` rewrites it in
//! place, which is why it must keep its size (and on FAT, its clusters).

use std::collections::BTreeMap;

use thiserror::Error;

/// Size of a GRUB environment block.
pub const BLOCK_SIZE: usize = 1024;
const SIGNATURE: &str = "# GRUB Environment Block\n";

/// Names of the variables that make up Cairn's boot counter.
pub mod vars {
    /// `1` while a freshly staged deployment is on trial.
    pub const TRIAL: &str = "cairn_trial";
    /// Boots the trial deployment has left before GRUB falls back.
    pub const TRIES: &str = "cairn_tries";
    /// Set to `1` by GRUB when it fell back to the previous deployment.
    pub const FALLBACK: &str = "cairn_fallback";
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrubEnvError {
    #[error("not a GRUB environment block: {0}")]
    Malformed(String),
    #[error("GRUB environment does not fit in {BLOCK_SIZE} bytes ({0} bytes needed)")]
    TooLarge(usize),
}

/// A parsed GRUB environment block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: BTreeMap<String, String>,
}

impl GrubEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_owned(), value.to_owned());
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn parse(block: &[u8]) -> Result<Self, GrubEnvError> {
        if block.len() != BLOCK_SIZE {
            return Err(GrubEnvError::Malformed(format!(
                "{} bytes instead of {BLOCK_SIZE}",
                block.len()
            )));
        }
        let text = std::str::from_utf8(block).map_err(|e| GrubEnvError::Malformed(format!("not UTF-8: {e}")))?;
        let body = text
            .strip_prefix(SIGNATURE)
            .ok_or_else(|| GrubEnvError::Malformed("missing signature line".into()))?;
        let mut vars = BTreeMap::new();
        for line in body.split('\n') {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| GrubEnvError::Malformed(format!("line without `=`: {line:?}")))?;
            vars.insert(name.to_owned(), unescape(value));
        }
        Ok(Self { vars })
    }

    pub fn to_block(&self) -> Result<Vec<u8>, GrubEnvError> {
        let mut out = String::from(SIGNATURE);
        for (name, value) in &self.vars {
            out.push_str(name);
            out.push('=');
            out.push_str(&escape(value));
            out.push('\n');
        }
        if out.len() > BLOCK_SIZE {
            return Err(GrubEnvError::TooLarge(out.len()));
        }
        let mut block = out.into_bytes();
        block.resize(BLOCK_SIZE, b'#');
        Ok(block)
    }
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_block_matches_grub_editenv_create() {
        // `grub-editenv F create` writes the signature and 999 `#`.
        let block = GrubEnv::new().to_block().unwrap();
        assert_eq!(block.len(), BLOCK_SIZE);
        assert!(block.starts_with(SIGNATURE.as_bytes()));
        assert!(block[SIGNATURE.len()..].iter().all(|&b| b == b'#'));
    }

    #[test]
    fn round_trips_values_with_escapes() {
        let mut env = GrubEnv::new();
        env.set(vars::TRIAL, "1");
        env.set(vars::TRIES, "3");
        env.set("odd", "a\\b\nc");
        let parsed = GrubEnv::parse(&env.to_block().unwrap()).unwrap();
        assert_eq!(parsed, env);
        assert_eq!(parsed.get(vars::TRIES), Some("3"));
    }

    #[test]
    fn parses_block_written_by_grub() {
        let mut text = String::from("# GRUB Environment Block\ncairn_tries=0\ncairn_fallback=1\n");
        text.push_str(&"#".repeat(BLOCK_SIZE - text.len()));
        let env = GrubEnv::parse(text.as_bytes()).unwrap();
        assert_eq!(env.get(vars::FALLBACK), Some("1"));
        assert_eq!(env.get(vars::TRIES), Some("0"));
    }

    #[test]
    fn rejects_wrong_size_and_missing_signature() {
        assert!(matches!(GrubEnv::parse(b"short"), Err(GrubEnvError::Malformed(_))));
        let block = vec![b'#'; BLOCK_SIZE];
        assert!(matches!(GrubEnv::parse(&block), Err(GrubEnvError::Malformed(_))));
    }

    #[test]
    fn refuses_to_overflow_the_block() {
        let mut env = GrubEnv::new();
        env.set("big", &"x".repeat(BLOCK_SIZE));
        assert!(matches!(env.to_block(), Err(GrubEnvError::TooLarge(_))));
    }
}
