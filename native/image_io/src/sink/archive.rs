//! The archive file: the image (or the index over one image per platform) as an OCI layout plus
//! a Docker `manifest.json`
//! ([`image_core::archive`]), written to a [`PendingFile`] and published with the run's other
//! outputs.

use super::{Built, Changes, Feedback, FileOutput, Order, PendingFile, Progress, Sink, SinkError};
use crate::outcome::Outcome;
use futures_util::future::BoxFuture;
use image_core::archive::{write_archive, write_index_archive};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Write `path` atomically with `f`: see [`PendingFile`].
pub fn write_atomically<T>(
    path: &Path,
    f: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    let mut pending = PendingFile::create(path)?;
    let value = f(pending.writer())?;
    pending.commit()?;
    Ok(value)
}

/// Write the image as an archive into `pending` (not yet committed). Returns it for the caller
/// to commit once every output of the run has succeeded.
pub async fn archive_into(
    built: Arc<Built>,
    mut pending: PendingFile,
    progress: Progress,
) -> Result<PendingFile, SinkError> {
    tokio::task::spawn_blocking(move || {
        let mut report = |n| progress(n);
        match &built.index {
            None => write_archive(
                &built.image,
                &built.tags,
                &built.blobs,
                pending.writer(),
                &mut report,
            )?,
            // Every platform's image under the index; `docker load` gets `image`'s.
            Some(index) => write_index_archive(
                index,
                &built.image.platform,
                &built.tags,
                &built.blobs,
                pending.writer(),
                &mut report,
            )?,
        };
        Ok(pending)
    })
    .await
    .map_err(|e| SinkError::Internal(e.to_string()))?
}

/// Write the image as an archive file at `path` (atomically). Returns the archive's size.
pub async fn archive_file(
    built: Arc<Built>,
    path: PathBuf,
    progress: Progress,
) -> Result<u64, SinkError> {
    let pending = PendingFile::create(&path)?;
    let pending = archive_into(built, pending, progress).await?;
    pending.commit()
}

/// `--output PATH`: the archive, written while nothing is visible and published at the commit.
pub struct ArchiveSink {
    file: FileOutput,
    feedback: Feedback,
    size: u64,
}

impl ArchiveSink {
    /// The archive at `path`; bytes for a device or FIFO wait in `scratch` until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf, feedback: Feedback) -> ArchiveSink {
        ArchiveSink {
            file: FileOutput::new(path, scratch),
            feedback,
            size: 0,
        }
    }
}

impl<'a> Sink<'a> for ArchiveSink {
    fn prepare<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            (self.feedback.step)(format!("writing {}", self.file.path().display()));
            let pending = self.file.create()?;
            let pending =
                archive_into(built.clone(), pending, self.feedback.bytes("archive")).await?;
            self.size = self.file.written(pending)?;
            Ok(())
        })
    }

    fn commit<'s>(
        &'s mut self,
        _built: &'s Arc<Built>,
        _outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move { self.file.publish(changes) })
    }

    fn report(&self, outcome: &mut Outcome) {
        outcome.archive = Some(self.file.path().to_path_buf());
        outcome.archive_size = Some(self.size);
    }

    fn order(&self) -> Order {
        self.file.order()
    }
}
