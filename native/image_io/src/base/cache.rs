//! Unpacked images kept between runs, by image ID: another platform's image (`--platform`) is
//! read on every build, and exporting and unpacking a 200 MB builder image costs seconds each
//! time; the image ID (its config's digest) names exactly one filesystem, so a tree unpacked once
//! serves every later run that reads the same image.
//!
//! Layout: `DIR/<FORMAT>-<hex of the image ID>/platform` (`os/arch[/variant]`, written first)
//! and `DIR/<FORMAT>-<hex>/rootfs/` (renamed into place whole, so a tree is complete or
//! absent). Only read: nothing writes into a kept tree. [`UnpackedCache::prune`] keeps the
//! most recently used (trees of another [`FORMAT`] are never used, so they go first).

use super::LoadedBase;
use image_core::digest::Digest;
use image_core::elf::Platform;
use image_core::fs::HostFs;
use std::io;
use std::path::{Path, PathBuf};

/// Entries kept by [`UnpackedCache::prune`]: two platforms' images, and one more.
pub const KEEP: usize = 3;

/// The version of what a kept tree holds ([`super::unpack::NOT_UNPACKED`]): a tree unpacked by
/// other rules is not used. 2: with dpkg's status, diversions and file lists; the trees of 1
/// (named by the image ID alone) had none.
pub const FORMAT: &str = "2";

/// A directory of unpacked images.
#[derive(Debug, Clone)]
pub struct UnpackedCache {
    /// Where they are.
    pub dir: PathBuf,
}

/// An image's tree from the cache.
#[derive(Debug)]
pub struct Unpacked {
    /// Its filesystem.
    pub fs: HostFs,
    /// Its platform.
    pub platform: Platform,
}

impl UnpackedCache {
    fn entry(&self, id: &Digest) -> PathBuf {
        self.dir.join(format!("{FORMAT}-{}", id.hex()))
    }

    /// The tree of image `id`, if kept (marked as used now).
    pub fn get(&self, id: &Digest) -> Option<Unpacked> {
        let entry = self.entry(id);
        let rootfs = entry.join("rootfs");
        if !rootfs.is_dir() {
            return None;
        }
        let text = std::fs::read_to_string(entry.join("platform")).ok()?;
        let platform = image_core::platform::parse(text.trim()).ok()?;
        // The entry's mtime says when it was last used (prune keeps the newest).
        let _ = std::fs::File::options()
            .append(true)
            .open(entry.join("platform"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(Unpacked {
            fs: HostFs::new(&rootfs),
            platform,
        })
    }

    /// Keep the tree of `loaded`, the image `id`, and return it from the cache. When another
    /// run kept the same image meanwhile, its tree is used and this one removed.
    pub fn put(&self, id: &Digest, loaded: LoadedBase) -> io::Result<Unpacked> {
        let entry = self.entry(id);
        std::fs::create_dir_all(&entry)?;
        std::fs::write(entry.join("platform"), loaded.platform.to_string())?;
        let rootfs = entry.join("rootfs");
        let from = loaded.into_rootfs();
        if let Err(e) = std::fs::rename(from.path(), &rootfs) {
            if !rootfs.is_dir() {
                return Err(e);
            }
            // Another run's tree is there: `from` is removed when dropped.
        } else {
            // Renamed away: nothing left for the guard to remove.
            let _ = from.keep();
        }
        self.get(id)
            .ok_or_else(|| io::Error::other(format!("{} vanished", rootfs.display())))
    }

    /// Keep the `keep` most recently used entries; remove the others.
    pub fn prune(&self, keep: usize) -> io::Result<()> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            let used = std::fs::metadata(path.join("platform"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            entries.push((used, path));
        }
        entries.sort();
        let drop = entries.len().saturating_sub(keep);
        for (_, path) in entries.into_iter().take(drop) {
            remove_tree(&path)?;
        }
        Ok(())
    }
}

/// Remove `path`, also where unpacking left directories without write permission.
fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            use std::os::unix::fs::PermissionsExt;
            for e in walk(path) {
                if e.is_dir() && !e.is_symlink() {
                    let _ = std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o755));
                }
            }
            std::fs::remove_dir_all(path)
        }
    }
}

fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            if let Ok(rd) = std::fs::read_dir(&out[i]) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_core::fs::Fs;

    fn loaded(work: &Path, text: &str) -> LoadedBase {
        let rootfs = tempfile::tempdir_in(work).unwrap();
        std::fs::create_dir_all(rootfs.path().join("usr/lib/erlang")).unwrap();
        std::fs::write(rootfs.path().join("usr/lib/erlang/x"), text).unwrap();
        LoadedBase {
            reference: "builder:arm64".into(),
            source: "the Docker engine".into(),
            layers: vec![],
            config: Default::default(),
            platform: image_core::platform::parse("linux/arm64").unwrap(),
            diff_ids: vec![],
            fs: HostFs::new(rootfs.path()),
            rootfs,
        }
    }

    #[test]
    fn a_kept_tree_is_found_by_image_id_and_the_oldest_are_pruned() {
        let work = tempfile::tempdir().unwrap();
        let cache = UnpackedCache {
            dir: work.path().join("unpacked"),
        };
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(cache.get(&a).is_none());
        let kept = cache.put(&a, loaded(work.path(), "first")).unwrap();
        assert_eq!(kept.platform.to_string(), "linux/arm64/v8");
        assert_eq!(
            kept.fs.read(Path::new("/usr/lib/erlang/x")).unwrap(),
            b"first"
        );
        // Another run kept the same image meanwhile: its tree stays, this one is dropped.
        let again = cache.put(&a, loaded(work.path(), "second")).unwrap();
        assert_eq!(
            again.fs.read(Path::new("/usr/lib/erlang/x")).unwrap(),
            b"first"
        );
        let leftovers = std::fs::read_dir(work.path()).unwrap().count();
        assert_eq!(
            leftovers, 1,
            "only the cache directory is left in the work directory"
        );

        cache.put(&b, loaded(work.path(), "b")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get(&a).is_some(), "used last");
        cache.prune(1).unwrap();
        assert!(cache.get(&a).is_some());
        assert!(
            cache.get(&b).is_none(),
            "the least recently used is removed"
        );
    }
}
