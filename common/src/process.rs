//! The one way Cairn runs another program.
//!
//! Every external command goes through [`Cmd`]: it logs the argv, gives the
//! child an empty stdin unless told otherwise, streams the child's output
//! lines into tracing (so long steps show progress) and, on failure, puts the
//! tail of stderr into the error so the cause is in front of the user.
//!
//! A program that calls [`forward_stop_signals`] first thing is stopped
//! cleanly: SIGINT, SIGTERM or SIGHUP goes to the commands it is running
//! (each in its own process group, so a terminal's Ctrl-C reaches them only
//! this way, once), the program waits for them to clean up, and the command
//! fails with [`Interrupted`], so the program unwinds and removes what it
//! made; no command starts after that. With no command running, or at a
//! second signal, the program stops at once.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Characters of one argument shown in logs and errors.
pub const SHOWN_ARG_CHARS: usize = 200;

/// Lines of stderr kept for the error message of a failed command.
const STDERR_TAIL_LINES: usize = 25;

/// Signals that stop a Cairn program.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// A command failed because the program was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {0}")]
pub struct Interrupted(pub Signal);

/// Whether [`forward_stop_signals`] was called.
static FORWARDING: AtomicBool = AtomicBool::new(false);

/// The commands running now, and the stop signal received, if any.
static CHILDREN: Mutex<Children> = Mutex::new(Children {
    stopped_by: None,
    running: Vec::new(),
});

struct Children {
    stopped_by: Option<Signal>,
    running: Vec<Running>,
}

/// A running command: a signal goes to its process group, or to the
/// process alone when it shares ours (a child on the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    pid: i32,
    group: bool,
    /// Whether a stop waits for it to clean up (see [`Cmd::unawaited`]).
    awaited: bool,
}

impl Running {
    fn target(self) -> Pid {
        Pid::from_raw(if self.group { -self.pid } else { self.pid })
    }
}

fn children() -> MutexGuard<'static, Children> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stop this program cleanly on SIGINT, SIGTERM and SIGHUP (see the module
/// documentation). Call it first thing in `main`. A handler takes the
/// signals (children start with their default action, as `exec` resets
/// handled signals) and one thread acts on them.
pub fn forward_stop_signals() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new(STOP_SIGNALS.map(|s| s as i32))
        .context("installing the stop-signal handler")?;
    FORWARDING.store(true, Ordering::SeqCst);
    thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            for raw in signals.forever() {
                if let Ok(sig) = Signal::try_from(raw) {
                    on_stop_signal(sig);
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The stop signal this program received, if any.
pub fn interrupted() -> Option<Signal> {
    children().stopped_by
}

/// The exit code of a program that failed: 128 + the signal when it was
/// told to stop (what a shell reports for a program killed by it), else 1.
pub fn failure_exit_code() -> u8 {
    interrupted().map_or(1, |s| 128 + s as u8)
}

/// Whether a stop signal ends the program at once (pure): when it is the
/// second one, or when no running command is one the program's work waits
/// on (an observer such as `systemctl is-system-running --wait` is only
/// killed). Otherwise the awaited commands get the signal and clean up.
fn stops_at_once(running: &[Running], again: bool) -> bool {
    again || running.iter().all(|r| !r.awaited)
}

fn on_stop_signal(sig: Signal) {
    let mut c = children();
    let again = c.stopped_by.is_some();
    c.stopped_by.get_or_insert(sig);
    if stops_at_once(&c.running, again) {
        for r in &c.running {
            let _ = signal::kill(r.target(), Signal::SIGKILL);
        }
        drop(c);
        tracing::warn!("{sig} received: stopping now");
        // The signal's default action: the program ends as killed by it.
        let _ = signal_hook::low_level::emulate_default_handler(sig as i32);
        std::process::exit(128 + sig as i32);
    }
    for r in &c.running {
        let _ = signal::kill(r.target(), sig);
    }
    tracing::warn!(
        "{sig} received: stopping the running command and waiting for it to clean up (again to stop at once)"
    );
}

/// Start `command` unless the program was told to stop, and register it
/// for signal forwarding (in one step, so a signal cannot fall between).
fn spawn_registered(command: &mut Command, shown: &str, group: bool, awaited: bool) -> Result<Child> {
    let mut c = children();
    if let Some(sig) = c.stopped_by {
        return Err(anyhow::Error::new(Interrupted(sig)).context(format!("not starting `{shown}`")));
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting `{shown}` (is it installed?)"))?;
    if FORWARDING.load(Ordering::SeqCst) {
        c.running.push(Running {
            pid: child.id() as i32,
            group,
            awaited,
        });
    }
    Ok(child)
}

/// The child `pid` ended: forget it; the stop signal received while it ran.
fn unregister(pid: u32) -> Option<Signal> {
    let mut c = children();
    c.running.retain(|r| r.pid != pid as i32);
    c.stopped_by
}

/// How the child's output lines reach the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Each line at `info`: long steps whose progress the user wants to see.
    Progress,
    /// Each line at `debug` (default).
    Quiet,
}

/// A command about to run. Build it like [`std::process::Command`].
pub struct Cmd {
    command: Command,
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    echo: Echo,
    timeout: Option<Duration>,
    stall: Option<StallWatch>,
    awaited: bool,
}

/// A child that must keep making progress: `progress(pid)` is sampled every
/// second; if it stays the same for `limit`, the child is killed.
struct StallWatch {
    limit: Duration,
    progress: Box<dyn Fn(u32) -> u64 + Send>,
}

/// Decides when a sampled progress value has stopped moving (pure, so it is
/// tested without processes or clocks).
#[derive(Debug, Clone)]
pub struct StallTracker {
    limit: Duration,
    last_value: Option<u64>,
    last_change: Duration,
}

impl StallTracker {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            last_value: None,
            last_change: Duration::ZERO,
        }
    }

    /// Record `value` sampled at `at` (time since the start); true once it
    /// has not changed for the limit.
    pub fn stalled(&mut self, value: u64, at: Duration) -> bool {
        if self.last_value != Some(value) {
            self.last_value = Some(value);
            self.last_change = at;
            return false;
        }
        at.saturating_sub(self.last_change) >= self.limit
    }
}

/// Why the watchdog killed a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Killed {
    Timeout(Duration),
    Stalled(Duration),
}

/// What a finished command printed.
pub struct Output {
    pub stdout: String,
    pub stderr_tail: String,
}

impl Cmd {
    #[allow(clippy::disallowed_methods, reason = "the one place a Command is made")]
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program.as_ref()),
            argv: vec![program.as_ref().to_owned()],
            stdin: None,
            echo: Echo::Quiet,
            timeout: None,
            stall: None,
            awaited: true,
        }
    }

    /// A command the program does not wait on when told to stop: an
    /// observer running beside the work (`systemctl is-system-running
    /// --wait`). A stop kills it, and it does not keep the program from
    /// ending at once as it would with nothing running.
    pub fn unawaited(mut self) -> Self {
        self.awaited = false;
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg.as_ref());
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Feed these bytes to the child's stdin.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Show the child's output lines at `info`.
    pub fn progress(mut self) -> Self {
        self.echo = Echo::Progress;
        self
    }

    /// The command line as the user would type it, for logs and errors;
    /// an argument longer than [`SHOWN_ARG_CHARS`] (a package dictionary,
    /// say) is shortened.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| {
                let full = a.to_string_lossy();
                let s = match full.char_indices().nth(SHOWN_ARG_CHARS) {
                    Some((cut, _)) => format!("{}…(+{} chars)", &full[..cut], full[cut..].chars().count()).into(),
                    None => full,
                };
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
                    format!("'{}'", s.replace('\'', "'\\''"))
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Kill the command (and every process it started) if it has not
    /// finished within `limit`; the run then fails saying so.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Kill the command (and every process it started) once `progress`,
    /// sampled every second with the child's pid, has not changed for
    /// `limit`; the run then fails saying it stalled.
    pub fn stall_timeout(mut self, limit: Duration, progress: impl Fn(u32) -> u64 + Send + 'static) -> Self {
        self.stall = Some(StallWatch {
            limit,
            progress: Box::new(progress),
        });
        self
    }

    /// Run to completion; fail unless it exits 0.
    pub fn run(self) -> Result<()> {
        self.output().map(|_| ())
    }

    /// Run to completion and return its stdout; fail unless it exits 0.
    pub fn output(self) -> Result<Output> {
        let (status, output, shown) = self.run_capturing()?;
        if status.success() {
            Ok(output)
        } else {
            Err(failure(&shown, status, &output.stderr_tail))
        }
    }

    /// Run to completion and return the exit status and output whatever it is,
    /// for commands whose non-zero exit is an answer rather than a failure.
    pub fn status_output(self) -> Result<(ExitStatus, Output)> {
        let (status, output, _) = self.run_capturing()?;
        Ok((status, output))
    }

    /// Start a long-running child with piped stdin, stdout and stderr; the
    /// caller owns its lifetime (and stopping it).
    pub fn spawn_piped(mut self) -> Result<Child> {
        let shown = self.display();
        tracing::info!(command = %shown, "spawning");
        if let Some(sig) = interrupted() {
            return Err(anyhow::Error::new(Interrupted(sig)).context(format!("not starting `{shown}`")));
        }
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{shown}`"))
    }

    /// Run with this process's stdin, stdout and stderr (a VM on the
    /// terminal, a test runner whose report the user reads); returns the
    /// exit status. The child stays in the terminal's process group.
    pub fn status_inherited(mut self) -> Result<ExitStatus> {
        let shown = self.display();
        tracing::info!(command = %shown, "running with inherited stdio");
        let mut child = spawn_registered(&mut self.command, &shown, false, self.awaited)?;
        let status = child.wait().with_context(|| format!("running `{shown}`"));
        if let Some(sig) = unregister(child.id()) {
            return Err(anyhow::Error::new(Interrupted(sig)).context(format!("`{shown}` did not finish")));
        }
        status
    }

    /// Like [`Cmd::status_inherited`], failing unless it exits 0.
    pub fn run_inherited(self) -> Result<()> {
        let shown = self.display();
        let status = self.status_inherited()?;
        if status.success() {
            Ok(())
        } else {
            Err(anyhow!("`{shown}` failed ({status})"))
        }
    }

    /// A program that is not there is named as such up front: where `exec`
    /// failures surface as exit status 127 of the child (qemu-user, which
    /// runs the aarch64 agent's tests), `spawn` alone would not say so.
    fn ensure_found(&self, shown: &str) -> Result<()> {
        let program = Path::new(self.command.get_program());
        let found = if program.components().count() > 1 {
            program.exists()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        };
        if found {
            Ok(())
        } else {
            Err(anyhow!(
                "starting `{shown}` (is it installed?): {} not found",
                program.display()
            ))
        }
    }

    fn run_capturing(mut self) -> Result<(ExitStatus, Output, String)> {
        let shown = self.display();
        tracing::info!(command = %shown, "running");
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let watched = self.timeout.is_some() || self.stall.is_some();
        if watched || FORWARDING.load(Ordering::SeqCst) {
            // Its own process group, so the watchdog kills what it started
            // too, and a stop signal reaches all of it once, from us.
            std::os::unix::process::CommandExt::process_group(&mut self.command, 0);
        }
        self.ensure_found(&shown)?;
        let mut child = spawn_registered(&mut self.command, &shown, true, self.awaited)?;
        let watchdog = watched.then(|| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let pid = child.id();
            let (timeout, stall) = (self.timeout, self.stall.take());
            let fired = thread::spawn(move || watch(pid, &finished, timeout, stall));
            (done, fired)
        });
        let writer = child.stdin.take().zip(self.stdin.take()).map(|(mut pipe, bytes)| {
            thread::spawn(move || {
                // A child that exits without reading its input is not our error.
                let _ = pipe.write_all(&bytes);
            })
        });
        let echo = self.echo;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let stderr_thread = {
            let tail = Arc::clone(&tail);
            thread::spawn(move || {
                for line in lines(stderr) {
                    log_line(echo, &line);
                    let mut tail = tail.lock().expect("stderr tail lock");
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        let mut captured = Vec::new();
        let mut reader = BufReader::new(stdout);
        if echo == Echo::Progress {
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line)? > 0 {
                log_line(echo, String::from_utf8_lossy(&line).trim_end());
                captured.extend_from_slice(&line);
                line.clear();
            }
        } else {
            reader.read_to_end(&mut captured)?;
        }
        let status = child.wait().with_context(|| format!("waiting for `{shown}`"));
        let stopped_by = unregister(child.id());
        let status = status?;
        if let Some((done, fired)) = watchdog {
            let _ = done.send(());
            match fired.join().ok().flatten() {
                Some(Killed::Timeout(limit)) => {
                    return Err(anyhow!(
                        "`{shown}` did not finish within {}s and was killed",
                        limit.as_secs()
                    ))
                }
                Some(Killed::Stalled(limit)) => {
                    return Err(anyhow!(
                        "`{shown}` made no progress for {}s (stalled) and was killed",
                        limit.as_secs()
                    ))
                }
                None => {}
            }
        }
        let _ = stderr_thread.join();
        if let Some(w) = writer {
            let _ = w.join();
        }
        if let Some(sig) = stopped_by {
            // Whatever it exited with, it did not do its work.
            return Err(anyhow::Error::new(Interrupted(sig)).context(format!("`{shown}` did not finish")));
        }
        let tail = tail.lock().expect("stderr tail lock");
        let stderr_tail = tail.iter().cloned().collect::<Vec<_>>().join("\n");
        tracing::debug!(command = %shown, %status, "finished");
        Ok((
            status,
            Output {
                stdout: String::from_utf8_lossy(&captured).into_owned(),
                stderr_tail,
            },
            shown,
        ))
    }
}

fn lines(r: impl Read) -> impl Iterator<Item = String> {
    BufReader::new(r)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).trim_end().to_owned())
}

fn log_line(echo: Echo, line: &str) {
    match echo {
        Echo::Progress => tracing::info!("  {line}"),
        Echo::Quiet => tracing::debug!("  {line}"),
    }
}

fn failure(shown: &str, status: ExitStatus, stderr_tail: &str) -> anyhow::Error {
    if stderr_tail.trim().is_empty() {
        anyhow!("`{shown}` failed ({status})")
    } else {
        anyhow!("`{shown}` failed ({status}); its last output:\n{stderr_tail}")
    }
}

/// The watchdog of one child: until `finished` says it exited, kill its
/// process group at the timeout or when its progress stalls.
fn watch(
    pid: u32,
    finished: &std::sync::mpsc::Receiver<()>,
    timeout: Option<Duration>,
    stall: Option<StallWatch>,
) -> Option<Killed> {
    let started = Instant::now();
    let mut tracker = stall.as_ref().map(|s| StallTracker::new(s.limit));
    let verdict = loop {
        let tick = match timeout {
            Some(limit) => limit.saturating_sub(started.elapsed()).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        match finished.recv_timeout(tick) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return None,
        }
        if let Some(limit) = timeout.filter(|l| started.elapsed() >= *l) {
            break Killed::Timeout(limit);
        }
        if let (Some(watch), Some(tracker)) = (&stall, tracker.as_mut()) {
            if tracker.stalled((watch.progress)(pid), started.elapsed()) {
                break Killed::Stalled(watch.limit);
            }
        }
    };
    let group = nix::unistd::Pid::from_raw(-(pid as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    Some(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_argument_is_shortened_in_logs_and_errors() {
        let long = "x".repeat(SHOWN_ARG_CHARS + 50);
        let shown = Cmd::new("ostree").arg("commit").arg(&long).display();
        assert_eq!(
            shown,
            format!("ostree commit '{}…(+50 chars)'", "x".repeat(SHOWN_ARG_CHARS))
        );
        assert_eq!(Cmd::new("echo").arg("a b").display(), "echo 'a b'");
    }

    #[test]
    fn progress_that_stops_moving_for_the_limit_is_a_stall() {
        let s = Duration::from_secs;
        let mut t = StallTracker::new(s(10));
        assert!(!t.stalled(0, s(0)));
        assert!(!t.stalled(0, s(9)));
        assert!(!t.stalled(5, s(10)), "a change restarts the clock");
        assert!(!t.stalled(5, s(19)));
        assert!(t.stalled(5, s(20)));
    }

    #[test]
    fn a_command_that_stops_making_progress_is_killed() {
        let started = Instant::now();
        let e = Cmd::new("sh")
            .args(["-c", "sleep 30"])
            .stall_timeout(Duration::from_secs(2), |_| 7)
            .run()
            .unwrap_err();
        assert!(e.to_string().contains("made no progress for 2s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn captures_stdout_and_feeds_stdin() {
        let out = Cmd::new("sh")
            .args(["-c", "tr a-z A-Z"])
            .stdin_bytes("cairn")
            .output()
            .unwrap();
        assert_eq!(out.stdout, "CAIRN");
    }

    #[test]
    fn failure_names_command_and_stderr_tail() {
        let err = Cmd::new("sh")
            .args(["-c", "echo first >&2; echo 'the cause' >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sh -c 'echo first >&2; echo '\\''the cause'\\'' >&2; exit 3'` failed"),
            "{err}"
        );
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.ends_with("first\nthe cause"), "{err}");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let err = format!("{:#}", Cmd::new("cairn-no-such-program").run().unwrap_err());
        assert!(
            err.contains("starting `cairn-no-such-program` (is it installed?)"),
            "{err}"
        );
    }

    #[test]
    fn status_output_returns_non_zero_exit() {
        let (status, out) = Cmd::new("sh").args(["-c", "echo no; exit 1"]).status_output().unwrap();
        assert_eq!(status.code(), Some(1));
        assert_eq!(out.stdout, "no\n");
    }

    #[test]
    fn timeout_kills_the_command_and_what_it_started() {
        let started = std::time::Instant::now();
        let err = Cmd::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .timeout(std::time::Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(
            err.to_string().contains("did not finish within 0s and was killed"),
            "{err}"
        );
        // The background sleep held stdout open: it was killed too, or this would take 30 s.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let out = Cmd::new("echo")
            .arg("quick")
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        assert_eq!(out.stdout, "quick\n");
    }

    #[test]
    fn a_stop_waits_only_for_commands_the_work_waits_on() {
        let run = |pid, awaited| Running {
            pid,
            group: true,
            awaited,
        };
        // Nothing running, or only an observer: the program ends at once.
        assert!(stops_at_once(&[], false));
        assert!(stops_at_once(&[run(7, false)], false));
        // An ostree pull beside the observer: it is signalled and waited for.
        assert!(!stops_at_once(&[run(7, false), run(8, true)], false));
        // A second signal ends it at once whatever runs.
        assert!(stops_at_once(&[run(8, true)], true));
    }
}
