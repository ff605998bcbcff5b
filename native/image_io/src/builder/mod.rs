//! Building the release inside a builder container, over the Engine API.
//!
//! `mix docker.release --builder IMAGE` must build the release where its runtime files come
//! from, so the libraries in the image match the ERTS that was compiled against them.
//! [`build_release`] runs the container lifecycle up to a built release and hands back a
//! [`BuiltRelease`]: the container, still running, and its filesystem as a
//! [`ContainerFs`] (the release read whole, every other file fetched on demand, into an
//! anonymous spool file); `image_core::plan` reads it with `release_dir` [`RELEASE_DIR`], calling
//! [`BuiltRelease::fetch_wants`] between runs until a run wants nothing, then
//! [`BuiltRelease::finish`] removes the container.
//!
//! # Lifecycle
//!
//! 1. Inspect the builder image (missing → [`BuilderError::BuilderImageMissing`]).
//! 2. Cache volumes (see [Cache](#cache)); `cache: false` removes and recreates them.
//! 3. Create the container: PID 1 is `sh -c 'exec cat >/dev/null'`, with `OpenStdin`,
//!    `StdinOnce`, `AttachStdin` and `AutoRemove`, labelled [`crate::engine::LABEL_TEMPORARY`] and
//!    [`crate::engine::LABEL_OWNER`] (`HOSTNAME:PID`).
//! 4. **Attach to its stdin before starting it** and hold that connection for the whole build.
//!    When this OS process dies for any reason (SIGKILL included), the socket closes, the
//!    engine closes the container's stdin (`StdinOnce`), `cat` exits, PID 1's exit kills every
//!    exec in the container, and `AutoRemove` deletes it. No exit handler is needed.
//! 5. Upload the project ([`image_core::context::write_context`], streamed) to [`SRC_DIR`].
//! 6. One exec (as root) empties [`RELEASE_DIR`] (`/app`: the release is assembled at the path
//!    it runs from in the image, so paths the release bakes in at build time, e.g. from
//!    `@release.path` in `rel/vm.args.eex`, stay true) and, for an image with a non-root user,
//!    gives it `/src` and `/app`. Then one exec runs, under `flock` on the cache, the
//!    sources check (see [Cache](#cache)), `mix deps.get --only ENV` then `mix release [NAME] --overwrite --path /app` (a plain
//!    `mix release` for the default release of a project without `releases:`); output is
//!    streamed line by line.
//! 7. The builder's OTP release: the same exec prints the name of the `releases/N` directory
//!    of the `erl` it used (no VM is started); `erl -eval` is the fallback.
//! 8. The release (`/app`, on the container's own filesystem) comes out whole, as the
//!    first fetch of [`container_fs`] (one exec of `tar`).
//! 9. The caller plans the image over [`BuiltRelease::fs`]; what the plan needs from the rest
//!    of the builder's filesystem is fetched in batches by [`BuiltRelease::fetch_wants`] (one
//!    exec of `tar` per batch, see [`container_fs`]).
//! 10. The container is removed: by [`BuiltRelease::finish`], on failure and cancellation; if a
//!     future or the [`BuiltRelease`] is dropped instead, a removal is started in the
//!     background, and the closed stdin does the rest.
//!
//! [`crate::engine::sweep_leftovers`] removes labelled containers whose owner process is gone
//! (for engines or paths where step 4 could not act, e.g. a container created but never
//! started). The container's lifecycle (labels, owner, the guard that removes it when a future
//! is dropped) is the one the Dockerfile flow uses too: [`crate::engine::Temporary`].
//!
//! # Cache
//!
//! Two named volumes per (project directory, `MIX_ENV`, builder image ID):
//! `docker_release-cache-KEY-build` on `/src/_build` and `docker_release-cache-KEY-deps` on
//! `/src/deps`, where KEY is the first 16 hex digits of
//! `sha256(canonical project dir ++ "\0" ++ MIX_ENV ++ "\0" ++ image ID)`. They are labelled
//! [`LABEL_CACHE`]`=true` plus the project, env and image, so `docker volume ls --filter
//! label=docker_release.cache` lists them. Two builds sharing a cache run one after the
//! other: the build holds `flock` on [`LOCK_FILE`] (util-linux, present in every Debian
//! image; without it the build runs unlocked and says so).
//!
//! The volumes outlive the project's files, and Mix decides what to recompile from mtimes, so
//! the upload's mtimes alone cannot be trusted (a project recreated with older mtimes would
//! ship the code the cache was built from). Under the lock, before Mix runs, the build script
//! compares every uploaded file with the digests the cache's last successful build recorded
//! (see `builder/sources.rs`): a changed file gets the current time, an unchanged one an old fixed
//! time, so Mix recompiles exactly what changed since the cached `_build`, whatever the files'
//! mtimes on the host (a fresh `git clone` included).

pub mod container_fs;
mod script;
mod sources;

use crate::channel::body_from_writer;
use crate::engine::{
    Body, ContainerEngine, ContainerSpec, EngineError, ExecSpec, ImageInfo, Output, StdinHold,
    Temporary,
};
use crate::error::Reason;
use container_fs::{ContainerFs, Want, FETCH_SCRIPT};
use futures_util::StreamExt;
use image_core::context::{write_context, ContextError, ContextStats, Excludes};
use image_core::fs::Fs as _;
use script::{otp_with_erl, run_build, PREPARE_SCRIPT};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use script::LAST_LINES;

/// Label on cache volumes (value `true`).
pub const LABEL_CACHE: &str = "docker_release.cache";
/// Label on cache volumes: the project directory on the host.
pub const LABEL_CACHE_PROJECT: &str = "docker_release.cache.project";
/// Label on cache volumes: the `MIX_ENV`.
pub const LABEL_CACHE_MIX_ENV: &str = "docker_release.cache.mix_env";
/// Label on cache volumes: the builder image ID.
pub const LABEL_CACHE_IMAGE: &str = "docker_release.cache.image";
/// Where the project is uploaded in the container.
pub const SRC_DIR: &str = "/src";
/// Where the release is assembled in the container (outside the volumes): the path it runs from
/// in the image ([`image_core::plan::APP_DIR`]), so that paths baked into it at build time hold.
pub const RELEASE_DIR: &str = image_core::plan::APP_DIR;
/// The lock that serialises builds sharing a cache.
pub const LOCK_FILE: &str = "/src/_build/.docker_release.lock";

/// Receives one human-readable line per step.
pub type OnStep = Arc<dyn Fn(&str) + Send + Sync>;
/// Receives `(step, line)` for each line of build output.
pub type OnLine = Arc<dyn Fn(&str, &str) + Send + Sync>;
/// Receives `(step, bytes done)` while the project goes into the builder ([`UPLOAD_STEP`])
/// and files come out of it ([`FETCH_STEP`]), as often as chunks move (the caller throttles).
pub type OnBytes = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The byte-progress step of the project's upload into the builder.
pub const UPLOAD_STEP: &str = "upload to the builder";
/// The byte-progress step of reading files from the builder (every round adds to it).
pub const FETCH_STEP: &str = "read from the builder";

/// What to build, and where.
#[derive(Debug, Clone)]
pub struct BuilderSpec {
    /// The builder image reference (must exist in the engine: nothing is pulled).
    pub image: String,
    /// The project root on the host (uploaded to [`SRC_DIR`]).
    pub project_dir: PathBuf,
    /// `MIX_ENV` for the build.
    pub mix_env: String,
    /// The release to assemble (its `bin/` script).
    pub release_name: String,
    /// `true` when the project's `releases:` defines the release (built with
    /// `mix release NAME`); `false` for the default release of a project without `releases:`,
    /// built with a plain `mix release` (`mix release APP` fails there).
    pub named_release: bool,
    /// `false` (`--no-cache`): start from fresh cache volumes.
    pub cache: bool,
    /// What to leave out of the upload (usually `Excludes::for_project(&project_dir)`).
    pub excludes: Excludes,
    /// More environment for the build (`KEY=VALUE`), e.g.
    /// [`image_core::foreign::EMULATED_BUILD_ENV`] for a builder run under emulation.
    pub env: Vec<String>,
}

/// A release built in a builder container that is still running.
pub struct BuiltRelease<'a, E: ContainerEngine> {
    /// The builder's filesystem: the release, and whatever [`BuiltRelease::fetch_wants`]
    /// has fetched since.
    pub fs: Arc<ContainerFs>,
    /// The release, as a path in `fs` ([`RELEASE_DIR`]).
    pub release_dir: PathBuf,
    /// The builder's OTP release, e.g. `25`.
    pub otp_release: String,
    /// What was uploaded.
    pub context: ContextStats,
    /// Fetch rounds so far.
    pub rounds: usize,
    /// Bytes of every fetch round so far (the [`FETCH_STEP`] progress).
    fetched: u64,
    on_bytes: OnBytes,
    live: Option<Live<'a, E>>,
}

/// The running container of a [`BuiltRelease`]: removed in the background if dropped (its
/// [`Temporary`] guard), and when this process dies, by the engine once the held stdin closes.
struct Live<'a, E: ContainerEngine> {
    container: Temporary<'a, E>,
    _hold: StdinHold,
}

impl<E: ContainerEngine> std::fmt::Debug for BuiltRelease<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltRelease")
            .field("release_dir", &self.release_dir)
            .field("otp_release", &self.otp_release)
            .field("container", &self.live.as_ref().map(|l| l.container.id()))
            .finish()
    }
}

impl<E: ContainerEngine> BuiltRelease<'_, E> {
    /// The builder container's ID, until [`BuiltRelease::finish`].
    pub fn container_id(&self) -> Option<&str> {
        self.live.as_ref().map(|l| l.container.id())
    }

    /// Fetch what [`BuiltRelease::fs`] was asked for and did not have, in one exec of
    /// [`FETCH_SCRIPT`]. Returns how many wants were fetched (0: nothing was wanted, so the
    /// last run over `fs` saw only real answers).
    pub async fn fetch_wants(&mut self) -> Result<usize, BuilderError> {
        let wants = self.fs.take_wants();
        if wants.is_empty() {
            return Ok(0);
        }
        let live = self.live.as_ref().ok_or_else(|| {
            BuilderError::Builder("the builder container is already removed".into())
        })?;
        let mut cmd = vec![
            "sh".to_string(),
            "-c".into(),
            FETCH_SCRIPT.into(),
            "sh".into(),
        ];
        cmd.extend(wants.iter().map(Want::arg));
        let spec = ExecSpec {
            cmd,
            env: vec![],
            user: Some("0:0".into()),
            working_dir: "/".into(),
        };
        let engine = live.container.engine();
        let (exec_id, mut output) = engine.exec(live.container.id(), &spec).await?;
        let spool_err = |e: io::Error| BuilderError::Io {
            what: "writing what the builder sent to a temporary file".into(),
            source: e,
        };
        let (mut received, mut err) = (0usize, Vec::new());
        while let Some(chunk) = output.next().await {
            match chunk? {
                Output::Stdout(b) => {
                    received += b.len();
                    self.fetched += b.len() as u64;
                    (self.on_bytes)(FETCH_STEP, self.fetched);
                    self.fs.append(&b).map_err(spool_err)?;
                }
                // tar names each missing path here; keep the start for a message.
                Output::Stderr(b) if err.len() < 16 * 1024 => err.extend_from_slice(&b),
                Output::Stderr(_) => {}
            }
        }
        let status = wait_status(engine, &exec_id).await?;
        // tar exits 1 or 2 when some of the paths do not exist: those are recorded as absent.
        if status > 2 || (status != 0 && received == 0) {
            return Err(BuilderError::Builder(format!(
                "reading files from the builder with `sh` and `tar` failed with exit status {status} (the builder image needs a POSIX sh, readlink and GNU or BusyBox tar): {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        self.fs
            .absorb(&wants)
            .map_err(|e| BuilderError::Builder(format!("reading files from the builder: {e}")))?;
        self.rounds += 1;
        Ok(wants.len())
    }

    /// Remove the container and wait until it is gone. Returns a warning line when it could
    /// not be removed (the release is built: what is left behind is said, not failed for).
    pub async fn finish(&mut self) -> Option<String> {
        let live = self.live.take()?;
        let (id, cli) = (live.container.id().to_string(), live.container.cli());
        match live.container.remove().await {
            Ok(()) => None,
            Err(e) => Some(format!(
                "warning: the builder container {id} could not be removed ({e}); remove it with `{cli} rm -f {id}`"
            )),
        }
    }
}

/// Why a build in a builder container failed.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// The builder image is not in the engine.
    #[error("the builder image {image:?} is not in the engine ({message}); nothing is pulled: build or pull it first (`{cli} image ls` lists what the engine has)")]
    BuilderImageMissing {
        /// The reference given.
        image: String,
        /// The engine's message.
        message: String,
        /// The engine's command-line tool (`docker`, `podman`).
        cli: &'static str,
    },
    /// A step of the build exited with a non-zero status.
    #[error("`{command}` failed in the builder container ({image}) with exit status {status}. Last lines of its output:\n{}", indent(last_lines))]
    BuildFailed {
        /// The step (`deps.get`, `release`).
        step: String,
        /// The command that failed.
        command: String,
        /// The builder image.
        image: String,
        /// Its exit status.
        status: i64,
        /// The last [`LAST_LINES`] lines of the step's output.
        last_lines: Vec<String>,
    },
    /// A setting cannot be used.
    #[error("{0}")]
    InvalidSpec(String),
    /// The project could not be read or sent.
    #[error("uploading the project failed: {0}")]
    Context(#[from] ContextError),
    /// An engine call failed (or went silent, see [`crate::stall`]).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Something in the builder container did not behave (e.g. `erl` is missing).
    #[error("{0}")]
    Builder(String),
    /// Local files could not be written (the release read from the builder).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The build was cancelled.
    #[error("the build in the builder container was cancelled")]
    Cancelled,
}

impl BuilderError {
    /// The reason the Elixir side matches on: `builder_image_missing`, `release_build_failed`,
    /// `cancelled`, `engine_stalled`, or `builder_error` for everything else.
    pub fn reason(&self) -> Reason {
        match self {
            BuilderError::BuilderImageMissing { .. } => Reason::BuilderImageMissing,
            BuilderError::BuildFailed { .. } => Reason::ReleaseBuildFailed,
            BuilderError::Cancelled => Reason::Cancelled,
            BuilderError::Engine(e) if e.is_stall() => Reason::EngineStalled,
            _ => Reason::BuilderError,
        }
    }
}

fn indent(lines: &[String]) -> String {
    if lines.is_empty() {
        return "    (no output)".into();
    }
    lines
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The build.
// ---------------------------------------------------------------------------------------------

/// The cache volumes for a project: `[(name, mount path)]` for `_build` and `deps`.
///
/// ```
/// use image_io::builder::cache_volumes;
/// let v = cache_volumes(std::path::Path::new("/p"), "prod", "sha256:abc");
/// assert_eq!(v[0].1, "/src/_build");
/// assert!(v[0].0.starts_with("docker_release-cache-") && v[0].0.ends_with("-build"));
/// assert_ne!(v[0].0, cache_volumes(std::path::Path::new("/p"), "dev", "sha256:abc")[0].0);
/// ```
pub fn cache_volumes(project_dir: &Path, mix_env: &str, image_id: &str) -> [(String, String); 2] {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    h.update(project_dir.as_os_str().as_bytes());
    h.update(b"\0");
    h.update(mix_env.as_bytes());
    h.update(b"\0");
    h.update(image_id.as_bytes());
    let key = &hex::encode(h.finalize())[..16];
    [
        (
            format!("docker_release-cache-{key}-build"),
            format!("{SRC_DIR}/_build"),
        ),
        (
            format!("docker_release-cache-{key}-deps"),
            format!("{SRC_DIR}/deps"),
        ),
    ]
}

/// Names Mix accepts for releases and environments (and that are safe in a shell word).
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Build the release of `spec.project_dir` in a container of `spec.image` and return it with
/// the container still running, its filesystem readable through [`BuiltRelease::fs`] (see the
/// module docs for the lifecycle).
///
/// `on_step` gets one human-readable line per step (including `warning: …` lines);
/// `on_line` gets `(step, line)` for every line of build output, with step `deps.get` or
/// `release`. When `cancel` is cancelled the build stops, the container is removed and
/// [`BuilderError::Cancelled`] is returned.
///
/// ```no_run
/// # async fn f(settings: &image_core::plan::Settings) -> Result<(), Box<dyn std::error::Error>> {
/// use image_io::builder::{build_release, BuilderSpec};
/// use image_io::engine::{resolve_endpoint, DockerEngine};
/// use std::sync::Arc;
/// use tokio_util::sync::CancellationToken;
/// let engine = DockerEngine::connect(&resolve_endpoint(&|k| std::env::var(k).ok())?).await?;
/// let project = std::path::PathBuf::from("examples/hello");
/// let spec = BuilderSpec {
///     image: "docker-release-test/builder:bookworm".into(),
///     excludes: image_core::context::Excludes::for_project(&project)?,
///     project_dir: project,
///     mix_env: "prod".into(),
///     release_name: "hello".into(),
///     named_release: true,
///     cache: true,
///     env: vec![],
/// };
/// let mut built = build_release(
///     &engine,
///     &spec,
///     Arc::new(|step: &str| println!("==> {step}")),
///     Arc::new(|_step: &str, line: &str| println!("{line}")),
///     CancellationToken::new(),
/// )
/// .await?;
/// let settings = image_core::plan::Settings {
///     release_dir: built.release_dir.clone(),
///     ..settings.clone()
/// };
/// let plan = loop {
///     let plan = image_core::plan::plan(&*built.fs, &settings);
///     if built.fetch_wants().await? == 0 {
///         break plan?;
///     }
/// };
/// built.finish().await;
/// # let _ = plan; Ok(()) }
/// ```
pub async fn build_release<'a, E: ContainerEngine>(
    engine: &'a E,
    spec: &BuilderSpec,
    on_step: OnStep,
    on_line: OnLine,
    cancel: CancellationToken,
) -> Result<BuiltRelease<'a, E>, BuilderError> {
    let no_bytes: OnBytes = Arc::new(|_, _| {});
    build_release_with(engine, spec, on_step, on_line, no_bytes, cancel).await
}

/// [`build_release`], with the byte progress of the transfers into and out of the builder
/// going to `on_bytes` (also for later [`BuiltRelease::fetch_wants`] rounds).
pub async fn build_release_with<'a, E: ContainerEngine>(
    engine: &'a E,
    spec: &BuilderSpec,
    on_step: OnStep,
    on_line: OnLine,
    on_bytes: OnBytes,
    cancel: CancellationToken,
) -> Result<BuiltRelease<'a, E>, BuilderError> {
    if !valid_name(&spec.release_name) {
        return Err(BuilderError::InvalidSpec(format!(
            "invalid release name: a release name must start with a lowercase letter or _ and contain only lowercase letters, digits and _, got: {:?}",
            spec.release_name
        )));
    }
    if !valid_name(&spec.mix_env) {
        return Err(BuilderError::InvalidSpec(format!(
            "invalid MIX_ENV: it must start with a lowercase letter or _ and contain only lowercase letters, digits and _, got: {:?}",
            spec.mix_env
        )));
    }
    let project_dir =
        std::fs::canonicalize(&spec.project_dir).map_err(|source| BuilderError::Io {
            what: format!(
                "cannot read the project directory {}",
                spec.project_dir.display()
            ),
            source,
        })?;

    let prepare = async {
        on_step(&format!("checking the builder image {}", spec.image));
        let image = match engine.inspect_image(&spec.image).await? {
            Ok(i) => i,
            Err(message) => {
                return Err(BuilderError::BuilderImageMissing {
                    image: spec.image.clone(),
                    message,
                    cli: engine.cli().await,
                })
            }
        };
        let volumes = cache_volumes(&project_dir, &spec.mix_env, &image.id);
        if !spec.cache {
            on_step("clearing the build cache (--no-cache)");
            for (name, _) in &volumes {
                engine.remove_volume(name).await?;
            }
        }
        let labels = BTreeMap::from([
            (LABEL_CACHE.to_string(), "true".to_string()),
            (
                LABEL_CACHE_PROJECT.to_string(),
                project_dir.display().to_string(),
            ),
            (LABEL_CACHE_MIX_ENV.to_string(), spec.mix_env.clone()),
            (LABEL_CACHE_IMAGE.to_string(), image.id.clone()),
        ]);
        for (name, _) in &volumes {
            engine.create_volume(name, &labels).await?;
        }
        Ok((image, volumes))
    };
    let (image, volumes) = tokio::select! {
        r = prepare => r?,
        _ = cancel.cancelled() => return Err(BuilderError::Cancelled),
    };

    on_step(&format!("starting a builder container from {}", spec.image));
    let container = ContainerSpec {
        entrypoint: vec!["sh".into(), "-c".into(), "exec cat >/dev/null".into()],
        volumes: volumes.to_vec(),
        working_dir: SRC_DIR.into(),
        lifeline: true,
        ..ContainerSpec::temporary(spec.image.clone())
    };
    let container = Temporary::create(engine, &container).await?;
    let (id, cli) = (container.id().to_string(), container.cli());
    let callbacks = (&on_step, &on_line, &on_bytes);
    let run = in_container(engine, &id, spec, &image, &project_dir, callbacks);
    let result = tokio::select! {
        r = run => r,
        _ = cancel.cancelled() => Err(BuilderError::Cancelled),
    };
    match result {
        Ok((parts, hold)) => {
            let mut built = BuiltRelease {
                fs: Arc::new(ContainerFs::new()),
                release_dir: PathBuf::from(RELEASE_DIR),
                otp_release: parts.otp_release,
                context: parts.context,
                rounds: 0,
                fetched: 0,
                on_bytes: on_bytes.clone(),
                live: Some(Live {
                    container,
                    _hold: hold,
                }),
            };
            // From here on, dropping `built` removes the container.
            on_step("reading the release from the builder");
            built
                .fs
                .want_tree(Path::new(RELEASE_DIR))
                .map_err(|e| BuilderError::Builder(e.to_string()))?;
            let read = async {
                built.fetch_wants().await?;
                match built.fs.lstat(Path::new(RELEASE_DIR)) {
                    Ok(m) if m.kind == image_core::fs::Kind::Dir => Ok(()),
                    _ => Err(BuilderError::Builder(format!(
                        "`mix release` succeeded but {RELEASE_DIR} is not in the builder container"
                    ))),
                }
            };
            let read = tokio::select! {
                r = read => r,
                _ = cancel.cancelled() => Err(BuilderError::Cancelled),
            };
            match read {
                Ok(()) => Ok(built),
                Err(e) => {
                    built.finish().await;
                    Err(e)
                }
            }
        }
        Err(e) => {
            // The held stdin connection is closed by now, so the container is already
            // stopping; the explicit removal makes sure it is gone before we return.
            if let Err(r) = container.remove().await {
                on_step(&format!(
                    "warning: the builder container {id} could not be removed ({r}); remove it with `{cli} rm -f {id}`"
                ));
            }
            Err(e)
        }
    }
}

/// What [`in_container`] hands back besides the held stdin.
struct Parts {
    otp_release: String,
    context: ContextStats,
}

async fn in_container(
    engine: &impl ContainerEngine,
    id: &str,
    spec: &BuilderSpec,
    image: &ImageInfo,
    project_dir: &Path,
    (on_step, on_line, on_bytes): (&OnStep, &OnLine, &OnBytes),
) -> Result<(Parts, StdinHold), BuilderError> {
    // Attach first, like `docker run -i`: from here on the container dies with us.
    let hold = engine.attach_stdin(id).await?;
    engine.start_container(id).await?;

    on_step(&format!(
        "uploading {} to the builder",
        project_dir.display()
    ));
    let context = upload_context(engine, id, project_dir, &spec.excludes, on_bytes).await?;

    let as_root = matches!(image.user.as_str(), "" | "root" | "0")
        || image.user.starts_with("root:")
        || image.user.starts_with("0:");
    let mut env = vec![
        "LANG=C.UTF-8".to_string(),
        format!("MIX_ENV={}", spec.mix_env),
    ];
    if as_root {
        env.push("HOME=/root".into());
    }
    env.extend(spec.env.iter().cloned());
    // The release goes to an empty RELEASE_DIR (whatever the builder image has there would
    // end up in the image). The upload and fresh volumes belong to root: a non-root image's
    // user gets them.
    let prepare = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            PREPARE_SCRIPT.into(),
            "sh".into(),
            RELEASE_DIR.into(),
            if as_root {
                String::new()
            } else {
                image.user.clone()
            },
        ],
        env: vec![],
        user: Some("0:0".into()),
        working_dir: "/".into(),
    };
    let (status, out) = run_captured(engine, id, &prepare).await?;
    if status != 0 {
        return Err(BuilderError::Builder(format!(
            "preparing {RELEASE_DIR} (and giving it and /src to the builder image's user {:?}) failed with exit status {status}: {}",
            image.user,
            out.trim()
        )));
    }

    let otp = run_build(engine, id, spec, &env, on_step, on_line).await?;
    let otp_release = match otp {
        Some(otp) => otp,
        None => otp_with_erl(engine, id, env).await?,
    };
    Ok((
        Parts {
            otp_release,
            context,
        },
        hold,
    ))
}

/// Stream the build context into the container's [`SRC_DIR`]: the tar is written on the
/// blocking pool into a bounded channel, never whole in memory; `on_bytes` hears of every
/// chunk the engine takes ([`UPLOAD_STEP`]).
async fn upload_context(
    engine: &impl ContainerEngine,
    id: &str,
    project_dir: &Path,
    excludes: &Excludes,
    on_bytes: &OnBytes,
) -> Result<ContextStats, BuilderError> {
    let root = project_dir.to_path_buf();
    let excludes = excludes.clone();
    let (body, writer) = body_from_writer(CHUNK, move |out| {
        write_context(&root, &excludes, &mut *out)
            .and_then(|s| out.flush().map(|_| s).map_err(ContextError::Write))
    });
    let (on_bytes, mut sent) = (on_bytes.clone(), 0u64);
    let body: Body = Box::pin(body.inspect(move |chunk| {
        if let Ok(c) = chunk {
            sent += c.len() as u64;
            on_bytes(UPLOAD_STEP, sent);
        }
    }));
    let uploaded = engine.upload(id, SRC_DIR, body).await;
    let written = writer.await.map_err(|e| BuilderError::Io {
        what: "the context writer failed".into(),
        source: io::Error::other(e.to_string()),
    })?;
    match (written, uploaded) {
        // The engine hung up first: its answer says why.
        (Err(ContextError::Write(e)), Err(u)) if e.kind() == io::ErrorKind::BrokenPipe => {
            Err(u.into())
        }
        (Err(w), _) => Err(w.into()),
        (Ok(_), Err(u)) => Err(u.into()),
        (Ok(stats), Ok(())) => Ok(stats),
    }
}

const CHUNK: usize = 256 * 1024;

/// Run a short command and collect its output (stdout and stderr together).
pub(super) async fn run_captured(
    engine: &impl ContainerEngine,
    id: &str,
    spec: &ExecSpec,
) -> Result<(i64, String), BuilderError> {
    let (exec_id, mut output) = engine.exec(id, spec).await?;
    let mut out = Vec::new();
    while let Some(chunk) = output.next().await {
        match chunk? {
            Output::Stdout(b) | Output::Stderr(b) => out.extend_from_slice(&b),
        }
    }
    let status = wait_status(engine, &exec_id).await?;
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

/// The exit status of an exec whose output has ended (the engine may need a moment: asked
/// again after 2, 4, 8, … ms, up to 100 ms apart, for about 5 s).
pub(super) async fn wait_status(
    engine: &impl ContainerEngine,
    exec_id: &str,
) -> Result<i64, BuilderError> {
    let mut pause = Duration::from_millis(2);
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(5) {
        if let Some(s) = engine.exec_status(exec_id).await? {
            return Ok(s);
        }
        tokio::time::sleep(pause).await;
        waited += pause;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Err(BuilderError::Builder(format!(
        "the engine reports exec {exec_id} as still running after its output ended"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("hello"));
        assert!(valid_name("_a1"));
        assert!(!valid_name("Hello"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name("a;rm"));
        assert!(!valid_name(""));
    }

    #[test]
    fn cache_key_depends_on_project_env_and_image() {
        let a = cache_volumes(Path::new("/p"), "prod", "sha256:1");
        assert_eq!(a, cache_volumes(Path::new("/p"), "prod", "sha256:1"));
        assert_ne!(
            a[0].0,
            cache_volumes(Path::new("/q"), "prod", "sha256:1")[0].0
        );
        assert_ne!(
            a[0].0,
            cache_volumes(Path::new("/p"), "prod", "sha256:2")[0].0
        );
        assert_eq!(a[0].0.len(), "docker_release-cache--build".len() + 16);
        assert_eq!(a[1].1, "/src/deps");
    }
}
