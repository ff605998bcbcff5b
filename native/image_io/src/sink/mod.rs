//! Outputs: every destination of an image is a [`Sink`], and all of a run's sinks take the same
//! [`Built`] image and commit together or not at all ([`publish`]).
//!
//! | sink | prepare | write | commit |
//! |---|---|---|---|
//! | [`ArchiveSink`] (`--output`) | the archive into a [`PendingFile`] | — | the file at its path |
//! | [`MetadataSink`] (`--metadata-file`) | a [`PendingFile`] | — | the outcome as JSON, the file at its path |
//! | [`EngineSink`] (the engine) | — | the load, untagged, its image ID checked | the tags |
//! | [`RegistrySink`] (`--push`) | — | every blob to every repository | the tags, then each image's SBOM referrer and the signatures |
//! | [`SbomSink`] (`--sbom`) | a [`PendingFile`] with the SBOM (one per platform) | — | the file(s) at their paths |
//!
//! A new output (an image index, an SBOM referrer, a signature) is one more type implementing
//! [`Sink`], added to the list the pipeline's publish stage makes; what its commit changes it
//! records as a [`Change`], and the run's commit-or-undo covers it without a change here. One-shot forms of the engine, archive and registry sinks
//! ([`engine`], [`archive_file`], [`crate::registry::push`]) serve callers with a single output,
//! as go-containerregistry's `daemon.Write`, `tarball.Write` and `remote.Write` do.

mod archive;
mod engine;
mod metadata;
mod pending;
mod registry;
mod sbom;

pub use archive::{archive_file, archive_into, write_atomically, ArchiveSink};
pub use engine::{engine, engine_load, tag, untag, EngineSink, Loaded, TagMove};
pub use metadata::MetadataSink;
pub use pending::{PendingFile, Published};
pub use registry::RegistrySink;
pub use sbom::{platform_path, SbomSink};

use crate::engine::EngineError;
use crate::error::{Failure, Reason};
use crate::outcome::Outcome;
use crate::registry::RegistryError;
use futures_util::future::BoxFuture;
use image_core::archive::{ArchiveError, BlobDir};
use image_core::digest::Digest;
use image_core::image::Image;
use image_core::index::ImageIndex;
use image_core::reference::Reference;
use image_core::supply::SbomFile;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// An assembled image with the blobs it refers to and the tags to give it: what every sink
/// takes.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image value.
    pub image: Image,
    /// Where its layer blobs are.
    pub blobs: BlobDir,
    /// Tags to apply.
    pub tags: Vec<Reference>,
    /// With several platforms (`--platform`), the index over one image per platform, `image`
    /// among them: a registry gets every image and the tags name the index, an archive holds
    /// them all; the engine gets `image` (see [`Built::image`]).
    pub index: Option<ImageIndex>,
    /// `true` when the user named `image`'s platform (`--platform`): the engine loads it even
    /// when it runs another platform (it runs such an image under emulation).
    pub named_platform: bool,
    /// Each image's SBOM (the document its app layer embeds), for `--sbom` and the referrers a
    /// push attaches: the one image's, or one per platform. Empty with `--no-sbom`.
    pub sboms: Vec<ImageSbom>,
}

/// The SBOM of one image of a [`Built`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSbom {
    /// The image's manifest digest.
    pub manifest: Digest,
    /// The document the image embeds.
    pub sbom: SbomFile,
}

impl Built {
    /// One image, for its own platform: what a build without `--platform` makes.
    pub fn single(image: Image, blobs: BlobDir, tags: Vec<Reference>) -> Built {
        Built {
            image,
            blobs,
            tags,
            index: None,
            named_platform: false,
            sboms: Vec::new(),
        }
    }

    /// The same, with `sboms` (each image's SBOM).
    pub fn with_sboms(self, sboms: Vec<ImageSbom>) -> Built {
        Built { sboms, ..self }
    }

    /// The SBOM of `image` (one of [`Built::images`]), if the run made one.
    pub fn sbom_of(&self, image: &Image) -> Option<&SbomFile> {
        let manifest = image.manifest_digest();
        self.sboms
            .iter()
            .find(|s| s.manifest == manifest)
            .map(|s| &s.sbom)
    }

    /// Every image of the run: the index's, or the one image.
    pub fn images(&self) -> Vec<&Image> {
        match &self.index {
            Some(index) => index.images().iter().collect(),
            None => vec![&self.image],
        }
    }
}

/// Progress callback with bytes done so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// How a sink tells people what it does: one line per step, and bytes done in a named step.
#[derive(Clone)]
pub struct Feedback {
    /// A step starts (`loading the image into the engine`).
    pub step: Arc<dyn Fn(String) + Send + Sync>,
    /// Bytes done so far in the step named (`load`, `archive`, `push`).
    pub progress: Arc<dyn Fn(&'static str, u64) + Send + Sync>,
}

impl Feedback {
    /// Feedback that goes nowhere.
    pub fn silent() -> Feedback {
        Feedback {
            step: Arc::new(|_| {}),
            progress: Arc::new(|_, _| {}),
        }
    }

    /// The byte progress of step `name`.
    pub fn bytes(&self, name: &'static str) -> Progress {
        let progress = self.progress.clone();
        Arc::new(move |done| progress(name, done))
    }
}

/// Errors of an output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The archive could not be produced.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The engine loaded something else than the image we sent.
    #[error("the engine reports image {got} after loading, but the image sent was {want}")]
    IdMismatch {
        /// Expected ID.
        want: String,
        /// Reported ID.
        got: String,
    },
    /// A worker thread panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
    /// A step failed after earlier ones had changed things, and not all could be put back.
    #[error("{error}. Not put back: {}", left.join("; "))]
    NotUndone {
        /// The failure.
        error: Box<SinkError>,
        /// What was left, each with how to undo it.
        left: Vec<String>,
    },
}

impl SinkError {
    /// The reason the Elixir side matches on.
    pub fn reason(&self) -> Reason {
        match self {
            SinkError::Engine(e) => e.reason(),
            SinkError::Registry(e) => e.reason(),
            SinkError::File { .. } | SinkError::Archive(_) => Reason::OutputError,
            SinkError::IdMismatch { .. } => Reason::LoadFailed,
            SinkError::Internal(_) => Reason::Internal,
            SinkError::NotUndone { error, .. } => error.reason(),
        }
    }
}

/// A file output of a run (the archive, the metadata file): a [`PendingFile`] until the commit
/// publishes it.
pub(crate) struct FileOutput {
    path: PathBuf,
    scratch: PathBuf,
    pending: Option<PendingFile>,
    stream: bool,
}

impl FileOutput {
    /// The file at `path`; bytes for a device or FIFO wait in `scratch` until the commit.
    pub(crate) fn new(path: PathBuf, scratch: PathBuf) -> FileOutput {
        FileOutput {
            path,
            scratch,
            pending: None,
            stream: false,
        }
    }

    /// The path as given.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Start writing it (an unusable path fails here); the pending file, to write into.
    pub(crate) fn create(&mut self) -> Result<PendingFile, SinkError> {
        let pending = PendingFile::create_with_scratch(&self.path, &self.scratch)?;
        self.stream = pending.is_stream();
        Ok(pending)
    }

    /// Keep `pending`, written, for the commit; returns its size.
    pub(crate) fn written(&mut self, mut pending: PendingFile) -> Result<u64, SinkError> {
        let size = pending.flushed_len()?;
        self.pending = Some(pending);
        Ok(size)
    }

    /// The pending file, to write more into before the commit.
    pub(crate) fn pending(&mut self) -> Option<&mut PendingFile> {
        self.pending.as_mut()
    }

    /// Put the file at its path (see [`PendingFile::publish`]), recorded in `changes`.
    pub(crate) fn publish(&mut self, changes: &mut Changes<'_>) -> Result<(), SinkError> {
        if let Some(pending) = self.pending.take() {
            changes.record(pending.publish()?);
        }
        Ok(())
    }

    /// A regular file commits with the files, a device or FIFO last.
    pub(crate) fn order(&self) -> Order {
        if self.stream {
            Order::Stream
        } else {
            Order::File
        }
    }
}

/// When a sink commits among a run's sinks: what can be put back exactly first, what cannot
/// last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Order {
    /// Engine tags (put back exactly).
    Engine,
    /// Registry tags (put back by a `PUT`; a new tag cannot be removed).
    Registry,
    /// Files renamed into place (put back by a rename).
    File,
    /// Bytes written through to a device or FIFO (cannot be taken back).
    Stream,
}

/// Something a commit changed, that can be put back: engine tags, registry tags, a file.
pub trait Change<'a>: Send + 'a {
    /// Whether it changed nothing after all (every tag already named the image).
    fn is_empty(&self) -> bool {
        false
    }

    /// Put it back; returns what could not be, each with how to do it.
    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>>;

    /// Keep it: the run succeeded.
    fn keep(self: Box<Self>) {}
}

/// What the commits of a run changed, in order: put back together, the last first, or kept.
#[derive(Default)]
pub struct Changes<'a> {
    list: Vec<Box<dyn Change<'a>>>,
}

impl<'a> Changes<'a> {
    /// Record a change (also one a failing commit made part-way).
    pub fn record(&mut self, change: impl Change<'a>) {
        self.list.push(Box::new(change));
    }

    fn any(&self) -> bool {
        self.list.iter().any(|c| !c.is_empty())
    }

    async fn undo(self) -> Vec<String> {
        let mut left = Vec::new();
        for change in self.list.into_iter().rev() {
            left.extend(change.undo().await);
        }
        left
    }

    fn keep(self) {
        for change in self.list {
            change.keep();
        }
    }
}

/// One output of a run. [`publish`] calls, for all sinks: [`Sink::prepare`] (in the order
/// given); then for each sink in [`Sink::order`]: [`Sink::write`], [`Sink::commit`]. A commit
/// records what it changes in the run's [`Changes`]; on the first failure they are put back,
/// the last first. [`Sink::report`] runs after each step, so a later sink's commit sees what
/// earlier ones did.
pub trait Sink<'a>: Send {
    /// Check the destination and do what stays on this machine and changes nothing anyone
    /// sees (an archive is written to its pending file here), before any sink writes.
    fn prepare<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        let _ = built;
        Box::pin(async { Ok(()) })
    }

    /// Send the image to the destination without changing what anyone refers to (a load
    /// untagged, blobs uploaded).
    fn write<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        let _ = built;
        Box::pin(async { Ok(()) })
    }

    /// Make it visible (tags, the file at its path), recording each change in `changes`, also
    /// when it fails part-way. `outcome` holds what the run did so far.
    fn commit<'s>(
        &'s mut self,
        built: &'s Arc<Built>,
        outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>>;

    /// Put what this sink did into the run's outcome.
    fn report(&self, outcome: &mut Outcome) {
        let _ = outcome;
    }

    /// When it commits among the run's sinks.
    fn order(&self) -> Order;
}

/// Send `built` to every sink, all committing together or not at all (see [`Sink`]). A failure
/// after the first commit puts back what was changed, last first, and the failure's message
/// says so, or lists what could not be put back with how to do it.
pub async fn publish<'a>(
    sinks: &mut [Box<dyn Sink<'a> + 'a>],
    built: &Arc<Built>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    for sink in sinks.iter_mut() {
        sink.prepare(built).await?;
        sink.report(outcome);
    }
    sinks.sort_by_key(|s| s.order());
    let mut changes = Changes::default();
    let mut result = Ok(());
    for sink in sinks.iter_mut() {
        result = async {
            sink.write(built).await?;
            sink.report(outcome);
            sink.commit(built, outcome, &mut changes).await?;
            sink.report(outcome);
            Ok::<(), SinkError>(())
        }
        .await;
        if result.is_err() {
            break;
        }
    }
    let Err(error) = result else {
        changes.keep();
        return Ok(());
    };
    let mut failure = Failure::from(error);
    let changed = changes.any();
    let left = changes.undo().await;
    if !left.is_empty() {
        failure.message = format!(
            "{}\nThis run could not undo everything it had changed before it failed:\n  - {}",
            failure.message,
            left.join("\n  - ")
        );
    } else if changed {
        failure.message = format!(
            "{} (the tags and files this run had already changed were put back as they were)",
            failure.message
        );
    }
    Err(failure)
}
