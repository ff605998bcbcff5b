//! The runtime closure of a set of paths: every file and symlink an image with no base image
//! needs so that the given programs, libraries and files work.
//!
//! [`Resolver::add`] takes a path (file, symlink chain or directory) and, for every ELF file it
//! reaches, simulates the dynamic loader named by its `PT_INTERP` to find the shared libraries
//! it loads. The result, [`Closure`], lists paths to copy from the source [`Fs`] at the same
//! path, plus symlinks to create.
//!
//! # glibc search order (per `DT_NEEDED` name without `/`)
//!
//! 1. `DT_RPATH` of the loading object, then of the object that loaded it, up to the root
//!    (inherited) — only when the loading object has no `DT_RUNPATH`; an object that has a
//!    `DT_RUNPATH` contributes no `DT_RPATH` either (glibc drops it);
//! 2. `LD_LIBRARY_PATH`: ignored (the image's environment is not known here);
//! 3. `DT_RUNPATH` of the loading object only;
//! 4. the directories of `/etc/ld.so.conf` and its `include`d files (what `ld.so.cache` holds);
//! 5. the system directories `/lib/<triple>`, `/usr/lib/<triple>`, `/lib`, `/usr/lib`, then (not
//!    glibc defaults on Debian, tried last) `/lib64`, `/usr/lib64` (`/lib32`, `/usr/lib32` for
//!    32-bit objects).
//!
//! Names containing `/` are used as paths (absolute only; relative ones depend on the working
//! directory and are reported as not found). Objects already loaded — by a requested name, by
//! `DT_SONAME`, or the same file under another name — are not searched again, and the search is
//! breadth-first, as in `ld.so`. Candidates of the wrong class, byte order or machine, and
//! non-ELF files, are skipped. `glibc-hwcaps` and legacy hwcap subdirectories are ignored.
//!
//! `$ORIGIN`/`${ORIGIN}` expand to the directory of the object as loaded (for a root, its
//! canonical directory, like `/proc/self/exe`). Entries with other tokens (`$LIB`,
//! `$PLATFORM`), empty entries and relative entries are skipped.
//!
//! # musl
//!
//! When the interpreter's path contains `ld-musl`, musl's rules apply instead: `DT_RUNPATH`
//! (or else `DT_RPATH`) of the loading object and of every object up the chain (with
//! `$ORIGIN`), then the directories of `<prefix>/etc/ld-musl-<arch>.path` (`:` or newline
//! separated; the file is added to the closure) or, without that file,
//! `/lib:/usr/local/lib:/usr/lib`. Names `libc.*`, `libpthread.*`, `librt.*`, `libm.*`, `libdl.*`,
//! `libutil.*` and `libxnet.*` are provided by the loader itself.
//!
//! # The `ld.so.conf` trap
//!
//! The image has no `/etc/ld.so.cache`. A library found only through an `ld.so.conf` directory
//! that is not a system directory gets an [`Closure::extra_links`] entry
//! `<canonical first system dir>/<name> -> <path found>`, so the image's loader finds it.
//!
//! # Libraries loaded with `dlopen`
//!
//! See [`DLOPEN_COMPANIONS`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf::{is_elf, ElfInfo, Header};
use crate::fs::{resolve_path, Fs, Kind};

/// Files that a library or NIF opens with `dlopen` (so they never appear in `DT_NEEDED`), added
/// whenever an ELF file whose name starts with `file_name_prefix` is reached.
#[derive(Debug, Clone, Copy)]
pub struct Companion {
    /// The start of the file name of the ELF file that loads the companion.
    pub file_name_prefix: &'static str,
    /// Path of the companion relative to the canonical directory of that ELF file (a file or a
    /// directory, added recursively with its own closure); skipped when it does not exist.
    pub relative_path: &'static str,
    /// The reason recorded in [`Entry::reason`].
    pub reason: &'static str,
}

/// The table of `dlopen` companions (add rules here).
///
/// - OpenSSL 3's `libcrypto` loads providers from `ossl-modules/` beside it; without
///   `legacy.so`, md4 and DES vanish from `:crypto.supports/0`.
/// - OTP's crypto NIF loads `crypto_callback.so` beside it.
pub const DLOPEN_COMPANIONS: &[Companion] = &[
    Companion {
        file_name_prefix: "libcrypto.so.3",
        relative_path: "ossl-modules",
        reason: "dlopen'ed by libcrypto",
    },
    Companion {
        file_name_prefix: "crypto.so",
        relative_path: "crypto_callback.so",
        reason: "dlopen'ed by the crypto NIF",
    },
];

/// One path of a [`Closure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// [`Kind::File`] or [`Kind::Symlink`] (copied as a symlink).
    pub kind: Kind,
    /// Why the path is there (first reason met), e.g. `libz.so.1, needed by /x (release ELF)`.
    pub reason: String,
}

/// What an image needs from the source filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Every path to copy from the source Fs into the image at the same path, with why it is
    /// there. Files and symlinks (symlinks are copied as symlinks, including directory symlinks
    /// like `/lib -> usr/lib`).
    ///
    /// INVARIANT: no key's parent chain passes through a symlink (parents are canonical), so a
    /// tar writer can create each key's parents as plain directories.
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Symlinks that do not exist in the source but must exist in the image: link path ->
    /// target (see "The `ld.so.conf` trap" in the module docs).
    pub extra_links: BTreeMap<PathBuf, PathBuf>,
    /// Devices, FIFOs and sockets found inside an added directory, left out (they cannot be
    /// in an image): the caller says so.
    pub skipped: Vec<PathBuf>,
}

/// Why a closure could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    /// A `DT_NEEDED` library was found nowhere the loader looks.
    #[error(
        "{soname}, needed by {}, was not found in {}; install it or add it with extra_files",
        needed_by.display(),
        show_dirs(searched)
    )]
    NotFound {
        /// The name in `DT_NEEDED`.
        soname: String,
        /// The object whose `DT_NEEDED` it is (as loaded).
        needed_by: PathBuf,
        /// The directories (or, for names with `/`, the path) searched, in order.
        searched: Vec<PathBuf>,
    },
    /// A program's interpreter (`PT_INTERP`) does not exist.
    #[error(
        "the program interpreter {}, of {}, was not found; install it or add it with extra_files",
        interpreter.display(),
        needed_by.display()
    )]
    MissingInterpreter {
        /// The interpreter path.
        interpreter: PathBuf,
        /// The program that names it.
        needed_by: PathBuf,
    },
    /// A file could not be read (or a path not resolved).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A path given to add is a device, FIFO or socket.
    #[error("{} is a device, FIFO or socket: only files, directories and symlinks can be copied into an image (devices come from the container runtime)", path.display())]
    Special {
        /// The path (canonical).
        path: PathBuf,
    },
    /// A library the loader would load is not a valid ELF file.
    #[error("{} is not a valid ELF file: {message}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

fn show_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no directories)".to_string();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unreadable(path: &Path) -> impl FnOnce(io::Error) -> ClosureError + '_ {
    move |source| ClosureError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// How the loader found an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum How {
    /// The object whose closure is computed.
    Root,
    /// The program interpreter (`PT_INTERP`), or musl's loader providing `libc.so`.
    Interpreter,
    /// A `DT_NEEDED` name containing `/`.
    Path,
    /// A `DT_RPATH` directory (glibc) of the loader chain.
    Rpath,
    /// The loading object's `DT_RUNPATH` (glibc).
    Runpath,
    /// A directory of `/etc/ld.so.conf` (glibc's `ld.so.cache`).
    LdSoConf,
    /// A glibc default directory.
    SystemDir,
    /// musl: a `DT_RUNPATH`/`DT_RPATH` directory of the loader chain.
    MuslRpath,
    /// musl: a directory of `/etc/ld-musl-<arch>.path` or its default.
    MuslPath,
}

/// One object the loader would load for a root, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The path the loader opens (may contain symlinks and `..`).
    pub path: PathBuf,
    /// The canonical path of the file.
    pub canonical: PathBuf,
    /// The `DT_NEEDED` name it was loaded for (empty for the root and the interpreter).
    pub needed_as: String,
    /// How it was found.
    pub how: How,
    /// Index (in the same list) of the object that caused it to be loaded.
    pub loaded_by: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Flavor {
    Glibc { interp: Option<PathBuf> },
    Musl { interp: PathBuf, arch: String },
}

struct Obj {
    loaded: Loaded,
    origin: PathBuf,
    info: Arc<ElfInfo>,
}

type SearchKey = (String, Vec<(PathBuf, How)>, Header);
type Found = (PathBuf, PathBuf, How);

/// Computes a [`Closure`] by adding paths to it.
pub struct Resolver<'a> {
    fs: &'a dyn Fs,
    exclude: Vec<PathBuf>,
    closure: Closure,
    infos: HashMap<PathBuf, Arc<ElfInfo>>,
    headers: HashMap<PathBuf, Option<Header>>,
    searches: HashMap<SearchKey, Option<Found>>,
    ld_so_conf: Option<Vec<PathBuf>>,
    interpreters: HashMap<(bool, bool, u16), String>,
    roots_done: HashSet<PathBuf>,
    dirs_done: HashSet<PathBuf>,
}

impl<'a> Resolver<'a> {
    /// A resolver reading `fs`. Paths under `exclude_prefixes` (as given or canonical; e.g. the
    /// release directory, copied separately) are resolved through — their ELF files' libraries
    /// are added — but never put in [`Closure::entries`].
    pub fn new(fs: &'a dyn Fs, exclude_prefixes: Vec<PathBuf>) -> Self {
        let mut exclude = exclude_prefixes.clone();
        for p in &exclude_prefixes {
            if let Ok((canon, _)) = resolve_path(fs, p) {
                if !exclude.contains(&canon) {
                    exclude.push(canon);
                }
            }
        }
        Resolver {
            fs,
            exclude,
            closure: Closure::default(),
            infos: HashMap::new(),
            headers: HashMap::new(),
            searches: HashMap::new(),
            ld_so_conf: None,
            interpreters: HashMap::new(),
            roots_done: HashSet::new(),
            dirs_done: HashSet::new(),
        }
    }

    /// Add a path (file, symlink chain, or directory recursively) plus, for each ELF file
    /// reached, its full shared-library closure and `PT_INTERP`, and the [`DLOPEN_COMPANIONS`]
    /// of every ELF file reached. `reason` is a human text ("release ELF", "shell",
    /// "extra_files", ...).
    ///
    /// Symlinks inside an added directory are kept and followed; dangling ones are kept as they
    /// are. ELF files that cannot be parsed are copied but get no closure.
    pub fn add(&mut self, path: &Path, reason: &str) -> Result<(), ClosureError> {
        self.add_inner(path, reason, false)
    }

    /// The closure computed so far.
    pub fn finish(self) -> Closure {
        self.closure
    }

    /// The objects the loader would load for the ELF file at `elf` run (or `dlopen`ed) as a
    /// program: the root first, then the interpreter (when known), then the libraries in
    /// breadth-first load order. Does not change the closure.
    pub fn load_order(&mut self, elf: &Path) -> Result<Vec<Loaded>, ClosureError> {
        Ok(self
            .load_objects(elf)?
            .into_iter()
            .map(|o| o.loaded)
            .collect())
    }

    fn is_excluded(&self, path: &Path) -> bool {
        self.exclude.iter().any(|p| path.starts_with(p))
    }

    fn insert(&mut self, path: &Path, kind: Kind, reason: &str) {
        self.closure
            .entries
            .entry(path.to_path_buf())
            .or_insert_with(|| Entry {
                kind,
                reason: reason.to_string(),
            });
    }

    fn add_inner(&mut self, path: &Path, reason: &str, in_walk: bool) -> Result<(), ClosureError> {
        let excluded_as_given = self.is_excluded(path);
        let (canon, links) = match resolve_path(self.fs, path) {
            Ok(r) => r,
            Err(e) if in_walk && e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink inside an added directory: copy the link itself.
                if let Ok(m) = self.fs.lstat(path) {
                    if m.kind == Kind::Symlink && !excluded_as_given {
                        self.insert(path, Kind::Symlink, reason);
                    }
                }
                return Ok(());
            }
            Err(e) => return Err(unreadable(path)(e)),
        };
        let excluded = excluded_as_given || self.is_excluded(&canon);
        if !excluded {
            for (link, _) in &links {
                self.insert(link, Kind::Symlink, reason);
            }
        }
        let meta = self.fs.lstat(&canon).map_err(unreadable(&canon))?;
        match meta.kind {
            Kind::File => {
                if !excluded {
                    self.insert(&canon, Kind::File, reason);
                }
                let head = self.fs.read_head(&canon, 4).map_err(unreadable(&canon))?;
                if is_elf(&head) {
                    self.add_elf(&canon, reason)?;
                }
            }
            Kind::Dir => {
                if self.dirs_done.insert(canon.clone()) {
                    let mut names = self.fs.read_dir(&canon).map_err(unreadable(&canon))?;
                    names.sort();
                    for name in names {
                        self.add_inner(&canon.join(name), reason, true)?;
                    }
                }
            }
            Kind::Other if in_walk => {
                if !excluded {
                    self.closure.skipped.push(canon);
                }
            }
            Kind::Other => return Err(ClosureError::Special { path: canon }),
            Kind::Symlink => {}
        }
        Ok(())
    }

    /// The closure of one ELF file (canonical path) treated as a root.
    fn add_elf(&mut self, canon: &Path, reason: &str) -> Result<(), ClosureError> {
        if !self.roots_done.insert(canon.to_path_buf()) {
            return Ok(());
        }
        if self.info(canon).is_err() {
            // Not loadable anyway (truncated, corrupt): nothing to resolve.
            return Ok(());
        }
        self.add_companions(canon)?;
        let objs = self.load_objects(canon)?;
        let root = objs[0].info.clone();
        if let Flavor::Musl { interp, arch } = self.flavor_of(&root) {
            let file = musl_path_file(&interp, &arch);
            if self.fs.exists(&file) {
                self.add_inner(&file, "musl library path", false)?;
            }
        }
        for o in objs.iter().skip(1) {
            let l = &o.loaded;
            let why = match l.how {
                How::Interpreter => format!("interpreter of {} ({reason})", canon.display()),
                _ => {
                    let by = l
                        .loaded_by
                        .map(|i| objs[i].loaded.path.display().to_string())
                        .unwrap_or_default();
                    format!("{}, needed by {by} ({reason})", l.needed_as)
                }
            };
            self.add_object(&l.path, &why)?;
            if l.how == How::LdSoConf {
                self.ld_so_conf_trap(l, &o.info.header);
            }
        }
        Ok(())
    }

    /// Put a library the loader opens into the closure: its symlink chain, its file, its own
    /// `PT_INTERP` and its companions (its libraries are already part of the root's closure).
    fn add_object(&mut self, path: &Path, reason: &str) -> Result<(), ClosureError> {
        let excluded_as_given = self.is_excluded(path);
        let (canon, links) = resolve_path(self.fs, path).map_err(unreadable(path))?;
        if !(excluded_as_given || self.is_excluded(&canon)) {
            for (link, _) in &links {
                self.insert(link, Kind::Symlink, reason);
            }
            self.insert(&canon, Kind::File, reason);
        }
        let info = self.info(&canon)?;
        if let Some(interp) = &info.interpreter {
            let interp = PathBuf::from(interp);
            if self.fs.exists(&interp) {
                let why = format!("interpreter of {}", canon.display());
                self.add_inner(&interp, &why, false)?;
            }
        }
        self.add_companions(&canon)
    }

    fn add_companions(&mut self, canon: &Path) -> Result<(), ClosureError> {
        let name = canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for c in DLOPEN_COMPANIONS {
            if name.starts_with(c.file_name_prefix) {
                if let Some(dir) = canon.parent() {
                    let p = dir.join(c.relative_path);
                    if self.fs.exists(&p) {
                        self.add_inner(&p, c.reason, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn ld_so_conf_trap(&mut self, l: &Loaded, header: &Header) {
        let Some(dir) = l.path.parent() else { return };
        let canon_dir = self.canonical_lenient(dir);
        let system: Vec<PathBuf> = system_dirs(header)
            .iter()
            .map(|d| self.canonical_lenient(d))
            .collect();
        if system.contains(&canon_dir) {
            return;
        }
        if let Some(first) = system.first() {
            let link = first.join(&l.needed_as);
            if !self.closure.entries.contains_key(&link) {
                self.closure
                    .extra_links
                    .entry(link)
                    .or_insert_with(|| l.path.clone());
            }
        }
    }

    fn canonical_lenient(&self, path: &Path) -> PathBuf {
        resolve_path(self.fs, path)
            .map(|(c, _)| c)
            .unwrap_or_else(|_| path.to_path_buf())
    }

    fn info(&mut self, canon: &Path) -> Result<Arc<ElfInfo>, ClosureError> {
        if let Some(i) = self.infos.get(canon) {
            return Ok(i.clone());
        }
        let bytes = self.fs.read(canon).map_err(unreadable(canon))?;
        let info = Arc::new(
            ElfInfo::parse(&bytes).map_err(|message| ClosureError::BadElf {
                path: canon.to_path_buf(),
                message,
            })?,
        );
        self.infos.insert(canon.to_path_buf(), info.clone());
        Ok(info)
    }

    fn header(&mut self, canon: &Path) -> Option<Header> {
        if let Some(h) = self.headers.get(canon) {
            return *h;
        }
        let h = self
            .fs
            .read_head(canon, 64)
            .ok()
            .and_then(|b| Header::parse(&b));
        self.headers.insert(canon.to_path_buf(), h);
        h
    }

    /// The canonical path of `candidate` when it is a loadable ELF file for `want`.
    fn try_candidate(&mut self, candidate: &Path, want: &Header) -> Option<PathBuf> {
        let (canon, _) = resolve_path(self.fs, candidate).ok()?;
        if self.fs.lstat(&canon).ok()?.kind != Kind::File {
            return None;
        }
        let h = self.header(&canon)?;
        want.compatible(&h).then_some(canon)
    }

    fn search(&mut self, name: &str, dirs: &[(PathBuf, How)], want: &Header) -> Option<Found> {
        let key: SearchKey = (name.to_string(), dirs.to_vec(), *want);
        if let Some(r) = self.searches.get(&key) {
            return r.clone();
        }
        let mut result = None;
        for (dir, how) in dirs {
            let cand = dir.join(name);
            if let Some(canon) = self.try_candidate(&cand, want) {
                result = Some((cand, canon, *how));
                break;
            }
        }
        self.searches.insert(key, result.clone());
        result
    }

    fn flavor_of(&self, info: &ElfInfo) -> Flavor {
        let h = &info.header;
        let interp = info.interpreter.clone().or_else(|| {
            self.interpreters
                .get(&(h.is_64, h.little_endian, h.machine))
                .cloned()
        });
        match interp {
            Some(i) if i.contains("ld-musl") => {
                let arch = i
                    .rsplit('/')
                    .next()
                    .and_then(|f| f.strip_prefix("ld-musl-"))
                    .and_then(|f| f.split(".so").next())
                    .map(str::to_string)
                    .or_else(|| h.musl_arch().map(str::to_string))
                    .unwrap_or_default();
                Flavor::Musl {
                    interp: PathBuf::from(i),
                    arch,
                }
            }
            // A glibc root without PT_INTERP (a NIF) gets the loader through libc's DT_NEEDED.
            Some(_) => Flavor::Glibc {
                interp: info.interpreter.as_ref().map(PathBuf::from),
            },
            None => match h.musl_arch() {
                Some(arch) if info.needed.iter().any(|n| n == "libc.so") => Flavor::Musl {
                    interp: PathBuf::from(format!("/lib/ld-musl-{arch}.so.1")),
                    arch: arch.to_string(),
                },
                _ => Flavor::Glibc { interp: None },
            },
        }
    }

    fn ld_so_conf_dirs(&mut self) -> Vec<PathBuf> {
        if let Some(d) = &self.ld_so_conf {
            return d.clone();
        }
        let mut dirs = Vec::new();
        let mut seen = HashSet::new();
        parse_ld_so_conf(self.fs, Path::new("/etc/ld.so.conf"), &mut dirs, &mut seen);
        self.ld_so_conf = Some(dirs.clone());
        dirs
    }

    fn search_dirs(&mut self, flavor: &Flavor, objs: &[Obj], idx: usize) -> Vec<(PathBuf, How)> {
        let mut dirs = Vec::new();
        let loader = &objs[idx];
        match flavor {
            Flavor::Glibc { .. } => {
                if loader.info.runpath.is_none() {
                    let mut cur = Some(idx);
                    while let Some(i) = cur {
                        let o = &objs[i];
                        if o.info.runpath.is_none() {
                            for d in expand_dirs(&o.info.rpath, &o.origin) {
                                dirs.push((d, How::Rpath));
                            }
                        }
                        cur = o.loaded.loaded_by;
                    }
                }
                if let Some(rp) = &loader.info.runpath {
                    for d in expand_dirs(rp, &loader.origin) {
                        dirs.push((d, How::Runpath));
                    }
                }
                for d in self.ld_so_conf_dirs() {
                    dirs.push((d, How::LdSoConf));
                }
                for d in system_dirs(&objs[0].info.header) {
                    dirs.push((d, How::SystemDir));
                }
            }
            Flavor::Musl { interp, arch } => {
                let mut cur = Some(idx);
                while let Some(i) = cur {
                    let o = &objs[i];
                    let list = o.info.runpath.as_ref().unwrap_or(&o.info.rpath);
                    for d in expand_dirs(list, &o.origin) {
                        dirs.push((d, How::MuslRpath));
                    }
                    cur = o.loaded.loaded_by;
                }
                let file = musl_path_file(interp, arch);
                let text = match self.fs.read(&file) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(_) => "/lib:/usr/local/lib:/usr/lib".to_string(),
                };
                for d in text.split([':', '\n']) {
                    let d = d.trim();
                    if d.starts_with('/') {
                        dirs.push((PathBuf::from(d), How::MuslPath));
                    }
                }
            }
        }
        dirs
    }

    /// Simulate the loader for `elf` as the root.
    fn load_objects(&mut self, elf: &Path) -> Result<Vec<Obj>, ClosureError> {
        let (canon, _) = resolve_path(self.fs, elf).map_err(unreadable(elf))?;
        let info = self.info(&canon)?;
        let header = info.header;
        if let Some(i) = &info.interpreter {
            self.interpreters
                .entry((header.is_64, header.little_endian, header.machine))
                .or_insert_with(|| i.clone());
        }
        let flavor = self.flavor_of(&info);
        let musl = matches!(flavor, Flavor::Musl { .. });
        let mut names: HashSet<String> = HashSet::new();
        let mut by_canon: HashMap<PathBuf, usize> = HashMap::new();
        if let Some(s) = &info.soname {
            names.insert(s.clone());
        }
        by_canon.insert(canon.clone(), 0);
        let origin = canon.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut objs = vec![Obj {
            loaded: Loaded {
                path: elf.to_path_buf(),
                canonical: canon.clone(),
                needed_as: String::new(),
                how: How::Root,
                loaded_by: None,
            },
            origin,
            info,
        }];

        // The interpreter is loaded before anything else (for a musl root without PT_INTERP,
        // the musl loader of earlier roots of the same machine, or the default one).
        let interp = match &flavor {
            Flavor::Glibc { interp } => interp.clone(),
            Flavor::Musl { interp, .. } => Some(interp.clone()),
        };
        // A missing object does not stop the walk: the rest is still explored (so one pass over
        // a lazily fetched filesystem asks for everything it can reach), and the first problem
        // is returned at the end.
        let mut first_err: Option<ClosureError> = None;
        let mut interp_idx = None;
        if let Some(ip) = interp {
            match resolve_path(self.fs, &ip) {
                Ok((ic, _)) => {
                    let iinfo = self.info(&ic)?;
                    names.insert(ip.to_string_lossy().into_owned());
                    if let Some(s) = &iinfo.soname {
                        names.insert(s.clone());
                    }
                    if !by_canon.contains_key(&ic) {
                        by_canon.insert(ic.clone(), objs.len());
                        interp_idx = Some(objs.len());
                        objs.push(Obj {
                            loaded: Loaded {
                                path: ip.clone(),
                                canonical: ic,
                                needed_as: String::new(),
                                how: How::Interpreter,
                                loaded_by: None,
                            },
                            origin: ip.parent().unwrap_or(Path::new("/")).to_path_buf(),
                            info: iinfo,
                        });
                    }
                }
                Err(_) if objs[0].info.interpreter.is_some() || musl => {
                    first_err.get_or_insert(ClosureError::MissingInterpreter {
                        interpreter: ip,
                        needed_by: elf.to_path_buf(),
                    });
                }
                Err(_) => {}
            }
        }

        let mut i = 0;
        while i < objs.len() {
            let needed = objs[i].info.needed.clone();
            for name in needed {
                if names.contains(&name) {
                    continue;
                }
                if musl && musl_reserved(&name) {
                    if interp_idx.is_none() {
                        first_err.get_or_insert(ClosureError::NotFound {
                            soname: name,
                            needed_by: objs[i].loaded.path.clone(),
                            searched: vec![],
                        });
                    }
                    continue;
                }
                let (found, canonical, how) = if name.contains('/') {
                    let p = PathBuf::from(&name);
                    let hit = if p.is_absolute() {
                        self.try_candidate(&p, &header)
                    } else {
                        None
                    };
                    match hit {
                        Some(c) => (p, c, How::Path),
                        None => {
                            first_err.get_or_insert(ClosureError::NotFound {
                                soname: name,
                                needed_by: objs[i].loaded.path.clone(),
                                searched: vec![p],
                            });
                            continue;
                        }
                    }
                } else {
                    let dirs = self.search_dirs(&flavor, &objs, i);
                    match self.search(&name, &dirs, &header) {
                        Some(f) => f,
                        None => {
                            first_err.get_or_insert(ClosureError::NotFound {
                                soname: name,
                                needed_by: objs[i].loaded.path.clone(),
                                searched: dirs.into_iter().map(|(d, _)| d).collect(),
                            });
                            continue;
                        }
                    }
                };
                names.insert(name.clone());
                if by_canon.contains_key(&canonical) {
                    continue;
                }
                let info = self.info(&canonical)?;
                if let Some(s) = &info.soname {
                    names.insert(s.clone());
                }
                by_canon.insert(canonical.clone(), objs.len());
                let origin = found.parent().unwrap_or(Path::new("/")).to_path_buf();
                objs.push(Obj {
                    loaded: Loaded {
                        path: found,
                        canonical,
                        needed_as: name,
                        how,
                        loaded_by: Some(i),
                    },
                    origin,
                    info,
                });
            }
            i += 1;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(objs),
        }
    }
}

/// musl's names provided by the loader itself (`lib` + one of these + `.`).
fn musl_reserved(name: &str) -> bool {
    const RESERVED: &[&str] = &["c", "pthread", "rt", "m", "dl", "util", "xnet"];
    name.strip_prefix("lib").is_some_and(|rest| {
        RESERVED.iter().any(|r| {
            rest.strip_prefix(r)
                .is_some_and(|after| after.starts_with('.'))
        })
    })
}

/// `<prefix>/etc/ld-musl-<arch>.path`, where prefix is the interpreter's path without its last
/// two components (`/lib/ld-musl-x86_64.so.1` -> `/etc/ld-musl-x86_64.path`).
fn musl_path_file(interp: &Path, arch: &str) -> PathBuf {
    let prefix = interp
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    prefix.join(format!("etc/ld-musl-{arch}.path"))
}

/// glibc's default directories for objects of `header` (see the module docs).
pub fn system_dirs(header: &Header) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(t) = header.multiarch_triple() {
        v.push(PathBuf::from("/lib").join(t));
        v.push(PathBuf::from("/usr/lib").join(t));
    }
    v.push(PathBuf::from("/lib"));
    v.push(PathBuf::from("/usr/lib"));
    if header.is_64 {
        v.push(PathBuf::from("/lib64"));
        v.push(PathBuf::from("/usr/lib64"));
    } else {
        v.push(PathBuf::from("/lib32"));
        v.push(PathBuf::from("/usr/lib32"));
    }
    v
}

/// Expand `$ORIGIN`/`${ORIGIN}` in search-path entries; skip empty, relative and other-token
/// entries.
fn expand_dirs(entries: &[String], origin: &Path) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    let mut out = Vec::new();
    for e in entries {
        if e.is_empty() {
            continue;
        }
        let mut s = String::new();
        let mut rest = e.as_str();
        let mut ok = true;
        while let Some(pos) = rest.find('$') {
            s.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(r) = after.strip_prefix("{ORIGIN}") {
                s.push_str(&origin);
                rest = r;
            } else if let Some(r) = after
                .strip_prefix("ORIGIN")
                .filter(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
            {
                s.push_str(&origin);
                rest = r;
            } else {
                ok = false; // $LIB, $PLATFORM and unknown tokens: unsupported
                break;
            }
        }
        if !ok {
            continue;
        }
        s.push_str(rest);
        let trimmed = s.trim_end_matches('/');
        let s = if trimmed.is_empty() { "/" } else { trimmed };
        if s.starts_with('/') {
            out.push(PathBuf::from(s));
        }
    }
    out
}

/// Directories of an `ld.so.conf` file and the files it `include`s, in order, like `ldconfig`.
fn parse_ld_so_conf(fs: &dyn Fs, file: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) {
    if !seen.insert(file.to_path_buf()) {
        return;
    }
    let Ok(bytes) = fs.read(file) else { return };
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        if word == "include" {
            let base = file.parent().unwrap_or(Path::new("/"));
            for pat in line.split_whitespace().skip(1) {
                for f in glob(fs, &base.join(pat)) {
                    parse_ld_so_conf(fs, &f, out, seen);
                }
            }
        } else if word.eq_ignore_ascii_case("hwcap") {
            continue;
        } else {
            // `dir=TYPE` (old libc5 syntax) names `dir`.
            let dir = line.split('=').next().unwrap_or("").trim();
            let dir = dir.trim_end_matches('/');
            let dir = PathBuf::from(if dir.is_empty() { "/" } else { dir });
            if dir.is_absolute() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
}

/// Paths of `fs` matching the absolute pattern (`*`, `?`, `[...]` per component), sorted.
fn glob(fs: &dyn Fs, pattern: &Path) -> Vec<PathBuf> {
    let mut cur = vec![PathBuf::from("/")];
    for comp in pattern.components() {
        let std::path::Component::Normal(c) = comp else {
            if comp == std::path::Component::ParentDir {
                cur = cur.into_iter().map(|p| p.join("..")).collect();
            }
            continue;
        };
        let c = c.to_string_lossy();
        if !c.contains(['*', '?', '[']) {
            cur = cur.into_iter().map(|p| p.join(&*c)).collect();
            continue;
        }
        let mut next = Vec::new();
        for base in cur {
            let Ok(names) = fs.read_dir(&base) else {
                continue;
            };
            for n in names {
                let n = n.to_string_lossy().into_owned();
                if n.starts_with('.') && !c.starts_with('.') {
                    continue;
                }
                if wildcard_match(c.as_bytes(), n.as_bytes()) {
                    next.push(base.join(n));
                }
            }
        }
        cur = next;
    }
    let mut found: Vec<PathBuf> = cur.into_iter().filter(|p| fs.exists(p)).collect();
    found.sort();
    found
}

/// Shell-style matching of one name against one pattern component.
fn wildcard_match(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|k| wildcard_match(&pat[1..], &name[k..])),
        Some(b'?') => !name.is_empty() && wildcard_match(&pat[1..], &name[1..]),
        Some(b'[') => {
            let Some(close) = pat.iter().skip(2).position(|&b| b == b']').map(|p| p + 2) else {
                return name.first() == Some(&b'[') && wildcard_match(&pat[1..], &name[1..]);
            };
            let Some(&ch) = name.first() else {
                return false;
            };
            let mut set = &pat[1..close];
            let negate = matches!(set.first(), Some(b'!') | Some(b'^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut k = 0;
            while k < set.len() {
                if k + 2 < set.len() && set[k + 1] == b'-' {
                    hit |= set[k] <= ch && ch <= set[k + 2];
                    k += 3;
                } else {
                    hit |= set[k] == ch;
                    k += 1;
                }
            }
            hit != negate && wildcard_match(&pat[close + 1..], &name[1..])
        }
        Some(&b) => name.first() == Some(&b) && wildcard_match(&pat[1..], &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*.conf", b"libc.conf"));
        assert!(!wildcard_match(b"*.conf", b"libc.conf~"));
        assert!(wildcard_match(b"a?[0-9x]*", b"ab7"));
        assert!(wildcard_match(b"[!a]b", b"cb"));
        assert!(!wildcard_match(b"[!a]b", b"ab"));
    }

    #[test]
    fn origin_expansion() {
        let e = |v: &[&str]| {
            expand_dirs(
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                Path::new("/app/bin"),
            )
        };
        assert_eq!(
            e(&[
                "$ORIGIN/../lib",
                "${ORIGIN}",
                "",
                "rel",
                "$LIB/x",
                "/opt/x/",
                "$ORIGINX"
            ]),
            vec![
                PathBuf::from("/app/bin/../lib"),
                PathBuf::from("/app/bin"),
                PathBuf::from("/opt/x"),
            ]
        );
    }

    #[test]
    fn musl_reserved_names() {
        assert!(musl_reserved("libc.so"));
        assert!(musl_reserved("libpthread.so.0"));
        assert!(!musl_reserved("libcrypto.so.3"));
        assert!(!musl_reserved("libz.so.1"));
        assert_eq!(
            musl_path_file(Path::new("/lib/ld-musl-x86_64.so.1"), "x86_64"),
            PathBuf::from("/etc/ld-musl-x86_64.path")
        );
    }
}
