//! A small read-only filesystem interface.
//!
//! Everything that inspects "the environment that built the release" (the ELF closure, the shell
//! and its utilities, `/etc` files) reads through [`Fs`], so the same code reads the host today and
//! a builder container's or a base image's files later; tests read fixture trees.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What kind of entry a path names (the final component is never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, socket, fifo): never copied into an image.
    Other,
}

/// Metadata of one entry, as `lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Entry kind.
    pub kind: Kind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Size in bytes (regular files only; 0 otherwise).
    pub size: u64,
}

/// What identifies a file's content without reading it, as `stat` reports it: device, inode,
/// size, and the modification and change times in nanoseconds. The change time (`ctime`) is
/// set by the kernel to the current time on every write, truncation, rename onto, `chmod` or
/// `utimes`, and cannot be set by a program: a file whose identity is unchanged has not been
/// written since (see `build::LayerCache`, which relies on this for files that were already
/// settled when they were read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl Identity {
    fn of(md: &std::fs::Metadata) -> Identity {
        Identity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        }
    }

    /// The later of its modification and change times, nanoseconds since the epoch.
    pub fn changed_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// Read-only access to a tree of files addressed by absolute paths.
pub trait Fs: Send + Sync {
    /// Metadata of `path` without following a final symlink.
    fn lstat(&self, path: &Path) -> io::Result<Meta>;
    /// The target of the symlink at `path`, as stored.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// Names of the entries of directory `path` (no `.` or `..`), in any order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// A reader over the contents of the regular file at `path`.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;

    /// The whole contents of the regular file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(path)?.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Up to `n` first bytes of the regular file at `path`.
    fn read_head(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(n);
        self.open(path)?.take(n as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// `true` when `path` exists (a dangling symlink counts as existing).
    fn exists(&self, path: &Path) -> bool {
        self.lstat(path).is_ok()
    }

    /// The identity of the entry at `path` and, when it is a symlink, of what it leads to: what
    /// reading it would give cannot have changed while these stay the same. `None` where a
    /// filesystem cannot say (a builder container's, read through the engine): its files are
    /// then always read.
    fn identity(&self, _path: &Path) -> Option<Vec<Identity>> {
        None
    }

    /// Says that `path` is about to be resolved component by component. A filesystem that
    /// fetches lazily (a builder container's) fetches the whole path, its symlink targets and
    /// their ancestors in one go; others ignore it. Never changes an answer.
    fn hint(&self, _path: &Path) {}
}

/// The host's filesystem seen from a root directory: `/x` is read at `root/x`.
///
/// With root `/` this is the host itself. Absolute symlink targets are returned unchanged
/// (they are interpreted inside the tree by callers), so a tree copied from another system
/// reads the way that system would.
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    /// A view of the host rooted at `root` (use `/` for the host itself).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    fn real(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.root.join(rel)
    }
}

impl Fs for HostFs {
    fn lstat(&self, path: &Path) -> io::Result<Meta> {
        let md = std::fs::symlink_metadata(self.real(path))?;
        let ft = md.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Ok(Meta {
            kind,
            mode: md.mode() & 0o7777,
            size: if kind == Kind::File { md.len() } else { 0 },
        })
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.real(path))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(self.real(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::fs::File::open(self.real(path))?))
    }

    fn identity(&self, path: &Path) -> Option<Vec<Identity>> {
        let real = self.real(path);
        let own = std::fs::symlink_metadata(&real).ok()?;
        let mut ids = vec![Identity::of(&own)];
        if own.file_type().is_symlink() {
            ids.push(Identity::of(&std::fs::metadata(&real).ok()?));
        }
        Some(ids)
    }
}

/// How many symlinks [`resolve_path`] follows before reporting a loop (Linux's limit).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Resolve `path` (absolute) inside `fs` the way the kernel does, following every symlink met in
/// any component (the final one included); `..` is applied to the resolved prefix, i.e.
/// physically, as the kernel does.
///
/// Returns the canonical path of what `path` names (it exists and its parents contain no
/// symlink) and every symlink met on the way, in order, as `(link path, stored target)`. Each link
/// path has a canonical parent, so links can be recreated as-is in an image whose directories
/// are plain. Relative targets are read relative to the link's directory, absolute ones from the
/// root of `fs`.
///
/// Errors: `NotFound` for a missing component, `NotADirectory` when a non-directory has
/// components after it, and an `Other` error after [`MAX_SYMLINK_HOPS`] links (a loop).
pub fn resolve_path(fs: &dyn Fs, path: &Path) -> io::Result<(PathBuf, Vec<(PathBuf, PathBuf)>)> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    fs.hint(path);
    // Components still to walk, last one first (so `pop` yields the next).
    let mut pending: Vec<OsString> = Vec::new();
    let push_components = |pending: &mut Vec<OsString>, p: &Path| {
        let mut comps: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
            })
            .collect();
        comps.reverse();
        pending.extend(comps);
    };
    push_components(&mut pending, path);

    let mut cur = PathBuf::from("/");
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let meta = fs.lstat(&next).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} (resolving {}): {e}", next.display(), path.display()),
            )
        })?;
        match meta.kind {
            Kind::Symlink => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {}",
                        path.display()
                    )));
                }
                let target = fs.read_link(&next)?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
                if !links.iter().any(|(l, _)| *l == next) {
                    links.push((next, target));
                }
            }
            Kind::Dir => cur = next,
            Kind::File | Kind::Other => {
                if !pending.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!(
                            "{} is not a directory (resolving {})",
                            next.display(),
                            path.display()
                        ),
                    ));
                }
                cur = next;
            }
        }
    }
    Ok((cur, links))
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_chains_relative_absolute_dotdot_and_loops() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        std::fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        std::fs::write(r.join("usr/lib/x/libz.so.1.2"), b"z").unwrap();
        symlink("libz.so.1.2", r.join("usr/lib/x/libz.so.1")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/lib/x/libz.so.1", r.join("usr/lib/abs")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        let fs = HostFs::new(r);

        let (canon, links) = resolve_path(&fs, Path::new("/lib/x/libz.so.1")).unwrap();
        assert_eq!(canon, PathBuf::from("/usr/lib/x/libz.so.1.2"));
        assert_eq!(
            links,
            vec![
                (PathBuf::from("/lib"), PathBuf::from("usr/lib")),
                (
                    PathBuf::from("/usr/lib/x/libz.so.1"),
                    PathBuf::from("libz.so.1.2")
                ),
            ]
        );
        let (canon, links) = resolve_path(&fs, Path::new("/usr/lib/abs")).unwrap();
        assert_eq!(canon, PathBuf::from("/usr/lib/x/libz.so.1.2"));
        assert_eq!(links.len(), 3);
        // `..` after a symlinked directory is physical: /lib/x/.. is /usr/lib.
        let (canon, _) = resolve_path(&fs, Path::new("/lib/x/../x/./libz.so.1.2")).unwrap();
        assert_eq!(canon, PathBuf::from("/usr/lib/x/libz.so.1.2"));

        assert!(resolve_path(&fs, Path::new("/loop1")).is_err());
        let e = resolve_path(&fs, Path::new("/lib/nope")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = resolve_path(&fs, Path::new("/lib/x/libz.so.1/y")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory);
    }
}
