//! Command-line interface of `cairn-build`.

use std::path::PathBuf;

use anyhow::Result;
use cairn_common::layout::Arch;
use clap::{Parser, Subcommand};

use crate::{compose, image, keys};

#[derive(Debug, Parser)]
#[command(name = "cairn-build", version, about = "Build Cairn OS images: packages → signed OSTree commit → UEFI disk image")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Image manifest.
    #[arg(long, default_value = "rootfs/image.toml")]
    manifest: PathBuf,
    /// Flavour defined in the manifest (`dev`, `prod`).
    #[arg(long, default_value = "dev")]
    flavor: String,
    /// Target architecture.
    #[arg(long, default_value = "x86_64")]
    arch: Arch,
    /// OSTree archive repository the image is committed to.
    #[arg(long)]
    repo: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a development signing key (a GnuPG home) unless one exists.
    Keygen {
        /// Folder of the key; keep it outside any git tree.
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value = "Cairn development signing key")]
        owner: String,
    },
    /// Build the OS tree from the manifest and commit it, signed.
    Compose {
        #[command(flatten)]
        target: Target,
        /// Cache of downloaded packages and package layers.
        #[arg(long)]
        cache: PathBuf,
        /// Signing key folder (see `keygen`).
        #[arg(long)]
        keys: PathBuf,
        /// Folder with `cairn-agent` and `cairn-grub-mkconfig` built for --arch.
        #[arg(long)]
        agent_dir: PathBuf,
        /// Host apt configuration to take the Debian mirror from.
        #[arg(long, default_value = "/etc/apt")]
        apt_dir: PathBuf,
    },
    /// Write a bootable GPT disk image (raw and qcow2) of the committed tree.
    Image {
        #[command(flatten)]
        target: Target,
        /// Folder the images are written to.
        #[arg(long)]
        output: PathBuf,
    },
}

/// Run the command; prints its result as JSON on stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { keys, owner } => {
            let key = keys::keygen(&keys, &owner)?;
            println!("{}", serde_json::json!({ "keys": key.homedir, "key-id": key.key_id }));
        }
        Command::Compose { target, cache, keys, agent_dir, apt_dir } => {
            let composed = compose::compose(&compose::ComposeOptions {
                manifest: target.manifest,
                flavor: target.flavor,
                arch: target.arch,
                repo: target.repo,
                cache,
                keys,
                agent_dir,
                apt_dir,
            })?;
            println!("{}", serde_json::to_string_pretty(&composed)?);
        }
        Command::Image { target, output } => {
            let built = image::build_image(&image::ImageOptions {
                manifest: target.manifest,
                flavor: target.flavor,
                arch: target.arch,
                repo: target.repo,
                output,
            })?;
            println!("{}", serde_json::to_string_pretty(&built)?);
        }
    }
    Ok(())
}
