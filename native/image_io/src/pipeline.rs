//! One build, end to end: plan → layers → image → output(s) → metadata.
//!
//! The NIF decodes a [`Request`], calls [`run`] on the shared runtime and forwards [`Event`]s and
//! the final result to the calling process.

use crate::base::{self, LoadedBase};
use crate::builder::{self, BuilderError, BuilderSpec};
use crate::dockerfiles::{self, DockerfileFlow, FlowError, FlowOutcome};
use crate::engine::{resolve_endpoint, DockerEngine, Endpoint, EngineError};
use crate::registry::{self, PushOptions, PushOutcome, RegistryError};
use crate::sink::{self, Built, SinkError};
use image_core::archive::BlobDir;
use image_core::build::{build_cached, BuildError, LayerCache, Progress as BuildProgress};
use image_core::fs::{Fs, HostFs};
use image_core::image::{Summary, MAX_CREATED};
use image_core::layer::LayerError;
use image_core::layer::Source as EntrySource;
use image_core::plan::{plan, release_platform, BasePlanError, PlanError, RuntimeFile, Settings};
use image_core::reference::{Reference, ReferenceError};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the engine is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineOutput {
    /// Not at all.
    Off,
    /// Load the image; no engine is an error.
    Load,
    /// Load the image; when no engine socket exists, write the archive at this path instead.
    LoadOrArchive(PathBuf),
}

/// Where the image goes: any combination, each output taking the same image.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The local engine.
    pub engine: EngineOutput,
    /// An archive file.
    pub archive: Option<PathBuf>,
    /// A registry (the tags name it).
    pub push: Option<PushOptions>,
}

/// Where the release comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Already assembled on the host at `settings.release_dir`; runtime files from the host.
    Host,
    /// Built in a container of this builder image; runtime files from that container.
    Builder {
        /// The builder image.
        image: String,
        /// `true`: `releases:` defines the release (`mix release NAME`); `false`: the default
        /// release of a project without `releases:` (a plain `mix release`).
        named_release: bool,
        /// The project on the host.
        project_dir: PathBuf,
        /// `MIX_ENV` of the build.
        mix_env: String,
        /// `false` for `--no-cache`.
        cache: bool,
    },
}

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where the release comes from.
    pub source: Source,
    /// What goes into the image (`release_dir` is ignored for builder builds).
    pub settings: Settings,
    /// A base image to put the release on, instead of the runtime files.
    pub base: Option<String>,
    /// Timestamp of the image and of every file in it.
    pub created: u64,
    /// gzip level 1–9.
    pub compression_level: u32,
    /// Tags (`NAME[:TAG]`).
    pub tags: Vec<String>,
    /// Scratch directory for layer blobs.
    pub work_dir: PathBuf,
    /// Where compressed layers are kept between builds (`None`: compress every layer).
    pub layer_cache: Option<PathBuf>,
    /// Destinations.
    pub outputs: Outputs,
    /// Where to write the JSON summary, if anywhere.
    pub metadata_file: Option<PathBuf>,
    /// The bound on silence of every engine request ([`crate::stall`]); registry requests
    /// take theirs from `outputs.push`.
    pub stall_timeout: Duration,
    /// The SBOM file and the signing key (not used yet: issue 14's registry part).
    pub supply: image_core::supply::Outputs,
}

/// Progress, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step starts.
    Step(String),
    /// Bytes done in the current step (uncompressed layer bytes, or archive bytes sent).
    Bytes {
        /// Step name (`runtime layer`, `load`, `archive`).
        step: String,
        /// Bytes so far.
        done: u64,
    },
    /// Something the user should know (a fallback was taken).
    Notice(String),
    /// A line of output of a build running in the engine.
    Output {
        /// The step it belongs to.
        step: String,
        /// The line.
        line: String,
    },
}

/// What a successful build produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The image.
    #[serde(flatten)]
    pub summary: Summary,
    /// The engine's address, when loaded.
    pub engine: Option<String>,
    /// Image size as the engine reports it, when loaded.
    pub engine_size: Option<u64>,
    /// The archive's path, when written.
    pub archive: Option<PathBuf>,
    /// The archive's size, when written.
    pub archive_size: Option<u64>,
    /// What a registry push did, when pushed.
    pub pushed: Option<PushOutcome>,
    /// Runtime files outside `/app` and why each is there.
    pub runtime_files: Vec<RuntimeFile>,
}

/// A failed build: a reason the caller can match on and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Machine-readable reason (an atom on the Elixir side).
    pub reason: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl ToString) -> Failure {
        Failure {
            reason,
            message: message.to_string(),
        }
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Failure {
        let reason = match &e {
            PlanError::NotARelease { .. } => "not_a_release",
            PlanError::NotLinux { .. } => "not_linux",
            PlanError::Read { .. } => "read_error",
            PlanError::Closure(_) => "missing_runtime_file",
            PlanError::MissingTool(_) => "missing_runtime_file",
            PlanError::ExtraFile { .. } => "invalid_config",
        };
        Failure::new(reason, e)
    }
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Failure {
        let reason = match &e {
            BuildError::Layer {
                source: LayerError::Cancelled,
                ..
            } => "cancelled",
            BuildError::Layer { .. } => "read_error",
            BuildError::Blobs { .. } => "output_error",
        };
        Failure::new(reason, e)
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure::new(e.reason(), e)
    }
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Failure {
        match e {
            SinkError::Engine(e) => e.into(),
            SinkError::File { .. } | SinkError::Archive(_) => Failure::new("output_error", e),
            SinkError::IdMismatch { .. } => Failure::new("load_failed", e),
            SinkError::Internal(_) => Failure::new("internal", e),
            SinkError::NotUndone { error, left } => {
                let inner = Failure::from(*error);
                Failure::new(
                    inner.reason,
                    format!("{}. Not put back: {}", inner.message, left.join("; ")),
                )
            }
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure::new(e.reason(), e)
    }
}

impl From<BuilderError> for Failure {
    fn from(e: BuilderError) -> Failure {
        Failure::new(e.reason(), e)
    }
}

impl From<FlowError> for Failure {
    fn from(e: FlowError) -> Failure {
        Failure::new(e.reason(), e)
    }
}

impl From<ReferenceError> for Failure {
    fn from(e: ReferenceError) -> Failure {
        Failure::new("invalid_reference", e)
    }
}

/// Run one build. `events` receives progress; `cancelled` stops the work at the next file.
pub async fn run(
    req: Request,
    events: Arc<dyn Fn(Event) + Send + Sync>,
    cancelled: Arc<AtomicBool>,
) -> Result<Outcome, Failure> {
    check_request(&req)?;
    let tags = req
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;

    // Decide the destinations before the work, so a refusing engine fails fast.
    let mut archive_path = req.outputs.archive.clone();
    let builder_needs_engine = matches!(req.source, Source::Builder { .. });
    let engine = match &req.outputs.engine {
        EngineOutput::Off if !builder_needs_engine => None,
        EngineOutput::LoadOrArchive(fallback) if !builder_needs_engine => {
            match resolve_endpoint(&|k| std::env::var(k).ok())? {
                Endpoint::Missing(sock) => {
                    events(Event::Notice(format!(
                        "no Docker engine socket at {} (the default; DOCKER_HOST is not set and no Docker context is selected): writing an image archive to {} instead (load it with `docker load -i {}`)",
                        sock.display(),
                        fallback.display(),
                        fallback.display()
                    )));
                    archive_path.get_or_insert_with(|| fallback.clone());
                    None
                }
                endpoint => {
                    events(Event::Step(format!(
                        "connecting to the Docker engine at {endpoint}"
                    )));
                    Some(DockerEngine::connect_with(&endpoint, req.stall_timeout).await?)
                }
            }
        }
        _ => Some(required_engine(&events, "this build", req.stall_timeout).await?),
    };
    let load_into_engine = !matches!(req.outputs.engine, EngineOutput::Off);

    // The release and the filesystem its runtime files are read from.
    let mut settings = req.settings.clone();
    let mut built_release = match &req.source {
        Source::Host => None,
        Source::Builder {
            image,
            named_release,
            project_dir,
            mix_env,
            cache,
        } => {
            let engine = engine.as_ref().ok_or_else(|| {
                Failure::new("internal", "a builder build without an engine connection")
            })?;
            let swept = builder::sweep_leftovers(engine).await?;
            if swept > 0 {
                events(Event::Notice(format!(
                    "removed {swept} temporary container(s) left by an interrupted run"
                )));
            }
            let excludes = image_core::context::Excludes::for_project(project_dir)
                .map_err(|e| Failure::new("read_error", e))?;
            let spec = BuilderSpec {
                image: image.clone(),
                project_dir: project_dir.clone(),
                mix_env: mix_env.clone(),
                release_name: settings.release_name.clone(),
                named_release: *named_release,
                cache: *cache,
                excludes,
            };
            let on_step: builder::OnStep = {
                let events = events.clone();
                Arc::new(move |s: &str| events(Event::Step(s.to_string())))
            };
            let on_line: builder::OnLine = {
                let events = events.clone();
                Arc::new(move |step: &str, line: &str| {
                    events(Event::Output {
                        step: step.to_string(),
                        line: line.to_string(),
                    })
                })
            };
            let built =
                builder::build_release(engine, &spec, on_step, on_line, cancelled.clone()).await?;
            events(Event::Step(format!(
                "built the release in {image} (OTP {})",
                built.otp_release
            )));
            settings.release_dir = built.release_dir.clone();
            Some(built)
        }
    };
    let fs: Arc<dyn Fs> = match &built_release {
        Some(b) => b.fs.clone(),
        None => Arc::new(HostFs::new("/")),
    };

    let blobs = BlobDir {
        root: req.work_dir.join("blobs"),
    };
    let base: Option<Arc<LoadedBase>> = match &req.base {
        None => None,
        Some(reference) => {
            events(Event::Step(format!("loading the base image {reference}")));
            // A local base needs an engine even when the outputs don't use one.
            let own = match (&engine, resolve_endpoint(&|k| std::env::var(k).ok())) {
                (None, Ok(ep)) if !matches!(ep, Endpoint::Missing(_)) => {
                    DockerEngine::connect_with(&ep, req.stall_timeout)
                        .await
                        .ok()
                }
                _ => None,
            };
            let platform = release_platform(&*fs, &settings).ok();
            let registry = req.outputs.push.clone().unwrap_or_else(|| PushOptions {
                stall_timeout: Some(req.stall_timeout),
                ..PushOptions::default()
            });
            let loaded = base::load_base(
                reference,
                engine.as_ref().or(own.as_ref()),
                &registry,
                &blobs,
                platform.as_ref(),
                req.compression_level,
            )
            .await
            .map_err(|e| Failure::new(e.reason(), e))?;
            events(Event::Notice(format!(
                "base image {reference} read from {}",
                loaded.source
            )));
            Some(Arc::new(loaded))
        }
    };

    events(Event::Step(if base.is_some() {
        "checking the base against the release".into()
    } else {
        "resolving runtime files".into()
    }));
    // Plan. From a builder, the plan runs again after each fetch of what it asked for and did
    // not find, until a run asks for nothing (see `container_fs`); on the host it runs once.
    let lazy = built_release.is_some();
    let plan = loop {
        let attempt = {
            let (fs, settings, base) = (fs.clone(), settings.clone(), base.clone());
            tokio::task::spawn_blocking(move || {
                let plan = make_plan(&*fs, &settings, base.as_deref());
                if let (true, Ok(plan)) = (lazy, &plan) {
                    want_sources(&*fs, plan);
                }
                plan
            })
            .await
            .map_err(|e| Failure::new("internal", format!("the planner failed: {e}")))?
        };
        let Some(b) = built_release.as_mut() else {
            break attempt?;
        };
        if cancelled.load(Ordering::Relaxed) {
            return Err(BuilderError::Cancelled.into());
        }
        if b.fetch_wants().await? == 0 {
            break attempt?;
        }
        if b.rounds > MAX_FETCH_ROUNDS {
            return Err(Failure::new(
                "builder_error",
                format!(
                    "the runtime files were still not all read from the builder after {MAX_FETCH_ROUNDS} rounds"
                ),
            ));
        }
    };
    for notice in &plan.notices {
        events(Event::Notice(notice.clone()));
    }
    if let Some(b) = &built_release {
        let (bytes, entries) = b.fs.fetched();
        events(Event::Notice(format!(
            "read {entries} entries ({}) of the builder's filesystem in {} round(s)",
            human_bytes(bytes),
            b.rounds
        )));
    }

    // The builder container is removed while the layers are written.
    let remove_builder = async {
        match built_release.as_mut() {
            Some(b) => b.finish().await,
            None => None,
        }
    };
    let write_layers = {
        let events = events.clone();
        let cancelled = cancelled.clone();
        let req = req.clone();
        let blobs = blobs.clone();
        let fs = fs.clone();
        let base = base.clone();
        tokio::task::spawn_blocking(move || -> Result<_, Failure> {
            let mut last_step = usize::MAX;
            let mut progress = |p: BuildProgress| {
                match p {
                    BuildProgress::Layer {
                        name,
                        index,
                        count,
                        bytes,
                    } => {
                        if index != last_step {
                            last_step = index;
                            events(Event::Step(format!(
                                "writing layer {}/{count}: {name}",
                                index + 1
                            )));
                        }
                        events(Event::Bytes {
                            step: format!("{name} layer"),
                            done: bytes,
                        });
                    }
                    BuildProgress::Checking { name, bytes, .. } => {
                        events(Event::Bytes {
                            step: format!("{name} layer"),
                            done: bytes,
                        });
                    }
                    BuildProgress::Reused { name, index, count } => {
                        events(Event::Step(format!(
                            "layer {}/{count}: {name} unchanged, taken from the layer cache",
                            index + 1
                        )));
                    }
                }
                !cancelled.load(Ordering::Relaxed)
            };
            let cache = req.layer_cache.clone().map(|dir| LayerCache { dir });
            let image = build_cached(
                &*fs,
                &plan,
                req.created,
                req.compression_level,
                &blobs,
                cache.as_ref(),
                &mut progress,
            )?;
            if let Some(cache) = &cache {
                // This image's layers and the previous image's stay.
                let _ = cache.prune(2 * plan.layers.len().max(1));
            }
            let image = match &base {
                None => image,
                Some(b) => b.apply(image),
            };
            Ok((image, plan.runtime_files))
        })
    };
    let (warning, written) = tokio::join!(remove_builder, write_layers);
    if let Some(w) = warning {
        events(Event::Step(w));
    }
    let (image, runtime_files) = written
        .map_err(|e| Failure::new("internal", format!("the layer writer failed: {e}")))??;
    let built = Arc::new(Built {
        image,
        blobs,
        tags: tags.clone(),
    });

    let mut outcome = Outcome {
        summary: built
            .image
            .summary(&tags.iter().map(|t| t.to_string()).collect::<Vec<_>>()),
        engine: None,
        engine_size: None,
        archive: None,
        archive_size: None,
        pushed: None,
        runtime_files,
    };
    let bytes_event = |step: &'static str| -> sink::Progress {
        let events = events.clone();
        Arc::new(move |done| {
            events(Event::Bytes {
                step: step.into(),
                done,
            })
        })
    };
    // Every output commits together or not at all. First what changes nothing anyone sees:
    // the files are written away from their paths (an unusable path fails here, before the
    // engine is touched) and the image is loaded into the engine untagged. Then, in order, what
    // can be taken back: engine tags, registry tags, files. A failure after the first of those
    // puts back what was changed, and the message says what could not be.
    let metadata = match &req.metadata_file {
        Some(path) => Some(sink::PendingFile::create_with_scratch(path, &req.work_dir)?),
        None => None,
    };
    let mut archive = match archive_path {
        Some(path) => {
            events(Event::Step(format!("writing {}", path.display())));
            let pending = sink::PendingFile::create_with_scratch(&path, &req.work_dir)?;
            Some(sink::archive_into(built.clone(), pending, bytes_event("archive")).await?)
        }
        None => None,
    };
    let engine = engine.as_ref().filter(|_| load_into_engine);
    let mut changes = Changes::default();
    let committed = async {
        if let Some(engine) = engine {
            events(Event::Step("loading the image into the engine".into()));
            let loaded = sink::engine_load(engine, built.clone(), bytes_event("load")).await?;
            changes.image_id = loaded.id.clone();
            sink::tag(engine, &loaded.id, &built.tags, &mut changes.tags).await?;
            outcome.engine = Some(engine.endpoint().to_string());
            outcome.engine_size = Some(loaded.size);
        }
        if let Some(opts) = &req.outputs.push {
            events(Event::Step("pushing to the registry".into()));
            outcome.pushed = Some(
                registry::push_undoable(
                    built.clone(),
                    opts,
                    bytes_event("push"),
                    &mut changes.registry,
                )
                .await?,
            );
        }
        if let Some(pending) = &mut archive {
            outcome.archive = Some(pending.path().to_path_buf());
            outcome.archive_size = Some(pending.flushed_len()?);
        }
        let metadata = match metadata {
            Some(mut pending) => {
                let json = serde_json::to_vec_pretty(&outcome)
                    .map_err(|e| Failure::new("internal", e.to_string()))?;
                use std::io::Write;
                pending
                    .writer()
                    .write_all(&json)
                    .map_err(|source| SinkError::File {
                        path: pending.path().to_path_buf(),
                        source,
                    })?;
                pending.flushed_len()?;
                Some(pending)
            }
            None => None,
        };
        // Regular files first (renames, which can be put back), a device or FIFO last.
        let mut files: Vec<sink::PendingFile> = archive.into_iter().chain(metadata).collect();
        files.sort_by_key(|f| f.is_stream());
        for file in files {
            changes.files.push(file.publish()?);
        }
        Ok::<(), Failure>(())
    }
    .await;
    match committed {
        Ok(()) => {
            changes.keep();
            Ok(outcome)
        }
        Err(failure) => Err(changes.undo(failure, engine).await),
    }
}

/// What the outputs of a run changed so far, to put back when a later output fails.
#[derive(Default)]
struct Changes {
    /// The image ID the engine tags were moved to.
    image_id: String,
    tags: Vec<sink::TagMove>,
    registry: registry::PushedTags,
    files: Vec<sink::Published>,
}

impl Changes {
    fn keep(self) {
        for f in self.files {
            f.keep();
        }
    }

    /// Put everything back, the last change first; `failure`'s message gains what could not be.
    async fn undo(self, mut failure: Failure, engine: Option<&DockerEngine>) -> Failure {
        let changed = !self.files.is_empty() || !self.tags.is_empty() || self.registry.moved() > 0;
        let mut left = Vec::new();
        for f in self.files.into_iter().rev() {
            if let Err(e) = f.undo() {
                left.push(e);
            }
        }
        left.extend(self.registry.undo().await);
        if let Some(engine) = engine {
            left.extend(sink::untag(engine, &self.image_id, self.tags).await);
        }
        if !left.is_empty() {
            failure.message = format!(
                "{}\nThis run could not undo everything it had changed before it failed:\n  - {}",
                failure.message,
                left.join("\n  - ")
            );
        } else if changed {
            failure.message = format!(
                "{} (the tags and files this run had already changed were put back as they were)",
                failure.message
            );
        }
        failure
    }
}

/// Values that would make a broken image or a confusing failure later (the Elixir side checks
/// them first, with the same rules; this is the second line for any other caller).
fn check_request(req: &Request) -> Result<(), Failure> {
    let invalid = |m: String| Err(Failure::new("invalid_config", m));
    if req.created > MAX_CREATED {
        return invalid(format!(
            "invalid image timestamp (SOURCE_DATE_EPOCH): it must be from 0 to {MAX_CREATED} (9999-12-31T23:59:59Z), got: {}",
            req.created
        ));
    }
    for e in &req.settings.env {
        let name = e.split('=').next().unwrap_or_default();
        if !e.contains('=') || name.is_empty() || e.contains('\0') {
            return invalid(format!(
                "invalid container_env entry: expected NAME=value with a non-empty NAME and no NUL byte, got: {e:?}"
            ));
        }
    }
    for (k, v) in &req.settings.labels {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return invalid(format!(
                "invalid label: expected a non-empty key, and no NUL byte in key or value, got: {k:?} = {v:?}"
            ));
        }
    }
    let paths = [
        Some(&req.settings.release_dir),
        Some(&req.work_dir),
        req.layer_cache.as_ref(),
        req.outputs.archive.as_ref(),
        req.metadata_file.as_ref(),
    ];
    let extra = req.settings.extra_files.iter().map(Some);
    for p in paths.into_iter().chain(extra).flatten() {
        if p.as_os_str().as_encoded_bytes().contains(&0) {
            return invalid(format!("invalid path: it contains a NUL byte, got: {p:?}"));
        }
    }
    Ok(())
}

/// More fetch rounds than any closure is deep: a plan still asking after this many is a bug.
const MAX_FETCH_ROUNDS: usize = 64;

/// The plan of the image: on its own, or on a base.
fn make_plan(
    fs: &dyn Fs,
    settings: &Settings,
    base: Option<&LoadedBase>,
) -> Result<image_core::plan::Plan, Failure> {
    match base {
        None => Ok(plan(fs, settings)?),
        Some(b) => b.plan(fs, settings).map_err(|e| match e {
            BasePlanError::Plan(e) => Failure::from(e),
            BasePlanError::Incompatible(e) => Failure::new("base_incompatible", e),
        }),
    }
}

/// Look at each file `plan` will copy, so that a lazily fetched filesystem asks for any it does
/// not have yet before the layers are written.
fn want_sources(fs: &dyn Fs, plan: &image_core::plan::Plan) {
    for layer in &plan.layers {
        for entry in &layer.entries {
            if let EntrySource::File(path) = &entry.source {
                let _ = fs.lstat(path);
            }
        }
    }
}

/// A size in the unit that shows it (SI, as `docker images` and the task's summary print):
/// `812 B`, `45.9 kB`, `12.3 MB`, `1.2 GB`.
fn human_bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    for unit in ["kB", "MB", "GB"] {
        // Compared as printed, so 999,950 bytes is `1.0 MB`, not `1000.0 kB`.
        if (value * 10.0).round() < 10_000.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1} TB")
}

/// Connect to the engine the environment names; an engine is required.
pub(crate) async fn required_engine(
    events: &Arc<dyn Fn(Event) + Send + Sync>,
    purpose: &str,
    stall: Duration,
) -> Result<DockerEngine, Failure> {
    let endpoint = resolve_endpoint(&|k| std::env::var(k).ok())?;
    if let Endpoint::Missing(sock) = &endpoint {
        return Err(Failure::new(
            "engine_unreachable",
            format!(
                "{purpose} needs a Docker engine, and there is no engine socket at {}: start dockerd or set DOCKER_HOST",
                sock.display()
            ),
        ));
    }
    events(Event::Step(format!(
        "connecting to the Docker engine at {endpoint}"
    )));
    Ok(DockerEngine::connect_with(&endpoint, stall).await?)
}

/// Run the article's two-Dockerfile flow (`Dockerfile.build`, then `Dockerfile`) in the engine.
pub async fn run_dockerfiles(
    flow: DockerfileFlow,
    stall: Duration,
    events: Arc<dyn Fn(Event) + Send + Sync>,
    cancelled: Arc<AtomicBool>,
) -> Result<FlowOutcome, Failure> {
    let engine = required_engine(&events, "the Dockerfile flow", stall).await?;
    let on_step = {
        let events = events.clone();
        Arc::new(move |s: &str| events(Event::Step(s.to_string())))
    };
    let on_line = {
        let events = events.clone();
        Arc::new(move |step: &str, line: &str| {
            events(Event::Output {
                step: step.to_string(),
                line: line.to_string(),
            })
        })
    };
    Ok(dockerfiles::run(&engine, &flow, on_step, on_line, cancelled).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            source: Source::Host,
            settings: Settings::default(),
            base: None,
            created: 0,
            compression_level: 1,
            tags: vec!["hello:1".into()],
            work_dir: "/tmp/work".into(),
            layer_cache: None,
            outputs: Outputs {
                engine: EngineOutput::Off,
                archive: None,
                push: None,
            },
            metadata_file: None,
            stall_timeout: crate::stall::DEFAULT_STALL,
            supply: Default::default(),
        }
    }

    #[test]
    fn values_that_would_break_the_image_are_refused_with_the_rule() {
        assert!(check_request(&request()).is_ok());
        let mut r = request();
        r.created = MAX_CREATED;
        assert!(check_request(&r).is_ok());
        r.created = MAX_CREATED + 1;
        let f = check_request(&r).unwrap_err();
        assert_eq!(f.reason, "invalid_config");
        assert!(f.message.contains("9999-12-31T23:59:59Z"), "{}", f.message);
        assert!(f.message.contains("253402300800"), "{}", f.message);

        for bad in ["A\0B=x", "A=x\0", "=x", "NOEQUALS"] {
            let mut r = request();
            r.settings.env = vec![bad.into()];
            let f = check_request(&r).unwrap_err();
            assert!(f.message.contains("NAME=value"), "{bad:?}: {}", f.message);
        }
        let mut r = request();
        r.settings.labels.insert("k".into(), "v\0".into());
        assert!(check_request(&r).is_err());
        let mut r = request();
        r.settings.extra_files = vec!["/etc/a\0b".into()];
        assert!(check_request(&r).unwrap_err().message.contains("NUL byte"));
    }

    #[test]
    fn sizes_use_the_unit_that_shows_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(45_900), "45.9 kB");
        assert_eq!(human_bytes(999_949), "999.9 kB");
        assert_eq!(human_bytes(999_950), "1.0 MB");
        assert_eq!(human_bytes(23_456_789), "23.5 MB");
        assert_eq!(human_bytes(1_234_567_890), "1.2 GB");
    }
}
