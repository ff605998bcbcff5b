//! Building the release inside a builder container, over the Engine API.
//!
//! `mix docker.release --builder IMAGE` must build the release where its runtime files come
//! from, so the libraries in the image match the ERTS that was compiled against them.
//! [`build_release`] runs the container lifecycle up to a built release and hands back a
//! [`BuiltRelease`]: the container, still running, and its filesystem as a
//! [`ContainerFs`] (the release read whole, every other file fetched on demand, into
//! memory); `image_core::plan` reads it with `release_dir` [`RELEASE_DIR`], calling
//! [`BuiltRelease::fetch_wants`] between runs until a run wants nothing, then
//! [`BuiltRelease::finish`] removes the container.
//!
//! # Lifecycle
//!
//! 1. Inspect the builder image (missing → [`BuilderError::BuilderImageMissing`]).
//! 2. Cache volumes (see [Cache](#cache)); `cache: false` removes and recreates them.
//! 3. Create the container: PID 1 is `sh -c 'exec cat >/dev/null'`, with `OpenStdin`,
//!    `StdinOnce`, `AttachStdin` and `AutoRemove`, labelled [`LABEL_TEMPORARY`] and
//!    [`LABEL_OWNER`] (`HOSTNAME:PID`).
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
//!    first fetch of [`crate::container_fs`] (one exec of `tar`).
//! 9. The caller plans the image over [`BuiltRelease::fs`]; what the plan needs from the rest
//!    of the builder's filesystem is fetched in batches by [`BuiltRelease::fetch_wants`] (one
//!    exec of `tar` per batch, see [`crate::container_fs`]).
//! 10. The container is removed: by [`BuiltRelease::finish`], on failure and cancellation; if a
//!     future or the [`BuiltRelease`] is dropped instead, a removal is started in the
//!     background, and the closed stdin does the rest.
//!
//! [`sweep_leftovers`] removes labelled containers whose owner process is gone (for engines or
//! paths where step 4 could not act, e.g. a container created but never started).
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
//! (see [`sources`]): a changed file gets the current time, an unchanged one an old fixed
//! time, so Mix recompiles exactly what changed since the cached `_build`, whatever the files'
//! mtimes on the host (a fresh `git clone` included).

use crate::channel::ChannelWriter;
use crate::container_fs::{ContainerFs, Want, FETCH_SCRIPT};
use crate::engine::{Body, DockerEngine, EngineError};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use image_core::context::{write_context, ContextError, ContextStats, Excludes};
use image_core::fs::Fs as _;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

mod sources;
use sources::SOURCES_SCRIPT;

/// Label on every temporary container docker_release creates (value `true`).
pub const LABEL_TEMPORARY: &str = "docker_release.temporary";
/// Label naming the process that owns a temporary container: `HOSTNAME:PID`.
pub const LABEL_OWNER: &str = "docker_release.owner";
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
/// How many output lines a [`BuilderError::BuildFailed`] keeps.
pub const LAST_LINES: usize = 20;

/// A container that has been stopped for this long without being removed is swept even when
/// its owner still runs (it was created and then abandoned).
const ABANDONED_AFTER_SECS: i64 = 600;
/// How often the cancel flag is polled.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Output lines longer than this are cut (a minified asset dumped to the terminal).
const MAX_LINE: usize = 16 * 1024;

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
    live: Option<Live<'a, E>>,
}

/// The running container of a [`BuiltRelease`]; removed in the background if dropped.
struct Live<'a, E: ContainerEngine> {
    engine: &'a E,
    id: String,
    _hold: StdinHold,
}

impl<E: ContainerEngine> Drop for Live<'_, E> {
    fn drop(&mut self) {
        // `finish` empties the ID before it removes the container itself.
        if !self.id.is_empty() {
            self.engine
                .remove_container_detached(std::mem::take(&mut self.id));
        }
    }
}

impl<E: ContainerEngine> std::fmt::Debug for BuiltRelease<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltRelease")
            .field("release_dir", &self.release_dir)
            .field("otp_release", &self.otp_release)
            .field("container", &self.live.as_ref().map(|l| &l.id))
            .finish()
    }
}

impl<E: ContainerEngine> BuiltRelease<'_, E> {
    /// The builder container's ID, until [`BuiltRelease::finish`].
    pub fn container_id(&self) -> Option<&str> {
        self.live.as_ref().map(|l| l.id.as_str())
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
        let (exec_id, mut output) = live.engine.exec(&live.id, &spec).await?;
        let spool_err = |e: io::Error| BuilderError::Io {
            what: "writing what the builder sent to a temporary file".into(),
            source: e,
        };
        let (mut received, mut err) = (0usize, Vec::new());
        while let Some(chunk) = output.next().await {
            match chunk? {
                Output::Stdout(b) => {
                    received += b.len();
                    self.fs.append(&b).map_err(spool_err)?;
                }
                // tar names each missing path here; keep the start for a message.
                Output::Stderr(b) if err.len() < 16 * 1024 => err.extend_from_slice(&b),
                Output::Stderr(_) => {}
            }
        }
        let status = wait_status(live.engine, &exec_id).await?;
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
        let mut live = self.live.take()?;
        let id = std::mem::take(&mut live.id);
        let engine = live.engine;
        drop(live);
        match engine.remove_container(&id).await {
            Ok(()) => None,
            Err(e) => Some(format!(
                "warning: the builder container {id} could not be removed ({e}); remove it with `docker rm -f {id}`"
            )),
        }
    }
}

/// Why a build in a builder container failed.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// The builder image is not in the engine.
    #[error("the builder image {image:?} is not in the Docker engine ({message}); nothing is pulled: build or pull it first (`docker image ls` lists what the engine has)")]
    BuilderImageMissing {
        /// The reference given.
        image: String,
        /// The engine's message.
        message: String,
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
    /// An engine call failed.
    #[error("the Docker engine refused {action}: {message}")]
    Engine {
        /// What was asked.
        action: String,
        /// The engine's message.
        message: String,
    },
    /// The engine went silent during a call (see [`crate::stall`]).
    #[error(transparent)]
    Stalled(EngineError),
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
    /// The cancel flag was raised.
    #[error("the build in the builder container was cancelled")]
    Cancelled,
}

impl BuilderError {
    /// The reason the Elixir side matches on: `builder_image_missing`, `release_build_failed`,
    /// `cancelled`, `engine_stalled`, or `builder_error` for everything else.
    pub fn reason(&self) -> &'static str {
        match self {
            BuilderError::BuilderImageMissing { .. } => "builder_image_missing",
            BuilderError::BuildFailed { .. } => "release_build_failed",
            BuilderError::Cancelled => "cancelled",
            BuilderError::Stalled(_) => "engine_stalled",
            _ => "builder_error",
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

/// The error for a failed engine call: the engine's own words, or that it went silent.
fn call_err(action: &str, e: bollard::errors::Error) -> BuilderError {
    match crate::engine::stalled_in(&e) {
        Some(stalled) => BuilderError::Stalled(EngineError::Stalled {
            action: action.to_string(),
            stalled: stalled.clone(),
        }),
        None => engine_err(action, message_of(e)),
    }
}

fn engine_err(action: &str, message: impl ToString) -> BuilderError {
    BuilderError::Engine {
        action: action.to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The engine calls the builder makes.
// ---------------------------------------------------------------------------------------------

/// A builder image, as the engine describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image ID (`sha256:…`).
    pub id: String,
    /// The image's configured user (`""` for root).
    pub user: String,
}

/// The temporary container to create. The engine implementation always adds `AutoRemove`,
/// `OpenStdin`, `StdinOnce` and `AttachStdin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Image reference.
    pub image: String,
    /// PID 1 (replaces the image's entrypoint and command).
    pub entrypoint: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named volumes: `(volume, mount path)`.
    pub volumes: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: String,
}

/// One command to run in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// User (`None`: the container's).
    pub user: Option<String>,
    /// Working directory.
    pub working_dir: String,
}

/// A chunk of exec output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// From stdout.
    Stdout(Bytes),
    /// From stderr.
    Stderr(Bytes),
}

/// Receives one human-readable line per step.
pub type OnStep = Arc<dyn Fn(&str) + Send + Sync>;
/// Receives `(step, line)` for each line of build output.
pub type OnLine = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Exec output, as it arrives.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, BuilderError>> + Send>>;
/// A tar byte stream from the engine.
pub type TarStream = Pin<Box<dyn Stream<Item = Result<Bytes, BuilderError>> + Send>>;

/// An open attach connection to a container's stdin: the container lives while it is held.
/// Dropping it closes the connection.
pub struct StdinHold(#[allow(dead_code)] std::sync::Mutex<Box<dyn std::any::Any + Send>>);

impl StdinHold {
    /// Wrap whatever keeps the connection open.
    pub fn new(conn: impl std::any::Any + Send) -> StdinHold {
        StdinHold(std::sync::Mutex::new(Box::new(conn)))
    }
}

impl std::fmt::Debug for StdinHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdinHold")
    }
}

/// A labelled container, as [`ContainerEngine::list_containers`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledContainer {
    /// Container ID.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `true` while running (or paused, restarting).
    pub running: bool,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// The engine calls [`build_release`] and [`sweep_leftovers`] make; [`DockerEngine`]
/// implements them with bollard, tests with a fake.
pub trait ContainerEngine: Send + Sync {
    /// The image's ID and user, or `None` when the engine has no such image (the `String` is
    /// the engine's message).
    fn inspect_image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Result<ImageInfo, String>, BuilderError>> + Send;
    /// Create a container (not started); returns its ID.
    fn create_container(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, BuilderError>> + Send;
    /// Attach to the container's stdin (stream mode, nothing else) and hold the connection.
    fn attach_stdin(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<StdinHold, BuilderError>> + Send;
    /// Start the container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), BuilderError>> + Send;
    /// Extract the tar stream `tar` into directory `dir` of the container (`PUT …/archive`).
    fn upload(
        &self,
        id: &str,
        dir: &str,
        tar: Body,
    ) -> impl Future<Output = Result<(), BuilderError>> + Send;
    /// Start a command; returns the exec ID and its stdout/stderr.
    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> impl Future<Output = Result<(String, OutputStream), BuilderError>> + Send;
    /// The exit status of a finished exec (`None` while it runs).
    fn exec_status(
        &self,
        exec_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, BuilderError>> + Send;
    /// Remove the container (forced, with anonymous volumes) and wait until it is gone. A
    /// container that is already gone is not an error.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), BuilderError>> + Send;
    /// Start removing a container in the background (used when a build's future is dropped).
    fn remove_container_detached(&self, id: String);
    /// Create a named volume (an existing one is kept).
    fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), BuilderError>> + Send;
    /// Remove a named volume; a missing one is not an error.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), BuilderError>> + Send;
    /// Names of the volumes carrying label `key=value`.
    fn list_volumes(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<String>, BuilderError>> + Send;
    /// Containers, running or not, carrying label `key=value`.
    fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<LabelledContainer>, BuilderError>> + Send;
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message_of(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

impl ContainerEngine for DockerEngine {
    async fn inspect_image(
        &self,
        reference: &str,
    ) -> Result<Result<ImageInfo, String>, BuilderError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Ok(ImageInfo {
                id: i.id.unwrap_or_default(),
                user: i.config.and_then(|c| c.user).unwrap_or_default(),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(Err(message_of(e))),
            Err(e) => Err(call_err("the image inspection", e)),
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, BuilderError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            working_dir: Some(spec.working_dir.clone()),
            labels: Some(spec.labels.clone().into_iter().collect::<HashMap<_, _>>()),
            // The lifeline: stdin open for one attach; EOF on it ends PID 1.
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            host_config: Some(HostConfig {
                auto_remove: Some(true),
                mounts: Some(
                    spec.volumes
                        .iter()
                        .map(|(name, target)| Mount {
                            typ: Some(MountType::VOLUME),
                            source: Some(name.clone()),
                            target: Some(target.clone()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(call_err("creating the builder container", e)),
        }
    }

    async fn attach_stdin(&self, id: &str) -> Result<StdinHold, BuilderError> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(false)
            .stderr(false)
            .stream(true)
            .logs(false)
            .build();
        let conn = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| call_err("attaching to the builder container", e))?;
        Ok(StdinHold::new(conn))
    }

    async fn start_container(&self, id: &str) -> Result<(), BuilderError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| call_err("starting the builder container", e))
    }

    async fn upload(&self, id: &str, dir: &str, tar: Body) -> Result<(), BuilderError> {
        let opts = UploadToContainerOptionsBuilder::default().path(dir).build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_try_stream(tar))
            .await
            .map_err(|e| call_err("the upload of the project", e))
    }

    async fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> Result<(String, OutputStream), BuilderError> {
        let config = bollard::exec::CreateExecOptions::<String> {
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            working_dir: Some(spec.working_dir.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| call_err("creating an exec in the builder", e))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| call_err("starting an exec in the builder", e))?;
        match started {
            bollard::exec::StartExecResults::Attached { output, .. } => {
                let stream = output.filter_map(|item| async move {
                    use bollard::container::LogOutput;
                    match item {
                        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                            Some(Ok(Output::Stdout(message)))
                        }
                        Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(call_err("reading exec output", e))),
                    }
                });
                Ok((created.id, Box::pin(stream)))
            }
            bollard::exec::StartExecResults::Detached => Err(BuilderError::Builder(
                "the engine started the exec detached: no output to read".into(),
            )),
        }
    }

    async fn exec_status(&self, exec_id: &str) -> Result<Option<i64>, BuilderError> {
        let i = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| call_err("inspecting an exec", e))?;
        if i.running == Some(true) {
            return Ok(None);
        }
        Ok(i.exit_code)
    }

    async fn remove_container(&self, id: &str) -> Result<(), BuilderError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            // 409 "removal already in progress": AutoRemove raced us. Wait for it below.
            Err(e) if status_of(&e) == Some(409) => {}
            Err(e) => return Err(call_err("removing the builder container", e)),
        }
        for _ in 0..100 {
            match self.docker.inspect_container(id, None).await {
                Err(e) if status_of(&e) == Some(404) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(engine_err(
            "removing the builder container",
            format!("container {id} is still there after 10 s"),
        ))
    }

    fn remove_container_detached(&self, id: String) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            rt.spawn(async move {
                let opts = RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build();
                let _ = docker.remove_container(&id, Some(opts)).await;
            });
        }
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), BuilderError> {
        let req = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| call_err(&format!("creating the cache volume {name}"), e))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), BuilderError> {
        let opts = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self.docker.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(call_err(
                &format!("removing the cache volume {name} (is another build using it?)"),
                e,
            )),
        }
    }

    async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<String>, BuilderError> {
        let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
        let opts = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let r = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| call_err("listing volumes", e))?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<LabelledContainer>, BuilderError> {
        use bollard::models::ContainerSummaryStateEnum as S;
        let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| call_err("listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(LabelledContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    running: matches!(c.state, Some(S::RUNNING | S::PAUSED | S::RESTARTING)),
                    created: c.created.unwrap_or(0),
                })
            })
            .collect())
    }
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

/// This process as [`LABEL_OWNER`] names it: `HOSTNAME:PID`.
pub fn owner() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether `pid` names a live process on this host.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Names Mix accepts for releases and environments (and that are safe in a shell word).
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The script of the preparing exec (as root): `$1` is [`RELEASE_DIR`], emptied; `$2` the
/// image's user, given `/src` and `$1` (empty: the image runs as root).
const PREPARE_SCRIPT: &str =
    r#"rm -rf "$1" && mkdir -p "$1" && if [ -n "$2" ]; then chown -R "$2" /src "$1"; fi"#;

/// The script of the build exec (run after [`SOURCES_SCRIPT`], which defines the
/// `docker_release_sources*` functions). `$1` is the name for `mix release` (empty: a plain
/// `mix release`, the default release), `$2` the step marker; `MIX_ENV` comes from the
/// environment. Everything goes to stdout so lines keep their order.
///
/// Both Mix steps run in one VM when `mix` is the Elixir script (not a version manager's
/// shell shim, which `elixir -S` cannot run): a one-line task defined with `elixir -e` prints
/// the marker between them, once (`mix cmd echo` would print it once per umbrella app, each
/// time under an `==> app` header).
const BUILD_SCRIPT: &str = r#"exec 2>&1
set -e
if command -v flock >/dev/null 2>&1; then
  exec 9>>/src/_build/.docker_release.lock
  if ! flock -n 9; then
    echo "$2 wait"
    flock 9
  fi
else
  echo "$2 noflock"
fi
trap 'docker_release_sources_done $?' EXIT
docker_release_sources "$2"
echo "$2 deps.get"
m=$(command -v mix) || m=
if head -n 1 "$m" 2>/dev/null | grep -q elixir; then
  elixir -e 'defmodule Mix.Tasks.DockerRelease.Step do use Mix.Task; def run(a), do: IO.puts(Enum.join(a, " ")) end' \
    -S mix do deps.get --only "$MIX_ENV" + docker_release.step "$2 release" + release ${1:+"$1"} --overwrite --path /app
else
  mix deps.get --only "$MIX_ENV"
  echo "$2 release"
  mix release ${1:+"$1"} --overwrite --path /app
fi
e=$(command -v erl 2>/dev/null) && e=$(readlink -f "$e" 2>/dev/null) || e=
if [ -n "$e" ]; then
  for v in "${e%/bin/erl}"/releases/*/OTP_VERSION; do
    if [ -f "$v" ]; then v=${v%/OTP_VERSION}; echo "$2 otp ${v##*/}"; break; fi
  done
fi
"#;

const OTP_EVAL: &str = "io:put_chars(erlang:system_info(otp_release)), halt().";

/// Removes the container if the build's future is dropped before it could.
struct ContainerGuard<'a, E: ContainerEngine> {
    engine: &'a E,
    id: Option<String>,
}

impl<E: ContainerEngine> Drop for ContainerGuard<'_, E> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.engine.remove_container_detached(id);
        }
    }
}

async fn until_cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Build the release of `spec.project_dir` in a container of `spec.image` and return it with
/// the container still running, its filesystem readable through [`BuiltRelease::fs`] (see the
/// module docs for the lifecycle).
///
/// `on_step` gets one human-readable line per step (including `warning: …` lines);
/// `on_line` gets `(step, line)` for every line of build output, with step `deps.get` or
/// `release`. `cancelled` is polled: when it is raised the build stops, the container is
/// removed and [`BuilderError::Cancelled`] is returned.
///
/// ```no_run
/// # async fn f(settings: &image_core::plan::Settings) -> Result<(), Box<dyn std::error::Error>> {
/// use image_io::builder::{build_release, BuilderSpec};
/// use image_io::engine::{resolve_endpoint, DockerEngine};
/// use std::sync::{atomic::AtomicBool, Arc};
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
/// };
/// let mut built = build_release(
///     &engine,
///     &spec,
///     Arc::new(|step: &str| println!("==> {step}")),
///     Arc::new(|_step: &str, line: &str| println!("{line}")),
///     Arc::new(AtomicBool::new(false)),
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
    cancelled: Arc<AtomicBool>,
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
        _ = until_cancelled(&cancelled) => return Err(BuilderError::Cancelled),
    };

    on_step(&format!("starting a builder container from {}", spec.image));
    let container = ContainerSpec {
        image: spec.image.clone(),
        entrypoint: vec!["sh".into(), "-c".into(), "exec cat >/dev/null".into()],
        labels: BTreeMap::from([
            (LABEL_TEMPORARY.to_string(), "true".to_string()),
            (LABEL_OWNER.to_string(), owner()),
        ]),
        volumes: volumes.to_vec(),
        working_dir: SRC_DIR.into(),
    };
    let id = engine.create_container(&container).await?;
    let mut guard = ContainerGuard {
        engine,
        id: Some(id.clone()),
    };
    let run = in_container(engine, &id, spec, &image, &project_dir, &on_step, &on_line);
    let result = tokio::select! {
        r = run => r,
        _ = until_cancelled(&cancelled) => Err(BuilderError::Cancelled),
    };
    match result {
        Ok((parts, hold)) => {
            guard.id = None;
            let mut built = BuiltRelease {
                fs: Arc::new(ContainerFs::new()),
                release_dir: PathBuf::from(RELEASE_DIR),
                otp_release: parts.otp_release,
                context: parts.context,
                rounds: 0,
                live: Some(Live {
                    engine,
                    id,
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
                _ = until_cancelled(&cancelled) => Err(BuilderError::Cancelled),
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
            let removed = engine.remove_container(&id).await;
            guard.id = None;
            if let Err(r) = removed {
                on_step(&format!(
                    "warning: the builder container {id} could not be removed ({r}); remove it with `docker rm -f {id}`"
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

#[allow(clippy::too_many_arguments)]
async fn in_container(
    engine: &impl ContainerEngine,
    id: &str,
    spec: &BuilderSpec,
    image: &ImageInfo,
    project_dir: &Path,
    on_step: &OnStep,
    on_line: &OnLine,
) -> Result<(Parts, StdinHold), BuilderError> {
    // Attach first, like `docker run -i`: from here on the container dies with us.
    let hold = engine.attach_stdin(id).await?;
    engine.start_container(id).await?;

    on_step(&format!(
        "uploading {} to the builder",
        project_dir.display()
    ));
    let context = upload_context(engine, id, project_dir, &spec.excludes).await?;

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

/// The builder's OTP release from `erl` itself (when the build could not name it).
async fn otp_with_erl(
    engine: &impl ContainerEngine,
    id: &str,
    env: Vec<String>,
) -> Result<String, BuilderError> {
    let otp = ExecSpec {
        cmd: vec![
            "erl".into(),
            "-noshell".into(),
            "-eval".into(),
            OTP_EVAL.into(),
        ],
        env,
        user: None,
        working_dir: "/".into(),
    };
    let (status, out) = run_captured(engine, id, &otp).await?;
    let otp_release = out.trim().to_string();
    if status != 0 || otp_release.is_empty() {
        return Err(BuilderError::Builder(format!(
            "reading the OTP release in the builder (`erl -noshell -eval '{OTP_EVAL}'`) failed with exit status {status}: {}",
            out.trim()
        )));
    }
    Ok(otp_release)
}

/// The build exec: `mix deps.get` then `mix release` under the cache lock, output streamed to
/// `on_line` line by line, step markers turned into `on_step` lines. Returns the OTP release
/// of the `erl` in the builder's `PATH` when the script could name it.
async fn run_build(
    engine: &impl ContainerEngine,
    id: &str,
    spec: &BuilderSpec,
    env: &[String],
    on_step: &OnStep,
    on_line: &OnLine,
) -> Result<Option<String>, BuilderError> {
    let marker = format!("@@docker_release-{}@@", nonce(id));
    let build = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            format!("{SOURCES_SCRIPT}{BUILD_SCRIPT}"),
            "docker_release".into(),
            if spec.named_release {
                spec.release_name.clone()
            } else {
                String::new()
            },
            marker.clone(),
        ],
        env: env.to_vec(),
        user: None,
        working_dir: SRC_DIR.into(),
    };
    let commands = [
        ("deps.get", format!("mix deps.get --only {}", spec.mix_env)),
        (
            "release",
            if spec.named_release {
                format!(
                    "mix release {} --overwrite --path {RELEASE_DIR}",
                    spec.release_name
                )
            } else {
                format!("mix release --overwrite --path {RELEASE_DIR}")
            },
        ),
    ];
    let (exec_id, output) = engine.exec(id, &build).await?;
    let mut lines = Lines::new(marker);
    let mut step: Option<&str> = None;
    let mut last: VecDeque<String> = VecDeque::with_capacity(LAST_LINES);
    let mut otp: Option<String> = None;
    let mut handle = |line: Line, step: &mut Option<&'static str>, last: &mut VecDeque<String>| {
        match line {
            Line::Marker(m) if m.starts_with("otp ") => {
                let v = m["otp ".len()..].trim();
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                    otp = Some(v.to_string());
                }
            }
            Line::Marker(m) => match m.as_str() {
                "wait" => on_step(&format!(
                    "waiting for another build that uses the same cache (lock {LOCK_FILE})"
                )),
                "sources all -" => on_step(
                    "no earlier build in the cache volumes: every file counts as changed",
                ),
                m if m.starts_with("sources ") => {
                    let mut n = m["sources ".len()..].split(' ');
                    if let (Some(changed), Some(total)) = (n.next(), n.next()) {
                        on_step(&format!(
                            "{changed} of {total} files differ from what the cache volumes were last built from"
                        ));
                    }
                }
                "noflock" => on_step(&format!(
                    "warning: {} has no flock: builds sharing this cache are not serialised; do not run two at once",
                    spec.image
                )),
                name => {
                    if let Some((s, cmd)) = commands.iter().find(|(s, _)| *s == name) {
                        *step = Some(s);
                        last.clear();
                        on_step(&format!("running `{cmd}` in the builder"));
                    }
                }
            },
            Line::Text(text) => {
                let s = step.unwrap_or("prepare");
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(text.clone());
                on_line(s, &text);
            }
        }
    };
    let mut output = output;
    while let Some(chunk) = output.next().await {
        let bytes = match chunk? {
            Output::Stdout(b) | Output::Stderr(b) => b,
        };
        for line in lines.push(&bytes) {
            handle(line, &mut step, &mut last);
        }
    }
    for line in lines.finish() {
        handle(line, &mut step, &mut last);
    }
    let status = wait_status(engine, &exec_id).await?;
    if status != 0 {
        let (step, command) = match step {
            Some(s) => commands
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(n, c)| (n.to_string(), c.clone()))
                .unwrap_or_default(),
            None => (
                "prepare".to_string(),
                format!(
                    "flock {LOCK_FILE}; comparing the sources with the cache (preparing the build)"
                ),
            ),
        };
        return Err(BuilderError::BuildFailed {
            step,
            command,
            image: spec.image.clone(),
            status,
            last_lines: last.into_iter().collect(),
        });
    }
    Ok(otp)
}

/// A per-build marker that no program output will contain by accident.
fn nonce(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// Stream the build context into the container's [`SRC_DIR`]: the tar is written on the
/// blocking pool into a bounded channel, never whole in memory.
async fn upload_context(
    engine: &impl ContainerEngine,
    id: &str,
    project_dir: &Path,
    excludes: &Excludes,
) -> Result<ContextStats, BuilderError> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let root = project_dir.to_path_buf();
    let excludes = excludes.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone(), CHUNK);
        let res = write_context(&root, &excludes, &mut out)
            .and_then(|s| out.flush().map(|_| s).map_err(ContextError::Write));
        if let Err(e) = &res {
            // Abort the request body so the engine does not extract a partial tree.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        res
    });
    let body: Body = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let uploaded = engine.upload(id, SRC_DIR, body).await;
    let written = writer.await.map_err(|e| BuilderError::Io {
        what: "the context writer failed".into(),
        source: io::Error::other(e.to_string()),
    })?;
    match (written, uploaded) {
        // The engine hung up first: its answer says why.
        (Err(ContextError::Write(e)), Err(u)) if e.kind() == io::ErrorKind::BrokenPipe => Err(u),
        (Err(w), _) => Err(w.into()),
        (Ok(_), Err(u)) => Err(u),
        (Ok(stats), Ok(())) => Ok(stats),
    }
}

const CHUNK: usize = 256 * 1024;

/// Run a short command and collect its output (stdout and stderr together).
async fn run_captured(
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
async fn wait_status(engine: &impl ContainerEngine, exec_id: &str) -> Result<i64, BuilderError> {
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

/// A line of build output: text, or one of our step markers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Text(String),
    Marker(String),
}

/// Splits a byte stream into lines (`\n`, with a trailing `\r` dropped), recognising markers.
struct Lines {
    marker: String,
    buf: Vec<u8>,
}

impl Lines {
    fn new(marker: String) -> Lines {
        Lines {
            marker,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    out.push(self.take());
                }
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<Line> {
        if self.buf.is_empty() {
            vec![]
        } else {
            vec![self.take()]
        }
    }

    fn take(&mut self) -> Line {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match text
            .strip_prefix(self.marker.as_str())
            .and_then(|rest| rest.strip_prefix(' '))
        {
            Some(m) => Line::Marker(m.to_string()),
            None => Line::Text(text),
        }
    }
}

/// Remove temporary containers (labelled [`LABEL_TEMPORARY`]`=true`) that nobody will remove:
/// those whose [`LABEL_OWNER`] is a process of this host that is gone, and those that are not
/// running and were created more than ten minutes ago. Running containers of live processes or
/// of other hosts are left alone. Returns how many were removed.
///
/// ```no_run
/// # async fn f(engine: &image_io::engine::DockerEngine) {
/// let removed = image_io::builder::sweep_leftovers(engine).await.unwrap_or(0);
/// # }
/// ```
pub async fn sweep_leftovers(engine: &impl ContainerEngine) -> Result<usize, BuilderError> {
    let host = hostname();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut removed = 0;
    for c in engine.list_containers(LABEL_TEMPORARY, "true").await? {
        let owner_gone = c
            .labels
            .get(LABEL_OWNER)
            .and_then(|o| o.rsplit_once(':'))
            .is_some_and(|(h, pid)| h == host && !pid.parse().is_ok_and(alive));
        let abandoned = !c.running && now - c.created > ABANDONED_AFTER_SECS;
        if owner_gone || abandoned {
            engine.remove_container(&c.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_markers_are_recognised() {
        let mut l = Lines::new("@@m@@".into());
        let mut got = l.push(b"hel");
        got.extend(l.push(b"lo\r\n@@m@@ rel"));
        got.extend(l.push(b"ease\nCompiling 2 files (.ex)\n@@m@@x\ntail"));
        got.extend(l.finish());
        assert_eq!(
            got,
            vec![
                Line::Text("hello".into()),
                Line::Marker("release".into()),
                Line::Text("Compiling 2 files (.ex)".into()),
                Line::Text("@@m@@x".into()),
                Line::Text("tail".into()),
            ]
        );
        let mut l = Lines::new("@@m@@".into());
        let long = vec![b'a'; MAX_LINE + 10];
        let got = l.push(&long);
        assert_eq!(got.len(), 1);
        assert_eq!(l.finish(), vec![Line::Text("a".repeat(10))]);
    }

    /// Runs [`BUILD_SCRIPT`] with `PATH` holding only `tools` (shell scripts by name) and the
    /// few utilities it calls; returns its output.
    fn run_build_script(tools: &[(&str, &str)], release: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in tools {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for tool in ["head", "grep", "readlink"] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap();
            std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
        }
        // The sources check has tests of its own (builder/sources.rs): stubbed here.
        let script = format!(
            "docker_release_sources() {{ :; }}\ndocker_release_sources_done() {{ :; }}\n{BUILD_SCRIPT}"
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script, "docker_release", release, "@M"])
            .env_clear()
            .env("PATH", dir.path())
            .env("MIX_ENV", "prod")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn build_script_runs_both_mix_steps_in_one_vm_and_prints_the_marker_once() {
        // `mix` is the Elixir script: `elixir -S mix do …` with our step task between.
        let tools = [
            ("mix", "#!/usr/bin/env elixir\nMix.CLI.main()\n"),
            (
                "elixir",
                "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n",
            ),
        ];
        let out = run_build_script(&tools, "hello");
        let args: Vec<&str> = out.lines().collect();
        assert_eq!(args[..2], ["@M noflock", "@M deps.get"]);
        assert_eq!(args[2], "[-e]");
        assert!(args[3].contains("defmodule Mix.Tasks.DockerRelease.Step"));
        let rest = "[-S] [mix] [do] [deps.get] [--only] [prod] [+] [docker_release.step] [@M release] [+] [release] [hello] [--overwrite] [--path] [/app]";
        assert_eq!(args[4..].join(" "), rest);
        // The default release: no name at all (`mix release APP` fails without releases:).
        let out = run_build_script(&tools, "");
        assert!(
            out.ends_with("[+]\n[release]\n[--overwrite]\n[--path]\n[/app]\n"),
            "{out}"
        );
    }

    #[test]
    fn build_script_runs_mix_twice_when_mix_is_a_shim() {
        // asdf and Nix put shell scripts named `mix` on PATH: `elixir -S` cannot run those.
        let tools = [("mix", "#!/bin/sh\necho \"mix $*\"\n")];
        let out = run_build_script(&tools, "hello");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "@M noflock",
                "@M deps.get",
                "mix deps.get --only prod",
                "@M release",
                "mix release hello --overwrite --path /app"
            ]
        );
        let out = run_build_script(&tools, "");
        assert!(
            out.ends_with("mix release --overwrite --path /app\n"),
            "{out}"
        );
    }

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
