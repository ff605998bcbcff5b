//! From a release directory to layer specs: what goes into the image, in which layer, and why.
//!
//! The release goes to `/app`. Beside it go the runtime files the release needs, read from the
//! environment that built it through an [`Fs`]: the shared-library closure of every ELF file,
//! `/bin/sh` and the utilities the release scripts call, and a few generated `/etc` files.

use crate::closure::{Closure, Resolver};
use crate::elf::{self, Platform};
use crate::fs::{Fs, Kind};
use crate::image::RunConfig;
use crate::layer::{Entry, LayerSpec, Source};
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
    /// A required program is missing from the build environment.
    #[error("{0} was not found in the build environment ({PATH}); the release scripts need it. Install it there or add it with extra_files")]
    MissingTool(String),
}

/// Make the plan for `settings`, reading the release and the build environment through `fs`.
pub fn plan(fs: &dyn Fs, settings: &Settings) -> Result<Plan, PlanError> {
    let rel = &settings.release_dir;
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlanError::Read { path, source }
    };
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

    // Runtime files: the closure of every ELF file in the release, the shell and its tools,
    // the UTF-8 locale, the CA bundle and whatever the user added.
    let mut resolver = Resolver::new(fs, vec![rel.clone()]);
    for f in elf::find_elf_files(fs, rel).map_err(read_err(rel))? {
        resolver.add(&f, "release ELF file")?;
    }
    resolver.add(Path::new("/bin/sh"), "shell for the release scripts")?;
    for tool in SHELL_TOOLS {
        let found = PATH
            .split(':')
            .map(|d| Path::new(d).join(tool))
            .find(|p| fs.exists(p))
            .ok_or_else(|| PlanError::MissingTool(tool.to_string()))?;
        resolver.add(&found, "called by the release scripts")?;
    }
    let has_locale = fs.exists(Path::new(UTF8_LOCALE));
    if has_locale {
        resolver.add(Path::new(UTF8_LOCALE), "UTF-8 locale (utf8 file names)")?;
    }
    if fs.exists(Path::new(CA_BUNDLE)) {
        resolver.add(Path::new(CA_BUNDLE), "CA certificates for TLS clients")?;
    }
    for extra in &settings.extra_files {
        resolver.add(extra, "extra_files")?;
    }
    let closure = resolver.finish();

    let (runtime, runtime_files) = runtime_layer(fs, &closure, settings)?;
    let (otp, deps, app) = release_layers(fs, settings, &erts_vsn, &rel_vsn)?;

    let mut env = vec![format!("PATH={PATH}")];
    if has_locale {
        env.push("LANG=C.UTF-8".into());
    } else {
        // No locale files: ask the VM for utf8 file names directly.
        env.push("ELIXIR_ERL_OPTIONS=+fnu".into());
    }
    env.push("HOME=/home/app".into());
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
    let layers = [runtime, otp, deps, app]
        .into_iter()
        .filter(|l| !l.entries.is_empty())
        .collect();
    Ok(Plan {
        platform,
        layers,
        run_config,
        runtime_files,
    })
}

fn runtime_layer(
    fs: &dyn Fs,
    closure: &Closure,
    s: &Settings,
) -> Result<(LayerSpec, Vec<RuntimeFile>), PlanError> {
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for (path, e) in &closure.entries {
        let meta = fs.lstat(path).map_err(|source| PlanError::Read {
            path: path.clone(),
            source,
        })?;
        let source = match e.kind {
            Kind::Symlink => {
                Source::Symlink(fs.read_link(path).map_err(|source| PlanError::Read {
                    path: path.clone(),
                    source,
                })?)
            }
            Kind::Dir => Source::Dir,
            _ => Source::File(path.clone()),
        };
        entries.push(Entry::new(path.clone(), source, meta.mode));
        files.push(RuntimeFile {
            path: path.clone(),
            reason: e.reason.clone(),
        });
    }
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
    let dirs: Vec<(String, u32, u32, u32, &str)> = vec![
        (
            "/tmp".into(),
            0o1777,
            0,
            0,
            "temporary files, writable by all",
        ),
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
        ("/home/app".into(), 0o700, uid, gid, "the app user's home"),
    ];
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
/// before it reads `releases/COOKIE`, which the image does not have.
pub const COOKIE_SNIPPET: &str = r#"
# Added by docker_release: this image ships no build-time cookie.
if [ -z "${RELEASE_COOKIE:-}" ]; then
  __dr_dir=/run/release
  [ -w "$__dr_dir" ] || __dr_dir=/tmp
  __dr_file="$__dr_dir/COOKIE"
  if [ ! -s "$__dr_file" ]; then
    __dr_cookie=$(dd if=/dev/urandom bs=32 count=1 2>/dev/null | od -An -tx1 | awk '{for (i = 1; i <= NF; i++) s = s $i} END {print s}')
    if [ -n "$__dr_cookie" ] && (umask 077; set -C; echo "$__dr_cookie" >"$__dr_file") 2>/dev/null; then
      echo "docker_release: RELEASE_COOKIE is not set; generated a cookie for this container in $__dr_file (set RELEASE_COOKIE to connect nodes across containers)" >&2
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
        let names = fs.read_dir(&src).map_err(|source| PlanError::Read {
            path: src.clone(),
            source,
        })?;
        for name in names {
            let rel = rel.join(&name);
            let src = root.join(&rel);
            if rel == cookie || rel == Path::new("tmp") {
                // Never ship the build-time cookie, nor the release's `tmp/` (RELEASE_TMP): a
                // release run on the build machine leaves logs there whose command lines carry
                // the cookie. The image gets an empty, app-owned `/app/tmp` instead.
                continue;
            }
            let meta = fs.lstat(&src).map_err(|source| PlanError::Read {
                path: src.clone(),
                source,
            })?;
            let dest = Path::new(APP_DIR).join(&rel);
            let source = match meta.kind {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Source::Dir
                }
                Kind::Symlink => {
                    Source::Symlink(fs.read_link(&src).map_err(|source| PlanError::Read {
                        path: src.clone(),
                        source,
                    })?)
                }
                Kind::File if rel == env_sh => {
                    let mut bytes = fs.read(&src).map_err(|source| PlanError::Read {
                        path: src.clone(),
                        source,
                    })?;
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
