//! Registries over the OCI distribution API, in both directions, with no engine involved.
//!
//! - [`push`] (`push.rs`): an image to every repository its tags name, so the digests in the
//!   registry are the archive's digests. Blobs first (one `HEAD` per blob, an upload only for
//!   what the registry lacks), then the tags, each put back if a later step fails
//!   ([`PushedTags::undo`]);
//! - [`attach`] (`referrers.rs`): the SBOM as an OCI 1.1 referrer of a pushed image (the
//!   referrers API, or the tag-schema fallback index) and its cosign signature (`.sig` tag);
//!   with several platforms, each platform's SBOM to its manifest, and a signature on the
//!   index and on each manifest ([`subjects`]);
//! - pulling (`pull.rs`): manifests, indexes, configs and layer blobs, for base images
//!   ([`crate::base`]).
//!
//! Both go through one client (`client.rs`). Transport: plain HTTP is tried first for loopback
//! hosts (`localhost`, `127.0.0.0/8`, `::1`) and, with [`RegistryOptions::insecure`], for every
//! host; HTTPS is used otherwise, and also when such a host answers plain HTTP with something
//! that is not a registry (a TLS-only port). HTTPS trusts Mozilla's roots, the system's roots
//! and [`RegistryOptions::ca_file`]. Every request is bounded in silence ([`crate::stall`]).
//!
//! Authentication (`auth.rs`) follows the registry's `WWW-Authenticate` challenge: `Basic` sends
//! the credentials of [`credentials`]; `Bearer` fetches a token for
//! `repository:<path>:pull,push` from the realm, kept per repository for the run.

mod auth;
mod client;
pub mod credentials;
mod pull;
mod push;
mod referrers;

pub use auth::parse_challenge;
pub(crate) use pull::Puller;
pub use push::{move_tags, push, push_undoable, upload, PushOutcome, PushedTags};
pub use referrers::{attach, subjects, Attached, AttachedTo, SbomReferrer, Signed, Subject};

use crate::error::Reason;
use crate::stall::{Stalled, HOW_TO_CHANGE};
use credentials::{CredentialError, CredentialStore, PASSWORD_VAR, USERNAME_VAR};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach registries (to push or to pull).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Allow plain HTTP for every host (it is always allowed for loopback hosts).
    pub insecure: bool,
    /// A PEM file of extra CA certificates to trust for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Where credentials come from; `None` reads the process environment
    /// ([`CredentialStore::from_env`]).
    pub credentials: Option<CredentialStore>,
    /// How long a request may go without progress (no upload bytes taken, no answer, no
    /// byte of the answer's body) before it fails; `None` for [`DEFAULT_STALL`]. Credential
    /// helpers get as long.
    pub stall_timeout: Option<Duration>,
}

/// A request that makes no progress for this long fails (a registry or proxy that stopped
/// reading or answering would otherwise hang the push for ever); see [`crate::stall`].
pub use crate::stall::DEFAULT_STALL;

/// Why a push failed. Each variant has a [`reason`](RegistryError::reason) for the Elixir side and a
/// message that says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A tag names no registry host.
    #[error("cannot push {tag}: the tag names no registry; give the registry host: --tag registry.example.com/team/app:1")]
    NoRegistry {
        /// The tag as given.
        tag: String,
    },
    /// The registry refused access, after the credentials found were tried.
    #[error("the registry at {host} {problem} for {path}: run `docker login {host}` or set {USERNAME_VAR} and {PASSWORD_VAR}")]
    Unauthorized {
        /// Registry host.
        host: String,
        /// Repository path.
        path: String,
        /// What the registry did (`refused the credentials`, ...).
        problem: String,
    },
    /// 404 for something that must exist.
    #[error("{url} answered 404 Not Found{detail}: check the registry host and repository name")]
    NotFound {
        /// The request URL.
        url: String,
        /// The registry's explanation, `: …`, or empty.
        detail: String,
    },
    /// The registry failed (5xx).
    #[error("the registry at {host} failed: {url} answered {status}{detail}; retry later or check the registry's logs")]
    Server {
        /// Registry host.
        host: String,
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// An excerpt of the answer, `: …`, or empty.
        detail: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("cannot talk to {host}: {cause}{hint}")]
    Connection {
        /// The host (the registry or its token service).
        host: String,
        /// The underlying error chain.
        cause: String,
        /// What to check, `; …`, or empty.
        hint: &'static str,
    },
    /// The registry (or its token service) went silent: see [`crate::stall`].
    #[error(
        "{stalled}: check the registry (and any proxy in between), then retry; {HOW_TO_CHANGE}"
    )]
    Stalled {
        /// Who, during what, for how long.
        stalled: Stalled,
    },
    /// The registry answered something the protocol does not allow.
    #[error("unexpected answer from the registry: {url} {problem}")]
    Protocol {
        /// The request URL.
        url: String,
        /// What was wrong.
        problem: String,
    },
    /// A layer blob could not be read.
    #[error("cannot read layer blob {path}: {source}; build the image again")]
    Io {
        /// The blob file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The CA file is unusable.
    #[error("cannot use the CA file {path}: {problem}; give a PEM file of CA certificates")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The HTTP client could not be set up, or a worker thread failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// Moving a tag failed, and not every tag moved before could be put back.
    #[error("{error}. Not put back: {}", left.join("; "))]
    NotUndone {
        /// The failure.
        error: Box<RegistryError>,
        /// What was left, each with how to undo it.
        left: Vec<String>,
    },
}

impl RegistryError {
    /// A stable name for the kind of failure (becomes an atom on the Elixir side).
    ///
    /// ```
    /// use image_io::registry::RegistryError;
    /// let e = RegistryError::NoRegistry { tag: "app:1".into() };
    /// assert_eq!(e.reason(), "registry_no_host");
    /// ```
    pub fn reason(&self) -> Reason {
        match self {
            RegistryError::NoRegistry { .. } => Reason::RegistryNoHost,
            RegistryError::Unauthorized { .. } => Reason::RegistryUnauthorized,
            RegistryError::NotFound { .. } => Reason::RegistryNotFound,
            RegistryError::Server { .. } => Reason::RegistryError,
            RegistryError::Connection { .. } => Reason::RegistryUnreachable,
            RegistryError::Stalled { .. } => Reason::RegistryStalled,
            RegistryError::Protocol { .. } => Reason::RegistryProtocol,
            RegistryError::Io { .. } => Reason::RegistryBlobUnreadable,
            RegistryError::CaFile { .. } => Reason::RegistryCaFile,
            RegistryError::Credentials(_) => Reason::RegistryCredentials,
            RegistryError::Internal(_) => Reason::RegistryInternal,
            RegistryError::NotUndone { error, .. } => error.reason(),
        }
    }
}

/// The host that serves a registry's API: Docker Hub's names all mean `registry-1.docker.io`.
///
/// ```
/// use image_io::registry::api_host;
/// assert_eq!(api_host("docker.io"), "registry-1.docker.io");
/// assert_eq!(api_host("ghcr.io"), "ghcr.io");
/// ```
pub fn api_host(host: &str) -> &str {
    if credentials::is_docker_hub(host) {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// Whether `host` (`host[:port]`) is this machine: `localhost`, `127.0.0.0/8` or `[::1]`.
///
/// ```
/// use image_io::registry::is_loopback;
/// assert!(is_loopback("localhost:5000"));
/// assert!(is_loopback("127.1.2.3"));
/// assert!(is_loopback("[::1]:5000"));
/// assert!(!is_loopback("registry.example.com:5000"));
/// assert!(!is_loopback("10.0.0.1:5000"));
/// ```
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RegistryOptions {
    /// The credentials of these options, else the environment's; helpers get the stall
    /// timeout.
    fn credential_store(&self) -> CredentialStore {
        self.credentials.clone().unwrap_or_else(|| CredentialStore {
            helper_timeout: self.stall_timeout,
            ..CredentialStore::from_env(&|k| std::env::var(k).ok())
        })
    }

    /// The credentials these options give for registry `host` (what is sent to an engine that
    /// pulls from it), looked up off the async worker threads (a helper is a process).
    pub(crate) async fn credential_for(
        &self,
        host: &str,
    ) -> Result<Option<credentials::Credential>, RegistryError> {
        self.credential_store().lookup(host).await
    }
}
