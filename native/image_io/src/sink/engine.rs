//! The engine: the image streamed into `POST /images/load` untagged, its ID checked, then the
//! tags moved, each recorded to be put back.

use super::{Built, Change, Changes, Feedback, Order, Progress, Sink, SinkError};
use crate::channel::body_from_writer;
use crate::engine::{Engine, EngineError, EngineKind};
use crate::outcome::Outcome;
use futures_util::future::BoxFuture;
use image_core::archive::{write_archive_omitting, ArchiveError};
use image_core::digest::Digest;
use image_core::reference::Reference;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::Arc;

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
///
/// Layers the engine already holds are not sent ([`layers_held`]): `docker load` (Docker 20.10
/// and later) opens a layer's file only when it has no layer with that layer's chain ID, so
/// their bytes are left out of the archive. Should the engine refuse the load all the same
/// (it dropped such a layer meanwhile, or another engine loads differently), the whole
/// archive is sent again.
pub async fn engine_load<E: Engine>(
    engine: &E,
    built: Arc<Built>,
    progress: Progress,
) -> Result<Loaded, SinkError> {
    let engine_platform = engine.platform().await?;
    let p = &built.image.platform;
    let image_platform = format!("{}/{}", p.os, p.architecture);
    // An image of a platform the user named (`--platform`) loads anyway: the engine runs it
    // under emulation, where the machine has it.
    if engine_platform != image_platform && !built.named_platform {
        return Err(EngineError::Platform {
            image: image_platform,
            engine: engine_platform,
        }
        .into());
    }
    let held = layers_held(engine, &built).await;
    match send(engine, &built, held.clone(), progress.clone()).await {
        Err(SinkError::Engine(EngineError::Load(_))) if !held.is_empty() => {
            send(engine, &built, BTreeSet::new(), progress).await?
        }
        sent => sent?,
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

/// Stream the image's archive, without the bytes of the layer blobs in `omit`, into
/// `POST /images/load`.
async fn send<E: Engine>(
    engine: &E,
    built: &Arc<Built>,
    omit: BTreeSet<Digest>,
    progress: Progress,
) -> Result<(), SinkError> {
    let writer_built = built.clone();
    let (body, writer) = body_from_writer(CHUNK, move |out| {
        let mut report = |n| progress(n);
        // The archive sent to the engine carries no tags: tags are set after a complete load.
        write_archive_omitting(
            &writer_built.image,
            &[],
            &writer_built.blobs,
            out,
            &mut report,
            &omit,
        )
        .and_then(|w| w.flush().map_err(ArchiveError::Write))
    });
    let loaded = engine.load(body).await;
    let written = writer
        .await
        .map_err(|e| SinkError::Internal(e.to_string()))?;
    match (written, loaded) {
        // The engine hung up first: its answer says why.
        (Err(ArchiveError::Write(e)), Err(l)) if e.kind() == io::ErrorKind::BrokenPipe => {
            Err(l.into())
        }
        (Err(w), _) => Err(w.into()),
        (Ok(_), Err(l)) => Err(l.into()),
        (Ok(_), Ok(_)) => Ok(()),
    }
}

/// The layer blobs of `built` whose layers the engine holds, as far as it can tell: the layers
/// of our image are a chain (each layer on the ones below it, named by the chain of their
/// `diff_id`s), and the engine holds a chain when an image it has starts with it. The images
/// asked about are the ones our tags name now (the previous build, usually) and our image
/// itself; the longest chain any of them starts with is held. A blob is left out only when
/// every layer that uses it is in that chain. Nothing is left out when the engine cannot say.
async fn layers_held<E: Engine>(engine: &E, built: &Built) -> BTreeSet<Digest> {
    let ours: Vec<String> = built
        .image
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    let mut candidates = vec![built.image.id().to_string()];
    candidates.extend(
        built
            .tags
            .iter()
            .map(|t| format!("{}:{}", t.repository(), t.tag)),
    );
    let mut held = 0;
    for reference in candidates {
        if held == ours.len() {
            break;
        }
        if let Ok(Some(theirs)) = engine.layers(&reference).await {
            let common = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
            held = held.max(common);
        }
    }
    let (chain, rest) = built.image.layers.split_at(held);
    chain
        .iter()
        .map(|l| l.digest.clone())
        .filter(|d| !rest.iter().any(|l| l.digest == *d))
        .collect()
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
    let cli = engine.cli().await;
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
                    "the engine's tag {name} points at {id} instead of {prev} ({e}); put it back with `{cli} tag {prev} {name}`"
                ),
                None => format!(
                    "the engine's tag {name} was left on {id} ({e}); remove it with `{cli} image rm {name}`"
                ),
            });
        }
    }
    left
}

const CHUNK: usize = 1 << 20;

/// The local engine: loaded at the write, tagged at the commit.
pub struct EngineSink<'a, E: Engine> {
    engine: &'a E,
    endpoint: String,
    feedback: Feedback,
    loaded: Option<Loaded>,
    kind: Option<EngineKind>,
}

impl<'a, E: Engine> EngineSink<'a, E> {
    /// The engine reached at `endpoint` (for the outcome).
    pub fn new(engine: &'a E, endpoint: String, feedback: Feedback) -> Self {
        EngineSink {
            engine,
            endpoint,
            feedback,
            loaded: None,
            kind: None,
        }
    }
}

impl<'a, E: Engine> Sink<'a> for EngineSink<'a, E> {
    fn write<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            (self.feedback.step)("loading the image into the engine".into());
            let loaded =
                engine_load(self.engine, built.clone(), self.feedback.bytes("load")).await?;
            self.loaded = Some(loaded);
            // Asked with the platform before the load: no request of its own.
            self.kind = Some(self.engine.kind().await?);
            Ok(())
        })
    }

    fn commit<'s>(
        &'s mut self,
        built: &'s Arc<Built>,
        _outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            let id = self
                .loaded
                .as_ref()
                .map(|l| l.id.clone())
                .unwrap_or_default();
            let mut moves = Vec::new();
            let tagged = tag(self.engine, &id, &built.tags, &mut moves).await;
            changes.record(EngineTags {
                engine: self.engine,
                id,
                moves,
            });
            tagged
        })
    }

    fn report(&self, outcome: &mut Outcome) {
        if let Some(l) = &self.loaded {
            outcome.engine = Some(self.endpoint.clone());
            outcome.engine_kind = self.kind;
            outcome.engine_size = Some(l.size);
        }
    }

    fn order(&self) -> Order {
        Order::Engine
    }
}

/// The engine tags a commit moved to image `id`.
struct EngineTags<'a, E: Engine> {
    engine: &'a E,
    id: String,
    moves: Vec<TagMove>,
}

impl<'a, E: Engine> Change<'a> for EngineTags<'a, E> {
    fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    fn undo(self: Box<Self>) -> BoxFuture<'a, Vec<String>> {
        let EngineTags { engine, id, moves } = *self;
        Box::pin(async move { untag(engine, &id, moves).await })
    }
}
