//! The Docker Engine, behind a narrow trait.
//!
//! docker_release uses six engine calls: the engine's platform, load an archive stream, tag an
//! image, inspect it, and, to put tags back after a failed run, look up and remove a tag.
//! [`Engine`] names exactly those, so tests can swap in a fake;
//! [`DockerEngine`] implements them with bollard, over [`crate::transport`] (Unix socket, TCP,
//! TLS, `ssh`), every request bounded in silence ([`crate::stall`]).
//!
//! Where the engine is, resolved like the docker CLI does ([`resolve_endpoint`]):
//!
//! 1. `DOCKER_HOST`: `unix:///path`, `tcp://host:port` (TLS when `DOCKER_TLS_VERIFY` is set:
//!    `ca.pem`, `cert.pem` and `key.pem` from `DOCKER_CERT_PATH`, default `~/.docker`), or
//!    `ssh://[user@]host[:port]` (through `ssh HOST docker system dial-stdio`);
//! 2. else the current Docker context (`DOCKER_CONTEXT`, else `currentContext` of
//!    `$DOCKER_CONFIG/config.json`), with the context's TLS files if it has them;
//! 3. else the default socket, `/var/run/docker.sock`.
//!
//! Only the last, implicit choice may be missing ([`Endpoint::Missing`]: no engine on this
//! machine, and the caller may write an archive instead). An endpoint named explicitly that
//! does not exist is an error: a CI job that set `DOCKER_HOST` wants that engine.

use crate::stall::{find_stalled, Stalled, DEFAULT_STALL, HOW_TO_CHANGE};
use crate::transport::{chain, Dial, Transport};
use bollard::query_parameters::{ImportImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket that exists.
    Unix(PathBuf),
    /// A TCP endpoint (`tcp://host:port`).
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// Port.
        port: u16,
        /// TLS, with the certificates of this directory (`ca.pem`, optional `cert.pem` and
        /// `key.pem`); `None` for plain HTTP.
        tls: Option<PathBuf>,
    },
    /// An engine reached over ssh (`ssh://[user@]host[:port]`): `ssh` runs
    /// `docker system dial-stdio` there.
    Ssh {
        /// User name, if given.
        user: Option<String>,
        /// Host.
        host: String,
        /// Port, if given.
        port: Option<u16>,
    },
    /// The default socket does not exist, and nothing else was configured: there is no engine
    /// on this machine.
    Missing(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) | Endpoint::Missing(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { host, port, tls } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(f, "tcp://{host}:{port}")?;
                if tls.is_some() {
                    write!(f, " (TLS)")?;
                }
                Ok(())
            }
            Endpoint::Ssh { user, host, port } => {
                write!(f, "ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{host}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// The default engine socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Where an endpoint's address came from, for messages.
enum Origin {
    DockerHost,
    Context(String),
    Default,
}

impl Origin {
    fn describe(&self, host: &str) -> String {
        match self {
            Origin::DockerHost => format!("DOCKER_HOST is {host}"),
            Origin::Context(name) => format!("the Docker context {name:?} points at {host}"),
            Origin::Default => format!("the default engine address is {host}"),
        }
    }

    fn fix(&self) -> &'static str {
        match self {
            Origin::DockerHost => "correct DOCKER_HOST, or unset it to use the default socket",
            Origin::Context(_) => "run `docker context use default`, or set DOCKER_HOST",
            Origin::Default => "start the engine, or set DOCKER_HOST",
        }
    }
}

/// Resolve the endpoint: `DOCKER_HOST`, else the current Docker context, else the default
/// socket (see the module documentation). An explicitly named endpoint must be usable: a
/// socket that does not exist, an unknown scheme or missing TLS files are errors here, before
/// any work.
///
/// `env` looks up an environment variable (tests pass a map; production `std::env::var`).
pub fn resolve_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Result<Endpoint, EngineError> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    let (host, origin, context_tls) = match set("DOCKER_HOST") {
        Some(h) => (h, Origin::DockerHost, None),
        None => match context_host(env)? {
            Some((name, h, tls)) => (h, Origin::Context(name), tls),
            None => (format!("unix://{DEFAULT_SOCKET}"), Origin::Default, None),
        },
    };
    let bad = |problem: String| {
        EngineError::Config(format!(
            "{}: {problem}; {}",
            origin.describe(&host),
            origin.fix()
        ))
    };
    if let Some(path) = host.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        return match (path.exists(), &origin) {
            (true, _) => Ok(Endpoint::Unix(path)),
            (false, Origin::Default) => Ok(Endpoint::Missing(path)),
            (false, _) => Err(bad(format!(
                "{} does not exist (is the engine running there?)",
                path.display()
            ))),
        };
    }
    if let Some(rest) = host.strip_prefix("ssh://") {
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, rest),
        };
        if hostport.contains('/') && !hostport.ends_with('/') {
            return Err(bad(
                "an ssh:// address takes no path: ssh://[user@]host[:port]".into(),
            ));
        }
        let (h, port) = split_host_port(hostport.trim_end_matches('/'))
            .map_err(|e| bad(format!("{e}: ssh://[user@]host[:port]")))?;
        return Ok(Endpoint::Ssh {
            user,
            host: h,
            port,
        });
    }
    let (rest, https) = if let Some(r) = host.strip_prefix("tcp://") {
        (r, false)
    } else if let Some(r) = host.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = host.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(bad(
            "unsupported engine address: use unix:///path/to/docker.sock, tcp://host:port or ssh://[user@]host".into(),
        ));
    };
    let (h, port) = split_host_port(rest.trim_end_matches('/'))
        .map_err(|e| bad(format!("{e}: tcp://host:port")))?;
    let verify = set("DOCKER_TLS_VERIFY").is_some();
    let tls_dir = if verify || https {
        Some(match set("DOCKER_CERT_PATH") {
            Some(d) => PathBuf::from(d),
            None => docker_config_dir(env).unwrap_or_else(|| PathBuf::from(".docker")),
        })
    } else if let Some(dir) = context_tls {
        Some(dir)
    } else if set("DOCKER_TLS").is_some() {
        return Err(bad("DOCKER_TLS asks for TLS without checking the engine's certificate, which docker_release does not do: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to a directory with ca.pem (and cert.pem, key.pem)".into()));
    } else {
        None
    };
    if let Some(dir) = &tls_dir {
        check_tls_files(dir).map_err(bad)?;
    }
    let port = port.unwrap_or(if tls_dir.is_some() { 2376 } else { 2375 });
    Ok(Endpoint::Tcp {
        host: h,
        port,
        tls: tls_dir,
    })
}

/// `host`, `host:port`, `[v6]:port` → host (without brackets) and port.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?} has an unclosed ["))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))?,
        ),
    };
    Ok((host, port))
}

/// The TLS files a directory must hold: `ca.pem`, and `cert.pem` with `key.pem` or neither.
fn check_tls_files(dir: &Path) -> Result<(), String> {
    let ca = dir.join("ca.pem");
    if !ca.is_file() {
        return Err(format!(
            "TLS is on (DOCKER_TLS_VERIFY) but {} does not exist: set DOCKER_CERT_PATH to the directory with the engine's ca.pem, cert.pem and key.pem",
            ca.display()
        ));
    }
    match (
        dir.join("cert.pem").is_file(),
        dir.join("key.pem").is_file(),
    ) {
        (true, false) | (false, true) => Err(format!(
            "{} holds only one of cert.pem and key.pem: a client certificate needs both",
            dir.display()
        )),
        _ => Ok(()),
    }
}

fn docker_config_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => env("HOME").map(|h| Path::new(&h).join(".docker")),
    }
}

/// The current context's name, engine address and TLS directory, unless it is `default`.
fn context_host(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String, Option<PathBuf>)>, EngineError> {
    let Some(config_dir) = docker_config_dir(env) else {
        return Ok(None);
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
    let meta = config_dir.join("contexts/meta").join(&id).join("meta.json");
    let bytes = std::fs::read(&meta).map_err(|e| {
        EngineError::Config(format!(
            "Docker context {name:?} is selected but {} cannot be read ({e}); run `docker context use default` or set DOCKER_HOST",
            meta.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Config(format!("{} is not valid JSON: {e}", meta.display())))?;
    let Some(host) = json
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
    else {
        return Ok(None);
    };
    if json.pointer("/Endpoints/docker/SkipTLSVerify") == Some(&serde_json::Value::Bool(true)) {
        return Err(EngineError::Config(format!(
            "the Docker context {name:?} skips checking the engine's TLS certificate (SkipTLSVerify), which docker_release does not do: give the context the engine's CA (`docker context update --docker \"host=…,ca=…,cert=…,key=…\"`)"
        )));
    }
    let tls = config_dir.join("contexts/tls").join(&id).join("docker");
    let tls = tls.join("ca.pem").is_file().then_some(tls);
    Ok(Some((name, host.to_string(), tls)))
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
    /// The engine could not be reached over ssh.
    #[error("cannot reach the Docker engine at {endpoint} over ssh ({cause}): check that `ssh {target} docker version` works without a prompt (a key in ssh-agent or ~/.ssh/config, the host in known_hosts) and that the remote user may use docker")]
    Ssh {
        /// Where.
        endpoint: String,
        /// `[-p port] [user@]host`, for the command to try.
        target: String,
        /// What happened (ssh's own words when it said something).
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
    /// The engine failed a request (it answered 5xx): it is there, but broken.
    #[error("the Docker engine at {endpoint} failed {action}: it answered {status} ({message}); check the engine's log (`journalctl -u docker`, or dockerd's output)")]
    Failed {
        /// Where.
        endpoint: String,
        /// What we asked.
        action: String,
        /// The HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine went silent during a request (see [`crate::stall`]).
    #[error("{stalled}, while {action}: the engine is hung or overloaded; check it (`docker info`, the engine's log) and retry; {HOW_TO_CHANGE}")]
    Stalled {
        /// What we were doing.
        action: String,
        /// Who, which request, how long.
        stalled: Stalled,
    },
    /// The connection broke during a request (not a load).
    #[error("the connection to the Docker engine at {endpoint} broke during {action} ({cause}); check that the engine is still running (`docker info`) and its log")]
    Broken {
        /// Where.
        endpoint: String,
        /// What we asked.
        action: String,
        /// What happened.
        cause: String,
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

impl EngineError {
    /// The reason atom of the Elixir side.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::Config(_) => "engine_config",
            EngineError::Unreachable { .. } | EngineError::Ssh { .. } => "engine_unreachable",
            EngineError::Api { .. } | EngineError::Failed { .. } | EngineError::Broken { .. } => {
                "engine_error"
            }
            EngineError::Stalled { .. } => "engine_stalled",
            EngineError::Load(_) => "load_failed",
            EngineError::Platform { .. } => "platform_mismatch",
        }
    }
}

/// The [`Stalled`] inside a bollard error, if the request failed by going silent.
pub(crate) fn stalled_in(e: &bollard::errors::Error) -> Option<&Stalled> {
    match e {
        bollard::errors::Error::IOError { err } => find_stalled(err).or_else(|| find_stalled(e)),
        other => find_stalled(other),
    }
}

/// The real engine, over bollard.
pub struct DockerEngine {
    pub(crate) docker: Docker,
    endpoint: String,
}

/// bollard's own limit on the time to an answer's headers, set out of reach: the bound that
/// matters is on silence ([`crate::stall`]), and a healthy load of a large image may take
/// longer than any fixed total.
const NO_TOTAL_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

impl DockerEngine {
    /// Connect to `endpoint` with the default bound on silence ([`DEFAULT_STALL`]).
    pub async fn connect(endpoint: &Endpoint) -> Result<DockerEngine, EngineError> {
        DockerEngine::connect_with(endpoint, DEFAULT_STALL).await
    }

    /// Connect to `endpoint` and negotiate the API version; every request of the engine
    /// fails when nothing moves on its connection for `stall`.
    pub async fn connect_with(
        endpoint: &Endpoint,
        stall: Duration,
    ) -> Result<DockerEngine, EngineError> {
        let name = endpoint.to_string();
        let unreachable = |cause: String| EngineError::Unreachable {
            endpoint: name.clone(),
            cause,
        };
        let (dial, host) = match endpoint {
            Endpoint::Unix(p) => (Dial::Unix(p.clone()), "docker".to_string()),
            Endpoint::Tcp {
                host,
                port,
                tls: None,
            } => (Dial::Tcp(format!("{}:{port}", bracket(host))), host.clone()),
            Endpoint::Tcp {
                host,
                port,
                tls: Some(dir),
            } => (
                Dial::Tls {
                    addr: format!("{}:{port}", bracket(host)),
                    name: rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                        EngineError::Config(format!(
                            "{host:?} cannot be checked against a TLS certificate: {e}"
                        ))
                    })?,
                    config: Arc::new(tls_config(dir)?),
                },
                host.clone(),
            ),
            Endpoint::Ssh { user, host, port } => {
                // As the Docker CLI: `ssh [-l user] [-p port] -- host docker system dial-stdio`.
                let mut args: Vec<String> =
                    vec!["-o".into(), "ConnectTimeout=30".into(), "-T".into()];
                if let Some(u) = user {
                    args.extend(["-l".into(), u.clone()]);
                }
                if let Some(p) = port {
                    args.extend(["-p".into(), p.to_string()]);
                }
                args.extend(["--".into(), host.clone()]);
                args.extend(["docker", "system", "dial-stdio"].map(String::from));
                (
                    Dial::Command {
                        program: "ssh".into(),
                        args,
                    },
                    "docker".to_string(),
                )
            }
            Endpoint::Missing(p) => {
                return Err(unreachable(format!("{} does not exist", p.display())))
            }
        };
        let transport = Arc::new(Transport::new(
            dial,
            format!("the Docker engine at {name}"),
            &host,
            stall,
        ));
        let docker = Docker::connect_with_custom_transport(
            move |req| transport.clone().send(req),
            Some("http://docker"),
            NO_TOTAL_TIMEOUT_SECS,
            API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(chain(&e)))?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            let answered = matches!(e, bollard::errors::Error::DockerResponseServerError { .. });
            if answered || stalled_in(&e).is_some() {
                return failure(&name, "connecting", e);
            }
            let cause = bollard_chain(&e);
            match endpoint {
                Endpoint::Tcp { tls: Some(dir), .. } => tls_refused(&name, dir, cause),
                Endpoint::Ssh { user, host, port } => EngineError::Ssh {
                    endpoint: name.clone(),
                    target: format!(
                        "{}{}{host}",
                        port.map(|p| format!("-p {p} ")).unwrap_or_default(),
                        user.as_ref().map(|u| format!("{u}@")).unwrap_or_default()
                    ),
                    cause,
                },
                _ => unreachable(cause),
            }
        })?;
        Ok(DockerEngine {
            docker,
            endpoint: name,
        })
    }

    /// The endpoint this engine was reached at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The error for a failed call: a stall, a 5xx, a refusal (4xx), or a broken connection.
    pub(crate) fn failure(&self, action: &str, e: bollard::errors::Error) -> EngineError {
        failure(&self.endpoint, action, e)
    }
}

/// See [`DockerEngine::failure`].
pub(crate) fn failure(endpoint: &str, action: &str, e: bollard::errors::Error) -> EngineError {
    if let Some(stalled) = stalled_in(&e) {
        return EngineError::Stalled {
            action: action.to_string(),
            stalled: stalled.clone(),
        };
    }
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } if status_code >= 500 => EngineError::Failed {
            endpoint: endpoint.to_string(),
            action: action.to_string(),
            status: status_code,
            message,
        },
        bollard::errors::Error::DockerResponseServerError { message, .. } => EngineError::Api {
            action: action.to_string(),
            message,
        },
        other => EngineError::Broken {
            endpoint: endpoint.to_string(),
            action: action.to_string(),
            cause: bollard_chain(&other),
        },
    }
}

/// A bollard error and its causes as text.
pub(crate) fn bollard_chain(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::IOError { err } => chain(err),
        other => chain(other),
    }
}

/// The error for a TLS engine that refused the connection after the handshake (TLS 1.3 reports
/// a refused client certificate only then), or one whose TLS failed otherwise.
fn tls_refused(endpoint: &str, dir: &Path, cause: String) -> EngineError {
    let hint = if cause.contains("CertificateRequired") {
        format!(
            "the engine requires a client certificate: put cert.pem and key.pem beside ca.pem in {} (DOCKER_CERT_PATH)",
            dir.display()
        )
    } else if cause.contains("alert") {
        format!(
            "the engine refused our client certificate: cert.pem in {} must be signed by a CA the engine trusts (its --tlscacert)",
            dir.display()
        )
    } else if cause.contains("TLS handshake") {
        String::new()
    } else {
        return EngineError::Unreachable {
            endpoint: endpoint.to_string(),
            cause,
        };
    };
    let hint = if hint.is_empty() {
        hint
    } else {
        format!(": {hint}")
    };
    EngineError::Config(format!(
        "the TLS connection to the Docker engine at {endpoint} failed ({cause}){hint}"
    ))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The TLS client configuration of a `DOCKER_CERT_PATH`-style directory: trust `ca.pem` only
/// (the engine's own CA, as the Docker CLI does), present `cert.pem`/`key.pem` when there.
fn tls_config(dir: &Path) -> Result<rustls::ClientConfig, EngineError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |file: &str, problem: String| {
        EngineError::Config(format!(
            "cannot use {} for TLS to the engine: {problem}",
            dir.join(file).display()
        ))
    };
    let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| bad(file, e.to_string()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read("ca.pem")?) {
        let cert = cert.map_err(|e| bad("ca.pem", format!("it is not valid PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| bad("ca.pem", format!("a certificate in it is invalid ({e})")))?;
    }
    if roots.is_empty() {
        return Err(bad("ca.pem", "it holds no CERTIFICATE block".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let mut config = if dir.join("cert.pem").is_file() {
        let certs = CertificateDer::pem_slice_iter(&read("cert.pem")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("cert.pem", format!("it is not valid PEM ({e})")))?;
        let key = PrivateKeyDer::from_pem_slice(&read("key.pem")?)
            .map_err(|e| bad("key.pem", format!("it holds no usable private key ({e})")))?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad("cert.pem", format!("it does not go with key.pem ({e})")))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each engine request is its own connection (transport.rs), so a resumed session would be
    // offered on every one after the first. TLS servers on OpenSSL that verify client
    // certificates without a session ID context (socat, some proxies) refuse a resumption
    // with a fatal alert; full handshakes work everywhere, for about a millisecond each here.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

impl Engine for DockerEngine {
    async fn platform(&self) -> Result<String, EngineError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.failure("the version query", e))?;
        Ok(format!(
            "{}/{}",
            v.os.unwrap_or_else(|| "linux".into()),
            v.arch.unwrap_or_else(|| "amd64".into())
        ))
    }

    async fn load(&self, body: Body) -> Result<String, EngineError> {
        // Not quiet: the engine reports progress while it unpacks the layers after the upload,
        // so a healthy engine is never silent for long (see `crate::stall`).
        let opts = ImportImageOptionsBuilder::default().quiet(false).build();
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
                    if let Some(stalled) = stalled_in(&e) {
                        return Err(EngineError::Stalled {
                            action: "loading the image".into(),
                            stalled: stalled.clone(),
                        });
                    }
                    return Err(EngineError::Load(format!(
                        "the engine closed the connection during the upload ({}); check the engine's log (`journalctl -u docker`, or dockerd's output) and its free disk space",
                        bollard_chain(&e)
                    )));
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
            .map_err(|e| self.failure(&action, e))
    }

    async fn inspect(&self, id: &str) -> Result<(String, u64), EngineError> {
        let i = self
            .docker
            .inspect_image(id)
            .await
            .map_err(|e| self.failure("the image inspection", e))?;
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
            Err(e) => Err(self.failure(&format!("looking up {name}"), e)),
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
            .map_err(|e| self.failure(&format!("removing the tag {name}"), e))
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
    fn an_explicit_docker_host_must_exist_the_default_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nope.sock");
        let e = env(HashMap::from([(
            "DOCKER_HOST",
            format!("unix://{}", sock.display()),
        )]));
        let err = resolve_endpoint(&e).unwrap_err().to_string();
        assert!(err.contains("DOCKER_HOST is unix://"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        // Nothing configured: the default socket, which may be missing (then: an archive).
        let e = env(HashMap::from([("HOME", dir.path().display().to_string())]));
        let ep = resolve_endpoint(&e).unwrap();
        assert_eq!(ep.to_string(), format!("unix://{DEFAULT_SOCKET}"));
    }

    #[test]
    fn tcp_ssh_and_tls_addresses() {
        let e = env(HashMap::from([("DOCKER_HOST", "tcp://127.0.0.1:1".into())]));
        assert_eq!(
            resolve_endpoint(&e).unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
                tls: None
            }
        );
        let e = env(HashMap::from([(
            "DOCKER_HOST",
            "ssh://me@build.example:2222".into(),
        )]));
        assert_eq!(
            resolve_endpoint(&e).unwrap(),
            Endpoint::Ssh {
                user: Some("me".into()),
                host: "build.example".into(),
                port: Some(2222)
            }
        );
        let e = env(HashMap::from([("DOCKER_HOST", "ssh://host/path".into())]));
        assert!(resolve_endpoint(&e)
            .unwrap_err()
            .to_string()
            .contains("no path"));
        let e = env(HashMap::from([(
            "DOCKER_HOST",
            "npipe:////./pipe/x".into(),
        )]));
        assert!(resolve_endpoint(&e).is_err());

        // DOCKER_TLS_VERIFY: the certificates must be there, before any connection.
        let dir = tempfile::tempdir().unwrap();
        let tls = |extra: Vec<(&'static str, String)>| {
            let mut m = HashMap::from([
                ("DOCKER_HOST", "tcp://docker:2376".to_string()),
                ("DOCKER_TLS_VERIFY", "1".to_string()),
                ("DOCKER_CERT_PATH", dir.path().display().to_string()),
            ]);
            m.extend(extra);
            resolve_endpoint(&env(m))
        };
        let err = tls(vec![]).unwrap_err().to_string();
        assert!(err.contains("ca.pem does not exist"), "{err}");
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
        let err = tls(vec![]).unwrap_err().to_string();
        assert!(err.contains("only one of cert.pem and key.pem"), "{err}");
        std::fs::write(dir.path().join("key.pem"), "x").unwrap();
        assert_eq!(
            tls(vec![]).unwrap(),
            Endpoint::Tcp {
                host: "docker".into(),
                port: 2376,
                tls: Some(dir.path().to_path_buf())
            }
        );
        // TLS without verification is refused, not silently done.
        let e = env(HashMap::from([
            ("DOCKER_HOST", "tcp://docker:2376".to_string()),
            ("DOCKER_TLS", "1".to_string()),
        ]));
        assert!(resolve_endpoint(&e)
            .unwrap_err()
            .to_string()
            .contains("DOCKER_TLS_VERIFY=1"));
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
        let ci_missing = cfg.join("gone.sock");
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
        // A context whose socket is gone is an error, not "no engine".
        std::fs::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"ci","Endpoints":{{"docker":{{"Host":"unix://{}"}}}}}}"#,
                ci_missing.display()
            ),
        )
        .unwrap();
        let err = resolve_endpoint(&e).unwrap_err().to_string();
        assert!(err.contains("the Docker context \"ci\" points at"), "{err}");
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
