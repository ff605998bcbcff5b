//! Outputs. Each takes the same [`Built`] image value: a fourth output is one more function here.

use crate::channel::ChannelWriter;
use crate::engine::{Body, Engine, EngineError};
use bytes::Bytes;
use image_core::archive::{write_archive, ArchiveError, BlobDir};
use image_core::image::Image;
use image_core::reference::Reference;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// An assembled image with the blobs it refers to and the tags to give it.
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
}

/// A file being written next to its final path, moved into place only by [`PendingFile::commit`].
///
/// Until then whatever is at the final path stays as it was; a `PendingFile` dropped without
/// a commit removes its temporary file. Several outputs of one run commit together, at the end,
/// so a failure in any of them changes none.
pub struct PendingFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<io::BufWriter<std::fs::File>>,
    committed: bool,
}

impl PendingFile {
    /// Start writing `path`: creates the temporary file now, so an unwritable path fails early.
    pub fn create(path: &Path) -> Result<PendingFile, SinkError> {
        let file_err = |source| SinkError::File {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| {
            file_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::File::create(&tmp).map_err(file_err)?;
        Ok(PendingFile {
            path: path.to_path_buf(),
            tmp,
            writer: Some(io::BufWriter::with_capacity(1 << 20, file)),
            committed: false,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer of the temporary file.
    pub fn writer(&mut self) -> &mut io::BufWriter<std::fs::File> {
        match &mut self.writer {
            Some(w) => w,
            // `writer` is only taken by `commit`, which consumes `self`.
            None => unreachable!("PendingFile used after commit"),
        }
    }

    /// Flush what was written so far and return the temporary file's size.
    pub fn flushed_len(&mut self) -> Result<u64, SinkError> {
        let path = self.path.clone();
        let file_err = |source| SinkError::File {
            path: path.clone(),
            source,
        };
        let w = self.writer();
        w.flush().map_err(file_err)?;
        w.get_ref().metadata().map(|m| m.len()).map_err(file_err)
    }

    /// Flush, sync and rename over the final path. Returns the file's size.
    pub fn commit(mut self) -> Result<u64, SinkError> {
        let file_err = |source| SinkError::File {
            path: self.path.clone(),
            source,
        };
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| file_err(io::Error::other("already committed")))?;
        w.flush().map_err(file_err)?;
        let file = w.into_inner().map_err(|e| file_err(e.into_error()))?;
        file.sync_all().map_err(file_err)?;
        let size = file.metadata().map_err(file_err)?.len();
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(file_err)?;
        self.committed = true;
        Ok(size)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

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

/// What the engine reports for a loaded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Image ID.
    pub id: String,
    /// Size as the engine reports it.
    pub size: u64,
}

/// Stream the image into the engine, then tag it. Tags move only after the engine has the whole
/// image, and only when it reports the image ID we computed.
pub async fn engine<E: Engine>(
    engine: &E,
    built: Arc<Built>,
    progress: Progress,
) -> Result<Loaded, SinkError> {
    let engine_platform = engine.platform().await?;
    let p = &built.image.platform;
    let image_platform = format!("{}/{}", p.os, p.architecture);
    if engine_platform != image_platform {
        return Err(EngineError::Platform {
            image: image_platform,
            engine: engine_platform,
        }
        .into());
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let writer_built = built.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone(), CHUNK);
        let mut report = |n| progress(n);
        // The archive sent to the engine carries no tags: tags are set after a complete load.
        let res = write_archive(
            &writer_built.image,
            &[],
            &writer_built.blobs,
            &mut out,
            &mut report,
        )
        .and_then(|w| w.flush().map_err(ArchiveError::Write));
        if let Err(e) = &res {
            // Abort the request body so the engine discards the partial upload.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        res
    });
    let body: Body = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let loaded = engine.load(body).await;
    let written = writer
        .await
        .map_err(|e| SinkError::Internal(e.to_string()))?;
    match (written, loaded) {
        // The engine hung up first: its answer says why.
        (Err(ArchiveError::Write(e)), Err(l)) if e.kind() == io::ErrorKind::BrokenPipe => {
            return Err(l.into())
        }
        (Err(w), _) => return Err(w.into()),
        (Ok(_), Err(l)) => return Err(l.into()),
        (Ok(_), Ok(_)) => {}
    }
    let want = built.image.id().to_string();
    let (id, size) = engine.inspect(&want).await.map_err(|e| match e {
        // The load succeeded but the engine has no image with our ID: it stored something else.
        EngineError::Api { message, .. } => SinkError::IdMismatch {
            want: want.clone(),
            got: format!("none ({message})"),
        },
        other => other.into(),
    })?;
    if id != want {
        return Err(SinkError::IdMismatch { want, got: id });
    }
    for t in &built.tags {
        engine.tag(&id, &t.repository(), &t.tag).await?;
    }
    Ok(Loaded { id, size })
}

const CHUNK: usize = 1 << 20;
