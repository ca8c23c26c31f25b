//! `cairn-grub-mkconfig -o /boot/loader.N/grub.cfg`: what ostree calls as
//! `OSTREE_GRUB2_EXEC` (it passes a path, not a command line, so this is a
//! binary of its own rather than a `cairn-agent` subcommand).

fn main() -> std::process::ExitCode {
    cairn_common::logging::init("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cairn_agent::grub_mkconfig::parse_args(&args).and_then(|o| cairn_agent::grub_mkconfig::generate(&o));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-grub-mkconfig: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
