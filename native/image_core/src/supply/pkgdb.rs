//! The build environment's package database: which OS package each runtime file came from,
//! and the records that let vulnerability scanners see those packages in the image.
//!
//! # Reading
//!
//! [`PackageDb::read`] finds, through the [`Fs`] of the build environment:
//!
//! - **dpkg** (Debian, Ubuntu): `/var/lib/dpkg/status` (one deb822 paragraph per package; only
//!   packages whose files are on disk count: the third word of `Status` is not `not-installed`
//!   or `config-files`) and `/var/lib/dpkg/diversions`. A package's file list is
//!   `info/NAME.list`, or `info/NAME:ARCH.list` for `Multi-Arch: same` packages (dpkg's own
//!   rule). Lists are read only when owners are asked for, and only their lines whose file name
//!   is one of the files asked about are kept;
//! - **apk** (Alpine): `/lib/apk/db/installed` (or `/usr/lib/apk/db/installed`): blank-line
//!   separated records of `X:value` lines, `F:` a directory and `R:` a file in it.
//!
//! # Owners
//!
//! [`PackageDb::owners`] maps paths of the build environment (canonical parents, as the closure
//! gives them) to packages. Packages list a file under whichever spelling they shipped it: on a
//! merged-/usr system `libc6` lists `/lib/x86_64-linux-gnu/libc.so.6` while the closure finds
//! `/usr/lib/x86_64-linux-gnu/libc.so.6`. So a listed path owns a queried path when both have
//! the same file name and the listed path's directory resolves, in the build environment, to
//! the queried path's directory: every spelling that reaches the same file counts, whatever the
//! symlinks (`dpkg -S` itself does not follow them). dpkg diversions are applied: a diverted
//! path belongs to the diverting package if that package lists it, else to nobody; the
//! diverted-to path belongs to the other package that lists the original (`/bin/sh` is dash's
//! on Debian). Directories are never queried (a directory has many owners).
//!
//! # Records
//!
//! [`records`] renders what the image carries for its packages, limited to what scanners read:
//!
//! - dpkg: one `status.d/NAME` file per package the way distroless ships them (Trivy and Syft
//!   read `var/lib/dpkg/status.d/*`), with `Package`, `Status`, `Maintainer`, `Architecture`,
//!   `Multi-Arch`, `Source`, `Version` and the synopsis line of `Description`, in the order
//!   dpkg writes them. `Status` is copied
//!   (`install ok installed`): Trivy and Syft skip only `deinstall`/`purge`, and with it
//!   `dpkg-query --admindir` reads the records as a database, so they can be checked with
//!   Debian's own tool;
//! - apk: one `installed` file with the packages' records as apk wrote them (`V:` before `o:`,
//!   which Trivy relies on), their `F:`/`R:` lines kept only for files the image ships.
//!
//! Scanners also need to know the distribution: Trivy detects Debian only through
//! `/etc/debian_version` and Alpine through `/etc/alpine-release`, Syft and Grype read
//! `/etc/os-release`. [`DISTRO_FILES`] lists what the plan copies for them; [`Distro`] reads
//! os-release for the SBOM's purls.

use crate::fs::{resolve_path, Fs, Kind};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Files that tell scanners which distribution the image's packages belong to, copied from the
/// build environment when it has them (symlink chains kept: Debian's `/etc/os-release` is a
/// link to `../usr/lib/os-release`).
pub const DISTRO_FILES: &[&str] = &[
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/lsb-release",
    "/etc/alpine-release",
];

/// dpkg's database directory.
const DPKG_DIR: &str = "/var/lib/dpkg";
/// apk's installed database, where apk v2 keeps it and where usr-merged systems may.
const APK_DBS: &[&str] = &["/lib/apk/db/installed", "/usr/lib/apk/db/installed"];

/// Which package manager's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// Debian's dpkg.
    Dpkg,
    /// Alpine's apk.
    Apk,
}

/// One package of the build environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `Package` / `P:`.
    pub name: String,
    /// `Version` / `V:`.
    pub version: String,
    /// `Architecture` / `A:`.
    pub arch: String,
    /// The source package's name (`Source`, `o:`); `None` when it is the package's name.
    pub source: Option<String>,
    /// The source package's version, when it differs from `version` (a binNMU:
    /// `Source: bash (5.2.15-2)` for bash 5.2.15-2+b8).
    pub source_version: Option<String>,
    /// `Maintainer` / `m:`.
    pub maintainer: Option<String>,
    /// `Multi-Arch` (dpkg).
    pub multi_arch: Option<String>,
    /// `Status` (dpkg), e.g. `install ok installed`.
    pub status: String,
    /// `L:` (apk).
    pub license: Option<String>,
    /// The first line of `Description` (dpkg): the synopsis.
    pub synopsis: Option<String>,
    /// The `Source` field as written (dpkg).
    source_field: Option<String>,
    /// The record as apk wrote it, one line per element (apk).
    apk_lines: Vec<String>,
}

/// A dpkg diversion: `from` is diverted to `to` by package `by` (`None`: a local diversion).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Diversion {
    from: PathBuf,
    to: PathBuf,
    by: Option<String>,
}

/// The build environment's package database.
#[derive(Debug, Clone)]
pub struct PackageDb {
    /// dpkg or apk.
    pub kind: DbKind,
    /// The database's directory as the build environment reaches it (canonical):
    /// `/var/lib/dpkg`, `/lib/apk/db`. Records go to the same place in the image.
    pub dir: PathBuf,
    /// The packages (dpkg: the ones with files on disk), in the database's order.
    pub packages: Vec<Package>,
    diversions: Vec<Diversion>,
    /// apk: every listed file and its package.
    apk_files: Vec<(PathBuf, usize)>,
    /// What the caller should know (pending dpkg updates).
    pub notices: Vec<String>,
}

/// A release part (ERTS, an application) whose files came from the build environment: the
/// path of one of its files there, to attribute it to a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// A file of the build environment (`/usr/lib/erlang/lib/crypto-5.1.2/ebin/crypto.app`).
    pub path: PathBuf,
    /// What it stands for (`crypto-5.1.2`), for the SBOM.
    pub part: String,
}

/// What a package contributed to the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// Paths shipped at the same path in the image, as the package lists them.
    pub listed: BTreeSet<PathBuf>,
    /// Release parts copied from the package's files ([`Probe::part`]).
    pub parts: BTreeSet<String>,
}

/// The owners of a set of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Contributing packages (index into [`PackageDb::packages`]) and what each contributed.
    pub packages: BTreeMap<usize, Contribution>,
    /// Queried image paths no package lists (generated files, the CA bundle, alternatives).
    pub unowned: Vec<PathBuf>,
    /// Probes and the package that owns each (for the SBOM: "copied from package X").
    pub probes: BTreeMap<String, usize>,
}

/// The lines of package lists whose file name is one of a given set, with their package.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    by_name: HashMap<OsString, Vec<(PathBuf, usize)>>,
}

impl Listed {
    /// Listed paths with this file name, and their packages.
    pub fn named(&self, name: &OsStr) -> &[(PathBuf, usize)] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// The file at `path` (symlinks followed) if it exists: `Ok(None)` when it does not. Other
/// errors name the path.
pub(crate) fn read_opt(fs: &dyn Fs, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let canon = match resolve_path(fs, path) {
        Ok((c, _)) => c,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(named(e)),
    };
    match fs.read(&canon) {
        Ok(b) => Ok(Some(b)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(named(e)),
    }
}

impl PackageDb {
    /// The database of the environment `fs` reads, if it has dpkg's or apk's.
    ///
    /// Every file is asked for even after one is missing, so a lazily fetched filesystem asks
    /// for all of them in one round. Errors other than "not found" are returned.
    pub fn read(fs: &dyn Fs) -> io::Result<Option<PackageDb>> {
        let dpkg = Path::new(DPKG_DIR);
        let status = read_opt(fs, &dpkg.join("status"));
        let diversions = read_opt(fs, &dpkg.join("diversions"));
        let apk: Vec<_> = APK_DBS
            .iter()
            .map(|p| (Path::new(*p), read_opt(fs, Path::new(p))))
            .collect();
        if let Some(status) = status? {
            let dir = resolve_path(fs, dpkg).map(|(c, _)| c)?;
            let mut db = PackageDb {
                kind: DbKind::Dpkg,
                dir,
                packages: parse_dpkg_status(&status),
                diversions: parse_diversions(&diversions?.unwrap_or_default()),
                apk_files: Vec::new(),
                notices: Vec::new(),
            };
            let updates = dpkg.join("updates");
            if let Ok(names) = fs.read_dir(&updates) {
                if names
                    .iter()
                    .any(|n| n.as_bytes().iter().all(u8::is_ascii_digit))
                {
                    db.notices.push(format!(
                        "dpkg's database in the build environment has pending updates ({}): the package records may be out of date; run `dpkg --configure -a` there",
                        updates.display()
                    ));
                }
            }
            return Ok(Some(db));
        }
        for (path, bytes) in apk {
            if let Some(bytes) = bytes? {
                let dir =
                    resolve_path(fs, path.parent().unwrap_or(Path::new("/"))).map(|(c, _)| c)?;
                let (packages, apk_files) = parse_apk(&bytes);
                return Ok(Some(PackageDb {
                    kind: DbKind::Apk,
                    dir,
                    packages,
                    diversions: Vec::new(),
                    apk_files,
                    notices: Vec::new(),
                }));
            }
        }
        Ok(None)
    }

    /// The listed paths whose file name is in `names` (diversion targets bring their
    /// originals' names). dpkg: reads each package's `.list` (a missing one lists nothing).
    pub fn listed(&self, fs: &dyn Fs, names: &HashSet<OsString>) -> io::Result<Listed> {
        let mut names = names.clone();
        for d in &self.diversions {
            if d.to.file_name().is_some_and(|n| names.contains(n)) {
                if let Some(n) = d.from.file_name() {
                    names.insert(n.to_os_string());
                }
            }
        }
        let mut out = Listed::default();
        let mut keep = |path: &[u8], pkg: usize| {
            let p = Path::new(OsStr::from_bytes(path));
            if let Some(name) = p.file_name() {
                if names.contains(name) {
                    out.by_name
                        .entry(name.to_os_string())
                        .or_default()
                        .push((p.to_path_buf(), pkg));
                }
            }
        };
        match self.kind {
            DbKind::Apk => {
                for (p, pkg) in &self.apk_files {
                    keep(p.as_os_str().as_bytes(), *pkg);
                }
            }
            DbKind::Dpkg => {
                let info = self.dir.join("info");
                let mut first_err = None;
                for (i, p) in self.packages.iter().enumerate() {
                    let file = if p.multi_arch.as_deref() == Some("same") {
                        format!("{}:{}.list", p.name, p.arch)
                    } else {
                        format!("{}.list", p.name)
                    };
                    // Every list is asked for, so a lazily fetched filesystem gets all at once.
                    match read_opt(fs, &info.join(file)) {
                        Ok(Some(bytes)) => {
                            for line in bytes.split(|b| *b == b'\n') {
                                if line.starts_with(b"/") {
                                    keep(line, i);
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// The owners of `paths` (files and symlinks of the build environment, canonical
    /// parents, copied to the same path in the image) and of `probes`.
    pub fn owners(
        &self,
        fs: &dyn Fs,
        listed: &Listed,
        paths: &[PathBuf],
        probes: &[Probe],
    ) -> Owners {
        let mut canon = CanonicalDirs::default();
        let mut out = Owners::default();
        for path in paths {
            let found = self.owners_of(fs, listed, &mut canon, path);
            if found.is_empty() {
                out.unowned.push(path.clone());
            }
            for (listed_as, pkg) in found {
                out.packages
                    .entry(pkg)
                    .or_default()
                    .listed
                    .insert(listed_as);
            }
        }
        for probe in probes {
            let found = self.owners_of(fs, listed, &mut canon, &probe.path);
            if let Some((_, pkg)) = found.first() {
                out.probes.insert(probe.part.clone(), *pkg);
            }
            for (_, pkg) in found {
                out.packages
                    .entry(pkg)
                    .or_default()
                    .parts
                    .insert(probe.part.clone());
            }
        }
        out
    }

    /// Every `(listed spelling, package)` owning `path`.
    fn owners_of(
        &self,
        fs: &dyn Fs,
        listed: &Listed,
        canon: &mut CanonicalDirs,
        path: &Path,
    ) -> Vec<(PathBuf, usize)> {
        let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
            return Vec::new();
        };
        let same_file = |canon: &mut CanonicalDirs, l: &Path| {
            l == path
                || (l.file_name() == Some(name)
                    && l.parent().and_then(|d| canon.get(fs, d)).as_deref() == Some(dir))
        };
        let mut found: Vec<(PathBuf, usize)> = Vec::new();
        for (l, pkg) in listed.named(name) {
            if !same_file(canon, l) {
                continue;
            }
            // A diverted original belongs to the diverting package only.
            let diverted_away = self.diversions.iter().any(|d| {
                d.from == *l && d.by.as_deref() != Some(self.packages[*pkg].name.as_str())
            });
            if !diverted_away {
                found.push((l.clone(), *pkg));
            }
        }
        // A diversion's target belongs to the package whose original was moved there.
        for d in &self.diversions {
            if !same_file(canon, &d.to) {
                continue;
            }
            let Some(from_name) = d.from.file_name() else {
                continue;
            };
            for (l, pkg) in listed.named(from_name) {
                if *l == d.from && d.by.as_deref() != Some(self.packages[*pkg].name.as_str()) {
                    found.push((d.to.clone(), *pkg));
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// Canonical directories of the build environment, memoised.
#[derive(Default)]
struct CanonicalDirs(HashMap<PathBuf, Option<PathBuf>>);

impl CanonicalDirs {
    fn get(&mut self, fs: &dyn Fs, dir: &Path) -> Option<PathBuf> {
        if let Some(c) = self.0.get(dir) {
            return c.clone();
        }
        let c = resolve_path(fs, dir)
            .ok()
            .map(|(c, _)| c)
            .filter(|c| matches!(fs.lstat(c).map(|m| m.kind), Ok(Kind::Dir)));
        self.0.insert(dir.to_path_buf(), c.clone());
        c
    }
}

/// The deb822 paragraphs of `text`: `(field, value)` pairs, continuation lines joined with
/// `\n`.
fn deb822(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut para: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !para.is_empty() {
                out.push(std::mem::take(&mut para));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = para.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            para.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !para.is_empty() {
        out.push(para);
    }
    out
}

/// `Source: NAME` or `Source: NAME (VERSION)`, as Trivy and Syft parse it.
fn parse_source(field: &str) -> (String, Option<String>) {
    match field.split_once(' ') {
        Some((name, rest)) => {
            let v = rest.trim().trim_start_matches('(').trim_end_matches(')');
            (
                name.to_string(),
                Some(v.to_string()).filter(|v| !v.is_empty()),
            )
        }
        None => (field.to_string(), None),
    }
}

fn parse_dpkg_status(bytes: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for para in deb822(&text) {
        let get = |k: &str| {
            para.iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let (Some(name), Some(version), Some(status)) =
            (get("Package"), get("Version"), get("Status"))
        else {
            continue;
        };
        // Files on disk: anything but "not-installed" and "config-files" (dpkg(1) "Package states").
        let state = status.split_whitespace().nth(2).unwrap_or_default();
        if matches!(state, "not-installed" | "config-files" | "") {
            continue;
        }
        let source_field = get("Source");
        let (source, source_version) = match &source_field {
            Some(f) => {
                let (n, v) = parse_source(f);
                (Some(n).filter(|n| *n != name), v.filter(|v| *v != version))
            }
            None => (None, None),
        };
        out.push(Package {
            name,
            version,
            arch: get("Architecture").unwrap_or_default(),
            source,
            source_version,
            maintainer: get("Maintainer"),
            multi_arch: get("Multi-Arch"),
            status,
            license: None,
            synopsis: get("Description").and_then(|d| d.lines().next().map(str::to_string)),
            source_field,
            apk_lines: Vec::new(),
        });
    }
    out
}

fn parse_diversions(bytes: &[u8]) -> Vec<Diversion> {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    lines
        .chunks(3)
        .filter(|c| c.len() == 3 && c[0].starts_with(b"/"))
        .map(|c| Diversion {
            from: PathBuf::from(OsStr::from_bytes(c[0])),
            to: PathBuf::from(OsStr::from_bytes(c[1])),
            by: Some(String::from_utf8_lossy(c[2]).into_owned()).filter(|b| b != ":"),
        })
        .collect()
}

type ApkFiles = Vec<(PathBuf, usize)>;

fn parse_apk(bytes: &[u8]) -> (Vec<Package>, ApkFiles) {
    let text = String::from_utf8_lossy(bytes);
    let mut packages = Vec::new();
    let mut files = Vec::new();
    for record in text.split("\n\n") {
        let lines: Vec<String> = record
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let get = |k: char| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':').map(str::to_string))
        };
        let (Some(name), Some(version)) = (get('P'), get('V')) else {
            continue;
        };
        let idx = packages.len();
        let mut dir = String::new();
        for l in &lines {
            if let Some(d) = l.strip_prefix("F:") {
                dir = d.to_string();
            } else if let Some(f) = l.strip_prefix("R:") {
                let p = if dir.is_empty() {
                    format!("/{f}")
                } else {
                    format!("/{dir}/{f}")
                };
                files.push((PathBuf::from(p), idx));
            }
        }
        packages.push(Package {
            source: get('o').filter(|o| *o != name),
            name,
            version,
            arch: get('A').unwrap_or_default(),
            source_version: None,
            maintainer: get('m'),
            multi_arch: None,
            status: String::new(),
            license: get('L'),
            synopsis: get('T'),
            source_field: None,
            apk_lines: lines,
        });
    }
    (packages, files)
}

/// The image files that carry the records of `owners`' packages: `(path in the image,
/// content)`, sorted by path. Empty when no package contributed.
pub fn records(db: &PackageDb, owners: &Owners) -> Vec<(PathBuf, Vec<u8>)> {
    if owners.packages.is_empty() {
        return Vec::new();
    }
    match db.kind {
        DbKind::Dpkg => {
            let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
            for &i in owners.packages.keys() {
                *by_name.entry(db.packages[i].name.as_str()).or_default() += 1;
            }
            let mut out: Vec<(PathBuf, Vec<u8>)> = owners
                .packages
                .keys()
                .map(|&i| {
                    let p = &db.packages[i];
                    // Distroless names the file after the package; the same name in two
                    // architectures (i386 and amd64 libraries) needs the architecture too.
                    let file = if by_name[p.name.as_str()] > 1 {
                        format!("{}:{}", p.name, p.arch)
                    } else {
                        p.name.clone()
                    };
                    (db.dir.join("status.d").join(file), dpkg_record(p))
                })
                .collect();
            out.sort();
            out
        }
        DbKind::Apk => {
            let mut text = String::new();
            for (&i, c) in &owners.packages {
                text.push_str(&apk_record(&db.packages[i], &c.listed));
                text.push('\n');
            }
            vec![(db.dir.join("installed"), text.into_bytes())]
        }
    }
}

/// A dpkg record, fields in the order dpkg writes them.
///
/// ```
/// # use image_core::supply::pkgdb::*;
/// # use std::path::Path;
/// let status = "Package: bash\nStatus: install ok installed\nMaintainer: Matthias Klose <doko@debian.org>\nArchitecture: amd64\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b8\nDescription: GNU Bourne Again SHell\n";
/// let p = &parse_status_for_doc(status)[0];
/// assert_eq!(p.source.as_deref(), None);
/// assert_eq!(p.source_version.as_deref(), Some("5.2.15-2"));
/// assert_eq!(
///     String::from_utf8(dpkg_record(p)).unwrap(),
///     "Package: bash\nStatus: install ok installed\nMaintainer: Matthias Klose <doko@debian.org>\nArchitecture: amd64\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b8\nDescription: GNU Bourne Again SHell\n"
/// );
/// ```
pub fn dpkg_record(p: &Package) -> Vec<u8> {
    let mut s = format!("Package: {}\nStatus: {}\n", p.name, p.status);
    if let Some(m) = &p.maintainer {
        s.push_str(&format!("Maintainer: {m}\n"));
    }
    s.push_str(&format!("Architecture: {}\n", p.arch));
    if let Some(m) = &p.multi_arch {
        s.push_str(&format!("Multi-Arch: {m}\n"));
    }
    if let Some(src) = &p.source_field {
        s.push_str(&format!("Source: {src}\n"));
    }
    s.push_str(&format!("Version: {}\n", p.version));
    if let Some(d) = &p.synopsis {
        s.push_str(&format!("Description: {d}\n"));
    }
    s.into_bytes()
}

/// Parse a dpkg `status` text (for examples and tests).
#[doc(hidden)]
pub fn parse_status_for_doc(text: &str) -> Vec<Package> {
    parse_dpkg_status(text.as_bytes())
}

/// An apk record: its lines as apk wrote them, `F:` blocks kept only for shipped files
/// (`listed`), each with its attribute lines (`M:`, `a:`, and `a:`/`Z:` after an `R:`).
fn apk_record(p: &Package, listed: &BTreeSet<PathBuf>) -> String {
    let mut out = String::new();
    let mut dir = String::new();
    // The current `F:` block's line and the directory's own attribute lines, written before
    // its first kept file (and dropped when none is kept).
    let mut block: Vec<&str> = Vec::new();
    // What attribute lines (`a:`, `Z:`, `M:`) belong to: the directory, a file, or nothing.
    enum Attr {
        Dir,
        File(bool),
        None,
    }
    let mut attr = Attr::None;
    for l in &p.apk_lines {
        if let Some(d) = l.strip_prefix("F:") {
            dir = d.to_string();
            block = vec![l.as_str()];
            attr = Attr::Dir;
        } else if let Some(f) = l.strip_prefix("R:") {
            let path = if dir.is_empty() {
                format!("/{f}")
            } else {
                format!("/{dir}/{f}")
            };
            let keep = listed.contains(Path::new(&path));
            if keep {
                for b in block.drain(..) {
                    out.push_str(b);
                    out.push('\n');
                }
                out.push_str(l);
                out.push('\n');
            }
            attr = Attr::File(keep);
        } else if l.starts_with("a:") || l.starts_with("Z:") || l.starts_with("M:") {
            match attr {
                Attr::Dir => block.push(l.as_str()),
                Attr::File(true) => {
                    out.push_str(l);
                    out.push('\n');
                }
                Attr::File(false) => {}
                Attr::None => {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        } else {
            attr = Attr::None;
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The distribution of the build environment, from os-release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distro {
    /// `ID` (`debian`, `ubuntu`, `alpine`).
    pub id: String,
    /// `VERSION_ID`; for Debian the point release from `/etc/debian_version` when it is one
    /// (`12.11`), as Syft reads it.
    pub version_id: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

impl Distro {
    /// Read `/etc/os-release`, else `/usr/lib/os-release`. `None` when neither exists or
    /// neither names an `ID`.
    pub fn read(fs: &dyn Fs) -> io::Result<Option<Distro>> {
        let etc = read_opt(fs, Path::new("/etc/os-release"));
        let lib = read_opt(fs, Path::new("/usr/lib/os-release"));
        let debian_version = read_opt(fs, Path::new("/etc/debian_version"));
        let Some(text) = etc?.or(lib?) else {
            return Ok(None);
        };
        let mut d = Distro::parse(&String::from_utf8_lossy(&text));
        if d.id == "debian" {
            if let Some(v) = debian_version? {
                let v = String::from_utf8_lossy(&v).trim().to_string();
                let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                let point = match v.split_once('.') {
                    Some((a, b)) => numeric(a) && numeric(b),
                    None => numeric(&v),
                };
                if point {
                    d.version_id = v;
                }
            }
        }
        Ok(Some(d).filter(|d| !d.id.is_empty()))
    }

    /// Parse os-release text (`KEY=value`, values optionally quoted).
    ///
    /// ```
    /// let d = image_core::supply::pkgdb::Distro::parse("ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME='Debian 12'\n");
    /// assert_eq!((d.id.as_str(), d.version_id.as_str(), d.pretty_name.as_str()), ("debian", "12", "Debian 12"));
    /// ```
    pub fn parse(text: &str) -> Distro {
        let mut d = Distro::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .to_string();
            match k.trim() {
                "ID" => d.id = v,
                "VERSION_ID" => d.version_id = v,
                "PRETTY_NAME" => d.pretty_name = v,
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::HostFs;

    fn put(root: &Path, path: &str, bytes: &[u8]) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn link(root: &Path, path: &str, target: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: dash
Essential: yes
Status: install ok installed
Maintainer: Andrej Shadura <andrewsh@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 0.5.12-2

Package: bash
Status: install ok installed
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b8

Package: libssl3
Status: install ok installed
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.16-1~deb12u1

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: ca-certificates
Status: install ok installed
Architecture: all
Version: 20230311
";

    /// A merged-/usr Debian tree: `/lib -> usr/lib`, `/bin -> usr/bin`; libc6 lists its files
    /// under `/lib`, libssl3 under `/usr/lib`; dash diverts `/bin/sh`.
    fn debian_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "/var/lib/dpkg/status", STATUS.as_bytes());
        put(
            r,
            "/var/lib/dpkg/diversions",
            b"/bin/sh\n/bin/sh.distrib\ndash\n/usr/share/man/man1/sh.1.gz\n/usr/share/man/man1/sh.distrib.1.gz\ndash\n",
        );
        put(
            r,
            "/var/lib/dpkg/info/libc6:amd64.list",
            b"/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n/lib64\n/lib64/ld-linux-x86-64.so.2\n",
        );
        put(
            r,
            "/var/lib/dpkg/info/dash.list",
            b"/.\n/bin\n/bin/dash\n/bin/sh\n",
        );
        put(
            r,
            "/var/lib/dpkg/info/bash.list",
            b"/.\n/bin\n/bin/bash\n/bin/sh.distrib\n",
        );
        put(
            r,
            "/var/lib/dpkg/info/libssl3:amd64.list",
            b"/.\n/usr/lib/x86_64-linux-gnu/libssl.so.3\n",
        );
        put(
            r,
            "/var/lib/dpkg/info/gone.list",
            b"/usr/lib/x86_64-linux-gnu/libssl.so.3\n",
        );
        put(r, "/usr/lib/x86_64-linux-gnu/libc.so.6", b"libc");
        put(r, "/usr/lib/x86_64-linux-gnu/libssl.so.3", b"ssl");
        put(r, "/usr/lib64/ld-linux-x86-64.so.2", b"ld");
        put(r, "/usr/bin/dash", b"dash");
        put(r, "/usr/bin/bash", b"bash");
        put(r, "/etc/ssl/certs/ca-certificates.crt", b"certs");
        link(r, "/usr/bin/sh", "dash");
        link(r, "/lib", "usr/lib");
        link(r, "/lib64", "usr/lib64");
        link(r, "/bin", "usr/bin");
        t
    }

    fn owners_of(fs: &dyn Fs, db: &PackageDb, paths: &[&str]) -> Owners {
        let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        let names = paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(OsStr::to_os_string)
            .collect();
        let listed = db.listed(fs, &names).unwrap();
        db.owners(fs, &listed, &paths, &[])
    }

    fn names(db: &PackageDb, o: &Owners) -> Vec<String> {
        o.packages
            .keys()
            .map(|&i| db.packages[i].name.clone())
            .collect()
    }

    #[test]
    fn status_paragraphs_with_sources_and_states() {
        let p = parse_dpkg_status(STATUS.as_bytes());
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["libc6", "dash", "bash", "libssl3", "ca-certificates"]
        );
        assert_eq!(p[0].source.as_deref(), Some("glibc"));
        assert_eq!(p[0].source_version, None);
        assert_eq!(p[1].source, None);
        assert_eq!(p[2].source, None);
        assert_eq!(p[2].source_version.as_deref(), Some("5.2.15-2"));
        assert_eq!(p[0].multi_arch.as_deref(), Some("same"));
    }

    #[test]
    fn owners_across_merged_usr_spellings_arch_lists_and_diversions() {
        let t = debian_tree();
        let fs = HostFs::new(t.path());
        let db = PackageDb::read(&fs).unwrap().unwrap();
        assert_eq!(db.kind, DbKind::Dpkg);
        assert_eq!(db.dir, Path::new("/var/lib/dpkg"));
        // libc6 lists /lib/…, the closure finds /usr/lib/… (canonical); libc6's list is
        // libc6:amd64.list (Multi-Arch: same).
        let o = owners_of(&fs, &db, &["/usr/lib/x86_64-linux-gnu/libc.so.6"]);
        assert_eq!(names(&db, &o), ["libc6"]);
        assert_eq!(
            o.packages.values().next().unwrap().listed,
            BTreeSet::from([PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")])
        );
        // The reverse: listed under /usr/lib. A config-files package's stale list does not count.
        let o = owners_of(&fs, &db, &["/usr/lib/x86_64-linux-gnu/libssl.so.3"]);
        assert_eq!(names(&db, &o), ["libssl3"]);
        // /bin/sh is diverted by dash, which lists it: dash owns it. bash's /bin/sh.distrib is
        // not the diverted-to file of anything bash lists.
        let o = owners_of(&fs, &db, &["/usr/bin/sh", "/usr/bin/dash", "/usr/bin/bash"]);
        assert_eq!(names(&db, &o), ["dash", "bash"]);
        // Unowned: the generated CA bundle.
        let o = owners_of(&fs, &db, &["/etc/ssl/certs/ca-certificates.crt"]);
        assert!(o.packages.is_empty());
        assert_eq!(
            o.unowned,
            [PathBuf::from("/etc/ssl/certs/ca-certificates.crt")]
        );
    }

    #[test]
    fn a_diverted_original_listed_by_another_package_belongs_to_it_at_the_new_name() {
        let t = debian_tree();
        // bash lists /bin/sh, which dash diverts to /bin/sh.distrib: bash's file is there.
        put(
            t.path(),
            "/var/lib/dpkg/info/bash.list",
            b"/bin/bash\n/bin/sh\n",
        );
        put(t.path(), "/usr/bin/sh.distrib", b"bash's sh");
        let fs = HostFs::new(t.path());
        let db = PackageDb::read(&fs).unwrap().unwrap();
        let o = owners_of(&fs, &db, &["/usr/bin/sh.distrib"]);
        assert_eq!(names(&db, &o), ["bash"]);
        let o = owners_of(&fs, &db, &["/usr/bin/sh"]);
        assert_eq!(names(&db, &o), ["dash"]);
    }

    #[test]
    fn records_are_distroless_status_files_that_dpkg_query_reads() {
        let t = debian_tree();
        let fs = HostFs::new(t.path());
        let db = PackageDb::read(&fs).unwrap().unwrap();
        let o = owners_of(
            &fs,
            &db,
            &[
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/bin/sh",
                "/usr/bin/bash",
            ],
        );
        let r = records(&db, &o);
        let paths: Vec<_> = r.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/var/lib/dpkg/status.d/bash",
                "/var/lib/dpkg/status.d/dash",
                "/var/lib/dpkg/status.d/libc6"
            ]
        );
        assert_eq!(
            String::from_utf8(r[2].1.clone()).unwrap(),
            "Package: libc6\nStatus: install ok installed\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nArchitecture: amd64\nMulti-Arch: same\nSource: glibc\nVersion: 2.36-9+deb12u10\nDescription: GNU C Library: Shared libraries\n"
        );
    }

    #[test]
    fn probes_attribute_release_parts() {
        let t = debian_tree();
        put(
            t.path(),
            "/var/lib/dpkg/info/libssl3:amd64.list",
            b"/usr/lib/x86_64-linux-gnu/libssl.so.3\n/usr/lib/erlang/lib/crypto-5.1.2/ebin/crypto.app\n",
        );
        put(
            t.path(),
            "/usr/lib/erlang/lib/crypto-5.1.2/ebin/crypto.app",
            b"app",
        );
        let fs = HostFs::new(t.path());
        let db = PackageDb::read(&fs).unwrap().unwrap();
        let probe = Probe {
            path: "/usr/lib/erlang/lib/crypto-5.1.2/ebin/crypto.app".into(),
            part: "crypto-5.1.2".into(),
        };
        let names_set = HashSet::from([OsString::from("crypto.app")]);
        let listed = db.listed(&fs, &names_set).unwrap();
        let o = db.owners(&fs, &listed, &[], &[probe]);
        let (&i, c) = o.packages.iter().next().unwrap();
        assert_eq!(db.packages[i].name, "libssl3");
        assert!(c.listed.is_empty());
        assert_eq!(c.parts, BTreeSet::from(["crypto-5.1.2".to_string()]));
        assert_eq!(o.probes["crypto-5.1.2"], i);
    }

    const APK: &str = "\
C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
S:383152
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1695304014
c:3ba8ad6ff3ea3ba2d6b08f2ac1c1fc2e1cd1e4bb
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1aaa=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q1bbb=

C:Q1def=
P:busybox-binsh
V:1.36.1-r5
A:x86_64
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
F:bin
R:sh
a:0:0:777
Z:Q1ccc=
F:etc
M:0:0:755
R:unused.conf
a:0:0:644
Z:Q1ddd=

";

    #[test]
    fn apk_records_keep_only_shipped_files() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "/lib/apk/db/installed", APK.as_bytes());
        put(t.path(), "/lib/ld-musl-x86_64.so.1", b"ld");
        link(t.path(), "/bin/sh", "/bin/busybox");
        let fs = HostFs::new(t.path());
        let db = PackageDb::read(&fs).unwrap().unwrap();
        assert_eq!(db.kind, DbKind::Apk);
        assert_eq!(db.packages[1].source.as_deref(), Some("busybox"));
        assert_eq!(db.packages[0].source, None);
        let o = owners_of(&fs, &db, &["/lib/ld-musl-x86_64.so.1", "/bin/sh"]);
        assert_eq!(names(&db, &o), ["musl", "busybox-binsh"]);
        let r = records(&db, &o);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, Path::new("/lib/apk/db/installed"));
        let text = String::from_utf8(r[0].1.clone()).unwrap();
        assert!(
            text.contains("F:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\nZ:Q1aaa=\n"),
            "{text}"
        );
        assert!(!text.contains("libc.musl"), "{text}");
        assert!(
            text.contains("F:bin\nR:sh\na:0:0:777\nZ:Q1ccc=\n"),
            "{text}"
        );
        assert!(!text.contains("F:etc"), "{text}");
        assert!(!text.contains("Q1ddd"), "{text}");
        // V: before o: (Trivy takes o:'s version from the V: seen so far).
        assert!(text.find("V:1.2.4-r2").unwrap() < text.find("o:musl").unwrap());
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn no_database_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert!(PackageDb::read(&HostFs::new(t.path())).unwrap().is_none());
    }

    #[test]
    fn distro_with_debians_point_release() {
        let t = debian_tree();
        put(
            t.path(),
            "/usr/lib/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        link(t.path(), "/etc/os-release", "../usr/lib/os-release");
        put(t.path(), "/etc/debian_version", b"12.11\n");
        let d = Distro::read(&HostFs::new(t.path())).unwrap().unwrap();
        assert_eq!(d.id, "debian");
        assert_eq!(d.version_id, "12.11");
        put(t.path(), "/etc/debian_version", b"trixie/sid\n");
        let d = Distro::read(&HostFs::new(t.path())).unwrap().unwrap();
        assert_eq!(d.version_id, "12");
    }
}
