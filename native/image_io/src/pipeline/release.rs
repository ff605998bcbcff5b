//! Stage 2, the release: on the host (already assembled by the Elixir side), or built in a
//! builder container; with it, the filesystem the runtime files are read from.

use super::emulate::{
    build_release_emulated, emulated_env, emulation_failure, BuilderPlatform, Emulator,
};
use super::{step_and_line, Event, Events, HostBuild, Request, Source};
use crate::builder::{self, BuilderSpec, BuiltRelease};
use crate::engine::{sweep_leftovers, DockerEngine};
use crate::error::{Failure, Reason};
use image_core::fs::{Fs, HostFs};
use image_core::plan::Settings;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The release and where its runtime files come from.
pub struct Release<'a> {
    /// The filesystem the plan reads: the host's, or the builder container's.
    pub fs: Arc<dyn Fs>,
    /// What goes into the image, `release_dir` pointing into `fs`.
    pub settings: Settings,
    /// The builder container, still running while the plan reads it (builder builds).
    pub builder: Option<BuiltRelease<'a, DockerEngine>>,
}

/// Obtain the release of `req`: the host's at `settings.release_dir` (once `host_build` is
/// done, when the host's `mix release` still runs), or one built in a container of the builder
/// image (of `builder`'s platform: run under emulation when not the engine's), or of
/// `emulated`, a builder of another platform run under emulation (`--emulate` without the
/// builder's own platform). Leftover containers of killed runs are swept first.
pub async fn obtain_release<'a>(
    req: &Request,
    engine: Option<&'a DockerEngine>,
    builder: Option<&BuilderPlatform>,
    emulated: Option<&Emulator>,
    events: &Events,
    cancel: &CancellationToken,
    host_build: Option<HostBuild>,
) -> Result<Release<'a>, Failure> {
    let Source::Builder { image, .. } = &req.source else {
        if let Some(done) = host_build {
            let cancelled = || Failure::new(Reason::Cancelled, "the build was cancelled");
            tokio::select! {
                r = done => r.map_err(|_| cancelled())?,
                _ = cancel.cancelled() => return Err(cancelled()),
            }
        }
        return Ok(Release {
            fs: Arc::new(HostFs::new("/")),
            settings: req.settings.clone(),
            builder: None,
        });
    };
    let engine =
        engine.ok_or_else(|| Failure::internal("a builder build without an engine connection"))?;
    let swept = sweep_leftovers(engine)
        .await
        .map_err(builder::BuilderError::from)?;
    if swept > 0 {
        events(Event::Notice(format!(
            "removed {swept} temporary container(s) left by an interrupted run"
        )));
    }
    if let Some(emulator) = emulated {
        return build_release_emulated(req, engine, emulator, events, cancel).await;
    }
    // A builder of another architecture than the engine's runs under emulation: with the
    // environment `--emulate`'s builders get, and the same message when the engine cannot.
    let (release, otp) = match builder.and_then(|b| Some((&b.image, b.emulated_on()?))) {
        Some((theirs, engine_runs)) => {
            events(Event::Notice(format!(
                "the builder {image} is an image of {theirs} and the engine runs {engine_runs}: it runs under emulation (QEMU), slower than a native build"
            )));
            build_in_builder(req, engine, image, emulated_env(), events, cancel)
                .await
                .map_err(|e| emulation_failure(theirs, image, e))?
        }
        None => build_in_builder(req, engine, image, Vec::new(), events, cancel).await?,
    };
    events(Event::Step(format!(
        "built the release in {image} (OTP {otp})"
    )));
    Ok(release)
}

/// Build the release of `req` (a builder build) in a container of `image`, with `env` added to
/// the build's environment. Returns it with the builder's OTP release; the container keeps
/// running while the plan reads its filesystem.
pub(super) async fn build_in_builder<'a>(
    req: &Request,
    engine: &'a DockerEngine,
    image: &str,
    env: Vec<String>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<(Release<'a>, String), Failure> {
    let Source::Builder {
        named_release,
        project_dir,
        mix_env,
        cache,
        ..
    } = &req.source
    else {
        return Err(Failure::internal("a builder build without a builder"));
    };
    let mut settings = req.settings.clone();
    let excludes = image_core::context::Excludes::for_project(project_dir)
        .map_err(|e| Failure::new(Reason::ReadError, e))?;
    let spec = BuilderSpec {
        image: image.to_string(),
        project_dir: project_dir.clone(),
        mix_env: mix_env.clone(),
        release_name: settings.release_name.clone(),
        named_release: *named_release,
        cache: *cache,
        excludes,
        env,
    };
    let (on_step, on_line) = step_and_line(events);
    let on_bytes = {
        let events = events.clone();
        Arc::new(move |step: &str, done: u64| {
            events(Event::Bytes {
                step: step.to_string(),
                done,
            })
        })
    };
    let built =
        builder::build_release_with(engine, &spec, on_step, on_line, on_bytes, cancel.clone())
            .await?;
    let otp = built.otp_release.clone();
    settings.release_dir = built.release_dir.clone();
    let release = Release {
        fs: built.fs.clone(),
        settings,
        builder: Some(built),
    };
    Ok((release, otp))
}
