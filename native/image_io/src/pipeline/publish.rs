//! Stage 6, publish: the image to every destination, through the sinks ([`crate::sink`]),
//! committed together or not at all.

use super::layers::Layered;
use super::{Destinations, Event, Events, Outcome, Request};
use crate::error::Failure;
use crate::sink::{
    self, ArchiveSink, Built, EngineSink, Feedback, ImageSbom, MetadataSink, RegistrySink,
    SbomSink, Sink,
};
use image_core::reference::Reference;
use image_core::supply::signing::SigningKey;
use std::sync::Arc;

/// The SBOM of each image of `made` (one per platform, for an index): all or none of them
/// have one (`--no-sbom`); an image left without one while others have theirs is a bug,
/// reported as such rather than attached or written for some platforms only.
pub(super) fn index_sboms(made: &[Layered]) -> Result<Vec<ImageSbom>, Failure> {
    if made.iter().all(|l| l.sbom.is_none()) {
        return Ok(Vec::new());
    }
    made.iter()
        .map(|l| {
            let sbom = l.sbom.clone().ok_or_else(|| {
                Failure::internal(format!(
                    "the {} image has no SBOM, while the other platforms' have theirs",
                    l.image.platform
                ))
            })?;
            Ok(ImageSbom {
                manifest: l.image.manifest_digest(),
                sbom,
            })
        })
        .collect()
}

/// Send the image of `layered`, tagged `tags`, to the destinations of `req` and `dest`, with
/// its SBOM (each image's, for an index: [`Layered::index_sboms`]).
pub async fn publish(
    req: &Request,
    dest: &Destinations,
    layered: Layered,
    tags: Vec<Reference>,
    events: &Events,
) -> Result<Outcome, Failure> {
    let sboms = match (&layered.index, layered.sbom) {
        (Some(_), _) => layered.index_sboms,
        (None, Some(sbom)) => vec![ImageSbom {
            manifest: layered.image.manifest_digest(),
            sbom,
        }],
        (None, None) => Vec::new(),
    };
    let built = Arc::new(Built {
        image: layered.image,
        blobs: req.blobs(),
        tags,
        index: layered.index,
        named_platform: layered.named_platform,
        sboms,
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
    if let (Some(path), false) = (&req.supply.sbom_file, built.sboms.is_empty()) {
        sinks.push(Box::new(SbomSink::new(path.clone(), req.work_dir.clone())));
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
        sinks.push(Box::new(
            RegistrySink::new(opts.clone(), feedback).signing(key),
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

#[cfg(test)]
mod tests {
    use super::*;
    use image_core::image::Image;
    use image_core::image::RunConfig;
    use image_core::platform::parse;
    use image_core::supply::sbom::SbomFormat;
    use image_core::supply::SbomFile;

    fn image(platform: &str) -> Image {
        Image {
            platform: parse(platform).unwrap(),
            created: 0,
            config: RunConfig::default(),
            layers: vec![],
            base_history: vec![],
            annotations: Default::default(),
        }
    }

    fn sbom(text: &str) -> SbomFile {
        SbomFile {
            format: SbomFormat::Spdx,
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn layered(platform: &str, sbom: Option<SbomFile>) -> Layered {
        Layered {
            image: image(platform),
            runtime_files: vec![],
            sbom,
            index: None,
            named_platform: true,
            index_sboms: vec![],
        }
    }

    #[test]
    fn each_image_gets_the_sbom_of_its_platform() {
        let made = [
            layered("linux/amd64", Some(sbom("amd"))),
            layered("linux/arm64", Some(sbom("arm"))),
        ];
        let paired = index_sboms(&made).unwrap();
        assert_eq!(paired.len(), 2);
        assert_eq!(paired[0].manifest, made[0].image.manifest_digest());
        assert_eq!(paired[0].sbom.bytes, b"amd");
        assert_eq!(paired[1].manifest, made[1].image.manifest_digest());
        assert_eq!(paired[1].sbom.bytes, b"arm");
    }

    #[test]
    fn no_sbom_at_all_is_no_sbom_and_one_missing_is_a_bug() {
        let none = [layered("linux/amd64", None), layered("linux/arm64", None)];
        assert_eq!(index_sboms(&none).unwrap(), vec![]);
        let one = [
            layered("linux/amd64", Some(sbom("amd"))),
            layered("linux/arm64", None),
        ];
        let e = index_sboms(&one).unwrap_err();
        assert_eq!(e.reason, crate::error::Reason::Internal);
        assert!(
            e.message.contains("linux/arm64/v8 image has no SBOM"),
            "{}",
            e.message
        );
    }
}
