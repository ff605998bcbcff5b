//! The Docker Engine: every call docker_release makes to it, behind narrow traits, with one
//! mapping of its errors.
//!
//! - [`Engine`] (`images.rs`): the engine's platform, load an archive, inspect, tag, look up and
//!   remove a tag, the layers an image has, export an image: what the engine sink and base
//!   images need;
//! - [`ContainerEngine`] (`containers.rs`): temporary containers (create, attach, start, upload,
//!   exec, remove), cache volumes, and the lifecycle both the builder and the Dockerfile flow
//!   share: the labels every temporary container carries, its owner, [`sweep_leftovers`] and
//!   the [`Temporary`] guard that removes a container however its user ends;
//! - [`BuildEngine`] (`build.rs`): `docker build` and copying a path out of a container, for
//!   the Dockerfile flow.
//!
//! [`DockerEngine`] implements all three with bollard, over `transport.rs` (Unix socket, TCP,
//! TLS, `ssh`), every request bounded in silence ([`crate::stall`]); tests swap in fakes.
//! Where the engine is comes from [`endpoint`]. Every failed bollard call becomes an
//! [`EngineError`] through one function (`DockerEngine::failure`): a stall, a 5xx, a refusal, or a broken
//! connection.

mod build;
mod connect;
mod containers;
pub mod endpoint;
mod images;
pub(crate) mod transport;

pub use build::{BuildCallError, BuildEngine, BuildSpec};
pub use containers::{
    owner, sweep_leftovers, ContainerEngine, ContainerSpec, Containers, ExecSpec, ImageInfo,
    LabelledContainer, Output, OutputStream, StdinHold, Temporary, LABEL_OWNER, LABEL_TEMPORARY,
};
pub use endpoint::{check_endpoint, resolve_endpoint, Endpoint, DEFAULT_SOCKET};
pub use images::Engine;

use crate::error::{chain, Reason};
use crate::stall::{find_stalled, Stalled, HOW_TO_CHANGE};
use bollard::Docker;
use bytes::Bytes;
use futures_util::Stream;
use std::io;

/// Errors talking to the engine. Each maps to a reason atom on the Elixir side.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's address is not usable.
    #[error("{0}")]
    Config(String),
    /// The engine did not answer.
    #[error("the Docker engine at {endpoint} did not answer ({cause}); start it ({}), or pass --output PATH to write an archive instead", hints(.endpoint).start)]
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
    #[error("the Docker engine at {endpoint} failed {action}: it answered {status} ({message}); check the engine's log ({})", hints(.endpoint).log)]
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
    #[error("{stalled}, while {action}: the engine is hung or overloaded; check it (`{} info`, the engine's log) and retry; {HOW_TO_CHANGE}", hints(&.stalled.peer).cli)]
    Stalled {
        /// What we were doing.
        action: String,
        /// Who, which request, how long.
        stalled: Stalled,
    },
    /// The connection broke during a request (not a load).
    #[error("the connection to the Docker engine at {endpoint} broke during {action} ({cause}); check that the engine is still running (`{} info`) and its log", hints(.endpoint).cli)]
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

/// What a person types to check, start and read the log of the engine at `endpoint` (before
/// the engine has said what it is): Podman's when the address names it (its sockets are
/// `/run/podman/podman.sock` and `$XDG_RUNTIME_DIR/podman/podman.sock`), else Docker's. Podman
/// behind `/var/run/docker.sock` comes with podman-docker, whose `docker` command serves.
pub(crate) struct Hints {
    /// The command-line tool: `docker` or `podman`.
    pub cli: &'static str,
    /// How to start the engine.
    pub start: &'static str,
    /// Where its log is.
    pub log: &'static str,
}

/// See [`Hints`].
pub(crate) fn hints(endpoint: &str) -> Hints {
    if !endpoint.contains("podman") {
        return Hints {
            cli: "docker",
            start: "`sudo systemctl start docker` or `dockerd`",
            log: "`journalctl -u docker`, or dockerd's output",
        };
    }
    if endpoint.contains("/run/user/") {
        Hints {
            cli: "podman",
            start: "`systemctl --user start podman.socket`, or `podman system service --time=0`",
            log: "`journalctl --user -u podman`, or `podman system service`'s output",
        }
    } else {
        Hints {
            cli: "podman",
            start: "`sudo systemctl start podman.socket`, or `sudo podman system service --time=0`",
            log: "`journalctl -u podman`, or `podman system service`'s output",
        }
    }
}

/// A request or answer body streamed to or from the engine.
pub type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

impl EngineError {
    /// The reason the Elixir side matches on.
    pub fn reason(&self) -> Reason {
        match self {
            EngineError::Config(_) => Reason::EngineConfig,
            EngineError::Unreachable { .. } | EngineError::Ssh { .. } => Reason::EngineUnreachable,
            EngineError::Api { .. } | EngineError::Failed { .. } | EngineError::Broken { .. } => {
                Reason::EngineError
            }
            EngineError::Stalled { .. } => Reason::EngineStalled,
            EngineError::Load(_) => Reason::LoadFailed,
            EngineError::Platform { .. } => Reason::PlatformMismatch,
        }
    }

    /// Whether the engine went silent (the caller's own reason may differ otherwise).
    pub fn is_stall(&self) -> bool {
        matches!(self, EngineError::Stalled { .. })
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
    /// The engine's `os/arch` and kind, once asked (they do not change while we talk to it).
    version: tokio::sync::OnceCell<(String, EngineKind)>,
}

/// Which engine answers the Docker API: the CLI a person uses with it differs (`docker run`,
/// `podman run`), and so do a few of its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Docker Engine (dockerd), or anything that does not say it is another.
    Docker,
    /// Podman's Docker-compatible API (`podman system service`).
    Podman,
}

impl EngineKind {
    /// The kind an engine's `GET /version` answer names: Podman lists a component
    /// `"Podman Engine"` (4.x) and names its platform `"… Podman …"` in some versions.
    pub fn of_version(v: &bollard::models::SystemVersion) -> EngineKind {
        let podman = |name: &str| name.to_ascii_lowercase().contains("podman");
        let by_component = v.components.iter().flatten().any(|c| podman(&c.name));
        let by_platform = v.platform.as_ref().is_some_and(|p| podman(&p.name));
        if by_component || by_platform {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        }
    }

    /// The command-line tool people use with this engine: `docker` or `podman`.
    pub fn cli(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }
}

impl DockerEngine {
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

/// The HTTP status of an engine's error answer.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hints_follow_the_engine_the_address_names() {
        let docker = hints("unix:///var/run/docker.sock");
        assert_eq!(docker.cli, "docker");
        assert!(docker.start.contains("systemctl start docker"));
        let user = hints("unix:///run/user/1000/podman/podman.sock");
        assert_eq!(user.cli, "podman");
        assert!(user.start.contains("systemctl --user start podman.socket"));
        assert!(user.log.contains("journalctl --user -u podman"));
        let root = hints("unix:///run/podman/podman.sock");
        assert!(root.start.contains("sudo systemctl start podman.socket"));
    }

    #[test]
    fn messages_name_podman_commands_for_a_podman_socket() {
        let endpoint = "unix:///run/user/1000/podman/podman.sock".to_string();
        let unreachable = EngineError::Unreachable {
            endpoint: endpoint.clone(),
            cause: "connection refused".into(),
        }
        .to_string();
        assert!(unreachable.contains("podman.socket"), "{unreachable}");
        assert!(!unreachable.contains("dockerd"), "{unreachable}");
        let broken = EngineError::Broken {
            endpoint: endpoint.clone(),
            action: "listing images".into(),
            cause: "reset".into(),
        }
        .to_string();
        assert!(broken.contains("`podman info`"), "{broken}");
        let stalled = EngineError::Stalled {
            action: "loading the image".into(),
            stalled: Stalled {
                peer: format!("the Docker engine at {endpoint}"),
                request: "POST /images/load".into(),
                waited: Duration::from_secs(300),
                detail: String::new(),
            },
        }
        .to_string();
        assert!(stalled.contains("`podman info`"), "{stalled}");
        let failed = EngineError::Failed {
            endpoint: "unix:///var/run/docker.sock".into(),
            action: "tagging".into(),
            status: 500,
            message: "boom".into(),
        }
        .to_string();
        assert!(failed.contains("journalctl -u docker"), "{failed}");
    }
}
