//! The build contexts of the two builds: the project as `docker build` would send it, and for
//! the final build the release tarball at the context root.
//!
//! The final build's context also carries its own `.dockerignore`: the project's with a last
//! line `!/NAME` that re-includes the tarball. The engine may apply the sent `.dockerignore`
//! again: Docker 20.10's classic builder only uses it to drop the Dockerfile and itself, but
//! Podman filters the whole context by it, so a project rule such as `*.tar.gz` would drop the
//! tarball there (`ADD NAME: no items matching glob`). The first build sends the project's
//! file as is.

use super::{DockerfileFlow, FlowError, Step};
use crate::channel::body_from_writer;
use crate::engine::Body;
use image_core::context::{write_context, ContextError, Excludes, DOCKERIGNORE};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one build sends: `root_files` first, then the project's entries that `excludes` lets
/// through.
pub(super) struct BuildContext {
    excludes: Excludes,
    root_files: Vec<RootFile>,
}

/// A regular file at the context root that the project does not hold as such.
struct RootFile {
    name: String,
    mode: u32,
    mtime: u64,
    data: RootData,
}

enum RootData {
    /// Read from this file when the context is written (the tarball: large).
    File(PathBuf),
    /// These bytes (the final build's `.dockerignore`: small).
    Bytes(Vec<u8>),
}

/// The first build's context: exactly what `docker build` would send.
pub(super) fn release_context(
    flow: &DockerfileFlow,
    dockerfile: &str,
) -> Result<BuildContext, FlowError> {
    let step = Step::BuildRelease;
    let ignore = project_dockerignore(flow, step)?;
    let bytes = ignore.as_ref().map(|(b, _)| &b[..]);
    Ok(BuildContext {
        excludes: context_excludes(bytes, &[DOCKERIGNORE, dockerfile], &[], step)?,
        root_files: Vec::new(),
    })
}

/// The final build's context: the copied tarball at `tarball`, sent as `flow.release_tarball`
/// (a project file of that name is left out, so the copied tarball is the only one); the
/// project's `.dockerignore`, if any, replaced by [`final_dockerignore`] of it; the project's
/// other entries as `docker build` would send them.
pub(super) fn final_context(
    flow: &DockerfileFlow,
    dockerfile: &str,
    tarball: &Path,
) -> Result<BuildContext, FlowError> {
    let step = Step::BuildFinal;
    let name = &flow.release_tarball;
    let ignore = project_dockerignore(flow, step)?;
    let bytes = ignore.as_ref().map(|(b, _)| &b[..]);
    let excludes = context_excludes(bytes, &[dockerfile], &[name, DOCKERIGNORE], step)?;
    let mut root_files = vec![RootFile {
        name: name.clone(),
        mode: 0o644,
        // Fixed, so the engine's cache key for `ADD NAME` depends on the tarball's bytes only.
        mtime: 0,
        data: RootData::File(tarball.to_path_buf()),
    }];
    if let Some((bytes, md)) = ignore {
        // The project file's mode and mtime, as `write_context` would have sent it.
        root_files.push(RootFile {
            name: DOCKERIGNORE.into(),
            mode: md.mode() & 0o7777,
            mtime: md.mtime().max(0) as u64,
            data: RootData::Bytes(final_dockerignore(&bytes, name)),
        });
    }
    Ok(BuildContext {
        excludes,
        root_files,
    })
}

/// The project's `.dockerignore` and what `stat` says of it, if it has one.
fn project_dockerignore(
    flow: &DockerfileFlow,
    step: Step,
) -> Result<Option<(Vec<u8>, std::fs::Metadata)>, FlowError> {
    let path = flow.project_dir.join(DOCKERIGNORE);
    let read = |source| FlowError::Context {
        step,
        source: ContextError::Read {
            path: path.clone(),
            source,
        },
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((bytes, std::fs::metadata(&path).map_err(read)?))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read(e)),
    }
}

/// The project's `.dockerignore` rules (`ignore`), adjusted like the docker CLI adjusts them:
/// the paths of `keep` (the Dockerfile and, for the first build, `.dockerignore`) are always
/// sent (the engine drops them again if excluded); the root paths of `drop` never are.
fn context_excludes(
    ignore: Option<&[u8]>,
    keep: &[&str],
    drop: &[&str],
    step: Step,
) -> Result<Excludes, FlowError> {
    let context = |source| FlowError::Context { step, source };
    // Exactly what `docker build` would send: the project's `.dockerignore` and nothing else
    // (no docker_release defaults, so a Dockerfile.build may COPY whatever it always did).
    let mut ex = Excludes::default();
    if let Some(bytes) = ignore {
        ex.extend_dockerignore(bytes).map_err(context)?;
    }
    let mut extra = String::new();
    for keep in keep {
        if ex.is_excluded(keep) {
            extra.push_str(&format!("!{}\n", escape_pattern(keep)));
        }
    }
    for drop in drop {
        extra.push_str(&format!("/{}\n", escape_pattern(drop)));
    }
    ex.extend_dockerignore(extra.as_bytes()).map_err(context)?;
    Ok(ex)
}

/// The final build's `.dockerignore`: the project's bytes as they are, then `!/NAME` (escaped),
/// so an engine that applies the file to the context keeps the tarball. Docker's rules give
/// the same answer for every other path (the last matching rule decides).
fn final_dockerignore(project: &[u8], tarball: &str) -> Vec<u8> {
    let mut out = project.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("!/{}\n", escape_pattern(tarball)).as_bytes());
    out
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

/// The build context as a stream: the root files first, then the project's entries from
/// [`write_context`], written on a blocking thread into a bounded channel so memory stays flat.
/// If writing fails, the stream ends with an error so the engine discards the partial context
/// instead of building it.
pub(super) fn context_stream(
    root: PathBuf,
    context: BuildContext,
) -> (Body, tokio::task::JoinHandle<Result<(), ContextError>>) {
    body_from_writer(CHUNK, move |out| {
        for file in &context.root_files {
            append_root_file(&mut *out, file)?;
        }
        write_context(&root, &context.excludes, &mut *out)?;
        out.flush().map_err(ContextError::Write)
    })
}

/// One tar entry (header, data, padding) without an end-of-archive marker: the entries of
/// [`write_context`] and its end marker follow.
fn append_root_file(out: &mut impl Write, file: &RootFile) -> Result<(), ContextError> {
    let (mut data, size, path): (Box<dyn Read + '_>, u64, Option<&Path>) = match &file.data {
        RootData::Bytes(b) => (Box::new(&b[..]), b.len() as u64, None),
        RootData::File(path) => {
            let read = |source| ContextError::Read {
                path: path.to_path_buf(),
                source,
            };
            let f = std::fs::File::open(path).map_err(read)?;
            let size = f.metadata().map_err(read)?.len();
            (Box::new(f), size, Some(path))
        }
    };
    let mut h = tar::Header::new_gnu();
    h.set_path(&file.name).map_err(ContextError::Write)?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(file.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(file.mtime);
    h.set_cksum();
    out.write_all(h.as_bytes()).map_err(ContextError::Write)?;
    let copied = io::copy(&mut (&mut data).take(size), out).map_err(ContextError::Write)?;
    if copied != size {
        return Err(ContextError::Changed {
            path: path.unwrap_or(Path::new(&file.name)).to_path_buf(),
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

    #[test]
    fn the_final_dockerignore_ends_by_re_including_the_tarball() {
        for project in [&b"*.tar.gz"[..], b"*.tar.gz\n", b"*.tar.gz\r\n"] {
            let bytes = final_dockerignore(project, "a[1].tar.gz");
            assert!(bytes.starts_with(project));
            assert!(bytes.ends_with(b"\n!/a\\[1\\].tar.gz\n"), "{bytes:?}");
            // Read with Docker's rules, the tarball is sent; everything else as before.
            let mut ex = Excludes::default();
            ex.extend_dockerignore(&bytes).unwrap();
            assert!(!ex.is_excluded("a[1].tar.gz"));
            assert!(ex.is_excluded("a1.tar.gz"));
            assert!(ex.is_excluded("other.tar.gz"));
        }
        assert_eq!(final_dockerignore(b"", "app.tar.gz"), b"!/app.tar.gz\n");
    }
}
