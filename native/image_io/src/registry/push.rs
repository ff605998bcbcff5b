//! Pushing an image: every blob to every repository first (no tag moves until all are
//! there), then the tags, each after reading what it named before so that it can be put back.

use super::client::{client, failure, header_text, Registry};
use super::{api_host, RegistryError, RegistryOptions};
use crate::sink::{Built, Progress};
use bytes::Bytes;
use futures_util::StreamExt;
use image_core::digest::Digest;
use image_core::image::media_type;
use image_core::reference::Reference;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushOutcome {
    /// The digest of what the tags name, the same in every repository: the image's manifest,
    /// or with several platforms the image index.
    pub manifest_digest: Digest,
    /// Bytes of blobs uploaded (layers and config; manifests are not counted).
    pub uploaded_bytes: u64,
    /// Blobs the registry already had, over all repositories.
    pub skipped_blobs: usize,
    /// Blobs uploaded, over all repositories.
    pub uploaded_blobs: usize,
    /// The references pushed, `host/path:tag`.
    pub tags: Vec<String>,
    /// One reference by digest per repository pushed, `host/path@sha256:…`: what a deploy
    /// step should pull (a tag can move, a digest cannot).
    pub references: Vec<String>,
}

/// Push `built` to every repository its tags name.
///
/// `progress` is called with the blob bytes uploaded so far in this push. Every blob goes to
/// every repository before the first tag moves; when moving a tag fails, the tags already moved
/// are put back ([`PushedTags::undo`]) and the error says what could not be.
pub async fn push(
    built: Arc<Built>,
    opts: &RegistryOptions,
    progress: Progress,
) -> Result<PushOutcome, RegistryError> {
    let mut pushed = PushedTags::default();
    match push_undoable(built, opts, progress, &mut pushed).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            let left = pushed.undo().await;
            Err(if left.is_empty() {
                e
            } else {
                RegistryError::NotUndone {
                    error: Box::new(e),
                    left,
                }
            })
        }
    }
}

/// [`push`], recording in `pushed` each tag moved (with the manifest it named before), so the
/// caller can put them back when this or a later step fails: [`upload`], then [`move_tags`].
pub async fn push_undoable(
    built: Arc<Built>,
    opts: &RegistryOptions,
    progress: Progress,
    pushed: &mut PushedTags,
) -> Result<PushOutcome, RegistryError> {
    let mut outcome = upload(built.clone(), opts, progress, pushed).await?;
    move_tags(&built, pushed, &mut outcome).await?;
    Ok(outcome)
}

/// The first step of a push, which moves no tag: every blob of `built` (layers, then the
/// config; each once; with several platforms, every image's, then each image's manifest by
/// digest) to every repository its tags name. `pushed` keeps the registry sessions
/// for [`move_tags`].
pub async fn upload(
    built: Arc<Built>,
    opts: &RegistryOptions,
    progress: Progress,
    pushed: &mut PushedTags,
) -> Result<PushOutcome, RegistryError> {
    let targets = group_tags(&built.tags)?;
    let http = client(opts)?;
    let store = Arc::new(opts.credential_store());
    let (_, manifest_digest, _) = top_document(built.as_ref());
    pushed.digest = Some(manifest_digest.clone());

    // Each blob once, even when two layers (or two platforms' layers) are identical; each
    // image's config after its layers.
    let mut blobs: Vec<Blob> = Vec::new();
    for image in built.images() {
        let config = Bytes::from(image.config_json());
        for l in &image.layers {
            if !blobs.iter().any(|b| b.digest == l.digest) {
                blobs.push(Blob {
                    digest: l.digest.clone(),
                    size: l.size,
                    content: Content::File(built.blobs.path(&l.digest)),
                });
            }
        }
        let digest = Digest::of(&config);
        if !blobs.iter().any(|b| b.digest == digest) {
            blobs.push(Blob {
                digest,
                size: config.len() as u64,
                content: Content::Bytes(config),
            });
        }
    }

    let mut outcome = PushOutcome {
        manifest_digest,
        uploaded_bytes: 0,
        skipped_blobs: 0,
        uploaded_blobs: 0,
        tags: Vec::new(),
        references: Vec::new(),
    };
    let sent = Arc::new(AtomicU64::new(0));
    for (host, repos) in &targets {
        let mut reg = Registry::connect(
            http.clone(),
            api_host(host),
            opts,
            store.clone(),
            sent.clone(),
        )
        .await?;
        for (path, _) in repos {
            for blob in &blobs {
                if reg.upload_blob(path, blob, &sent, &progress).await? {
                    outcome.uploaded_blobs += 1;
                    outcome.uploaded_bytes += blob.size;
                } else {
                    outcome.skipped_blobs += 1;
                }
            }
            if built.index.is_some() {
                put_platform_manifests(&mut reg, path, &built).await?;
            }
        }
        pushed.sessions.push(reg);
    }
    Ok(outcome)
}

/// The second step of a push, after [`upload`] with the same `pushed`: point every tag at the
/// manifest, each after reading what it named before (recorded in `pushed` to be put back);
/// `outcome` gains the tags and the references by digest.
pub async fn move_tags(
    built: &Built,
    pushed: &mut PushedTags,
    outcome: &mut PushOutcome,
) -> Result<(), RegistryError> {
    let targets = group_tags(&built.tags)?;
    let (manifest, manifest_digest, media) = top_document(built);
    for (session, (host, repos)) in targets.iter().enumerate() {
        for (path, tags) in repos {
            for tag in tags {
                let reg = pushed.sessions.get_mut(session).ok_or_else(|| {
                    RegistryError::Internal("the tags moved before the blobs were uploaded".into())
                })?;
                let previous = reg.current_manifest(path, tag, &manifest_digest).await;
                if let Previous::Same = previous {
                    outcome.tags.push(format!("{host}/{path}:{tag}"));
                    continue;
                }
                let moved = MovedTag {
                    session,
                    path: path.clone(),
                    tag: tag.clone(),
                    previous,
                    manifest: None,
                };
                pushed.moved.push(moved);
                if let Err(e) = reg
                    .put_manifest(path, tag, &manifest, &manifest_digest, media)
                    .await
                {
                    // A PUT can fail after the registry stored the manifest (a cut connection):
                    // the tag counts as moved unless it does not name our manifest.
                    if !matches!(
                        reg.current_manifest(path, tag, &manifest_digest).await,
                        Previous::Same | Previous::Unknown(_)
                    ) {
                        pushed.moved.pop();
                    }
                    return Err(e);
                }
                outcome.tags.push(format!("{host}/{path}:{tag}"));
            }
            outcome
                .references
                .push(format!("{host}/{path}@{manifest_digest}"));
        }
    }
    Ok(())
}

/// What the tags name: the image's manifest, or with several platforms the image index (its
/// bytes, digest and media type).
fn top_document(built: &Built) -> (Bytes, Digest, &'static str) {
    match &built.index {
        None => (
            Bytes::from(built.image.manifest_json()),
            built.image.manifest_digest(),
            media_type::MANIFEST,
        ),
        Some(index) => (Bytes::from(index.json()), index.digest(), media_type::INDEX),
    }
}

/// With several platforms, each platform's manifest by its digest (no tag moves: the index the
/// tags will name refers to them), after their blobs and before the index.
async fn put_platform_manifests(
    reg: &mut Registry,
    path: &str,
    built: &Built,
) -> Result<(), RegistryError> {
    for image in built.images() {
        let digest = image.manifest_digest();
        let manifest = Bytes::from(image.manifest_json());
        reg.put_manifest(
            path,
            &digest.to_string(),
            &manifest,
            &digest,
            media_type::MANIFEST,
        )
        .await?;
    }
    Ok(())
}

/// Every manifest media type, for reading what a tag names.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What a tag named before a push moved it.
pub(super) enum Previous {
    /// Nothing: the tag did not exist.
    Nothing,
    /// This manifest (bytes and media type).
    Manifest(Bytes, String),
    /// Already the pushed manifest: nothing moves.
    Same,
    /// It could not be read (why).
    Unknown(String),
}

pub(super) struct MovedTag {
    pub(super) session: usize,
    pub(super) path: String,
    pub(super) tag: String,
    pub(super) previous: Previous,
    /// The manifest it names now, when not the image's (an attachment's: `referrers.rs`).
    pub(super) manifest: Option<Digest>,
}

/// The tags a push moved, with the sessions needed to put them back.
#[derive(Default)]
pub struct PushedTags {
    pub(super) sessions: Vec<Registry>,
    pub(super) moved: Vec<MovedTag>,
    digest: Option<Digest>,
}

impl PushedTags {
    /// Put every moved tag back on the manifest it named before, the last moved first. The
    /// distribution API cannot remove a tag: a tag that did not exist before stays, and the
    /// returned list says so, with how to remove it; so it does for anything else that could not
    /// be put back.
    pub async fn undo(mut self) -> Vec<String> {
        let digest = self
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let mut left = Vec::new();
        for m in std::mem::take(&mut self.moved).into_iter().rev() {
            let reg = &mut self.sessions[m.session];
            let name = format!("{}/{}:{}", reg.host, m.path, m.tag);
            let digest = m
                .manifest
                .as_ref()
                .map_or(digest.clone(), |d| d.to_string());
            match m.previous {
                Previous::Same => {}
                Previous::Manifest(bytes, media) => {
                    if let Err(e) = reg.restore_manifest(&m.path, &m.tag, &bytes, &media).await {
                        left.push(format!(
                            "the registry's tag {name} points at the new manifest {digest} and could not be put back ({e}); push the previous image to it again"
                        ));
                    }
                }
                Previous::Nothing => left.push(format!(
                    "the registry's tag {name} was created (manifest {digest}) and the registry API cannot remove a tag: delete it in the registry, e.g. `skopeo delete docker://{name}` (which deletes the manifest and every tag on it)"
                )),
                Previous::Unknown(why) => left.push(format!(
                    "the registry's tag {name} points at the new manifest {digest}; what it named before could not be read ({why}), so it was not put back"
                )),
            }
        }
        left
    }

    /// How many tags the push moved so far.
    pub fn moved(&self) -> usize {
        self.moved.len()
    }
}

/// Registry host → repository path → tags, in the order the tags were given.
pub(super) type Targets = Vec<(String, Vec<(String, Vec<String>)>)>;

pub(super) fn group_tags(tags: &[Reference]) -> Result<Targets, RegistryError> {
    let mut out: Targets = Vec::new();
    for t in tags {
        let Some(host) = &t.domain else {
            return Err(RegistryError::NoRegistry { tag: t.to_string() });
        };
        let hi = match out.iter().position(|(h, _)| h == host) {
            Some(i) => i,
            None => {
                out.push((host.clone(), Vec::new()));
                out.len() - 1
            }
        };
        let repos = &mut out[hi].1;
        let ri = match repos.iter().position(|(p, _)| *p == t.path) {
            Some(i) => i,
            None => {
                repos.push((t.path.clone(), Vec::new()));
                repos.len() - 1
            }
        };
        if !repos[ri].1.contains(&t.tag) {
            repos[ri].1.push(t.tag.clone());
        }
    }
    Ok(out)
}

pub(super) struct Blob {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) content: Content,
}

pub(super) enum Content {
    File(PathBuf),
    Bytes(Bytes),
}

impl Registry {
    /// Upload `blob` unless the repository has it. Returns whether it was uploaded.
    pub(super) async fn upload_blob(
        &mut self,
        path: &str,
        blob: &Blob,
        sent: &Arc<AtomicU64>,
        progress: &Progress,
    ) -> Result<bool, RegistryError> {
        let head = self.url(path, &format!("blobs/{}", blob.digest));
        let resp = self.send(path, Method::HEAD, &head, Ok).await?;
        match resp.status() {
            s if s.is_success() => return Ok(false),
            StatusCode::NOT_FOUND => {}
            _ => return Err(failure(&self.host, path, &head, resp).await),
        }

        let start = self.url(path, "blobs/uploads/");
        let resp = self.send(path, Method::POST, &start, Ok).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(failure(&self.host, path, &start, resp).await);
        }
        let location =
            header_text(&resp, LOCATION.as_str()).ok_or_else(|| RegistryError::Protocol {
                url: start.to_string(),
                problem: "answered 202 Accepted without a Location header".into(),
            })?;
        let mut put = start.join(&location).map_err(|e| RegistryError::Protocol {
            url: start.to_string(),
            problem: format!("gave an invalid upload Location {location:?}: {e}"),
        })?;
        put.query_pairs_mut()
            .append_pair("digest", &blob.digest.to_string());

        let before = sent.load(Ordering::Relaxed);
        let resp = self
            .send(path, Method::PUT, &put, |req| {
                // A retry (after a new token) restarts the count at the blob's start.
                sent.store(before, Ordering::Relaxed);
                let body = match &blob.content {
                    Content::Bytes(b) => {
                        let b = b.clone();
                        let (sent, progress) = (sent.clone(), progress.clone());
                        let len = b.len() as u64;
                        let once = futures_util::stream::once(async move {
                            progress(sent.fetch_add(len, Ordering::Relaxed) + len);
                            Ok::<_, io::Error>(b)
                        });
                        reqwest::Body::wrap_stream(once)
                    }
                    Content::File(file) => {
                        reqwest::Body::wrap_stream(file_stream(file, blob.size, sent, progress)?)
                    }
                };
                Ok(req
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, blob.size)
                    .body(body))
            })
            .await
            .map_err(|e| match e {
                RegistryError::Connection { cause, host, .. } if cause.contains(BLOB_READ) => {
                    RegistryError::Io {
                        path: match &blob.content {
                            Content::File(p) => p.clone(),
                            Content::Bytes(_) => PathBuf::from("config"),
                        },
                        source: io::Error::other(format!("{cause} (while uploading to {host})")),
                    }
                }
                other => other,
            })?;
        if !resp.status().is_success() {
            return Err(failure(&self.host, path, &put, resp).await);
        }
        Ok(true)
    }

    /// What `path:tag` names now, to put it back after a failure.
    async fn current_manifest(&mut self, path: &str, tag: &str, pushing: &Digest) -> Previous {
        let url = self.url(path, &format!("manifests/{tag}"));
        let resp = match self
            .send(path, Method::GET, &url, |req| {
                Ok(req.header(reqwest::header::ACCEPT, MANIFEST_TYPES))
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Previous::Unknown(e.to_string()),
        };
        match resp.status() {
            StatusCode::NOT_FOUND => return Previous::Nothing,
            s if !s.is_success() => return Previous::Unknown(format!("{url} answered {s}")),
            _ => {}
        }
        let media = header_text(&resp, CONTENT_TYPE.as_str()).unwrap_or_default();
        match resp.bytes().await {
            Ok(b) if Digest::of(&b) == *pushing => Previous::Same,
            Ok(b) => Previous::Manifest(b, media),
            Err(e) => Previous::Unknown(e.to_string()),
        }
    }

    /// `PUT` a manifest read before back under `tag`.
    async fn restore_manifest(
        &mut self,
        path: &str,
        tag: &str,
        bytes: &Bytes,
        media: &str,
    ) -> Result<(), RegistryError> {
        self.put(path, tag, bytes, media).await.map(|_| ())
    }

    /// `PUT` our manifest (or index: `media`) under `tag` (a tag or its own digest), checking
    /// the digest the registry says it stored.
    async fn put_manifest(
        &mut self,
        path: &str,
        tag: &str,
        manifest: &Bytes,
        digest: &Digest,
        media: &str,
    ) -> Result<(), RegistryError> {
        let (url, stored) = self.put(path, tag, manifest, media).await?;
        match stored {
            Some(got) if got != digest.to_string() => Err(RegistryError::Protocol {
                url: url.to_string(),
                problem: format!(
                    "stored the manifest as {got}, but its digest is {digest}: a proxy or the registry rewrote it"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// `PUT` manifest `bytes` of type `media` under `tag`; the URL, and the digest the registry
    /// says it stored (`Docker-Content-Digest`), if it says.
    async fn put(
        &mut self,
        path: &str,
        tag: &str,
        bytes: &Bytes,
        media: &str,
    ) -> Result<(reqwest::Url, Option<String>), RegistryError> {
        let url = self.url(path, &format!("manifests/{tag}"));
        let resp = self
            .send(path, Method::PUT, &url, |req| {
                Ok(req.header(CONTENT_TYPE, media).body(bytes.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(failure(&self.host, path, &url, resp).await);
        }
        let stored = header_text(&resp, "docker-content-digest");
        Ok((url, stored))
    }
}

/// Marker in the error chain of a failed blob read (see [`file_stream`]).
const BLOB_READ: &str = "reading the layer blob failed";

/// The blob file as a stream of chunks, counting bytes into `sent` and reporting them.
fn file_stream(
    path: &PathBuf,
    size: u64,
    sent: &Arc<AtomicU64>,
    progress: &Progress,
) -> Result<impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static, RegistryError> {
    let io_err = |source| RegistryError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let actual = file.metadata().map_err(io_err)?.len();
    if actual != size {
        return Err(io_err(io::Error::other(format!(
            "it has {actual} bytes but the image records {size}: the build directory was changed"
        ))));
    }
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), size);
    let (sent, progress) = (sent.clone(), progress.clone());
    Ok(
        tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10).map(
            move |chunk| match chunk {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    progress(sent.fetch_add(n, Ordering::Relaxed) + n);
                    Ok(bytes)
                }
                Err(e) => Err(io::Error::new(e.kind(), format!("{BLOB_READ}: {e}"))),
            },
        ),
    )
}
