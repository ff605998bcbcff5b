//! The Docker Engine, behind a narrow trait.
//!
//! docker_release uses six engine calls: the engine's platform, load an archive stream, tag an
//! image, inspect it, and, to put tags back after a failed run, look up and remove a tag.
//! [`Engine`] names exactly those, so tests can swap in a fake;
//! [`DockerEngine`] implements them with bollard.

use bollard::query_parameters::{ImportImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the engine is, resolved like the docker CLI does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket that exists.
    Unix(PathBuf),
    /// A TCP endpoint (`tcp://host:port`).
    Tcp(String),
    /// The socket the configuration names does not exist: there is no engine on this machine.
    Missing(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) | Endpoint::Missing(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(u) => write!(f, "{u}"),
        }
    }
}

/// The default engine socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Resolve the endpoint: `DOCKER_HOST`, else the current Docker context (`DOCKER_CONTEXT`, else
/// `currentContext` in `$DOCKER_CONFIG/config.json`), else the default socket.
///
/// `env` looks up an environment variable (tests pass a map; production `std::env::var`).
pub fn resolve_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Result<Endpoint, EngineError> {
    let host = match env("DOCKER_HOST").filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => context_host(env)?.unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}")),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        return Ok(if path.exists() {
            Endpoint::Unix(path)
        } else {
            Endpoint::Missing(path)
        });
    }
    if host.starts_with("tcp://") || host.starts_with("http://") {
        return Ok(Endpoint::Tcp(host));
    }
    Err(EngineError::Config(format!(
        "unsupported engine address {host:?}: use unix:///path/to/docker.sock or tcp://host:port"
    )))
}

fn context_host(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, EngineError> {
    let config_dir = match env("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => match env("HOME") {
            Some(h) => Path::new(&h).join(".docker"),
            None => return Ok(None),
        },
    };
    let name = match env("DOCKER_CONTEXT") {
        Some(n) => n,
        None => {
            let Ok(bytes) = std::fs::read(config_dir.join("config.json")) else {
                return Ok(None);
            };
            let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                EngineError::Config(format!(
                    "{} is not valid JSON: {e}",
                    config_dir.join("config.json").display()
                ))
            })?;
            match json.get("currentContext").and_then(|c| c.as_str()) {
                Some(n) => n.to_string(),
                None => return Ok(None),
            }
        }
    };
    if name.is_empty() || name == "default" {
        return Ok(None);
    }
    let id = image_core::digest::Digest::of(name.as_bytes()).hex();
    let meta = config_dir.join("contexts/meta").join(id).join("meta.json");
    let bytes = std::fs::read(&meta).map_err(|e| {
        EngineError::Config(format!(
            "Docker context {name:?} is selected but {} cannot be read ({e}); run `docker context use default` or set DOCKER_HOST",
            meta.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Config(format!("{} is not valid JSON: {e}", meta.display())))?;
    Ok(json
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
        .map(str::to_string))
}

/// Errors talking to the engine. Each maps to a reason atom on the Elixir side.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's address is not usable.
    #[error("{0}")]
    Config(String),
    /// The engine did not answer.
    #[error("the Docker engine at {endpoint} did not answer ({cause}); start it (`sudo systemctl start docker` or `dockerd`), or pass --output PATH to write an archive instead")]
    Unreachable {
        /// Where we looked.
        endpoint: String,
        /// What happened.
        cause: String,
    },
    /// The engine answered with an error.
    #[error("the Docker engine refused {action}: {message}")]
    Api {
        /// What we asked.
        action: String,
        /// The engine's message.
        message: String,
    },
    /// Loading failed part-way (the engine reported an error in its response stream, or the
    /// connection broke).
    #[error("loading the image into the Docker engine failed: {0}")]
    Load(String),
    /// The engine runs another platform than the image's.
    #[error("the image is for {image} but the Docker engine runs {engine}: build the release for {engine} (in a builder container of that platform)")]
    Platform {
        /// Image platform.
        image: String,
        /// Engine platform.
        engine: String,
    },
}

/// A body stream for [`Engine::load`].
pub type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// The engine calls docker_release makes.
pub trait Engine: Send + Sync {
    /// `os/arch` of the engine, e.g. `linux/amd64`.
    fn platform(&self) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Load an image archive; returns what the engine printed.
    fn load(&self, body: Body) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Point `repo:tag` at image `id`.
    fn tag(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The image's ID and size as the engine reports them.
    fn inspect(&self, id: &str) -> impl Future<Output = Result<(String, u64), EngineError>> + Send;
    /// The ID of the image `repo:tag` points at now; `None` when there is no such tag.
    fn tagged(
        &self,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<Option<String>, EngineError>> + Send;
    /// Remove the tag `repo:tag` (the image goes too when nothing else refers to it).
    fn untag(&self, repo: &str, tag: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
}

/// The real engine, over bollard.
pub struct DockerEngine {
    pub(crate) docker: Docker,
    endpoint: String,
}

/// Load and build requests stream gigabytes; the daemon answers only at the end.
const LONG_TIMEOUT_SECS: u64 = 3600;
/// How long to wait for the engine to answer its first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl DockerEngine {
    /// Connect to `endpoint` and negotiate the API version.
    pub async fn connect(endpoint: &Endpoint) -> Result<DockerEngine, EngineError> {
        let name = endpoint.to_string();
        let unreachable = |cause: String| EngineError::Unreachable {
            endpoint: name.clone(),
            cause,
        };
        let docker = match endpoint {
            Endpoint::Unix(p) => Docker::connect_with_unix(
                &p.to_string_lossy(),
                LONG_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp(u) => {
                Docker::connect_with_http(u, LONG_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            Endpoint::Missing(p) => {
                return Err(unreachable(format!("{} does not exist", p.display())))
            }
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer in {}s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(DockerEngine {
            docker,
            endpoint: name,
        })
    }

    /// The endpoint this engine was reached at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn api(action: &str) -> impl Fn(bollard::errors::Error) -> EngineError + '_ {
    move |e| match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => EngineError::Api {
            action: action.to_string(),
            message,
        },
        other => EngineError::Load(format!("{action}: {other}")),
    }
}

impl Engine for DockerEngine {
    async fn platform(&self) -> Result<String, EngineError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(api("the version query"))?;
        Ok(format!(
            "{}/{}",
            v.os.unwrap_or_else(|| "linux".into()),
            v.arch.unwrap_or_else(|| "amd64".into())
        ))
    }

    async fn load(&self, body: Body) -> Result<String, EngineError> {
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut stream = self.docker.import_image_stream(opts, body, None);
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        out.push_str(&s);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(EngineError::Load(error))
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(EngineError::Load(message))
                }
                Err(e) => {
                    return Err(EngineError::Load(format!(
                        "the engine closed the connection during the upload ({e}); check the engine's log (`journalctl -u docker`, or dockerd's output) and its free disk space"
                    )))
                }
            }
        }
        Ok(out)
    }

    async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        let action = format!("tagging {repo}:{tag}");
        self.docker
            .tag_image(id, Some(opts))
            .await
            .map_err(api(&action))
    }

    async fn inspect(&self, id: &str) -> Result<(String, u64), EngineError> {
        let i = self
            .docker
            .inspect_image(id)
            .await
            .map_err(api("the image inspection"))?;
        Ok((
            i.id.unwrap_or_default(),
            i.size.map(|s| s.max(0) as u64).unwrap_or(0),
        ))
    }

    async fn tagged(&self, repo: &str, tag: &str) -> Result<Option<String>, EngineError> {
        let name = format!("{repo}:{tag}");
        match self.docker.inspect_image(&name).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(api(&format!("looking up {name}"))(e)),
        }
    }

    async fn untag(&self, repo: &str, tag: &str) -> Result<(), EngineError> {
        let name = format!("{repo}:{tag}");
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(true)
            .build();
        self.docker
            .remove_image(&name, Some(opts), None)
            .await
            .map(|_| ())
            .map_err(api(&format!("removing the tag {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(map: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> {
        move |k| map.get(k).cloned()
    }

    #[test]
    fn docker_host_wins_and_missing_socket_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nope.sock");
        let e = env(HashMap::from([(
            "DOCKER_HOST",
            format!("unix://{}", sock.display()),
        )]));
        assert_eq!(resolve_endpoint(&e).unwrap(), Endpoint::Missing(sock));
        let e = env(HashMap::from([("DOCKER_HOST", "tcp://127.0.0.1:1".into())]));
        assert_eq!(
            resolve_endpoint(&e).unwrap(),
            Endpoint::Tcp("tcp://127.0.0.1:1".into())
        );
        let e = env(HashMap::from([("DOCKER_HOST", "ssh://x".into())]));
        assert!(resolve_endpoint(&e).is_err());
    }

    #[test]
    fn current_context_is_read_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        std::fs::write(cfg.join("config.json"), r#"{"currentContext":"ci"}"#).unwrap();
        let id = image_core::digest::Digest::of(b"ci").hex();
        let meta = cfg.join("contexts/meta").join(id);
        std::fs::create_dir_all(&meta).unwrap();
        let sock = cfg.join("engine.sock");
        std::fs::write(&sock, b"").unwrap();
        std::fs::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"ci","Endpoints":{{"docker":{{"Host":"unix://{}"}}}}}}"#,
                sock.display()
            ),
        )
        .unwrap();
        let e = env(HashMap::from([(
            "DOCKER_CONFIG",
            cfg.display().to_string(),
        )]));
        assert_eq!(resolve_endpoint(&e).unwrap(), Endpoint::Unix(sock));
        // An explicit DOCKER_CONTEXT=default falls back to the default socket.
        let e = env(HashMap::from([
            ("DOCKER_CONFIG", cfg.display().to_string()),
            ("DOCKER_CONTEXT", "default".to_string()),
        ]));
        let ep = resolve_endpoint(&e).unwrap();
        assert!(matches!(ep, Endpoint::Unix(_) | Endpoint::Missing(_)));
        assert_eq!(ep.to_string(), format!("unix://{DEFAULT_SOCKET}"));
    }
}
