//! Stage 6, publish: the image to every destination, through the sinks ([`crate::sink`]),
//! committed together or not at all.

use super::layers::Layered;
use super::{Destinations, Event, Events, Outcome, Platforms, Request};
use crate::error::Failure;
use crate::sink::{
    self, ArchiveSink, Built, EngineSink, Feedback, ImageSbom, MetadataSink, RegistrySink,
    SbomSink, Sink,
};
use image_core::elf::Platform;
use image_core::image::Image;
use image_core::plan::same_platform;
use image_core::reference::Reference;
use image_core::supply::signing::SigningKey;
use image_core::supply::SbomFile;
use std::sync::Arc;

/// Each platform's SBOM (see [`Layered::sbom`]): the release's own (`native`'s) and every
/// other platform's (its plan's). Taken before [`Platforms::write`], which keeps the
/// [`Layered`] of the image the engine loads only; [`publish`] gives each image of the index
/// its own.
pub fn platform_sboms(platforms: &Platforms, native: &Layered) -> Vec<(Platform, SbomFile)> {
    let own = native.sbom.clone().map(|s| (platforms.native.clone(), s));
    let others = platforms
        .foreign
        .iter()
        .filter_map(|f| Some((f.platform.clone(), f.plan().sbom.clone()?)));
    own.into_iter().chain(others).collect()
}

/// The SBOM of each of `images` (those of an index), found by platform in `sboms`: all or
/// none of them have one (`--no-sbom`); an image left without one while others have theirs
/// is a bug, reported as such rather than attached or written for some platforms only.
fn image_sboms(
    images: &[Image],
    sboms: &[(Platform, SbomFile)],
) -> Result<Vec<ImageSbom>, Failure> {
    if sboms.is_empty() {
        return Ok(Vec::new());
    }
    images
        .iter()
        .map(|image| {
            let (_, sbom) = sboms
                .iter()
                .find(|(p, _)| same_platform(p, &image.platform))
                .ok_or_else(|| {
                    Failure::internal(format!(
                        "the {} image has no SBOM, while the other platforms' have theirs",
                        image.platform
                    ))
                })?;
            Ok(ImageSbom {
                manifest: image.manifest_digest(),
                sbom: sbom.clone(),
            })
        })
        .collect()
}

/// Send the image of `layered`, tagged `tags`, to the destinations of `req` and `dest`. With
/// several platforms, `sboms` holds each platform's SBOM ([`platform_sboms`]).
pub async fn publish(
    req: &Request,
    dest: &Destinations,
    layered: Layered,
    sboms: Vec<(Platform, SbomFile)>,
    tags: Vec<Reference>,
    events: &Events,
) -> Result<Outcome, Failure> {
    let sboms = match (&layered.index, layered.sbom) {
        (Some(index), _) => image_sboms(index.images(), &sboms)?,
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
    use image_core::image::RunConfig;
    use image_core::platform::parse;
    use image_core::supply::sbom::SbomFormat;

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

    #[test]
    fn each_image_gets_the_sbom_of_its_platform() {
        let images = [image("linux/amd64"), image("linux/arm64")];
        // As the plans name them: the release's own first, arm64 without its variant.
        let sboms = [
            (parse("linux/arm64").unwrap(), sbom("arm")),
            (parse("linux/amd64").unwrap(), sbom("amd")),
        ];
        let paired = image_sboms(&images, &sboms).unwrap();
        assert_eq!(paired.len(), 2);
        assert_eq!(paired[0].manifest, images[0].manifest_digest());
        assert_eq!(paired[0].sbom.bytes, b"amd");
        assert_eq!(paired[1].manifest, images[1].manifest_digest());
        assert_eq!(paired[1].sbom.bytes, b"arm");
    }

    #[test]
    fn no_sbom_at_all_is_no_sbom_and_one_missing_is_a_bug() {
        let images = [image("linux/amd64"), image("linux/arm64")];
        assert_eq!(image_sboms(&images, &[]).unwrap(), vec![]);
        let one = [(parse("linux/amd64").unwrap(), sbom("amd"))];
        let e = image_sboms(&images, &one).unwrap_err();
        assert_eq!(e.reason, crate::error::Reason::Internal);
        assert!(
            e.message.contains("linux/arm64/v8 image has no SBOM"),
            "{}",
            e.message
        );
    }
}
