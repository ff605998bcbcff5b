//! Unpacking a base's layers into a tree, as the engine applies them, for the compatibility
//! check to read.

use image_core::fs::{resolve_path, Fs, HostFs, Kind};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Subtrees of a base that are not unpacked: documentation, translations, time zones and
/// package-manager state are half of a Debian base's files and nothing the compatibility check
/// reads (libraries, programs, `/etc`, `/usr/lib/locale`). Creating files is what unpacking
/// costs (5.7 s for the 6,700 entries of a Debian minbase on a VM, 1.4 s without these).
/// The layers themselves are kept whole: this only concerns [`super::LoadedBase::rootfs`].
///
/// Of dpkg's state, what [`image_core::supply::pkgdb`] reads is unpacked all the same:
/// `status`, `diversions` and the packages' file lists `info/*.list` (a few hundred files; not
/// the maintainer scripts and checksums beside them), and whiteouts there. An image of another
/// platform (`--platform`) is the build environment of that platform's runtime files: its
/// package records and SBOM come from this database.
pub const NOT_UNPACKED: &[&str] = &[
    "usr/share",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/lib/apk",
    "var/cache",
    "var/log",
];

/// Apply one gzip layer blob to the tree at `root`, as the engine applies a layer: entries
/// replace what is there (a directory over a directory merges), `.wh.NAME` deletes `NAME`,
/// `.wh..wh..opq` hides everything the lower layers had in its directory. Paths resolve inside
/// `root` (symlinks in parents followed as in the image, never out of it); device nodes and
/// fifos are skipped, as are [`NOT_UNPACKED`] subtrees; setuid bits dropped; the owner always
/// keeps `rw` (`rwx` on directories). Returns the number of entries in the layer.
pub(super) fn unpack_layer(root: &Path, blob: &Path) -> io::Result<usize> {
    let file = std::fs::File::open(blob)?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut ar = tar::Archive::new(gz);
    let tree = HostFs::new(root);
    let real = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    // Image paths this layer wrote (an opaque directory keeps them).
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut count = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        count += 1;
        let raw = entry.path_bytes().into_owned();
        let Some(comps) = components(&raw) else {
            continue; // `..`: never leaves the tree
        };
        if skipped(&comps) {
            continue;
        }
        let Some((name, parents)) = comps.split_last() else {
            continue; // the root itself
        };
        let name = OsStr::from_bytes(name);
        let kind = entry.header().entry_type();
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            let Ok(dir) = walk(&tree, root, parents, false) else {
                continue;
            };
            if hidden == b".wh..opq" {
                opaque(&tree, root, &dir, &created)?;
            } else {
                remove(&real(&dir.join(OsStr::from_bytes(hidden))))?;
            }
            continue;
        }
        let Ok(dir) = walk(&tree, root, parents, true) else {
            continue; // a parent is a file: the engine would fail too; skip
        };
        let path = dir.join(name);
        let dest = real(&path);
        let existing = tree.lstat(&path).ok().map(|m| m.kind);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if existing != Some(Kind::Dir) {
                    if existing.is_some() {
                        remove(&dest)?;
                    }
                    std::fs::create_dir(&dest)?;
                }
                std::fs::set_permissions(&dest, PermissionsExt::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if existing.is_some() {
                    remove(&dest)?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o600)
                    .open(&dest)?;
                io::copy(&mut entry, &mut out)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if existing.is_some() {
                    remove(&dest)?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let Some(tcomps) = components(&target) else {
                    continue;
                };
                let Some((tname, tparents)) = tcomps.split_last() else {
                    continue;
                };
                let Ok(tdir) = walk(&tree, root, tparents, false) else {
                    continue;
                };
                let source = real(&tdir.join(OsStr::from_bytes(tname)));
                if existing.is_some() {
                    remove(&dest)?;
                }
                if std::fs::hard_link(&source, &dest).is_err() && source.is_file() {
                    std::fs::copy(&source, &dest)?;
                }
            }
            _ => continue, // devices, fifos: never read by the plan
        }
        created.insert(path);
    }
    Ok(count)
}

/// `true` for a path in a [`NOT_UNPACKED`] subtree, but not dpkg's status, diversions, file
/// lists or whiteouts (see there).
fn skipped(comps: &[&[u8]]) -> bool {
    if let [b"var", b"lib", b"dpkg", rest @ ..] = comps {
        return !match rest {
            [] | [b"status"] | [b"diversions"] | [b"info"] => true,
            [b"info", name] => name.ends_with(b".list") || name.starts_with(b".wh."),
            [name] => name.starts_with(b".wh."),
            _ => false,
        };
    }
    NOT_UNPACKED.iter().any(|n| {
        let prefix: Vec<&[u8]> = n.as_bytes().split(|&b| b == b'/').collect();
        comps.len() >= prefix.len() && comps[..prefix.len()] == prefix[..]
    })
}

/// The components of an archive path; `None` when it has `..`.
fn components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The canonical image path of the directory `parents` names inside the tree, following
/// symlinks inside it; with `create`, missing directories are made (mode 0755).
fn walk(tree: &HostFs, root: &Path, parents: &[&[u8]], create: bool) -> io::Result<PathBuf> {
    let mut cur = PathBuf::from("/");
    for c in parents {
        let next = cur.join(OsStr::from_bytes(c));
        match tree.lstat(&next).map(|m| m.kind) {
            Ok(Kind::Dir) => cur = next,
            Ok(Kind::Symlink) => {
                let (canon, _) = resolve_path(tree, &next)?;
                if tree.lstat(&canon)?.kind != Kind::Dir {
                    return Err(io::Error::from(io::ErrorKind::NotADirectory));
                }
                cur = canon;
            }
            Ok(_) => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let real = root.join(next.strip_prefix("/").unwrap_or(&next));
                std::fs::create_dir(&real)?;
                std::fs::set_permissions(&real, PermissionsExt::from_mode(0o755))?;
                cur = next;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Remove whatever is at `real` (never following a symlink); nothing there is fine.
fn remove(real: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(real) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(real),
        Ok(_) => std::fs::remove_file(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Hide the lower layers' contents of `dir`: remove every child this layer did not write, and
/// do the same inside the directories it did write.
fn opaque(tree: &HostFs, root: &Path, dir: &Path, created: &HashSet<PathBuf>) -> io::Result<()> {
    for name in tree.read_dir(dir)? {
        let child = dir.join(&name);
        let real = root.join(child.strip_prefix("/").unwrap_or(&child));
        if !created.contains(&child) {
            remove(&real)?;
        } else if tree.lstat(&child)?.kind == Kind::Dir {
            opaque(tree, root, &child, created)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::store::store_layer;
    use super::*;
    use image_core::archive::BlobDir;
    use image_core::digest::Digest;

    fn layer(blobs: &BlobDir, entries: &[(&str, Option<&str>, Option<&str>)]) -> PathBuf {
        // (path, file content, symlink target); neither: directory.
        let mut b = tar::Builder::new(Vec::new());
        for (path, content, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            match (content, link) {
                (Some(c), _) if path.starts_with("../") => {
                    // The tar crate refuses to write `..`: set the raw name.
                    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_cksum();
                    b.append(&h, c.as_bytes()).unwrap();
                }
                (Some(c), _) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                (None, Some(t)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, t).unwrap();
                }
                (None, None) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        let s = store_layer(&mut bytes.as_slice(), blobs, 1).unwrap();
        assert_eq!(s.info.diff_id, Digest::of(&bytes));
        assert_eq!(s.input_digest, Digest::of(&bytes));
        blobs.path(&s.info.digest)
    }

    /// A scratch directory with an empty blob directory and an empty root to unpack into.
    fn scratch() -> (tempfile::TempDir, BlobDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobDir {
            root: tmp.path().join("blobs"),
        };
        std::fs::create_dir_all(&blobs.root).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        (tmp, blobs, root)
    }

    fn read(root: &Path, p: &str) -> Option<String> {
        std::fs::read_to_string(root.join(p)).ok()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_symlinked_parents_and_opaque_dirs() {
        let (tmp, blobs, root) = scratch();
        let l1 = layer(
            &blobs,
            &[
                ("usr/", None, None),
                ("usr/lib/", None, None),
                ("usr/lib/a.so", Some("a1"), None),
                ("usr/lib/gone.so", Some("x"), None),
                ("lib", None, Some("usr/lib")),
                ("etc/", None, None),
                ("etc/opq/", None, None),
                ("etc/opq/old", Some("old"), None),
                ("etc/opq/sub/", None, None),
                ("etc/opq/sub/lower", Some("lower"), None),
                ("abs", None, Some("/usr/lib")),
                ("usr/share/doc/x/README", Some("not unpacked"), None),
            ],
        );
        let l2 = layer(
            &blobs,
            &[
                // Through the symlink `lib`, as the engine does: lands in usr/lib.
                ("lib/b.so", Some("b"), None),
                ("usr/lib/.wh.gone.so", None, None),
                ("usr/lib/a.so", Some("a2"), None),
                ("etc/opq/new", Some("new"), None),
                ("etc/opq/.wh..wh..opq", Some(""), None),
                ("etc/opq/sub/", None, None),
                ("etc/opq/sub/upper", Some("upper"), None),
                // An absolute symlink parent resolves inside the tree.
                ("abs/c.so", Some("c"), None),
                ("../escape", Some("no"), None),
            ],
        );
        assert_eq!(unpack_layer(&root, &l1).unwrap(), 12);
        unpack_layer(&root, &l2).unwrap();
        assert_eq!(read(&root, "usr/lib/a.so").as_deref(), Some("a2"));
        assert_eq!(read(&root, "usr/lib/b.so").as_deref(), Some("b"));
        assert_eq!(read(&root, "usr/lib/c.so").as_deref(), Some("c"));
        assert!(std::fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!root.join("usr/lib/gone.so").exists());
        assert_eq!(read(&root, "etc/opq/new").as_deref(), Some("new"));
        assert!(
            !root.join("etc/opq/old").exists(),
            "hidden by the opaque marker"
        );
        assert!(!root.join("etc/opq/sub/lower").exists());
        assert_eq!(read(&root, "etc/opq/sub/upper").as_deref(), Some("upper"));
        assert!(!root.join("etc/opq/.wh..wh..opq").exists());
        assert!(!tmp.path().join("escape").exists());
        assert!(!root.join("usr/share").exists());
    }

    #[test]
    fn of_dpkg_state_only_what_the_package_survey_reads_is_unpacked() {
        let (_tmp, blobs, root) = scratch();
        let l1 = layer(
            &blobs,
            &[
                ("var/lib/dpkg/", None, None),
                ("var/lib/dpkg/status", Some("Package: libc6"), None),
                ("var/lib/dpkg/diversions", Some(""), None),
                ("var/lib/dpkg/available", Some("big"), None),
                ("var/lib/dpkg/info/", None, None),
                ("var/lib/dpkg/info/libc6:arm64.list", Some("/."), None),
                ("var/lib/dpkg/info/gone.list", Some("/."), None),
                ("var/lib/dpkg/info/libc6:arm64.md5sums", Some("x"), None),
                ("var/lib/dpkg/info/dash.postinst", Some("x"), None),
                ("var/lib/dpkg/triggers/File", Some("x"), None),
                ("var/lib/apt/lists/x", Some("x"), None),
            ],
        );
        let l2 = layer(&blobs, &[("var/lib/dpkg/info/.wh.gone.list", None, None)]);
        unpack_layer(&root, &l1).unwrap();
        unpack_layer(&root, &l2).unwrap();
        let dpkg = root.join("var/lib/dpkg");
        assert_eq!(read(&dpkg, "status").as_deref(), Some("Package: libc6"));
        assert_eq!(read(&dpkg, "diversions").as_deref(), Some(""));
        assert_eq!(read(&dpkg, "info/libc6:arm64.list").as_deref(), Some("/."));
        let mut left: Vec<_> = walk_names(&root);
        left.sort();
        assert_eq!(
            left,
            [
                "var",
                "var/lib",
                "var/lib/dpkg",
                "var/lib/dpkg/diversions",
                "var/lib/dpkg/info",
                "var/lib/dpkg/info/libc6:arm64.list",
                "var/lib/dpkg/status",
            ]
        );
    }

    /// Every path under `root`, relative.
    fn walk_names(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    todo.push(p);
                }
            }
        }
        out
    }
}
