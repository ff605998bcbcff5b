//! Running other programs (credential helpers, `ssh`) from inside the BEAM.
//!
//! The BEAM sets SIGCHLD to "ignored". A child of an OS process that ignores SIGCHLD is reaped
//! by the kernel the moment it exits, so `waitpid` finds nothing and fails with ECHILD ("No
//! child processes", os error 10), and the child's exit status is lost. Two consequences,
//! handled here:
//!
//! - every child starts with SIGCHLD back at its default ([`command`]), so a helper that runs
//!   programs of its own (`docker-credential-pass` runs `pass`, which runs `gpg`) can wait for
//!   them;
//! - when the exit status matters ([`run`]), the program runs under `/bin/sh`, whose SIGCHLD is
//!   the default again, and the shell reports the program's status on a pipe of its own.
//!
//! The same code works unchanged in a process that does not ignore SIGCHLD (`cargo test`).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `Command` for `program` whose child starts with SIGCHLD at its default disposition.
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// What a program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    /// Its exit status (`128 + N` when killed by signal N, as the shell reports it).
    pub status: i32,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// Everything it printed on stderr.
    pub stderr: Vec<u8>,
}

/// The fd the wrapping shell writes the exit status to.
const STATUS_FD: i32 = 3;

/// Run `program args` with `input` on its stdin; wait at most `limit` for it to finish.
///
/// Blocking: call it off the async runtime's worker threads.
pub(crate) fn run(
    program: &Path,
    args: &[&str],
    input: &[u8],
    limit: Duration,
) -> io::Result<Finished> {
    let (status_r, status_w) = pipe()?;
    let status_w_raw = status_w.as_raw_fd();
    // `"$0" "$@"` runs the program with fd 3 closed; the shell then writes its status there.
    let mut cmd = command("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "\"$0\" \"$@\" {STATUS_FD}>&-; echo $? >&{STATUS_FD}"
        ))
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2, fcntl and setpgid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if status_w_raw == STATUS_FD {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(STATUS_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(status_w_raw, STATUS_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Its own process group, so a timeout can end the program and its children.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(status_w);
    let pid = child.id() as i32;

    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let input = input.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(mut s) = stdin.take() {
            // A program that exits without reading its stdin is judged by its output.
            let _ = s.write_all(&input);
        }
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stderr.take() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let mut out = Vec::new();
        if let Some(mut s) = stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        let mut status = String::new();
        let _ = std::fs::File::from(status_r).read_to_string(&mut status);
        let err = err_thread.join().unwrap_or_default();
        let _ = tx.send((status, out, err));
    });
    let received = rx.recv_timeout(limit);
    if received.is_err() {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    // Reaps the shell where SIGCHLD is not ignored; fails with ECHILD where it is. Either way
    // the status comes from the pipe.
    let _ = child.wait();
    let (status, stdout, stderr) = received.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("it did not finish within {}", crate::stall::seconds(limit)),
        )
    })?;
    let status = status.trim().parse::<i32>().map_err(|_| {
        io::Error::other(format!(
            "it ended without an exit status (the shell running it printed {:?})",
            status.trim()
        ))
    })?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// A pipe whose two ends close on exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("prog");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn output_input_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "read x; echo \"got $x $1\"; echo oops >&2; exit 3",
        );
        let f = run(&p, &["arg"], b"hello\n", Duration::from_secs(10)).unwrap();
        assert_eq!(f.status, 3);
        assert_eq!(f.stdout, b"got hello arg\n");
        assert_eq!(f.stderr, b"oops\n");
    }

    #[test]
    fn a_program_that_hangs_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "sleep 30");
        let t = std::time::Instant::now();
        let e = run(&p, &[], b"", Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
