//! Runs untrusted Python — a model's completion with a problem's tests — in a separate `python3 -I`
//! process: a fresh temporary directory as its working directory (removed after), a wall-clock limit
//! after which its whole process group is killed, an address-space limit (RLIMIT_AS), a cap on the
//! size of files it writes, no core dumps, no network when `unshare` can give it an empty network
//! namespace (else a warning, once), and a guard run before the program that removes process
//! creation, signals, file removal and renaming, and directory changes from `os`, `shutil` and
//! `subprocess` (as the HumanEval harness's `reliability_guard` does). This contains mistakes and
//! casual misbehaviour of generated code; it is not a boundary against an attacker who targets
//! CPython itself.

use anyhow::{Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a run may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time before the process group is killed.
    pub timeout: Duration,
    /// Address space, bytes.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: 1 << 30,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// Any other exit (an exception, a failed assert, a signal); the end of its stderr.
    Failed {
        /// The exit code, if it exited (None: killed by a signal).
        code: Option<i32>,
        /// The last lines of stderr (at most 2,000 characters).
        stderr: String,
    },
    /// Killed at the time limit.
    TimedOut,
}

/// Run before the program: the destructive parts of `os`, `shutil` and `subprocess` set to None.
const GUARD: &str = r#"def _wmtp_guard():
    import os, shutil, subprocess, sys
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir",
                 "setuid", "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink",
                 "fchmod", "fchown", "chmod", "chown", "chroot", "lchmod", "lchown", "chdir",
                 "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                 "spawnvpe", "posix_spawn", "posix_spawnp", "popen", "link", "symlink"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = subprocess.run = subprocess.call = None
    subprocess.check_call = subprocess.check_output = subprocess.getoutput = None
    for m in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "socket"):
        sys.modules[m] = None
_wmtp_guard()
del _wmtp_guard
"#;

/// Whether `unshare -rn` can make an empty network namespace here (probed once).
fn can_unshare_network() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = Command::new("unshare")
            .args(["-rn", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(
                "`unshare -rn` is not available here: generated code runs WITH network access \
                 (every other limit still applies)"
            );
        }
        ok
    })
}

/// Runs `program` under `limits` (see the module doc).
pub fn run(program: &str, limits: &Limits) -> Result<Outcome> {
    let dir = tempfile::tempdir().context("making a temporary directory for the program")?;
    let path = dir.path().join("program.py");
    std::fs::write(&path, format!("{GUARD}\n{program}"))
        .with_context(|| format!("writing {}", path.display()))?;
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = if can_unshare_network() {
        let mut c = Command::new("unshare");
        c.args(["-rn", "python3"]);
        c
    } else {
        Command::new("python3")
    };
    cmd.arg("-I")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .process_group(0);
    limit_resources(&mut cmd, limits.memory_bytes);
    let child = cmd.spawn().context("starting python3")?;
    Ok(match wait_or_kill(child, limits.timeout)? {
        None => Outcome::TimedOut,
        Some(s) if s.success() => Outcome::Passed,
        Some(s) => Outcome::Failed {
            code: s.code(),
            stderr: tail_of(&err)?,
        },
    })
}

/// Sets the child's limits between fork and exec: address space `memory_bytes`, no core files, files
/// written at most 64 MiB.
fn limit_resources(cmd: &mut Command, memory_bytes: u64) {
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let set = |what, n: u64| {
                let l = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(what, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_AS, memory_bytes)?;
            set(libc::RLIMIT_CORE, 0)?;
            set(libc::RLIMIT_FSIZE, 64 << 20)?;
            Ok(())
        });
    }
}

/// The child's exit status, or None when it ran past `timeout` (then its whole process group is killed:
/// anything the program started goes too).
fn wait_or_kill(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if start.elapsed() >= timeout {
            // SAFETY: a plain kill(2) of the child's process group.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last 2,000 characters of the file at `path` (of its first MiB).
fn tail_of(path: &std::path::Path) -> Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok();
    let skip = text.chars().count().saturating_sub(2000);
    Ok(text.chars().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Limits {
        Limits {
            timeout: Duration::from_secs(2),
            memory_bytes: 512 << 20,
        }
    }

    #[test]
    fn a_correct_program_passes_and_a_wrong_one_fails() -> Result<()> {
        let ok = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n";
        assert_eq!(run(ok, &quick())?, Outcome::Passed);
        let wrong = ok.replace("a + b", "a - b");
        match run(&wrong, &quick())? {
            Outcome::Failed { code, stderr } => {
                assert_eq!(code, Some(1));
                assert!(stderr.contains("AssertionError"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn an_endless_loop_is_killed_at_the_time_limit() -> Result<()> {
        let t0 = Instant::now();
        assert_eq!(run("while True:\n    pass\n", &quick())?, Outcome::TimedOut);
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(4), "took {took:?}");
        Ok(())
    }

    #[test]
    fn system_calls_and_file_removal_are_contained() -> Result<()> {
        let marker = std::env::temp_dir().join(format!("wmtp-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let program = format!("import os\nos.system('touch {}')\n", marker.display());
        assert!(matches!(run(&program, &quick())?, Outcome::Failed { .. }));
        assert!(!marker.exists(), "os.system ran");
        let program = format!(
            "import subprocess\nsubprocess.run(['touch', '{}'])\n",
            marker.display()
        );
        assert!(matches!(run(&program, &quick())?, Outcome::Failed { .. }));
        assert!(!marker.exists(), "subprocess ran");
        // a file outside its directory cannot be removed
        std::fs::write(&marker, "keep")?;
        let program = format!("import os\nos.remove('{}')\n", marker.display());
        assert!(matches!(run(&program, &quick())?, Outcome::Failed { .. }));
        assert!(marker.exists(), "os.remove ran");
        std::fs::remove_file(&marker)?;
        Ok(())
    }

    #[test]
    fn the_program_has_no_network() -> Result<()> {
        // a listener on this machine's loopback: reachable from here, not from the program's empty
        // network namespace (socket itself is removed by the guard; _socket goes around it)
        assert!(
            can_unshare_network(),
            "`unshare -rn` does not work here: network isolation cannot be checked"
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let program = format!(
            "import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
        );
        match run(&program, &quick())? {
            Outcome::Failed { stderr, .. } => assert!(
                stderr.contains("ConnectionRefused")
                    || stderr.contains("Network is unreachable")
                    || stderr.contains("OSError"),
                "{stderr}"
            ),
            other => panic!("the program reached the host's loopback: {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn memory_beyond_the_limit_is_refused() -> Result<()> {
        let out = run("x = bytearray(2 << 30)\n", &quick())?;
        match out {
            Outcome::Failed { stderr, .. } => assert!(stderr.contains("MemoryError"), "{stderr}"),
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
