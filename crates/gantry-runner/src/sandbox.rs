//! The sandbox every phase runs in: bubblewrap (`bwrap`) with its own
//! user, mount, PID, IPC and UTS namespaces, a read-only view of the
//! system, the run's workspace read-write, a private `/tmp`, a minimal
//! `/dev` and a `/proc` of its own processes only. The network is left
//! open: providers and modules need it. Nothing of the server or worker
//! is visible: not the data directory, other runs' workspaces, nor any
//! process, environment or command line outside the sandbox.
//!
//! A worker that is not root makes the namespaces as itself (unprivileged
//! user namespaces). A worker running as root makes them with its
//! privileges but runs the phase as an unprivileged user ([`SANDBOX_UID`],
//! through `setpriv`, which leaves it no capabilities), and hands it the
//! workspace by changing the workspace's owner.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The unprivileged user and group a root worker's phases run as
/// (`nobody` on most distributions).
pub const SANDBOX_UID: u32 = 65534;

/// Where the run's workspace is inside the sandbox: a fixed path, so the
/// worker's directory layout (the data directory, other runs) does not show.
pub const WORKSPACE: &str = "/workspace";

/// The isolation asked for (`--sandbox bwrap|none`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Bwrap,
    None,
}

/// How phases are isolated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// bubblewrap, at this path.
    Bwrap(PathBuf),
    /// No isolation: the phase runs as the worker, seeing what it sees.
    /// Only for machines where nothing else runs; the worker warns at
    /// every start.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap (`bwrap`) is not installed, and every run is sandboxed with it: \
         install it (`apt-get install bubblewrap` on Debian and Ubuntu, `dnf install bubblewrap` \
         on Fedora), or start with `--sandbox none` to run repository code without isolation"
    )]
    Missing,
    #[error(
        "bubblewrap at {path} cannot make a sandbox here: {reason}; it needs unprivileged \
         user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, \
         `user.max_user_namespaces` above 0), or start with `--sandbox none`"
    )]
    Broken { path: String, reason: String },
}

/// System directories shown read-only, when they exist.
const SYSTEM: [&str; 2] = ["/usr", "/opt"];
/// Top-level names that are directories on some systems and links into
/// `/usr` on others.
const LINKED: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// What of `/etc` a tool needs: names and hosts, certificates, users,
/// the time zone. Not the rest (`/etc/shadow`, service credentials).
const ETC: [&str; 12] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/alternatives",
];

impl Sandbox {
    /// The sandbox a worker was asked for: `bwrap` (found on `PATH`, and
    /// tried once) or `none`, which is warned about.
    pub async fn open(mode: Mode) -> Result<Self, SandboxError> {
        if mode == Mode::None {
            tracing::warn!(
                "--sandbox none: repository code runs without isolation, as this process's user, \
                 and can read what it can read (the data directory, keys, other runs)"
            );
            return Ok(Self::None);
        }
        let path = find_on_path("bwrap").ok_or(SandboxError::Missing)?;
        let sandbox = Self::Bwrap(path.clone());
        let broken = |reason: String| SandboxError::Broken {
            path: path.display().to_string(),
            reason,
        };
        let dir = std::env::temp_dir();
        let output = sandbox
            .command(&dir, &dir, &[], "true")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| broken(error.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(broken(if stderr.is_empty() {
                format!("it exited with {}", output.status)
            } else {
                stderr
            }));
        }
        Ok(sandbox)
    }

    pub fn is_isolated(&self) -> bool {
        matches!(self, Self::Bwrap(_))
    }

    /// Where `path`, inside `workspace`, is for the phase: under
    /// [`WORKSPACE`] in the sandbox, itself without one.
    pub fn inside(&self, workspace: &Path, path: &Path) -> PathBuf {
        match (self, path.strip_prefix(workspace)) {
            (Self::Bwrap(_), Ok(rest)) => Path::new(WORKSPACE).join(rest).components().collect(),
            _ => path.components().collect(),
        }
    }

    /// `sh -c script` in `dir`, inside the sandbox when there is one, with
    /// `workspace` (which holds `dir`) writable and `tools` (executables
    /// outside the system directories, such as a stack's own `tofu`)
    /// readable. The caller sets the environment, which reaches the script
    /// and nothing else.
    pub fn command(
        &self,
        workspace: &Path,
        dir: &Path,
        tools: &[PathBuf],
        script: &str,
    ) -> tokio::process::Command {
        // bwrap exports `PWD` as given: without a trailing `/`, as a shell
        // would have it.
        let dir = self.inside(workspace, dir);
        let dir = dir.as_path();
        let Self::Bwrap(bwrap) = self else {
            let mut command = tokio::process::Command::new("sh");
            command.arg("-c").arg(script).current_dir(dir);
            return command;
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut arg =
            |parts: &[&std::ffi::OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
        for dir in SYSTEM {
            arg(&["--ro-bind-try".as_ref(), dir.as_ref(), dir.as_ref()]);
        }
        for name in LINKED {
            match std::fs::read_link(name) {
                Ok(target) => arg(&["--symlink".as_ref(), target.as_os_str(), name.as_ref()]),
                Err(_) => arg(&["--ro-bind-try".as_ref(), name.as_ref(), name.as_ref()]),
            }
        }
        for path in ETC {
            arg(&["--ro-bind-try".as_ref(), path.as_ref(), path.as_ref()]);
        }
        arg(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        // bwrap makes the directories leading to a bind 0700: the
        // sandbox's user must be able to walk to its workspace and tools.
        let mut leading: Vec<&Path> = Vec::new();
        for path in tools.iter().map(PathBuf::as_path) {
            for ancestor in path.ancestors().skip(1) {
                if ancestor != Path::new("/") && !leading.contains(&ancestor) {
                    leading.push(ancestor);
                }
            }
        }
        leading.sort_by_key(|path| path.components().count());
        for dir in leading {
            arg(&[
                "--perms".as_ref(),
                "0755".as_ref(),
                "--dir".as_ref(),
                dir.as_os_str(),
            ]);
        }
        arg(&[
            "--bind".as_ref(),
            workspace.as_os_str(),
            WORKSPACE.as_ref(),
            "--chdir".as_ref(),
            dir.as_os_str(),
        ]);
        // After `/tmp`, so that a tool kept there is not hidden by it.
        for tool in tools {
            arg(&["--ro-bind-try".as_ref(), tool.as_os_str(), tool.as_os_str()]);
        }
        let root = nix::unistd::geteuid().is_root();
        if !root {
            arg(&["--unshare-user".as_ref()]);
        }
        for flag in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
        ] {
            arg(&[flag.as_ref()]);
        }
        let mut command = tokio::process::Command::new(bwrap);
        command.args(args).arg("--").current_dir("/");
        if root {
            // Every uid becomes unprivileged, which clears the capabilities;
            // bwrap's no_new_privs keeps them from coming back.
            let id = SANDBOX_UID.to_string();
            command
                .arg("setpriv")
                .args(["--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        command.arg("/bin/sh").arg("-c").arg(script);
        command
    }

    /// Hands the workspace to the sandbox's user: when the worker runs as
    /// root, everything in it changes owner to [`SANDBOX_UID`].
    pub fn hand_over(&self, workspace: &Path) -> std::io::Result<()> {
        if !self.is_isolated() || !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        chown_all(workspace)
    }
}

fn chown_all(path: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_all(&entry?.path())?;
        }
    }
    Ok(())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
