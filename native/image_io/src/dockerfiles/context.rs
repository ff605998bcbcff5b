//! The build contexts of the two builds: the project as `docker build` would send it, and for
//! the final build the release tarball at the context root.

use super::{DockerfileFlow, FlowError, Step};
use crate::channel::body_from_writer;
use crate::engine::Body;
use image_core::context::{write_context, ContextError, Excludes};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The project's `.dockerignore` rules, adjusted like the docker CLI adjusts them: the
/// Dockerfile and `.dockerignore` are always sent (the engine drops them again if excluded), and
/// for the final build a project file named like the tarball is left out, so the tarball copied
/// from the build image is the only one.
pub(super) fn context_excludes(
    flow: &DockerfileFlow,
    dockerfile: &str,
    tarball: Option<&str>,
) -> Result<Excludes, FlowError> {
    let context = |source| FlowError::Context {
        step: if tarball.is_some() {
            Step::BuildFinal
        } else {
            Step::BuildRelease
        },
        source,
    };
    // Exactly what `docker build` would send: the project's `.dockerignore` and nothing else
    // (no docker_release defaults, so a Dockerfile.build may COPY whatever it always did).
    let mut ex = Excludes::default();
    let ignore = flow.project_dir.join(".dockerignore");
    match std::fs::read(&ignore) {
        Ok(bytes) => ex.extend_dockerignore(&bytes).map_err(context)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(context(image_core::context::ContextError::Read {
                path: ignore,
                source,
            }))
        }
    }
    let mut extra = String::new();
    for keep in [".dockerignore", dockerfile] {
        if ex.is_excluded(keep) {
            extra.push_str(&format!("!{}\n", escape_pattern(keep)));
        }
    }
    if let Some(name) = tarball {
        extra.push_str(&format!("/{}\n", escape_pattern(name)));
    }
    ex.extend_dockerignore(extra.as_bytes()).map_err(context)?;
    Ok(ex)
}

fn escape_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The build context as a stream: `extra` first (one regular file at the root), then the
/// project's entries from [`write_context`], written on a blocking thread into a bounded channel
/// so memory stays flat. If writing fails, the stream ends with an error so the engine discards
/// the partial context instead of building it.
pub(super) fn context_stream(
    root: PathBuf,
    excludes: Excludes,
    extra: Option<(String, PathBuf)>,
) -> (Body, tokio::task::JoinHandle<Result<(), ContextError>>) {
    body_from_writer(CHUNK, move |out| {
        if let Some((name, path)) = &extra {
            append_root_file(&mut *out, name, path)?;
        }
        write_context(&root, &excludes, &mut *out)?;
        out.flush().map_err(ContextError::Write)
    })
}

/// One tar entry (header, data, padding) without an end-of-archive marker: the entries of
/// [`write_context`] and its end marker follow.
fn append_root_file(out: &mut impl Write, name: &str, path: &Path) -> Result<(), ContextError> {
    let read = |source| ContextError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    let mut h = tar::Header::new_gnu();
    h.set_path(name).map_err(ContextError::Write)?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    // Fixed, so the engine's cache key for `ADD NAME` depends on the tarball's bytes only.
    h.set_mtime(0);
    h.set_cksum();
    out.write_all(h.as_bytes()).map_err(ContextError::Write)?;
    let copied = io::copy(&mut file.take(size), out).map_err(ContextError::Write)?;
    if copied != size {
        return Err(ContextError::Changed {
            path: path.to_path_buf(),
            expected: size,
        });
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
        .map_err(ContextError::Write)
}

const CHUNK: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_escaped_literally() {
        let ex = Excludes::new([format!("/{}", escape_pattern("a[1]*.tar.gz"))]).unwrap();
        assert!(ex.is_excluded("a[1]*.tar.gz"));
        assert!(!ex.is_excluded("a1x.tar.gz"));
    }
}
