//! Can a release run on a base image? Its ELF files' libraries and symbol versions, checked
//! against the base's filesystem.
//!
//! The release lives on the build machine; the libraries it loads will come from the base image.
//! [`ReleaseOnBase`] is the filesystem the check reads: the release directory from the build
//! machine, everything else from the base image's unpacked layers. Over it, every ELF file of the
//! release is loaded the way `ld.so` would load it ([`crate::closure::Resolver::load_order`]);
//! then each version the file needs (`.gnu.version_r`, e.g. `GLIBC_2.34` from `libc.so.6`) is
//! looked up in the versions the loaded library defines (`.gnu.version_d`).
//!
//! The result is a list of [`Problem`]s, most fundamental first: a missing program interpreter
//! (a glibc release on a musl base, or the reverse), a glibc older than the one the release was
//! built against, missing libraries, other missing versions (`GLIBCXX_…`, `OPENSSL_…`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::closure::{ClosureError, Loaded, Resolver};
use crate::elf::find_elf_files;
use crate::fs::{resolve_path, Fs, Meta};

/// `vna_flags` bit of a weak version reference: the object loads without it.
const VER_FLG_WEAK: u16 = 0x2;
/// `vd_flags` bit of the version definition that names the file itself.
const VER_FLG_BASE: u16 = 0x1;

/// The release directory read from the build machine, every other path from a base image.
///
/// Strict ancestors of the release directory are read from the build machine too, so paths of
/// release files resolve; the root directory is the base's.
///
/// For another platform ([`crate::foreign`]), the base is an image of that platform and some
/// release files are *overridden* ([`ReleaseOnBase::with_overrides`]): each is read from a path
/// of the base instead (an ELF file of ERTS or of an OTP application, from that platform's OTP
/// installation), or hidden (it does not exist, nor appear in its directory).
pub struct ReleaseOnBase<'a> {
    release: PathBuf,
    host: &'a dyn Fs,
    base: &'a dyn Fs,
    overrides: BTreeMap<PathBuf, Option<PathBuf>>,
}

impl<'a> ReleaseOnBase<'a> {
    /// The union of `release_dir` in `host` and everything else in `base`. The release directory
    /// is resolved in `host` first (symlinks in its path followed), so routing is by its canonical
    /// path; use [`ReleaseOnBase::release_dir`] for paths of release files.
    pub fn new(host: &'a dyn Fs, release_dir: &Path, base: &'a dyn Fs) -> io::Result<Self> {
        let (release, _) = resolve_path(host, release_dir)?;
        Ok(ReleaseOnBase {
            release,
            host,
            base,
            overrides: BTreeMap::new(),
        })
    }

    /// The union of `release_dir` in `host`, already canonical there, and everything else in
    /// `base`.
    pub(crate) fn canonical(host: &'a dyn Fs, release_dir: &Path, base: &'a dyn Fs) -> Self {
        ReleaseOnBase {
            release: release_dir.to_path_buf(),
            host,
            base,
            overrides: BTreeMap::new(),
        }
    }

    /// This union with release files overridden: a path (absolute, under the canonical
    /// [`ReleaseOnBase::release_dir`]) mapped to `Some(path in base)` is read from the base at
    /// that path (which must be a regular file there); mapped to `None` it is hidden.
    pub fn with_overrides(mut self, overrides: BTreeMap<PathBuf, Option<PathBuf>>) -> Self {
        self.overrides = overrides;
        self
    }

    /// The canonical release directory.
    pub fn release_dir(&self) -> &Path {
        &self.release
    }

    fn route(&self, path: &Path) -> &dyn Fs {
        let ancestor = self.release.starts_with(path) && path != Path::new("/");
        if path.starts_with(&self.release) || ancestor {
            self.host
        } else {
            self.base
        }
    }
}

/// Where an overridden path is read: the base's path, or nowhere.
enum Overridden<'p> {
    Base(&'p Path),
    Hidden,
}

impl ReleaseOnBase<'_> {
    fn overridden(&self, path: &Path) -> Option<Overridden<'_>> {
        self.overrides.get(path).map(|o| match o {
            Some(p) => Overridden::Base(p),
            None => Overridden::Hidden,
        })
    }
}

fn hidden(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} is left out for this platform", path.display()),
    )
}

impl Fs for ReleaseOnBase<'_> {
    fn lstat(&self, path: &Path) -> io::Result<Meta> {
        match self.overridden(path) {
            Some(Overridden::Base(p)) => self.base.lstat(p),
            Some(Overridden::Hidden) => Err(hidden(path)),
            None => self.route(path).lstat(path),
        }
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.overridden(path) {
            Some(Overridden::Base(p)) => self.base.read_link(p),
            Some(Overridden::Hidden) => Err(hidden(path)),
            None => self.route(path).read_link(path),
        }
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut names = self.route(path).read_dir(path)?;
        if !self.overrides.is_empty() {
            names.retain(|n| !matches!(self.overridden(&path.join(n)), Some(Overridden::Hidden)));
        }
        Ok(names)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        match self.overridden(path) {
            Some(Overridden::Base(p)) => self.base.open(p),
            Some(Overridden::Hidden) => Err(hidden(path)),
            None => self.route(path).open(path),
        }
    }
    fn hint(&self, path: &Path) {
        self.route(path).hint(path)
    }
}

/// One version an ELF file needs from a library (an entry of `.gnu.version_r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionNeed {
    /// The library, as named in `DT_NEEDED` (`libc.so.6`).
    pub file: String,
    /// The version (`GLIBC_2.34`).
    pub version: String,
    /// A weak reference: the object loads without it.
    pub weak: bool,
}

/// The versions `bytes` (a whole ELF file) needs, in file order.
pub fn version_needs(bytes: &[u8]) -> Result<Vec<VersionNeed>, String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            let file = elf.dynstrtab.get_at(need.vn_file).unwrap_or_default();
            for aux in need.iter() {
                if let Some(version) = elf.dynstrtab.get_at(aux.vna_name) {
                    out.push(VersionNeed {
                        file: file.to_string(),
                        version: version.to_string(),
                        weak: aux.vna_flags & VER_FLG_WEAK != 0,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The versions `bytes` (a whole ELF file) defines (`.gnu.version_d`), without the entry that
/// names the file itself.
pub fn version_defs(bytes: &[u8]) -> Result<Vec<String>, String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(verdef) = &elf.verdef {
        for def in verdef.iter() {
            if def.vd_flags & VER_FLG_BASE != 0 {
                continue;
            }
            if let Some(aux) = def.iter().next() {
                if let Some(name) = elf.dynstrtab.get_at(aux.vda_name) {
                    out.push(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// A version name split into its family and its numbers, for ordering.
///
/// ```
/// use image_core::glibc::version_key;
/// assert_eq!(version_key("GLIBC_2.2.5"), Some(("GLIBC", vec![2, 2, 5])));
/// assert_eq!(version_key("GLIBCXX_3.4.29"), Some(("GLIBCXX", vec![3, 4, 29])));
/// assert!(version_key("GLIBC_2.34") > version_key("GLIBC_2.4"));
/// assert_eq!(version_key("GLIBC_PRIVATE"), None);
/// ```
pub fn version_key(name: &str) -> Option<(&str, Vec<u32>)> {
    let (family, numbers) = name.rsplit_once('_')?;
    let numbers: Option<Vec<u32>> = numbers.split('.').map(|n| n.parse().ok()).collect();
    Some((family, numbers?))
}

/// The highest `GLIBC_x.y` among `versions`.
///
/// ```
/// use image_core::glibc::highest_glibc;
/// let v = ["GLIBC_2.2.5", "GLIBC_2.31", "GLIBC_2.4", "GLIBC_PRIVATE", "GLIBCXX_3.4.30"];
/// assert_eq!(highest_glibc(v.iter().copied()), Some("GLIBC_2.31"));
/// ```
pub fn highest_glibc<'s>(versions: impl IntoIterator<Item = &'s str>) -> Option<&'s str> {
    versions
        .into_iter()
        .filter_map(|v| match version_key(v) {
            Some(("GLIBC", n)) => Some((n, v)),
            _ => None,
        })
        .max()
        .map(|(_, v)| v)
}

/// The release of a glibc library from its banner (`… stable release version 2.31.`); `None` for
/// other files. glibc adds no version node in some releases (2.31 defines up to `GLIBC_2.30`),
/// so this says more to a person than the highest version.
///
/// ```
/// use image_core::glibc::glibc_release;
/// assert_eq!(glibc_release(b"\0GNU C Library (Debian GLIBC 2.31-13) stable release version 2.31.\n").as_deref(), Some("2.31"));
/// assert_eq!(glibc_release(b"nothing"), None);
/// ```
pub fn glibc_release(bytes: &[u8]) -> Option<String> {
    const MARK: &[u8] = b"release version ";
    let at = bytes.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let v: String = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|&b| b as char)
        .collect();
    let v = v.trim_end_matches('.').to_string();
    (!v.is_empty()).then_some(v)
}

/// Why a release cannot run on a base image. [`Problem::message`] says it to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The base image is for another platform.
    Platform {
        /// The base's `os/arch[/variant]`.
        base: String,
        /// The release's.
        release: String,
    },
    /// A program interpreter (`PT_INTERP`) is missing: the C libraries differ (glibc vs musl).
    MissingInterpreter {
        /// The interpreter path.
        interpreter: PathBuf,
        /// The release file that names it (relative to the release directory).
        needed_by: PathBuf,
        /// The base has musl's loader.
        base_is_musl: bool,
    },
    /// The base's glibc is older than the one the release was built against.
    OldGlibc {
        /// The highest glibc version the release needs and the base lacks.
        needed: String,
        /// A release file that needs it (relative to the release directory).
        used_by: PathBuf,
        /// How many other release files need it.
        others: usize,
        /// The highest version the base's glibc defines.
        provided: Option<String>,
        /// The base's glibc release (`2.31`), from the library's version banner.
        release: Option<String>,
        /// The base's system (`PRETTY_NAME` of its `os-release`).
        system: Option<String>,
    },
    /// A library the release loads is not in the base.
    MissingLibrary {
        /// The `DT_NEEDED` name.
        soname: String,
        /// Who needs it: a release file (relative) or a base library (absolute).
        needed_by: PathBuf,
        /// How many other release files miss it.
        others: usize,
        /// The package that provides it, `Debian: libssl3`.
        package: Option<String>,
    },
    /// A library of the base lacks a (non-glibc) version the release needs.
    MissingVersion {
        /// The library (`libstdc++.so.6`).
        library: String,
        /// The version (`GLIBCXX_3.4.30`).
        version: String,
        /// A release file that needs it.
        used_by: PathBuf,
        /// The highest version of the same family the base's library defines.
        provided: Option<String>,
    },
    /// Programs the release scripts call are missing from the base.
    MissingTools {
        /// The programs (`/bin/sh`, `awk`, ...).
        tools: Vec<String>,
        /// The `PATH` searched.
        path: String,
    },
}

/// Whose files a [`Problem`] is about, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A base image (`--base`), by reference.
    Base(&'a str),
    /// The image another platform's files come from (`--platform-image`, or a builder's
    /// variant for that platform).
    Platform {
        /// The image's reference.
        image: &'a str,
        /// The platform, `linux/arm64/v8`.
        platform: &'a str,
    },
}

impl Subject<'_> {
    /// `the base image X` or `the linux/arm64/v8 image X`.
    fn name(&self) -> String {
        match self {
            Subject::Base(base) => format!("the base image {base}"),
            Subject::Platform { image, platform } => format!("the {platform} image {image}"),
        }
    }

    /// For a platform image: how to give another (a base's messages say it their own way).
    fn another(&self, which: &str) -> String {
        match self {
            Subject::Base(_) => String::new(),
            Subject::Platform { platform, .. } => {
                format!("give {which} with --platform-image {platform}=IMAGE")
            }
        }
    }
}

impl Problem {
    /// The problem as a sentence about base image `base`, saying what to do.
    pub fn message(&self, base: &str) -> String {
        self.message_about(&Subject::Base(base))
    }

    /// The problem as a sentence about `subject`'s files, saying what to do.
    pub fn message_about(&self, subject: &Subject<'_>) -> String {
        let base = match subject {
            Subject::Base(base) => *base,
            Subject::Platform { .. } => return self.platform_message(subject),
        };
        match self {
            Problem::Platform { base: b, release } => format!(
                "the base image {base} is for {b} but the release is for {release}: use a {release} base image (or pick the platform: NAME@sha256:… of the right manifest)"
            ),
            Problem::MissingInterpreter {
                interpreter,
                needed_by,
                base_is_musl,
            } => {
                let why = if *base_is_musl {
                    ": the base uses musl (Alpine?) and the release was built against glibc; use a glibc-based base (Debian, Ubuntu) or no base"
                } else if interpreter.to_string_lossy().contains("ld-musl") {
                    ": the release was built against musl (Alpine) and the base uses glibc; use a musl-based base of the same Alpine version, or no base"
                } else {
                    ": use a base with the same C library as the system that built the release, or no base"
                };
                format!(
                    "the base image {base} has no {}, the program interpreter {} needs{why}",
                    interpreter.display(),
                    needed_by.display()
                )
            }
            Problem::OldGlibc {
                needed,
                used_by,
                others,
                provided,
                release,
                system,
            } => {
                let provided = match provided {
                    Some(p) => format!("provides up to {p}"),
                    None => "defines no GLIBC_ versions".to_string(),
                };
                let about: Vec<String> = release
                    .iter()
                    .map(|r| format!("glibc {r}"))
                    .chain(system.iter().cloned())
                    .collect();
                let system = if about.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", about.join(", "))
                };
                format!(
                    "the release needs {needed} ({}{} {} it) but the glibc of the base image {base} {provided}{system}: use a base at least as new as the system that built the release, or no base",
                    used_by.display(),
                    and_others(*others),
                    if *others == 0 { "uses" } else { "use" }
                )
            }
            Problem::MissingLibrary {
                soname,
                needed_by,
                others,
                package,
            } => {
                let install = match package {
                    Some(p) => format!("install it in the base ({p})"),
                    None => "install the package that provides it in the base".to_string(),
                };
                format!(
                    "the base image {base} has no {soname}, needed by {}{}: {install} or use no base",
                    needed_by.display(),
                    and_others(*others)
                )
            }
            Problem::MissingVersion {
                library,
                version,
                used_by,
                provided,
            } => {
                let provided = match provided {
                    Some(p) => format!("provides up to {p}"),
                    None => "lacks it".to_string(),
                };
                format!(
                    "{} needs {version} from {library}, and the {library} of the base image {base} {provided}: use a base at least as new as the system that built the release, or no base",
                    used_by.display()
                )
            }
            Problem::MissingTools { tools, path } => format!(
                "the base image {base} has no {} (looked in {path}); the release scripts need them: install them in the base (Debian: coreutils, mawk, sed, grep) or use no base",
                tools.join(", ")
            ),
        }
    }

    /// [`Problem::message_about`] an image another platform's files come from: the files
    /// that need something are that image's own (its ERTS, its OTP's native files), so the
    /// image is incomplete or broken, and the way out is another image, or installing the
    /// missing part in it.
    fn platform_message(&self, subject: &Subject<'_>) -> String {
        let who = subject.name();
        let another = subject.another("another");
        match self {
            Problem::Platform { base: b, release } => format!(
                "{who} is for {b}, not {release}: {}",
                subject.another(&format!("a {release} image"))
            ),
            Problem::MissingInterpreter {
                interpreter,
                needed_by,
                ..
            } => format!(
                "{who} has no {}, the program interpreter {} needs: {}",
                interpreter.display(),
                needed_by.display(),
                subject.another("an image with the C library its Erlang was built against")
            ),
            Problem::OldGlibc {
                needed,
                used_by,
                others,
                provided,
                ..
            } => format!(
                "{}{} {} {needed} but the glibc of {who} {}: {}",
                used_by.display(),
                and_others(*others),
                if *others == 0 { "needs" } else { "need" },
                provided
                    .as_deref()
                    .map_or("defines no GLIBC_ versions".to_string(), |p| format!(
                        "provides up to {p}"
                    )),
                subject.another("an image whose glibc matches its Erlang")
            ),
            Problem::MissingLibrary {
                soname,
                needed_by,
                others,
                package,
            } => {
                let install = match package {
                    Some(p) => format!("install it in that image ({p})"),
                    None => "install the package that provides it in that image".to_string(),
                };
                format!(
                    "{who} has no {soname}, needed by {}{}: {install}, or {another}",
                    needed_by.display(),
                    and_others(*others)
                )
            }
            Problem::MissingVersion {
                library,
                version,
                used_by,
                provided,
            } => format!(
                "{} needs {version} from {library}, and the {library} of {who} {}: {}",
                used_by.display(),
                provided
                    .as_deref()
                    .map_or("lacks it".to_string(), |p| format!("provides up to {p}")),
                subject.another("an image whose libraries match its Erlang")
            ),
            Problem::MissingTools { tools, path } => format!(
                "{who} has no {} (looked in {path}); the release scripts need them: install them in that image (Debian: coreutils, mawk, sed, grep), or {another}",
                tools.join(", ")
            ),
        }
    }
}

fn and_others(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => " and 1 other file".to_string(),
        n => format!(" and {n} other files"),
    }
}

/// A base image that cannot run the release, and every reason found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Incompatible {
    /// The base image reference, for messages.
    pub base: String,
    /// The problems, most fundamental first (never empty).
    pub problems: Vec<Problem>,
}

impl Incompatible {
    fn message(&self) -> String {
        let mut parts = self.problems.iter().map(|p| p.message(&self.base));
        let first = parts.next().unwrap_or_default();
        let rest: Vec<String> = parts.collect();
        if rest.is_empty() {
            first
        } else {
            format!("{first}; also, {}", rest.join("; "))
        }
    }
}

/// The Debian and Alpine packages of libraries an OTP release commonly links.
const PACKAGES: &[(&str, &str, &str)] = &[
    ("libcrypto.so.3", "libssl3", "libcrypto3"),
    ("libssl.so.3", "libssl3", "libssl3"),
    ("libcrypto.so.1.1", "libssl1.1", "libcrypto1.1"),
    ("libssl.so.1.1", "libssl1.1", "libssl1.1"),
    ("libtinfo.so.6", "libtinfo6", "ncurses-libs"),
    ("libncursesw.so.6", "libncursesw6", "ncurses-libs"),
    ("libz.so.1", "zlib1g", "zlib"),
    ("libstdc++.so.6", "libstdc++6", "libstdc++"),
    ("libgcc_s.so.1", "libgcc-s1", "libgcc"),
    ("libsystemd.so.0", "libsystemd0", ""),
    ("libcap.so.2", "libcap2", "libcap2"),
    ("libgcrypt.so.20", "libgcrypt20", "libgcrypt"),
    ("libgpg-error.so.0", "libgpg-error0", "libgpg-error"),
    ("liblzma.so.5", "liblzma5", "xz-libs"),
    ("libzstd.so.1", "libzstd1", "zstd-libs"),
    ("liblz4.so.1", "liblz4-1", "lz4-libs"),
    ("libsctp.so.1", "libsctp1", "lksctp-tools"),
    ("libodbc.so.2", "libodbc2", "unixodbc"),
];

/// The package providing `soname`, as `Debian: pkg` (or `Alpine: pkg` on a musl base).
///
/// ```
/// use image_core::glibc::package_hint;
/// assert_eq!(package_hint("libcrypto.so.3", false).as_deref(), Some("Debian: libssl3"));
/// assert_eq!(package_hint("libz.so.1", true).as_deref(), Some("Alpine: zlib"));
/// assert_eq!(package_hint("libfoo.so.9", false), None);
/// ```
pub fn package_hint(soname: &str, musl: bool) -> Option<String> {
    let (_, debian, alpine) = PACKAGES.iter().find(|(s, _, _)| *s == soname)?;
    match musl {
        false => Some(format!("Debian: {debian}")),
        true if !alpine.is_empty() => Some(format!("Alpine: {alpine}")),
        true => None,
    }
}

/// `true` when `fs` is a musl system: musl's loader (`/lib/ld-musl-*.so.1`) and no glibc loader
/// (`ld-linux*` in `/lib` or `/lib64`; a glibc system may have musl installed beside).
pub fn is_musl_system(fs: &dyn Fs) -> bool {
    let has = |dir: &str, prefix: &str| {
        fs.read_dir(Path::new(dir)).is_ok_and(|names| {
            names
                .iter()
                .any(|n| n.to_string_lossy().starts_with(prefix))
        })
    };
    has("/lib", "ld-musl-") && !has("/lib", "ld-linux") && !has("/lib64", "ld-linux")
}

/// `PRETTY_NAME` of `/etc/os-release` (or `/usr/lib/os-release`) in `fs`.
pub fn system_name(fs: &dyn Fs) -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| {
            let (canon, _) = resolve_path(fs, Path::new(p)).ok()?;
            fs.read(&canon).ok()
        })
        .and_then(|bytes| {
            String::from_utf8_lossy(&bytes).lines().find_map(|l| {
                let v = l.strip_prefix("PRETTY_NAME=")?;
                Some(v.trim().trim_matches('"').to_string())
            })
        })
        .filter(|s| !s.is_empty())
}

/// Check every ELF file of the release in `fs` against the base image: its libraries, their
/// program interpreter and the symbol versions it needs. Returns the problems found, most
/// fundamental first; an empty list means the release's native code loads on the base.
///
/// Errors are files that cannot be read (not incompatibilities).
pub fn check_release(fs: &ReleaseOnBase<'_>) -> Result<Vec<Problem>, ClosureError> {
    let release = fs.release_dir().to_path_buf();
    let rel = |p: &Path| -> PathBuf {
        p.strip_prefix(&release)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let elfs = find_elf_files(fs, &release).map_err(|source| ClosureError::Unreadable {
        path: release.clone(),
        source,
    })?;
    let musl = is_musl_system(fs);
    let mut resolver = Resolver::new(fs, vec![release.clone()]);
    let mut interpreters: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    // soname -> (first needer, other release files missing it)
    let mut missing: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    let mut loaded: Vec<(PathBuf, Vec<Loaded>)> = Vec::new();
    for elf in &elfs {
        match resolver.load_order(elf) {
            Ok(objs) => loaded.push((elf.clone(), objs)),
            Err(ClosureError::MissingInterpreter { interpreter, .. }) => {
                interpreters.entry(interpreter).or_insert_with(|| rel(elf));
            }
            Err(ClosureError::NotFound {
                soname, needed_by, ..
            }) => {
                let who = if needed_by.starts_with(&release) {
                    rel(&needed_by)
                } else {
                    needed_by
                };
                missing
                    .entry(soname)
                    .and_modify(|(_, n)| *n += 1)
                    .or_insert((who, 0));
            }
            // Not a loadable object (a truncated or foreign ELF file): the loader never sees it.
            Err(ClosureError::BadElf { path, .. }) if path == *elf => {}
            Err(e) => return Err(e),
        }
    }

    // Symbol versions, checked against the library each file's loader actually picks.
    let mut defs: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut old_glibc: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    let mut other: BTreeMap<(String, String), (PathBuf, PathBuf)> = BTreeMap::new();
    for (elf, objs) in &loaded {
        let bytes = fs.read(elf).map_err(|source| ClosureError::Unreadable {
            path: elf.clone(),
            source,
        })?;
        let Ok(needs) = version_needs(&bytes) else {
            continue;
        };
        let providers = providers(objs);
        for need in needs.iter().filter(|n| !n.weak) {
            let Some(provider) = providers.get(&need.file) else {
                continue;
            };
            if !defs.contains_key(provider) {
                let bytes = fs
                    .read(provider)
                    .map_err(|source| ClosureError::Unreadable {
                        path: provider.clone(),
                        source,
                    })?;
                defs.insert(provider.clone(), version_defs(&bytes).unwrap_or_default());
            }
            if defs[provider].contains(&need.version) {
                continue;
            }
            match version_key(&need.version) {
                Some(("GLIBC", _)) => {
                    old_glibc.push((need.version.clone(), rel(elf), provider.clone()))
                }
                _ => {
                    other
                        .entry((need.file.clone(), need.version.clone()))
                        .or_insert((rel(elf), provider.clone()));
                }
            }
        }
    }

    let mut problems = Vec::new();
    for (interpreter, needed_by) in interpreters {
        problems.push(Problem::MissingInterpreter {
            interpreter,
            needed_by,
            base_is_musl: musl,
        });
    }
    if let Some(needed) = highest_glibc(old_glibc.iter().map(|(v, _, _)| v.as_str())) {
        let needed = needed.to_string();
        let users: Vec<&(String, PathBuf, PathBuf)> =
            old_glibc.iter().filter(|(v, _, _)| *v == needed).collect();
        let mut files: Vec<&PathBuf> = users.iter().map(|(_, f, _)| f).collect();
        files.sort();
        files.dedup();
        let used_by = files
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == "beam.smp"))
            .or(files.first())
            .map(|f| (*f).clone())
            .unwrap_or_default();
        // The base's glibc as a whole: its highest version over all of its libraries read here
        // (libm may stop at GLIBC_2.35 where libc goes on to GLIBC_2.36), and its release from
        // libc's banner.
        let provider = &users[0].2;
        let libc = defs
            .keys()
            .find(|p| p.file_name().is_some_and(|n| n == "libc.so.6"))
            .unwrap_or(provider);
        problems.push(Problem::OldGlibc {
            needed,
            used_by,
            others: files.len().saturating_sub(1),
            provided: highest_glibc(defs.values().flatten().map(String::as_str))
                .map(str::to_string),
            release: fs.read(libc).ok().and_then(|b| glibc_release(&b)),
            system: system_name(fs),
        });
    }
    for (soname, (needed_by, others)) in missing {
        let package = package_hint(&soname, musl);
        problems.push(Problem::MissingLibrary {
            soname,
            needed_by,
            others,
            package,
        });
    }
    for ((library, version), (used_by, provider)) in other {
        let family = version_key(&version).map(|(f, _)| f.to_string());
        let provided = defs[&provider]
            .iter()
            .filter_map(|d| {
                let (f, n) = version_key(d)?;
                (Some(f) == family.as_deref()).then_some((n, d))
            })
            .max()
            .map(|(_, d)| d.clone());
        problems.push(Problem::MissingVersion {
            library,
            version,
            used_by,
            provided,
        });
    }
    Ok(problems)
}

/// The file each name (`DT_NEEDED` name, file name as opened, canonical file name) of a load
/// order resolves to. `.gnu.version_r` names a library the way `DT_NEEDED` does; the loader is
/// named by the file name of its `PT_INTERP` path.
fn providers(objs: &[Loaded]) -> HashMap<String, PathBuf> {
    let mut map = HashMap::new();
    for o in objs.iter().skip(1) {
        if !o.needed_as.is_empty() {
            map.entry(o.needed_as.clone())
                .or_insert_with(|| o.canonical.clone());
        }
        for p in [&o.path, &o.canonical] {
            if let Some(name) = p.file_name() {
                map.entry(name.to_string_lossy().into_owned())
                    .or_insert_with(|| o.canonical.clone());
            }
        }
    }
    map
}
