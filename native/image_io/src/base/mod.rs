//! `--base IMAGE`: the release's layers on top of a base image's layers instead of the runtime
//! layer, for teams that want a distribution in the image.
//!
//! [`load_base`] reads the base image — from the local engine (`GET /images/{name}/get`, a
//! docker-archive stream, `archive.rs`) when the reference names no registry and the engine has
//! it, else from its registry (OCI or Docker v2 manifests; an index is resolved to the release's
//! platform, `pull.rs`) — into a [`LoadedBase`]: its layers as gzip blobs in the build's
//! [`BlobDir`] (digests and `diff_id`s checked against the base's config, `store.rs`), the parts
//! of its config the image inherits, and its filesystem unpacked into a temporary directory
//! (whiteouts applied, `unpack.rs`) so that the plan can check that the base runs the release
//! ([`LoadedBase::plan`], [`image_core::plan::plan_on_base`]). The pipeline's base stage calls
//! it; the image is then [`LoadedBase::apply`]'d to what the layers stage built.
//!
//! Nothing is held whole in memory: layers stream from the engine or registry through the
//! hashers and the compressor into their blob files, then from the blobs into the tree.
//! Dropping the [`LoadedBase`] removes the unpacked tree (the blobs stay in the blob directory
//! with the image's other layers).

mod archive;
mod cache;
mod pull;
mod store;
mod unpack;

pub use cache::{Unpacked, UnpackedCache, KEEP as KEEP_UNPACKED};
pub use unpack::NOT_UNPACKED;

use crate::engine::DockerEngine;
use crate::error::Reason;
use crate::registry::{RegistryError, RegistryOptions};
use image_core::archive::BlobDir;
use image_core::digest::Digest;
use image_core::elf::Platform;
use image_core::fs::{Fs, HostFs};
use image_core::glibc::Incompatible;
use image_core::image::{History, Image};
use image_core::layer::LayerInfo;
use image_core::oci::ImageConfig;
use image_core::plan::{plan_on_base, Base, BasePlanError, Plan, Settings};
use image_core::reference::Reference;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The name of base layers in the image's layer list and summary.
pub const BASE_LAYER_NAME: &str = "base";

/// Why a base image could not be loaded. [`BaseError::reason`] is the atom for the Elixir side.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The reference is not a valid image reference.
    #[error("invalid base image reference {reference:?}: {rule}")]
    Reference {
        /// As given.
        reference: String,
        /// The rule it broke.
        rule: String,
    },
    /// Neither the engine nor the registry has the image.
    #[error("the base image {reference} was not found ({looked}): check its name and tag, or make it available ({})", match .cli { Some(cli) => format!("`{cli} pull`, `{cli} images`"), None => "push it to a registry, or start an engine that has it".to_string() })]
    NotFound {
        /// As given.
        reference: String,
        /// Where it was looked for.
        looked: String,
        /// The command-line tool of the engine it was looked for in (`docker`, `podman`), if any.
        cli: Option<&'static str>,
    },
    /// The image has no manifest for the release's platform.
    #[error("the base image {reference} has no image for {want} (it has: {available}): use a base image for {want}")]
    NoPlatform {
        /// As given.
        reference: String,
        /// The release's platform.
        want: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The base cannot run the release.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
    /// The engine failed while exporting the image.
    #[error("cannot read the base image {reference} from the Docker engine: {message}")]
    Engine {
        /// As given.
        reference: String,
        /// What the engine said.
        message: String,
    },
    /// The registry failed.
    #[error("cannot pull the base image {reference}: {source}")]
    Registry {
        /// As given.
        reference: String,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// The image's documents or blobs are not what they claim (digest mismatch, bad JSON,
    /// unsupported format).
    #[error("the base image {reference} cannot be used: {problem}")]
    Invalid {
        /// As given.
        reference: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A local file could not be written or read.
    #[error("cannot load the base image {reference}: {}: {source}", path.display())]
    Io {
        /// As given.
        reference: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl BaseError {
    /// A stable name for the kind of failure.
    ///
    /// ```
    /// use image_io::base::BaseError;
    /// let e = BaseError::NotFound { reference: "x:1".into(), looked: "nowhere".into(), cli: None };
    /// assert_eq!(e.reason(), "base_not_found");
    /// ```
    pub fn reason(&self) -> Reason {
        match self {
            BaseError::NotFound { .. } => Reason::BaseNotFound,
            BaseError::NoPlatform { .. } | BaseError::Incompatible(_) => Reason::BaseIncompatible,
            _ => Reason::BaseError,
        }
    }
}

/// The parts of the base's config the image inherits, and its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseConfig {
    /// `Env`.
    pub env: Vec<String>,
    /// `User` (informative: the image runs as the app's numeric user).
    pub user: String,
    /// `WorkingDir` (informative: the image works in `/app`).
    pub working_dir: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts`.
    pub exposed_ports: Vec<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// `history`, one non-empty entry per layer (made up when the base's does not match its
    /// layers).
    pub history: Vec<History>,
}

/// A base image ready to build on: layers in the blob directory, config, unpacked tree.
#[derive(Debug)]
pub struct LoadedBase {
    /// The reference as given.
    pub reference: String,
    /// Where it was read from (`the Docker engine at unix:///…`, `registry 127.0.0.1:5000`).
    pub source: String,
    /// Its layers, bottom first, as gzip blobs in the [`BlobDir`] given to [`load_base`].
    pub layers: Vec<LayerInfo>,
    /// Its config.
    pub config: BaseConfig,
    /// Its platform.
    pub platform: Platform,
    /// `rootfs.diff_ids` of its config (equal to the layers' `diff_id`s).
    pub diff_ids: Vec<Digest>,
    fs: HostFs,
    rootfs: tempfile::TempDir,
}

impl LoadedBase {
    /// The directory holding the base's merged filesystem (removed when `self` is dropped).
    pub fn rootfs(&self) -> &Path {
        self.rootfs.path()
    }

    /// The base's filesystem, for `image_core`.
    pub fn fs(&self) -> &HostFs {
        &self.fs
    }

    /// The base as [`plan_on_base`] takes it.
    pub fn plan_base(&self) -> Base<'_> {
        Base {
            reference: self.reference.clone(),
            fs: &self.fs,
            platform: self.platform.clone(),
            env: self.config.env.clone(),
            labels: self.config.labels.clone(),
            exposed_ports: self.config.exposed_ports.clone(),
            stop_signal: self.config.stop_signal.clone(),
        }
    }

    /// Check the base against the release and plan the layers that go on top of it (release in
    /// `host`, usually `HostFs::new("/")`).
    pub fn plan(&self, host: &dyn Fs, settings: &Settings) -> Result<Plan, BasePlanError> {
        plan_on_base(host, settings, &self.plan_base())
    }

    /// The unpacked tree, to keep it (dropping the guard removes it).
    pub fn into_rootfs(self) -> tempfile::TempDir {
        self.rootfs
    }

    /// The built image on top of this base: the base's layers first, its history first.
    pub fn apply(&self, image: Image) -> Image {
        image.on_base(self.layers.clone(), self.config.history.clone())
    }
}

/// The command-line tool of the engine a base image was looked for in, for the hint of a base
/// image not found; `None` when no engine was asked.
async fn engine_cli(engine: Option<&DockerEngine>) -> Option<&'static str> {
    match engine {
        Some(engine) => Some(crate::engine::Engine::cli(engine).await),
        None => None,
    }
}

/// Load `reference` as a base image: from `engine` when the reference names no registry host
/// and the engine has the image, else from its registry (Docker Hub for names without a host)
/// using `registry`'s transport and credentials. Layers go to `blobs` (gzip at `level`, 1–9,
/// for layers that arrive uncompressed); `platform` picks the manifest of an index
/// (default `linux/amd64`).
pub async fn load_base(
    reference: &str,
    engine: Option<&DockerEngine>,
    registry: &RegistryOptions,
    blobs: &BlobDir,
    platform: Option<&Platform>,
    level: u32,
) -> Result<LoadedBase, BaseError> {
    let r = BaseRef::parse(reference)?;
    let io_err = |path: &Path| {
        let (reference, path) = (reference.to_string(), path.to_path_buf());
        move |source| BaseError::Io {
            reference,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&blobs.root).map_err(io_err(&blobs.root))?;
    let work = blobs.root.parent().unwrap_or(&blobs.root).to_path_buf();
    let rootfs = tempfile::Builder::new()
        .prefix(".base-rootfs-")
        .tempdir_in(&work)
        .map_err(io_err(&work))?;
    let level = level.clamp(1, 9);

    let mut looked = Vec::new();
    // The engine is asked for a name without a registry host.
    let asked = engine.filter(|_| r.domain.is_none());
    let fetched = 'found: {
        if let Some(engine) = asked {
            match engine.has_image(reference).await {
                Ok(true) => break 'found archive::from_engine(&r, engine, blobs, level).await?,
                Ok(false) => {
                    looked.push(format!("not in the Docker engine at {}", engine.endpoint()))
                }
                Err(e) => {
                    return Err(BaseError::Engine {
                        reference: reference.into(),
                        message: e.to_string(),
                    })
                }
            }
        }
        let want = platform.cloned().unwrap_or_else(|| Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        });
        match pull::from_registry(&r, registry, blobs, &want, level).await {
            Err(BaseError::Registry {
                source: RegistryError::NotFound { .. },
                ..
            }) => {
                looked.push(format!("not in the registry {}", r.registry_host()));
                return Err(BaseError::NotFound {
                    reference: reference.into(),
                    looked: looked.join(", "),
                    cli: engine_cli(asked).await,
                });
            }
            Err(BaseError::Registry { source, .. }) if !looked.is_empty() => {
                looked.push(format!(
                    "and the registry {} failed: {source}",
                    r.registry_host()
                ));
                return Err(BaseError::NotFound {
                    reference: reference.into(),
                    looked: looked.join(" "),
                    cli: engine_cli(asked).await,
                });
            }
            other => other?,
        }
    };

    // Unpack the layers, in order, from the stored blobs. The tree moves into the worker and
    // back, so a caller that gives up still gets it removed once the worker stops.
    let paths: Vec<PathBuf> = fetched
        .layers
        .iter()
        .map(|l| blobs.path(&l.digest))
        .collect();
    let (rootfs, counts) = tokio::task::spawn_blocking(move || {
        let counts: io::Result<Vec<usize>> = paths
            .iter()
            .map(|p| unpack::unpack_layer(rootfs.path(), p))
            .collect();
        (rootfs, counts)
    })
    .await
    .map_err(|e| invalid(reference, format!("the unpacking thread failed: {e}")))?;
    let counts = counts.map_err(io_err(rootfs.path()))?;
    let mut layers = fetched.layers;
    for (l, n) in layers.iter_mut().zip(counts) {
        l.entries = n;
    }
    let fs = HostFs::new(rootfs.path());
    Ok(LoadedBase {
        reference: reference.to_string(),
        source: fetched.source,
        layers,
        config: fetched.config,
        platform: fetched.platform,
        diff_ids: fetched.diff_ids,
        fs,
        rootfs,
    })
}

/// `reference`'s image for `platform` in its registry, as a name an engine can pull without
/// making or moving a tag: `NAME@sha256:…` (the index's entry for `platform`, or the manifest
/// `reference` names when it is a single image), and the registry host it is pulled from.
/// Names without a registry host are Docker Hub's, as for an engine.
///
/// ```no_run
/// # async fn f() -> Result<(), image_io::base::BaseError> {
/// use image_core::elf::Platform;
/// let arm64 = Platform { os: "linux".into(), architecture: "arm64".into(), variant: None };
/// let (pinned, host) = image_io::base::registry_image_for(
///     "registry.example.com/team/builder:27",
///     &Default::default(),
///     &arm64,
/// )
/// .await?;
/// assert!(pinned.starts_with("registry.example.com/team/builder@sha256:"));
/// assert_eq!(host, "registry.example.com");
/// # Ok(()) }
/// ```
pub async fn registry_image_for(
    reference: &str,
    registry: &RegistryOptions,
    platform: &Platform,
) -> Result<(String, String), BaseError> {
    let r = BaseRef::parse(reference)?;
    let digest = pull::manifest_digest(&r, registry, platform).await?;
    let name = match &r.domain {
        Some(d) => format!("{d}/{}", r.path),
        None => r.path.clone(),
    };
    Ok((format!("{name}@{digest}"), r.registry_host()))
}

fn invalid(reference: &str, problem: impl Into<String>) -> BaseError {
    BaseError::Invalid {
        reference: reference.to_string(),
        problem: problem.into(),
    }
}

/// A base reference: `[host/]path[:tag][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseRef {
    given: String,
    domain: Option<String>,
    path: String,
    tag: String,
    digest: Option<String>,
}

impl BaseRef {
    fn parse(input: &str) -> Result<BaseRef, BaseError> {
        let bad = |rule: String| BaseError::Reference {
            reference: input.to_string(),
            rule,
        };
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let hex = d.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        "a digest must be sha256: followed by 64 hex digits".into()
                    ));
                }
                (n, Some(d.to_ascii_lowercase()))
            }
            None => (input, None),
        };
        let r = Reference::parse(name).map_err(|e| bad(e.rule.to_string()))?;
        Ok(BaseRef {
            given: input.to_string(),
            domain: r.domain,
            path: r.path,
            tag: r.tag,
            digest,
        })
    }

    /// The registry host to ask: Docker Hub's API host for names without one.
    fn registry_host(&self) -> String {
        match self.domain.as_deref() {
            None | Some("docker.io") | Some("index.docker.io") => "registry-1.docker.io".into(),
            Some(d) => d.to_string(),
        }
    }

    /// The repository path on the registry (`library/debian` for Docker Hub's official images).
    fn registry_path(&self) -> String {
        let hub = matches!(
            self.domain.as_deref(),
            None | Some("docker.io") | Some("index.docker.io")
        );
        if hub && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        }
    }
}

/// What a source produced before unpacking.
struct Fetched {
    source: String,
    layers: Vec<LayerInfo>,
    config: BaseConfig,
    platform: Platform,
    diff_ids: Vec<Digest>,
}

// The config.

/// The facts of an image config JSON.
struct ParsedConfig {
    config: BaseConfig,
    platform: Platform,
    diff_ids: Vec<String>,
    /// The config's `history` as given.
    history: Vec<History>,
}

fn parse_config(reference: &str, bytes: &[u8]) -> Result<ParsedConfig, BaseError> {
    let c: ImageConfig = serde_json::from_slice(bytes)
        .map_err(|e| invalid(reference, format!("its config is not JSON ({e})")))?;
    let platform = c.platform();
    let run = c.config;
    Ok(ParsedConfig {
        config: BaseConfig {
            env: run.env,
            user: run.user,
            working_dir: run.working_dir,
            labels: run.labels,
            exposed_ports: run.exposed_ports,
            stop_signal: run.stop_signal.filter(|s| !s.is_empty()),
            history: Vec::new(),
        },
        platform,
        diff_ids: c.rootfs.diff_ids,
        history: c.history.into_iter().map(History::from).collect(),
    })
}

/// Check the stored layers against the config's `diff_ids` and finish the config's history.
fn finish(
    reference: &str,
    source: String,
    parsed: ParsedConfig,
    layers: Vec<LayerInfo>,
) -> Result<Fetched, BaseError> {
    if parsed.diff_ids.len() != layers.len() {
        return Err(invalid(
            reference,
            format!(
                "its config lists {} layers (rootfs.diff_ids) but its manifest has {}",
                parsed.diff_ids.len(),
                layers.len()
            ),
        ));
    }
    for (i, (l, want)) in layers.iter().zip(&parsed.diff_ids).enumerate() {
        if l.diff_id.to_string() != *want {
            return Err(invalid(
                reference,
                format!(
                    "layer {} unpacks to {} but its config says {want}: the image is corrupt",
                    i + 1,
                    l.diff_id
                ),
            ));
        }
    }
    // One non-empty history entry per layer, or we make them up (history is informative, but
    // tools pair entries with layers).
    let non_empty = parsed.history.iter().filter(|h| !h.empty_layer).count();
    let history = if non_empty == layers.len() {
        parsed.history
    } else {
        (1..=layers.len())
            .map(|i| History {
                created_by: Some(format!("base image {reference}, layer {i}")),
                ..History::default()
            })
            .collect()
    };
    let diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
    Ok(Fetched {
        source,
        layers,
        config: BaseConfig {
            history,
            ..parsed.config
        },
        platform: parsed.platform,
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::pull::pick_platform;
    use super::*;

    #[test]
    fn a_base_not_found_names_the_commands_of_the_engine_it_was_looked_for_in() {
        let not_found = |cli| {
            BaseError::NotFound {
                reference: "app-base:1".into(),
                looked: "nowhere".into(),
                cli,
            }
            .to_string()
        };
        let podman = not_found(Some("podman"));
        assert!(
            podman.contains("`podman pull`, `podman images`"),
            "{podman}"
        );
        let none = not_found(None);
        assert!(none.contains("push it to a registry"), "{none}");
        assert!(!none.contains("docker"), "{none}");
    }

    #[test]
    fn references_and_index_entries() {
        let r = BaseRef::parse("debian:bookworm-slim").unwrap();
        assert_eq!(
            (r.registry_host().as_str(), r.registry_path().as_str()),
            ("registry-1.docker.io", "library/debian")
        );
        let r = BaseRef::parse(&format!(
            "127.0.0.1:5000/team/base@sha256:{}",
            "a".repeat(64)
        ))
        .unwrap();
        assert_eq!(r.domain.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.registry_path(), "team/base");
        assert!(r.digest.is_some());
        assert!(BaseRef::parse("x@sha256:12").is_err());
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let index: image_core::oci::Document = serde_json::from_value(index).unwrap();
        assert_eq!(pick_platform("b", &index, &amd64).unwrap(), "sha256:amd");
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(pick_platform("b", &index, &arm64).unwrap(), "sha256:arm");
        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let e = pick_platform("b", &index, &s390).unwrap_err();
        assert_eq!(e.reason(), "base_incompatible");
        assert!(
            e.to_string()
                .contains("it has: linux/arm64/v8, linux/amd64"),
            "{e}"
        );
    }
}
