//! `--sbom PATH`: the very SBOM document embedded in the image, written to a [`PendingFile`]
//! before any other output and published with the run's other files (so a failed run leaves
//! no SBOM of an image that was not made, and no half-written file).

use super::{Built, Changes, FileOutput, Order, Sink, SinkError};
use crate::outcome::{Outcome, SbomWritten};
use futures_util::future::BoxFuture;
use image_core::digest::Digest;
use image_core::supply::SbomFile;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The SBOM file.
pub struct SbomSink {
    file: FileOutput,
    sbom: SbomFile,
}

impl SbomSink {
    /// `sbom` (the document the image embeds) at `path`; bytes for a device or FIFO wait in
    /// `scratch` until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf, sbom: SbomFile) -> SbomSink {
        SbomSink {
            file: FileOutput::new(path, scratch),
            sbom,
        }
    }
}

impl<'a> Sink<'a> for SbomSink {
    fn prepare<'s>(&'s mut self, _built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            let mut pending = self.file.create()?;
            pending
                .writer()
                .write_all(&self.sbom.bytes)
                .map_err(|source| SinkError::File {
                    path: self.file.path().to_path_buf(),
                    source,
                })?;
            self.file.written(pending)?;
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
        outcome.sbom_file = Some(SbomWritten {
            path: self.file.path().to_path_buf(),
            media_type: self.sbom.media_type().to_string(),
            digest: Digest::of(&self.sbom.bytes),
            size: self.sbom.bytes.len() as u64,
        });
    }

    fn order(&self) -> Order {
        self.file.order()
    }
}
