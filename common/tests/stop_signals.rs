//! A program that forwards stop signals: a SIGTERM while a command runs
//! reaches the command, which cleans up before the program goes on (with
//! [`Interrupted`]); with no command running, the program ends at once.
//! Its own program (`harness = false`): the signal set-up is process-wide.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use cairn_common::process::{self, Cmd, Interrupted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpid, Pid};

const IDLE: &str = "CAIRN_STOP_SIGNALS_IDLE";

fn main() {
    process::forward_stop_signals().unwrap();
    if std::env::var_os(IDLE).is_some() {
        // The idle program of `ends_at_once_when_nothing_runs`.
        println!("ready");
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(0);
    }
    // This one first: after the other, this program starts no command.
    ends_at_once_when_nothing_runs();
    a_running_command_is_stopped_and_cleans_up();
    println!("stop_signals: 2 tests passed");
}

fn a_running_command_is_stopped_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("cleaned");
    let me = getpid();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        kill(me, Signal::SIGTERM).unwrap();
    });
    let started = Instant::now();
    // The shell and its background sleep form the command's process group:
    // both get the signal; the shell's trap is its clean-up, which takes a while.
    let script = format!(
        "trap 'sleep 1; echo done > {}; exit 3' TERM; sleep 60 & wait",
        marker.display()
    );
    let err = Cmd::new("sh").args(["-c", &script]).run().unwrap_err();
    assert_eq!(
        err.downcast_ref::<Interrupted>(),
        Some(&Interrupted(Signal::SIGTERM)),
        "{err:#}"
    );
    assert!(
        format!("{err:#}").contains("did not finish: interrupted by SIGTERM"),
        "{err:#}"
    );
    assert!(marker.exists(), "the command's clean-up ran before run() returned");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the background sleep was stopped too"
    );
    assert_eq!(process::interrupted(), Some(Signal::SIGTERM));
    assert_eq!(process::failure_exit_code(), 143);
    let err = Cmd::new("true").run().unwrap_err();
    assert!(
        format!("{err:#}").contains("not starting `true`: interrupted by SIGTERM"),
        "{err:#}"
    );
    println!("a_running_command_is_stopped_and_cleans_up: ok");
}

fn ends_at_once_when_nothing_runs() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Cmd::new(exe).env(IDLE, "1").spawn_piped().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let started = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    println!("ends_at_once_when_nothing_runs: ok");
}
