//! Plan → layers → image: writes each planned layer as a blob and returns the image value.

use crate::archive::BlobDir;
use crate::digest::HashWriter;
use crate::fs::Fs;
use crate::image::Image;
use crate::layer::{layer_diff_id, write_layer, LayerError, LayerInfo, LayerSpec};
use crate::plan::Plan;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

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
    /// Layer `name` is being hashed (uncompressed, `bytes` so far) to look it up in the
    /// [`LayerCache`].
    Checking {
        /// Layer name.
        name: String,
        /// Zero-based index.
        index: usize,
        /// Number of layers.
        count: usize,
        /// Uncompressed bytes so far.
        bytes: u64,
    },
    /// Layer `name` is byte for byte one compressed before: its blob was taken from the
    /// [`LayerCache`] instead of being compressed again.
    Reused {
        /// Layer name.
        name: String,
        /// Zero-based index.
        index: usize,
        /// Number of layers.
        count: usize,
    },
}

/// Compressed layers kept between builds, so that a layer whose tar is identical to one built
/// before (the runtime, ERTS and deps layers when only the app changed) costs a hashing pass
/// instead of a compression.
///
/// A cache hit must give the very bytes a fresh compression would: the same tar compresses to
/// other bytes with another gzip level or another version of the encoder, and a damaged or
/// foreign entry can still decompress to the right tar. So an entry is named by the layer's
/// `diff_id`, the gzip level, a fingerprint of the encoder ([`encoder_fingerprint`]) and the
/// digest of the compressed bytes as they were written; it is used only when its bytes still
/// have that digest and decompress to that `diff_id`. Entries are written whole (a temporary
/// name, then a rename) and [`LayerCache::prune`] keeps the newest.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// The directory (created on first use).
    pub dir: PathBuf,
}

impl LayerCache {
    /// `DIFFID.gzLEVEL-FINGERPRINT.` : the start of the names of entries for this layer.
    fn prefix(diff_id: &crate::digest::Digest, level: u32) -> String {
        format!(
            "{}.gz{level}-{}.",
            diff_id.hex(),
            encoder_fingerprint(level)
        )
    }

    /// The entry for a layer, with the digest its bytes had when they were written.
    fn find(
        &self,
        diff_id: &crate::digest::Digest,
        level: u32,
    ) -> Option<(PathBuf, crate::digest::Digest)> {
        let prefix = Self::prefix(diff_id, level);
        std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let hex = name.to_str()?.strip_prefix(&prefix)?;
            Some((e.path(), crate::digest::Digest::from_hex(hex)?))
        })
    }

    /// The path of the entry for a layer whose compressed bytes have `digest`.
    pub fn entry(
        &self,
        diff_id: &crate::digest::Digest,
        level: u32,
        digest: &crate::digest::Digest,
    ) -> PathBuf {
        self.dir
            .join(format!("{}{}", Self::prefix(diff_id, level), digest.hex()))
    }

    /// Keep the `keep` most recently used entries, remove the rest, and the temporary files of
    /// runs whose process is gone (killed while putting an entry in).
    pub fn prune(&self, keep: usize) -> io::Result<()> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(rest) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".partial"))
            {
                let pid = rest.rsplit('.').next().unwrap_or_default();
                if !Path::new("/proc").join(pid).exists() && Path::new("/proc/self").exists() {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            let used = e.metadata()?.modified()?;
            entries.push((used, e.path()));
        }
        entries.sort();
        let drop = entries.len().saturating_sub(keep);
        for (_, path) in entries.into_iter().take(drop) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// A short fingerprint of the gzip encoder at `level`: the start of the sha256 of a fixed probe
/// (text, repetitions and noise, which exercise matching, literals and block choices)
/// compressed the way layers are. Another encoder version or backend that compresses
/// differently almost surely changes it, so the layer cache never serves its entries as ours.
pub fn encoder_fingerprint(level: u32) -> &'static str {
    use std::sync::OnceLock;
    static PRINTS: [OnceLock<String>; 10] = [const { OnceLock::new() }; 10];
    let level = level.min(9);
    PRINTS[level as usize].get_or_init(|| {
        let mut probe = Vec::with_capacity(200_000);
        for i in 0..2000u32 {
            probe.extend_from_slice(
                format!("lib/app-{i}/ebin/Elixir.App.Module{i}.beam {}\n", i * 7919).as_bytes(),
            );
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..65_536 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probe.push(x as u8);
        }
        probe.extend(std::iter::repeat_n(b'a', 40_000));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&probe);
        let bytes = gz.finish().unwrap_or_default();
        crate::digest::Digest::of(&bytes).hex()[..12].to_string()
    })
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
    build_cached(fs, plan, created, level, blobs, None, progress)
}

/// [`build`], taking each layer from `cache` when an identical one was compressed before at the
/// same level, and putting each newly compressed layer there. The image is the same byte for
/// byte as without a cache.
pub fn build_cached(
    fs: &dyn Fs,
    plan: &Plan,
    created: u64,
    level: u32,
    blobs: &BlobDir,
    cache: Option<&LayerCache>,
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
        let mut report = |bytes| {
            progress(Progress::Checking {
                name: spec.name.clone(),
                index,
                count,
                bytes,
            })
        };
        let cached = match cache {
            Some(cache) => from_cache(fs, spec, created, level, blobs, cache, &mut report)?,
            None => None,
        };
        if let Some(info) = cached {
            progress(Progress::Reused {
                name: spec.name.clone(),
                index,
                count,
            });
            layers.push(info);
            continue;
        }
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
        if let Some(cache) = cache {
            // A cache that cannot be written only costs the next build its speed.
            let _ = put_in_cache(cache, &dest, &info, level);
        }
        layers.push(info);
    }
    Ok(Image {
        platform: plan.platform.clone(),
        created,
        config: plan.run_config.clone(),
        layers,
        base_history: Vec::new(),
        annotations: plan.annotations.clone(),
    })
}

/// The layer for `spec` from `cache`, placed in `blobs`, or `None` when the cache has no layer
/// with its `diff_id` (or the entry cannot be used).
fn from_cache(
    fs: &dyn Fs,
    spec: &LayerSpec,
    created: u64,
    level: u32,
    blobs: &BlobDir,
    cache: &LayerCache,
    report: &mut dyn FnMut(u64) -> bool,
) -> Result<Option<LayerInfo>, BuildError> {
    let (diff_id, uncompressed_size, entries) =
        layer_diff_id(fs, spec, created, report).map_err(|source| BuildError::Layer {
            layer: spec.name.clone(),
            source,
        })?;
    let Some((entry, recorded)) = cache.find(&diff_id, level) else {
        return Ok(None);
    };
    let Ok(file) = std::fs::File::open(&entry) else {
        return Ok(None);
    };
    // The entry is used only if it really is this layer as we compressed it: its bytes still
    // have the digest they had when written, and decompress to a tar with this diff_id.
    let digest_and_size = verify(file, &diff_id).filter(|(d, _)| *d == recorded);
    let Some(digest_and_size) = digest_and_size else {
        let _ = std::fs::remove_file(&entry);
        return Ok(None);
    };
    let (digest, size) = digest_and_size;
    let dest = blobs.path(&digest);
    if !dest.exists() && link_or_copy(&entry, &dest).is_err() {
        return Ok(None);
    }
    // Mark it used (prune keeps the most recently used).
    let _ = std::fs::File::options()
        .append(true)
        .open(&entry)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    Ok(Some(LayerInfo {
        name: spec.name.clone(),
        digest,
        diff_id,
        size,
        uncompressed_size,
        entries,
    }))
}

/// The digest and size of the gzip blob read from `file`, if it decompresses to a tar whose
/// sha256 is `diff_id`.
fn verify(
    mut file: std::fs::File,
    diff_id: &crate::digest::Digest,
) -> Option<(crate::digest::Digest, u64)> {
    use std::io::Read;
    let mut compressed = HashWriter::new(io::sink());
    let mut tar = flate2::write::GzDecoder::new(HashWriter::new(io::sink()));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        compressed.write_all(&buf[..n]).ok()?;
        tar.write_all(&buf[..n]).ok()?;
    }
    let (_, uncompressed, _) = tar.finish().ok()?.finish();
    let (_, digest, size) = compressed.finish();
    (uncompressed == *diff_id).then_some((digest, size))
}

/// Put the blob at `blob` (the layer `info`) in `cache`: a hard link (a copy across
/// filesystems) under a temporary name, then a rename, so an entry is never seen half-written.
fn put_in_cache(cache: &LayerCache, blob: &Path, info: &LayerInfo, level: u32) -> io::Result<()> {
    std::fs::create_dir_all(&cache.dir)?;
    // Entries for this layer and level written by another encoder or damaged go.
    if let Some((old, _)) = cache.find(&info.diff_id, level) {
        let _ = std::fs::remove_file(old);
    }
    let entry = cache.entry(&info.diff_id, level, &info.digest);
    let tmp = cache.dir.join(format!(
        ".{}.{}.partial",
        info.diff_id.hex(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    link_or_copy(blob, &tmp)?;
    std::fs::rename(&tmp, &entry)
}

fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
}
