//! `--metadata-file PATH`: the run's [`Outcome`] as JSON, written at the commit (when every
//! output before it has reported) and published with the other files.

use super::{Built, Order, PendingFile, Published, Sink, SinkError};
use crate::outcome::Outcome;
use futures_util::future::BoxFuture;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The metadata file.
pub struct MetadataSink {
    path: PathBuf,
    scratch: PathBuf,
    pending: Option<PendingFile>,
    stream: bool,
    published: Option<Published>,
}

impl MetadataSink {
    /// The file at `path`; bytes for a device or FIFO wait in `scratch` until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf) -> MetadataSink {
        MetadataSink {
            path,
            scratch,
            pending: None,
            stream: false,
            published: None,
        }
    }
}

impl Sink for MetadataSink {
    fn prepare<'a>(&'a mut self, _built: &'a Arc<Built>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let pending = PendingFile::create_with_scratch(&self.path, &self.scratch)?;
            self.stream = pending.is_stream();
            self.pending = Some(pending);
            Ok(())
        })
    }

    fn commit<'a>(
        &'a mut self,
        _built: &'a Arc<Built>,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let Some(mut pending) = self.pending.take() else {
                return Ok(());
            };
            let json = serde_json::to_vec_pretty(outcome)
                .map_err(|e| SinkError::Internal(e.to_string()))?;
            pending
                .writer()
                .write_all(&json)
                .map_err(|source| SinkError::File {
                    path: pending.path().to_path_buf(),
                    source,
                })?;
            pending.flushed_len()?;
            self.published = Some(pending.publish()?);
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

    fn order(&self) -> Order {
        if self.stream {
            Order::Stream
        } else {
            Order::File
        }
    }
}
