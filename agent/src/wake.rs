//! The daemon's sleep, cut short when the agent's state changes: the CLI
//! staged an update (under `fleet-lock` or `kured` the daemon then goes to
//! the reboot gate at once, not at its next wake-up, up to a minute later)
//! or dropped one. The state file is replaced by a rename (see
//! [`crate::state`]), which inotify reports on its folder. Without inotify
//! (an error is logged) the sleep is a plain one.

use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub struct StateWatch {
    inotify: Option<Inotify>,
}

impl StateWatch {
    /// Watch `dir`, the folder of the state file (created if missing).
    pub fn new(dir: &Path) -> StateWatch {
        let watch = || -> Result<Inotify, String> {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let inotify =
                Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| format!("inotify: {e}"))?;
            inotify
                .add_watch(dir, AddWatchFlags::IN_MOVED_TO)
                .map_err(|e| format!("watching {}: {e}", dir.display()))?;
            Ok(inotify)
        };
        match watch() {
            Ok(inotify) => StateWatch { inotify: Some(inotify) },
            Err(e) => {
                tracing::warn!(error = %e, "the daemon notices state changes only when it wakes up");
                StateWatch { inotify: None }
            }
        }
    }

    /// Sleep for `d`, or until a file in the folder was replaced (renamed
    /// into place); returns whether that woke it.
    pub fn sleep(&self, d: Duration) -> bool {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(d);
            return false;
        };
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let woke = match nix::poll::poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for state changes");
                std::thread::sleep(d);
                false
            }
        };
        // Take what was reported, so the next sleep waits for news.
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
        }
        woke
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_state_file_wakes_the_sleep_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let watch = StateWatch::new(dir.path());
        // Nothing happens: the whole sleep.
        let started = std::time::Instant::now();
        assert!(!watch.sleep(Duration::from_millis(300)));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // The state file replaced (written beside, then renamed) during a
        // long sleep: it ends early, and says why.
        let path = dir.path().to_owned();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(path.join("state.json.tmp"), b"{}").unwrap();
            std::fs::rename(path.join("state.json.tmp"), path.join("state.json")).unwrap();
        });
        let started = std::time::Instant::now();
        assert!(watch.sleep(Duration::from_secs(60)));
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        writer.join().unwrap();
        // Its events were taken: the next sleep waits again.
        assert!(!watch.sleep(Duration::from_millis(200)));
    }
}
