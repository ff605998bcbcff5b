//! Outputs: every destination of an image is a [`Sink`], and all of a run's sinks take the same
//! [`Built`] image and commit together or not at all ([`publish`]).
//!
//! | sink | prepare | write | commit |
//! |---|---|---|---|
//! | [`ArchiveSink`] (`--output`) | the archive into a [`PendingFile`] | — | the file at its path |
//! | [`MetadataSink`] (`--metadata-file`) | a [`PendingFile`] | — | the outcome as JSON, the file at its path |
//! | [`EngineSink`] (the engine) | — | the load, untagged, its image ID checked | the tags |
//! | [`RegistrySink`] (`--push`) | — | every blob to every repository | the tags |
//!
//! A new output (an image index, an SBOM referrer, a signature) is one more type implementing
//! [`Sink`], added to the list the pipeline's publish stage makes; the run's commit-or-undo
//! covers it without a change here. One-shot forms of the engine, archive and registry sinks
//! ([`engine`], [`archive_file`], [`crate::registry::push`]) serve callers with a single output,
//! as go-containerregistry's `daemon.Write`, `tarball.Write` and `remote.Write` do.

mod archive;
mod engine;
mod metadata;
mod pending;
mod registry;

pub use archive::{archive_file, archive_into, write_atomically, ArchiveSink};
pub use engine::{engine, engine_load, tag, untag, EngineSink, Loaded, TagMove};
pub use metadata::MetadataSink;
pub use pending::{PendingFile, Published};
pub use registry::RegistrySink;

use crate::engine::EngineError;
use crate::error::{Failure, Reason};
use crate::outcome::Outcome;
use crate::registry::RegistryError;
use futures_util::future::BoxFuture;
use image_core::archive::{ArchiveError, BlobDir};
use image_core::image::Image;
use image_core::reference::Reference;
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

/// One output of a run. [`publish`] calls, for all sinks: [`Sink::prepare`] (in the order
/// given); then for each sink in [`Sink::order`]: [`Sink::write`], [`Sink::commit`]; on the
/// first failure [`Sink::undo`] on every sink, the last first; on success [`Sink::keep`].
/// [`Sink::report`] runs after each step, so a later sink's commit sees what earlier ones did.
pub trait Sink: Send {
    /// Check the destination and do what stays on this machine and changes nothing anyone
    /// sees (an archive is written to its pending file here), before any sink writes.
    fn prepare<'a>(&'a mut self, built: &'a Arc<Built>) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = built;
        Box::pin(async { Ok(()) })
    }

    /// Send the image to the destination without changing what anyone refers to (a load
    /// untagged, blobs uploaded).
    fn write<'a>(&'a mut self, built: &'a Arc<Built>) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = built;
        Box::pin(async { Ok(()) })
    }

    /// Make it visible (tags, the file at its path), keeping what is needed to put back what
    /// changed. `outcome` holds what the run did so far.
    fn commit<'a>(
        &'a mut self,
        built: &'a Arc<Built>,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Put back what [`Sink::commit`] changed; returns what could not be, each with how to do it.
    fn undo(&mut self) -> BoxFuture<'_, Vec<String>>;

    /// The run succeeded: forget how to undo.
    fn keep(&mut self);

    /// Whether [`Sink::commit`] changed something (for the failure's message).
    fn changed(&self) -> bool;

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
pub async fn publish(
    sinks: &mut [Box<dyn Sink + '_>],
    built: &Arc<Built>,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    for sink in sinks.iter_mut() {
        sink.prepare(built).await?;
        sink.report(outcome);
    }
    sinks.sort_by_key(|s| s.order());
    let mut result = Ok(());
    for sink in sinks.iter_mut() {
        result = async {
            sink.write(built).await?;
            sink.report(outcome);
            sink.commit(built, outcome).await?;
            sink.report(outcome);
            Ok::<(), SinkError>(())
        }
        .await;
        if result.is_err() {
            break;
        }
    }
    let Err(error) = result else {
        for sink in sinks.iter_mut() {
            sink.keep();
        }
        return Ok(());
    };
    let mut failure = Failure::from(error);
    let changed = sinks.iter().any(|s| s.changed());
    let mut left = Vec::new();
    for sink in sinks.iter_mut().rev() {
        left.extend(sink.undo().await);
    }
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
