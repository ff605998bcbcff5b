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
    /// A step failed after earlier ones had changed things, and not all could be put back.
    #[error("{error}. Not put back: {}", left.join("; "))]
    NotUndone {
        /// The failure.
        error: Box<SinkError>,
        /// What was left, each with how to undo it.
        left: Vec<String>,
    },
}

pub use crate::pending::{PendingFile, Published};

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
/// image, and only when it reports the image ID we computed; when a tag is refused, the tags
/// already moved are put back ([`tag`], [`untag`]).
pub async fn engine<E: Engine>(
    engine: &E,
    built: Arc<Built>,
    progress: Progress,
) -> Result<Loaded, SinkError> {
    let loaded = engine_load(engine, built.clone(), progress).await?;
    let mut moves = Vec::new();
    if let Err(e) = tag(engine, &loaded.id, &built.tags, &mut moves).await {
        let left = untag(engine, &loaded.id, moves).await;
        return Err(if left.is_empty() {
            e
        } else {
            SinkError::NotUndone {
                error: Box::new(e),
                left,
            }
        });
    }
    Ok(loaded)
}

/// Stream the image into the engine, untagged, and check that the engine stored the image ID we
/// computed. An untagged image changes nothing anyone refers to.
pub async fn engine_load<E: Engine>(
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
    Ok(Loaded { id, size })
}

/// A tag [`tag`] moved, and the image it pointed at before (`None`: it did not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMove {
    /// The tag.
    pub reference: Reference,
    /// The image ID it pointed at before.
    pub previous: Option<String>,
}

/// Point each of `tags` at image `id`, recording in `moves` what each pointed at before, so
/// that a failure (here or in a later output) can be undone with [`untag`].
pub async fn tag<E: Engine>(
    engine: &E,
    id: &str,
    tags: &[Reference],
    moves: &mut Vec<TagMove>,
) -> Result<(), SinkError> {
    for t in tags {
        let repo = t.repository();
        let previous = engine.tagged(&repo, &t.tag).await?;
        if previous.as_deref() == Some(id) {
            continue;
        }
        engine.tag(id, &repo, &t.tag).await?;
        moves.push(TagMove {
            reference: t.clone(),
            previous,
        });
    }
    Ok(())
}

/// Put the tags of `moves` back where they were before they were pointed at `id`, the last
/// moved first. A tag that no longer points at `id` (someone moved it since) is left alone.
/// Returns what could not be put back, each with the command that does it.
pub async fn untag<E: Engine>(engine: &E, id: &str, moves: Vec<TagMove>) -> Vec<String> {
    let mut left = Vec::new();
    for m in moves.into_iter().rev() {
        let repo = m.reference.repository();
        let name = format!("{repo}:{}", m.reference.tag);
        match engine.tagged(&repo, &m.reference.tag).await {
            Ok(Some(now)) if now == id => {}
            Ok(_) => continue,
            Err(e) => {
                left.push(format!(
                    "the engine's tag {name} may still point at {id} ({e})"
                ));
                continue;
            }
        }
        let result = match &m.previous {
            Some(prev) => engine.tag(prev, &repo, &m.reference.tag).await,
            None => engine.untag(&repo, &m.reference.tag).await,
        };
        if let Err(e) = result {
            left.push(match &m.previous {
                Some(prev) => format!(
                    "the engine's tag {name} points at {id} instead of {prev} ({e}); put it back with `docker tag {prev} {name}`"
                ),
                None => format!(
                    "the engine's tag {name} was left on {id} ({e}); remove it with `docker image rm {name}`"
                ),
            });
        }
    }
    left
}

const CHUNK: usize = 1 << 20;
