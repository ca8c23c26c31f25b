//! The kernel arguments a staged deployment boots with (pure).
//!
//! A release ships its arguments in `/usr/lib/cairn/kargs.d` (see
//! [`cairn_common::kargs`]). The host's arguments are the booted
//! deployment's, which mix the release's with the host's own (`root=`, and
//! whatever an operator added). Staging a release applies the difference,
//! as bootc does: the booted release's arguments are taken out, the new
//! release's put in, and the host's own are kept.

/// Arguments ostree or the boot loader add by themselves; never carried over.
const NOT_CARRIED: [&str; 3] = ["ostree=", "BOOT_IMAGE=", "initrd="];

/// The words of a kernel command line (`/proc/cmdline`), without the ones
/// ostree and GRUB add by themselves.
pub fn host_args(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter(|w| !NOT_CARRIED.iter().any(|p| w.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// The arguments to stage `target` with: the host's, less the booted
/// release's, plus the target release's (each once, in the target's order).
pub fn for_staging(host: &[String], booted_release: &[String], target_release: &[String]) -> Vec<String> {
    let mut out: Vec<String> = host.to_vec();
    for k in booted_release {
        if let Some(i) = out.iter().position(|h| h == k) {
            out.remove(i);
        }
    }
    for k in target_release {
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_command_line_loses_what_ostree_and_grub_add() {
        assert_eq!(
            host_args("BOOT_IMAGE=/boot/ostree/cairn-x/vmlinuz root=LABEL=cairn-root rw ostree=/ostree/boot.1/cairn/x/0 console=ttyS0\n"),
            words("root=LABEL=cairn-root rw console=ttyS0")
        );
    }

    #[test]
    fn a_release_that_changes_its_arguments_changes_the_host_s_and_keeps_the_host_s_own() {
        let host = words("root=LABEL=cairn-root rw panic=10 rd.timeout=60 console=tty0 console=ttyS0 operator.flag=1");
        let v1 = words("rw panic=10 rd.timeout=60 console=tty0 console=ttyS0");
        let v2 = words("rw panic=10 rd.timeout=20 console=tty0 console=ttyS0 cairn.new=1");
        assert_eq!(
            for_staging(&host, &v1, &v2),
            words("root=LABEL=cairn-root operator.flag=1 rw panic=10 rd.timeout=20 console=tty0 console=ttyS0 cairn.new=1")
        );
        // The same release again changes nothing but the order.
        let same = for_staging(&host, &v1, &v1);
        let mut a = same.clone();
        let mut b = host.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn a_host_from_before_kargs_d_gets_the_release_s_arguments_once() {
        // Its booted release shipped no kargs.d: the image-time arguments
        // are on the command line already and are not doubled.
        let host = words("root=LABEL=cairn-root rw panic=10");
        assert_eq!(
            for_staging(&host, &[], &words("rw panic=10 cairn.new=1")),
            words("root=LABEL=cairn-root rw panic=10 cairn.new=1")
        );
    }
}
