//! The image archive: an OCI image layout with a Docker `manifest.json` beside it.
//!
//! This "hybrid" layout is what `docker save` writes since Docker 25. `docker load` (20.10 and
//! newer) reads the `manifest.json`; skopeo and podman read it as `oci-archive:` through
//! `index.json`. One writer serves the archive file and the engine's load endpoint alike.

use crate::digest::Digest;
use crate::elf::Platform;
use crate::image::{media_type, to_bytes, Image};
use crate::index::ImageIndex;
use crate::layer::LayerInfo;
use crate::reference::Reference;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Where layer blobs are read from.
pub trait BlobSource: Send + Sync {
    /// A reader over the blob with this digest, and its size.
    fn open(&self, digest: &Digest) -> io::Result<(Box<dyn Read + Send>, u64)>;
}

/// Blobs stored as files named by their hex digest in one directory.
#[derive(Debug, Clone)]
pub struct BlobDir {
    /// The directory.
    pub root: PathBuf,
}

impl BlobDir {
    /// The path of the blob with this digest.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }
}

impl BlobSource for BlobDir {
    fn open(&self, digest: &Digest) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let f = std::fs::File::open(self.path(digest))?;
        let size = f.metadata()?.len();
        Ok((Box::new(f), size))
    }
}

/// Errors while writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A layer blob could not be read.
    #[error("cannot read layer blob {digest}: {source}")]
    Blob {
        /// The blob.
        digest: Digest,
        /// The cause.
        source: io::Error,
    },
    /// A blob's size differs from the image's record of it.
    #[error("layer blob {digest} has {actual} bytes, expected {expected}: the build directory was changed during the build")]
    BlobSize {
        /// The blob.
        digest: Digest,
        /// Recorded size.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Writing failed.
    #[error("cannot write the archive: {0}")]
    Write(#[source] io::Error),
    /// The platform whose image `docker load` should get is not in the index.
    #[error("the image index has no image for {0}, the platform docker load should get")]
    NoImage(String),
}

/// Write `image` as an archive to `out`, naming it with `tags` (which `docker load` applies).
///
/// `progress` is called with the bytes written so far.
pub fn write_archive<W: Write>(
    image: &Image,
    tags: &[Reference],
    blobs: &dyn BlobSource,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, ArchiveError> {
    write_archive_omitting(image, tags, blobs, out, progress, &BTreeSet::new())
}

/// [`write_archive`] without the bytes of the layer blobs in `omit` (they are still named by
/// the manifests): for a Docker engine that already holds those layers, which `docker load`
/// then does not open (see `image_io::sink`). Such an archive is not a complete image: it is
/// never written to a file.
pub fn write_archive_omitting<W: Write>(
    image: &Image,
    tags: &[Reference],
    blobs: &dyn BlobSource,
    out: W,
    progress: &mut dyn FnMut(u64),
    omit: &BTreeSet<Digest>,
) -> Result<W, ArchiveError> {
    let config = image.config_json();
    let manifest = image.manifest_json();
    let manifest_digest = Digest::of(&manifest);
    let index_entries = named(&manifest_digest, manifest.len(), media_type::MANIFEST, tags);
    let documents = vec![(Digest::of(&config), config), (manifest_digest, manifest)];
    let layout = Layout {
        mtime: image.created,
        documents,
        layers: image.layers.iter().collect(),
        index_entries,
        docker_manifest: docker_manifest(image, tags),
        omit,
    };
    layout.write(blobs, out, progress)
}

/// Write a multi-platform image as an archive to `out`: an OCI image layout whose `index.json`
/// names, once per tag, the [`ImageIndex`] (a nested index, the shape `docker buildx` and
/// Docker 25+ write, which skopeo needs: a flat `index.json` listing several manifests is
/// refused as "more than one image"), with every image's blobs (shared layers once), and a
/// Docker `manifest.json` listing only the image of `load`: Docker Engine 20.10 to 24 loads what
/// `manifest.json` lists and ignores `index.json`, and two images under one tag would leave the
/// tag on the last one.
///
/// What each reader gets: `docker load` (20.10…24) and `podman load` the `load` image;
/// `skopeo copy --all oci-archive:F:TAG` the index and every image;
/// `skopeo copy oci-archive:F:TAG` the image of the machine's platform (`--override-arch`).
pub fn write_index_archive<W: Write>(
    index: &ImageIndex,
    load: &Platform,
    tags: &[Reference],
    blobs: &dyn BlobSource,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<W, ArchiveError> {
    let loaded = index
        .image(load)
        .ok_or_else(|| ArchiveError::NoImage(load.to_string()))?;
    let index_json = index.json();
    let index_digest = Digest::of(&index_json);
    let index_entries = named(&index_digest, index_json.len(), media_type::INDEX, tags);
    let mut documents = vec![(index_digest, index_json)];
    for image in index.images() {
        let config = image.config_json();
        let manifest = image.manifest_json();
        documents.push((Digest::of(&config), config));
        documents.push((Digest::of(&manifest), manifest));
    }
    let layout = Layout {
        mtime: index.images().iter().map(|i| i.created).max().unwrap_or(0),
        documents,
        layers: index.images().iter().flat_map(|i| &i.layers).collect(),
        index_entries,
        docker_manifest: docker_manifest(loaded, tags),
        omit: &BTreeSet::new(),
    };
    layout.write(blobs, out, progress)
}

/// What an archive holds: small documents (configs, manifests, an index) written from memory,
/// layers read from a [`BlobSource`], `index.json`'s entries and the Docker `manifest.json`.
struct Layout<'i> {
    mtime: u64,
    documents: Vec<(Digest, Vec<u8>)>,
    layers: Vec<&'i LayerInfo>,
    index_entries: Vec<serde_json::Value>,
    docker_manifest: serde_json::Value,
    /// Layer blobs named but not written (an engine holds them).
    omit: &'i BTreeSet<Digest>,
}

impl Layout<'_> {
    fn write<W: Write>(
        mut self,
        blobs: &dyn BlobSource,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<W, ArchiveError> {
        let mtime = self.mtime;
        let w = ArchiveError::Write;
        let mut tar = tar::Builder::new(Counting { inner: out, n: 0 });
        let dir = |tar: &mut tar::Builder<Counting<W>>, path: &str| {
            let mut h = header(tar::EntryType::Directory, 0o755, mtime, 0);
            tar.append_data(&mut h, path, io::empty())
        };
        dir(&mut tar, "blobs").map_err(w)?;
        dir(&mut tar, "blobs/sha256").map_err(w)?;

        // Blobs in digest order, each once (two layers may be identical, images share layers).
        self.documents.sort();
        self.documents.dedup_by(|a, b| a.0 == b.0);
        let mut all: BTreeSet<&Digest> = self
            .layers
            .iter()
            .map(|l| &l.digest)
            .filter(|d| !self.omit.contains(*d))
            .collect();
        for (d, _) in &self.documents {
            all.insert(d);
        }
        for d in all {
            let path = format!("blobs/sha256/{}", d.hex());
            if let Some((_, bytes)) = self.documents.iter().find(|(sd, _)| sd == d) {
                let mut h = header(tar::EntryType::Regular, 0o644, mtime, bytes.len() as u64);
                tar.append_data(&mut h, &path, bytes.as_slice())
                    .map_err(w)?;
            } else {
                let expected = self
                    .layers
                    .iter()
                    .find(|l| &l.digest == d)
                    .map(|l| l.size)
                    .unwrap_or(0);
                let (reader, actual) = blobs.open(d).map_err(|e| ArchiveError::Blob {
                    digest: d.clone(),
                    source: e,
                })?;
                if actual != expected {
                    return Err(ArchiveError::BlobSize {
                        digest: d.clone(),
                        expected,
                        actual,
                    });
                }
                let mut h = header(tar::EntryType::Regular, 0o644, mtime, expected);
                tar.append_data(&mut h, &path, reader.take(expected))
                    .map_err(w)?;
            }
            progress(tar.get_ref().n);
        }

        let index = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::INDEX,
            "manifests": self.index_entries,
        }));
        let docker_manifest = to_bytes(&self.docker_manifest);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        for (name, bytes) in [
            ("index.json", index.as_slice()),
            ("manifest.json", docker_manifest.as_slice()),
            ("oci-layout", layout.as_slice()),
        ] {
            let mut h = header(tar::EntryType::Regular, 0o644, mtime, bytes.len() as u64);
            tar.append_data(&mut h, name, bytes).map_err(w)?;
        }
        let counting = tar.into_inner().map_err(w)?;
        progress(counting.n);
        Ok(counting.inner)
    }
}

/// `index.json`'s entries: the document, once per tag (or once, unnamed, without tags).
fn named(
    digest: &Digest,
    size: usize,
    media_type: &str,
    tags: &[Reference],
) -> Vec<serde_json::Value> {
    if tags.is_empty() {
        vec![descriptor(digest, size, media_type, None)]
    } else {
        tags.iter()
            .map(|t| descriptor(digest, size, media_type, Some(t)))
            .collect()
    }
}

/// The Docker `manifest.json`: `image`, named by `tags`.
fn docker_manifest(image: &Image, tags: &[Reference]) -> serde_json::Value {
    json!([{
        "Config": format!("blobs/sha256/{}", image.id().hex()),
        "RepoTags": tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "Layers": image.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
    }])
}

fn descriptor(
    digest: &Digest,
    size: usize,
    media_type: &str,
    tag: Option<&Reference>,
) -> serde_json::Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    if let Some(t) = tag {
        d["annotations"] = json!({
            "io.containerd.image.name": t.full_name(),
            "org.opencontainers.image.ref.name": t.tag,
        });
    }
    d
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
