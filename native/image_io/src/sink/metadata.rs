//! `--metadata-file PATH`: the run's [`Outcome`] as JSON, written at the commit (when every
//! output before it has reported) and published with the other files.

use super::{Built, Changes, FileOutput, Order, Sink, SinkError};
use crate::outcome::Outcome;
use futures_util::future::BoxFuture;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The metadata file.
pub struct MetadataSink {
    file: FileOutput,
}

impl MetadataSink {
    /// The file at `path`; bytes for a device or FIFO wait in `scratch` until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf) -> MetadataSink {
        MetadataSink {
            file: FileOutput::new(path, scratch),
        }
    }
}

impl<'a> Sink<'a> for MetadataSink {
    fn prepare<'s>(&'s mut self, _built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            let pending = self.file.create()?;
            self.file.written(pending)?;
            Ok(())
        })
    }

    fn commit<'s>(
        &'s mut self,
        _built: &'s Arc<Built>,
        outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            let json = serde_json::to_vec_pretty(outcome)
                .map_err(|e| SinkError::Internal(e.to_string()))?;
            if let Some(pending) = self.file.pending() {
                pending
                    .writer()
                    .write_all(&json)
                    .map_err(|source| SinkError::File {
                        path: pending.path().to_path_buf(),
                        source,
                    })?;
                pending.flushed_len()?;
            }
            self.file.publish(changes)
        })
    }

    fn order(&self) -> Order {
        self.file.order()
    }
}
