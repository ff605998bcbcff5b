//! `--sbom PATH`: the very SBOM document embedded in the image, written to a [`PendingFile`]
//! before any other output and published with the run's other files (so a failed run leaves
//! no SBOM of an image that was not made, and no half-written file).
//!
//! With several platforms each image embeds its own SBOM (it lists that platform's packages),
//! and there is no one document for the index: each is written to a file of its own next to
//! PATH, named after it with the platform added ([`platform_path`]:
//! `sbom-linux-amd64.spdx.json`, `sbom-linux-arm64-v8.spdx.json` for `sbom.spdx.json`), all
//! committed together; nothing is written at PATH itself. A device or FIFO at PATH cannot name
//! several files, and is refused at the prepare step, before any output changes.

use super::{Built, Changes, FileOutput, Order, Sink, SinkError};
use crate::outcome::{Outcome, SbomWritten};
use futures_util::future::BoxFuture;
use image_core::digest::Digest;
use image_core::supply::SbomFile;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The SBOM file, or with several platforms one per platform.
pub struct SbomSink {
    path: PathBuf,
    scratch: PathBuf,
    files: Vec<SbomOut>,
}

/// One file the sink writes.
struct SbomOut {
    /// With several platforms, the manifest digest of the image whose SBOM it is.
    manifest: Option<Digest>,
    file: FileOutput,
    sbom: SbomFile,
}

impl SbomSink {
    /// The SBOM of each image of the run ([`Built::sboms`]) at `path`, or with several
    /// platforms at [`platform_path`]s of it; bytes for a device or FIFO wait in `scratch`
    /// until the commit.
    pub fn new(path: PathBuf, scratch: PathBuf) -> SbomSink {
        SbomSink {
            path,
            scratch,
            files: Vec::new(),
        }
    }

    /// The files to write for `built`.
    fn files(&self, built: &Built) -> Result<Vec<SbomOut>, SinkError> {
        let missing = |image: &image_core::image::Image| {
            SinkError::Internal(format!(
                "the {} image has no SBOM to write to {}",
                image.platform,
                self.path.display()
            ))
        };
        let Some(index) = &built.index else {
            let sbom = built
                .sbom_of(&built.image)
                .ok_or_else(|| missing(&built.image))?;
            return Ok(vec![SbomOut {
                manifest: None,
                file: FileOutput::new(self.path.clone(), self.scratch.clone()),
                sbom: sbom.clone(),
            }]);
        };
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if !meta.is_file() {
                return Err(SinkError::File {
                    path: self.path.clone(),
                    source: io::Error::other(format!(
                        "with several platforms one SBOM file is written per platform, named after the path given with the platform added (e.g. {}), and a device or FIFO cannot name them: give the path of a file",
                        platform_path(&self.path, &index.images()[0].platform.to_string()).display()
                    )),
                });
            }
        }
        index
            .images()
            .iter()
            .map(|image| {
                let sbom = built.sbom_of(image).ok_or_else(|| missing(image))?;
                let path = platform_path(&self.path, &image.platform.to_string());
                Ok(SbomOut {
                    manifest: Some(image.manifest_digest()),
                    file: FileOutput::new(path, self.scratch.clone()),
                    sbom: sbom.clone(),
                })
            })
            .collect()
    }
}

/// Where the SBOM of `platform` (`linux/arm64/v8`) goes when `--sbom` is `path` and the run
/// makes several platforms: beside `path`, its file name with the platform (`/` as `-`) added
/// before the first dot that does not start the name.
///
/// ```
/// use image_io::sink::platform_path;
/// use std::path::Path;
/// let p = |path: &str, platform: &str| platform_path(Path::new(path), platform);
/// assert_eq!(p("out/sbom.spdx.json", "linux/amd64"), Path::new("out/sbom-linux-amd64.spdx.json"));
/// assert_eq!(p("sbom.cdx.json", "linux/arm64/v8"), Path::new("sbom-linux-arm64-v8.cdx.json"));
/// assert_eq!(p("/tmp/sbom", "linux/amd64"), Path::new("/tmp/sbom-linux-amd64"));
/// assert_eq!(p(".sbom.json", "linux/amd64"), Path::new(".sbom-linux-amd64.json"));
/// ```
pub fn platform_path(path: &Path, platform: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    let leading = name.iter().take_while(|&&b| b == b'.').count();
    let split = name[leading..]
        .iter()
        .position(|&b| b == b'.')
        .map_or(name.len(), |i| leading + i);
    let mut named = name[..split].to_vec();
    named.push(b'-');
    named.extend(platform.replace('/', "-").into_bytes());
    named.extend_from_slice(&name[split..]);
    path.with_file_name(OsString::from_vec(named))
}

impl<'a> Sink<'a> for SbomSink {
    fn prepare<'s>(&'s mut self, built: &'s Arc<Built>) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            self.files = self.files(built)?;
            for out in &mut self.files {
                let mut pending = out.file.create()?;
                pending
                    .writer()
                    .write_all(&out.sbom.bytes)
                    .map_err(|source| SinkError::File {
                        path: out.file.path().to_path_buf(),
                        source,
                    })?;
                out.file.written(pending)?;
            }
            Ok(())
        })
    }

    fn commit<'s>(
        &'s mut self,
        _built: &'s Arc<Built>,
        _outcome: &'s Outcome,
        changes: &'s mut Changes<'a>,
    ) -> BoxFuture<'s, Result<(), SinkError>> {
        Box::pin(async move {
            for out in &mut self.files {
                out.file.publish(changes)?;
            }
            Ok(())
        })
    }

    fn report(&self, outcome: &mut Outcome) {
        for out in &self.files {
            let written = SbomWritten {
                path: out.file.path().to_path_buf(),
                media_type: out.sbom.media_type().to_string(),
                digest: Digest::of(&out.sbom.bytes),
                size: out.sbom.bytes.len() as u64,
            };
            match &out.manifest {
                None => outcome.sbom_file = Some(written),
                Some(manifest) => {
                    if let Some(image) = outcome
                        .platforms
                        .iter_mut()
                        .find(|p| p.manifest_digest == *manifest)
                    {
                        image.sbom_file = Some(written);
                    }
                }
            }
        }
    }

    fn order(&self) -> Order {
        self.files
            .iter()
            .map(|f| f.file.order())
            .max()
            .unwrap_or(Order::File)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_goes_before_the_extensions_of_the_name_only() {
        let p = |path: &str| platform_path(Path::new(path), "linux/arm/v7");
        assert_eq!(
            p("a/b.c/sbom.spdx.json"),
            Path::new("a/b.c/sbom-linux-arm-v7.spdx.json")
        );
        assert_eq!(p("..sbom"), Path::new("..sbom-linux-arm-v7"));
        assert_eq!(p("my.sbom.json"), Path::new("my-linux-arm-v7.sbom.json"));
        assert_eq!(p("sbom."), Path::new("sbom-linux-arm-v7."));
    }

    #[test]
    fn a_name_that_is_not_utf8_keeps_its_bytes() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"dir/\xffsbom.json"));
        assert_eq!(
            platform_path(path, "linux/amd64").as_os_str().as_bytes(),
            b"dir/\xffsbom-linux-amd64.json"
        );
    }
}
