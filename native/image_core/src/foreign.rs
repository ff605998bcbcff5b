//! The release for another platform, without building it there: its ELF files taken from an
//! image of that platform.
//!
//! A release built on one platform differs from the same release built on another only in its
//! ELF files: ERTS's executables (`erts-VSN/bin/beam.smp`, `epmd`, …) and the native files of
//! OTP applications (`lib/crypto-VSN/priv/lib/crypto.so`, port programs such as `memsup`). Every
//! `.beam`, `.app`, boot file and script is the same byte for byte (a release strips the chunks
//! that differ: debug info and docs). And each of those ELF files is, byte for byte, the file at
//! the same path under the OTP installation it was copied from: release `erts-V/bin/X` is
//! `ROOT/erts-V/bin/X`, release `lib/APP-VSN/P` is `ROOT/lib/APP-VSN/P`.
//!
//! So a release for platform P is the release as built, with every ELF file replaced by the
//! same path under the OTP installation of an image of P (the [`Target`], read, never run).
//! That image also provides P's runtime files: the existing [`crate::plan::plan`] runs over the
//! union of the release (ELF files substituted) and the target's filesystem, so the library
//! closure, `/bin/sh` and the shell tools, the locale and the CA bundle are P's.
//!
//! [`check`] refuses, before anything is written, with every problem found ([`Refusal`]):
//! - the target has no OTP installation, or not the release's ERTS version;
//! - an OTP application of the release has another version there (or none);
//! - an ELF file that cannot be taken from the target: a NIF or port program of a dependency or
//!   of the project (built with the project, for the build's platform only), a file of the
//!   release's own (`bin/`, overlays), or a file of ERTS or OTP the target lacks. The way out is
//!   `--emulate` (the release built for P in a builder of P run under emulation);
//! - a file of the target that is not for P (an image of another platform);
//! - the target cannot run its own files: a missing loader, library or glibc symbol version
//!   ([`crate::glibc::check_release`] over the union), `/bin/sh` or a shell tool.
//!
//! Elixir's applications (`elixir`, `logger`, …) have no native files; they are the build's, and
//! their version in the target does not matter.

use crate::elf::{find_elf_files, Header, Platform};
use crate::fs::{resolve_path, Fs, Kind};
use crate::glibc::{self, check_release, ReleaseOnBase, Subject};
use crate::plan::{
    missing_tools, plan, release_facts, same_platform, Plan, PlanError, Settings, PATH,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Elixir's own applications: they ship no native files, so they are never taken from a target.
pub const ELIXIR_APPS: &[&str] = &["elixir", "eex", "ex_unit", "iex", "logger", "mix"];

/// Where an OTP installation usually is in an image (official and hexpm images, then Debian
/// and Alpine packages). Tried after [`Target::otp_roots`] and after the root of `erl` on the
/// image's `PATH` (`/usr/bin/erl -> ../lib/erlang/bin/erl` gives `/usr/lib/erlang`).
pub const OTP_ROOTS: &[&str] = &["/usr/local/lib/erlang", "/usr/lib/erlang"];

/// The environment of a build run under emulation (`--emulate`). QEMU user emulation before
/// 8.1 corrupts the JIT's code when it is mapped twice (W^X double mapping; QEMU issue 1034):
/// `mix release` of OTP 27 under Debian 12's qemu 7.2 failed three times out of three,
/// `+JMsingle true` (one mapping, the mode Erlang's docs give for QEMU) passed. Set through
/// `ERL_AFLAGS`, which the VM reads before `ERL_FLAGS`, so a project's own `ERL_FLAGS` stays.
/// Never put into the image: the release runs under emulation without it.
pub const EMULATED_BUILD_ENV: &[(&str, &str)] = &[("ERL_AFLAGS", "+JMsingle true")];

/// An image of another platform, unpacked and read only: where that platform's files come from.
pub struct Target<'a> {
    /// The platform the image is for (what the user asked for).
    pub platform: Platform,
    /// The image's reference, for messages.
    pub image: String,
    /// Its filesystem.
    pub fs: &'a dyn Fs,
    /// OTP installations to try first (the build's own root path: a builder image and its
    /// variant for another platform install OTP in the same place).
    pub otp_roots: Vec<PathBuf>,
}

/// Who an ELF file of the release belongs to, by its path in the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// ERTS (`erts-VSN/…`).
    Erts,
    /// An OTP application.
    Otp(String),
    /// One of Elixir's applications.
    Elixir(String),
    /// One of the project's own applications.
    Project(String),
    /// A dependency.
    Dependency(String),
    /// The release itself (`bin/`, `releases/`, overlays).
    Release,
}

impl Owner {
    /// The owner of `rel`, a path relative to the release directory.
    pub fn of(rel: &Path, settings: &Settings) -> Owner {
        let mut comps = rel.components().map(|c| c.as_os_str().to_string_lossy());
        let first = comps.next().unwrap_or_default();
        if first.starts_with("erts-") {
            return Owner::Erts;
        }
        let (true, Some(app_dir)) = (first == "lib", comps.next()) else {
            return Owner::Release;
        };
        // Application names cannot contain '-', versions can.
        let name = app_dir
            .split_once('-')
            .map_or(&*app_dir, |(n, _)| n)
            .to_string();
        if settings.own_apps.contains(&name) {
            Owner::Project(name)
        } else if ELIXIR_APPS.contains(&name.as_str()) {
            Owner::Elixir(name)
        } else if settings.otp_apps.contains(&name) {
            Owner::Otp(name)
        } else {
            Owner::Dependency(name)
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Erts => write!(f, "ERTS"),
            Owner::Otp(a) => write!(f, "OTP's :{a}"),
            Owner::Elixir(a) => write!(f, "Elixir's :{a}"),
            Owner::Project(a) => write!(f, "the project's :{a}"),
            Owner::Dependency(a) => write!(f, "dependency :{a}"),
            Owner::Release => write!(f, "the release"),
        }
    }
}

/// An ELF file of the release: its path relative to the release directory, and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeFile {
    /// Relative to the release directory (`lib/crypto-5.5.3/priv/lib/crypto.so`).
    pub path: PathBuf,
    /// Who it belongs to.
    pub owner: Owner,
}

impl fmt::Display for NativeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.owner)
    }
}

/// Why a target cannot provide a platform's files. [`Refusal`] says them to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No OTP installation in the target.
    NoOtp {
        /// The directories looked at.
        looked: Vec<PathBuf>,
    },
    /// The target's OTP has another ERTS.
    Erts {
        /// The release's ERTS version.
        needed: String,
        /// The OTP installation found.
        root: PathBuf,
        /// Its ERTS versions.
        found: Vec<String>,
        /// Its OTP version (`releases/*/OTP_VERSION`).
        otp: Option<String>,
    },
    /// OTP applications of the release have other versions (or none) in the target.
    OtpApps {
        /// The OTP installation.
        root: PathBuf,
        /// Its OTP version.
        otp: Option<String>,
        /// Each application's directory in the release (`crypto-5.5.3`) and the versions of
        /// it the target has.
        apps: Vec<(String, Vec<String>)>,
    },
    /// ELF files that no image of another platform can provide: they were built with the
    /// project (NIFs and port programs of dependencies or of the project's applications), or
    /// belong to the release itself.
    NotReplaceable {
        /// The files.
        files: Vec<NativeFile>,
    },
    /// Files of the release's ERTS or OTP applications that the target's OTP lacks (another
    /// set of packages installed: `dialyzer`, `odbcserver`).
    Missing {
        /// The OTP installation.
        root: PathBuf,
        /// The files.
        files: Vec<NativeFile>,
    },
    /// Files of the target that are not ELF files of the platform.
    Machine {
        /// Each file (relative to the release) and what the target's file is.
        files: Vec<(PathBuf, String)>,
    },
    /// The target cannot run its own files (its loader, libraries, symbol versions, shell).
    Runtime(glibc::Problem),
}

/// A platform whose image cannot be made from its target, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Refusal {
    /// The platform.
    pub platform: Platform,
    /// The target image's reference.
    pub image: String,
    /// The problems (never empty), most fundamental first.
    pub problems: Vec<Problem>,
}

/// At most this many files are named in one problem.
const MAX_LISTED: usize = 20;

fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut shown: Vec<String> = items
        .iter()
        .take(MAX_LISTED)
        .map(|i| i.to_string())
        .collect();
    if items.len() > MAX_LISTED {
        shown.push(format!("and {} more", items.len() - MAX_LISTED));
    }
    shown.join(", ")
}

impl Refusal {
    /// The refusal: one line, then one indented line per problem.
    fn message(&self) -> String {
        let p = self.platform.to_string();
        let image = &self.image;
        let same_otp = format!(
            "give an image of {p} with the Erlang/OTP the release was built with (the build's image, its {p} variant) with --platform-image {p}=IMAGE"
        );
        let emulate = format!(
            "build the release for {p} with --emulate (in a {p} builder run under emulation: the engine's machine needs qemu-user-static and binfmt_misc with the F flag), or leave {p} out of --platform"
        );
        let otp =
            |otp: &Option<String>| otp.as_ref().map_or(String::new(), |v| format!(", OTP {v}"));
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|problem| match problem {
                Problem::NoOtp { looked } => format!(
                    "{image} has no Erlang/OTP installation (no erl on {PATH}, nothing in {}): its ERTS and OTP's native files cannot come from it; {same_otp}",
                    list(&looked.iter().map(|l| l.display()).collect::<Vec<_>>())
                ),
                Problem::Erts {
                    needed,
                    root,
                    found,
                    otp: v,
                } => format!(
                    "the release was built with ERTS {needed}, and {image} has {} in {}{}; {same_otp}",
                    if found.is_empty() {
                        "no ERTS".to_string()
                    } else {
                        found.iter().map(|f| format!("ERTS {f}")).collect::<Vec<_>>().join(", ")
                    },
                    root.display(),
                    otp(v)
                ),
                Problem::OtpApps { root, otp: v, apps } => {
                    let apps: Vec<String> = apps
                        .iter()
                        .map(|(app, found)| match found.as_slice() {
                            [] => format!("{app} (it has none)"),
                            f => format!("{app} (it has {})", f.join(", ")),
                        })
                        .collect();
                    format!(
                        "OTP applications of the release have other versions in {image} ({}{}): {}; they must be the same; {same_otp}",
                        root.display(),
                        otp(v),
                        list(&apps)
                    )
                }
                Problem::NotReplaceable { files } => format!(
                    "native files built with the project cannot be taken from an image of another platform: {}; {emulate}",
                    list(files)
                ),
                Problem::Missing { root, files } => format!(
                    "{image} lacks native files of the release's ERTS or OTP applications under {}: {}; install the packages that provide them in that image, or {emulate}",
                    root.display(),
                    list(files)
                ),
                Problem::Machine { files } => {
                    let files: Vec<String> = files
                        .iter()
                        .map(|(f, what)| format!("{} is {what}", f.display()))
                        .collect();
                    format!(
                        "files of {image} are not for {p}: {}; give an image of {p} with --platform-image {p}=IMAGE",
                        list(&files)
                    )
                }
                Problem::Runtime(problem) => problem.message_about(&Subject::Platform {
                    image,
                    platform: &p,
                }),
            })
            .collect();
        format!(
            "cannot make the {p} image from {image}:\n  - {}",
            lines.join("\n  - ")
        )
    }
}

/// Every platform that cannot be made, each with its problems: checks run for all platforms
/// before any image is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Refused(pub Vec<Refusal>);

/// Why a platform's plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ForeignError {
    /// The release itself is the problem (not a release, unreadable files).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The target cannot provide the platform's files.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Every ELF file of the release and the target's file that replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The release directory, canonical in the build's filesystem.
    pub release_dir: PathBuf,
    /// The target's OTP installation, canonical.
    pub otp_root: PathBuf,
    /// Absolute path of each release ELF file → canonical path of its counterpart in the target.
    pub files: BTreeMap<PathBuf, PathBuf>,
}

impl Substitution {
    /// The platform's view: the release from `build` with its ELF files read from `target`,
    /// everything else outside the release from `target`. Plan and build the layers over it.
    pub fn fs<'a>(&self, build: &'a dyn Fs, target: &'a dyn Fs) -> ReleaseOnBase<'a> {
        let overrides = self
            .files
            .iter()
            .map(|(r, t)| (r.clone(), Some(t.clone())))
            .collect();
        ReleaseOnBase::canonical(build, &self.release_dir, target).with_overrides(overrides)
    }
}

/// A platform's plan and the substitution it was made over.
#[derive(Debug, Clone)]
pub struct ForeignPlan {
    /// The plan; its release paths are under [`Substitution::release_dir`].
    pub plan: Plan,
    /// Read the plan's files through [`Substitution::fs`] (also when writing the layers).
    pub substitution: Substitution,
}

/// Check that `target` can provide its platform's files for the release in `build` (see the
/// module docs), and map every ELF file of the release to its counterpart.
pub fn check(
    build: &dyn Fs,
    settings: &Settings,
    target: &Target<'_>,
) -> Result<Substitution, ForeignError> {
    let facts = release_facts(build, settings)?;
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlanError::Read { path, source }
    };
    let (release, _) =
        resolve_path(build, &settings.release_dir).map_err(read_err(&settings.release_dir))?;
    let elfs = find_elf_files(build, &release).map_err(read_err(&release))?;
    let mut problems = Vec::new();

    // The target's OTP installation; with another ERTS there, its applications are still
    // compared (one message then says all that differs).
    let (root, erts_found) = match otp_root(target, &facts.erts_vsn) {
        Ok(root) => (Some(root), true),
        Err(p) => {
            let p = *p;
            let root = match &p {
                Problem::Erts { root, .. } => Some(root.clone()),
                _ => None,
            };
            problems.push(p);
            (root, false)
        }
    };
    // Application directories of the release (`crypto-5.5.3`) the target has in another
    // version (or not at all): their files are covered by that problem.
    let mut other_version: BTreeSet<String> = BTreeSet::new();
    if let Some(root) = &root {
        let apps = other_otp_versions(build, &release, settings, target.fs, root)?;
        if !apps.is_empty() {
            other_version = apps.iter().map(|(dir, _)| dir.clone()).collect();
            problems.push(Problem::OtpApps {
                root: root.clone(),
                otp: otp_version(target.fs, root),
                apps,
            });
        }
    }

    let mut files = BTreeMap::new();
    let mut hidden = BTreeSet::new();
    let (mut not_replaceable, mut missing, mut machine) = (Vec::new(), Vec::new(), Vec::new());
    for elf in elfs {
        let rel = elf.strip_prefix(&release).unwrap_or(&elf).to_path_buf();
        let owner = Owner::of(&rel, settings);
        let app_dir = rel.iter().nth(1).map(|d| d.to_string_lossy().into_owned());
        let counterpart = match (&owner, &root) {
            (Owner::Erts, Some(root)) if erts_found => Some(root.join(&rel)),
            (Owner::Otp(_), Some(root)) if !app_dir.is_some_and(|d| other_version.contains(&d)) => {
                Some(root.join(&rel))
            }
            // No OTP in the target, another ERTS or another version of the application: the
            // file is covered by that problem.
            (Owner::Erts | Owner::Otp(_), _) => None,
            _ => {
                not_replaceable.push(NativeFile {
                    path: rel.clone(),
                    owner: owner.clone(),
                });
                None
            }
        };
        let found = counterpart.and_then(|c| match regular_file(target.fs, &c) {
            Some(canon) => Some(canon),
            None => {
                missing.push(NativeFile {
                    path: rel.clone(),
                    owner: owner.clone(),
                });
                None
            }
        });
        match found {
            Some(canon) => {
                let head = target.fs.read_head(&canon, 64).unwrap_or_default();
                let platform = Header::parse(&head).and_then(|h| h.platform());
                match platform {
                    Some(p) if same_platform(&p, &target.platform) => {
                        files.insert(elf, canon);
                    }
                    other => {
                        let what = other
                            .map_or("not an ELF file of a known platform".into(), |p| {
                                format!("for {p}")
                            });
                        machine.push((rel, what));
                        hidden.insert(elf);
                    }
                }
            }
            None => {
                hidden.insert(elf);
            }
        }
    }
    if !not_replaceable.is_empty() {
        problems.push(Problem::NotReplaceable {
            files: not_replaceable,
        });
    }
    if let (false, Some(root)) = (missing.is_empty(), &root) {
        problems.push(Problem::Missing {
            root: root.clone(),
            files: missing,
        });
    }
    if !machine.is_empty() {
        problems.push(Problem::Machine { files: machine });
    }

    // Can the target run what it provides? Over the union with the substitutions made and the
    // files that could not be substituted left out (they are refused above already).
    let overrides = files
        .iter()
        .map(|(r, t)| (r.clone(), Some(t.clone())))
        .chain(hidden.into_iter().map(|h| (h, None)))
        .collect();
    let union = ReleaseOnBase::canonical(build, &release, target.fs).with_overrides(overrides);
    let runtime = check_release(&union).map_err(PlanError::from)?;
    problems.extend(runtime.into_iter().map(Problem::Runtime));
    problems.extend(missing_tools(target.fs, PATH).map(Problem::Runtime));

    if !problems.is_empty() {
        return Err(Refusal {
            platform: target.platform.clone(),
            image: target.image.clone(),
            problems,
        }
        .into());
    }
    Ok(Substitution {
        release_dir: release,
        // No problem: the root was found with the release's ERTS.
        otp_root: root.unwrap_or_default(),
        files,
    })
}

/// [`check`], then the plan of the release for `target`'s platform over [`Substitution::fs`]:
/// the release's layers as from the build (same bytes where no ELF file is: `deps` and `app` of
/// a project without native code), ERTS and OTP's native files and the runtime files from the
/// target.
pub fn plan_for(
    build: &dyn Fs,
    settings: &Settings,
    target: &Target<'_>,
) -> Result<ForeignPlan, ForeignError> {
    let substitution = check(build, settings, target)?;
    let settings = Settings {
        release_dir: substitution.release_dir.clone(),
        ..settings.clone()
    };
    let plan = plan(&substitution.fs(build, target.fs), &settings)?;
    Ok(ForeignPlan { plan, substitution })
}

/// The target's OTP installation holding ERTS `erts_vsn`: the first of [`Target::otp_roots`],
/// the root of `erl` on [`PATH`] and [`OTP_ROOTS`] that has `erts-<erts_vsn>`.
fn otp_root(target: &Target<'_>, erts_vsn: &str) -> Result<PathBuf, Box<Problem>> {
    let fs = target.fs;
    let erl_root = PATH.split(':').find_map(|d| {
        let (canon, _) = resolve_path(fs, &Path::new(d).join("erl")).ok()?;
        // ROOT/bin/erl
        let bin = canon.parent()?;
        (bin.file_name()? == "bin").then(|| bin.parent().map(Path::to_path_buf))?
    });
    let mut looked: Vec<PathBuf> = Vec::new();
    for candidate in target
        .otp_roots
        .iter()
        .cloned()
        .chain(erl_root)
        .chain(OTP_ROOTS.iter().map(PathBuf::from))
    {
        if !looked.contains(&candidate) {
            looked.push(candidate);
        }
    }
    let mut existing: Vec<PathBuf> = Vec::new();
    for dir in &looked {
        let Ok((canon, _)) = resolve_path(fs, dir) else {
            continue;
        };
        if is_dir(fs, &canon.join(format!("erts-{erts_vsn}"))) {
            return Ok(canon);
        }
        if is_dir(fs, &canon.join("lib")) && !existing.contains(&canon) {
            existing.push(canon);
        }
    }
    match existing.into_iter().next() {
        None => Err(Box::new(Problem::NoOtp { looked })),
        Some(root) => {
            let mut found: Vec<String> = fs
                .read_dir(&root)
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n.to_str()?.strip_prefix("erts-").map(str::to_string))
                .collect();
            found.sort();
            Err(Box::new(Problem::Erts {
                needed: erts_vsn.to_string(),
                otp: otp_version(fs, &root),
                root,
                found,
            }))
        }
    }
}

/// The OTP applications of the release (directories `lib/APP-VSN`) that `root` in `target`
/// lacks in that version, each with the versions of it `root` has.
fn other_otp_versions(
    build: &dyn Fs,
    release: &Path,
    settings: &Settings,
    target: &dyn Fs,
    root: &Path,
) -> Result<Vec<(String, Vec<String>)>, PlanError> {
    let lib = release.join("lib");
    let mut names: Vec<String> = build
        .read_dir(&lib)
        .map_err(|source| PlanError::Read {
            path: lib.clone(),
            source,
        })?
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    let theirs: Vec<String> = target
        .read_dir(&root.join("lib"))
        .unwrap_or_default()
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let mut apps = Vec::new();
    for dir in names {
        let owner = Owner::of(&Path::new("lib").join(&dir), settings);
        if !matches!(owner, Owner::Otp(_)) || is_dir(target, &root.join("lib").join(&dir)) {
            continue;
        }
        let name = dir.split_once('-').map_or(dir.as_str(), |(n, _)| n);
        let mut found: Vec<String> = theirs
            .iter()
            .filter(|n| n.split_once('-').is_some_and(|(a, _)| a == name))
            .cloned()
            .collect();
        found.sort();
        apps.push((dir, found));
    }
    Ok(apps)
}

/// `ROOT/releases/*/OTP_VERSION` (`27.3.4.1`).
fn otp_version(fs: &dyn Fs, root: &Path) -> Option<String> {
    let releases = root.join("releases");
    let mut names = fs.read_dir(&releases).ok()?;
    names.sort();
    names.iter().find_map(|n| {
        let bytes = fs.read(&releases.join(n).join("OTP_VERSION")).ok()?;
        let v = String::from_utf8_lossy(&bytes).trim().to_string();
        (!v.is_empty()).then_some(v)
    })
}

fn is_dir(fs: &dyn Fs, path: &Path) -> bool {
    resolve_path(fs, path)
        .ok()
        .and_then(|(c, _)| fs.lstat(&c).ok())
        .is_some_and(|m| m.kind == Kind::Dir)
}

/// The canonical path of the regular file `path` names in `fs`, if it does.
fn regular_file(fs: &dyn Fs, path: &Path) -> Option<PathBuf> {
    let (canon, _) = resolve_path(fs, path).ok()?;
    (fs.lstat(&canon).ok()?.kind == Kind::File).then_some(canon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::HostFs;

    fn settings() -> Settings {
        Settings {
            own_apps: vec!["hello".into()],
            otp_apps: ["kernel", "crypto", "elixir", "logger"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn owners_come_from_the_path_in_the_release() {
        let s = settings();
        for (path, owner) in [
            ("erts-15.2.7/bin/beam.smp", Owner::Erts),
            (
                "lib/crypto-5.5.3/priv/lib/crypto.so",
                Owner::Otp("crypto".into()),
            ),
            (
                "lib/elixir-1.18.3/priv/x.so",
                Owner::Elixir("elixir".into()),
            ),
            (
                "lib/hello-0.1.0-rc.1/priv/port",
                Owner::Project("hello".into()),
            ),
            (
                "lib/my_nif-0.3.0/priv/native/libmy_nif.so",
                Owner::Dependency("my_nif".into()),
            ),
            ("bin/tool", Owner::Release),
            ("lib", Owner::Release),
            ("releases/0.1.0/x.so", Owner::Release),
        ] {
            assert_eq!(Owner::of(Path::new(path), &s), owner, "{path}");
        }
        assert_eq!(Owner::Otp("crypto".into()).to_string(), "OTP's :crypto");
        assert_eq!(
            Owner::Dependency("my_nif".into()).to_string(),
            "dependency :my_nif"
        );
        assert_eq!(
            Owner::Project("hello".into()).to_string(),
            "the project's :hello"
        );
    }

    #[test]
    fn the_union_reads_overridden_files_from_the_target_and_hides_others() {
        let tmp = tempfile::tempdir().unwrap();
        let (build, target) = (tmp.path().join("build"), tmp.path().join("target"));
        for (root, rel, text) in [
            (&build, "rel/bin/a", "build a"),
            (&build, "rel/bin/b", "build b"),
            (&build, "rel/bin/c", "build c"),
            (&target, "otp/a", "target a"),
            (&target, "etc/x", "target x"),
        ] {
            std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
            std::fs::write(root.join(rel), text).unwrap();
        }
        let (bfs, tfs) = (HostFs::new(&build), HostFs::new(&target));
        let overrides = [
            (PathBuf::from("/rel/bin/a"), Some(PathBuf::from("/otp/a"))),
            (PathBuf::from("/rel/bin/b"), None),
        ]
        .into_iter()
        .collect();
        let fs = ReleaseOnBase::canonical(&bfs, Path::new("/rel"), &tfs).with_overrides(overrides);
        assert_eq!(fs.read(Path::new("/rel/bin/a")).unwrap(), b"target a");
        assert_eq!(fs.lstat(Path::new("/rel/bin/a")).unwrap().size, 8);
        assert_eq!(fs.read(Path::new("/rel/bin/c")).unwrap(), b"build c");
        assert_eq!(fs.read(Path::new("/etc/x")).unwrap(), b"target x");
        let e = fs.lstat(Path::new("/rel/bin/b")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(fs.open(Path::new("/rel/bin/b")).is_err());
        let mut names = fs.read_dir(Path::new("/rel/bin")).unwrap();
        names.sort();
        assert_eq!(names, ["a", "c"], "a hidden file is not listed");
    }

    #[test]
    fn a_refusal_lists_each_problem_on_its_line_and_names_at_most_twenty_files() {
        let files: Vec<NativeFile> = (0..25)
            .map(|i| NativeFile {
                path: format!("lib/dep-1.0.0/priv/f{i:02}.so").into(),
                owner: Owner::Dependency("dep".into()),
            })
            .collect();
        let r = Refusal {
            platform: crate::platform::parse("linux/arm64").unwrap(),
            image: "img:1".into(),
            problems: vec![
                Problem::NotReplaceable { files },
                Problem::Runtime(glibc::Problem::MissingTools {
                    tools: vec!["/bin/sh".into()],
                    path: PATH.into(),
                }),
            ],
        };
        let m = r.to_string();
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines.len(), 3, "{m}");
        assert_eq!(lines[0], "cannot make the linux/arm64/v8 image from img:1:");
        assert!(lines[1].starts_with("  - native files built with the project"));
        assert!(
            lines[1].contains("f19.so (dependency :dep), and 5 more;"),
            "{m}"
        );
        assert!(!lines[1].contains("f20.so"));
        assert!(lines[2].starts_with("  - the linux/arm64/v8 image img:1 has no /bin/sh"));
        let two = Refused(vec![r.clone(), r]).to_string();
        assert_eq!(two.lines().count(), 6);
    }
}
