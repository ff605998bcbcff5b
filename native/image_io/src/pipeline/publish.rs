//! Stage 6, publish: the image to every destination, through the sinks ([`crate::sink`]),
//! committed together or not at all.

use super::layers::Layered;
use super::{Destinations, Event, Events, Outcome, Request};
use crate::error::Failure;
use crate::registry::Attachments;
use crate::sink::{
    self, ArchiveSink, Built, EngineSink, Feedback, MetadataSink, RegistrySink, SbomSink, Sink,
};
use image_core::reference::Reference;
use image_core::supply::signing::SigningKey;
use std::sync::Arc;

/// Send the image of `layered`, tagged `tags`, to the destinations of `req` and `dest`.
pub async fn publish(
    req: &Request,
    dest: &Destinations,
    layered: Layered,
    tags: Vec<Reference>,
    events: &Events,
) -> Result<Outcome, Failure> {
    let built = Arc::new(Built {
        image: layered.image,
        blobs: req.blobs(),
        tags,
        index: layered.index,
        named_platform: layered.named_platform,
    });
    let names: Vec<String> = built.tags.iter().map(|t| t.to_string()).collect();
    let mut outcome = match &built.index {
        None => Outcome::new(&built.image, names, layered.runtime_files),
        Some(index) => Outcome::of_index(index, &built.image, names, layered.runtime_files),
    };
    let feedback = feedback(events);
    let key = match &req.supply.sign_key {
        None => None,
        // Checked by `check_request` before any work; the error says nothing of the key.
        Some(pem) => Some(Arc::new(SigningKey::from_pem(pem).map_err(|e| {
            Failure::new(
                crate::error::Reason::InvalidConfig,
                format!("invalid signing key: the key {e}"),
            )
        })?)),
    };
    // In this order they prepare: the metadata file, the SBOM file and the archive are
    // checked (and written aside) before the engine is touched.
    let mut sinks: Vec<Box<dyn Sink<'_> + '_>> = Vec::new();
    if let Some(path) = &req.metadata_file {
        sinks.push(Box::new(MetadataSink::new(
            path.clone(),
            req.work_dir.clone(),
        )));
    }
    if let (Some(path), Some(sbom)) = (&req.supply.sbom_file, &layered.sbom) {
        sinks.push(Box::new(SbomSink::new(
            path.clone(),
            req.work_dir.clone(),
            sbom.clone(),
        )));
    }
    if let Some(path) = &dest.archive {
        sinks.push(Box::new(ArchiveSink::new(
            path.clone(),
            req.work_dir.clone(),
            feedback.clone(),
        )));
    }
    if let (Some(engine), true) = (&dest.engine, dest.load) {
        let endpoint = engine.endpoint().to_string();
        sinks.push(Box::new(EngineSink::new(
            engine,
            endpoint,
            feedback.clone(),
        )));
    }
    if let Some(opts) = &req.outputs.push {
        let what = Attachments {
            sbom: layered.sbom.clone(),
            key,
        };
        sinks.push(Box::new(
            RegistrySink::new(opts.clone(), feedback).attaching(what),
        ));
    }
    sink::publish(&mut sinks, &built, &mut outcome).await?;
    Ok(outcome)
}

/// The sinks' steps and byte progress as [`Event`]s.
fn feedback(events: &Events) -> Feedback {
    let (steps, bytes) = (events.clone(), events.clone());
    Feedback {
        step: Arc::new(move |s| steps(Event::Step(s))),
        progress: Arc::new(move |step, done| {
            bytes(Event::Bytes {
                step: step.into(),
                done,
            })
        }),
    }
}
