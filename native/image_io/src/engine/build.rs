//! `docker build` and copying a path out of a container: the calls of the Dockerfile flow
//! ([`crate::dockerfiles`]) beyond [`Engine`] and [`Containers`].

use super::{status_of, Body, Containers, DockerEngine, Engine, EngineError};
use crate::lines::Lines;
use bollard::query_parameters::{BuildImageOptionsBuilder, DownloadFromContainerOptionsBuilder};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::io;

/// How one image build is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The Dockerfile's path inside the context (`/`-separated).
    pub dockerfile: String,
    /// The tag the image gets.
    pub tag: String,
    /// Build-args.
    pub build_args: Vec<(String, String)>,
    /// Do not use the build cache.
    pub no_cache: bool,
}

/// A failed [`BuildEngine::build`].
#[derive(Debug, thiserror::Error)]
pub enum BuildCallError {
    /// The engine ran the build and reported it failed (an `errorDetail` in the stream, or a
    /// refused request such as a Dockerfile parse error). The text is the engine's.
    #[error("{0}")]
    Failed(String),
    /// Talking to the engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The engine calls the Dockerfile flow makes beyond [`Engine`]'s `tag` and `inspect` and the
/// temporary container's lifecycle ([`Containers`]).
pub trait BuildEngine: Engine + Containers {
    /// Build an image from a tar `context` stream, tag it `spec.tag`, pass each output line to
    /// `on_line`; returns the image ID when the engine reports one.
    fn build(
        &self,
        spec: &BuildSpec,
        context: Body,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> impl Future<Output = Result<Option<String>, BuildCallError>> + Send;
    /// A tar stream of `path` in `container`, or `None` when the path does not exist.
    fn download(
        &self,
        container: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<Body>, EngineError>> + Send;
}

/// Build output as lines, without trailing blanks; empty lines are left out.
fn emit(lines: Vec<String>, on_line: &(dyn Fn(&str) + Send + Sync)) {
    for line in lines {
        let line = line.trim_end();
        if !line.is_empty() {
            on_line(line);
        }
    }
}

impl BuildEngine for DockerEngine {
    async fn build(
        &self,
        spec: &BuildSpec,
        context: Body,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Option<String>, BuildCallError> {
        let args: HashMap<String, String> = spec.build_args.iter().cloned().collect();
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(&spec.tag)
            .buildargs(&args)
            .nocache(spec.no_cache)
            // Intermediate containers go away also when a step fails.
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_try_stream(context)));
        let mut lines = Lines::default();
        let mut id = None;
        let failed = loop {
            let Some(item) = stream.next().await else {
                break None;
            };
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        emit(lines.push(s.as_bytes()), on_line);
                    }
                    if let Some(s) = info.status {
                        emit(lines.finish().into_iter().collect(), on_line);
                        on_line(s.trim_end());
                    }
                    if let Some(aux) = info.aux.and_then(|a| a.id) {
                        id = Some(aux);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    break Some(BuildCallError::Failed(error.trim_end().to_string()))
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    break Some(BuildCallError::Failed(message.trim_end().to_string()))
                }
                Err(e) => break Some(self.failure("the build", e).into()),
            }
        };
        emit(lines.finish().into_iter().collect(), on_line);
        match failed {
            Some(e) => Err(e),
            None => Ok(id),
        }
    }

    async fn download(&self, container: &str, path: &str) -> Result<Option<Body>, EngineError> {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self.docker.download_from_container(container, Some(opts));
        let first = match stream.next().await {
            None => Bytes::new(),
            Some(Ok(b)) => b,
            Some(Err(e)) if status_of(&e) == Some(404) => return Ok(None),
            Some(Err(e)) => return Err(self.failure(&format!("the copy of {path}"), e)),
        };
        let rest = stream.map_err(io::Error::other);
        let body: Body = Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest));
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn lines_span_chunks() {
        let seen = Mutex::new(Vec::new());
        let on_line = |l: &str| seen.lock().unwrap().push(l.to_string());
        let mut lines = Lines::default();
        emit(lines.push(b"Step 1/2 : FR"), &on_line);
        emit(lines.push(b"OM x\n ---> abc\r\n\npartial"), &on_line);
        emit(lines.finish().into_iter().collect(), &on_line);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["Step 1/2 : FROM x", " ---> abc", "partial"]
        );
    }
}
