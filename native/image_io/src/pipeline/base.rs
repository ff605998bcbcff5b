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
    let own = match (&dest.engine, resolve_endpoint(&|k| std::env::var(k).ok())) {
        (None, Ok(ep)) if !matches!(ep, Endpoint::Missing(_)) => {
            DockerEngine::connect_with(&ep, req.stall_timeout)
                .await
                .ok()
        }
        _ => None,
    };
    let platform = release_platform(&*release.fs, &release.settings).ok();
    let registry = req.outputs.push.clone().unwrap_or_else(|| RegistryOptions {
        stall_timeout: Some(req.stall_timeout),
        ..RegistryOptions::default()
    });
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
