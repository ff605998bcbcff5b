//! One build, end to end, as the stages of docs/ARCHITECTURE.md's data flow. [`run`] is the
//! list of them; each lives in its own file:
//!
//! | stage | file | what |
//! |---|---|---|
//! | [`destinations`] | `destinations.rs` | which outputs, and the engine connection they and the builder need; with `--emulate`, each other platform's builder found in the engine or pulled into it ([`find_emulators`], `emulate.rs`) |
//! | [`obtain_release`] | `release.rs` | the release (on the host, or built in a builder container) and the filesystem its runtime files come from |
//! | [`base`] | `base.rs` | the base image, when `--base` is given |
//! | [`plan_until_complete`] | `plan.rs` | what goes into the image, planned again after each fetch from the builder until it asks for nothing |
//! | [`plan_platforms`] | `platforms.rs`, `emulate.rs` | `--platform`: each other platform's image read, checked and planned, before any layer is written; with `--emulate`, each other platform's release built in a builder of that platform under emulation and planned from it |
//! | [`write_layers`] | `layers.rs` | the layers (from the layer cache where they are unchanged), the image value; then each other platform's ([`Platforms::write`]) and the image index |
//! | [`publish`] | `publish.rs` | every output, committed together or not at all ([`crate::sink`]) |
//!
//! The NIF decodes a [`Request`], calls [`run`] on the shared runtime and forwards [`Event`]s and
//! the final result to the calling process.

mod base;
mod destinations;
mod emulate;
mod layers;
mod plan;
mod platforms;
mod publish;
mod release;
mod request;

pub use base::base;
pub use destinations::{destinations, Destinations};
pub use emulate::{
    builder_platform, check_builder_platform, find_emulators, BuilderPlatform, Emulated, Emulator,
    Emulators,
};
pub use layers::{write_layers, Layered};
pub use plan::plan_until_complete;
pub use platforms::{plan_platforms, Foreign, ForeignFrom, Platforms, TargetImage};
pub use publish::publish;
pub use release::{obtain_release, Release};
pub use request::{check_request, stall_from_secs, EngineOutput, Outputs, Request, Source};

pub use crate::error::Failure;
pub use crate::outcome::Outcome;

use crate::dockerfiles::{self, DockerfileFlow, FlowOutcome};
use crate::engine::{DockerEngine, Endpoint, Engine};
use crate::error::Reason;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// Where a run's [`Event`]s go.
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// The host's release build, running while the job starts: resolved when it is done.
pub type HostBuild = tokio::sync::oneshot::Receiver<()>;

/// Run one build: the stages, in order. `events` receives progress; cancelling `cancel` stops
/// the work at the next file (and drops the engine connection, which makes the engine discard
/// a partial load). With `host_build`, the host's `mix release` is still running: the stages
/// that do not need the release (the destinations, the engine's platform) run meanwhile, and
/// the release stage waits for it.
pub async fn run(
    req: Request,
    events: Events,
    cancel: CancellationToken,
    host_build: Option<HostBuild>,
) -> Result<Outcome, Failure> {
    let tags = check_request(&req)?;
    let dest = destinations(&req, &events).await?;
    let builder = builder_platform(&req, &dest).await;
    check_builder_platform(&req, &dest, builder.as_ref())?;
    let emulators = find_emulators(&req, &dest, builder.as_ref(), &events).await?;
    let mut release = obtain_release(
        &req,
        dest.engine.as_ref(),
        builder.as_ref(),
        emulators.release.as_ref(),
        &events,
        &cancel,
        host_build,
    )
    .await?;
    let base = base(&req, &dest, &release, &events).await?;
    let plan = plan_until_complete(&mut release, base.as_ref(), &events, &cancel).await?;
    let platforms = plan_platforms(
        &req,
        &dest,
        &release,
        base.is_some(),
        emulators.others,
        &events,
        &cancel,
    )
    .await?;
    let build_fs = release.fs.clone();
    let more = platforms.layer_count();
    let image = write_layers(&req, release, plan, base, more, &events, &cancel).await?;
    let engine_platform = match (&dest.engine, dest.load) {
        (Some(engine), true) => engine.platform().await.ok(),
        _ => None,
    };
    let image = platforms
        .write(&req, build_fs, image, engine_platform, &events, &cancel)
        .await?;
    publish(&req, &dest, image, tags, &events).await
}

/// Connect to the engine the environment names; an engine is required.
pub(crate) async fn required_engine(
    events: &Events,
    purpose: &str,
    stall: Duration,
) -> Result<DockerEngine, Failure> {
    let endpoint = crate::engine::resolve_endpoint(&|k| std::env::var(k).ok())?;
    if let Endpoint::Missing(sock) = &endpoint {
        return Err(Failure::new(
            Reason::EngineUnreachable,
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
    events: Events,
    cancel: CancellationToken,
) -> Result<FlowOutcome, Failure> {
    let engine = required_engine(&events, "the Dockerfile flow", stall).await?;
    let (on_step, on_line) = step_and_line(&events);
    Ok(dockerfiles::run(&engine, &flow, on_step, on_line, cancel).await?)
}

/// The builder's and the Dockerfile flow's callbacks, as [`Event`]s.
#[allow(clippy::type_complexity)]
pub(crate) fn step_and_line(
    events: &Events,
) -> (
    Arc<dyn Fn(&str) + Send + Sync>,
    Arc<dyn Fn(&str, &str) + Send + Sync>,
) {
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
    (on_step, on_line)
}
