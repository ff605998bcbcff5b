//! Stage 5, the layers: every planned layer written as a blob (taken from the layer cache when
//! an identical one was compressed before), and the image value. The builder container, no
//! longer needed, is removed meanwhile.

use super::{Event, Events, Release, Request};
use crate::base::LoadedBase;
use crate::error::Failure;
use crate::sink::ImageSbom;
use image_core::build::{build_cached, LayerCache, Progress as BuildProgress};
use image_core::image::Image;
use image_core::index::ImageIndex;
use image_core::plan::{Plan, RuntimeFile};
use image_core::supply::SbomFile;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the layers stage made: the image, and why each runtime file is in it.
pub struct Layered {
    /// The image (on its base, when there is one).
    pub image: Image,
    /// Runtime files outside `/app` and why each is there.
    pub runtime_files: Vec<RuntimeFile>,
    /// The SBOM embedded in the image (what `--sbom` writes and a push attaches), if any.
    pub sbom: Option<SbomFile>,
    /// With several platforms, the index over one image per platform, `image` among them
    /// ([`super::Platforms::write`]).
    pub index: Option<ImageIndex>,
    /// Whether the user named `image`'s platform (`--platform`).
    pub named_platform: bool,
    /// With `index`, the SBOM of each of its images ([`Platforms::write`]).
    pub index_sboms: Vec<ImageSbom>,
}

/// Write the layers of `plan` into the run's blob directory and return the image. The layer
/// cache keeps this image's layers, `more_layers` (other platforms' images, written next) and
/// as many of the previous run's.
pub async fn write_layers(
    req: &Request,
    mut release: Release<'_>,
    plan: Plan,
    base: Option<Arc<LoadedBase>>,
    more_layers: usize,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Layered, Failure> {
    let remove_builder = async {
        match release.builder.as_mut() {
            Some(b) => b.finish().await,
            None => None,
        }
    };
    let write = {
        let events = events.clone();
        let cancel = cancel.clone();
        let (created, level, blobs) = (req.created, req.compression_level, req.blobs());
        let cache = req.layer_cache.clone().map(|dir| LayerCache { dir });
        let fs = release.fs.clone();
        tokio::task::spawn_blocking(move || -> Result<_, Failure> {
            let mut progress = progress_events(events, cancel);
            let image = build_cached(
                &*fs,
                &plan,
                created,
                level,
                &blobs,
                cache.as_ref(),
                &mut progress,
            )?;
            if let Some(cache) = &cache {
                // This image's layers and the previous image's stay.
                let _ = cache.prune(2 * (plan.layers.len() + more_layers).max(1));
            }
            let image = match &base {
                None => image,
                Some(b) => b.apply(image),
            };
            Ok(Layered {
                image,
                runtime_files: plan.runtime_files,
                sbom: plan.sbom,
                index: None,
                named_platform: false,
                index_sboms: Vec::new(),
            })
        })
    };
    let (warning, written) = tokio::join!(remove_builder, write);
    if let Some(w) = warning {
        events(Event::Step(w));
    }
    written.map_err(|e| Failure::internal(format!("the layer writer failed: {e}")))?
}

/// The layer writer's progress as [`Event`]s: a step per layer, bytes as they go; `false`
/// (stop) once `cancel` is cancelled.
pub(super) fn progress_events(
    events: Events,
    cancel: CancellationToken,
) -> impl FnMut(BuildProgress) -> bool {
    let mut last_step = usize::MAX;
    move |p: BuildProgress| {
        match p {
            BuildProgress::Layer {
                name,
                index,
                count,
                bytes,
            } => {
                if index != last_step {
                    last_step = index;
                    events(Event::Step(format!(
                        "writing layer {}/{count}: {name}",
                        index + 1
                    )));
                }
                events(Event::Bytes {
                    step: format!("{name} layer"),
                    done: bytes,
                });
            }
            BuildProgress::Checking { name, bytes, .. } => {
                events(Event::Bytes {
                    step: format!("{name} layer"),
                    done: bytes,
                });
            }
            BuildProgress::Reused { name, index, count } => {
                events(Event::Step(format!(
                    "layer {}/{count}: {name} unchanged, taken from the layer cache",
                    index + 1
                )));
            }
        }
        !cancel.is_cancelled()
    }
}
