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

/// The host's arguments with Ignition's `kernelArguments` applied (as
/// `rpm-ostree kargs --delete-if-present`/`--append-if-missing` do for
/// Fedora CoreOS): every occurrence of a `should_not_exist` word goes, then
/// each `should_exist` word missing is appended. `None` when the host's
/// arguments already are as asked, so nothing needs a reboot.
pub fn with_changes(host: &[String], should_exist: &[String], should_not_exist: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = host.iter().filter(|w| !should_not_exist.contains(w)).cloned().collect();
    for k in should_exist {
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    (out != host).then_some(out)
}

/// Arguments a config may not add or remove: they say which deployment
/// and root the host boots, and ostree and the boot loader own them.
const OWNED_BY_THE_BOOT: [&str; 4] = ["root=", "ostree=", "BOOT_IMAGE=", "initrd="];

/// Check one argument a config names: a single word, not one the boot owns.
pub fn check_config_arg(arg: &str) -> Result<(), String> {
    if arg.is_empty() {
        return Err("an empty argument".into());
    }
    if arg.chars().any(char::is_whitespace) {
        return Err(format!("`{arg}` is more than one word"));
    }
    if let Some(p) = OWNED_BY_THE_BOOT.iter().find(|p| arg.starts_with(*p)) {
        return Err(format!("`{arg}`: `{p}` is set by the boot itself"));
    }
    Ok(())
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
    fn ignition_s_changes_remove_every_occurrence_and_append_what_is_missing() {
        let host = words("root=LABEL=cairn-root rw quiet console=tty0 quiet console=ttyS0");
        assert_eq!(
            with_changes(&host, &words("mitigations=auto console=ttyS0"), &words("quiet")),
            Some(words(
                "root=LABEL=cairn-root rw console=tty0 console=ttyS0 mitigations=auto"
            ))
        );
        // Already as asked: nothing to stage, no reboot.
        assert_eq!(with_changes(&host, &words("rw console=tty0"), &words("nosmt")), None);
        assert_eq!(with_changes(&host, &[], &[]), None);
    }

    #[test]
    fn a_config_may_not_touch_what_the_boot_owns_or_pass_two_words() {
        assert!(check_config_arg("mitigations=auto").is_ok());
        assert!(check_config_arg("nosmt").is_ok());
        assert_eq!(
            check_config_arg("root=/dev/vda4").unwrap_err(),
            "`root=/dev/vda4`: `root=` is set by the boot itself"
        );
        assert!(check_config_arg("ostree=/ostree/boot.1/x").is_err());
        assert_eq!(check_config_arg("a b").unwrap_err(), "`a b` is more than one word");
        assert_eq!(check_config_arg("").unwrap_err(), "an empty argument");
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
