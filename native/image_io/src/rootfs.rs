//! A container's filesystem, exported by the engine as a tar stream, unpacked into a local
//! directory so that `image_core` can read it through `HostFs::new(dir)`.
//!
//! What is kept and what is not, and why:
//!
//! - regular files, directories, symlinks (stored as is, never followed) and hard links, with
//!   their permission bits and mtimes — the plan reads modes and resolves symlinks itself;
//! - **not** setuid/setgid bits: the tree is only read, and a root-owned setuid copy of the
//!   builder's `su` in a temporary directory would be a gift to other local users;
//! - **not** owners (everything belongs to whoever runs the build) — image layers set their own;
//! - **not** device nodes, fifos or sockets (`/dev/console` and friends): never copied into an
//!   image, and creating them needs privileges;
//! - every path stays inside the destination (`..` entries are skipped, parents reached through
//!   a symlink must resolve inside it: the tar crate's `unpack_in` checks both).
//!
//! - **not** [`NEVER_NEEDED`]: `/usr/share`, the builder's own OTP and Elixir trees, headers and
//!   `/var`, which no release loads at run time and which are two thirds of a Debian builder's
//!   files (each file costs a create, and on some VMs that is most of the export's time).
//!
//! Directories get their modes at the end (so a read-only directory does not block its own
//! entries), with the owner's `rwx` bits forced on so the tree can always be read and removed.

use crate::channel::ChannelReader;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Subtrees (relative paths) that are never unpacked: documentation and package-manager
/// state. A release never reads them, and `extra_files` naming them would be a mistake.
pub const NEVER_NEEDED: &[&str] = &[
    // Documentation, translations and architecture-independent data: half of a Debian
    // builder's files. (`extra_files` from here are not available in builder builds.)
    "usr/share",
    // The builder's own OTP and Elixir: the release carries its copy of ERTS and the apps.
    "usr/lib/erlang",
    "usr/lib/elixir",
    "usr/include",
    "var",
];

/// `true` when `path` (as stored in the tar) is in a [`NEVER_NEEDED`] subtree.
fn never_needed(path: &[u8]) -> bool {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
        p = rest;
    }
    NEVER_NEEDED.iter().any(|n| {
        p.strip_prefix(n.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    })
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Device nodes, fifos and other special entries left out.
    pub skipped_special: u64,
    /// Entries refused because their path would leave the destination.
    pub skipped_unsafe: u64,
    /// Entries in [`NEVER_NEEDED`] subtrees.
    pub skipped_unneeded: u64,
}

/// Why a tree could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is malformed or an entry could not be written.
    #[error("cannot unpack the exported filesystem into {dir}: {source}")]
    Io {
        /// The destination.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The cancel flag was raised.
    #[error("cancelled")]
    Cancelled,
}

/// Unpack the tar stream `reader` into the existing directory `dest` (see the module docs for
/// what is kept). `cancelled` is checked before each entry.
///
/// ```
/// let mut tar = tar::Builder::new(Vec::new());
/// let mut h = tar::Header::new_gnu();
/// h.set_entry_type(tar::EntryType::Regular);
/// h.set_mode(0o4755);
/// h.set_size(2);
/// tar.append_data(&mut h, "bin/su", &b"hi"[..]).unwrap();
/// let bytes = tar.into_inner().unwrap();
/// let dir = tempfile::tempdir().unwrap();
/// let flag = std::sync::atomic::AtomicBool::new(false);
/// let stats = image_io::rootfs::unpack(bytes.as_slice(), dir.path(), &flag).unwrap();
/// assert_eq!(stats.entries, 1);
/// use std::os::unix::fs::PermissionsExt;
/// let mode = std::fs::metadata(dir.path().join("bin/su")).unwrap().permissions().mode();
/// assert_eq!(mode & 0o7777, 0o755); // setuid dropped
/// ```
pub fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    cancelled: &AtomicBool,
) -> Result<UnpackStats, UnpackError> {
    let err = |source: io::Error| UnpackError::Io {
        dir: dest.to_path_buf(),
        source,
    };
    let mut stats = UnpackStats::default();
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().map_err(err)? {
        if cancelled.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        let mut entry = entry.map_err(err)?;
        let kind = entry.header().entry_type();
        let unneeded = never_needed(&entry.path_bytes())
            || (kind == tar::EntryType::Link
                && entry.link_name_bytes().is_some_and(|l| never_needed(&l)));
        if unneeded {
            stats.skipped_unneeded += 1;
            continue;
        }
        let mode = entry.header().mode().map_err(err)? & 0o7777;
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {
                // Permissions as stored minus setuid/setgid.
                entry.set_preserve_permissions(true);
                entry.set_mask(0o6000);
                let size = entry.header().entry_size().unwrap_or(0);
                if entry.unpack_in(dest).map_err(err)? {
                    stats.entries += 1;
                    if !matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                        stats.bytes += size;
                    }
                } else {
                    stats.skipped_unsafe += 1;
                }
            }
            tar::EntryType::Directory => {
                entry.set_preserve_permissions(false);
                let rel = entry.path().map_err(err)?.into_owned();
                if entry.unpack_in(dest).map_err(err)? {
                    stats.entries += 1;
                    dirs.push((rel, mode));
                } else {
                    stats.skipped_unsafe += 1;
                }
            }
            // Long names and pax headers are consumed by the iterator; anything else (char and
            // block devices, fifos, GNU sparse files, volume labels) is left out.
            _ => stats.skipped_special += 1,
        }
    }
    // Deepest first, so a parent's mode is set after its children's.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (rel, mode) in dirs {
        let path = confined(dest, &rel);
        let meta = std::fs::symlink_metadata(&path).map_err(err)?;
        if meta.is_dir() {
            let mode = (mode & 0o1777) | 0o700;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
        }
    }
    Ok(stats)
}

/// `dest` joined with the normal components of `rel` (what `unpack_in` wrote to).
fn confined(dest: &Path, rel: &Path) -> PathBuf {
    let mut p = dest.to_path_buf();
    for c in rel.components() {
        if let std::path::Component::Normal(n) = c {
            p.push(n);
        }
    }
    p
}

/// Unpack a tar byte stream (e.g. `GET /containers/{id}/export`) into `dest` on the blocking
/// pool, with at most a few chunks in memory at a time.
pub async fn unpack_stream<S, E>(
    stream: S,
    dest: PathBuf,
    cancelled: Arc<AtomicBool>,
) -> Result<UnpackStats, UnpackError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let err_dest = dest.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader::new(rx);
        unpack(reader, &dest, &cancelled)
    });
    let mut stream = Box::pin(stream);
    while let Some(item) = stream.next().await {
        let item = item.map_err(|e| io::Error::other(e.to_string()));
        let failed = item.is_err();
        // The unpacker stopped (error or cancel): its result says why.
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    drop(stream);
    writer.await.map_err(|e| UnpackError::Io {
        dir: err_dest,
        source: io::Error::other(format!("the unpacking thread failed: {e}")),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    fn sample() -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0o555, 0);
        t.append_data(&mut h, "ro", io::empty()).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 3);
        t.append_data(&mut h, "ro/file", &b"abc"[..]).unwrap();
        let mut h = header(tar::EntryType::Directory, 0o1777, 0);
        t.append_data(&mut h, "tmp", io::empty()).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        t.append_link(&mut h, "lib", "usr/lib").unwrap();
        let mut h = header(tar::EntryType::Regular, 0o755, 1);
        t.append_data(&mut h, "usr/lib/libx.so", &b"x"[..]).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        t.append_link(&mut h, "etc/passwd_link", "/etc/passwd")
            .unwrap();
        let mut h = header(tar::EntryType::Link, 0o755, 0);
        t.append_link(&mut h, "usr/lib/libx-hard.so", "usr/lib/libx.so")
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        t.append_data(&mut h, "usr/share/doc/x/copyright", &b"c"[..])
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        t.append_data(&mut h, "./usr/shared", &b"d"[..]).unwrap();
        let mut h = header(tar::EntryType::Char, 0o600, 0);
        t.append_data(&mut h, "dev/console", io::empty()).unwrap();
        let mut h = header(tar::EntryType::Fifo, 0o600, 0);
        t.append_data(&mut h, "run/fifo", io::empty()).unwrap();
        t.into_inner().unwrap()
    }

    #[test]
    fn keeps_files_links_and_modes_skips_specials() {
        let dir = tempfile::tempdir().unwrap();
        let flag = AtomicBool::new(false);
        let stats = unpack(sample().as_slice(), dir.path(), &flag).unwrap();
        assert_eq!(stats.skipped_special, 2);
        assert_eq!(stats.skipped_unneeded, 1);
        assert_eq!(stats.entries, 8);
        let d = dir.path();
        assert_eq!(std::fs::read(d.join("ro/file")).unwrap(), b"abc");
        assert_eq!(
            std::fs::metadata(d.join("ro")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            std::fs::metadata(d.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::read_link(d.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            std::fs::read_link(d.join("etc/passwd_link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::metadata(d.join("usr/lib/libx.so"))
                .unwrap()
                .mtime(),
            1_700_000_000
        );
        assert_eq!(std::fs::read(d.join("usr/lib/libx-hard.so")).unwrap(), b"x");
        assert!(!d.join("dev/console").exists());
        assert!(!d.join("usr/share/doc").exists());
        assert_eq!(std::fs::read(d.join("usr/shared")).unwrap(), b"d");
    }

    #[test]
    fn refuses_to_leave_the_destination() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("root");
        std::fs::create_dir(&dest).unwrap();
        let mut t = tar::Builder::new(Vec::new());
        // A symlink pointing out, then a file written through it.
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        t.append_link(&mut h, "escape", outer.path()).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        h.set_path("escape/pwned").unwrap();
        h.set_cksum();
        t.append(&h, &b"x"[..]).unwrap();
        let bytes = t.into_inner().unwrap();
        let flag = AtomicBool::new(false);
        let r = unpack(bytes.as_slice(), &dest, &flag);
        assert!(r.is_err());
        assert!(!outer.path().join("pwned").exists());
    }

    #[tokio::test]
    async fn streams_and_cancels() {
        let bytes = sample();
        let chunks = || -> Vec<Result<Bytes, io::Error>> {
            bytes
                .chunks(100)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_stream(
            futures_util::stream::iter(chunks()),
            dir.path().to_path_buf(),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap();
        assert_eq!(stats.entries, 8);
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_stream(
            futures_util::stream::iter(chunks()),
            dir.path().to_path_buf(),
            Arc::new(AtomicBool::new(true)),
        )
        .await;
        assert!(matches!(r, Err(UnpackError::Cancelled)));
        // A broken stream is an error, not a silently short tree.
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_stream(
            futures_util::stream::iter(vec![
                Ok(Bytes::copy_from_slice(&bytes[..700])),
                Err(io::Error::other("connection reset")),
            ]),
            dir.path().to_path_buf(),
            Arc::new(AtomicBool::new(false)),
        )
        .await;
        assert!(r.is_err());
    }
}
