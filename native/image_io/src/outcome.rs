//! What a successful build produced: the value `pipeline::run` returns, the NIF hands to the
//! Elixir side as a map (`DockerRelease.outcome`), and `--metadata-file` holds as JSON. Each
//! sink fills in its part ([`crate::sink::Sink::report`]); a new output adds its field here and
//! nowhere else on the way to Elixir.

use crate::engine::EngineKind;
use crate::registry::{PushOutcome, SbomReferrer, Signed};
use image_core::digest::Digest;
use image_core::image::{rfc3339, Image};
use image_core::index::ImageIndex;
use image_core::layer::LayerInfo;
use image_core::plan::RuntimeFile;
use serde::{Serialize, Serializer};
use std::path::PathBuf;

/// What a successful build produced: the image's facts first, then what each output did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The engine's image ID (config digest).
    pub image_id: Digest,
    /// The OCI manifest digest.
    pub manifest_digest: Digest,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Tags applied.
    pub tags: Vec<String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Bytes a registry stores (layers compressed, config, manifest).
    pub compressed_size: u64,
    /// Bytes of all layers uncompressed.
    pub uncompressed_size: u64,
    /// The engine's address, when loaded.
    pub engine: Option<String>,
    /// Which engine it was loaded into (`docker`, `podman`): the CLI the summary names.
    pub engine_kind: Option<EngineKind>,
    /// Image size as the engine reports it, when loaded.
    pub engine_size: Option<u64>,
    /// The archive's path, when written.
    pub archive: Option<PathBuf>,
    /// The archive's size, when written.
    pub archive_size: Option<u64>,
    /// What a registry push did, when pushed.
    pub pushed: Option<PushOutcome>,
    /// The SBOM written with `--sbom`, when written (with several platforms: none here, one
    /// per platform in [`PlatformImage::sbom_file`]).
    pub sbom_file: Option<SbomWritten>,
    /// The SBOM attached to the pushed image as an OCI referrer, when pushed with an SBOM (with
    /// several platforms: none here, one per platform in [`PlatformImage::sbom_referrer`]).
    pub sbom_referrer: Option<SbomReferrer>,
    /// The cosign signatures of what the tags name (the image, or with several platforms the
    /// image index), one per repository (empty: not signed).
    pub signatures: Vec<Signed>,
    /// With several platforms (`--platform`): the digest of the image index the tags name in a
    /// registry and in the archive (the image fields above are then those of the image of one
    /// platform, the one the engine loads; its SBOM file, referrer and signatures are in its
    /// entry of `platforms`, like every platform's).
    pub index_digest: Option<Digest>,
    /// With several platforms: each platform's image, in the index's order.
    pub platforms: Vec<PlatformImage>,
    /// Runtime files outside `/app` and why each is there.
    #[serde(serialize_with = "runtime_files")]
    pub runtime_files: Vec<RuntimeFile>,
}

impl Outcome {
    /// The outcome of `image`, tagged `tags`, before any output reported.
    pub fn new(image: &Image, tags: Vec<String>, runtime_files: Vec<RuntimeFile>) -> Outcome {
        Outcome {
            image_id: image.id(),
            manifest_digest: image.manifest_digest(),
            platform: image.platform.to_string(),
            tags,
            created: rfc3339(image.created),
            layers: image.layers.clone(),
            compressed_size: image.compressed_size(),
            uncompressed_size: image.layers.iter().map(|l| l.uncompressed_size).sum(),
            engine: None,
            engine_kind: None,
            engine_size: None,
            archive: None,
            archive_size: None,
            pushed: None,
            sbom_file: None,
            sbom_referrer: None,
            signatures: Vec::new(),
            index_digest: None,
            platforms: Vec::new(),
            runtime_files,
        }
    }

    /// The outcome of a multi-platform build: `index`'s images, `image` (one of them) the one
    /// the engine loads and the top-level fields describe.
    pub fn of_index(
        index: &ImageIndex,
        image: &Image,
        tags: Vec<String>,
        runtime_files: Vec<RuntimeFile>,
    ) -> Outcome {
        Outcome {
            index_digest: Some(index.digest()),
            platforms: index.images().iter().map(PlatformImage::of).collect(),
            ..Outcome::new(image, tags, runtime_files)
        }
    }
}

/// One platform's image of a multi-platform build.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformImage {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Its manifest's digest (the index's entry).
    pub manifest_digest: Digest,
    /// Its config's digest (the engine's image ID, were it loaded).
    pub image_id: Digest,
    /// Its layers, bottom first (`app` and `deps` are the same blobs on every platform when
    /// they hold no native file).
    pub layers: Vec<LayerInfo>,
    /// Its SBOM as `--sbom` wrote it (a file per platform), when written.
    pub sbom_file: Option<SbomWritten>,
    /// Its SBOM attached as an OCI referrer of its manifest, when pushed with an SBOM.
    pub sbom_referrer: Option<SbomReferrer>,
    /// The cosign signatures of its manifest, one per repository (empty: not signed).
    pub signatures: Vec<Signed>,
}

impl PlatformImage {
    fn of(image: &Image) -> PlatformImage {
        PlatformImage {
            platform: image.platform.to_string(),
            manifest_digest: image.manifest_digest(),
            image_id: image.id(),
            layers: image.layers.clone(),
            sbom_file: None,
            sbom_referrer: None,
            signatures: Vec::new(),
        }
    }
}

/// An SBOM file `--sbom` wrote: the same bytes as the image's `/sbom.*.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomWritten {
    /// The path as given (with several platforms, the path given with the platform added:
    /// [`crate::sink::platform_path`]).
    pub path: PathBuf,
    /// The document's media type (`application/spdx+json`, `application/vnd.cyclonedx+json`).
    pub media_type: String,
    /// The digest of its bytes.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Runtime files as objects (`{"path", "reason"}`) in JSON, which people read; as
/// `{path, reason}` tuples for the Elixir side, whose term encoder is not human-readable
/// (`DockerRelease.outcome`'s long-standing shape).
fn runtime_files<S: Serializer>(files: &[RuntimeFile], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        files.serialize(s)
    } else {
        let pairs: Vec<(String, &str)> = files
            .iter()
            .map(|f| (f.path.display().to_string(), f.reason.as_str()))
            .collect();
        pairs.serialize(s)
    }
}
