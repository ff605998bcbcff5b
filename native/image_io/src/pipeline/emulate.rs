//! Stage 4b under `--emulate`: each platform other than the release's own gets a release of its
//! own, built in a builder of that platform that the engine runs under emulation (QEMU user
//! mode through binfmt_misc), and planned from that builder's filesystem exactly like the
//! native release ([`super::plan_until_complete`]). Nothing is taken from another platform's
//! files: NIFs and port programs the project compiles are compiled for that platform.
//!
//! The builder of platform P: `--platform-image P=IMAGE`, else the `--builder` image, as the
//! engine holds it when it is an image of P, else P's image in its registry's index, pulled into
//! the engine by digest (`NAME@sha256:…`, so no tag the user has moves). Its cache volumes are
//! its own (they are keyed by image ID). The build runs with
//! [`image_core::foreign::EMULATED_BUILD_ENV`] (ERTS's JIT maps its code twice, which QEMU user
//! mode does not support).

use super::release::build_in_builder;
use super::{plan_until_complete, Destinations, Event, Events, Release, Request, Source};
use crate::base::registry_image_for;
use crate::engine::{DockerEngine, Engine};
use crate::error::{Failure, Reason};
use crate::registry::RegistryOptions;
use image_core::elf::Platform;
use image_core::foreign::EMULATED_BUILD_ENV;
use image_core::fs::Fs;
use image_core::plan::{release_platform, same_platform, Plan};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A release built for another platform under emulation, and its plan.
pub struct Emulated {
    /// The builder it was built in, as given (`--platform-image`, or the `--builder` image).
    pub builder: String,
    /// The builder's filesystem as read (the release and its runtime files).
    pub fs: Arc<dyn Fs>,
    /// The image's plan.
    pub plan: Plan,
}

/// A builder of another platform, in the engine.
#[derive(Debug, Clone)]
pub struct Emulator {
    /// Its platform.
    pub platform: Platform,
    /// The image as given (`--platform-image`, or the `--builder` image).
    pub given: String,
    /// The engine's name for it: `given`, or `NAME@sha256:…` pulled from its registry.
    pub in_engine: String,
}

/// The builders `--emulate` runs under emulation, found before any build.
#[derive(Debug, Default)]
pub struct Emulators {
    /// The builder of the release itself, when the builder image's own platform is not one of
    /// `--platform`'s (`--platform linux/arm64 --emulate` on an amd64 builder): the first
    /// platform named. No release is then built natively.
    pub release: Option<Emulator>,
    /// The builders of the other platforms, in `--platform`'s order.
    pub others: Vec<Emulator>,
}

/// With `--emulate`, the builder of each `--platform` other than the builder image's own, found
/// in the engine or pulled into it by digest, before the release is built: a builder that
/// cannot be had stops the run before any build. When the builder image's own platform is not
/// asked for, the first platform's builder builds the release itself ([`Emulators::release`]).
/// None without `--emulate` (or when the builder image's platform is not known: the release
/// stage reports a missing image).
pub async fn find_emulators(
    req: &Request,
    dest: &Destinations,
    builder_platform: Option<&BuilderPlatform>,
    events: &Events,
) -> Result<Emulators, Failure> {
    let (Some(engine), Source::Builder { image: builder, .. }, Some(own)) = (
        &dest.engine,
        &req.source,
        builder_platform.map(|b| &b.image),
    ) else {
        return Ok(Emulators::default());
    };
    if !req.platforms.emulate {
        return Ok(Emulators::default());
    }
    let selection = req
        .platforms
        .check()
        .map_err(|e| Failure::new(Reason::InvalidConfig, e.0))?;
    let registry = super::base::registry_options(req);
    let mut others = Vec::new();
    for platform in selection
        .platforms
        .iter()
        .filter(|p| !same_platform(p, own))
    {
        let given = selection.images.get(platform).unwrap_or(builder);
        others.push(find_emulator(engine, &registry, platform, given, events).await?);
    }
    let own_selected = selection.platforms.iter().any(|p| same_platform(p, own));
    let release = (!own_selected && !others.is_empty()).then(|| others.remove(0));
    Ok(Emulators { release, others })
}

/// The builder of `platform` from `image` (see [`find_emulators`]).
pub async fn find_emulator(
    engine: &DockerEngine,
    registry: &RegistryOptions,
    platform: &Platform,
    image: &str,
    events: &Events,
) -> Result<Emulator, Failure> {
    Ok(Emulator {
        platform: platform.clone(),
        given: image.to_string(),
        in_engine: builder_in_engine(engine, registry, platform, image, events).await?,
    })
}

/// Build the release of `req` in `emulator`, run under emulation, and check that it is of
/// the emulator's platform (its ERTS). The container keeps running while the plan reads it.
pub(super) async fn build_release_emulated<'a>(
    req: &Request,
    engine: &'a DockerEngine,
    emulator: &Emulator,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Release<'a>, Failure> {
    let (platform, image) = (&emulator.platform, emulator.given.as_str());
    events(Event::Step(format!(
        "building the release for {platform} in {image} under emulation (QEMU): slower than a native build"
    )));
    let (release, otp) = build_in_builder(
        req,
        engine,
        &emulator.in_engine,
        emulated_env(),
        events,
        cancel,
    )
    .await
    .map_err(|e| emulation_failure(platform, image, e))?;
    events(Event::Step(format!(
        "built the release for {platform} in {image} (OTP {otp})"
    )));
    let built_for = {
        let (fs, settings) = (release.fs.clone(), release.settings.clone());
        tokio::task::spawn_blocking(move || release_platform(&*fs, &settings))
            .await
            .map_err(|e| Failure::internal(format!("the planner failed: {e}")))??
    };
    if !same_platform(&built_for, platform) {
        return Err(Failure::new(
            Reason::PlatformIncompatible,
            format!(
                "the release built under emulation in {image} is for {built_for}, not {platform}: its ERTS is not {platform}'s. Name a builder of {platform} with --platform-image {platform}=IMAGE"
            ),
        ));
    }
    Ok(release)
}

/// Build the release of `req` for the platform of `emulator` in it, run under emulation, and
/// plan its image (another platform's image of an index).
pub async fn build_emulated(
    req: &Request,
    engine: &DockerEngine,
    emulator: &Emulator,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Emulated, Failure> {
    let mut release = build_release_emulated(req, engine, emulator, events, cancel).await?;
    let planned = plan_until_complete(&mut release, None, events, cancel).await;
    let finished = match release.builder.as_mut() {
        Some(b) => b.finish().await,
        None => None,
    };
    if let Some(warning) = finished {
        events(Event::Step(warning));
    }
    Ok(Emulated {
        builder: emulator.given.clone(),
        fs: release.fs,
        plan: planned?,
    })
}

/// The engine's name for a builder of `platform`: `image` itself when the engine's image of that
/// name is of `platform`, else `platform`'s image in `image`'s registry (`NAME@sha256:…`),
/// pulled by digest unless the engine has it already.
async fn builder_in_engine(
    engine: &DockerEngine,
    registry: &RegistryOptions,
    platform: &Platform,
    image: &str,
    events: &Events,
) -> Result<String, Failure> {
    // The platform of the engine's image of that name, if it has one.
    let engine_has =
        |p: Option<(String, String)>| p.and_then(|(_id, p)| image_core::platform::parse(&p).ok());
    let here = engine_has(engine.image_platform(image).await?);
    if here.as_ref().is_some_and(|p| same_platform(p, platform)) {
        return Ok(image.to_string());
    }
    let what_engine_has = match &here {
        Some(p) => format!("the engine's {image} is an image of {p}"),
        None => format!("the engine has no image {image}"),
    };
    let (pinned, host) = registry_image_for(image, registry, platform)
        .await
        .map_err(|e| {
            Failure::new(
                e.reason(),
                format!(
                    "--emulate needs a builder of {platform} in the engine: {what_engine_has}, and its {platform} image could not be read from its registry ({e}). Put one in the engine and name it: --platform-image {platform}=IMAGE"
                ),
            )
        })?;
    let mut held = engine_has(engine.image_platform(&pinned).await?);
    if held.is_none() {
        events(Event::Step(format!(
            "{what_engine_has}: pulling its {platform} image {pinned} into the engine"
        )));
        // The engine pulls with the login our pushes and reads use (a token exchange is
        // ours alone: an identity token is not passed on).
        let credential = registry
            .credential_for(&host)
            .await
            .map_err(|e| Failure::new(e.reason(), format!("pulling {pinned}: {e}")))?
            .filter(|c| c.identity_token().is_none())
            .map(|c| (c.username, c.password));
        engine
            .pull_by_digest(&pinned, &platform.to_string(), credential)
            .await?;
        held = engine_has(engine.image_platform(&pinned).await?);
    }
    match held {
        Some(p) if same_platform(&p, platform) => Ok(pinned),
        Some(p) => Err(Failure::new(
            Reason::PlatformIncompatible,
            format!(
                "{pinned}, {image}'s entry for {platform} in its registry, is an image of {p}: the registry's index is wrong. Name a builder of {platform} with --platform-image {platform}=IMAGE"
            ),
        )),
        None => Err(Failure::internal(format!(
            "the engine pulled {pinned} but does not list it"
        ))),
    }
}

/// The environment of a build under emulation ([`EMULATED_BUILD_ENV`]), as `NAME=value`.
pub(super) fn emulated_env() -> Vec<String> {
    EMULATED_BUILD_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The `--builder` image's platform and the engine's, asked once per run.
#[derive(Debug, Clone)]
pub struct BuilderPlatform {
    /// The builder image's platform, as the engine has it.
    pub image: Platform,
    /// The engine's platform, when it says.
    pub engine: Option<Platform>,
}

impl BuilderPlatform {
    /// The engine's platform, when the engine runs the builder under emulation: the builder is
    /// of another OS or architecture (`--builder` naming an arm64 image on an amd64 engine), as
    /// `--emulate`'s builders are.
    pub fn emulated_on(&self) -> Option<&Platform> {
        self.engine
            .as_ref()
            .filter(|e| e.os != self.image.os || e.architecture != self.image.architecture)
    }
}

/// The platform of `req`'s builder image in the engine. `None` for a host build, and when the
/// engine cannot say (a missing image is the builder stage's to report).
pub async fn builder_platform(req: &Request, dest: &Destinations) -> Option<BuilderPlatform> {
    let (Some(engine), Source::Builder { image, .. }) = (&dest.engine, &req.source) else {
        return None;
    };
    let (_, platform) = engine.image_platform(image).await.ok()??;
    Some(BuilderPlatform {
        image: image_core::platform::parse(&platform).ok()?,
        engine: engine
            .platform()
            .await
            .ok()
            .and_then(|p| image_core::platform::parse(&p).ok()),
    })
}

/// Refuse, before anything is built, a build whose builder the engine runs under emulation when
/// the image would go into that engine without `--platform`: the engine's
/// load would refuse an image of another platform only after the (slow) build.
pub fn check_builder_platform(
    req: &Request,
    dest: &Destinations,
    builder: Option<&BuilderPlatform>,
) -> Result<(), Failure> {
    let (Some(b), true, Source::Builder { image, .. }) = (builder, dest.load, &req.source) else {
        return Ok(());
    };
    let named = req.platforms.check().is_ok_and(|s| !s.is_empty());
    match b.emulated_on() {
        Some(engine_runs) if !named => {
            let theirs = &b.image;
            Err(Failure::new(
                Reason::PlatformMismatch,
                format!(
                    "the builder {image} is an image of {theirs}, and the engine runs {engine_runs}: the release would be built for {theirs}, under emulation, and the engine keeps images of {engine_runs}. Name a builder of {engine_runs}, or ask for {theirs} with --platform {theirs} (the engine then runs the image under emulation), or write it elsewhere (--output PATH, --push)"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A failed build under emulation, with what to check when the engine's machine cannot run the
/// platform's programs at all.
pub(super) fn emulation_failure(platform: &Platform, image: &str, e: Failure) -> Failure {
    let text = &e.message;
    if text.contains("exec format error") || text.contains("Exec format error") {
        return Failure::new(
            Reason::PlatformIncompatible,
            format!(
                "the engine cannot run programs of {platform} (starting the builder {image} failed: {text}): --emulate needs QEMU user emulation on the engine's machine, registered with binfmt_misc and the F flag (Debian and Ubuntu: apt-get install qemu-user-static binfmt-support)"
            ),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder;

    fn arm64() -> Platform {
        image_core::platform::parse("linux/arm64").unwrap()
    }

    #[test]
    fn an_engine_that_cannot_run_the_platform_is_told_what_to_install() {
        let e = builder::BuilderError::Builder(
            "exec /bin/sh: exec format error (the container exited with status 1)".into(),
        );
        let f = emulation_failure(&arm64(), "b:1", e.into());
        assert_eq!(f.reason, Reason::PlatformIncompatible);
        assert!(
            f.message.contains("cannot run programs of linux/arm64/v8"),
            "{}",
            f.message
        );
        assert!(f.message.contains("qemu-user-static"), "{}", f.message);
        assert!(f.message.contains("exec format error"), "{}", f.message);
    }

    #[test]
    fn other_build_failures_keep_their_reason() {
        let e = builder::BuilderError::BuildFailed {
            step: "release".into(),
            command: "mix release".into(),
            image: "b:1".into(),
            status: 1,
            last_lines: vec!["** (Mix) boom".into()],
        };
        let f = emulation_failure(&arm64(), "b:1", e.into());
        assert_eq!(f.reason, Reason::ReleaseBuildFailed);
        assert!(f.message.contains("** (Mix) boom"), "{}", f.message);
    }
}
