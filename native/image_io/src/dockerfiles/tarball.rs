//! Copying the release tarball out of the build image's temporary container.

use super::{cancellable, check_cancelled, Checked, DockerfileFlow, FlowError, Step};
use crate::engine::{BuildEngine, EngineError};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The tarball, copied out into a temporary file (deleted on drop).
pub(super) struct Tarball {
    pub(super) file: tempfile::NamedTempFile,
    pub(super) bytes: u64,
}

pub(super) async fn copy_out<E: BuildEngine>(
    engine: &E,
    container: &str,
    tar_path: &str,
    flow: &DockerfileFlow,
    checked: &Checked,
    cancel: &CancellationToken,
) -> Result<Tarball, FlowError> {
    let step = Step::CopyRelease;
    let missing = || FlowError::TarballMissing {
        step,
        path: tar_path.to_string(),
        build_tag: checked.build_tag.to_string(),
        build_dockerfile: flow.build_dockerfile.clone(),
    };
    let unusable = |problem: String| FlowError::TarballUnusable {
        step,
        path: tar_path.to_string(),
        build_tag: checked.build_tag.to_string(),
        build_dockerfile: flow.build_dockerfile.clone(),
        problem,
    };
    check_cancelled(cancel, step)?;
    let body = cancellable(cancel, step, async {
        engine
            .download(container, tar_path)
            .await
            .map_err(|source| FlowError::Engine { step, source })
    })
    .await?
    .ok_or_else(missing)?;
    let file = tempfile::Builder::new()
        .prefix(".docker_release-")
        .suffix(&format!("-{}", flow.release_tarball))
        .tempfile()
        .map_err(|source| FlowError::LocalFile {
            step,
            path: std::env::temp_dir(),
            source,
        })?;
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
    let extract = tokio::task::spawn_blocking(move || extract_single(reader, file));
    let extracted = cancellable(cancel, step, async {
        extract.await.map_err(|e| FlowError::Engine {
            step,
            source: EngineError::Load(format!("the copy failed: {e}")),
        })
    })
    .await?;
    match extracted {
        Ok(t) if t.bytes == 0 => Err(unusable("is empty".into())),
        Ok(t) => Ok(t),
        Err(Extract::NotAFile(what)) => Err(unusable(what)),
        Err(Extract::Local(path, source)) => Err(FlowError::LocalFile { step, path, source }),
        Err(Extract::Download(e)) => Err(FlowError::Engine {
            step,
            source: EngineError::Api {
                action: format!("the copy of {tar_path}"),
                message: e.to_string(),
            },
        }),
    }
}

enum Extract {
    NotAFile(String),
    Local(PathBuf, io::Error),
    Download(io::Error),
}

/// Read the archive the engine sends for one path and write its first entry, which must be a
/// regular file, into `file`.
fn extract_single(
    reader: impl Read,
    mut file: tempfile::NamedTempFile,
) -> Result<Tarball, Extract> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(Extract::Download)?;
    let mut entry = match entries.next() {
        None => {
            return Err(Extract::NotAFile(
                "is missing from the engine's archive".into(),
            ))
        }
        Some(e) => e.map_err(Extract::Download)?,
    };
    match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {}
        tar::EntryType::Directory => return Err(Extract::NotAFile("is a directory".into())),
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(Extract::NotAFile(format!(
                "is a symbolic link (to {target})"
            )));
        }
        other => {
            return Err(Extract::NotAFile(format!(
                "is not a regular file ({other:?})"
            )))
        }
    }
    let path = file.path().to_path_buf();
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(Extract::Download)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|e| Extract::Local(path.clone(), e))?;
        bytes += n as u64;
    }
    file.as_file_mut()
        .sync_all()
        .map_err(|e| Extract::Local(path, e))?;
    Ok(Tarball { file, bytes })
}
