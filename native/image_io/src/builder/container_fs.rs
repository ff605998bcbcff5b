//! A builder container's filesystem, read lazily through [`Fs`].
//!
//! The image needs the release plus a few dozen of the builder's files (the loader, the
//! libraries of the closure, `/bin/sh` and its utilities, the CA bundle, some of `/etc`).
//! Exporting the builder's whole filesystem to find them costs seconds; fetching them one by one
//! costs a round trip each. [`ContainerFs`] does neither:
//!
//! - the release directory is fetched whole first (one listing want);
//! - every path is answered from what has been fetched so far. A call about anything
//!   else records a *want* and fails with `NotFound`. The caller runs its work (the plan, which
//!   is pure and repeatable), takes the wants ([`ContainerFs::take_wants`]), fetches them all
//!   in one exec of [`FETCH_SCRIPT`] (`tar --no-recursion` of the paths, their ancestors and
//!   symlink targets, and the entries of directories to list), hands the tar stream to
//!   [`ContainerFs::absorb`], and runs the work again, until a run wants nothing. That run saw
//!   only answers the container gave, so its result is what an export would have given.
//!
//! [`Fs::hint`] (called by `resolve_path` with the whole path before it walks it) turns a chain
//! of per-component misses into one want, so a library is resolved in one round trip.
//!
//! What is fetched is appended, as it arrives, to one anonymous temporary file (the *spool*,
//! gone when the value is dropped or the process dies); the entries point into it. Memory holds
//! only the index, whatever the size of the release.

use image_core::fs::{Fs, Kind, Meta};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The exec that fetches wants. Arguments: `E:PATH` (an entry: its metadata and, for a regular
/// file, its contents; its ancestors, symlink chain and canonical path come along) or `L:PATH`
/// (a directory and everything under it, symlinks not followed: whoever lists a directory here
/// copies all of it); paths relative to `/`. Writes tar archives one after the other to stdout:
/// one per tree, then one of the entries (no recursion). Paths that do not exist are left out
/// (tar reports them on stderr and exits 1 or 2). Runs with POSIX `sh`, `readlink` and GNU or
/// BusyBox `tar`.
///
/// The names for the last archive are gathered as one string of quoted words and made the
/// arguments once (`eval "set -- …"`): growing `"$@"` one name at a time costs time that grows
/// with the square of the names, which a builder run under QEMU (`--emulate`), interpreting
/// every shell step about a hundred times slower than natively, turned into minutes.
pub const FETCH_SCRIPT: &str = r#"cd / || exit 97
R=$(pwd -P); [ "$R" = / ] && R=
safe() { case "/$1/" in */../*|*/./*|//) return 1;; esac; return 0; }
# GNU tar reads `\n`, `\\`, ... in names as escapes unless told not to; BusyBox tar never does.
U=; case $(tar --version 2>/dev/null) in *GNU*) U=--no-unquote;; esac
W=
# Append $1 to W as one single-quoted word (each ' written as '\'').
add() {
  s=$1 r=
  while case $s in *\'*) true;; *) false;; esac; do r="$r${s%%\'*}'\\''"; s=${s#*\'}; done
  W="$W '$r$s'"
}
# A name and its ancestors.
names() { add "$1"; q=$1; while case $q in */*) true;; *) false;; esac; do q=${q%/*}; add "$q"; done; }
for a in "$@"; do
  p=${a#?:}
  safe "$p" || continue
  names "$p"
  [ -e "$p" ] || [ -L "$p" ] || continue
  case $a in
  L:*)
    # A whole tree: an archive of its own, now (stdout carries several archives in a row).
    tar -cf - $U -- "$p" || true ;;
  E:*)
    k=0
    while :; do
      # The same entry under its canonical directory (as a walk from / meets it); `cd -P`
      # is a builtin, so this costs no process.
      case $p in */*)
        if cd -P "${p%/*}" 2>/dev/null; then
          d=$PWD
          cd "$R/" || exit 97
          case $d in "$R"/?*) p=${d#"$R"/}/${p##*/} ;; "$R"|/) p=${p##*/} ;; *) break ;; esac
          names "$p"
        fi ;;
      esac
      [ -L "$p" ] && [ "$k" -lt 16 ] || break
      t=$(readlink "$p") || break
      case $t in
        /*) t=${t#/} ;;
        *) case $p in */*) t=${p%/*}/$t ;; esac ;;
      esac
      [ -n "$t" ] && safe "$t" || break
      add "$t"
      p=$t; k=$((k+1))
    done ;;
  esac
done
eval "set -- $W"
exec tar -cf - --no-recursion $U -- "$@"
"#;

/// What the next fetch should bring.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    /// An entry (relative to `/`, no `.` or `..` components).
    Entry(PathBuf),
    /// A directory's entries, recursively.
    Listing(PathBuf),
}

impl Want {
    /// The argument of [`FETCH_SCRIPT`] for this want.
    pub fn arg(&self) -> String {
        let (tag, p) = match self {
            Want::Entry(p) => ("E", p),
            Want::Listing(p) => ("L", p),
        };
        let p = p.to_string_lossy();
        format!("{tag}:{}", if p.is_empty() { "." } else { &p })
    }
}

#[derive(Debug, Clone)]
enum Node {
    /// Contents at `offset` in the spool.
    File {
        mode: u32,
        offset: u64,
        size: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
    Other {
        mode: u32,
    },
}

impl Node {
    fn meta(&self) -> Meta {
        match self {
            Node::File { mode, size, .. } => Meta {
                kind: Kind::File,
                mode: *mode,
                size: *size,
            },
            Node::Dir { mode } => Meta {
                kind: Kind::Dir,
                mode: *mode,
                size: 0,
            },
            Node::Symlink { .. } => Meta {
                kind: Kind::Symlink,
                mode: 0o777,
                size: 0,
            },
            Node::Other { mode } => Meta {
                kind: Kind::Other,
                mode: *mode,
                size: 0,
            },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Fetched entries, keyed by path relative to `/` (`""` is the root).
    nodes: HashMap<PathBuf, Node>,
    /// The fetched entries of each directory.
    children: HashMap<PathBuf, BTreeSet<OsString>>,
    /// Directories whose entries have all been fetched.
    listed: HashSet<PathBuf>,
    /// Asked for and not there.
    absent: HashSet<PathBuf>,
    /// Asked for since the last [`ContainerFs::take_wants`].
    wants: BTreeSet<Want>,
    /// Every want ever handed out (a want asked again after its fetch is a bug, not progress).
    fetched: HashSet<Want>,
    /// Bytes of file contents received.
    bytes: u64,
    /// The spool (created on the first append), its length, and how much of it is absorbed.
    spool: Option<Arc<File>>,
    spool_len: u64,
    absorbed: u64,
}

/// A builder container's filesystem, fetched on demand (see the module docs).
#[derive(Debug)]
pub struct ContainerFs {
    state: Mutex<State>,
}

/// `path` relative to `/`, if it is absolute and has no `.` or `..` components.
fn key(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return None;
    }
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    Some(out)
}

fn not_fetched(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} is not fetched from the builder yet", path.display()),
    )
}

fn unusable(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a plain absolute path (no . or .. components)",
            path.display()
        ),
    )
}

impl Default for ContainerFs {
    fn default() -> Self {
        ContainerFs::new()
    }
}

impl ContainerFs {
    /// Nothing fetched yet but the root directory.
    pub fn new() -> ContainerFs {
        let mut state = State::default();
        state
            .nodes
            .insert(PathBuf::new(), Node::Dir { mode: 0o755 });
        ContainerFs {
            state: Mutex::new(state),
        }
    }

    /// Ask for everything under directory `path` (absolute) at the next fetch.
    pub fn want_tree(&self, path: &Path) -> io::Result<()> {
        let k = key(path).ok_or_else(|| unusable(path))?;
        self.state.lock().unwrap().wants.insert(Want::Listing(k));
        Ok(())
    }

    /// The wants recorded since the last call, emptied.
    pub fn take_wants(&self) -> Vec<Want> {
        let mut st = self.state.lock().unwrap();
        let wants: Vec<Want> = std::mem::take(&mut st.wants).into_iter().collect();
        wants
    }

    /// Bytes of file contents fetched so far, and how many entries.
    pub fn fetched(&self) -> (u64, usize) {
        let st = self.state.lock().unwrap();
        (st.bytes, st.nodes.len())
    }

    /// Append the next bytes of what [`FETCH_SCRIPT`] writes to the spool.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let file = match &st.spool {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(tempfile::tempfile()?);
                st.spool = Some(f.clone());
                f
            }
        };
        file.write_all_at(bytes, st.spool_len)?;
        st.spool_len += bytes.len() as u64;
        Ok(())
    }

    /// Take in the tar archives appended since the last call, written for `wants`. Entries are
    /// stored under their names; a wanted entry that is not in them is recorded as absent; a
    /// wanted listing whose directory arrived is complete. Returns `Err` for a malformed
    /// archive or when a want was fetched before (no progress).
    pub fn absorb(&self, wants: &[Want]) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let (start, end) = (st.absorbed, st.spool_len);
        st.absorbed = end;
        // Nothing appended yet (no spool): no entries, every want is absent.
        if let Some(file) = st.spool.clone() {
            let region = Region {
                file,
                start,
                pos: start,
                end,
            };
            read_entries(&mut st, region)?;
        }
        for want in wants {
            let (Want::Entry(p) | Want::Listing(p)) = want;
            let present = st.nodes.contains_key(p);
            match want {
                Want::Listing(p) if present => {
                    // Everything under `p` came: its directories are listed too.
                    let dirs: Vec<PathBuf> = st
                        .nodes
                        .iter()
                        .filter(|(k, n)| k.starts_with(p) && matches!(n, Node::Dir { .. }))
                        .map(|(k, _)| k.clone())
                        .collect();
                    st.listed.extend(dirs);
                }
                _ if present => {}
                _ => {
                    st.absent.insert(p.clone());
                }
            }
            if !st.fetched.insert(want.clone()) {
                return Err(io::Error::other(format!(
                    "the builder was asked for {} twice",
                    want.arg()
                )));
            }
        }
        Ok(())
    }

    /// The node at `path`, or the error to return (recording a want for what is missing).
    fn node(&self, path: &Path) -> io::Result<Node> {
        let k = key(path).ok_or_else(|| unusable(path))?;
        let mut st = self.state.lock().unwrap();
        if let Some(n) = st.nodes.get(&k) {
            return Ok(n.clone());
        }
        if st.absent.contains(&k) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist in the builder", path.display()),
            ));
        }
        st.wants.insert(Want::Entry(k));
        Err(not_fetched(path))
    }
}

impl Fs for ContainerFs {
    fn lstat(&self, path: &Path) -> io::Result<Meta> {
        Ok(self.node(path)?.meta())
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.node(path)? {
            Node::Symlink { target } => Ok(target),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a symbolic link", path.display()),
            )),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let k = key(path).ok_or_else(|| unusable(path))?;
        if k.as_os_str().is_empty() {
            // The root's entries are never needed whole; a listing of it would fetch every
            // top-level file.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "listing the builder's root directory is not supported",
            ));
        }
        let mut st = self.state.lock().unwrap();
        if st.listed.contains(&k) {
            return Ok(st
                .children
                .get(&k)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default());
        }
        if st.absent.contains(&k) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist in the builder", path.display()),
            ));
        }
        if let Some(n) = st.nodes.get(&k) {
            if !matches!(n, Node::Dir { .. }) {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", path.display()),
                ));
            }
        }
        st.wants.insert(Want::Listing(k));
        Err(not_fetched(path))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        match self.node(path)? {
            Node::File { offset, size, .. } => {
                let file = self.state.lock().unwrap().spool.clone();
                let file = file.ok_or_else(|| io::Error::other("no spool"))?;
                Ok(Box::new(Region {
                    file,
                    start: offset,
                    pos: offset,
                    end: offset + size,
                }))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            )),
        }
    }

    fn hint(&self, path: &Path) {
        let Some(k) = key(path) else { return };
        let mut st = self.state.lock().unwrap();
        if !st.nodes.contains_key(&k) && !st.absent.contains(&k) {
            st.wants.insert(Want::Entry(k));
        }
    }
}

/// Index the tar archives (several in a row) in `region` of the spool into `st`: entries point
/// at their data in the spool, nothing is copied.
fn read_entries(st: &mut State, region: Region) -> io::Result<()> {
    let start = region.start;
    let mut archive = tar::Archive::new(region);
    // Several archives in a row: read past each one's end-of-archive blocks.
    archive.set_ignore_zeros(true);
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let name = entry.path()?.into_owned();
        let Some(k) = key(&Path::new("/").join(&name)) else {
            continue;
        };
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let node = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                st.bytes += size;
                Node::File {
                    mode,
                    offset: start + entry.raw_file_position(),
                    size,
                }
            }
            tar::EntryType::Directory => Node::Dir { mode },
            tar::EntryType::Symlink => Node::Symlink {
                target: entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .unwrap_or_default(),
            },
            tar::EntryType::Link => {
                // An entry archived earlier (a hard link, or the same path or inode asked
                // for twice: GNU tar sends every later occurrence this way).
                let target = entry
                    .link_name()?
                    .and_then(|t| key(&Path::new("/").join(t)))
                    .and_then(|t| st.nodes.get(&t).cloned());
                match target {
                    Some(n) => n,
                    None => continue,
                }
            }
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => continue,
            _ => Node::Other { mode },
        };
        if let (Some(parent), Some(name)) = (k.parent(), k.file_name()) {
            st.children
                .entry(parent.to_path_buf())
                .or_default()
                .insert(name.to_os_string());
        }
        st.absent.remove(&k);
        st.nodes.insert(k, node);
    }
    Ok(())
}

/// Bytes `start..end` of the spool, read with `pread` (readers never share a file offset).
struct Region {
    file: Arc<File>,
    start: u64,
    pos: u64,
    end: u64,
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool is shorter than recorded",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Region {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let rel = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::Current(d) => (self.pos - self.start) as i128 + d as i128,
            SeekFrom::End(d) => (self.end - self.start) as i128 + d as i128,
        };
        if rel < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = (self.start + rel as u64).min(self.end);
        Ok(self.pos - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_core::fs::resolve_path;
    use std::process::Command;

    /// The shells the script must run with: the host's (dash + GNU tar and coreutils) and
    /// BusyBox's (as in Alpine builders: ash + BusyBox tar and readlink, nothing else on PATH).
    #[derive(Clone, Copy, Debug)]
    enum Shell {
        Host,
        BusyBox,
    }

    const SHELLS: [Shell; 2] = [Shell::Host, Shell::BusyBox];

    fn fetch(root: &Path, shell: Shell, wants: &[Want]) -> Vec<u8> {
        let script = FETCH_SCRIPT.replacen("cd / ", &format!("cd {} ", root.display()), 1);
        let bin = tempfile::tempdir().unwrap();
        let mut cmd = match shell {
            Shell::Host => Command::new("sh"),
            Shell::BusyBox => {
                let busybox = ["/usr/bin/busybox", "/bin/busybox"]
                    .into_iter()
                    .find(|p| Path::new(p).exists())
                    .expect("busybox is not installed (Debian: busybox-static)");
                for applet in ["tar", "readlink"] {
                    std::os::unix::fs::symlink(busybox, bin.path().join(applet)).unwrap();
                }
                let mut c = Command::new(busybox);
                c.arg("sh").env("PATH", bin.path());
                c
            }
        };
        let out = cmd
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .args(wants.iter().map(Want::arg))
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= 2),
            "{shell:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A tree on the host, fetched through the real script (with `/` replaced by the tree),
    /// until the work wants nothing.
    fn converge<T>(
        root: &Path,
        shell: Shell,
        mut work: impl FnMut(&ContainerFs) -> T,
    ) -> (T, usize) {
        let fs = ContainerFs::new();
        let mut rounds = 0;
        loop {
            let out = work(&fs);
            let wants = fs.take_wants();
            if wants.is_empty() {
                return (out, rounds);
            }
            rounds += 1;
            assert!(rounds < 20, "no convergence: {wants:?}");
            fs.append(&fetch(root, shell, &wants)).unwrap();
            fs.absorb(&wants).unwrap();
        }
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu/ossl-modules")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::fs::write(r.join("usr/lib/x86_64-linux-gnu/libz.so.1.2.13"), b"zlib").unwrap();
        std::os::unix::fs::symlink(
            "libz.so.1.2.13",
            r.join("usr/lib/x86_64-linux-gnu/libz.so.1"),
        )
        .unwrap();
        std::fs::write(
            r.join("usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so"),
            b"legacy",
        )
        .unwrap();
        std::fs::hard_link(
            r.join("usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
            r.join("usr/lib/x86_64-linux-gnu/libz-hard.so"),
        )
        .unwrap();
        t
    }

    #[test]
    fn a_path_through_symlinks_resolves_in_one_round() {
        for shell in SHELLS {
            let t = tree();
            let ((canon, links), rounds) = converge(t.path(), shell, |fs| {
                resolve_path(fs, Path::new("/lib/x86_64-linux-gnu/libz.so.1")).unwrap_or_default()
            });
            assert_eq!(
                canon,
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
                "{shell:?}"
            );
            assert_eq!(links.len(), 2, "{shell:?}: {links:?}");
            assert_eq!(rounds, 1, "{shell:?}");
        }
    }

    #[test]
    fn contents_listings_hard_links_and_absence() {
        for shell in SHELLS {
            contents_listings_hard_links_and_absence_with(shell);
        }
    }

    fn contents_listings_hard_links_and_absence_with(shell: Shell) {
        let t = tree();
        let (got, _) = converge(t.path(), shell, |fs| {
            let names = fs
                .read_dir(Path::new("/usr/lib/x86_64-linux-gnu/ossl-modules"))
                .unwrap_or_default();
            let data = fs
                .read(Path::new(
                    "/usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so",
                ))
                .unwrap_or_default();
            // Both names of a hard link, asked for in one round.
            let a = fs.read(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"));
            let b = fs.read(Path::new("/usr/lib/x86_64-linux-gnu/libz-hard.so"));
            let missing = fs.lstat(Path::new("/usr/lib/nothing-here")).map(|_| ());
            (names, data, a.ok(), b.ok(), missing.map_err(|e| e.kind()))
        });
        assert_eq!(got.0, vec![OsString::from("legacy.so")]);
        assert_eq!(got.1, b"legacy");
        assert_eq!(got.2.as_deref(), Some(&b"zlib"[..]));
        assert_eq!(got.3.as_deref(), Some(&b"zlib"[..]));
        assert_eq!(got.4, Err(io::ErrorKind::NotFound));
    }

    #[test]
    fn a_wanted_tree_comes_whole_in_one_round() {
        for shell in SHELLS {
            a_wanted_tree_comes_whole_in_one_round_with(shell);
        }
    }

    fn a_wanted_tree_comes_whole_in_one_round_with(shell: Shell) {
        let t = tree();
        let mut first = true;
        let (got, rounds) = converge(t.path(), shell, |fs| {
            if first {
                fs.want_tree(Path::new("/usr/lib")).unwrap();
                first = false;
                return None;
            }
            let deep = fs.read_dir(Path::new("/usr/lib/x86_64-linux-gnu/ossl-modules"));
            let link = fs.read_link(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1"));
            Some((deep.unwrap(), link.unwrap()))
        });
        assert_eq!(rounds, 1);
        let (deep, link) = got.unwrap();
        assert_eq!(deep, vec![OsString::from("legacy.so")]);
        assert_eq!(link, PathBuf::from("libz.so.1.2.13"));
    }

    #[test]
    fn names_with_quotes_spaces_and_shell_characters_come_as_they_are() {
        for shell in SHELLS {
            let t = tree();
            let odd = "usr/share/it's a \"$(x)\" `y` \\n;*";
            std::fs::create_dir_all(t.path().join(odd)).unwrap();
            std::fs::write(t.path().join(odd).join("o'k"), b"quoted").unwrap();
            std::os::unix::fs::symlink("o'k", t.path().join(odd).join("l'nk")).unwrap();
            let wanted = Path::new("/").join(odd).join("l'nk");
            let (got, rounds) = converge(t.path(), shell, |fs| {
                let (canon, _) = resolve_path(fs, &wanted).unwrap_or_default();
                (canon.clone(), fs.read(&canon).ok())
            });
            assert_eq!(got.0, Path::new("/").join(odd).join("o'k"), "{shell:?}");
            assert_eq!(got.1.as_deref(), Some(&b"quoted"[..]), "{shell:?}");
            assert_eq!(rounds, 1, "{shell:?}");
        }
    }

    /// Many wants in one round all come back (that the script's time grows with the names, not
    /// their square, is measured in docs/BENCHMARKS.md figure 12, not here).
    #[test]
    fn a_round_of_many_wants_brings_them_all() {
        for shell in SHELLS {
            let t = tree();
            let dir = t.path().join("usr/share/many");
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..400 {
                std::fs::write(dir.join(format!("f{i}")), format!("{i}")).unwrap();
            }
            let (got, rounds) = converge(t.path(), shell, |fs| {
                (0..400)
                    .filter_map(|i| {
                        fs.read(&Path::new("/usr/share/many").join(format!("f{i}")))
                            .ok()
                    })
                    .count()
            });
            assert_eq!((got, rounds), (400, 1), "{shell:?}");
        }
    }

    #[test]
    fn paths_with_dot_components_are_refused_not_fetched() {
        let fs = ContainerFs::new();
        let e = fs.lstat(Path::new("/usr/../etc/passwd")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(fs.take_wants().is_empty());
    }

    #[test]
    fn a_want_asked_again_after_its_fetch_is_an_error() {
        let fs = ContainerFs::new();
        let want = vec![Want::Entry(PathBuf::from("etc/x"))];
        fs.append(&[0u8; 1024]).unwrap();
        fs.absorb(&want).unwrap();
        fs.append(&[0u8; 1024]).unwrap();
        assert!(fs.absorb(&want).is_err());
    }
}
