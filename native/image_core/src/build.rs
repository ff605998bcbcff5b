//! Plan → layers → image: writes each planned layer as a blob and returns the image value.

use crate::archive::BlobDir;
use crate::fs::Fs;
use crate::image::Image;
use crate::layer::{write_layer, LayerError};
use crate::plan::Plan;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

/// Progress of a build, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Layer `name` (index `index` of `count`) has `bytes` uncompressed bytes written so far.
    Layer {
        /// Layer name.
        name: String,
        /// Zero-based index.
        index: usize,
        /// Number of layers.
        count: usize,
        /// Uncompressed bytes so far.
        bytes: u64,
    },
}

/// Errors while writing layers.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A layer could not be written.
    #[error("{layer} layer: {source}")]
    Layer {
        /// Layer name.
        layer: String,
        /// Cause.
        source: LayerError,
    },
    /// The blob directory could not be written.
    #[error("cannot write to {path}: {source}")]
    Blobs {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Write every layer of `plan` into `blobs` (as files named by digest) and return the image.
///
/// `created` is the image's timestamp and every file's mtime; `level` the gzip level (1–9).
/// `progress` is called after each file; when it returns `false` the build stops with
/// [`LayerError::Cancelled`].
pub fn build(
    fs: &dyn Fs,
    plan: &Plan,
    created: u64,
    level: u32,
    blobs: &BlobDir,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Image, BuildError> {
    let blob_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| BuildError::Blobs { path, source }
    };
    std::fs::create_dir_all(&blobs.root).map_err(blob_err(&blobs.root))?;
    let count = plan.layers.len();
    let mut layers = Vec::with_capacity(count);
    for (index, spec) in plan.layers.iter().enumerate() {
        let tmp = blobs
            .root
            .join(format!(".{}-{}.partial", spec.name, std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(blob_err(&tmp))?;
        let mut report = |bytes| {
            progress(Progress::Layer {
                name: spec.name.clone(),
                index,
                count,
                bytes,
            })
        };
        let result = write_layer(
            fs,
            spec,
            created,
            level,
            BufWriter::with_capacity(1 << 20, file),
            &mut report,
        );
        let (info, out) = match result {
            Ok(r) => r,
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(BuildError::Layer {
                    layer: spec.name.clone(),
                    source,
                });
            }
        };
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|mut f| f.flush().map(|_| f))
            .map_err(blob_err(&tmp))?;
        drop(file);
        let dest = blobs.path(&info.digest);
        std::fs::rename(&tmp, &dest).map_err(blob_err(&dest))?;
        layers.push(info);
    }
    Ok(Image {
        platform: plan.platform.clone(),
        created,
        config: plan.run_config.clone(),
        layers,
        base_history: Vec::new(),
    })
}
