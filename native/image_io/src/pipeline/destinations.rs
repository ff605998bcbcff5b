//! Stage 1, the destinations: which outputs the run has, and the engine connection they (and a
//! builder) need. Decided before any work, so that a refusing engine fails fast.

use super::{required_engine, EngineOutput, Event, Events, Request, Source};
use crate::engine::{resolve_endpoint, DockerEngine, Endpoint, Engine};
use crate::error::Failure;
use std::path::PathBuf;

/// Where the image goes, and the engine connection of the run.
pub struct Destinations {
    /// The engine, connected: for the outputs, or a builder (or both).
    pub engine: Option<DockerEngine>,
    /// Load the image into `engine`.
    pub load: bool,
    /// The archive's path: `--output`, or the fallback when there is no engine socket.
    pub archive: Option<PathBuf>,
}

/// Decide the destinations of `req` and connect to the engine when one is needed. With no
/// engine socket at the default address and nothing naming another, the default output (the
/// engine) becomes the fallback archive, and a notice says so.
pub async fn destinations(req: &Request, events: &Events) -> Result<Destinations, Failure> {
    let mut archive = req.outputs.archive.clone();
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
                    archive.get_or_insert_with(|| fallback.clone());
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
        _ => Some(required_engine(events, "this build", req.stall_timeout).await?),
    };
    let load = engine.is_some() && !matches!(req.outputs.engine, EngineOutput::Off);
    if let (true, Some(engine)) = (load, &engine) {
        // Asked now (and kept): the load checks it later, and a host build may still run.
        let _ = engine.platform().await;
    }
    Ok(Destinations {
        engine,
        load,
        archive,
    })
}
