//! Deterministic tar layers, compressed and digested in one pass.
//!
//! A layer is described by a [`LayerSpec`]: a list of entries, each an image path and where its
//! bytes come from. [`write_layer`] turns it into a gzip blob and reports both digests. The bytes
//! depend only on the spec, the file contents and the fixed `mtime`: every host-specific field is
//! normalised here, in one place (see [`normal_mode`]).

use crate::digest::{Digest, HashWriter};
use crate::fs::{Fs, Kind};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where an entry's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A regular file read through the [`Fs`] at this path.
    File(PathBuf),
    /// Literal bytes (generated files: `/etc/passwd`, a patched `env.sh`, ...).
    Bytes(Vec<u8>),
    /// A symbolic link with this target, stored as is.
    Symlink(PathBuf),
    /// A directory.
    Dir,
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the image.
    pub path: PathBuf,
    /// Content.
    pub source: Source,
    /// Permission bits. Pass the source's bits: they are normalised by [`normal_mode`] unless
    /// `exact_mode` is set.
    pub mode: u32,
    /// Keep `mode` exactly (for `/tmp`'s 1777 and private directories).
    pub exact_mode: bool,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Entry {
    /// A root-owned entry with the given source and source mode.
    pub fn new(path: impl Into<PathBuf>, source: Source, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            source,
            mode,
            exact_mode: false,
            uid: 0,
            gid: 0,
        }
    }

    /// The same entry with an exact mode and owner.
    pub fn owned(mut self, mode: u32, uid: u32, gid: u32) -> Entry {
        self.mode = mode;
        self.exact_mode = true;
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// What goes into one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerSpec {
    /// A short name ("runtime", "erts", "deps", "app"), used in history and progress.
    pub name: String,
    /// The entries, in any order; parents are added and everything is sorted when written.
    pub entries: Vec<Entry>,
}

/// The result of writing a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// The layer's name from its spec.
    pub name: String,
    /// sha256 of the compressed blob (the manifest's layer digest).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the config's `diff_id`).
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// Number of entries written (directories included).
    pub entries: usize,
}

/// Normalised permission bits.
///
/// Umask and checkout tools make the same file `0664` on one host and `0644` on another; what
/// matters at run time is only whether it is executable. So: directories `0755`, symlinks `0777`,
/// files `0755` when any execute bit is set, else `0644`.
pub fn normal_mode(kind: Kind, mode: u32) -> u32 {
    match kind {
        Kind::Dir => 0o755,
        Kind::Symlink => 0o777,
        _ if mode & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// Progress callback: called with the number of uncompressed bytes written so far after each
/// entry; returning `false` stops the layer with [`LayerError::Cancelled`].
pub type Progress<'a> = &'a mut dyn FnMut(u64) -> bool;

/// Errors while writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A source file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A source file changed size while it was being read.
    #[error("{path} changed while it was being read (expected {expected} bytes); retry when nothing writes to it")]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when listed.
        expected: u64,
    },
    /// A file listed with size 0 had content when read: its content is generated on reading
    /// (a file of `/proc` or `/sys`).
    #[error("{path} reports a size of 0 but has content: it is generated when read (like the files of /proc and /sys) and cannot be copied into an image; copy what you need into a regular file and add that")]
    Generated {
        /// The file.
        path: PathBuf,
    },
    /// Two entries claim the same image path with different content.
    #[error("two different entries for {0} in one layer")]
    Duplicate(PathBuf),
    /// An entry path is not absolute, contains `..`, or lies under a file or symlink entry.
    #[error("invalid image path {0}: it must be absolute, must not contain '..' and must not lie under a file or symlink")]
    BadPath(PathBuf),
    /// The caller asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// Writing the output failed.
    #[error("cannot write the layer: {0}")]
    Write(#[source] io::Error),
}

/// Write `spec` as a gzip-compressed tar to `out` and return its digests.
///
/// Entries are sorted by path bytes, every parent directory is written explicitly (mode `0755`,
/// root-owned) unless the spec lists it, owner names are empty and every mtime is `mtime`.
/// Contents are streamed, never held whole in memory.
pub fn write_layer<W: Write>(
    fs: &dyn Fs,
    spec: &LayerSpec,
    mtime: u64,
    level: u32,
    out: W,
    progress: Progress<'_>,
) -> Result<(LayerInfo, W), LayerError> {
    let entries = complete(&spec.entries)?;
    let inner = HashWriter::new(out);
    let gz = GzEncoder::new(inner, Compression::new(level));
    let (outer, written) = write_tar(fs, &entries, mtime, HashWriter::new(gz), progress)?;
    let (gz, diff_id, uncompressed_size) = outer.finish();
    let inner = gz.finish().map_err(LayerError::Write)?;
    let (out, digest, size) = inner.finish();
    let info = LayerInfo {
        name: spec.name.clone(),
        digest,
        diff_id,
        size,
        uncompressed_size,
        entries: written,
    };
    Ok((info, out))
}

/// The `diff_id` (sha256 of the uncompressed tar), the tar's size and the number of entries of
/// the layer [`write_layer`] would write for `spec`, without compressing or writing anything:
/// enough to find an identical layer compressed earlier.
pub fn layer_diff_id(
    fs: &dyn Fs,
    spec: &LayerSpec,
    mtime: u64,
    progress: Progress<'_>,
) -> Result<(Digest, u64, usize), LayerError> {
    let entries = complete(&spec.entries)?;
    let (out, written) = write_tar(fs, &entries, mtime, HashWriter::new(io::sink()), progress)?;
    let (_, diff_id, size) = out.finish();
    Ok((diff_id, size, written))
}

/// The tar stream of `entries` into `out`; returns `out` and the number of entries.
fn write_tar<W: Write>(
    fs: &dyn Fs,
    entries: &BTreeMap<Vec<u8>, Entry>,
    mtime: u64,
    out: HashWriter<W>,
    progress: Progress<'_>,
) -> Result<(HashWriter<W>, usize), LayerError> {
    let mut tar = tar::Builder::new(out);
    let mut written = 0usize;
    for (rel, entry) in entries {
        append(fs, &mut tar, rel, entry, mtime)?;
        written += 1;
        if !progress(tar.get_ref().count()) {
            return Err(LayerError::Cancelled);
        }
    }
    Ok((tar.into_inner().map_err(LayerError::Write)?, written))
}

/// The entries keyed by their relative tar path, parents added, sorted by path bytes.
fn complete(entries: &[Entry]) -> Result<BTreeMap<Vec<u8>, Entry>, LayerError> {
    let mut map: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for e in entries {
        let rel = relative(&e.path)?;
        let key = rel.as_os_str().as_encoded_bytes().to_vec();
        if let Some(old) = map.get(&key) {
            if old != e {
                return Err(LayerError::Duplicate(e.path.clone()));
            }
        }
        map.insert(key, e.clone());
    }
    let mut parents = Vec::new();
    for e in map.values() {
        let mut p = e.path.parent();
        while let Some(dir) = p {
            if dir == Path::new("/") {
                break;
            }
            parents.push((dir.to_path_buf(), e.path.clone()));
            p = dir.parent();
        }
    }
    for (dir, child) in parents {
        let rel = relative(&dir)?;
        let key = rel.as_os_str().as_encoded_bytes().to_vec();
        let parent = map
            .entry(key)
            .or_insert_with(|| Entry::new(dir, Source::Dir, 0o755));
        // A file or symlink as a parent would make extraction fail or write through the link.
        if parent.source != Source::Dir {
            return Err(LayerError::BadPath(child));
        }
    }
    Ok(map)
}

fn relative(path: &Path) -> Result<PathBuf, LayerError> {
    use std::path::Component;
    let mut out = PathBuf::new();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(LayerError::BadPath(path.to_path_buf()));
    }
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return Err(LayerError::BadPath(path.to_path_buf())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(LayerError::BadPath(path.to_path_buf()));
    }
    Ok(out)
}

fn header(kind: Kind, entry: &Entry, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(match kind {
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
        _ => tar::EntryType::Regular,
    });
    let mode = if entry.exact_mode {
        entry.mode & 0o7777
    } else {
        normal_mode(kind, entry.mode)
    };
    h.set_mode(mode);
    h.set_uid(entry.uid as u64);
    h.set_gid(entry.gid as u64);
    h.set_mtime(mtime);
    h.set_size(size);
    // Empty owner names: numeric ids only, as the runtime uses them.
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h
}

fn append<W: Write>(
    fs: &dyn Fs,
    tar: &mut tar::Builder<W>,
    rel: &[u8],
    entry: &Entry,
    mtime: u64,
) -> Result<(), LayerError> {
    let rel = Path::new(std::ffi::OsStr::from_bytes(rel));
    let w = LayerError::Write;
    match &entry.source {
        Source::Dir => {
            let mut h = header(Kind::Dir, entry, mtime, 0);
            tar.append_data(&mut h, rel, io::empty()).map_err(w)
        }
        Source::Symlink(target) => {
            let mut h = header(Kind::Symlink, entry, mtime, 0);
            tar.append_link(&mut h, rel, target).map_err(w)
        }
        Source::Bytes(bytes) => {
            let mut h = header(Kind::File, entry, mtime, bytes.len() as u64);
            tar.append_data(&mut h, rel, bytes.as_slice()).map_err(w)
        }
        Source::File(src) => {
            let read_err = |e| LayerError::Read {
                path: src.clone(),
                source: e,
            };
            let meta = fs.lstat(src).map_err(read_err)?;
            let mut h = header(Kind::File, entry, mtime, meta.size);
            let reader = fs.open(src).map_err(read_err)?;
            let mut exact = ExactReader {
                inner: reader.take(meta.size),
                left: meta.size,
            };
            match tar.append_data(&mut h, rel, &mut exact) {
                Ok(()) if exact.left == 0 && exact.at_end()? => Ok(()),
                Ok(()) if meta.size == 0 => Err(LayerError::Generated { path: src.clone() }),
                Ok(()) => Err(LayerError::Changed {
                    path: src.clone(),
                    expected: meta.size,
                }),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(LayerError::Changed {
                    path: src.clone(),
                    expected: meta.size,
                }),
                Err(e) => Err(w(e)),
            }
        }
    }
}

/// Reads exactly `left` bytes; a short file is an `UnexpectedEof` error instead of a silently
/// corrupt archive.
struct ExactReader<R> {
    inner: std::io::Take<R>,
    left: u64,
}

impl<R: Read> ExactReader<R> {
    /// `true` when the source has no byte beyond the expected size (it did not grow).
    fn at_end(&mut self) -> Result<bool, LayerError> {
        let rest = self.inner.get_mut();
        let mut one = [0u8; 1];
        match rest.read(&mut one) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(LayerError::Write(e)),
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while reading",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::HostFs;

    fn spec(dir: &Path) -> LayerSpec {
        std::fs::write(dir.join("a.txt"), b"hello").unwrap();
        std::fs::write(dir.join("run.sh"), b"#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o775))
            .unwrap();
        LayerSpec {
            name: "t".into(),
            entries: vec![
                Entry::new("/x/y/run.sh", Source::File(dir.join("run.sh")), 0o775),
                Entry::new("/x/a.txt", Source::File(dir.join("a.txt")), 0o664),
                Entry::new("/x/link", Source::Symlink("a.txt".into()), 0o777),
                Entry::new("/tmp", Source::Dir, 0).owned(0o1777, 0, 0),
                Entry::new(
                    "/etc/passwd",
                    Source::Bytes(b"root:x:0:0::/:/bin/sh\n".to_vec()),
                    0o644,
                ),
            ],
        }
    }

    fn write(spec: &LayerSpec) -> (LayerInfo, Vec<u8>) {
        write_layer(
            &HostFs::new("/"),
            spec,
            1_700_000_000,
            6,
            Vec::new(),
            &mut |_| true,
        )
        .unwrap()
    }

    #[test]
    fn same_input_same_bytes_and_digests_match_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let (a, bytes_a) = write(&s);
        let mut reversed = s.clone();
        reversed.entries.reverse();
        let (b, bytes_b) = write(&reversed);
        assert_eq!(bytes_a, bytes_b);
        assert_eq!(a, b);
        assert_eq!(a.digest, Digest::of(&bytes_a));
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(bytes_a.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(a.diff_id, Digest::of(&tar_bytes));
        assert_eq!(a.uncompressed_size, tar_bytes.len() as u64);
    }

    #[test]
    fn headers_are_normalised_and_parents_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes) = write(&spec(dir.path()));
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.username().unwrap(), Some(""));
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
            ));
        }
        let want: Vec<(String, u32)> = vec![
            ("etc".into(), 0o755),
            ("etc/passwd".into(), 0o644),
            ("tmp".into(), 0o1777),
            ("x".into(), 0o755),
            ("x/a.txt".into(), 0o644),
            ("x/link".into(), 0o777),
            ("x/y".into(), 0o755),
            ("x/y/run.sh".into(), 0o755),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn a_file_that_changes_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        // Listed size 5 ("hello"), then grown before the layer is written: lstat happens in
        // write_layer, so simulate with an Fs whose lstat lies.
        struct Lying(HostFs);
        impl Fs for Lying {
            fn lstat(&self, p: &Path) -> io::Result<crate::fs::Meta> {
                let mut m = self.0.lstat(p)?;
                m.size += 3;
                Ok(m)
            }
            fn read_link(&self, p: &Path) -> io::Result<PathBuf> {
                self.0.read_link(p)
            }
            fn read_dir(&self, p: &Path) -> io::Result<Vec<std::ffi::OsString>> {
                self.0.read_dir(p)
            }
            fn open(&self, p: &Path) -> io::Result<Box<dyn Read + Send>> {
                self.0.open(p)
            }
        }
        let err = write_layer(&Lying(HostFs::new("/")), &s, 0, 1, Vec::new(), &mut |_| {
            true
        })
        .unwrap_err();
        assert!(matches!(err, LayerError::Changed { .. }), "{err}");
    }

    #[test]
    fn a_file_listed_with_size_0_that_has_content_is_generated_not_changed() {
        let spec = LayerSpec {
            name: "t".into(),
            entries: vec![Entry::new(
                "/cpuinfo",
                Source::File("/proc/cpuinfo".into()),
                0o444,
            )],
        };
        let err =
            write_layer(&HostFs::new("/"), &spec, 0, 1, Vec::new(), &mut |_| true).unwrap_err();
        assert!(matches!(err, LayerError::Generated { .. }), "{err}");
        assert!(!err.to_string().contains("retry"), "{err}");
    }

    #[test]
    fn relative_and_dotdot_paths_are_rejected() {
        let bad = LayerSpec {
            name: "bad".into(),
            entries: vec![Entry::new("/a/../etc", Source::Dir, 0)],
        };
        let err =
            write_layer(&HostFs::new("/"), &bad, 0, 1, Vec::new(), &mut |_| true).unwrap_err();
        assert!(matches!(err, LayerError::BadPath(_)));
    }
}
