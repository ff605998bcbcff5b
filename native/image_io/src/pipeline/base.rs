//! Stage 3, the base image (`--base`): read from the engine or its registry, unpacked for the
//! plan to check against the release ([`crate::base`]).

use super::{Destinations, Event, Events, Release, Request};
use crate::base::{load_base, LoadedBase};
use crate::engine::{resolve_endpoint, DockerEngine, Endpoint};
use crate::error::Failure;
use crate::registry::RegistryOptions;
use image_core::plan::release_platform;
use std::sync::Arc;

/// The base image of `req`, if it names one. A base in the local engine needs the engine even
/// when the outputs do not use it: then a connection of its own, for the read only.
pub async fn base(
    req: &Request,
    dest: &Destinations,
    release: &Release<'_>,
    events: &Events,
) -> Result<Option<Arc<LoadedBase>>, Failure> {
    let Some(reference) = &req.base else {
        return Ok(None);
    };
    events(Event::Step(format!("loading the base image {reference}")));
    let own = reading_engine(req, dest).await;
    let platform = release_platform(&*release.fs, &release.settings).ok();
    let registry = registry_options(req);
    let loaded = load_base(
        reference,
        dest.engine.as_ref().or(own.as_ref()),
        &registry,
        &req.blobs(),
        platform.as_ref(),
        req.compression_level,
    )
    .await?;
    events(Event::Notice(format!(
        "base image {reference} read from {}",
        loaded.source
    )));
    Ok(Some(Arc::new(loaded)))
}

/// An engine to read images from when the outputs do not use one (`dest.engine` is `None`): a
/// connection of its own, when the environment names an engine that answers.
pub(super) async fn reading_engine(req: &Request, dest: &Destinations) -> Option<DockerEngine> {
    match (&dest.engine, resolve_endpoint(&|k| std::env::var(k).ok())) {
        (None, Ok(ep)) if !matches!(ep, Endpoint::Missing(_)) => {
            DockerEngine::connect_with(&ep, req.stall_timeout)
                .await
                .ok()
        }
        _ => None,
    }
}

/// How images are read from registries: the push's transport and credentials, when pushing.
pub(super) fn registry_options(req: &Request) -> RegistryOptions {
    req.outputs.push.clone().unwrap_or_else(|| RegistryOptions {
        stall_timeout: Some(req.stall_timeout),
        ..RegistryOptions::default()
    })
}
