//! The archive file: the image as an OCI layout plus a Docker `manifest.json`
//! ([`image_core::archive`]), written to a [`PendingFile`] and published with the run's other
//! outputs.

use super::{Built, Feedback, Order, PendingFile, Progress, Published, Sink, SinkError};
use crate::outcome::Outcome;
use futures_util::future::BoxFuture;
use image_core::archive::write_archive;
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
        write_archive(
            &built.image,
            &built.tags,
            &built.blobs,
            pending.writer(),
            &mut report,
        )?;
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
    path: PathBuf,
    scratch: PathBuf,
    feedback: Feedback,
    pending: Option<PendingFile>,
    size: u64,
    stream: bool,
    published: Option<Published>,
}

impl ArchiveSink {
    /// The archive at `path`; bytes for a device or FIFO wait in `scratch` until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf, feedback: Feedback) -> ArchiveSink {
        ArchiveSink {
            path,
            scratch,
            feedback,
            pending: None,
            size: 0,
            stream: false,
            published: None,
        }
    }
}

impl Sink for ArchiveSink {
    fn prepare<'a>(&'a mut self, built: &'a Arc<Built>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            (self.feedback.step)(format!("writing {}", self.path.display()));
            let pending = PendingFile::create_with_scratch(&self.path, &self.scratch)?;
            let mut pending =
                archive_into(built.clone(), pending, self.feedback.bytes("archive")).await?;
            self.size = pending.flushed_len()?;
            self.stream = pending.is_stream();
            self.pending = Some(pending);
            Ok(())
        })
    }

    fn commit<'a>(
        &'a mut self,
        _built: &'a Arc<Built>,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(pending) = self.pending.take() {
                self.published = Some(pending.publish()?);
            }
            Ok(())
        })
    }

    fn undo(&mut self) -> BoxFuture<'_, Vec<String>> {
        let left = self.published.take().and_then(|p| p.undo().err());
        Box::pin(async move { left.into_iter().collect() })
    }

    fn keep(&mut self) {
        if let Some(p) = self.published.take() {
            p.keep();
        }
    }

    fn changed(&self) -> bool {
        self.published.is_some()
    }

    fn report(&self, outcome: &mut Outcome) {
        outcome.archive = Some(self.path.clone());
        outcome.archive_size = Some(self.size);
    }

    fn order(&self) -> Order {
        if self.stream {
            Order::Stream
        } else {
            Order::File
        }
    }
}
