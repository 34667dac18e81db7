//! Running one phase's process: in its own process group, with only the
//! environment it is given, its output merged, redacted and handed to the
//! log, and ended — the whole group — on cancel, on the run's timeout, or
//! when it prints nothing for too long.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::redact::Redactor;
use crate::sandbox::Sandbox;

/// How long a phase may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole run's deadline.
    pub deadline: Instant,
    /// Ended when it prints nothing for this long.
    pub no_output: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// How a phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code (a signal counts as 128 + its number).
    Exited(i32),
    Canceled,
    TimedOut,
    NoOutput,
}

/// One command of a phase.
pub struct Script<'a> {
    /// Run with `sh -c`, as stacks write their commands.
    pub script: &'a str,
    /// Where it runs: inside `workspace`.
    pub dir: &'a Path,
    /// The whole environment: nothing else is inherited.
    pub env: &'a [(String, String)],
    pub sandbox: &'a Sandbox,
    /// The run's workspace: all the script may write.
    pub workspace: &'a Path,
    /// Executables outside the system directories it needs to see.
    pub tools: &'a [PathBuf],
}

/// Runs the phase, sending its redacted output to `log` as it comes.
/// `cancel` turning `true`, or its sender going away (the worker is
/// stopping), ends it.
pub async fn run(
    phase: &Script<'_>,
    limits: Limits,
    redactor: &mut Redactor,
    cancel: &mut watch::Receiver<bool>,
    log: &mut (dyn FnMut(&[u8]) + Send),
) -> std::io::Result<Ended> {
    let mut child = phase
        .sandbox
        .command(phase.workspace, phase.dir, phase.tools, phase.script)
        .env_clear()
        .envs(phase.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    let (mut out_open, mut err_open) = (true, true);
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 8192]);
    let mut last_output = Instant::now();
    let stop = loop {
        let idle_at = last_output + limits.no_output;
        let wake = idle_at.min(limits.deadline);
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read? {
                0 => out_open = false,
                n => { last_output = Instant::now(); log(&redactor.push(&out_buf[..n])); }
            },
            read = stderr.read(&mut err_buf), if err_open => match read? {
                0 => err_open = false,
                n => { last_output = Instant::now(); log(&redactor.push(&err_buf[..n])); }
            },
            status = child.wait(), if !out_open && !err_open => {
                log(&redactor.finish());
                let status = status?;
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                });
                return Ok(Ended::Exited(code));
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() { break Ended::Canceled; }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                break if Instant::now() >= limits.deadline { Ended::TimedOut } else { Ended::NoOutput };
            }
        }
    };
    log(&redactor.finish());
    end_group(&mut child, group, phase.sandbox, limits.grace).await;
    Ok(stop)
}

/// SIGTERM to the whole group, then SIGKILL after `grace` if the leader
/// has not exited; descendants that linger get the SIGKILL too. In the
/// sandbox the script's processes are a session of their own: they get the
/// SIGTERM there, and the SIGKILL of the sandbox ends its PID namespace,
/// which kills every process in it.
async fn end_group(
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    sandbox: &Sandbox,
    grace: Duration,
) {
    let Some(group) = group else {
        let _ = child.start_kill();
        return;
    };
    let inside = match sandbox {
        Sandbox::Bwrap(_) => children_of(group),
        Sandbox::None => Vec::new(),
    };
    if inside.is_empty() {
        let _ = killpg(group, Signal::SIGTERM);
    }
    for session in inside {
        let _ = killpg(session, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Children that ignored SIGTERM after their parent left.
    let _ = killpg(group, Signal::SIGKILL);
}

/// The processes whose parent is `parent`, from `/proc` (the sandbox's
/// first process, the leader of the script's session).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid …`; comm may hold spaces.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}
