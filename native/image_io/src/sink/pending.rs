//! Output files that appear whole or not at all, and that can be put back.
//!
//! A [`PendingFile`] is written away from its final path; [`PendingFile::publish`] makes it
//! visible there, and the [`Published`] file it returns can still be taken back
//! ([`Published::undo`] puts the previous file back) until it is kept. A run publishes all its
//! files only after every other output succeeded, and takes them back if a later one fails.
//!
//! What the path names decides how it is written (see [`PendingFile::create`]):
//!
//! - nothing, or a regular file: a temporary file in the same directory, renamed over the path.
//!   The temporary file is anonymous (`O_TMPFILE`) until the commit, so a killed run leaves
//!   nothing behind; on filesystems without `O_TMPFILE` it is `.NAME.partial-PID`, removed on
//!   failure, and by the next run for the same path when a killed run left it;
//! - a symlink: followed, so the file it points to is replaced and the link stays;
//! - a FIFO or character device (`/dev/null`, `/dev/fd/3` on a pipe): opened at once (a FIFO
//!   must have a reader), the bytes wait in an anonymous scratch file and are written through
//!   at the commit; such a write cannot be taken back;
//! - a directory, block device, socket or terminal: refused with a message.

use crate::sink::{Change, SinkError};
use futures_util::future::BoxFuture;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A file being written away from its final path, made visible only by [`PendingFile::commit`]
/// or [`PendingFile::publish`]. Dropped before that, it leaves the path as it was and no
/// temporary file behind.
pub struct PendingFile {
    path: PathBuf,
    dest: Dest,
    writer: Option<io::BufWriter<File>>,
}

enum Dest {
    /// A regular file at `target` (the path, its symlinks followed), written to `tmp` in the
    /// same directory.
    Replace { target: PathBuf, tmp: Temp },
    /// A FIFO or character device, open for writing; the bytes wait in the writer's file.
    Stream { out: File },
}

enum Temp {
    /// Nameless (`O_TMPFILE`) until the commit links it.
    Anonymous,
    /// `.NAME.partial-PID`, removed on drop.
    Named(PathBuf),
}

/// A published file: at its path now, with the previous content (if any) kept aside until
/// [`Published::keep`] or put back by [`Published::undo`]. Dropping it keeps it.
pub struct Published {
    path: PathBuf,
    target: PathBuf,
    backup: Option<PathBuf>,
    /// Device and inode of the published file (undo removes only that file).
    ours: Option<(u64, u64)>,
    size: u64,
    stream: bool,
    settled: bool,
}

fn file_err(path: &Path) -> impl Fn(io::Error) -> SinkError + '_ {
    move |source| SinkError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn refuse(path: &Path, why: String) -> SinkError {
    SinkError::File {
        path: path.to_path_buf(),
        source: io::Error::other(why),
    }
}

impl PendingFile {
    /// Start writing `path`. What is at the path is looked at now (see the module doc), so an
    /// unusable path fails before anything else is done; bytes for a device or FIFO wait in an
    /// anonymous file in the system's temporary directory.
    pub fn create(path: &Path) -> Result<PendingFile, SinkError> {
        Self::create_with_scratch(path, &std::env::temp_dir())
    }

    /// [`PendingFile::create`], with bytes for a device or FIFO waiting in `scratch`.
    pub fn create_with_scratch(path: &Path, scratch: &Path) -> Result<PendingFile, SinkError> {
        let err = file_err(path);
        if path.file_name().is_none() {
            return Err(refuse(path, "it is not a file name".into()));
        }
        let (dest, file) = match std::fs::metadata(path) {
            Ok(meta) => {
                let ft = meta.file_type();
                if ft.is_dir() {
                    return Err(refuse(
                        path,
                        "it is a directory; give the archive's file name, e.g. DIR/image.tar"
                            .into(),
                    ));
                } else if ft.is_block_device() {
                    return Err(refuse(
                        path,
                        "it is a block device: an image archive is not written onto a disk; give a file name".into(),
                    ));
                } else if ft.is_socket() {
                    return Err(refuse(
                        path,
                        "it is a socket; give a file name, a FIFO or a character device".into(),
                    ));
                } else if ft.is_fifo() || ft.is_char_device() {
                    let out = open_stream(path)?;
                    std::fs::create_dir_all(scratch).map_err(file_err(scratch))?;
                    let buffer = tempfile::tempfile_in(scratch).map_err(file_err(scratch))?;
                    (Dest::Stream { out }, buffer)
                } else {
                    // A regular file, maybe through symlinks: replace the file they lead to.
                    let target = std::fs::canonicalize(path).map_err(&err)?;
                    let (tmp, file) = temp_beside(&target).map_err(&err)?;
                    (Dest::Replace { target, tmp }, file)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing there, or a dangling symlink: create the file the links lead to.
                let target = follow_links(path).map_err(&err)?;
                let (tmp, file) = temp_beside(&target).map_err(&err)?;
                (Dest::Replace { target, tmp }, file)
            }
            Err(e) => return Err(err(e)),
        };
        Ok(PendingFile {
            path: path.to_path_buf(),
            dest,
            writer: Some(io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path is a device or FIFO (written through at the commit, which cannot be
    /// taken back: commit it last).
    pub fn is_stream(&self) -> bool {
        matches!(self.dest, Dest::Stream { .. })
    }

    /// The writer of the temporary file.
    pub fn writer(&mut self) -> &mut io::BufWriter<File> {
        match &mut self.writer {
            Some(w) => w,
            // `writer` is only taken by `publish`, which consumes `self`.
            None => unreachable!("PendingFile used after commit"),
        }
    }

    /// Flush what was written so far and return its size.
    pub fn flushed_len(&mut self) -> Result<u64, SinkError> {
        let path = self.path.clone();
        let w = self.writer();
        w.flush().map_err(file_err(&path))?;
        w.get_ref()
            .metadata()
            .map(|m| m.len())
            .map_err(file_err(&path))
    }

    /// Publish and keep: the file replaces whatever was at its path. Returns its size.
    pub fn commit(self) -> Result<u64, SinkError> {
        let published = self.publish()?;
        let size = published.size();
        published.keep();
        Ok(size)
    }

    /// Flush, sync and make the file visible at its path (rename over it, or write a device's
    /// bytes through), keeping the previous file aside so that [`Published::undo`] can put it
    /// back.
    pub fn publish(mut self) -> Result<Published, SinkError> {
        let path = self.path.clone();
        let err = file_err(&path);
        let w = self
            .writer
            .take()
            .ok_or_else(|| err(io::Error::other("already committed")))?;
        let mut file = w.into_inner().map_err(|e| err(e.into_error()))?;
        match &mut self.dest {
            Dest::Stream { out } => {
                file.seek(io::SeekFrom::Start(0)).map_err(&err)?;
                let size = io::copy(&mut file, out).map_err(&err)?;
                out.flush().map_err(&err)?;
                Ok(Published {
                    path: self.path.clone(),
                    target: self.path.clone(),
                    backup: None,
                    ours: None,
                    size,
                    stream: true,
                    settled: false,
                })
            }
            Dest::Replace { target, tmp } => {
                file.sync_all().map_err(&err)?;
                let meta = file.metadata().map_err(&err)?;
                let (size, ours) = (meta.len(), Some((meta.dev(), meta.ino())));
                let named = match tmp {
                    Temp::Named(p) => p.clone(),
                    Temp::Anonymous => {
                        let name = beside(target, "partial");
                        let _ = std::fs::remove_file(&name);
                        link_anonymous(&file, &name).map_err(&err)?;
                        *tmp = Temp::Named(name.clone());
                        name
                    }
                };
                drop(file);
                let backup = keep_aside(target).map_err(&err)?;
                if let Err(e) = std::fs::rename(&named, &*target) {
                    if let Some(b) = &backup {
                        let _ = std::fs::rename(b, &*target);
                    }
                    return Err(err(e));
                }
                // Renamed: nothing to remove on drop any more.
                *tmp = Temp::Anonymous;
                if let Some(dir) = target.parent() {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(Published {
                    path: self.path.clone(),
                    target: target.clone(),
                    backup,
                    ours,
                    size,
                    stream: false,
                    settled: false,
                })
            }
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Dest::Replace {
            tmp: Temp::Named(p),
            ..
        } = &self.dest
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Published {
    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep it: forget the previous file.
    pub fn keep(mut self) {
        self.settle();
    }

    fn settle(&mut self) {
        if let Some(b) = self.backup.take() {
            let _ = std::fs::remove_file(b);
        }
        self.settled = true;
    }

    /// Put back what was at the path before (or remove the file when there was nothing). Only
    /// the file this run published is touched: one replaced since is left alone. `Err` says
    /// what is left and why.
    pub fn undo(mut self) -> Result<(), String> {
        self.settled = true;
        if self.stream {
            return Err(format!(
                "{} received the archive ({} bytes); what was written to a device or FIFO cannot be taken back",
                self.path.display(),
                self.size
            ));
        }
        let still_ours = std::fs::symlink_metadata(&self.target)
            .map(|m| Some((m.dev(), m.ino())) == self.ours)
            .unwrap_or(false);
        if !still_ours {
            if let Some(b) = self.backup.take() {
                let _ = std::fs::remove_file(b);
            }
            return Ok(());
        }
        let result = match self.backup.take() {
            Some(b) => std::fs::rename(&b, &self.target),
            None => std::fs::remove_file(&self.target),
        };
        result.map_err(|e| {
            format!(
                "{} could not be put back as it was ({e}): it holds this run's file",
                self.path.display()
            )
        })
    }
}

impl<'a> Change<'a> for Published {
    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        let left = Published::undo(*self).err();
        Box::pin(async move { left.into_iter().collect() })
    }

    fn keep(self: Box<Self>) {
        Published::keep(*self);
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if !self.settled {
            self.settle();
        }
    }
}

/// `DIR/.NAME.KIND-PID` for `target` = `DIR/NAME`.
fn beside(target: &Path, kind: &str) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    dir_of(target).join(format!(".{name}.{kind}-{}", std::process::id()))
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file in `target`'s directory: anonymous where the filesystem allows, else
/// `.NAME.partial-PID` (after removing those killed runs left for the same name).
fn temp_beside(target: &Path) -> io::Result<(Temp, File)> {
    sweep_leftovers(target);
    let dir = dir_of(target);
    // Filesystems without O_TMPFILE refuse it in several ways; a missing or unwritable
    // directory fails the same way below, with the usual error.
    if Path::new("/proc/self/fd").is_dir() {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o666)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir)
        {
            return Ok((Temp::Anonymous, f));
        }
    }
    let tmp = beside(target, "partial");
    let file = File::create(&tmp)?;
    Ok((Temp::Named(tmp), file))
}

/// Remove `.NAME.partial-PID` and `.NAME.previous-PID` files next to `target` whose process is
/// gone (a killed run's temporary file or backup).
pub fn sweep_leftovers(target: &Path) {
    let Some(name) = target.file_name() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir_of(target)) else {
        return;
    };
    let prefix = [b".", name.as_bytes(), b"."].concat();
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.as_bytes().strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let pid = rest
            .strip_prefix(b"partial-")
            .or_else(|| rest.strip_prefix(b"previous-"));
        let Some(pid) = pid.and_then(|p| std::str::from_utf8(p).ok()) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let alive = Path::new("/proc").join(pid).exists() || !Path::new("/proc/self").exists();
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Give the anonymous `file` the name `name`.
fn link_anonymous(file: &File, name: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
    };
    let proc_path = cstr(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
    let to = cstr(name)?;
    // SAFETY: both are valid NUL-terminated strings; linkat does not keep the pointers.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hard-link the regular file at `target` (if any) to `.NAME.previous-PID`, so it can be put
/// back; where hard links are not possible, move it there (a moment without a file at the path).
fn keep_aside(target: &Path) -> io::Result<Option<PathBuf>> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let backup = beside(target, "previous");
    let _ = std::fs::remove_file(&backup);
    if std::fs::hard_link(target, &backup).is_err() {
        std::fs::rename(target, &backup)?;
    }
    Ok(Some(backup))
}

/// Where `path`'s symlinks lead (the path itself when it is none); the last one may dangle.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = std::fs::read_link(&p)?;
                p = if t.is_absolute() {
                    t
                } else {
                    dir_of(&p).join(t)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Open a FIFO or character device for writing without blocking on a FIFO that has no reader.
fn open_stream(path: &Path) -> Result<File, SinkError> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENXIO) {
                refuse(
                    path,
                    "it is a FIFO that no process has open for reading; start the reader first (e.g. `docker load -i PATH`)".into(),
                )
            } else {
                file_err(path)(e)
            }
        })?;
    let fd = out.as_raw_fd();
    // SAFETY: `fd` is open for the lifetime of `out`; isatty and fcntl only read and set flags.
    unsafe {
        if libc::isatty(fd) == 1 {
            return Err(refuse(
                path,
                "it is a terminal; write the archive to a file or a pipe".into(),
            ));
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(file_err(path)(io::Error::last_os_error()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_unpublished_file_leaves_no_name_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PendingFile::create(&dir.path().join("a.tar")).unwrap();
        p.writer().write_all(&[1u8; 3 << 20]).unwrap();
        assert_eq!(
            names(dir.path()),
            Vec::<String>::new(),
            "anonymous until the commit"
        );
        drop(p);
        assert_eq!(names(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn undo_puts_the_previous_file_back_and_removes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.tar");
        std::fs::write(&old, b"previous").unwrap();
        let mut p = PendingFile::create(&old).unwrap();
        p.writer().write_all(b"new").unwrap();
        let published = p.publish().unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
        published.undo().unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"previous");

        let fresh = dir.path().join("fresh.tar");
        let mut p = PendingFile::create(&fresh).unwrap();
        p.writer().write_all(b"new").unwrap();
        p.publish().unwrap().undo().unwrap();
        assert!(!fresh.exists());
        assert_eq!(names(dir.path()), vec!["old.tar"]);
    }

    #[test]
    fn keep_forgets_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, b"previous").unwrap();
        let mut p = PendingFile::create(&path).unwrap();
        p.writer().write_all(b"new").unwrap();
        p.publish().unwrap().keep();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), vec!["a.tar"]);
    }

    #[test]
    fn a_symlink_is_followed_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real/image.tar");
        std::fs::write(&target, b"previous").unwrap();
        let link = dir.path().join("link.tar");
        std::os::unix::fs::symlink("real/image.tar", &link).unwrap();
        let mut p = PendingFile::create(&link).unwrap();
        p.writer().write_all(b"new").unwrap();
        p.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");

        // A dangling link: its target is created.
        let dangling = dir.path().join("dangling.tar");
        std::os::unix::fs::symlink("real/new.tar", &dangling).unwrap();
        let mut p = PendingFile::create(&dangling).unwrap();
        p.writer().write_all(b"x").unwrap();
        p.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("real/new.tar")).unwrap(),
            b"x"
        );
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_character_device_is_written_through_at_the_commit_only() {
        let scratch = tempfile::tempdir().unwrap();
        let mut p =
            PendingFile::create_with_scratch(Path::new("/dev/null"), scratch.path()).unwrap();
        p.writer().write_all(&[0u8; 1 << 16]).unwrap();
        let published = p.publish().unwrap();
        assert_eq!(published.size(), 1 << 16);
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(published
            .undo()
            .unwrap_err()
            .contains("cannot be taken back"));
        assert_eq!(names(scratch.path()), Vec::<String>::new());
    }

    #[test]
    fn a_fifo_gets_the_bytes_at_the_commit_and_one_without_reader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = PendingFile::create_with_scratch(&fifo, dir.path())
            .err()
            .expect("no reader");
        assert!(
            err.to_string().contains("no process has open for reading"),
            "{err}"
        );

        let reader_path = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read(reader_path).unwrap());
        // The reader's open blocks until a writer opens: retry until it is there.
        let mut p = loop {
            match PendingFile::create_with_scratch(&fifo, dir.path()) {
                Ok(p) => break p,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        p.writer().write_all(b"archive bytes").unwrap();
        p.commit().unwrap();
        assert_eq!(reader.join().unwrap(), b"archive bytes");
    }

    #[test]
    fn directories_and_block_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = PendingFile::create(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is a directory"), "{err}");
        if let Some(block) = ["/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1"]
            .iter()
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| m.file_type().is_block_device())
                    .unwrap_or(false)
            })
        {
            let err = PendingFile::create(Path::new(block)).err().unwrap();
            assert!(err.to_string().contains("block device"), "{err}");
        }
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.tar");
        let dead = dir.path().join(".a.tar.partial-999999999");
        let dead_backup = dir.path().join(".a.tar.previous-999999999");
        let live = dir
            .path()
            .join(format!(".a.tar.partial-{}", std::process::id()));
        let other = dir.path().join(".b.tar.partial-999999999");
        for p in [&dead, &dead_backup, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        sweep_leftovers(&target);
        assert_eq!(
            names(dir.path()),
            vec![
                format!(".a.tar.partial-{}", std::process::id()),
                ".b.tar.partial-999999999".to_string()
            ]
        );
    }
}
