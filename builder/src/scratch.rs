//! Scratch space of the build cache: one build at a time per cache, and
//! work folders that go away whole, even after an interrupted build.
//!
//! mmdebstrap mounts `/proc`, `/sys`, `/dev/pts` and `/dev/shm` inside the
//! root it builds, in a work folder here. A build stopped at the wrong
//! moment (or mmdebstrap killed by a signal while it installs packages,
//! when it does not unmount) leaves them mounted; deleting the folder then
//! would reach into them. So every removal first unmounts what the mount
//! table (`/proc/self/mountinfo`) shows below the folder, and a build starts
//! by clearing what interrupted builds left in the cache's `tmp/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::MntFlags;

/// The cache's lock, held while a build uses it (released when the
/// process ends, however it ends).
pub struct CacheLock {
    _file: Flock<File>,
}

/// Take the lock of the cache at `root`, waiting for a build that holds it.
pub fn lock(root: &Path) -> Result<CacheLock> {
    let path = root.join("lock");
    let open = || File::create(&path).with_context(|| format!("creating {}", path.display()));
    let file = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::info!(cache = %root.display(), "another build is using the cache: waiting for it");
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .with_context(|| format!("locking {}", path.display()))?
        }
        Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    };
    Ok(CacheLock { _file: file })
}

/// The mount points in `mountinfo` (the text of `/proc/<pid>/mountinfo`)
/// strictly below `dir`, deepest first (the order to unmount them in).
pub fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p != dir && p.starts_with(dir))
        .collect();
    // Later mounts may sit on earlier ones: unmount in reverse order, and
    // children before their parents.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undo mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything mounted below `dir`; returns how many. Detached
/// lazily, so a process still inside cannot keep the folder's files
/// reachable through it.
pub fn unmount_below(dir: &Path) -> Result<usize> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let table = fs::read_to_string("/proc/self/mountinfo").context("reading the mount table")?;
    let mounts = mounts_below(&table, &dir);
    for m in &mounts {
        tracing::info!(mount = %m.display(), "unmounting what an interrupted build left mounted");
        nix::mount::umount2(m, MntFlags::MNT_DETACH).with_context(|| format!("unmounting {}", m.display()))?;
    }
    Ok(mounts.len())
}

/// Remove the folder `dir` and everything in it, unmounting first.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_below(dir)?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Remove whatever is in `tmp` (what interrupted builds left). Call it
/// holding the cache's lock.
pub fn clear(tmp: &Path) -> Result<()> {
    unmount_below(tmp)?;
    for e in fs::read_dir(tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let path = e?.path();
        tracing::info!(folder = %path.display(), "removing an interrupted build's work folder");
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// A work folder in the cache's `tmp/`, removed (mounts first) when dropped.
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    pub fn new(tmp: &Path, prefix: &str) -> Result<WorkDir> {
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(tmp)
            .with_context(|| format!("creating a work folder in {}", tmp.display()))?
            .keep();
        Ok(WorkDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!("could not remove {} (the next build will): {e:#}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mmdebstrap's mounts look like in a build's work folder.
    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
90 22 0:5 / /root/.cache/cairn/tmp/base-x1/root/dev/pts rw - devpts devpts rw,gid=5,mode=620,ptmxmode=666
91 22 0:40 / /root/.cache/cairn/tmp/base-x1/root/dev/shm rw - tmpfs tmpfs rw
92 22 0:41 / /root/.cache/cairn/tmp/base-x1/root/proc rw - proc proc rw
93 22 0:22 / /root/.cache/cairn/tmp/base-x1/root/sys ro - sysfs sysfs ro
94 92 0:42 / /root/.cache/cairn/tmp/base-x1/root/proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
95 22 0:43 / /root/.cache/cairn/tmp-other/x rw - tmpfs tmpfs rw
96 22 0:44 / /root/.cache/cairn/tmp/with\\040space/proc rw - proc proc rw
";

    #[test]
    fn finds_the_mounts_below_a_folder_deepest_first() {
        let m = mounts_below(MOUNTINFO, Path::new("/root/.cache/cairn/tmp"));
        let p = |s: &str| PathBuf::from(format!("/root/.cache/cairn/tmp/{s}"));
        assert_eq!(
            m,
            vec![
                p("base-x1/root/proc/sys/fs/binfmt_misc"),
                p("base-x1/root/dev/shm"),
                p("base-x1/root/dev/pts"),
                p("base-x1/root/sys"),
                p("base-x1/root/proc"),
                p("with space/proc"),
            ]
        );
        assert!(mounts_below(MOUNTINFO, Path::new("/root/.cache/cairn/tmp/base-x1/root/sys")).is_empty());
        assert!(mounts_below(MOUNTINFO, Path::new("/srv")).is_empty());
    }

    #[test]
    fn unescapes_octal_and_keeps_the_rest() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain\\x"), "/plain\\x");
    }

    #[test]
    fn work_folders_go_away_and_clear_empties_tmp() {
        let d = tempfile::tempdir().unwrap();
        let w = WorkDir::new(d.path(), "base-").unwrap();
        fs::create_dir_all(w.path().join("root/usr")).unwrap();
        let path = w.path().to_owned();
        drop(w);
        assert!(!path.exists());
        fs::create_dir_all(d.path().join("base-old/root")).unwrap();
        fs::write(d.path().join("stray"), "x").unwrap();
        clear(d.path()).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
