//! From a release directory to layer specs: what goes into the image, in which layer, and why.
//!
//! The release goes to `/app`. Beside it go the runtime files the release needs, read from the
//! environment that built it through an [`Fs`]: the shared-library closure of every ELF file,
//! `/bin/sh` and the utilities the release scripts call, and a few generated `/etc` files.
//!
//! On a base image ([`plan_on_base`]) the base provides all of that instead: the plan checks that
//! the base can run the release and adds only the release and a few app-owned directories.
//!
//! Supply chain ([`crate::supply`]): the runtime layer also carries the records of the OS
//! packages its files (and ERTS and the OTP applications in `/app`) came from, and the files
//! that tell scanners the distribution ([`DISTRO_FILES`]); the app layer carries the SBOM
//! (`/sbom.spdx.json` or `/sbom.cdx.json`) when [`Settings::sbom`] asks for one. On a base
//! image the records of what we add go in the `dirs` layer; the base's own are left alone.

use crate::closure::{Closure, Resolver};
use crate::elf::{self, Platform};
use crate::fs::{resolve_path, Fs, Kind};
use crate::glibc::{check_release, is_musl_system, Incompatible, Problem, ReleaseOnBase};
use crate::image::RunConfig;
use crate::layer::{Entry, LayerSpec, Source};
use crate::supply::pkgdb::DISTRO_FILES;
use crate::supply::sbom::SbomSpec;
use crate::supply::{survey, Findings, SbomFile, SurveyInput};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the release lives in the image.
pub const APP_DIR: &str = "/app";

/// Directory (outside `/app`) where a container keeps the cookie it generated for itself.
pub const COOKIE_DIR: &str = "/run/release";

/// The utilities the release scripts (`bin/APP`, `releases/VSN/elixir`, `erts-*/bin/erl`) and our
/// cookie snippet call, besides shell built-ins.
pub const SHELL_TOOLS: &[&str] = &[
    "readlink", "dirname", "basename", "cut", "sed", "cat", "grep", "date", "mkdir", "dd", "od",
    "awk",
];

/// The `PATH` of the image; tools are looked up in this order in the build environment too.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// glibc's UTF-8 locale: with it `LANG=C.UTF-8` gives the VM utf8 file name encoding.
const UTF8_LOCALE: &str = "/usr/lib/locale/C.utf8";

/// CA certificates for TLS clients (Debian and Alpine path).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the VM writes `erl_crash.dump`: by default the working directory, `/app`, which the
/// image's user cannot write to, so the dump of a crashed node would be lost. `/tmp` is
/// writable by every user, with or without a base image.
pub const CRASH_DUMP: &str = "ERL_CRASH_DUMP=/tmp/erl_crash.dump";

/// What the caller decides; everything else is derived from the release and the environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The assembled release, as a path in the [`Fs`].
    pub release_dir: PathBuf,
    /// The release name (`bin/<name>` is the entrypoint).
    pub release_name: String,
    /// The project's own applications (their `lib/NAME-VSN` go to the top layer).
    pub own_apps: Vec<String>,
    /// Applications of OTP and Elixir (they go with ERTS).
    pub otp_apps: Vec<String>,
    /// Extra paths of the build environment to copy at the same path (dlopen'ed libraries, data).
    pub extra_files: Vec<PathBuf>,
    /// Numeric user the container runs as.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Extra environment, `NAME=value`, after the defaults (so it overrides them).
    pub env: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Ports to declare, e.g. `4000/tcp`.
    pub exposed_ports: Vec<String>,
    /// Annotations of the image's manifest (`org.opencontainers.image.created`, …).
    pub annotations: BTreeMap<String, String>,
    /// The SBOM to make and embed (`None`: no SBOM).
    pub sbom: Option<SbomSpec>,
}

/// A runtime file and why it is in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeFile {
    /// Path in the image.
    pub path: PathBuf,
    /// Why it is there.
    pub reason: String,
}

/// The planned image contents.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Platform of the release's ERTS.
    pub platform: Platform,
    /// Layers, bottom first; empty ones are left out.
    pub layers: Vec<LayerSpec>,
    /// Run configuration.
    pub run_config: RunConfig,
    /// The runtime files outside `/app`, with reasons.
    pub runtime_files: Vec<RuntimeFile>,
    /// What the user should know about the plan (files left out, permissions kept private).
    pub notices: Vec<String>,
    /// Annotations of the image's manifest.
    pub annotations: BTreeMap<String, String>,
    /// The SBOM embedded in the image (also what `--sbom` writes and a push attaches).
    pub sbom: Option<SbomFile>,
}

impl Plan {
    /// A plan of these layers, bottom first, leaving out the empty ones.
    fn new(
        platform: Platform,
        layers: impl IntoIterator<Item = LayerSpec>,
        run_config: RunConfig,
        runtime_files: Vec<RuntimeFile>,
        notices: Vec<String>,
    ) -> Plan {
        Plan {
            platform,
            layers: layers
                .into_iter()
                .filter(|l| !l.entries.is_empty())
                .collect(),
            run_config,
            runtime_files,
            notices,
            annotations: BTreeMap::new(),
            sbom: None,
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The release directory is missing or not a release.
    #[error("{path} is not an assembled release: {why}. Run `mix release` or pass the release's directory")]
    NotARelease {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// ERTS is not a Linux ELF executable.
    #[error("{path} is not a Linux executable: this release was built for another OS (macOS?). A Linux image needs a release built on Linux: build it in a Linux builder container")]
    NotLinux {
        /// The ERTS executable.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A runtime file could not be found or resolved.
    #[error(transparent)]
    Closure(#[from] crate::closure::ClosureError),
    /// A path of `extra_files` cannot go into an image.
    #[error("extra_files: {} {why}", path.display())]
    ExtraFile {
        /// The path as given.
        path: PathBuf,
        /// Why not, and what to do.
        why: String,
    },
    /// A required program is missing from the build environment.
    #[error("{0} was not found in the build environment ({PATH}); the release scripts need it. Install it there or add it with extra_files")]
    MissingTool(String),
}

impl PlanError {
    /// The error for a failed read of `path`, for `map_err`.
    fn read(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError {
        let path = path.to_path_buf();
        move |source| PlanError::Read { path, source }
    }
}

/// Make the plan for `settings`, reading the release and the build environment through `fs`.
pub fn plan(fs: &dyn Fs, settings: &Settings) -> Result<Plan, PlanError> {
    let rel = &settings.release_dir;
    let ReleaseFacts {
        erts_vsn,
        rel_vsn,
        platform,
    } = release_facts(fs, settings)?;

    // Runtime files: the closure of every ELF file in the release, the shell and its tools,
    // the UTF-8 locale, the CA bundle and whatever the user added.
    // Every root is tried even after one fails (so one pass over a lazily fetched filesystem
    // asks for everything it can reach); the first problem is returned.
    let mut first_err: Option<PlanError> = None;
    let mut keep = |r: Result<(), PlanError>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    let mut resolver = Resolver::new(fs, vec![rel.clone()]);
    for f in elf::find_elf_files(fs, rel).map_err(PlanError::read(rel))? {
        keep(resolver.add(&f, "release ELF file").map_err(Into::into));
    }
    keep(
        resolver
            .add(Path::new("/bin/sh"), "shell for the release scripts")
            .map_err(Into::into),
    );
    for tool in SHELL_TOOLS {
        let found = PATH
            .split(':')
            .map(|d| Path::new(d).join(tool))
            .find(|p| fs.exists(p))
            .ok_or_else(|| PlanError::MissingTool(tool.to_string()));
        keep(found.and_then(|f| {
            resolver
                .add(&f, "called by the release scripts")
                .map_err(Into::into)
        }));
    }
    let has_locale = fs.exists(Path::new(UTF8_LOCALE));
    if has_locale {
        keep(
            resolver
                .add(Path::new(UTF8_LOCALE), "UTF-8 locale (utf8 file names)")
                .map_err(Into::into),
        );
    }
    if fs.exists(Path::new(CA_BUNDLE)) {
        keep(
            resolver
                .add(Path::new(CA_BUNDLE), "CA certificates for TLS clients")
                .map_err(Into::into),
        );
    }
    for file in DISTRO_FILES {
        let file = Path::new(file);
        if fs.exists(file) {
            keep(
                resolver
                    .add(file, "tells vulnerability scanners the distribution")
                    .map_err(Into::into),
            );
        }
    }
    for extra in &settings.extra_files {
        keep(check_extra(fs, extra).and_then(|()| {
            resolver
                .add(extra, EXTRA_FILES)
                .map_err(|e| extra_error(extra, e))
        }));
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let closure = resolver.finish();
    let mut notices = skipped_notice(&closure.skipped);

    let (mut runtime, mut runtime_files) = runtime_layer(fs, &closure, settings, &mut notices)?;
    let (otp, deps, mut app) = release_layers(fs, settings, &erts_vsn, &rel_vsn)?;
    let findings = survey(&SurveyInput {
        fs,
        release_dir: rel,
        erts_vsn: &erts_vsn,
        own_apps: &settings.own_apps,
        otp_apps: &settings.otp_apps,
        copied: copied_paths(fs, &closure),
        sbom: settings.sbom.as_ref(),
        base: None,
    })
    .map_err(survey_error)?;
    let sbom = add_findings(
        findings,
        &mut runtime,
        &mut app,
        &mut runtime_files,
        &mut notices,
        |p| p.to_path_buf(),
    );

    let mut env = vec![format!("PATH={PATH}")];
    if has_locale {
        env.push("LANG=C.UTF-8".into());
    } else {
        // No locale files: ask the VM for utf8 file names directly.
        env.push("ELIXIR_ERL_OPTIONS=+fnu".into());
    }
    env.push("HOME=/home/app".into());
    env.push(CRASH_DUMP.into());
    env.extend(settings.env.iter().cloned());
    let run_config = RunConfig {
        entrypoint: vec![format!("{APP_DIR}/bin/{}", settings.release_name)],
        cmd: vec!["start".into()],
        env,
        working_dir: APP_DIR.into(),
        user: format!("{}:{}", settings.uid, settings.gid),
        labels: settings.labels.clone(),
        exposed_ports: settings.exposed_ports.clone(),
        stop_signal: None,
    };
    let mut plan = Plan::new(
        platform,
        [runtime, otp, deps, app],
        run_config,
        runtime_files,
        notices,
    );
    plan.annotations = settings.annotations.clone();
    plan.sbom = sbom;
    Ok(plan)
}

/// The paths of the build environment the closure copies at the same path that a package may
/// own: files and symlinks, not symlinks to directories (`/lib -> usr/lib`: a directory has
/// many owners).
fn copied_paths(fs: &dyn Fs, closure: &Closure) -> Vec<PathBuf> {
    closure
        .entries
        .iter()
        .filter(|(path, e)| match e.kind {
            Kind::File => true,
            Kind::Symlink => !resolve_path(fs, path)
                .ok()
                .and_then(|(c, _)| fs.lstat(&c).ok())
                .is_some_and(|m| m.kind == Kind::Dir),
            _ => false,
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// A package database that cannot be read, as a plan error.
fn survey_error(source: std::io::Error) -> PlanError {
    PlanError::Read {
        path: PathBuf::from("the build environment's package database"),
        source,
    }
}

/// Put the records in `records_layer` (at `place(path)`) and the SBOM in `app`, with why, and
/// pass the notices on. Returns the SBOM.
fn add_findings(
    findings: Findings,
    records_layer: &mut LayerSpec,
    app: &mut LayerSpec,
    files: &mut Vec<RuntimeFile>,
    notices: &mut Vec<String>,
    place: impl Fn(&Path) -> PathBuf,
) -> Option<SbomFile> {
    for (path, bytes, reason) in findings.records {
        let path = place(&path);
        records_layer
            .entries
            .push(Entry::new(path.clone(), Source::Bytes(bytes), 0o644));
        files.push(RuntimeFile { path, reason });
    }
    notices.extend(findings.notices);
    let sbom = findings.sbom?;
    let path = PathBuf::from(sbom.image_path());
    app.entries.push(Entry::new(
        path.clone(),
        Source::Bytes(sbom.bytes.clone()),
        0o644,
    ));
    files.push(RuntimeFile {
        path,
        reason: format!("the SBOM ({})", sbom.format.describe()),
    });
    Some(sbom)
}

/// The reason recorded for paths of `extra_files`.
const EXTRA_FILES: &str = "extra_files";

/// Where the container runtime mounts its own filesystems over the image: nothing there can be
/// copied into one (the files of `/proc` and `/sys` are generated when read, and report a size
/// of 0).
const RUNTIME_MOUNTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Refuse an `extra_files` path under [`RUNTIME_MOUNTS`], as given or once resolved.
fn check_extra(fs: &dyn Fs, extra: &Path) -> Result<(), PlanError> {
    let canon = resolve_path(fs, extra).map(|(c, _)| c).ok();
    let under = |p: &Path| RUNTIME_MOUNTS.iter().find(|m| p.starts_with(m)).copied();
    match under(extra).or_else(|| canon.as_deref().and_then(under)) {
        Some(mount) => Err(PlanError::ExtraFile {
            path: extra.to_path_buf(),
            why: format!(
                "is under {mount}: the container runtime mounts its own /proc, /sys and /dev over the image when a container starts, so it cannot be copied into an image. Copy what you need into a regular file and add that"
            ),
        }),
        None => Ok(()),
    }
}

/// A closure error about an `extra_files` path itself, said as such.
fn extra_error(extra: &Path, e: crate::closure::ClosureError) -> PlanError {
    match e {
        crate::closure::ClosureError::Special { .. } => PlanError::ExtraFile {
            path: extra.to_path_buf(),
            why: "is a device, FIFO or socket: only files, directories and symlinks can be copied into an image".into(),
        },
        other => other.into(),
    }
}

/// The notice for devices, FIFOs and sockets left out of added directories.
fn skipped_notice(skipped: &[PathBuf]) -> Vec<String> {
    if skipped.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "left out of the image: {} (devices, FIFOs and sockets inside extra_files directories cannot be in an image)",
        list_paths(skipped)
    )]
}

/// Up to five paths, then how many more.
fn list_paths(paths: &[PathBuf]) -> String {
    let mut shown: Vec<String> = paths
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > 5 {
        shown.push(format!("and {} more", paths.len() - 5));
    }
    shown.join(", ")
}

/// The mode an `extra_files` entry gets: the normal one ([`crate::layer::normal_mode`]) when
/// others may read it where it was built; otherwise it stays private: `0600` (`0700` when
/// executable), owned by root. Widening a file like `/etc/shadow` to `0644` would hand it to
/// every user of the container.
fn extra_mode(kind: Kind, mode: u32) -> Option<u32> {
    if mode & 0o004 != 0 || kind != Kind::File {
        return None;
    }
    Some(if mode & 0o111 != 0 { 0o700 } else { 0o600 })
}

/// The notice for `extra_files` kept private.
fn private_notice(private: &[PathBuf], uid: u32) -> Vec<String> {
    if private.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "extra_files not readable by others where they were built stay private in the image (mode 0600 or 0700, owned by root), so the app's user {uid} cannot read them: {}. Make them world-readable there if the app needs them",
        list_paths(private)
    )]
}

/// What the release's own files say: ERTS and release versions, and the platform of ERTS.
pub(crate) struct ReleaseFacts {
    pub(crate) erts_vsn: String,
    pub(crate) rel_vsn: String,
    pub(crate) platform: Platform,
}

/// Check that `settings.release_dir` is an assembled release with ERTS and read its facts.
pub(crate) fn release_facts(fs: &dyn Fs, settings: &Settings) -> Result<ReleaseFacts, PlanError> {
    let rel = &settings.release_dir;
    if !matches!(fs.lstat(rel).map(|m| m.kind), Ok(Kind::Dir)) {
        return Err(PlanError::NotARelease {
            path: rel.clone(),
            why: "the directory does not exist".into(),
        });
    }
    let start_erl = rel.join("releases/start_erl.data");
    let start_erl_data = fs.read(&start_erl).map_err(|_| PlanError::NotARelease {
        path: rel.clone(),
        why: "releases/start_erl.data is missing".into(),
    })?;
    let start_erl_data = String::from_utf8_lossy(&start_erl_data);
    let mut words = start_erl_data.split_whitespace();
    let (erts_vsn, rel_vsn) = match (words.next(), words.next()) {
        (Some(e), Some(r)) => (e.to_string(), r.to_string()),
        _ => {
            return Err(PlanError::NotARelease {
                path: rel.clone(),
                why: "releases/start_erl.data does not hold an ERTS and a release version".into(),
            })
        }
    };
    let beam = rel.join(format!("erts-{erts_vsn}/bin/beam.smp"));
    let head = fs.read_head(&beam, 64).map_err(|_| PlanError::NotARelease {
        path: rel.clone(),
        why: format!("erts-{erts_vsn}/bin/beam.smp is missing (a release for an image must include ERTS: include_erts: true)"),
    })?;
    let platform = elf::platform_of(&head).ok_or(PlanError::NotLinux { path: beam.clone() })?;
    if !fs.exists(&rel.join("bin").join(&settings.release_name)) {
        return Err(PlanError::NotARelease {
            path: rel.clone(),
            why: format!("bin/{} is missing", settings.release_name),
        });
    }

    Ok(ReleaseFacts {
        erts_vsn,
        rel_vsn,
        platform,
    })
}

/// A directory the image gets: path, mode, owner, group, why.
type OwnedDir = (String, u32, u32, u32, &'static str);

/// The directories the release writes to, owned by the app's user (with or without a base).
fn app_owned_dirs(uid: u32, gid: u32) -> Vec<OwnedDir> {
    vec![
        (
            format!("{APP_DIR}/tmp"),
            0o755,
            uid,
            gid,
            "RELEASE_TMP, owned by the app's user",
        ),
        (
            COOKIE_DIR.into(),
            0o700,
            uid,
            gid,
            "the per-container cookie, owned by the app's user",
        ),
    ]
}

fn runtime_layer(
    fs: &dyn Fs,
    closure: &Closure,
    s: &Settings,
    notices: &mut Vec<String>,
) -> Result<(LayerSpec, Vec<RuntimeFile>), PlanError> {
    let mut entries = Vec::new();
    let mut files = Vec::new();
    let mut private = Vec::new();
    for (path, e) in &closure.entries {
        let meta = fs.lstat(path).map_err(PlanError::read(path))?;
        let source = match e.kind {
            Kind::Symlink => Source::Symlink(fs.read_link(path).map_err(PlanError::read(path))?),
            Kind::Dir => Source::Dir,
            _ => Source::File(path.clone()),
        };
        let entry = Entry::new(path.clone(), source, meta.mode);
        match extra_mode(e.kind, meta.mode).filter(|_| e.reason == EXTRA_FILES) {
            Some(mode) => {
                private.push(path.clone());
                entries.push(entry.owned(mode, 0, 0));
            }
            None => entries.push(entry),
        }
        files.push(RuntimeFile {
            path: path.clone(),
            reason: e.reason.clone(),
        });
    }
    notices.extend(private_notice(&private, s.uid));
    for (link, target) in &closure.extra_links {
        entries.push(Entry::new(
            link.clone(),
            Source::Symlink(target.clone()),
            0o777,
        ));
        files.push(RuntimeFile {
            path: link.clone(),
            reason: format!(
                "link to {} (found through ld.so.conf, which the image's loader does not read)",
                target.display()
            ),
        });
    }
    let (uid, gid) = (s.uid, s.gid);
    let generated: Vec<(&str, String, &str)> = vec![
        (
            "/etc/passwd",
            format!("root:x:0:0:root:/root:/bin/sh\napp:x:{uid}:{gid}:app:/home/app:/bin/sh\n"),
            "users: root and the app's non-root user",
        ),
        (
            "/etc/group",
            format!("root:x:0:\napp:x:{gid}:\n"),
            "groups: root and the app's group",
        ),
        (
            "/etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".to_string(),
            "name lookups: files, then DNS",
        ),
    ];
    for (path, content, reason) in generated {
        entries.push(Entry::new(path, Source::Bytes(content.into_bytes()), 0o644));
        files.push(RuntimeFile {
            path: path.into(),
            reason: reason.into(),
        });
    }
    let mut dirs: Vec<OwnedDir> = vec![(
        "/tmp".into(),
        0o1777,
        0,
        0,
        "temporary files, writable by all",
    )];
    dirs.extend(app_owned_dirs(uid, gid));
    dirs.push(("/home/app".into(), 0o700, uid, gid, "the app user's home"));
    for (path, mode, u, g, reason) in dirs {
        entries.push(Entry::new(path.clone(), Source::Dir, mode).owned(mode, u, g));
        files.push(RuntimeFile {
            path: path.into(),
            reason: reason.into(),
        });
    }
    Ok((
        LayerSpec {
            name: "runtime".into(),
            entries,
        },
        files,
    ))
}

/// The snippet appended to the image's `releases/VSN/env.sh`: the release script sources it
/// before it reads `releases/COOKIE`, which the image does not have. The script exports
/// `RELEASE_COMMAND` before sourcing `env.sh`: the notice about a generated cookie is printed
/// by the commands that start the node (`start`, `daemon`, their `_iex` forms), not by each
/// `eval`, `rpc` or `remote`.
pub const COOKIE_SNIPPET: &str = r#"
# Added by docker_release: this image ships no build-time cookie.
if [ -z "${RELEASE_COOKIE:-}" ]; then
  __dr_dir=/run/release
  [ -w "$__dr_dir" ] || __dr_dir=/tmp
  __dr_file="$__dr_dir/COOKIE"
  if [ ! -s "$__dr_file" ]; then
    __dr_cookie=$(dd if=/dev/urandom bs=32 count=1 2>/dev/null | od -An -tx1 | awk '{for (i = 1; i <= NF; i++) s = s $i} END {print s}')
    if [ -n "$__dr_cookie" ] && (umask 077; set -C; echo "$__dr_cookie" >"$__dr_file") 2>/dev/null; then
      case "${RELEASE_COMMAND:-}" in
        start|start_iex|daemon|daemon_iex)
          echo "docker_release: RELEASE_COOKIE is not set; generated a cookie for this container in $__dr_file (set RELEASE_COOKIE to connect nodes across containers)" >&2 ;;
      esac
    fi
  fi
  RELEASE_COOKIE=$(cat "$__dr_file" 2>/dev/null || true)
  if [ -z "$RELEASE_COOKIE" ]; then
    echo "docker_release: RELEASE_COOKIE is not set and no cookie could be kept in $__dr_file; set RELEASE_COOKIE" >&2
    exit 1
  fi
  export RELEASE_COOKIE
  unset __dr_dir __dr_file __dr_cookie
fi
"#;

type Layers = (LayerSpec, LayerSpec, LayerSpec);

fn release_layers(
    fs: &dyn Fs,
    s: &Settings,
    erts_vsn: &str,
    rel_vsn: &str,
) -> Result<Layers, PlanError> {
    let mut otp = LayerSpec {
        name: "erts".into(),
        entries: vec![],
    };
    let mut deps = LayerSpec {
        name: "deps".into(),
        entries: vec![],
    };
    let mut app = LayerSpec {
        name: "app".into(),
        entries: vec![],
    };
    let root = &s.release_dir;
    let cookie = Path::new("releases/COOKIE");
    let env_sh = PathBuf::from(format!("releases/{rel_vsn}/env.sh"));
    let erts_dir = format!("erts-{erts_vsn}");
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let src = root.join(&rel);
        let names = fs.read_dir(&src).map_err(PlanError::read(&src))?;
        for name in names {
            let rel = rel.join(&name);
            let src = root.join(&rel);
            if rel == cookie || rel == Path::new("tmp") {
                // Never ship the build-time cookie, nor the release's `tmp/` (RELEASE_TMP): a
                // release run on the build machine leaves logs there whose command lines carry
                // the cookie. The image gets an empty, app-owned `/app/tmp` instead.
                continue;
            }
            let meta = fs.lstat(&src).map_err(PlanError::read(&src))?;
            let dest = Path::new(APP_DIR).join(&rel);
            let source = match meta.kind {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Source::Dir
                }
                Kind::Symlink => {
                    Source::Symlink(fs.read_link(&src).map_err(PlanError::read(&src))?)
                }
                Kind::File if rel == env_sh => {
                    let mut bytes = fs.read(&src).map_err(PlanError::read(&src))?;
                    bytes.extend_from_slice(COOKIE_SNIPPET.as_bytes());
                    Source::Bytes(bytes)
                }
                Kind::File => Source::File(src.clone()),
                Kind::Other => continue,
            };
            let entry = Entry::new(dest, source, meta.mode);
            let target = match layer_of(&rel, &erts_dir, s) {
                Which::Otp => &mut otp,
                Which::Deps => &mut deps,
                Which::App => &mut app,
            };
            target.entries.push(entry);
        }
    }
    Ok((otp, deps, app))
}

enum Which {
    Otp,
    Deps,
    App,
}

/// Layer of a path relative to the release root: ERTS and OTP/Elixir apps change least, then
/// dependencies, then the project's own apps with `releases/` and `bin/`.
fn layer_of(rel: &Path, erts_dir: &str, s: &Settings) -> Which {
    let mut comps = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let first = comps.next().unwrap_or_default();
    if first == erts_dir {
        return Which::Otp;
    }
    if first != "lib" {
        return Which::App;
    }
    let Some(app_dir) = comps.next() else {
        return Which::Otp; // `lib` itself
    };
    // Application names cannot contain '-', versions can (`hello-0.1.0-rc.1`).
    let name = app_dir.split_once('-').map_or(&*app_dir, |(n, _)| n);
    if s.own_apps.iter().any(|a| a == name) {
        Which::App
    } else if s.otp_apps.iter().any(|a| a == name) {
        Which::Otp
    } else {
        Which::Deps
    }
}

// ---------------------------------------------------------------------------------------------
// Base mode: the release on top of a base image's layers.

/// A base image as the plan sees it: its filesystem (its layers unpacked) and the parts of its
/// config the image inherits. `image_io::base::LoadedBase::plan_base` makes one.
pub struct Base<'a> {
    /// The reference, for messages (`debian:bookworm-slim`).
    pub reference: String,
    /// The base's merged filesystem.
    pub fs: &'a dyn Fs,
    /// The base's platform (from its config).
    pub platform: Platform,
    /// The base config's `Env`: the image's environment starts from it.
    pub env: Vec<String>,
    /// The base config's `Labels`: ours are added (and win).
    pub labels: BTreeMap<String, String>,
    /// The base config's `ExposedPorts`: ours are added.
    pub exposed_ports: Vec<String>,
    /// The base config's `StopSignal`.
    pub stop_signal: Option<String>,
}

/// Why a plan on a base image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BasePlanError {
    /// The release itself is the problem (not a release, unreadable files).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The base image cannot run the release.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
}

impl From<crate::closure::ClosureError> for BasePlanError {
    fn from(e: crate::closure::ClosureError) -> Self {
        BasePlanError::Plan(e.into())
    }
}

/// glibc's UTF-8 locale as Debian 11 and older name it.
const UTF8_LOCALE_OLD: &str = "/usr/lib/locale/C.UTF-8";

/// `HOME` on a base image: the app's numeric user has no entry in the base's `/etc/passwd`
/// (which is the distribution's and is left alone), and `/tmp` is writable by everyone.
pub const BASE_HOME: &str = "/tmp";

/// The platform of the release's ERTS (to pick a base image's manifest before planning).
pub fn release_platform(fs: &dyn Fs, settings: &Settings) -> Result<Platform, PlanError> {
    Ok(release_facts(fs, settings)?.platform)
}

/// The plan of the release on top of `base`: no runtime layer (the base provides the shared
/// libraries, the shell and `/etc`); a small `dirs` layer (`/app/tmp` and `/run/release` owned by
/// the app's user, `/tmp` if the base lacks it, `extra_files`) and the release layers as in
/// [`plan`]. The base's own layers are not in the plan: they are added to the built image with
/// `Image::on_base`.
///
/// First the base is checked: same platform; every ELF file of the release loads on the base
/// (its libraries, their loader and the symbol versions it needs, see [`crate::glibc`]); `/bin/sh`
/// and [`SHELL_TOOLS`] (the release scripts and the cookie snippet call them) on the base's
/// `PATH`. A base that fails any check is refused with every problem found.
///
/// The environment starts from the base's (its `PATH`, ...), then `LANG=C.UTF-8` when the base
/// has that locale (else `ELIXIR_ERL_OPTIONS=+fnu`), `HOME=/tmp`, then `settings.env`; a later
/// value of a name replaces an earlier one in place. The base's `/etc/passwd` is not touched:
/// the numeric user needs no entry.
pub fn plan_on_base(
    fs: &dyn Fs,
    settings: &Settings,
    base: &Base<'_>,
) -> Result<Plan, BasePlanError> {
    let ReleaseFacts {
        erts_vsn,
        rel_vsn,
        platform,
    } = release_facts(fs, settings)?;
    let incompatible = |problems| Incompatible {
        base: base.reference.clone(),
        problems,
    };
    if !same_platform(&base.platform, &platform) {
        return Err(incompatible(vec![Problem::Platform {
            base: base.platform.to_string(),
            release: platform.to_string(),
        }])
        .into());
    }
    let union = ReleaseOnBase::new(fs, &settings.release_dir, base.fs)
        .map_err(PlanError::read(&settings.release_dir))?;
    let mut problems = check_release(&union)?;
    let path = env_value(&base.env, "PATH").unwrap_or(PATH).to_string();
    problems.extend(missing_tools(base.fs, &path));
    if !problems.is_empty() {
        return Err(incompatible(problems).into());
    }

    let mut notices = Vec::new();
    let (mut dirs, mut runtime_files, copied) = base_dirs_layer(fs, settings, base, &mut notices)?;
    let (otp, deps, mut app) = release_layers(fs, settings, &erts_vsn, &rel_vsn)?;
    // Records of the packages of what we add (ERTS, OTP applications, extra_files), from the
    // build environment; the base's own records and distribution files stay as they are.
    let findings = survey(&SurveyInput {
        fs,
        release_dir: &settings.release_dir,
        erts_vsn: &erts_vsn,
        own_apps: &settings.own_apps,
        otp_apps: &settings.otp_apps,
        copied,
        sbom: settings.sbom.as_ref(),
        base: Some(&base.reference),
    })
    .map_err(survey_error)?;
    let sbom = add_findings(
        findings,
        &mut dirs,
        &mut app,
        &mut runtime_files,
        &mut notices,
        |p| in_base(base.fs, p),
    );

    let has_locale = is_musl_system(base.fs)
        || [UTF8_LOCALE, UTF8_LOCALE_OLD]
            .iter()
            .any(|p| resolve_path(base.fs, Path::new(p)).is_ok());
    let mut env = base.env.clone();
    if env_value(&env, "PATH").is_none() {
        env.push(format!("PATH={PATH}"));
    }
    if has_locale {
        env.push("LANG=C.UTF-8".into());
    } else {
        env.push("ELIXIR_ERL_OPTIONS=+fnu".into());
    }
    env.push(format!("HOME={BASE_HOME}"));
    env.push(CRASH_DUMP.into());
    env.extend(settings.env.iter().cloned());
    let mut labels = base.labels.clone();
    labels.extend(settings.labels.clone());
    let mut exposed_ports = base.exposed_ports.clone();
    for p in &settings.exposed_ports {
        if !exposed_ports.contains(p) {
            exposed_ports.push(p.clone());
        }
    }
    let run_config = RunConfig {
        entrypoint: vec![format!("{APP_DIR}/bin/{}", settings.release_name)],
        cmd: vec!["start".into()],
        env: merge_env(env),
        working_dir: APP_DIR.into(),
        user: format!("{}:{}", settings.uid, settings.gid),
        labels,
        exposed_ports,
        stop_signal: base.stop_signal.clone(),
    };
    let mut plan = Plan::new(
        platform,
        [dirs, otp, deps, app],
        run_config,
        runtime_files,
        notices,
    );
    plan.annotations = settings.annotations.clone();
    plan.sbom = sbom;
    Ok(plan)
}

/// `/bin/sh` and the [`SHELL_TOOLS`] missing from `fs` (looked up in `path`, a `PATH` value),
/// as one problem; none when all are there.
pub(crate) fn missing_tools(fs: &dyn Fs, path: &str) -> Option<Problem> {
    let is_file = |p: &Path| {
        resolve_path(fs, p)
            .ok()
            .and_then(|(c, _)| fs.lstat(&c).ok())
            .is_some_and(|m| m.kind == Kind::File)
    };
    let mut missing: Vec<String> = Vec::new();
    if !is_file(Path::new("/bin/sh")) {
        missing.push("/bin/sh".into());
    }
    for tool in SHELL_TOOLS {
        let found = path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .any(|d| is_file(&Path::new(d).join(tool)));
        if !found {
            missing.push(tool.to_string());
        }
    }
    (!missing.is_empty()).then(|| Problem::MissingTools {
        tools: missing,
        path: path.to_string(),
    })
}

/// Same OS and architecture; variants must agree only when both are given (`arm64` configs
/// often omit `v8`).
pub fn same_platform(a: &Platform, b: &Platform) -> bool {
    a.os == b.os
        && a.architecture == b.architecture
        && match (&a.variant, &b.variant) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// The value of `name` in a `NAME=value` list (the last one wins, as for a process).
fn env_value<'e>(env: &'e [String], name: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
}

/// One entry per name: a later `NAME=value` replaces an earlier one at the earlier position.
///
/// ```
/// # use image_core::plan::merge_env;
/// let env = merge_env(vec!["PATH=/bin".into(), "LANG=C".into(), "LANG=C.UTF-8".into(), "X".into()]);
/// assert_eq!(env, vec!["PATH=/bin", "LANG=C.UTF-8", "X"]);
/// ```
pub fn merge_env(env: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in env {
        let name = e.split('=').next().unwrap_or_default();
        match out
            .iter_mut()
            .find(|o| o.split('=').next().unwrap_or_default() == name)
        {
            Some(slot) => *slot = e,
            None => out.push(e),
        }
    }
    out
}

/// `path` as the base's filesystem reaches it: the longest existing prefix resolved (so an entry
/// under a symlinked directory such as `/var/run -> /run` goes to the directory, and the layer
/// never replaces the base's symlink with a directory), the rest appended.
fn in_base(base: &dyn Fs, path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    let mut comps = path.components().skip(1).peekable();
    while let Some(c) = comps.next() {
        let next = out.join(c);
        match resolve_path(base, &next) {
            Ok((canon, _)) if comps.peek().is_some() => out = canon,
            _ => {
                out = next;
                for rest in comps.by_ref() {
                    out.push(rest);
                }
            }
        }
    }
    out
}

fn base_dirs_layer(
    fs: &dyn Fs,
    s: &Settings,
    base: &Base<'_>,
    notices: &mut Vec<String>,
) -> Result<(LayerSpec, Vec<RuntimeFile>, Vec<PathBuf>), PlanError> {
    let (uid, gid) = (s.uid, s.gid);
    let mut entries = Vec::new();
    let mut files = Vec::new();
    // Files and symlinks of the build environment that extra_files copy (for their packages).
    let mut copied = Vec::new();
    let mut dirs = app_owned_dirs(uid, gid);
    if resolve_path(base.fs, Path::new("/tmp")).is_err() {
        dirs.push((
            "/tmp".into(),
            0o1777,
            0,
            0,
            "temporary files and HOME, writable by all (the base has no /tmp)",
        ));
    }
    for (path, mode, u, g, reason) in dirs {
        let path = in_base(base.fs, Path::new(&path));
        entries.push(Entry::new(path.clone(), Source::Dir, mode).owned(mode, u, g));
        files.push(RuntimeFile {
            path,
            reason: reason.into(),
        });
    }
    // extra_files come from the build environment, as they are: no library closure (the base
    // provides libraries), symlinks inside directories kept as symlinks.
    let (mut private, mut skipped) = (Vec::new(), Vec::new());
    for extra in &s.extra_files {
        check_extra(fs, extra)?;
        let (canon, _) = resolve_path(fs, extra).map_err(PlanError::read(extra))?;
        let mut stack = vec![(canon, in_base(base.fs, extra))];
        let mut top = true;
        while let Some((src, dest)) = stack.pop() {
            let meta = fs.lstat(&src).map_err(PlanError::read(&src))?;
            let source = match meta.kind {
                Kind::Dir => {
                    let names = fs.read_dir(&src).map_err(PlanError::read(&src))?;
                    for n in names {
                        stack.push((src.join(&n), dest.join(&n)));
                    }
                    Source::Dir
                }
                Kind::Symlink => {
                    copied.push(src.clone());
                    Source::Symlink(fs.read_link(&src).map_err(PlanError::read(&src))?)
                }
                Kind::File => {
                    copied.push(src.clone());
                    Source::File(src.clone())
                }
                Kind::Other if top => {
                    return Err(extra_error(
                        extra,
                        crate::closure::ClosureError::Special { path: src },
                    ))
                }
                Kind::Other => {
                    skipped.push(src);
                    continue;
                }
            };
            top = false;
            let entry = Entry::new(dest.clone(), source, meta.mode);
            match extra_mode(meta.kind, meta.mode) {
                Some(mode) => {
                    private.push(dest.clone());
                    entries.push(entry.owned(mode, 0, 0));
                }
                None => entries.push(entry),
            }
            files.push(RuntimeFile {
                path: dest,
                reason: EXTRA_FILES.into(),
            });
        }
    }
    notices.extend(skipped_notice(&skipped));
    notices.extend(private_notice(&private, uid));
    Ok((
        LayerSpec {
            name: "dirs".into(),
            entries,
        },
        files,
        copied,
    ))
}
