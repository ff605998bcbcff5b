//! Outputs. Each takes the same [`Built`] image value: a fourth output is one more function here.

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

/// Write `bytes`-producing `f` to `path` atomically: into a temporary file in the same directory,
/// synced, then renamed over `path`. On any error the temporary file is removed and whatever was
/// at `path` stays as it was.
pub fn write_atomically<T>(
    path: &Path,
    f: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> Result<T, SinkError>,
) -> Result<T, SinkError> {
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
    let mut w = io::BufWriter::with_capacity(1 << 20, file);
    let result = f(&mut w).and_then(|v| {
        w.flush().map_err(file_err)?;
        w.get_ref().sync_all().map_err(file_err)?;
        std::fs::rename(&tmp, path).map_err(file_err)?;
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write the image as an archive file at `path` (atomically). Returns the archive's size.
pub async fn archive_file(
    built: Arc<Built>,
    path: PathBuf,
    progress: Progress,
) -> Result<u64, SinkError> {
    tokio::task::spawn_blocking(move || {
        write_atomically(&path, |w| {
            let mut report = |n| progress(n);
            write_archive(&built.image, &built.tags, &built.blobs, w, &mut report)?;
            Ok(())
        })?;
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| SinkError::File { path, source })
    })
    .await
    .map_err(|e| SinkError::Internal(e.to_string()))?
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
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
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

/// A blocking writer that sends 1 MiB chunks into a channel.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine closed the upload"))
    }
}
