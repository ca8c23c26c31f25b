//! Checks made from inside a booted guest, over its serial console, that
//! several test files share: the system came up whole, the built commit is
//! the booted deployment, and the root filesystem sits where it should and
//! grew to fill its disk. Each panics with what the guest showed.

use std::time::Duration;

use cairn_builder::image::BuiltImage;

use crate::vm::Vm;

const WAIT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(180);

/// The system reached its default target with no failed unit.
pub fn assert_running_without_failures(vm: &Vm) {
    let state = vm.console.run("systemctl is-system-running --wait", WAIT).unwrap();
    if state.output.trim() != "running" {
        let failed = vm
            .console
            .run(
                "systemctl --failed --no-legend --plain; journalctl -b -p err --no-pager | tail -n 40",
                COMMAND,
            )
            .unwrap();
        panic!("system state is {:?}, not running:\n{}", state.output, failed.output);
    }
}

/// `ostree admin status` marks the built commit as the booted deployment.
pub fn assert_booted(vm: &Vm, image: &BuiltImage) {
    let status = vm.console.run_ok("ostree admin status", COMMAND).unwrap();
    let booted = status
        .lines()
        .find(|l| l.starts_with("* "))
        .unwrap_or_else(|| panic!("no booted deployment in:\n{status}"));
    assert!(
        booted.contains(&format!("{}.0", image.commit)),
        "booted {booted:?}, built {}:\n{status}",
        image.commit
    );
    assert!(status.contains(&format!("Version: {}", image.version)), "{status}");
}

/// Bytes of the filesystem mounted at /sysroot.
pub fn root_fs_bytes(vm: &Vm) -> u64 {
    let out = vm
        .console
        .run_ok("df -B1 --output=size /sysroot | tail -n 1", COMMAND)
        .unwrap();
    out.trim().parse().unwrap_or_else(|_| panic!("df printed {out:?}"))
}

/// The root filesystem is mounted from `device` and grew to within half a
/// GiB of the `disk_size`-byte disk it was put on (the image is smaller).
pub fn assert_root_fills_disk(vm: &Vm, device: &str, disk_size: u64) {
    let source = vm.console.run_ok("findmnt -no SOURCE /sysroot", COMMAND).unwrap();
    assert_eq!(source.trim(), device);
    let fs = root_fs_bytes(vm);
    let slack = 1 << 29;
    assert!(
        fs + slack > disk_size,
        "the root filesystem is {fs} bytes on a {disk_size}-byte disk: it did not grow"
    );
}
