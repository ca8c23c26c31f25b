//! The guest's serial console: read with timeouts, write commands, and run
//! shell commands with their exit status.
//!
//! Every byte the guest prints is kept (and copied to a log file when one is
//! given). Matching is done on the text with terminal escape sequences and
//! carriage returns removed, from a cursor that each match moves forward, so
//! a test never matches output it already consumed.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Default)]
struct Shared {
    raw: Vec<u8>,
    closed: bool,
}

pub struct Console {
    input: Mutex<ChildStdin>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    cursor: Mutex<usize>,
    serial: Mutex<u64>,
}

/// What a shell command printed, and its exit status.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: i32,
    pub output: String,
}

impl Console {
    /// Take over the child's stdin and stdout (its serial port).
    pub fn attach(child: &mut Child) -> Result<Console> {
        Console::attach_with_log(child, None)
    }

    pub fn attach_with_log(child: &mut Child, log: Option<&Path>) -> Result<Console> {
        let input = child.stdin.take().context("the VM's stdin is not piped")?;
        let mut output = child.stdout.take().context("the VM's stdout is not piped")?;
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        // QEMU's own complaints (bad option, missing firmware) go into the
        // transcript too, so a VM that dies at once says why.
        if let Some(mut errors) = child.stderr.take() {
            let sink = Arc::clone(&shared);
            thread::spawn(move || {
                let mut text = String::new();
                let _ = errors.read_to_string(&mut text);
                if !text.is_empty() {
                    let (lock, cvar) = &*sink;
                    let mut s = lock.lock().expect("console lock");
                    s.raw.extend_from_slice(format!("\n[qemu stderr] {text}").as_bytes());
                    cvar.notify_all();
                }
            });
        }
        let mut log_file = log.map(File::create).transpose()?;
        let reader = Arc::clone(&shared);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = output.read(&mut buf).unwrap_or(0);
                let (lock, cvar) = &*reader;
                let mut s = lock.lock().expect("console lock");
                if n == 0 {
                    s.closed = true;
                    cvar.notify_all();
                    return;
                }
                s.raw.extend_from_slice(&buf[..n]);
                if let Some(f) = log_file.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                cvar.notify_all();
            }
        });
        Ok(Console {
            input: Mutex::new(input),
            shared,
            cursor: Mutex::new(0),
            serial: Mutex::new(0),
        })
    }

    /// Everything printed so far, cleaned of escape sequences.
    pub fn transcript(&self) -> String {
        let s = self.shared.0.lock().expect("console lock");
        clean(&s.raw)
    }

    /// The last `n` characters printed, for error messages.
    pub fn tail(&self, n: usize) -> String {
        tail_of(&self.transcript(), n)
    }

    /// Wait until `needle` appears after the cursor; return the text up to
    /// and including it, and move the cursor past it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|(_, text)| text)
    }

    /// Like [`Console::wait_for`] but without the transcript in the error.
    pub fn wait_for_quietly(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_any_inner(&[needle], timeout).map(|(_, t)| t)
    }

    /// Wait for the first of several texts; returns its index and the text.
    /// Stops early with a [`GuestStalled`] error when the guest kernel
    /// reports a lost timer: that guest will never get there.
    pub fn wait_for_any(&self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        self.wait_any_inner(needles, timeout).map_err(|e| {
            if e.is::<GuestStalled>() {
                return e;
            }
            anyhow!("{e}\n--- last console output ---\n{}\n---", self.tail(3000))
        })
    }

    fn wait_any_inner(&self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut s = lock.lock().expect("console lock");
        loop {
            let text = clean(&s.raw);
            let mut cursor = self.cursor.lock().expect("cursor lock");
            let from = (*cursor).min(text.len());
            let found = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| text[from..].find(n).map(|pos| (pos, i, n.len())))
                .min();
            if let Some((pos, i, len)) = found {
                let end = from + pos + len;
                *cursor = end;
                return Ok((i, text[from..end].to_owned()));
            }
            drop(cursor);
            if let Some(signature) = stall_signature(&text[from..]) {
                return Err(GuestStalled {
                    signature,
                    waiting_for: format!("{needles:?}"),
                    console_tail: tail_of(&text, 3000),
                }
                .into());
            }
            if s.closed {
                bail!("the VM exited before printing any of {needles:?}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out after {timeout:?} waiting for any of {needles:?}");
            }
            s = cvar
                .wait_timeout(s, (deadline - now).min(Duration::from_millis(500)))
                .expect("console lock")
                .0;
        }
    }

    /// Type `text` into the console.
    pub fn send(&self, text: &str) -> Result<()> {
        let mut input = self.input.lock().expect("input lock");
        input
            .write_all(text.as_bytes())
            .context("writing to the VM's console")?;
        input.flush()?;
        Ok(())
    }

    /// Run a shell command at a logged-in prompt and return its output and
    /// exit status. Markers are computed by the guest's shell (`$((…))`), so
    /// the echo of the typed line can never match them.
    pub fn run(&self, command: &str, timeout: Duration) -> Result<CommandOutput> {
        let n = {
            let mut serial = self.serial.lock().expect("serial lock");
            *serial += 1;
            *serial
        };
        let begin = format!("@@B{n}@@");
        let end_prefix = format!("@@E{n}:");
        self.send(&format!("echo @@B$(({n}))@@; {command}; echo @@E$(({n})):$?@@\n"))?;
        self.wait_for(&begin, timeout)?;
        let text = self
            .wait_for(&end_prefix, timeout)
            .with_context(|| format!("running `{command}` in the guest"))?;
        let rest = self.wait_for("@@", Duration::from_secs(10))?;
        let status: i32 = rest
            .trim_end_matches("@@")
            .trim()
            .parse()
            .with_context(|| format!("reading the exit status of `{command}` from {rest:?}"))?;
        let output = text[..text.len() - end_prefix.len()]
            .trim_matches(['\n', ' '])
            .to_owned();
        Ok(CommandOutput { status, output })
    }

    /// Run a shell command that must succeed; return its output.
    pub fn run_ok(&self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.status != 0 {
            bail!("`{command}` exited with {} in the guest:\n{}", out.status, out.output);
        }
        Ok(out.output)
    }
}

/// The guest kernel reported that a CPU's timer stopped firing, so the
/// guest can no longer make progress. Seen under TCG only (the CPU idles in
/// `hlt` and the emulator never delivers its timer interrupt; the other CPU
/// then reports the stall every minute): a fault of the emulated machine,
/// not of the image, so the harness may start a fresh VM instead.
#[derive(Debug)]
pub struct GuestStalled {
    /// The kernel's line that says so.
    pub signature: String,
    pub waiting_for: String,
    pub console_tail: String,
}

impl std::fmt::Display for GuestStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest kernel reports a CPU whose timer stopped firing (`{}`), while waiting for any of {}; the VM cannot go on\n--- last console output ---\n{}\n---",
            self.signature, self.waiting_for, self.console_tail
        )
    }
}

impl std::error::Error for GuestStalled {}

/// The kernel's words for a CPU whose timer interrupt stopped (RCU's stall
/// detector: "rcu_preempt kthread timer wakeup didn't happen for N jiffies!
/// … Possible timer handling issue on cpu=0"). Ordinary RCU stall warnings
/// (a slow emulated CPU) are not this: they pass.
const STALL_SIGNATURES: &[&str] = &["Possible timer handling issue on cpu="];

/// The console line holding a stall signature, if `text` has one.
pub fn stall_signature(text: &str) -> Option<String> {
    STALL_SIGNATURES.iter().find_map(|needle| {
        let at = text.find(needle)?;
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        Some(text[start..end].trim().to_owned())
    })
}

/// The last `n` characters of `text`.
fn tail_of(text: &str, n: usize) -> String {
    let start = text.char_indices().rev().nth(n).map_or(0, |(i, _)| i);
    text[start..].to_owned()
}

/// Remove terminal escape sequences and carriage returns.
pub fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    // Parameters and intermediates, then one final byte.
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    for d in chars.by_ref() {
                        if d == '\u{7}' {
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\r' | '\u{7}' | '\u{0}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn clean_removes_escapes() {
        let raw = b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m\r\n\x1b[?2004hroot@cairn:~# ";
        assert_eq!(clean(raw), "  OK  ] Reached target multi-user.target\nroot@cairn:~# ");
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "an interactive shell on raw pipes stands in for a guest"
    )]
    fn shell() -> (Child, Console) {
        let mut child = Command::new("sh")
            .args(["-c", "exec sh -i 2>&1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let console = Console::attach(&mut child).unwrap();
        (child, console)
    }

    #[test]
    fn runs_commands_and_reads_status() {
        let (mut child, console) = shell();
        let out = console.run("echo hello; false", Duration::from_secs(10)).unwrap();
        assert_eq!((out.status, out.output.as_str()), (1, "hello"));
        let out = console.run("printf 'a\\nb\\n'", Duration::from_secs(10)).unwrap();
        assert_eq!((out.status, out.output.as_str()), (0, "a\nb"));
        assert!(console.run_ok("exit 3", Duration::from_secs(5)).is_err());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_lost_timer_is_recognised_and_ordinary_stall_warnings_are_not() {
        let lost = "[  401.299] rcu: rcu_preempt kthread timer wakeup didn't happen for 15755 jiffies! g-1131\n[  401.299442] rcu: \tPossible timer handling issue on cpu=0 timer-softirq=8\n[  401.2996] rcu: rcu_preempt kthread starved";
        assert_eq!(
            stall_signature(lost).as_deref(),
            Some("[  401.299442] rcu: \tPossible timer handling issue on cpu=0 timer-softirq=8")
        );
        let slow = "[   60.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n[   60.2] rcu: \t1-....: (1 GPs behind)\nroot@cairn:~# ";
        assert_eq!(stall_signature(slow), None);
    }

    #[test]
    fn a_guest_that_reports_a_lost_timer_fails_the_wait_at_once() {
        let (mut child, console) = shell();
        console
            .send("echo 'rcu: Possible timer ha''ndling issue on cpu=1 timer-softirq=3'\n")
            .unwrap();
        let started = Instant::now();
        let e = console.wait_for("never printed", Duration::from_secs(60)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited {:?}",
            started.elapsed()
        );
        let stalled = e.downcast_ref::<GuestStalled>().expect("a GuestStalled error");
        assert!(stalled.signature.contains("cpu=1"), "{stalled}");
        assert!(stalled.to_string().contains("never printed"), "{stalled}");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn times_out_with_context() {
        let (mut child, console) = shell();
        let e = console
            .wait_for("never printed", Duration::from_millis(300))
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
