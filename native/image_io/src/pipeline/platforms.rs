//! Stage 4b, the other platforms (`--platform`): for each platform other than the release's own,
//! an image of that platform (the *target*) read like a base image, never run
//! ([`crate::base::load_base`]), and the release's plan for it ([`foreign::plan_for`]: its ELF
//! files from the target's OTP installation, its runtime files from the target). Every
//! platform is checked before any layer is written; the refusals of all of them come in one
//! failure. Then [`Platforms::write`] writes their layers (the `deps` and `app` layers of a
//! project without native code are the same blobs as the release's own) and makes the
//! [`ImageIndex`].
//!
//! Where a platform's target comes from: `--platform-image P=IMAGE`, else (a builder build)
//! the builder image itself, resolved to P: its registry's index, or the engine's image when it
//! is of P (the engine keeps one platform per tag). A host build has no image to take it from
//! and must name one.
//!
//! With `--emulate`, no other platform's image is read for files: each other platform's release
//! is built in a builder of that platform run under emulation and planned from it
//! (`emulate.rs`, [`ForeignFrom::Emulated`]).

use super::emulate::{build_emulated, find_emulator, Emulated, Emulator};
use super::layers::{progress_events, Layered};
use super::publish::index_sboms;
use super::{Destinations, Event, Events, Release, Request, Source};
use crate::base::{load_base, LoadedBase, UnpackedCache, KEEP_UNPACKED};
use crate::error::{Failure, Reason};
use image_core::build::{build_cached, LayerCache};
use image_core::digest::Digest;
use image_core::elf::Platform;
use image_core::foreign::{plan_for, ForeignError, ForeignPlan, Refused, Target};
use image_core::fs::{Fs, HostFs};
use image_core::index::ImageIndex;
use image_core::plan::{release_platform, same_platform, Plan};
use image_core::platform::Selection;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One platform other than the release's own, checked and planned.
pub struct Foreign {
    /// The platform (as `--platform` gave it, normalised).
    pub platform: Platform,
    /// Where its image's files come from.
    pub from: ForeignFrom,
}

/// Where the files of another platform's image come from.
pub enum ForeignFrom {
    /// The release built natively, with its ERTS, OTP native files and runtime files from an
    /// image of that platform.
    Files {
        /// The image its files come from, unpacked.
        target: Arc<TargetImage>,
        /// The release's plan for it.
        plan: ForeignPlan,
    },
    /// A release of its own, built under emulation (`--emulate`).
    Emulated(Emulated),
}

impl Foreign {
    /// The plan of its image.
    pub fn plan(&self) -> &Plan {
        match &self.from {
            ForeignFrom::Files { plan, .. } => &plan.plan,
            ForeignFrom::Emulated(e) => &e.plan,
        }
    }

    /// Where its files come from, for people.
    fn origin(&self) -> String {
        match &self.from {
            ForeignFrom::Files { target, .. } => format!("its files from {}", target.reference),
            ForeignFrom::Emulated(e) => format!("built under emulation in {}", e.builder),
        }
    }
}

/// An image of another platform, unpacked: read for this run, or kept from an earlier one
/// ([`UnpackedCache`]).
pub struct TargetImage {
    /// The reference as given.
    pub reference: String,
    /// Where it was read from.
    pub source: String,
    /// Its platform.
    pub platform: Platform,
    /// Its filesystem.
    pub fs: HostFs,
    /// What holds the tree while the run reads it (read for this run: removed at the end).
    _held: Option<(LoadedBase, tempfile::TempDir)>,
}

/// The platforms of a run.
pub struct Platforms {
    /// `--platform` and the rest, checked (empty: the release's own platform only).
    pub selection: Selection,
    /// The release's own platform.
    pub native: Platform,
    /// Every other platform asked for, planned.
    pub foreign: Vec<Foreign>,
}

impl Platforms {
    /// Layers the other platforms add (to keep that many more in the layer cache).
    pub fn layer_count(&self) -> usize {
        self.foreign.iter().map(|f| f.plan().layers.len()).sum()
    }

    /// Whether the release's own platform is one of the images.
    fn native_selected(&self) -> bool {
        self.selection.is_empty()
            || self
                .selection
                .platforms
                .iter()
                .any(|p| same_platform(p, &self.native))
    }

    /// Write every other platform's layers (from `build`, the release's filesystem, and each
    /// target) and put the images together with `native`, the release's own image: one image
    /// (for the one platform named), or an index over one image per platform. The image the
    /// engine and `docker load` get is the engine's platform's, when `engine_platform` (`os/arch`)
    /// is one of them, else the release's own, else the first `--platform` names.
    pub async fn write(
        self,
        req: &Request,
        build: Arc<dyn Fs>,
        native: Layered,
        engine_platform: Option<String>,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<Layered, Failure> {
        if self.selection.is_empty() {
            return Ok(native);
        }
        let native_selected = self.native_selected();
        let mut made: Vec<Layered> = Vec::new();
        if native_selected {
            made.push(native);
        }
        let cache = req.layer_cache.clone().map(|dir| LayerCache { dir });
        for foreign in self.foreign {
            events(Event::Step(format!(
                "writing the {} image ({})",
                foreign.platform,
                foreign.origin()
            )));
            let (events, cancel) = (events.clone(), cancel.clone());
            let (created, level, blobs) = (req.created, req.compression_level, req.blobs());
            let (build, cache) = (build.clone(), cache.clone());
            let written = tokio::task::spawn_blocking(move || -> Result<Layered, Failure> {
                let mut progress = progress_events(events, cancel);
                let mut write = |fs: &dyn Fs, plan: &Plan| {
                    let (cache, progress) = (cache.as_ref(), &mut progress);
                    build_cached(fs, plan, created, level, &blobs, cache, progress)
                };
                let (image, plan) = match foreign.from {
                    ForeignFrom::Files { target, plan } => {
                        let fs = plan.substitution.fs(&*build, &target.fs);
                        (write(&fs, &plan.plan)?, plan.plan)
                    }
                    ForeignFrom::Emulated(e) => (write(&*e.fs, &e.plan)?, e.plan),
                };
                Ok(Layered {
                    image,
                    runtime_files: plan.runtime_files,
                    sbom: plan.sbom,
                    index: None,
                    named_platform: true,
                    index_sboms: Vec::new(),
                })
            })
            .await
            .map_err(|e| Failure::internal(format!("the layer writer failed: {e}")))??;
            made.push(written);
        }

        let given = |p: &Platform| {
            self.selection
                .platforms
                .iter()
                .position(|q| same_platform(p, q))
        };
        let loaded = made
            .iter()
            .position(|l| {
                let p = &l.image.platform;
                engine_platform.as_deref() == Some(&format!("{}/{}", p.os, p.architecture))
            })
            .or_else(|| {
                made.iter()
                    .position(|l| native_selected && same_platform(&l.image.platform, &self.native))
            })
            .or_else(|| {
                (0..made.len())
                    .min_by_key(|&i| given(&made[i].image.platform).unwrap_or(usize::MAX))
            })
            .ok_or_else(|| Failure::internal("a multi-platform build made no image"))?;
        let images = made.iter().map(|l| l.image.clone()).collect::<Vec<_>>();
        let sboms = index_sboms(&made)?;
        let mut chosen = made.swap_remove(loaded);
        chosen.named_platform = true;
        if images.len() > 1 {
            let index = ImageIndex::new(images)
                .map_err(|e| Failure::internal(format!("the image index: {e}")))?;
            events(Event::Notice(format!(
                "image index {} over {}",
                index.digest(),
                index
                    .images()
                    .iter()
                    .map(|i| i.platform.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            chosen.index = Some(index);
            chosen.index_sboms = sboms;
        }
        Ok(chosen)
    }
}

/// Check the platforms of `req` and plan the release for each other one (see the module docs).
/// Refused, before any layer is written: a platform whose target cannot be had (a host build
/// without `--platform-image`, an image of another platform), and every [`foreign::check`]
/// problem of every platform, all in one failure.
///
/// [`foreign::check`]: image_core::foreign::check
pub async fn plan_platforms(
    req: &Request,
    dest: &Destinations,
    release: &Release<'_>,
    on_base: bool,
    emulators: Vec<Emulator>,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<Platforms, Failure> {
    let selection = req
        .platforms
        .check()
        .map_err(|e| Failure::new(Reason::InvalidConfig, e.0))?;
    let native = {
        let (fs, settings) = (release.fs.clone(), release.settings.clone());
        tokio::task::spawn_blocking(move || release_platform(&*fs, &settings))
            .await
            .map_err(|e| Failure::internal(format!("the planner failed: {e}")))??
    };
    let mut platforms = Platforms {
        selection,
        native,
        foreign: Vec::new(),
    };
    if platforms.selection.is_empty() {
        return Ok(platforms);
    }
    let invalid = |m: String| Err(Failure::new(Reason::InvalidConfig, m));
    let others: Vec<Platform> = platforms
        .selection
        .platforms
        .iter()
        .filter(|p| !same_platform(p, &platforms.native))
        .cloned()
        .collect();
    if others.is_empty() {
        return Ok(platforms);
    }
    if on_base {
        return invalid(format!(
            "--base cannot be combined with --platform for another platform than the release's own ({}): a base image would be needed for each platform. Drop --base, or build each platform's image on its own machine",
            platforms.native
        ));
    }
    if platforms.selection.emulate {
        let Source::Builder { image: builder, .. } = &req.source else {
            return invalid(
                "--emulate builds the release in a builder of each platform: give --builder IMAGE"
                    .into(),
            );
        };
        let engine = dest
            .engine
            .as_ref()
            .ok_or_else(|| Failure::internal("a builder build without an engine connection"))?;
        let registry = super::base::registry_options(req);
        for platform in others {
            let found = emulators
                .iter()
                .find(|e| same_platform(&e.platform, &platform))
                .cloned();
            let emulator = match found {
                Some(e) => e,
                None => {
                    let image = platforms.selection.images.get(&platform).unwrap_or(builder);
                    find_emulator(engine, &registry, &platform, image, events).await?
                }
            };
            let emulated = build_emulated(req, engine, &emulator, events, cancel).await?;
            platforms.foreign.push(Foreign {
                platform,
                from: ForeignFrom::Emulated(emulated),
            });
        }
        return Ok(platforms);
    }
    // Which image each platform's files come from, all decided before anything is read.
    let mut sources = Vec::new();
    for p in &others {
        let image = match (platforms.selection.images.get(p), &req.source) {
            (Some(image), _) => image.clone(),
            (None, Source::Builder { image, .. }) => image.clone(),
            (None, Source::Host) => {
                return invalid(format!(
                    "--platform {p}: a release built on this machine ({}) has no builder image whose {p} variant could provide {p}'s files: name an image of {p} with the same Erlang/OTP as this machine's, --platform-image {p}=IMAGE, or build in a builder (--builder IMAGE)",
                    platforms.native
                ));
            }
        };
        sources.push((p.clone(), image));
    }

    let own = super::base::reading_engine(req, dest).await;
    let engine = dest.engine.as_ref().or(own.as_ref());
    let registry = super::base::registry_options(req);
    let cache = req
        .layer_cache
        .as_ref()
        .and_then(|l| l.parent())
        .map(|d| UnpackedCache {
            dir: d.join("unpacked-images"),
        });
    let mut refusals = Vec::new();
    for (platform, image) in sources {
        // An image the engine has, of that platform, read before: its tree is kept by ID.
        // What the engine has under that name: an image of that platform (its ID, to find
        // its tree kept by an earlier run), or of another one (an engine keeps one platform
        // per tag: then the image is read from its registry, whose index has every platform).
        let in_engine = match engine {
            Some(engine) if names_no_registry(&image) => engine
                .image_platform(&image)
                .await
                .ok()
                .flatten()
                .and_then(|(id, p)| {
                    let p = image_core::platform::parse(&p).ok()?;
                    let id = Digest::from_hex(id.strip_prefix("sha256:")?)?;
                    Some((same_platform(&p, &platform), id, p))
                }),
            _ => None,
        };
        let read_from = match &in_engine {
            Some((false, _, other)) => {
                events(Event::Notice(format!(
                    "the engine's {image} is an image of {other}: reading its {platform} image from its registry"
                )));
                None
            }
            _ => engine,
        };
        let in_engine = in_engine.and_then(|(same, id, _)| same.then_some(id));
        let kept = match (&cache, &in_engine) {
            (Some(cache), Some(id)) => cache.get(id),
            _ => None,
        };
        let target = match kept {
            Some(kept) => {
                events(Event::Notice(format!(
                    "{image} for {platform}: its tree as unpacked by an earlier run (the engine's image {})",
                    in_engine.as_ref().map(|d| d.to_string()).unwrap_or_default()
                )));
                TargetImage {
                    reference: image.clone(),
                    source: "the Docker engine (unpacked by an earlier run)".into(),
                    platform: kept.platform,
                    fs: kept.fs,
                    _held: None,
                }
            }
            None => {
                let t = read_target(req, read_from, &registry, &image, &platform, events).await?;
                match (&cache, &in_engine) {
                    (Some(cache), Some(id)) if t.source.contains("Docker engine") => {
                        keep_target(cache, id, t)?
                    }
                    _ => t,
                }
            }
        };
        if !same_platform(&target.platform, &platform) {
            return Err(Failure::new(
                Reason::PlatformIncompatible,
                format!(
                    "the {platform} image's files cannot come from {image}: it was read from {} and is an image of {} (an engine keeps one platform per tag). Name an image of {platform} with --platform-image {platform}=IMAGE (an image in a registry, REGISTRY/NAME:TAG, whose index has {platform})",
                    target.source, target.platform
                ),
            ));
        }
        let target = Arc::new(target);
        let planned = {
            let (fs, settings, target, platform, image) = (
                release.fs.clone(),
                release.settings.clone(),
                target.clone(),
                platform.clone(),
                image.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let t = Target {
                    platform,
                    image,
                    fs: &target.fs,
                    otp_roots: Vec::new(),
                };
                plan_for(&*fs, &settings, &t)
            })
            .await
            .map_err(|e| Failure::internal(format!("the planner failed: {e}")))?
        };
        match planned {
            Ok(plan) => platforms.foreign.push(Foreign {
                platform,
                from: ForeignFrom::Files { target, plan },
            }),
            Err(ForeignError::Refused(r)) => refusals.push(r),
            Err(ForeignError::Plan(e)) => return Err(e.into()),
        }
    }
    if let Some(cache) = &cache {
        let _ = cache.prune(KEEP_UNPACKED.max(platforms.foreign.len() + 1));
    }
    if !refusals.is_empty() {
        return Err(Failure::new(
            Reason::PlatformIncompatible,
            Refused(refusals).to_string(),
        ));
    }
    Ok(platforms)
}

/// Whether `image` names no registry host (the engine is asked first for such a name).
fn names_no_registry(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    image_core::reference::Reference::parse(name).is_ok_and(|r| r.domain.is_none())
}

/// Keep `t`'s tree (read for this run) in `cache` as image `id`, and read it from there.
fn keep_target(cache: &UnpackedCache, id: &Digest, t: TargetImage) -> Result<TargetImage, Failure> {
    let TargetImage {
        reference,
        source,
        _held,
        ..
    } = t;
    let Some((loaded, _scratch)) = _held else {
        return Err(Failure::internal(
            "a target read for this run holds no tree",
        ));
    };
    let kept = cache.put(id, loaded).map_err(|e| {
        Failure::new(
            Reason::OutputError,
            format!(
                "cannot keep the unpacked {reference} in {}: {e}",
                cache.dir.display()
            ),
        )
    })?;
    Ok(TargetImage {
        reference,
        source,
        platform: kept.platform,
        fs: kept.fs,
        _held: None,
    })
}

/// Read `image` for `platform` like a base image, into a scratch directory of the run.
async fn read_target(
    req: &Request,
    engine: Option<&crate::engine::DockerEngine>,
    registry: &crate::registry::RegistryOptions,
    image: &str,
    platform: &Platform,
    events: &Events,
) -> Result<TargetImage, Failure> {
    events(Event::Step(format!(
        "reading {image} for the {platform} image"
    )));
    let scratch = tempfile::Builder::new()
        .prefix(".platform-")
        .tempdir_in(&req.work_dir)
        .map_err(|e| {
            Failure::new(
                Reason::OutputError,
                format!(
                    "cannot create a directory in {}: {e}",
                    req.work_dir.display()
                ),
            )
        })?;
    let blobs = image_core::archive::BlobDir {
        root: scratch.path().join("blobs"),
    };
    let loaded = load_base(
        image,
        engine,
        registry,
        &blobs,
        Some(platform),
        req.compression_level,
    )
    .await
    .map_err(|e| Failure::new(e.reason(), format!("for the {platform} image: {e}")))?;
    events(Event::Notice(format!(
        "{image} for {platform} read from {}",
        loaded.source
    )));
    Ok(TargetImage {
        reference: image.to_string(),
        source: loaded.source.clone(),
        platform: loaded.platform.clone(),
        fs: loaded.fs().clone(),
        _held: Some((loaded, scratch)),
    })
}
