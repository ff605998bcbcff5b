//! Storing a base layer as a gzip blob as it streams in, hashing what passes.

use crate::channel::ChannelReader;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::{Stream, StreamExt};
use image_core::archive::BlobDir;
use image_core::digest::{Digest, HashWriter};
use image_core::layer::LayerInfo;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use tokio::sync::mpsc;

use super::BASE_LAYER_NAME;

/// A layer stored as a blob, and what arrived.
pub(super) struct Stored {
    pub(super) info: LayerInfo,
    /// sha256 of the bytes as received (the registry's layer digest).
    pub(super) input_digest: Digest,
    pub(super) input_size: u64,
}

/// Feed `stream` to `work` (run on the blocking pool, reading through a bounded channel), so
/// large bodies flow through with flat memory.
pub(super) async fn pump<S, T, F>(stream: S, work: F) -> io::Result<T>
where
    S: Stream<Item = io::Result<Bytes>>,
    F: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader::new(rx);
        // Returning drops the receiver, which stops the feeder.
        work(&mut reader)
    });
    let feed = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    let (_, out) = tokio::join!(feed, worker);
    out.map_err(|e| io::Error::other(format!("worker thread failed: {e}")))?
}

/// Reads through, hashing what passes.
struct Tee<'r> {
    inner: &'r mut dyn Read,
    hash: HashWriter<io::Sink>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Store one layer as a gzip blob named by its digest: gzip input is kept as it is (its digest
/// stays the registry's), a plain tar is compressed like our own layers (flate2, header mtime 0,
/// `level`). The `diff_id` is computed from the uncompressed bytes either way.
pub(super) fn store_layer(input: &mut dyn Read, blobs: &BlobDir, level: u32) -> io::Result<Stored> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = blobs
        .root
        .join(format!(".base-{}-{n}.partial", std::process::id()));
    let result = (|| {
        let mut tee = BufReader::with_capacity(
            1 << 20,
            Tee {
                inner: input,
                hash: HashWriter::new(io::sink()),
            },
        );
        let gzip = tee.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let file = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let (file, digest, size, diff_id, uncompressed_size) = if gzip {
            let mut blob = HashWriter::new(file);
            let mut tar = flate2::write::MultiGzDecoder::new(HashWriter::new(io::sink()));
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let k = tee.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                blob.write_all(&buf[..k])?;
                tar.write_all(&buf[..k])?;
            }
            let (_, diff_id, usize) = tar.finish()?.finish();
            let (file, digest, size) = blob.finish();
            (file, digest, size, diff_id, usize)
        } else {
            let gz = GzEncoder::new(HashWriter::new(file), Compression::new(level));
            let mut tar = HashWriter::new(gz);
            io::copy(&mut tee, &mut tar)?;
            let (gz, diff_id, usize) = tar.finish();
            let (file, digest, size) = gz.finish()?.finish();
            (file, digest, size, diff_id, usize)
        };
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let (_, input_digest, input_size) = tee.into_inner().hash.finish();
        std::fs::rename(&tmp, blobs.path(&digest))?;
        Ok(Stored {
            info: LayerInfo {
                name: BASE_LAYER_NAME.into(),
                digest,
                diff_id,
                size,
                uncompressed_size,
                entries: 0,
            },
            input_digest,
            input_size,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_input_is_kept_and_plain_input_is_compressed_deterministically() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobDir {
            root: tmp.path().to_path_buf(),
        };
        let tar_bytes = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            b.append_data(&mut h, "x", &b"hello"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let a = store_layer(&mut tar_bytes.as_slice(), &blobs, 6).unwrap();
        let b = store_layer(&mut tar_bytes.as_slice(), &blobs, 6).unwrap();
        assert_eq!(a.info, b.info, "same input, same blob");
        let gz = std::fs::read(blobs.path(&a.info.digest)).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(gz[9], 255, "OS byte as in our own layers");
        let kept = store_layer(&mut gz.as_slice(), &blobs, 1).unwrap();
        assert_eq!(kept.info.digest, a.info.digest, "gzip input kept as is");
        assert_eq!(kept.info.diff_id, Digest::of(&tar_bytes));
        assert_eq!(kept.input_digest, a.info.digest);
    }
}
