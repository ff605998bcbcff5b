//! The two-Dockerfile flow of "How I do releases with Elixir and Docker", over the engine API.
//!
//! The article glues two Dockerfiles with a shell script; [`run`] does the same five steps:
//!
//! 1. build the *build image* from `Dockerfile.build`, with the project directory as context
//!    (streamed as tar, `.dockerignore` honoured by [`image_core::context`]) and the build-arg
//!    `version`;
//! 2. create a temporary container from it (never started: the archive API works on created
//!    containers);
//! 3. copy the release tarball out of `/tmp/NAME` into a temporary file;
//! 4. remove the container;
//! 5. build the *final image* from `Dockerfile`, whose context is the project's files plus the
//!    tarball at the context root (so `ADD NAME /opt/app` unpacks it), with a `.dockerignore`
//!    that re-includes the tarball for engines that apply it again (Podman), and tag it.
//!
//! The temporary container has the lifecycle of every temporary container
//! ([`crate::engine::Temporary`], shared with [`crate::builder`]): labelled, removed on
//! success, on failure and on cancellation (also when the future is dropped: the guard hands
//! the removal to the runtime). If the process is killed outright, nothing runs at all; every
//! run starts with [`crate::engine::sweep_leftovers`], which removes labelled containers whose
//! owner process on this host is gone. Cleanup never depends on code running at exit.
//!
//! The engine sits behind [`BuildEngine`] (build, download, plus [`crate::engine::Engine`]'s
//! tag and inspect and [`crate::engine::Containers`]' create and remove), so the flow's ordering and cleanup
//! are tested with a fake. The build contexts are made in `context.rs`, the tarball copied out
//! in `tarball.rs`.

mod context;
mod tarball;

use crate::engine::{
    sweep_leftovers, BuildCallError, BuildEngine, BuildSpec, ContainerSpec, Engine, EngineError,
    Temporary,
};
use crate::error::Reason;
use context::{context_stream, final_context, release_context, BuildContext};
use image_core::context::ContextError;
use image_core::reference::{Reference, ReferenceError};
use serde::Serialize;
use std::future::Future;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tarball::copy_out;
use tokio_util::sync::CancellationToken;

/// Receives one line per step, for people.
pub type OnStep = Arc<dyn Fn(&str) + Send + Sync>;
/// Receives `(step key, line)` for each line of build output.
pub type OnLine = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One run of the two-Dockerfile flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerfileFlow {
    /// The project directory: the build context of both builds.
    pub project_dir: PathBuf,
    /// The Dockerfile that builds the release (`Dockerfile.build`), relative to `project_dir`.
    pub build_dockerfile: PathBuf,
    /// The Dockerfile of the final image (`Dockerfile`), relative to `project_dir`.
    pub dockerfile: PathBuf,
    /// The build image's tag, e.g. `hello-build:0.1.0`.
    pub build_tag: String,
    /// Passed to the first build as the build-arg `version`.
    pub version: String,
    /// The tarball's file name: the first build must leave it at `/tmp/NAME`, the final build
    /// finds it at its context root. E.g. `hello.tar.gz`.
    pub release_tarball: String,
    /// The final image's tags (at least one), e.g. `hello:0.1.0`.
    pub final_tags: Vec<String>,
    /// Build both images without the engine's build cache.
    pub no_cache: bool,
}

/// What a successful run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowOutcome {
    /// The final image's ID (`sha256:…`); `image_id` on the Elixir side.
    #[serde(rename = "image_id")]
    pub final_image_id: String,
    /// The tags the final image received, normalised (`hello:0.1.0`).
    pub tags: Vec<String>,
    /// The final image's size as the engine reports it.
    pub size: u64,
    /// Size of the release tarball copied out of the build image.
    pub tarball_bytes: u64,
}

/// The flow's steps, in order. [`Step::key`] is what `on_line` receives as its first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Building the build image from `Dockerfile.build`.
    BuildRelease,
    /// Creating the temporary container.
    CreateContainer,
    /// Copying the tarball out of the container.
    CopyRelease,
    /// Removing the temporary container.
    RemoveContainer,
    /// Building the final image from `Dockerfile`.
    BuildFinal,
}

impl Step {
    /// A stable key: `build_release`, `create_container`, `copy_release`, `remove_container`,
    /// `build_final`.
    pub fn key(self) -> &'static str {
        match self {
            Step::BuildRelease => "build_release",
            Step::CreateContainer => "create_container",
            Step::CopyRelease => "copy_release",
            Step::RemoveContainer => "remove_container",
            Step::BuildFinal => "build_final",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::BuildRelease => "building the release image",
            Step::CreateContainer => "creating the temporary container",
            Step::CopyRelease => "copying the release out of the build image",
            Step::RemoveContainer => "removing the temporary container",
            Step::BuildFinal => "building the final image",
        })
    }
}

/// Why the flow failed. Each message names the failing step; [`FlowError::reason`] is what the
/// Elixir side matches on.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A Dockerfile does not exist (checked before the engine is contacted).
    #[error("the {role} {} does not exist: {rule}", path.display())]
    DockerfileMissing {
        /// The path looked at.
        path: PathBuf,
        /// `build Dockerfile` or `Dockerfile`.
        role: &'static str,
        /// What is expected.
        rule: &'static str,
    },
    /// A setting of the flow is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A tag is not a valid image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The project directory could not be read into a build context.
    #[error("{step} failed while sending the project as build context: {source}")]
    Context {
        /// The build that needed the context.
        step: Step,
        /// The cause.
        source: ContextError,
    },
    /// The engine reported a failed build (usually an `errorDetail` inside its 200 stream).
    #[error("{step} {tag} from {} failed: {message}", dockerfile.display())]
    BuildFailed {
        /// [`Step::BuildRelease`] or [`Step::BuildFinal`].
        step: Step,
        /// The Dockerfile built.
        dockerfile: PathBuf,
        /// The tag it was to get.
        tag: String,
        /// The engine's error text.
        message: String,
    },
    /// The build image has no release tarball where the flow looks for it.
    #[error("{step} failed: the build image {build_tag} has no {path}: {} must leave the release tarball there (the article copies _build/prod/<app>-$version.tar.gz to /tmp/<app>.tar.gz)", build_dockerfile.display())]
    TarballMissing {
        /// The step (always [`Step::CopyRelease`]).
        step: Step,
        /// `/tmp/NAME`.
        path: String,
        /// The build image.
        build_tag: String,
        /// The build Dockerfile, for the message.
        build_dockerfile: PathBuf,
    },
    /// The tarball exists but cannot be used (empty, a directory, a symlink).
    #[error("{step} failed: {path} in the build image {build_tag} {problem}: {} must leave the release tarball itself there", build_dockerfile.display())]
    TarballUnusable {
        /// The step (always [`Step::CopyRelease`]).
        step: Step,
        /// `/tmp/NAME`.
        path: String,
        /// The build image.
        build_tag: String,
        /// The build Dockerfile, for the message.
        build_dockerfile: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An engine call failed.
    #[error("{step} failed: {source}")]
    Engine {
        /// The step.
        step: Step,
        /// The engine's error.
        source: EngineError,
    },
    /// A local temporary file could not be written.
    #[error("{step} failed: cannot write the temporary file {}: {source}", path.display())]
    LocalFile {
        /// The step.
        step: Step,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The run was cancelled.
    #[error("the build was cancelled while {step}")]
    Cancelled {
        /// The step that was running.
        step: Step,
    },
}

impl FlowError {
    /// The reason atom: `dockerfile_missing`, `build_failed`, `tarball_missing`, `engine_error`,
    /// `cancelled`, and for bad input or local IO the project's existing `invalid_config`,
    /// `invalid_reference`, `read_error` and `output_error`.
    pub fn reason(&self) -> Reason {
        match self {
            FlowError::DockerfileMissing { .. } => Reason::DockerfileMissing,
            FlowError::Invalid(_) => Reason::InvalidConfig,
            FlowError::Reference(_) => Reason::InvalidReference,
            FlowError::Context { .. } => Reason::ReadError,
            FlowError::BuildFailed { .. } => Reason::BuildFailed,
            FlowError::TarballMissing { .. } | FlowError::TarballUnusable { .. } => {
                Reason::TarballMissing
            }
            FlowError::Engine { source, .. } if source.is_stall() => Reason::EngineStalled,
            FlowError::Engine { .. } => Reason::EngineError,
            FlowError::LocalFile { .. } => Reason::OutputError,
            FlowError::Cancelled { .. } => Reason::Cancelled,
        }
    }

    /// The step that failed, if the engine was involved.
    pub fn step(&self) -> Option<Step> {
        match self {
            FlowError::Context { step, .. }
            | FlowError::BuildFailed { step, .. }
            | FlowError::TarballMissing { step, .. }
            | FlowError::TarballUnusable { step, .. }
            | FlowError::Engine { step, .. }
            | FlowError::LocalFile { step, .. }
            | FlowError::Cancelled { step } => Some(*step),
            _ => None,
        }
    }
}

/// Run the flow. `on_step` gets one line per step; `on_line` gets `(Step::key, line)` for each
/// line of build output (and `("sweep", line)` for removed leftovers); cancelling `cancel` stops
/// the run (the temporary container is still removed).
///
/// ```no_run
/// # async fn f(engine: &image_io::engine::DockerEngine) {
/// use image_io::dockerfiles::{run, DockerfileFlow};
/// use std::sync::Arc;
/// use tokio_util::sync::CancellationToken;
/// let flow = DockerfileFlow {
///     project_dir: "/src/hello".into(),
///     build_dockerfile: "Dockerfile.build".into(),
///     dockerfile: "Dockerfile".into(),
///     build_tag: "hello-build:0.1.0".into(),
///     version: "0.1.0".into(),
///     release_tarball: "hello.tar.gz".into(),
///     final_tags: vec!["hello:0.1.0".into(), "hello:latest".into()],
///     no_cache: false,
/// };
/// let outcome = run(
///     engine,
///     &flow,
///     Arc::new(|step| println!("{step}")),
///     Arc::new(|_step, line| println!("  {line}")),
///     CancellationToken::new(),
/// )
/// .await;
/// # }
/// ```
pub async fn run<E: BuildEngine>(
    engine: &E,
    flow: &DockerfileFlow,
    on_step: OnStep,
    on_line: OnLine,
    cancel: CancellationToken,
) -> Result<FlowOutcome, FlowError> {
    let checked = check(flow)?;
    // Asked while the engine answers: a message about tags left wrong names its command.
    let cli = crate::engine::Containers::cli(engine).await;
    // What the build tag and the final tags name before the run: a run that fails puts them
    // back, so that only a run that succeeds as a whole changes them.
    let mut before = Vec::new();
    for t in std::iter::once(&checked.build_tag).chain(&checked.final_tags) {
        if let Ok(id) = engine.tagged(&t.repository(), &t.tag).await {
            before.push((t.clone(), id));
        }
    }
    let result = run_checked(engine, flow, checked, &on_step, &on_line, cancel).await;
    if result.is_err() {
        let left = put_back(engine, &before).await;
        if !left.is_empty() {
            on_line(
                "restore",
                &format!(
                    "could not put back what these tags named before the run: {} (check them with `{cli} image inspect`)",
                    left.join(", ")
                ),
            );
        }
    }
    result
}

/// Point each tag of `before` at the image it named (untag it when it named none), where it
/// names another image now. Returns the tags that could not be put back.
async fn put_back<E: Engine>(engine: &E, before: &[(Reference, Option<String>)]) -> Vec<String> {
    let mut left = Vec::new();
    for (t, was) in before {
        let (repo, tag) = (t.repository(), t.tag.clone());
        let now = match engine.tagged(&repo, &tag).await {
            Ok(now) => now,
            Err(_) => {
                left.push(t.to_string());
                continue;
            }
        };
        if now == *was {
            continue;
        }
        let done = match was {
            Some(id) => engine.tag(id, &repo, &tag).await,
            None => engine.untag(&repo, &tag).await,
        };
        if done.is_err() {
            left.push(t.to_string());
        }
    }
    left
}

async fn run_checked<E: BuildEngine>(
    engine: &E,
    flow: &DockerfileFlow,
    checked: Checked,
    on_step: &OnStep,
    on_line: &OnLine,
    cancel: CancellationToken,
) -> Result<FlowOutcome, FlowError> {
    // Leftovers of killed runs; a failing sweep must not stop this run.
    if let Ok(n @ 1..) = sweep_leftovers(engine).await {
        on_line(
            "sweep",
            &format!("removed {n} leftover temporary container(s) of runs that were killed"),
        );
    }

    // 1. The build image.
    let step = Step::BuildRelease;
    on_step(&format!(
        "building the release in {} from {} (version {})",
        checked.build_tag,
        flow.build_dockerfile.display(),
        flow.version
    ));
    let spec = BuildSpec {
        dockerfile: checked.build_dockerfile.clone(),
        tag: checked.build_tag.to_string(),
        build_args: vec![("version".into(), flow.version.clone())],
        no_cache: flow.no_cache,
    };
    let context = release_context(flow, &checked.build_dockerfile)?;
    build_step(
        engine,
        step,
        &spec,
        flow,
        &flow.build_dockerfile,
        context,
        on_line,
        &cancel,
    )
    .await?;

    // 2–4. The temporary container, removed whatever happens in between.
    let step = Step::CreateContainer;
    check_cancelled(&cancel, step)?;
    on_step(&format!(
        "creating a temporary container from {}",
        checked.build_tag
    ));
    let name = temporary_name();
    let spec = ContainerSpec {
        name: Some(name.clone()),
        ..ContainerSpec::temporary(checked.build_tag.to_string())
    };
    // Not cancellable: a create cut off mid-request may still make the container, and only an
    // ID we know can be removed. Creating is quick; a cancellation is seen right after it.
    let container = Temporary::create(engine, &spec)
        .await
        .map_err(|source| FlowError::Engine { step, source })?;
    let (id, cli) = (container.id().to_string(), container.cli());

    let tar_path = format!("/tmp/{}", flow.release_tarball);
    on_step(&format!("copying {tar_path} from the build image"));
    let copied = copy_out(engine, &id, &tar_path, flow, &checked, &cancel).await;

    on_step(&format!("removing the temporary container {name}"));
    let removed = container.remove().await;
    let tarball = match (copied, removed) {
        (Ok(t), Ok(())) => t,
        (Err(e), removed) => {
            if let Err(r) = removed {
                on_line(
                    Step::RemoveContainer.key(),
                    &format!("{r}; remove it with `{cli} rm -f {id}`"),
                );
            }
            return Err(e);
        }
        (Ok(_), Err(source)) => {
            return Err(FlowError::Engine {
                step: Step::RemoveContainer,
                source,
            })
        }
    };
    let tarball_bytes = tarball.bytes;

    // 5. The final image.
    let step = Step::BuildFinal;
    check_cancelled(&cancel, step)?;
    let first = &checked.final_tags[0];
    let also: Vec<String> = checked.final_tags[1..]
        .iter()
        .map(|t| t.to_string())
        .collect();
    on_step(&format!(
        "building the final image {first} from {}{}",
        flow.dockerfile.display(),
        if also.is_empty() {
            String::new()
        } else {
            format!(" (also tagged {})", also.join(", "))
        }
    ));
    let spec = BuildSpec {
        dockerfile: checked.dockerfile.clone(),
        tag: first.to_string(),
        build_args: Vec::new(),
        no_cache: flow.no_cache,
    };
    let context = final_context(flow, &checked.dockerfile, tarball.file.path())?;
    let built = build_step(
        engine,
        step,
        &spec,
        flow,
        &flow.dockerfile,
        context,
        on_line,
        &cancel,
    )
    .await?;
    drop(tarball);
    let image = built.unwrap_or_else(|| first.to_string());
    let engine_err = |source| FlowError::Engine { step, source };
    for t in &checked.final_tags[1..] {
        engine
            .tag(&image, &t.repository(), &t.tag)
            .await
            .map_err(engine_err)?;
    }
    let (final_image_id, size) = engine.inspect(&image).await.map_err(engine_err)?;
    Ok(FlowOutcome {
        final_image_id,
        tags: checked.final_tags.iter().map(|t| t.to_string()).collect(),
        size,
        tarball_bytes,
    })
}

fn temporary_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "docker_release-tmp-{}-{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The flow's inputs, validated before the engine is contacted.
struct Checked {
    build_dockerfile: String,
    dockerfile: String,
    build_tag: Reference,
    final_tags: Vec<Reference>,
}

fn check(flow: &DockerfileFlow) -> Result<Checked, FlowError> {
    let build_dockerfile = dockerfile_in_project(flow, &flow.build_dockerfile, "build Dockerfile")?;
    let dockerfile = dockerfile_in_project(flow, &flow.dockerfile, "Dockerfile")?;
    let name = &flow.release_tarball;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 100
    {
        return Err(FlowError::Invalid(format!(
            "invalid release tarball name {name:?}: it must be a plain file name (up to 100 bytes, no '/'), e.g. hello.tar.gz"
        )));
    }
    if flow.final_tags.is_empty() {
        return Err(FlowError::Invalid(
            "no tag for the final image: give at least one, e.g. hello:0.1.0".into(),
        ));
    }
    let build_tag = Reference::parse(&flow.build_tag)?;
    let final_tags = flow
        .final_tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Checked {
        build_dockerfile,
        dockerfile,
        build_tag,
        final_tags,
    })
}

/// The Dockerfile's path inside the context, `/`-separated; it must be a file in the project.
fn dockerfile_in_project(
    flow: &DockerfileFlow,
    path: &Path,
    role: &'static str,
) -> Result<String, FlowError> {
    let missing = |rule| FlowError::DockerfileMissing {
        path: flow.project_dir.join(path),
        role,
        rule,
    };
    let rel = if path.is_absolute() {
        path.strip_prefix(&flow.project_dir).map_err(|_| {
            missing("it must be inside the project directory, which is the build context")
        })?
    } else {
        path
    };
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(missing(
            "it must be inside the project directory, which is the build context (no '..')",
        ));
    }
    if !flow.project_dir.join(rel).is_file() {
        return Err(missing(
            "give a path relative to the project directory of an existing file",
        ));
    }
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Ok(parts.join("/"))
}

/// Build one image with `context` (the project, plus files at its root) as context.
#[allow(clippy::too_many_arguments)]
async fn build_step<E: BuildEngine>(
    engine: &E,
    step: Step,
    spec: &BuildSpec,
    flow: &DockerfileFlow,
    dockerfile: &Path,
    context: BuildContext,
    on_line: &OnLine,
    cancel: &CancellationToken,
) -> Result<Option<String>, FlowError> {
    check_cancelled(cancel, step)?;
    let (body, writer) = context_stream(flow.project_dir.clone(), context);
    let lines = {
        let on_line = on_line.clone();
        move |l: &str| on_line(step.key(), l)
    };
    let built = cancellable(cancel, step, async {
        Ok(engine.build(spec, body, &lines).await)
    })
    .await;
    // The writer ends once the body is consumed or dropped.
    let written = writer.await;
    let built = built?;
    match written {
        // The engine stopped reading: its answer says why.
        Ok(Err(ContextError::Write(_))) => {}
        Ok(Err(source)) => return Err(FlowError::Context { step, source }),
        Ok(Ok(())) => {}
        Err(e) => {
            return Err(FlowError::Context {
                step,
                source: ContextError::Write(io::Error::other(e.to_string())),
            })
        }
    }
    built.map_err(|e| match e {
        BuildCallError::Failed(message) => FlowError::BuildFailed {
            step,
            dockerfile: dockerfile.to_path_buf(),
            tag: spec.tag.clone(),
            message,
        },
        BuildCallError::Engine(source) => FlowError::Engine { step, source },
    })
}

pub(super) fn check_cancelled(cancel: &CancellationToken, step: Step) -> Result<(), FlowError> {
    if cancel.is_cancelled() {
        Err(FlowError::Cancelled { step })
    } else {
        Ok(())
    }
}

/// Run `fut` until it finishes or `cancel` is cancelled; on cancellation `fut` is dropped,
/// which closes its engine connection.
pub(super) async fn cancellable<T>(
    cancel: &CancellationToken,
    step: Step,
    fut: impl Future<Output = Result<T, FlowError>>,
) -> Result<T, FlowError> {
    tokio::select! {
        r = fut => r,
        _ = cancel.cancelled() => Err(FlowError::Cancelled { step }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        owner, Body, Containers, DockerEngine, Engine, LabelledContainer, LABEL_OWNER,
        LABEL_TEMPORARY,
    };
    use bytes::Bytes;
    use futures_util::TryStreamExt;
    use image_core::context::Excludes;
    use std::io::Read;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A fake engine: records calls, keeps a set of live containers.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        /// Entry names of each build's context.
        contexts: Mutex<Vec<Vec<String>>>,
        /// The `.dockerignore` each build's context holds, if any.
        dockerignores: Mutex<Vec<Option<String>>>,
        live: Mutex<Vec<String>>,
        detached: Mutex<Vec<String>>,
        /// Builds of this tag fail with this message.
        fail_build: Option<(&'static str, &'static str)>,
        /// The tar the download returns; `None`: the path does not exist.
        download: Option<Vec<u8>>,
        /// The download never answers.
        hang_download: bool,
        /// The engine's command (`None`: the trait's default, `docker`).
        cli: Option<&'static str>,
        /// Removing the container fails, and so does every tag lookup once it is created.
        broken_after_create: bool,
    }

    impl Fake {
        fn call(&self, c: String) {
            self.calls.lock().unwrap().push(c);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Engine for Fake {
        async fn platform(&self) -> Result<String, EngineError> {
            Err(EngineError::Config("not used".into()))
        }
        async fn load(&self, _body: Body) -> Result<String, EngineError> {
            Err(EngineError::Config("not used".into()))
        }
        async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
            self.call(format!("tag {id} {repo}:{tag}"));
            Ok(())
        }
        async fn inspect(&self, id: &str) -> Result<(String, u64), EngineError> {
            self.call(format!("inspect {id}"));
            Ok(("sha256:final".into(), 1234))
        }
        async fn tagged(&self, _repo: &str, _tag: &str) -> Result<Option<String>, EngineError> {
            match self.broken_after_create {
                true if self.calls().iter().any(|c| c.starts_with("create")) => {
                    Err(EngineError::Config("broken".into()))
                }
                true => Ok(Some("sha256:old".into())),
                false => Err(EngineError::Config("not used".into())),
            }
        }
        async fn untag(&self, _repo: &str, _tag: &str) -> Result<(), EngineError> {
            Err(EngineError::Config("not used".into()))
        }
    }

    impl BuildEngine for Fake {
        async fn build(
            &self,
            spec: &BuildSpec,
            context: Body,
            on_line: &(dyn Fn(&str) + Send + Sync),
        ) -> Result<Option<String>, BuildCallError> {
            self.call(format!(
                "build {} -f {} {:?} no_cache={}",
                spec.tag, spec.dockerfile, spec.build_args, spec.no_cache
            ));
            let bytes: Vec<Bytes> = context
                .try_collect()
                .await
                .map_err(|e| BuildCallError::Engine(EngineError::Load(e.to_string())))?;
            let tar = bytes.concat();
            let (mut names, mut ignore) = (Vec::new(), None);
            for e in tar::Archive::new(&tar[..]).entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                if name == ".dockerignore" {
                    let mut text = String::new();
                    e.read_to_string(&mut text).unwrap();
                    ignore = Some(text);
                }
                names.push(name);
            }
            self.contexts.lock().unwrap().push(names);
            self.dockerignores.lock().unwrap().push(ignore);
            on_line("Step 1/2 : FROM x");
            if let Some((_, msg)) = self.fail_build.filter(|(t, _)| *t == spec.tag) {
                return Err(BuildCallError::Failed(msg.into()));
            }
            Ok(Some(format!("sha256:{}", spec.tag)))
        }
        async fn download(&self, container: &str, path: &str) -> Result<Option<Body>, EngineError> {
            self.call(format!("download {container} {path}"));
            if self.hang_download {
                std::future::pending::<()>().await;
            }
            Ok(self.download.clone().map(|t| {
                let b: Body = Box::pin(futures_util::stream::iter(
                    t.chunks(700)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect::<Vec<_>>(),
                ));
                b
            }))
        }
    }

    impl Containers for Fake {
        async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
            assert_eq!(spec.labels[LABEL_TEMPORARY], "true");
            assert_eq!(spec.labels[LABEL_OWNER], owner());
            self.call(format!("create {}", spec.image));
            self.live.lock().unwrap().push("c1".into());
            Ok("c1".into())
        }
        async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
            self.call(format!("remove {container}"));
            if self.broken_after_create {
                return Err(EngineError::Config("broken".into()));
            }
            self.live.lock().unwrap().retain(|c| c != container);
            Ok(())
        }
        async fn cli(&self) -> &'static str {
            self.cli.unwrap_or("docker")
        }
        fn remove_container_detached(&self, container: String) {
            self.live.lock().unwrap().retain(|c| *c != container);
            self.detached.lock().unwrap().push(container);
        }
        async fn list_containers(
            &self,
            _key: &str,
            _value: &str,
        ) -> Result<Vec<LabelledContainer>, EngineError> {
            self.call("sweep".into());
            Ok(vec![])
        }
    }

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn project() -> (tempfile::TempDir, DockerfileFlow) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("lib")).unwrap();
        std::fs::create_dir_all(p.join("_build/prod")).unwrap();
        std::fs::write(p.join("mix.exs"), "x").unwrap();
        std::fs::write(p.join("lib/a.ex"), "x").unwrap();
        std::fs::write(p.join("secret.env"), "x").unwrap();
        std::fs::write(
            p.join("hello.tar.gz"),
            "stale tarball from an earlier script run",
        )
        .unwrap();
        std::fs::write(p.join("Dockerfile.build"), "FROM b").unwrap();
        std::fs::write(p.join("Dockerfile"), "FROM r").unwrap();
        std::fs::write(p.join(".dockerignore"), "secret.env\nDockerfile*\n_build\n").unwrap();
        let flow = DockerfileFlow {
            project_dir: p.to_path_buf(),
            build_dockerfile: "Dockerfile.build".into(),
            dockerfile: "Dockerfile".into(),
            build_tag: "hello-build:0.1.0".into(),
            version: "0.1.0".into(),
            release_tarball: "hello.tar.gz".into(),
            final_tags: vec![
                "hello:0.1.0".into(),
                "reg.example:5000/team/hello:latest".into(),
            ],
            no_cache: true,
        };
        (dir, flow)
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    async fn go(
        engine: &Fake,
        flow: &DockerfileFlow,
        cancel_at: Option<&'static str>,
    ) -> (Result<FlowOutcome, FlowError>, Vec<String>, Vec<String>) {
        let steps: Seen = Default::default();
        let lines: Seen = Default::default();
        let cancelled = CancellationToken::new();
        let (s, l, c) = (steps.clone(), lines.clone(), cancelled.clone());
        let r = run(
            engine,
            flow,
            Arc::new(move |t| {
                if cancel_at.is_some_and(|p| t.starts_with(p)) {
                    c.cancel();
                }
                s.lock().unwrap().push(t.to_string())
            }),
            Arc::new(move |step, line| l.lock().unwrap().push(format!("{step}: {line}"))),
            cancelled,
        )
        .await;
        let steps = steps.lock().unwrap().clone();
        let lines = lines.lock().unwrap().clone();
        (r, steps, lines)
    }

    #[tokio::test]
    async fn runs_the_five_steps_in_order_and_removes_the_container() {
        let (_dir, flow) = project();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"release bytes")),
            ..Fake::default()
        };
        let (r, steps, lines) = go(&engine, &flow, None).await;
        let out = r.unwrap();
        assert_eq!(
            out,
            FlowOutcome {
                final_image_id: "sha256:final".into(),
                tags: vec![
                    "hello:0.1.0".into(),
                    "reg.example:5000/team/hello:latest".into()
                ],
                size: 1234,
                tarball_bytes: 13,
            }
        );
        assert_eq!(
            engine.calls(),
            vec![
                "sweep",
                r#"build hello-build:0.1.0 -f Dockerfile.build [("version", "0.1.0")] no_cache=true"#,
                "create hello-build:0.1.0",
                "download c1 /tmp/hello.tar.gz",
                "remove c1",
                "build hello:0.1.0 -f Dockerfile [] no_cache=true",
                "tag sha256:hello:0.1.0 reg.example:5000/team/hello:latest",
                "inspect sha256:hello:0.1.0",
            ]
        );
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert!(
            steps[0].starts_with("building the release in hello-build:0.1.0 from Dockerfile.build")
        );
        assert!(
            steps[4].contains("(also tagged reg.example:5000/team/hello:latest)"),
            "{steps:?}"
        );
        assert!(
            lines.contains(&"build_release: Step 1/2 : FROM x".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"build_final: Step 1/2 : FROM x".to_string()),
            "{lines:?}"
        );
        let contexts = engine.contexts.lock().unwrap().clone();
        // .dockerignore honoured (secret.env, _build, the other Dockerfile); the build's own
        // Dockerfile is sent even though .dockerignore names it, like the docker CLI does.
        assert_eq!(
            contexts[0],
            vec![
                ".dockerignore",
                "Dockerfile.build",
                "hello.tar.gz",
                "lib",
                "lib/a.ex",
                "mix.exs"
            ]
        );
        // The final context: the copied tarball first, the project's stale one left out, then
        // our .dockerignore in place of the project's.
        assert_eq!(
            contexts[1],
            vec![
                "hello.tar.gz",
                ".dockerignore",
                "Dockerfile",
                "lib",
                "lib/a.ex",
                "mix.exs"
            ]
        );
        // The first build sends the project's .dockerignore as is; the final build's ends by
        // re-including the tarball, for engines that apply it again (Podman).
        let project = "secret.env\nDockerfile*\n_build\n";
        let ignores = engine.dockerignores.lock().unwrap().clone();
        assert_eq!(ignores[0].as_deref(), Some(project));
        assert_eq!(
            ignores[1].as_deref(),
            Some(format!("{project}!/hello.tar.gz\n").as_str())
        );
        assert!(engine.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_project_without_dockerignore_gets_none_and_a_tarball_rule_is_undone() {
        // Without .dockerignore: none is sent, in either build.
        let (_dir, flow) = project();
        std::fs::remove_file(flow.project_dir.join(".dockerignore")).unwrap();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"release bytes")),
            ..Fake::default()
        };
        go(&engine, &flow, None).await.0.unwrap();
        let contexts = engine.contexts.lock().unwrap().clone();
        assert!(!contexts[0].contains(&".dockerignore".to_string()));
        assert_eq!(
            contexts[1],
            vec![
                "hello.tar.gz",
                "Dockerfile",
                "Dockerfile.build",
                "_build",
                "_build/prod",
                "lib",
                "lib/a.ex",
                "mix.exs",
                "secret.env"
            ]
        );
        assert_eq!(*engine.dockerignores.lock().unwrap(), vec![None, None]);

        // A project that ignores tarballs (the article's `*.tar.gz`, no final newline, the
        // file itself ignored): the first context is what `docker build` sends, the final one
        // holds our tarball and a .dockerignore whose last rule re-includes it.
        let (_dir, flow) = project();
        let ignore = "*.tar.gz\n.dockerignore";
        std::fs::write(flow.project_dir.join(".dockerignore"), ignore).unwrap();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"release bytes")),
            ..Fake::default()
        };
        go(&engine, &flow, None).await.0.unwrap();
        let contexts = engine.contexts.lock().unwrap().clone();
        assert_eq!(contexts[0][0], ".dockerignore");
        assert!(!contexts[0].contains(&"hello.tar.gz".to_string()));
        assert_eq!(contexts[1][..2], ["hello.tar.gz", ".dockerignore"]);
        let ignores = engine.dockerignores.lock().unwrap().clone();
        assert_eq!(ignores[0].as_deref(), Some(ignore));
        let last = ignores[1].as_deref().unwrap();
        assert_eq!(last, format!("{ignore}\n!/hello.tar.gz\n"));
        let mut rules = Excludes::default();
        rules.extend_dockerignore(last.as_bytes()).unwrap();
        assert!(!rules.is_excluded("hello.tar.gz"));
        assert!(rules.is_excluded("other.tar.gz"));
    }

    #[tokio::test]
    async fn a_failed_first_build_names_its_step_and_creates_nothing() {
        let (_dir, flow) = project();
        let engine = Fake {
            fail_build: Some((
                "hello-build:0.1.0",
                "The command '/bin/sh -c false' returned a non-zero code: 1",
            )),
            ..Fake::default()
        };
        let err = go(&engine, &flow, None).await.0.unwrap_err();
        assert_eq!(err.reason(), "build_failed");
        assert_eq!(err.step(), Some(Step::BuildRelease));
        assert_eq!(
            err.to_string(),
            "building the release image hello-build:0.1.0 from Dockerfile.build failed: The command '/bin/sh -c false' returned a non-zero code: 1"
        );
        assert!(!engine.calls().iter().any(|c| c.starts_with("create")));
    }

    #[tokio::test]
    async fn a_failed_final_build_names_its_step_after_the_container_is_gone() {
        let (_dir, flow) = project();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"x")),
            fail_build: Some(("hello:0.1.0", "ADD failed: file not found in build context")),
            ..Fake::default()
        };
        let err = go(&engine, &flow, None).await.0.unwrap_err();
        assert_eq!(err.reason(), "build_failed");
        assert_eq!(err.step(), Some(Step::BuildFinal));
        assert_eq!(
            err.to_string(),
            "building the final image hello:0.1.0 from Dockerfile failed: ADD failed: file not found in build context"
        );
        assert!(!engine.calls().iter().any(|c| c.starts_with("tag")));
        assert!(engine.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_tarball_is_explained_and_the_container_removed() {
        let (_dir, flow) = project();
        let engine = Fake::default();
        let err = go(&engine, &flow, None).await.0.unwrap_err();
        assert_eq!(err.reason(), "tarball_missing");
        assert!(
            matches!(&err, FlowError::TarballMissing { path, build_tag, .. } if path == "/tmp/hello.tar.gz" && build_tag == "hello-build:0.1.0")
        );
        assert_eq!(
            err.to_string(),
            "copying the release out of the build image failed: the build image hello-build:0.1.0 has no /tmp/hello.tar.gz: Dockerfile.build must leave the release tarball there (the article copies _build/prod/<app>-$version.tar.gz to /tmp/<app>.tar.gz)"
        );
        assert_eq!(engine.calls().last().unwrap(), "remove c1");
        assert!(engine.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_empty_tarball_or_a_directory_is_refused() {
        let (_dir, flow) = project();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"")),
            ..Fake::default()
        };
        let err = go(&engine, &flow, None).await.0.unwrap_err();
        assert_eq!(err.reason(), "tarball_missing");
        assert!(
            err.to_string()
                .contains("/tmp/hello.tar.gz in the build image hello-build:0.1.0 is empty"),
            "{err}"
        );
        assert!(engine.live.lock().unwrap().is_empty());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, "hello.tar.gz/", &b""[..]).unwrap();
        let engine = Fake {
            download: Some(b.into_inner().unwrap()),
            ..Fake::default()
        };
        let err = go(&engine, &flow, None).await.0.unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(engine.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn what_is_left_behind_is_named_with_the_engines_command() {
        let (_dir, flow) = project();
        for cli in [None, Some("podman")] {
            // No tarball: the copy fails, then the removal and the tags' restoring.
            let engine = Fake {
                cli,
                broken_after_create: true,
                ..Fake::default()
            };
            let (r, _, lines) = go(&engine, &flow, None).await;
            assert_eq!(r.unwrap_err().reason(), "tarball_missing");
            let cli = cli.unwrap_or("docker");
            assert!(
                lines.contains(&format!(
                    "remove_container: broken; remove it with `{cli} rm -f c1`"
                )),
                "{lines:?}"
            );
            assert!(
                lines.contains(&format!(
                    "restore: could not put back what these tags named before the run: hello-build:0.1.0, hello:0.1.0, reg.example:5000/team/hello:latest (check them with `{cli} image inspect`)"
                )),
                "{lines:?}"
            );
        }
    }

    #[tokio::test]
    async fn cancelling_still_removes_the_container() {
        let (_dir, flow) = project();
        let engine = Fake {
            download: Some(tar_with("hello.tar.gz", b"x")),
            ..Fake::default()
        };
        let err = go(&engine, &flow, Some("copying")).await.0.unwrap_err();
        assert_eq!(err.reason(), "cancelled");
        assert_eq!(err.step(), Some(Step::CopyRelease));
        assert!(engine.calls().contains(&"remove c1".to_string()));
        assert!(engine.live.lock().unwrap().is_empty());
        // Cancelled before anything was built: no container at all.
        let engine = Fake::default();
        let err = go(&engine, &flow, Some("building the release"))
            .await
            .0
            .unwrap_err();
        assert_eq!(err.step(), Some(Step::BuildRelease));
        assert!(!engine.calls().iter().any(|c| c.starts_with("create")));
    }

    #[tokio::test]
    async fn a_dropped_run_hands_the_removal_to_the_runtime() {
        let (_dir, flow) = project();
        let engine = Fake {
            hang_download: true,
            ..Fake::default()
        };
        let r = tokio::time::timeout(Duration::from_millis(300), go(&engine, &flow, None)).await;
        assert!(r.is_err(), "the download hangs, so the run times out");
        assert_eq!(*engine.detached.lock().unwrap(), vec!["c1".to_string()]);
        assert!(engine.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_the_engine_is_asked() {
        let (_dir, flow) = project();
        let engine = Fake::default();
        let mut f = flow.clone();
        f.build_dockerfile = "Dockerfile.nope".into();
        let err = go(&engine, &f, None).await.0.unwrap_err();
        assert_eq!(err.reason(), "dockerfile_missing");
        assert!(
            err.to_string().starts_with("the build Dockerfile "),
            "{err}"
        );
        assert!(
            err.to_string().contains("Dockerfile.nope does not exist"),
            "{err}"
        );
        let mut f = flow.clone();
        f.dockerfile = "../Dockerfile".into();
        assert_eq!(
            go(&engine, &f, None).await.0.unwrap_err().reason(),
            "dockerfile_missing"
        );
        let mut f = flow.clone();
        f.dockerfile = flow.project_dir.join("Dockerfile");
        let mut f2 = f.clone();
        f2.release_tarball = "a/b.tar.gz".into();
        assert_eq!(
            go(&engine, &f2, None).await.0.unwrap_err().reason(),
            "invalid_config"
        );
        let mut f2 = f.clone();
        f2.final_tags = vec!["Hello:1".into()];
        assert_eq!(
            go(&engine, &f2, None).await.0.unwrap_err().reason(),
            "invalid_reference"
        );
        let mut f2 = f;
        f2.final_tags = vec![];
        assert_eq!(
            go(&engine, &f2, None).await.0.unwrap_err().reason(),
            "invalid_config"
        );
        assert!(engine.calls().is_empty(), "{:?}", engine.calls());
    }

    /// The NIF spawns the flow on a multi-threaded runtime: its future must be `Send`.
    #[allow(dead_code)]
    fn the_flow_future_is_send(engine: &DockerEngine, flow: &DockerfileFlow) {
        fn send<T: Send>(_: T) {}
        send(run(
            engine,
            flow,
            Arc::new(|_| {}),
            Arc::new(|_, _| {}),
            Default::default(),
        ));
    }
}
