//! Power cuts during an update. A VM runs the dev image against a loopback
//! update server; the rig starts an update, kills QEMU at a chosen moment
//! (the guest loses its memory: page cache, requests in flight), switches
//! the machine on again on the same disk, and checks what a power cut must
//! leave: a host that boots by itself into the old or the new release, with
//! no failed unit, the agent settled, and `ostree fsck` clean.
//!
//! The moments are named by what the guest is doing (a request reaching the
//! server, a line on the serial console), so a cut lands in the same phase
//! of the update whatever the machine's speed. `cargo xtask bench
//! power-cut` cuts at random times instead, many times over.
//!
//! The rig walks forward through releases: a cut that leaves the host on
//! the new release (or marks it bad) makes the next cut update to a newer
//! one, composed and published on demand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::agent_status::{self, booted_version, is_bad, settled};
use crate::console::GuestStalled;
use crate::http::{Fault, Server};
use crate::releases::TestReleases;
use crate::vm::{Vm, VmOptions};
use crate::Artifacts;

const BOOT: Duration = Duration::from_secs(900);
const COMMAND: Duration = Duration::from_secs(600);
/// Extra cuts of a recovery boot the emulator stalled (see [`Rig::boot_after_cut`]).
const STALL_RECUTS: u32 = 2;
/// Random data in each release, so an update downloads something real.
const PAYLOAD_BYTES: usize = 4 << 20;

/// The moment of an update a cut is timed from.
#[derive(Debug, Clone)]
pub enum Moment {
    /// The guest asked the update server for a path starting with `prefix`.
    /// With `stall`, the server answers that request with headers and then
    /// nothing, so the cut falls inside the download.
    Request { prefix: &'static str, stall: bool },
    /// These texts appeared on the serial console, in this order, after the
    /// update began.
    Console(&'static [&'static str]),
    /// The agent committed the trial boot (`status` shows it settled on the
    /// new release).
    Committed,
    /// The update command was typed (the delay alone times the cut).
    UpdateStarted,
    /// The release fails its health gate (with one trial boot), GRUB falls
    /// back, and the agent has recorded the verdict: its console line says
    /// so (the fall-back cleanup's first effect is done, the rest is not).
    FallBackRecorded,
}

/// What the agent prints once a failed trial's verdict is recorded
/// (`lifecycle::plan_boot`'s announcement).
const FALL_BACK_RECORDED: &str = "excluded, cleaning up";

/// Where to cut: `delay` after `moment`.
#[derive(Debug, Clone)]
pub struct CutPoint {
    pub name: String,
    pub moment: Moment,
    pub delay: Duration,
}

impl CutPoint {
    fn new(name: &str, moment: Moment, delay_ms: u64) -> Self {
        Self {
            name: name.to_owned(),
            moment,
            delay: Duration::from_millis(delay_ms),
        }
    }
}

/// Ten moments covering check, download, stage, finalize, the trial boot,
/// the commit, and the cleanup after a failed trial: one for each state
/// the disk can be left in. Moments that leave the same disk as one of
/// these are not cut again here (the random cuts of `cargo xtask bench
/// power-cut` reach them): the first object request of a download (a pull
/// under way, as the stalled delta), the very start of the finalize (a
/// deployment staged and not finalized, as the reboot request), and the
/// kernel starting (GRUB has counted the trial, nothing since, as the
/// initramfs mounting the root).
pub fn standard_points() -> Vec<CutPoint> {
    use Moment::*;
    vec![
        CutPoint::new(
            "check: TUF metadata requested",
            Request {
                prefix: "/repo/tuf/",
                stall: false,
            },
            0,
        ),
        CutPoint::new(
            "download: static delta stalled mid-transfer",
            Request {
                prefix: "/repo/ostree/deltas/",
                stall: true,
            },
            1500,
        ),
        CutPoint::new("stage: trial recorded, counter being armed", Console(&["staging"]), 0),
        CutPoint::new("stage: ostree deploy --stage running", Console(&["staging"]), 4000),
        CutPoint::new("staged: reboot requested", Console(&["rebooting"]), 0),
        CutPoint::new("shutdown: finalize under way", Console(&[FINALIZE_STARTS]), 1500),
        CutPoint::new(
            "trial boot: initramfs mounting the root partition",
            Console(&["Linux version", INITRD_STARTS]),
            0,
        ),
        CutPoint::new(
            "trial boot: health gate running",
            Console(&["Linux version", "root@cairn"]),
            0,
        ),
        CutPoint::new("after commit", Committed, 0),
        CutPoint::new(
            "fall-back: failed trial recorded, cleanup under way",
            FallBackRecorded,
            0,
        ),
    ]
}

/// What systemd prints on the console when ostree's finalize starts at
/// shutdown ("Stopping ostree-finalize-s…Tree Finalize Staged Deployment...";
/// only the start ends with three dots).
const FINALIZE_STARTS: &str = "Finalize Staged Deployment...";
/// What the initramfs prints as it mounts the root partition.
const INITRD_STARTS: &str = "Mounting sysroot.mount";

/// Which release the host came back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Landed {
    Old,
    New,
}

/// One cut and what the host did after it.
#[derive(Debug, Clone, Serialize)]
pub struct CutReport {
    pub point: String,
    pub from: String,
    pub to: String,
    /// Seconds from the update command to the cut.
    pub cut_after_secs: f64,
    pub landed: Landed,
    /// Seconds from power on to the agent settled and fsck done.
    pub recovery_secs: f64,
    /// The agent's verdict on the interrupted release, if it marked it bad.
    pub marked_bad: bool,
}

/// A VM on the dev image, an update server, and the releases to update to.
pub struct Rig<'a> {
    releases: TestReleases<'a>,
    scratch: PathBuf,
    server: Server,
    vm: Vm,
    booted: String,
    /// The next release, published; `None` until needed.
    target: Option<String>,
    next_minor: u32,
}

impl<'a> Rig<'a> {
    /// Publish the booted image, start its VM, and tell the agent to leave
    /// updating to the rig.
    pub fn start(artifacts: &'a Artifacts, scratch: &Path, relay: &Path) -> Result<Rig<'a>> {
        let releases = TestReleases::new(artifacts, scratch);
        releases.publish_booted()?;
        let server = Server::start(&releases.www)?;
        let mut opts = VmOptions::of(&artifacts.dev);
        opts.forward_update_server(relay, server.port);
        let vm = Vm::boot(&opts, BOOT)?;
        // Synced: a power cut must not take the setting with it (a lost
        // `auto = false` lets the daemon update and reboot on its own).
        vm.console.run_ok(
            "mkdir -p /etc/cairn/agent.d && printf '[update]\\nauto = false\\n' > /etc/cairn/agent.d/50-test.toml && sync && systemctl restart cairn-agent",
            COMMAND,
        )?;
        Ok(Rig {
            releases,
            scratch: scratch.to_owned(),
            server,
            vm,
            booted: artifacts.dev.version.clone(),
            target: None,
            next_minor: 2,
        })
    }

    /// The release the next cut updates to, composed and published if new.
    fn target(&mut self) -> Result<String> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let version = format!("0.{}.0", self.next_minor);
        self.next_minor += 1;
        self.releases
            .compose_and_publish_with_payload(&version, PAYLOAD_BYTES, &self.scratch)?;
        self.target = Some(version.clone());
        Ok(version)
    }

    /// A new release whose health gate fails, published; the agent gets one
    /// trial boot per release until [`Rig::end_failing_trial`].
    fn failing_target(&mut self) -> Result<String> {
        let version = format!("0.{}.0", self.next_minor);
        self.next_minor += 1;
        let failing = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/failing-health");
        self.releases.compose(&version, &[failing])?;
        self.releases.publish()?;
        self.vm.console.run_ok(
            "printf '[boot]\\ntries = 1\\n' > /etc/cairn/agent.d/60-power-cut-tries.toml && sync",
            COMMAND,
        )?;
        Ok(version)
    }

    fn end_failing_trial(&self) -> Result<()> {
        self.vm
            .console
            .run_ok("rm -f /etc/cairn/agent.d/60-power-cut-tries.toml && sync", COMMAND)?;
        Ok(())
    }

    /// Start an update, cut the power at `point`, and check the host that
    /// comes back. An error names the point and what was wrong.
    pub fn cut(&mut self, point: &CutPoint) -> Result<CutReport> {
        let fails = matches!(point.moment, Moment::FallBackRecorded);
        let to = if fails { self.failing_target()? } else { self.target()? };
        let from = self.booted.clone();
        tracing::info!(point = %point.name, %from, %to, "power cut");
        let cut_after = self
            .cut_inner(point, &to)
            .with_context(|| format!("reaching the cut point `{}`", point.name))?;
        let started = Instant::now();
        let verdict = self.recover(&from, &to).with_context(|| {
            format!(
                "after a power cut at `{}` ({:.1}s into the update {from} → {to})",
                point.name,
                cut_after.as_secs_f64()
            )
        })?;
        let report = CutReport {
            point: point.name.clone(),
            from,
            to: to.clone(),
            cut_after_secs: cut_after.as_secs_f64(),
            landed: verdict.0,
            recovery_secs: started.elapsed().as_secs_f64(),
            marked_bad: verdict.1,
        };
        if fails {
            self.end_failing_trial()?;
            // Excluded for good: the next update does not stage it again.
            let again = self.vm.console.run_ok("cairn-agent update --no-reboot 2>&1", COMMAND)?;
            if report.landed != Landed::Old || !report.marked_bad || !again.contains("up to date") {
                bail!(
                    "after a cut in the fall-back cleanup of {to}: landed on the {:?} release, marked bad: {}; `update` said: {again}",
                    report.landed,
                    report.marked_bad
                );
            }
        }
        tracing::info!(?report, "host recovered");
        if report.landed == Landed::New || report.marked_bad {
            self.target = None;
        }
        Ok(report)
    }

    fn cut_inner(&mut self, point: &CutPoint, to: &str) -> Result<Duration> {
        let console = &self.vm.console;
        let seen = self.server.requests().len();
        if let Moment::Request { prefix, stall: true } = point.moment {
            self.server.inject(prefix, Fault::Stall(COMMAND), 1);
        }
        let began = Instant::now();
        console.send(&format!("cairn-agent update --version {to}\n"))?;
        match &point.moment {
            Moment::Request { prefix, .. } => {
                let deadline = began + COMMAND;
                while !self.server.requests()[seen..].iter().any(|r| r.0.contains(prefix)) {
                    if Instant::now() > deadline {
                        bail!("the guest never requested {prefix}…");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Moment::Console(texts) => {
                for text in *texts {
                    console.wait_for(text, BOOT)?;
                }
            }
            Moment::Committed => self.wait_committed(to)?,
            Moment::UpdateStarted => {}
            Moment::FallBackRecorded => {
                console.wait_for("Linux version", BOOT)?; // the trial boot
                console.wait_for("Linux version", BOOT)?; // GRUB fell back
                console.wait_for(FALL_BACK_RECORDED, BOOT)?;
            }
        }
        std::thread::sleep(point.delay);
        let cut_after = began.elapsed();
        self.vm.power_cycle()?;
        self.server.clear_faults();
        Ok(cut_after)
    }

    /// The host after a cut: boots by itself, no failed unit, the agent
    /// settled on `from` or `to`, nothing left staged, `ostree fsck` clean.
    /// Returns where it landed and whether `to` was marked bad.
    fn recover(&mut self, from: &str, to: &str) -> Result<(Landed, bool)> {
        self.boot_after_cut()?;
        let vm = &self.vm;
        let c = &vm.console;
        let state = c.run("systemctl is-system-running --wait", BOOT)?;
        if state.output.trim() != "running" {
            let failed = c.run("systemctl --failed --no-legend", COMMAND)?;
            bail!(
                "the system is `{}`; failed units:\n{}",
                state.output.trim(),
                failed.output
            );
        }
        let s = agent_status::wait_status(c, "the agent to settle the boot", BOOT, settled)?;
        let booted = booted_version(&s);
        let landed = if booted == from {
            Landed::Old
        } else if booted == to {
            Landed::New
        } else {
            bail!("booted {booted:?}, neither {from} nor {to}:\n{s:#?}");
        };
        if s.staged.is_some() {
            bail!("a deployment is still staged:\n{s:#?}");
        }
        let fsck = c.run(
            "ostree fsck --quiet >/tmp/fsck.log 2>&1; r=$?; tail -n 5 /tmp/fsck.log; (exit $r)",
            COMMAND,
        )?;
        if fsck.status != 0 {
            bail!("ostree fsck failed:\n{}", fsck.output);
        }
        self.booted = booted;
        Ok((landed, is_bad(&s, to)))
    }

    /// Wait for the host to come up after a cut. Under TCG the emulated
    /// machine sometimes loses a vCPU's timer ([`GuestStalled`]); such a
    /// boot is cut again, which a host must survive like any cut (the
    /// promise is any moment), up to [`STALL_RECUTS`] times, each said on
    /// stderr.
    fn boot_after_cut(&mut self) -> Result<()> {
        let mut recuts = 0;
        loop {
            match self.vm.wait_for_root_shell(BOOT) {
                Ok(()) => return Ok(()),
                Err(e) if recuts < STALL_RECUTS && e.downcast_ref::<GuestStalled>().is_some() => {
                    recuts += 1;
                    eprintln!("the emulated machine stalled while the host came back ({e:#}); cutting again ({recuts} of {STALL_RECUTS})");
                    self.vm.power_cycle()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Measure one whole update (command → committed), to spread random
    /// cuts over; the host ends on the new release.
    pub fn time_full_update(&mut self) -> Result<Duration> {
        let to = self.target()?;
        let began = Instant::now();
        self.vm.console.send(&format!("cairn-agent update --version {to}\n"))?;
        self.wait_committed(&to)?;
        self.booted = to;
        self.target = None;
        Ok(began.elapsed())
    }

    /// After an update command: the trial boot comes up and the agent
    /// commits it, settled on `to`.
    fn wait_committed(&self, to: &str) -> Result<()> {
        self.vm.console.wait_for("Linux version", BOOT)?;
        self.vm.wait_for_root_shell(BOOT)?;
        agent_status::wait_status(&self.vm.console, "the trial to be committed", BOOT, |s| {
            settled(s) && booted_version(s) == to
        })?;
        Ok(())
    }
}
