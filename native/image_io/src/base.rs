//! `--base IMAGE`: the release's layers on top of a base image's layers instead of the runtime
//! layer, for teams that want a distribution in the image.
//!
//! [`load_base`] reads the base image — from the local engine (`GET /images/{name}/get`, a
//! docker-archive stream) when the reference names no registry and the engine has it, else from
//! its registry (OCI or Docker v2 manifests; an index is resolved to the release's platform) —
//! into a [`LoadedBase`]: its layers as gzip blobs in the build's [`BlobDir`] (digests and
//! `diff_id`s checked against the base's config), the parts of its config the image inherits,
//! and its filesystem unpacked into a temporary directory (whiteouts applied) so that the plan
//! can check that the base runs the release ([`image_core::plan::plan_on_base`]).
//!
//! Nothing is held whole in memory: layers stream from the engine or registry through the
//! hashers and the compressor into their blob files, then from the blobs into the tree.
//!
//! # Wiring (pipeline.rs)
//!
//! `Request` gets `pub base: Option<String>`; then, in `run`:
//!
//! ```ignore
//! use crate::base::{self, LoadedBase};
//! use image_core::plan::{release_platform, BasePlanError};
//! // After `engine` and `blobs` are known, before the blocking build. A local base needs an
//! // engine even when the outputs do not use one (--output/--push only).
//! let base: Option<Arc<LoadedBase>> = match &req.base {
//!     None => None,
//!     Some(reference) => {
//!         events(Event::Step(format!("loading the base image {reference}")));
//!         let own = match (&engine, resolve_endpoint(&|k| std::env::var(k).ok())) {
//!             (None, Ok(ep)) if !matches!(ep, Endpoint::Missing(_)) => DockerEngine::connect(&ep).await.ok(),
//!             _ => None,
//!         };
//!         let platform = release_platform(&HostFs::new("/"), &req.settings).ok();
//!         let registry = req.outputs.push.clone().unwrap_or_default();
//!         let loaded = base::load_base(reference, engine.as_ref().or(own.as_ref()), &registry,
//!                                      &blobs, platform.as_ref(), req.compression_level)
//!             .await.map_err(|e| Failure::new(e.reason(), e))?;
//!         events(Event::Notice(format!("base image {reference} read from {}", loaded.source)));
//!         Some(Arc::new(loaded))
//!     }
//! };
//! // Inside spawn_blocking (move a clone of `base` in), instead of `plan(&fs, &req.settings)?`:
//! let plan = match &base {
//!     None => plan(&fs, &req.settings)?,
//!     Some(b) => b.plan(&fs, &req.settings).map_err(|e| match e {
//!         BasePlanError::Plan(e) => Failure::from(e),
//!         BasePlanError::Incompatible(e) => Failure::new("base_incompatible", e),
//!     })?,
//! };
//! let image = build(&fs, &plan, req.created, req.compression_level, &blobs, &mut progress)?;
//! let image = match &base { None => image, Some(b) => b.apply(image) };
//! ```
//!
//! `base` (an `Arc<LoadedBase>`) must live until the layers are written; dropping it removes
//! the unpacked tree (the blobs stay in the blob directory with the image's other layers).

use crate::channel::ChannelReader;
use crate::engine::DockerEngine;
use crate::registry::{Puller, PushOptions, RegistryError};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::{Stream, StreamExt};
use image_core::archive::BlobDir;
use image_core::digest::{Digest, HashWriter};
use image_core::elf::Platform;
use image_core::fs::{resolve_path, Fs, HostFs, Kind};
use image_core::glibc::Incompatible;
use image_core::image::{History, Image};
use image_core::layer::LayerInfo;
use image_core::plan::{plan_on_base, Base, BasePlanError, Plan, Settings};
use image_core::reference::Reference;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// The name of base layers in the image's layer list and summary.
pub const BASE_LAYER_NAME: &str = "base";

/// Manifests and configs larger than this are refused (real ones are a few KB).
const MAX_DOCUMENT: usize = 4 << 20;

/// Subtrees of a base that are not unpacked: documentation, translations, time zones and
/// package-manager state are half of a Debian base's files and nothing the compatibility check
/// reads (libraries, programs, `/etc`, `/usr/lib/locale`). Creating files is what unpacking
/// costs (5.7 s for the 6,700 entries of a Debian minbase on a VM, 1.4 s without these).
/// The layers themselves are kept whole: this only concerns [`LoadedBase::rootfs`].
pub const NOT_UNPACKED: &[&str] = &[
    "usr/share",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/lib/apk",
    "var/cache",
    "var/log",
];

/// Entries of a docker-archive up to this size are kept in memory until `manifest.json` says
/// what they are (configs, small layers); larger ones are stored as layer blobs as they stream.
const SMALL_ENTRY: u64 = 1 << 20;

/// Manifest media types we accept, best first.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

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
    #[error("the base image {reference} was not found ({looked}): check its name and tag, or make it available (`docker pull`, `docker images`)")]
    NotFound {
        /// As given.
        reference: String,
        /// Where it was looked for.
        looked: String,
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
    /// let e = BaseError::NotFound { reference: "x:1".into(), looked: "nowhere".into() };
    /// assert_eq!(e.reason(), "base_not_found");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            BaseError::NotFound { .. } => "base_not_found",
            BaseError::NoPlatform { .. } | BaseError::Incompatible(_) => "base_incompatible",
            _ => "base_error",
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

    /// The built image on top of this base: the base's layers first, its history first.
    pub fn apply(&self, image: Image) -> Image {
        image.on_base(self.layers.clone(), self.config.history.clone())
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
    registry: &PushOptions,
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
    let fetched = 'found: {
        if r.domain.is_none() {
            if let Some(engine) = engine {
                match engine.docker.inspect_image(reference).await {
                    Ok(_) => break 'found from_engine(&r, engine, blobs, level).await?,
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => looked.push(format!("not in the Docker engine at {}", engine.endpoint())),
                    Err(e) => {
                        return Err(BaseError::Engine {
                            reference: reference.into(),
                            message: engine.failure("the image inspection", e).to_string(),
                        })
                    }
                }
            }
        }
        let want = platform.cloned().unwrap_or_else(|| Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        });
        match from_registry(&r, registry, blobs, &want, level).await {
            Err(BaseError::Registry {
                source: RegistryError::NotFound { .. },
                ..
            }) => {
                looked.push(format!("not in the registry {}", r.registry_host()));
                return Err(BaseError::NotFound {
                    reference: reference.into(),
                    looked: looked.join(", "),
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
            .map(|p| unpack_layer(rootfs.path(), p))
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

/// A layer stored as a blob, and what arrived.
struct Stored {
    info: LayerInfo,
    /// sha256 of the bytes as received (the registry's layer digest).
    input_digest: Digest,
    input_size: u64,
}

// ---------------------------------------------------------------------------------------------
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
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(reference, format!("its config is not JSON ({e})")))?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let c = v.get("config").cloned().unwrap_or(Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let labels = c
        .get("Labels")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let history = v
        .get("history")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|h| History {
                    created: s(h, "created"),
                    created_by: s(h, "created_by"),
                    author: s(h, "author"),
                    comment: s(h, "comment"),
                    empty_layer: h.get("empty_layer").and_then(Value::as_bool) == Some(true),
                })
                .collect()
        })
        .unwrap_or_default();
    let diff_ids = strings(v.pointer("/rootfs/diff_ids"));
    let platform = Platform {
        os: s(&v, "os").unwrap_or_else(|| "linux".into()),
        architecture: s(&v, "architecture").unwrap_or_else(|| "amd64".into()),
        variant: s(&v, "variant"),
    };
    Ok(ParsedConfig {
        config: BaseConfig {
            env: strings(c.get("Env")),
            user: s(&c, "User").unwrap_or_default(),
            working_dir: s(&c, "WorkingDir").unwrap_or_default(),
            labels,
            exposed_ports: keys(c.get("ExposedPorts")),
            stop_signal: s(&c, "StopSignal").filter(|s| !s.is_empty()),
            history: Vec::new(),
        },
        platform,
        diff_ids,
        history,
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

// ---------------------------------------------------------------------------------------------
// From the engine: a docker-archive stream.

async fn from_engine(
    r: &BaseRef,
    engine: &DockerEngine,
    blobs: &BlobDir,
    level: u32,
) -> Result<Fetched, BaseError> {
    let reference = r.given.clone();
    let stream = engine.docker.export_image(&r.given).map(|c| {
        c.map_err(|e| io::Error::other(engine.failure("the export of the image", e).to_string()))
    });
    let blobs2 = blobs.clone();
    let archive = pump(stream, move |reader| {
        read_docker_archive(reader, &blobs2, level)
    })
    .await
    .map_err(|e| BaseError::Engine {
        reference: reference.clone(),
        message: e.to_string(),
    })?;
    let DockerArchive {
        mut small,
        mut stored,
        links,
    } = archive;
    let manifest = small
        .get("manifest.json")
        .ok_or_else(|| invalid(&reference, "the engine's export has no manifest.json"))?;
    let manifest: Value = serde_json::from_slice(manifest)
        .map_err(|e| invalid(&reference, format!("the engine's manifest.json: {e}")))?;
    let entry = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| invalid(&reference, "the engine's manifest.json lists no image"))?;
    let config_path = entry
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&reference, "the engine's manifest.json names no Config"))?;
    let config_bytes = small
        .get(&resolve_link(&links, config_path))
        .ok_or_else(|| invalid(&reference, format!("the export has no {config_path}")))?;
    let parsed = parse_config(&reference, config_bytes)?;
    let layer_paths: Vec<String> = entry
        .get("Layers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut layers = Vec::new();
    for p in layer_paths {
        let p = resolve_link(&links, &p);
        let info = match stored.get(&p) {
            Some(s) => s.info.clone(),
            None => {
                let bytes = small
                    .remove(&p)
                    .ok_or_else(|| invalid(&reference, format!("the export has no layer {p}")))?;
                let s = store_layer(&mut bytes.as_slice(), blobs, level).map_err(|source| {
                    BaseError::Io {
                        reference: reference.clone(),
                        path: blobs.root.clone(),
                        source,
                    }
                })?;
                let info = s.info.clone();
                stored.insert(p.clone(), s);
                info
            }
        };
        layers.push(info);
    }
    finish(
        &reference,
        format!("the Docker engine at {}", engine.endpoint()),
        parsed,
        layers,
    )
}

/// A docker-archive read from a stream: small entries in memory, large ones stored as layer
/// blobs (keyed by their path in the archive), symlink entries (identical layers) as aliases.
struct DockerArchive {
    small: HashMap<String, Vec<u8>>,
    stored: HashMap<String, Stored>,
    links: HashMap<String, String>,
}

fn read_docker_archive(
    reader: &mut dyn Read,
    blobs: &BlobDir,
    level: u32,
) -> io::Result<DockerArchive> {
    let mut out = DockerArchive {
        small: HashMap::new(),
        stored: HashMap::new(),
        links: HashMap::new(),
    };
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = clean(&entry.path_bytes());
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if entry.size() <= SMALL_ENTRY {
                    let mut buf = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut buf)?;
                    out.small.insert(path, buf);
                } else {
                    let s = store_layer(&mut entry, blobs, level)?;
                    out.stored.insert(path, s);
                }
            }
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name_bytes() {
                    let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                    let joined = dir.join(OsStr::from_bytes(&target));
                    out.links.insert(path, clean(joined.as_os_str().as_bytes()));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A relative archive path with `.` and `..` applied and no leading `./` or `/`.
fn clean(path: &[u8]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    String::from_utf8_lossy(&parts.join(&b'/')).into_owned()
}

fn resolve_link(links: &HashMap<String, String>, path: &str) -> String {
    let mut p = clean(path.as_bytes());
    for _ in 0..8 {
        match links.get(&p) {
            Some(t) => p = t.clone(),
            None => break,
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// From a registry.

async fn from_registry(
    r: &BaseRef,
    opts: &PushOptions,
    blobs: &BlobDir,
    want: &Platform,
    level: u32,
) -> Result<Fetched, BaseError> {
    let reference = r.given.as_str();
    let host = r.registry_host();
    let path = r.registry_path();
    let reg_err = |source| BaseError::Registry {
        reference: reference.to_string(),
        source,
    };
    let mut puller = Puller::connect(&host, opts).await.map_err(reg_err)?;
    let first = r.digest.clone().unwrap_or_else(|| r.tag.clone());
    let (bytes, media) = get_document(
        &mut puller,
        reference,
        &path,
        &format!("manifests/{first}"),
        ACCEPT_MANIFESTS,
        r.digest.as_deref(),
    )
    .await?;
    let mut doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(reference, format!("its manifest is not JSON ({e})")))?;
    let kind = doc
        .get("mediaType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(media);
    if doc.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Err(invalid(
            reference,
            "it has a Docker schema 1 manifest, which is obsolete: push it again with a current tool",
        ));
    }
    if doc.get("manifests").is_some() || kind.contains("index") || kind.contains("list") {
        let digest = pick_platform(reference, &doc, want)?;
        let (bytes, _) = get_document(
            &mut puller,
            reference,
            &path,
            &format!("manifests/{digest}"),
            ACCEPT_MANIFESTS,
            Some(&digest),
        )
        .await?;
        doc = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(reference, format!("its manifest is not JSON ({e})")))?;
    }
    let config_digest = doc
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(reference, "its manifest has no config"))?
        .to_string();
    let (config_bytes, _) = get_document(
        &mut puller,
        reference,
        &path,
        &format!("blobs/{config_digest}"),
        "*/*",
        Some(&config_digest),
    )
    .await?;
    let parsed = parse_config(reference, &config_bytes)?;

    let descriptors = doc
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut layers = Vec::new();
    for (i, d) in descriptors.iter().enumerate() {
        let media = d.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let digest = d.get("digest").and_then(Value::as_str).unwrap_or("");
        let size = d.get("size").and_then(Value::as_u64);
        if media.contains("zstd") {
            return Err(invalid(
                reference,
                format!("layer {} is zstd-compressed ({media}), which Docker 20.10 cannot load: use a gzip copy of the base (skopeo copy --dest-compress-format gzip)", i + 1),
            ));
        }
        if media.contains("nondistributable") || media.contains("foreign") {
            return Err(invalid(
                reference,
                format!("layer {} is a non-distributable layer ({media}): use a Linux base image whose layers the registry holds", i + 1),
            ));
        }
        let resp = puller
            .get(&path, &format!("blobs/{digest}"), "*/*")
            .await
            .map_err(reg_err)?;
        let step = format!("GET {}v2/{path}/blobs/{digest}", puller.base_url());
        let stream = puller
            .body(resp, &step)
            .map(|c| c.map_err(io::Error::other));
        let blobs2 = blobs.clone();
        let s = pump(stream, move |reader| store_layer(reader, &blobs2, level))
            .await
            .map_err(|e| BaseError::Registry {
                reference: reference.to_string(),
                source: download_error(&host, e),
            })?;
        if s.input_digest.to_string() != digest || size.is_some_and(|n| n != s.input_size) {
            return Err(invalid(
                reference,
                format!(
                    "layer {} arrived as {} ({} bytes) but the manifest says {digest} ({} bytes): the registry or a proxy changed it",
                    i + 1,
                    s.input_digest,
                    s.input_size,
                    size.unwrap_or(0)
                ),
            ));
        }
        layers.push(s.info);
    }
    finish(reference, format!("registry {host}"), parsed, layers)
}

/// The registry's own error when the download stream failed (a stall), else a broken download.
fn download_error(host: &str, e: io::Error) -> RegistryError {
    let cause = e.to_string();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<RegistryError>())
    {
        Some(Ok(own)) => *own,
        _ => RegistryError::Connection {
            host: host.to_string(),
            cause,
            hint: "; the download of a layer broke: retry",
        },
    }
}

/// GET a manifest or config (small, read whole), checking its digest when one is expected.
/// Returns the bytes and the `Content-Type`.
async fn get_document(
    puller: &mut Puller,
    reference: &str,
    path: &str,
    rest: &str,
    accept: &str,
    digest: Option<&str>,
) -> Result<(Vec<u8>, String), BaseError> {
    let resp = puller
        .get(path, rest, accept)
        .await
        .map_err(|source| BaseError::Registry {
            reference: reference.to_string(),
            source,
        })?;
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = format!("{}v2/{path}/{rest}", puller.base_url());
    let mut body = Vec::new();
    let stream = puller.body(resp, &format!("GET {url}"));
    tokio::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| BaseError::Registry {
            reference: reference.to_string(),
            source,
        })?;
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(invalid(
                reference,
                format!("{url} is larger than {MAX_DOCUMENT} bytes: not a manifest or config"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(want) = digest {
        let got = Digest::of(&body).to_string();
        if got != want {
            return Err(invalid(
                reference,
                format!(
                    "{url} has digest {got}, expected {want}: the registry or a proxy changed it"
                ),
            ));
        }
    }
    Ok((body, media))
}

/// The digest of the index entry for `want`.
fn pick_platform(reference: &str, index: &Value, want: &Platform) -> Result<String, BaseError> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut available = Vec::new();
    for m in &entries {
        let p = m.get("platform").cloned().unwrap_or(Value::Null);
        let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
        let (os, arch, variant) = (field("os"), field("architecture"), field("variant"));
        if os.is_empty() || os == "unknown" {
            continue; // attestations and other non-image entries
        }
        let variant_ok = variant.is_empty() || want.variant.as_deref().is_none_or(|v| v == variant);
        if os == want.os && arch == want.architecture && variant_ok {
            if let Some(d) = m.get("digest").and_then(Value::as_str) {
                return Ok(d.to_string());
            }
        }
        available.push(if variant.is_empty() {
            format!("{os}/{arch}")
        } else {
            format!("{os}/{arch}/{variant}")
        });
    }
    Err(BaseError::NoPlatform {
        reference: reference.to_string(),
        want: want.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Streams, blobs and the tree.

/// Feed `stream` to `work` (run on the blocking pool, reading through a bounded channel), so
/// large bodies flow through with flat memory.
async fn pump<S, T, F>(stream: S, work: F) -> io::Result<T>
where
    S: Stream<Item = io::Result<Bytes>>,
    F: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader::new(rx);
        // Returning drops the receiver, which stops the feeder.
        work(&mut reader)
    });
    let feed = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    let (_, out) = tokio::join!(feed, worker);
    out.map_err(|e| io::Error::other(format!("worker thread failed: {e}")))?
}

/// Reads through, hashing what passes.
struct Tee<'r> {
    inner: &'r mut dyn Read,
    hash: HashWriter<io::Sink>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Store one layer as a gzip blob named by its digest: gzip input is kept as it is (its digest
/// stays the registry's), a plain tar is compressed like our own layers (flate2, header mtime 0,
/// `level`). The `diff_id` is computed from the uncompressed bytes either way.
fn store_layer(input: &mut dyn Read, blobs: &BlobDir, level: u32) -> io::Result<Stored> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = blobs
        .root
        .join(format!(".base-{}-{n}.partial", std::process::id()));
    let result = (|| {
        let mut tee = BufReader::with_capacity(
            1 << 20,
            Tee {
                inner: input,
                hash: HashWriter::new(io::sink()),
            },
        );
        let gzip = tee.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let file = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let (file, digest, size, diff_id, uncompressed_size) = if gzip {
            let mut blob = HashWriter::new(file);
            let mut tar = flate2::write::MultiGzDecoder::new(HashWriter::new(io::sink()));
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let k = tee.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                blob.write_all(&buf[..k])?;
                tar.write_all(&buf[..k])?;
            }
            let (_, diff_id, usize) = tar.finish()?.finish();
            let (file, digest, size) = blob.finish();
            (file, digest, size, diff_id, usize)
        } else {
            let gz = GzEncoder::new(HashWriter::new(file), Compression::new(level));
            let mut tar = HashWriter::new(gz);
            io::copy(&mut tee, &mut tar)?;
            let (gz, diff_id, usize) = tar.finish();
            let (file, digest, size) = gz.finish()?.finish();
            (file, digest, size, diff_id, usize)
        };
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let (_, input_digest, input_size) = tee.into_inner().hash.finish();
        std::fs::rename(&tmp, blobs.path(&digest))?;
        Ok(Stored {
            info: LayerInfo {
                name: BASE_LAYER_NAME.into(),
                digest,
                diff_id,
                size,
                uncompressed_size,
                entries: 0,
            },
            input_digest,
            input_size,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Apply one gzip layer blob to the tree at `root`, as the engine applies a layer: entries
/// replace what is there (a directory over a directory merges), `.wh.NAME` deletes `NAME`,
/// `.wh..wh..opq` hides everything the lower layers had in its directory. Paths resolve inside
/// `root` (symlinks in parents followed as in the image, never out of it); device nodes and
/// fifos are skipped, as are [`NOT_UNPACKED`] subtrees; setuid bits dropped; the owner always
/// keeps `rw` (`rwx` on directories). Returns the number of entries in the layer.
fn unpack_layer(root: &Path, blob: &Path) -> io::Result<usize> {
    let file = std::fs::File::open(blob)?;
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut ar = tar::Archive::new(gz);
    let tree = HostFs::new(root);
    let real = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    // Image paths this layer wrote (an opaque directory keeps them).
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut count = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        count += 1;
        let raw = entry.path_bytes().into_owned();
        let Some(comps) = components(&raw) else {
            continue; // `..`: never leaves the tree
        };
        if skipped(&comps) {
            continue;
        }
        let Some((name, parents)) = comps.split_last() else {
            continue; // the root itself
        };
        let name = OsStr::from_bytes(name);
        let kind = entry.header().entry_type();
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            let Ok(dir) = walk(&tree, root, parents, false) else {
                continue;
            };
            if hidden == b".wh..opq" {
                opaque(&tree, root, &dir, &created)?;
            } else {
                remove(&real(&dir.join(OsStr::from_bytes(hidden))))?;
            }
            continue;
        }
        let Ok(dir) = walk(&tree, root, parents, true) else {
            continue; // a parent is a file: the engine would fail too; skip
        };
        let path = dir.join(name);
        let dest = real(&path);
        let existing = tree.lstat(&path).ok().map(|m| m.kind);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if existing != Some(Kind::Dir) {
                    if existing.is_some() {
                        remove(&dest)?;
                    }
                    std::fs::create_dir(&dest)?;
                }
                std::fs::set_permissions(&dest, PermissionsExt::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if existing.is_some() {
                    remove(&dest)?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode | 0o600)
                    .open(&dest)?;
                io::copy(&mut entry, &mut out)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if existing.is_some() {
                    remove(&dest)?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let Some(tcomps) = components(&target) else {
                    continue;
                };
                let Some((tname, tparents)) = tcomps.split_last() else {
                    continue;
                };
                let Ok(tdir) = walk(&tree, root, tparents, false) else {
                    continue;
                };
                let source = real(&tdir.join(OsStr::from_bytes(tname)));
                if existing.is_some() {
                    remove(&dest)?;
                }
                if std::fs::hard_link(&source, &dest).is_err() && source.is_file() {
                    std::fs::copy(&source, &dest)?;
                }
            }
            _ => continue, // devices, fifos: never read by the plan
        }
        created.insert(path);
    }
    Ok(count)
}

/// `true` for a path in a [`NOT_UNPACKED`] subtree.
fn skipped(comps: &[&[u8]]) -> bool {
    NOT_UNPACKED.iter().any(|n| {
        let prefix: Vec<&[u8]> = n.as_bytes().split(|&b| b == b'/').collect();
        comps.len() >= prefix.len() && comps[..prefix.len()] == prefix[..]
    })
}

/// The components of an archive path; `None` when it has `..`.
fn components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The canonical image path of the directory `parents` names inside the tree, following
/// symlinks inside it; with `create`, missing directories are made (mode 0755).
fn walk(tree: &HostFs, root: &Path, parents: &[&[u8]], create: bool) -> io::Result<PathBuf> {
    let mut cur = PathBuf::from("/");
    for c in parents {
        let next = cur.join(OsStr::from_bytes(c));
        match tree.lstat(&next).map(|m| m.kind) {
            Ok(Kind::Dir) => cur = next,
            Ok(Kind::Symlink) => {
                let (canon, _) = resolve_path(tree, &next)?;
                if tree.lstat(&canon)?.kind != Kind::Dir {
                    return Err(io::Error::from(io::ErrorKind::NotADirectory));
                }
                cur = canon;
            }
            Ok(_) => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let real = root.join(next.strip_prefix("/").unwrap_or(&next));
                std::fs::create_dir(&real)?;
                std::fs::set_permissions(&real, PermissionsExt::from_mode(0o755))?;
                cur = next;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Remove whatever is at `real` (never following a symlink); nothing there is fine.
fn remove(real: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(real) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(real),
        Ok(_) => std::fs::remove_file(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Hide the lower layers' contents of `dir`: remove every child this layer did not write, and
/// do the same inside the directories it did write.
fn opaque(tree: &HostFs, root: &Path, dir: &Path, created: &HashSet<PathBuf>) -> io::Result<()> {
    for name in tree.read_dir(dir)? {
        let child = dir.join(&name);
        let real = root.join(child.strip_prefix("/").unwrap_or(&child));
        if !created.contains(&child) {
            remove(&real)?;
        } else if tree.lstat(&child)?.kind == Kind::Dir {
            opaque(tree, root, &child, created)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(blobs: &BlobDir, entries: &[(&str, Option<&str>, Option<&str>)]) -> PathBuf {
        // (path, file content, symlink target); neither: directory.
        let mut b = tar::Builder::new(Vec::new());
        for (path, content, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            match (content, link) {
                (Some(c), _) if path.starts_with("../") => {
                    // The tar crate refuses to write `..`: set the raw name.
                    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_cksum();
                    b.append(&h, c.as_bytes()).unwrap();
                }
                (Some(c), _) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                (None, Some(t)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, t).unwrap();
                }
                (None, None) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        let s = store_layer(&mut bytes.as_slice(), blobs, 1).unwrap();
        assert_eq!(s.info.diff_id, Digest::of(&bytes));
        assert_eq!(s.input_digest, Digest::of(&bytes));
        blobs.path(&s.info.digest)
    }

    fn read(root: &Path, p: &str) -> Option<String> {
        std::fs::read_to_string(root.join(p)).ok()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_symlinked_parents_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobDir {
            root: tmp.path().join("blobs"),
        };
        std::fs::create_dir_all(&blobs.root).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let l1 = layer(
            &blobs,
            &[
                ("usr/", None, None),
                ("usr/lib/", None, None),
                ("usr/lib/a.so", Some("a1"), None),
                ("usr/lib/gone.so", Some("x"), None),
                ("lib", None, Some("usr/lib")),
                ("etc/", None, None),
                ("etc/opq/", None, None),
                ("etc/opq/old", Some("old"), None),
                ("etc/opq/sub/", None, None),
                ("etc/opq/sub/lower", Some("lower"), None),
                ("abs", None, Some("/usr/lib")),
                ("usr/share/doc/x/README", Some("not unpacked"), None),
            ],
        );
        let l2 = layer(
            &blobs,
            &[
                // Through the symlink `lib`, as the engine does: lands in usr/lib.
                ("lib/b.so", Some("b"), None),
                ("usr/lib/.wh.gone.so", None, None),
                ("usr/lib/a.so", Some("a2"), None),
                ("etc/opq/new", Some("new"), None),
                ("etc/opq/.wh..wh..opq", Some(""), None),
                ("etc/opq/sub/", None, None),
                ("etc/opq/sub/upper", Some("upper"), None),
                // An absolute symlink parent resolves inside the tree.
                ("abs/c.so", Some("c"), None),
                ("../escape", Some("no"), None),
            ],
        );
        assert_eq!(unpack_layer(&root, &l1).unwrap(), 12);
        unpack_layer(&root, &l2).unwrap();
        assert_eq!(read(&root, "usr/lib/a.so").as_deref(), Some("a2"));
        assert_eq!(read(&root, "usr/lib/b.so").as_deref(), Some("b"));
        assert_eq!(read(&root, "usr/lib/c.so").as_deref(), Some("c"));
        assert!(std::fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!root.join("usr/lib/gone.so").exists());
        assert_eq!(read(&root, "etc/opq/new").as_deref(), Some("new"));
        assert!(
            !root.join("etc/opq/old").exists(),
            "hidden by the opaque marker"
        );
        assert!(!root.join("etc/opq/sub/lower").exists());
        assert_eq!(read(&root, "etc/opq/sub/upper").as_deref(), Some("upper"));
        assert!(!root.join("etc/opq/.wh..wh..opq").exists());
        assert!(!tmp.path().join("escape").exists());
        assert!(!root.join("usr/share").exists());
    }

    #[test]
    fn gzip_input_is_kept_and_plain_input_is_compressed_deterministically() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobDir {
            root: tmp.path().to_path_buf(),
        };
        let tar_bytes = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            b.append_data(&mut h, "x", &b"hello"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let a = store_layer(&mut tar_bytes.as_slice(), &blobs, 6).unwrap();
        let b = store_layer(&mut tar_bytes.as_slice(), &blobs, 6).unwrap();
        assert_eq!(a.info, b.info, "same input, same blob");
        let gz = std::fs::read(blobs.path(&a.info.digest)).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(gz[9], 255, "OS byte as in our own layers");
        let kept = store_layer(&mut gz.as_slice(), &blobs, 1).unwrap();
        assert_eq!(kept.info.digest, a.info.digest, "gzip input kept as is");
        assert_eq!(kept.info.diff_id, Digest::of(&tar_bytes));
        assert_eq!(kept.input_digest, a.info.digest);
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
