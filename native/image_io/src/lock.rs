//! An exclusive lock on a file (`flock`), for one host build at a time per project
//! (`DockerRelease.BuildLock`). The kernel releases it when the OS process dies, however it
//! dies, so a killed run never leaves it held.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// A lock held until dropped (closing its file releases it).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// What [`FileLock::try_take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The lock is ours; this process's pid is written in the file.
    Held(FileLock),
    /// Another process holds it; what it wrote (its pid).
    Busy(String),
}

impl FileLock {
    /// Try to take the lock at `path` (created if missing), without blocking. `Err` says why the
    /// file could not be opened, written or locked.
    ///
    /// ```
    /// use image_io::lock::{FileLock, Taken};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("build.lock");
    /// let Taken::Held(lock) = FileLock::try_take(&path).unwrap() else { panic!() };
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), std::process::id().to_string());
    /// assert!(matches!(FileLock::try_take(&path).unwrap(), Taken::Busy(pid) if pid == std::process::id().to_string()));
    /// drop(lock);
    /// assert!(matches!(FileLock::try_take(&path).unwrap(), Taken::Held(_)));
    /// ```
    pub fn try_take(path: &Path) -> Result<Taken, String> {
        let shown = path.display();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open the lock file {shown}: {e}"))?;
        match file.try_lock() {
            Ok(()) => {
                let pid = std::process::id().to_string();
                file.set_len(0)
                    .and_then(|_| file.seek(std::io::SeekFrom::Start(0)))
                    .and_then(|_| file.write_all(pid.as_bytes()))
                    .and_then(|_| file.flush())
                    .map_err(|e| format!("cannot write the lock file {shown}: {e}"))?;
                Ok(Taken::Held(FileLock { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Ok(Taken::Busy(holder.trim().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {shown}: {e}")),
        }
    }
}
