//! Push to a registry over the OCI distribution API, with no engine involved, so the digests in
//! the registry are the archive's digests.
//!
//! For each repository named by the tags: one `HEAD` per blob (layers, then the config); a blob
//! the registry lacks is uploaded with `POST …/blobs/uploads/` and one streamed `PUT`. Only when
//! every repository has every blob do tags move: for each tag, a `GET` of what it names now (kept
//! to put it back if a later step fails, see [`PushedTags::undo`]; a tag that already names the
//! manifest is left as it is), then a `PUT` of the manifest. Blobs are read from their files in
//! chunks, never whole.
//!
//! Transport: plain HTTP is tried first for loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) and,
//! with [`PushOptions::insecure`], for every host; HTTPS is used otherwise, and also when such a
//! host answers plain HTTP with something that is not a registry (a TLS-only port). HTTPS trusts
//! Mozilla's roots, the system's roots and [`PushOptions::ca_file`].
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: `Basic` sends the
//! credentials of [`crate::credentials`]; `Bearer` fetches a token for
//! `repository:<path>:pull,push` from the realm, kept per repository for the run.

use crate::credentials::{
    Credential, CredentialError, CredentialStore, PASSWORD_VAR, USERNAME_VAR,
};
use crate::sink::{Built, Progress};
use crate::stall::{Stalled, HOW_TO_CHANGE};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use image_core::digest::Digest;
use image_core::image::media_type;
use image_core::reference::Reference;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
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

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushOutcome {
    /// The digest of the pushed manifest, the same in every repository.
    pub manifest_digest: Digest,
    /// Bytes of blobs uploaded (layers and config; manifests are not counted).
    pub uploaded_bytes: u64,
    /// Blobs the registry already had, over all repositories.
    pub skipped_blobs: usize,
    /// Blobs uploaded, over all repositories.
    pub uploaded_blobs: usize,
    /// The references pushed, `host/path:tag`.
    pub tags: Vec<String>,
    /// One reference by digest per repository pushed, `host/path@sha256:…`: what a deploy
    /// step should pull (a tag can move, a digest cannot).
    pub references: Vec<String>,
}

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
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::NoRegistry { .. } => "registry_no_host",
            RegistryError::Unauthorized { .. } => "registry_unauthorized",
            RegistryError::NotFound { .. } => "registry_not_found",
            RegistryError::Server { .. } => "registry_error",
            RegistryError::Connection { .. } => "registry_unreachable",
            RegistryError::Stalled { .. } => "registry_stalled",
            RegistryError::Protocol { .. } => "registry_protocol",
            RegistryError::Io { .. } => "registry_blob_unreadable",
            RegistryError::CaFile { .. } => "registry_ca_file",
            RegistryError::Credentials(_) => "registry_credentials",
            RegistryError::Internal(_) => "registry_internal",
            RegistryError::NotUndone { error, .. } => error.reason(),
        }
    }
}

/// Push `built` to every repository its tags name.
///
/// `progress` is called with the blob bytes uploaded so far in this push. Every blob goes to
/// every repository before the first tag moves; when moving a tag fails, the tags already moved
/// are put back ([`PushedTags::undo`]) and the error says what could not be.
pub async fn push(
    built: Arc<Built>,
    opts: &PushOptions,
    progress: Progress,
) -> Result<PushOutcome, RegistryError> {
    let mut pushed = PushedTags::default();
    match push_undoable(built, opts, progress, &mut pushed).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            let left = pushed.undo().await;
            Err(if left.is_empty() {
                e
            } else {
                RegistryError::NotUndone {
                    error: Box::new(e),
                    left,
                }
            })
        }
    }
}

/// [`push`], recording in `pushed` each tag moved (with the manifest it named before), so the
/// caller can put them back when this or a later step fails.
pub async fn push_undoable(
    built: Arc<Built>,
    opts: &PushOptions,
    progress: Progress,
    pushed: &mut PushedTags,
) -> Result<PushOutcome, RegistryError> {
    let targets = group_tags(&built.tags)?;
    let http = client(opts)?;
    let store = Arc::new(store_of(opts));
    let image = &built.image;
    let config = Bytes::from(image.config_json());
    let manifest = Bytes::from(image.manifest_json());
    let manifest_digest = image.manifest_digest();
    pushed.digest = Some(manifest_digest.clone());

    // Each blob once, even when two layers are identical; the config last.
    let mut blobs: Vec<Blob> = Vec::new();
    for l in &image.layers {
        if !blobs.iter().any(|b| b.digest == l.digest) {
            blobs.push(Blob {
                digest: l.digest.clone(),
                size: l.size,
                content: Content::File(built.blobs.path(&l.digest)),
            });
        }
    }
    blobs.push(Blob {
        digest: Digest::of(&config),
        size: config.len() as u64,
        content: Content::Bytes(config),
    });

    let mut outcome = PushOutcome {
        manifest_digest: manifest_digest.clone(),
        uploaded_bytes: 0,
        skipped_blobs: 0,
        uploaded_blobs: 0,
        tags: Vec::new(),
        references: Vec::new(),
    };
    let sent = Arc::new(AtomicU64::new(0));
    // Blobs first, everywhere: a failure there leaves no tag moved.
    for (host, repos) in &targets {
        let mut reg = Registry::connect(
            http.clone(),
            api_host(host),
            opts,
            store.clone(),
            sent.clone(),
        )
        .await?;
        for (path, _) in repos {
            for blob in &blobs {
                if reg.upload_blob(path, blob, &sent, &progress).await? {
                    outcome.uploaded_blobs += 1;
                    outcome.uploaded_bytes += blob.size;
                } else {
                    outcome.skipped_blobs += 1;
                }
            }
        }
        pushed.sessions.push(reg);
    }
    // Then the tags, each after reading what it named before.
    for (session, (host, repos)) in targets.iter().enumerate() {
        for (path, tags) in repos {
            for tag in tags {
                let reg = &mut pushed.sessions[session];
                let previous = reg.current_manifest(path, tag, &manifest_digest).await;
                if let Previous::Same = previous {
                    outcome.tags.push(format!("{host}/{path}:{tag}"));
                    continue;
                }
                let moved = MovedTag {
                    session,
                    path: path.clone(),
                    tag: tag.clone(),
                    previous,
                };
                pushed.moved.push(moved);
                if let Err(e) = reg
                    .put_manifest(path, tag, &manifest, &manifest_digest)
                    .await
                {
                    // A PUT can fail after the registry stored the manifest (a cut connection):
                    // the tag counts as moved unless it does not name our manifest.
                    if !matches!(
                        reg.current_manifest(path, tag, &manifest_digest).await,
                        Previous::Same | Previous::Unknown(_)
                    ) {
                        pushed.moved.pop();
                    }
                    return Err(e);
                }
                outcome.tags.push(format!("{host}/{path}:{tag}"));
            }
            outcome
                .references
                .push(format!("{host}/{path}@{manifest_digest}"));
        }
    }
    Ok(outcome)
}

/// The credentials of `opts`, else the environment's; helpers get the stall timeout.
fn store_of(opts: &PushOptions) -> CredentialStore {
    opts.credentials.clone().unwrap_or_else(|| CredentialStore {
        helper_timeout: opts.stall_timeout,
        ..CredentialStore::from_env(&|k| std::env::var(k).ok())
    })
}

/// Every manifest media type, for reading what a tag names.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What a tag named before a push moved it.
enum Previous {
    /// Nothing: the tag did not exist.
    Nothing,
    /// This manifest (bytes and media type).
    Manifest(Bytes, String),
    /// Already the pushed manifest: nothing moves.
    Same,
    /// It could not be read (why).
    Unknown(String),
}

struct MovedTag {
    session: usize,
    path: String,
    tag: String,
    previous: Previous,
}

/// The tags a push moved, with the sessions needed to put them back.
#[derive(Default)]
pub struct PushedTags {
    sessions: Vec<Registry>,
    moved: Vec<MovedTag>,
    digest: Option<Digest>,
}

impl PushedTags {
    /// Put every moved tag back on the manifest it named before, the last moved first. The
    /// distribution API cannot remove a tag: a tag that did not exist before stays, and the
    /// returned list says so, with how to remove it; so it does for anything else that could not
    /// be put back.
    pub async fn undo(mut self) -> Vec<String> {
        let digest = self
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let mut left = Vec::new();
        for m in std::mem::take(&mut self.moved).into_iter().rev() {
            let reg = &mut self.sessions[m.session];
            let name = format!("{}/{}:{}", reg.host, m.path, m.tag);
            match m.previous {
                Previous::Same => {}
                Previous::Manifest(bytes, media) => {
                    if let Err(e) = reg.restore_manifest(&m.path, &m.tag, &bytes, &media).await {
                        left.push(format!(
                            "the registry's tag {name} points at the new manifest {digest} and could not be put back ({e}); push the previous image to it again"
                        ));
                    }
                }
                Previous::Nothing => left.push(format!(
                    "the registry's tag {name} was created (manifest {digest}) and the registry API cannot remove a tag: delete it in the registry, e.g. `skopeo delete docker://{name}` (which deletes the manifest and every tag on it)"
                )),
                Previous::Unknown(why) => left.push(format!(
                    "the registry's tag {name} points at the new manifest {digest}; what it named before could not be read ({why}), so it was not put back"
                )),
            }
        }
        left
    }

    /// How many tags the push moved so far.
    pub fn moved(&self) -> usize {
        self.moved.len()
    }
}

/// Registry host → repository path → tags, in the order the tags were given.
type Targets = Vec<(String, Vec<(String, Vec<String>)>)>;

fn group_tags(tags: &[Reference]) -> Result<Targets, RegistryError> {
    let mut out: Targets = Vec::new();
    for t in tags {
        let Some(host) = &t.domain else {
            return Err(RegistryError::NoRegistry { tag: t.to_string() });
        };
        let hi = match out.iter().position(|(h, _)| h == host) {
            Some(i) => i,
            None => {
                out.push((host.clone(), Vec::new()));
                out.len() - 1
            }
        };
        let repos = &mut out[hi].1;
        let ri = match repos.iter().position(|(p, _)| *p == t.path) {
            Some(i) => i,
            None => {
                repos.push((t.path.clone(), Vec::new()));
                repos.len() - 1
            }
        };
        if !repos[ri].1.contains(&t.tag) {
            repos[ri].1.push(t.tag.clone());
        }
    }
    Ok(out)
}

/// The host that serves a registry's API: Docker Hub's names all mean `registry-1.docker.io`.
///
/// ```
/// use image_io::registry::api_host;
/// assert_eq!(api_host("docker.io"), "registry-1.docker.io");
/// assert_eq!(api_host("ghcr.io"), "ghcr.io");
/// ```
pub fn api_host(host: &str) -> &str {
    if crate::credentials::is_docker_hub(host) {
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

/// The HTTP client: rustls with the ring provider, HTTP/1.1, 15 s to connect, no total timeout
/// (an upload takes as long as it takes; a broken connection fails the request at once).
fn client(opts: &PushOptions) -> Result<reqwest::Client, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // System roots too (a company CA installed on the machine); unreadable ones are skipped.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &opts.ca_file {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let bad = |problem: String| RegistryError::CaFile {
            path: path.clone(),
            problem,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("it is not valid PEM ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate in it is invalid ({e})")))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("it holds no CERTIFICATE block".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Internal(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("docker_release/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RegistryError::Internal(format!("HTTP client setup failed: {}", chain(&e))))
}

struct Blob {
    digest: Digest,
    size: u64,
    content: Content,
}

enum Content {
    File(PathBuf),
    Bytes(Bytes),
}

/// One registry host: where it answers, how it challenged us, and the credentials and tokens
/// obtained so far.
struct Registry {
    http: reqwest::Client,
    host: String,
    base: Url,
    /// The challenge of `GET /v2/`, if it asked for authentication.
    challenge: Option<String>,
    store: Arc<CredentialStore>,
    /// Looked up once, on the first challenge.
    credential: Option<Option<Credential>>,
    /// `Authorization` values by repository path.
    auth: HashMap<String, HeaderValue>,
    /// Upload bytes taken so far (the progress the stall watch looks at).
    activity: Arc<AtomicU64>,
    /// How long a request may make no progress.
    stall: Duration,
}

impl Registry {
    /// Find the registry's scheme with `GET /v2/` (the API version check).
    async fn connect(
        http: reqwest::Client,
        host: &str,
        opts: &PushOptions,
        store: Arc<CredentialStore>,
        activity: Arc<AtomicU64>,
    ) -> Result<Registry, RegistryError> {
        let stall = opts.stall_timeout.unwrap_or(DEFAULT_STALL);
        let base_for = |scheme: &str| {
            Url::parse(&format!("{scheme}://{host}/")).map_err(|e| RegistryError::Protocol {
                url: format!("{scheme}://{host}/"),
                problem: format!("is not a valid URL: {e}"),
            })
        };
        let ping = |base: &Url| {
            let url = base.join("v2/").expect("a constant relative path");
            let req = http.get(url.clone());
            let activity = activity.clone();
            async move {
                let step = format!("GET {url}");
                let res = watch_stall(req.send(), &activity, stall, host, &step).await?;
                Ok::<_, RegistryError>((url, res))
            }
        };
        let is_registry = |s: StatusCode| s.is_success() || s == StatusCode::UNAUTHORIZED;
        let https = base_for("https")?;
        let mut chosen = None;
        if opts.insecure || is_loopback(host) {
            let plain = base_for("http")?;
            let (url, res) = ping(&plain).await?;
            let resp = match res {
                Ok(r) => r,
                // HTTP and HTTPS may be on different ports (80 and 443): try HTTPS before
                // reporting the HTTP failure.
                Err(e) => match ping(&https).await? {
                    (_, Ok(r)) if is_registry(r.status()) => {
                        return Self::ready(http, host, https, r, store, activity, stall)
                    }
                    _ => return Err(connection(host, &e)),
                },
            };
            if is_registry(resp.status()) {
                chosen = Some((plain, resp));
            } else {
                // Maybe a TLS-only port (Go answers plain HTTP there with 400): try HTTPS, and
                // if that fails too, report HTTPS certificate problems or else this answer.
                let status = resp.status();
                let plain_failure = failure(host, "", &url, resp).await;
                match ping(&https).await? {
                    (_, Ok(r)) if is_registry(r.status()) => chosen = Some((https.clone(), r)),
                    (_, Err(e)) if is_tls_trust_error(&e) => return Err(connection(host, &e)),
                    _ if status == StatusCode::BAD_REQUEST => {
                        return Err(RegistryError::Protocol {
                            url: url.to_string(),
                            problem:
                                "answered 400 Bad Request, and HTTPS failed too: is it a registry?"
                                    .into(),
                        })
                    }
                    _ => return Err(plain_failure),
                }
            }
        }
        let (base, resp) = match chosen {
            Some(c) => c,
            None => {
                let (url, res) = ping(&https).await?;
                let resp = res.map_err(|e| connection(host, &e))?;
                if !is_registry(resp.status()) {
                    return Err(failure(host, "", &url, resp).await);
                }
                (https, resp)
            }
        };
        Self::ready(http, host, base, resp, store, activity, stall)
    }

    /// The registry at `base`, given its answer to `GET /v2/`.
    fn ready(
        http: reqwest::Client,
        host: &str,
        base: Url,
        resp: Response,
        store: Arc<CredentialStore>,
        activity: Arc<AtomicU64>,
        stall: Duration,
    ) -> Result<Registry, RegistryError> {
        let challenge = (resp.status() == StatusCode::UNAUTHORIZED)
            .then(|| header_text(&resp, "www-authenticate"))
            .flatten();
        Ok(Registry {
            http,
            host: host.to_string(),
            base,
            challenge,
            store,
            credential: None,
            auth: HashMap::new(),
            activity,
            stall,
        })
    }

    fn url(&self, path: &str, rest: &str) -> Url {
        // The path and rest come from validated references and digests: always a valid URL.
        self.base
            .join(&format!("v2/{path}/{rest}"))
            .expect("repository paths are valid URL paths")
    }

    /// Upload `blob` unless the repository has it. Returns whether it was uploaded.
    async fn upload_blob(
        &mut self,
        path: &str,
        blob: &Blob,
        sent: &Arc<AtomicU64>,
        progress: &Progress,
    ) -> Result<bool, RegistryError> {
        let head = self.url(path, &format!("blobs/{}", blob.digest));
        let resp = self.send(path, Method::HEAD, &head, Ok).await?;
        match resp.status() {
            s if s.is_success() => return Ok(false),
            StatusCode::NOT_FOUND => {}
            _ => return Err(failure(&self.host, path, &head, resp).await),
        }

        let start = self.url(path, "blobs/uploads/");
        let resp = self.send(path, Method::POST, &start, Ok).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(failure(&self.host, path, &start, resp).await);
        }
        let location =
            header_text(&resp, LOCATION.as_str()).ok_or_else(|| RegistryError::Protocol {
                url: start.to_string(),
                problem: "answered 202 Accepted without a Location header".into(),
            })?;
        let mut put = start.join(&location).map_err(|e| RegistryError::Protocol {
            url: start.to_string(),
            problem: format!("gave an invalid upload Location {location:?}: {e}"),
        })?;
        put.query_pairs_mut()
            .append_pair("digest", &blob.digest.to_string());

        let before = sent.load(Ordering::Relaxed);
        let resp = self
            .send(path, Method::PUT, &put, |req| {
                // A retry (after a new token) restarts the count at the blob's start.
                sent.store(before, Ordering::Relaxed);
                let body = match &blob.content {
                    Content::Bytes(b) => {
                        let b = b.clone();
                        let (sent, progress) = (sent.clone(), progress.clone());
                        let len = b.len() as u64;
                        let once = futures_util::stream::once(async move {
                            progress(sent.fetch_add(len, Ordering::Relaxed) + len);
                            Ok::<_, io::Error>(b)
                        });
                        reqwest::Body::wrap_stream(once)
                    }
                    Content::File(file) => {
                        reqwest::Body::wrap_stream(file_stream(file, blob.size, sent, progress)?)
                    }
                };
                Ok(req
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, blob.size)
                    .body(body))
            })
            .await
            .map_err(|e| match e {
                RegistryError::Connection { cause, host, .. } if cause.contains(BLOB_READ) => {
                    RegistryError::Io {
                        path: match &blob.content {
                            Content::File(p) => p.clone(),
                            Content::Bytes(_) => PathBuf::from("config"),
                        },
                        source: io::Error::other(format!("{cause} (while uploading to {host})")),
                    }
                }
                other => other,
            })?;
        if !resp.status().is_success() {
            return Err(failure(&self.host, path, &put, resp).await);
        }
        Ok(true)
    }

    /// What `path:tag` names now, to put it back after a failure.
    async fn current_manifest(&mut self, path: &str, tag: &str, pushing: &Digest) -> Previous {
        let url = self.url(path, &format!("manifests/{tag}"));
        let resp = match self
            .send(path, Method::GET, &url, |req| {
                Ok(req.header(reqwest::header::ACCEPT, MANIFEST_TYPES))
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Previous::Unknown(e.to_string()),
        };
        match resp.status() {
            StatusCode::NOT_FOUND => return Previous::Nothing,
            s if !s.is_success() => return Previous::Unknown(format!("{url} answered {s}")),
            _ => {}
        }
        let media = header_text(&resp, CONTENT_TYPE.as_str()).unwrap_or_default();
        match resp.bytes().await {
            Ok(b) if Digest::of(&b) == *pushing => Previous::Same,
            Ok(b) => Previous::Manifest(b, media),
            Err(e) => Previous::Unknown(e.to_string()),
        }
    }

    /// `PUT` a manifest read before back under `tag`.
    async fn restore_manifest(
        &mut self,
        path: &str,
        tag: &str,
        bytes: &Bytes,
        media: &str,
    ) -> Result<(), RegistryError> {
        let url = self.url(path, &format!("manifests/{tag}"));
        let resp = self
            .send(path, Method::PUT, &url, |req| {
                Ok(req.header(CONTENT_TYPE, media).body(bytes.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(failure(&self.host, path, &url, resp).await);
        }
        Ok(())
    }

    async fn put_manifest(
        &mut self,
        path: &str,
        tag: &str,
        manifest: &Bytes,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let url = self.url(path, &format!("manifests/{tag}"));
        let resp = self
            .send(path, Method::PUT, &url, |req| {
                Ok(req
                    .header(CONTENT_TYPE, media_type::MANIFEST)
                    .body(manifest.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(failure(&self.host, path, &url, resp).await);
        }
        if let Some(got) = header_text(&resp, "docker-content-digest") {
            if got != digest.to_string() {
                return Err(RegistryError::Protocol {
                    url: url.to_string(),
                    problem: format!(
                        "stored the manifest as {got}, but its digest is {digest}: a proxy or the registry rewrote it"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Send a request for repository `path`, with its authorization; on 401, answer the
    /// challenge once and send again (`build` is called again, so bodies are rebuilt).
    async fn send(
        &mut self,
        path: &str,
        method: Method,
        url: &Url,
        build: impl Fn(RequestBuilder) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        if !self.auth.contains_key(path) {
            if let Some(challenge) = self.challenge.clone() {
                self.authorize(path, &challenge).await?;
            }
        }
        let mut answered = false;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            // Credentials go only to the registry itself, never to another host in a Location.
            if url.origin() == self.base.origin() {
                if let Some(a) = self.auth.get(path) {
                    req = req.header(AUTHORIZATION, a.clone());
                }
            }
            let step = format!("{method} {url}");
            let resp = watch_stall(
                build(req)?.send(),
                &self.activity,
                self.stall,
                &self.host,
                &step,
            )
            .await?
            .map_err(|e| connection(&self.host, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = header_text(&resp, "www-authenticate").unwrap_or_default();
            if answered || challenge.is_empty() {
                return Err(self.refused(path, StatusCode::UNAUTHORIZED));
            }
            let before = self.auth.get(path).cloned();
            self.authorize(path, &challenge).await?;
            if self.auth.get(path) == before.as_ref() {
                // Sending the same credentials again would get the same answer.
                return Err(self.refused(path, StatusCode::UNAUTHORIZED));
            }
            answered = true;
        }
    }

    /// Turn a `WWW-Authenticate` challenge into an `Authorization` value for `path`.
    async fn authorize(&mut self, path: &str, challenge: &str) -> Result<(), RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        let credential = self.credential().await?;
        let value = match scheme.as_str() {
            "basic" => {
                let Some(c) = credential else {
                    return Err(self.unauthorized(
                        path,
                        "asks for a user name and password, and none are configured",
                    ));
                };
                if c.identity_token().is_some() {
                    return Err(self.unauthorized(
                        path,
                        "asks for a user name and password, and the credentials found are an identity token (which only a token service takes)",
                    ));
                }
                format!("Basic {}", basic(&c))
            }
            "bearer" => format!(
                "Bearer {}",
                self.token(path, &params, credential.as_ref()).await?
            ),
            _ => {
                return Err(RegistryError::Protocol {
                    url: self.base.to_string(),
                    problem: format!(
                        "asks for authentication this client does not speak: {challenge:?}"
                    ),
                })
            }
        };
        let value = HeaderValue::from_str(&value).map_err(|_| RegistryError::Protocol {
            url: self.base.to_string(),
            problem: "gave a token that is not a valid header value".into(),
        })?;
        self.auth.insert(path.to_string(), value);
        Ok(())
    }

    /// `GET realm?service=…&scope=repository:<path>:pull,push` → `token` (or `access_token`).
    async fn token(
        &self,
        path: &str,
        params: &HashMap<String, String>,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let realm = params.get("realm").ok_or_else(|| RegistryError::Protocol {
            url: self.base.to_string(),
            problem: "asks for a Bearer token but names no realm".into(),
        })?;
        let mut url = Url::parse(realm).map_err(|e| RegistryError::Protocol {
            url: self.base.to_string(),
            problem: format!("names an invalid token realm {realm:?}: {e}"),
        })?;
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => realm.to_string(),
        };
        let scope = format!("repository:{path}:pull,push");
        let (req, step) = match credential.and_then(Credential::identity_token) {
            // An identity token is an OAuth2 refresh token: exchanged with a POST of the
            // refresh-token grant (the distribution token specification), never sent as a
            // password.
            Some(refresh_token) => {
                url.set_query(None);
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("client_id", "docker_release")
                    .append_pair("scope", &scope);
                if let Some(service) = params.get("service") {
                    form.append_pair("service", service);
                }
                let req = self
                    .http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish());
                (req, format!("POST {url} (identity token exchange)"))
            }
            None => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(service) = params.get("service") {
                        q.append_pair("service", service);
                    }
                    q.append_pair("scope", &scope);
                }
                let mut req = self.http.get(url.clone());
                if let Some(c) = credential {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                (req, format!("GET {url}"))
            }
        };
        let resp = watch_stall(req.send(), &self.activity, self.stall, &realm_host, &step)
            .await?
            .map_err(|e| connection(&realm_host, &e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
                if credential.and_then(Credential::identity_token).is_some() =>
            {
                return Err(self.unauthorized(
                    path,
                    &format!(
                        "(token service {realm_host}) refused the identity token ({})",
                        resp.status()
                    ),
                ))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized(
                    path,
                    &format!(
                        "(token service {realm_host}) {}",
                        self.refusal(credential.is_some())
                    ),
                ))
            }
            _ => return Err(failure(&realm_host, path, &url, resp).await),
        }
        let body = read_body(resp, self.stall, &realm_host, &step).await?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                url: url.to_string(),
                problem: format!("answered with something that is not JSON: {e}"),
            })?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| {
                json.get(k)
                    .and_then(|v| v.as_str())
                    .filter(|t| !t.is_empty())
            })
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Protocol {
                url: url.to_string(),
                problem: "answered without a `token` or `access_token`".into(),
            })
    }

    async fn credential(&mut self) -> Result<Option<Credential>, RegistryError> {
        if let Some(c) = &self.credential {
            return Ok(c.clone());
        }
        let (store, host) = (self.store.clone(), self.host.clone());
        // A credential helper is a process: keep it off the async worker threads.
        let found = tokio::task::spawn_blocking(move || store.get(&host))
            .await
            .map_err(|e| RegistryError::Internal(format!("credential lookup failed: {e}")))??;
        self.credential = Some(found.clone());
        Ok(found)
    }

    fn refusal(&self, had_credentials: bool) -> &'static str {
        if had_credentials {
            "refused the credentials"
        } else {
            "refused anonymous access (no credentials are configured)"
        }
    }

    fn refused(&self, path: &str, status: StatusCode) -> RegistryError {
        let had = matches!(self.credential, Some(Some(_)));
        let problem = match status {
            StatusCode::FORBIDDEN => format!(
                "denied access (403 Forbidden){}",
                if had {
                    " with the credentials given"
                } else {
                    ""
                }
            ),
            _ => self.refusal(had).to_string(),
        };
        self.unauthorized(path, &problem)
    }

    fn unauthorized(&self, path: &str, problem: &str) -> RegistryError {
        RegistryError::Unauthorized {
            host: self.host.clone(),
            path: path.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Marker in the error chain of a failed blob read (see [`file_stream`]).
const BLOB_READ: &str = "reading the layer blob failed";

/// The blob file as a stream of chunks, counting bytes into `sent` and reporting them.
fn file_stream(
    path: &PathBuf,
    size: u64,
    sent: &Arc<AtomicU64>,
    progress: &Progress,
) -> Result<impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static, RegistryError> {
    let io_err = |source| RegistryError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let actual = file.metadata().map_err(io_err)?.len();
    if actual != size {
        return Err(io_err(io::Error::other(format!(
            "it has {actual} bytes but the image records {size}: the build directory was changed"
        ))));
    }
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), size);
    let (sent, progress) = (sent.clone(), progress.clone());
    Ok(
        tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10).map(
            move |chunk| match chunk {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    progress(sent.fetch_add(n, Ordering::Relaxed) + n);
                    Ok(bytes)
                }
                Err(e) => Err(io::Error::new(e.kind(), format!("{BLOB_READ}: {e}"))),
            },
        ),
    )
}

/// Run `request` until it ends, or fail when `activity` (upload bytes taken) has not moved for
/// `stall` (checked every tenth of it, at most every second): a registry or proxy that stopped
/// reading the upload or never answers. The time from the last byte sent to the answer counts
/// too, so a registry gets `stall` to verify a blob. `host` and `step` (`PUT https://…`) name
/// the request in the error.
async fn watch_stall<F: std::future::Future>(
    request: F,
    activity: &AtomicU64,
    stall: Duration,
    host: &str,
    step: &str,
) -> Result<F::Output, RegistryError> {
    tokio::pin!(request);
    let tick = (stall / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut seen = activity.load(Ordering::Relaxed);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            out = &mut request => return Ok(out),
            _ = tokio::time::sleep(tick) => {
                let now = activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = tokio::time::Instant::now();
                } else if since.elapsed() >= stall {
                    return Err(stalled(host, step, stall));
                }
            }
        }
    }
}

fn stalled(host: &str, step: &str, waited: Duration) -> RegistryError {
    RegistryError::Stalled {
        stalled: Stalled {
            peer: format!("the registry at {host}"),
            request: step.to_string(),
            waited,
            detail: String::new(),
        },
    }
}

/// The body of `resp` as a stream of chunks, each of which must come within `stall`.
pub(crate) fn body_stream(
    resp: Response,
    stall: Duration,
    host: &str,
    step: &str,
) -> impl futures_util::Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
    let (host, step) = (host.to_string(), step.to_string());
    futures_util::stream::unfold(Some(Box::pin(resp.bytes_stream())), move |body| {
        let (host, step) = (host.clone(), step.clone());
        async move {
            let mut body = body?;
            match tokio::time::timeout(stall, body.next()).await {
                Err(_) => Some((Err(stalled(&host, &step, stall)), None)),
                Ok(None) => None,
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                Ok(Some(Err(e))) => Some((Err(connection(&host, &e)), None)),
            }
        }
    })
}

/// The whole body of a (small) answer, each chunk within `stall`.
async fn read_body(
    resp: Response,
    stall: Duration,
    host: &str,
    step: &str,
) -> Result<Bytes, RegistryError> {
    let mut body = Vec::new();
    let stream = body_stream(resp, stall, host, step);
    tokio::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(RegistryError::Protocol {
                url: step.to_string(),
                problem: format!("answered with more than {MAX_ANSWER} bytes where a short JSON document belongs"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The largest token answer read.
const MAX_ANSWER: usize = 1 << 20;

/// How long an error answer's body is waited for (it only adds detail to the message).
const ERROR_BODY_WAIT: Duration = Duration::from_secs(10);

fn basic(c: &Credential) -> String {
    BASE64.encode(format!("{}:{}", c.username, c.password))
}

fn header_text(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Parse `Bearer realm="https://auth",service="registry",scope="repository:a:pull,push"` into the
/// lower-case scheme and its parameters.
///
/// ```
/// use image_io::registry::parse_challenge;
/// let (scheme, p) = parse_challenge(r#"Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push""#);
/// assert_eq!(scheme, "bearer");
/// assert_eq!(p["realm"], "https://a/token");
/// assert_eq!(p["scope"], "repository:x:pull,push");
/// assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#).0, "basic");
/// ```
pub fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, mut rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let mut value = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_string();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The error for a response that is not what the protocol expects at this step.
async fn failure(host: &str, path: &str, url: &Url, resp: Response) -> RegistryError {
    let status = resp.status();
    let body = tokio::time::timeout(ERROR_BODY_WAIT, resp.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let detail = registry_message(&body)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            url: url.to_string(),
            detail,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
            host: host.to_string(),
            path: path.to_string(),
            problem: format!("denied access ({status}{detail})"),
        },
        s if s.is_server_error() => RegistryError::Server {
            host: host.to_string(),
            url: url.to_string(),
            status: s.as_u16(),
            detail,
        },
        s => RegistryError::Protocol {
            url: url.to_string(),
            problem: format!("answered {s}{detail}"),
        },
    }
}

/// The distribution error list (`{"errors":[{"code","message"}]}`) as text, else a text excerpt.
fn registry_message(body: &[u8]) -> Option<String> {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(errors) = json.get("errors").and_then(|e| e.as_array()) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let f = |k| e.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                    format!("{} {}", f("code"), f("message")).trim().to_string()
                })
                .filter(|s| !s.is_empty())
                .collect();
            if !parts.is_empty() {
                return Some(parts.join("; "));
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| {
        let mut t: String = text.chars().take(300).collect();
        if t.len() < text.len() {
            t.push('…');
        }
        t
    })
}

/// The error for a request that got no answer.
fn connection(host: &str, e: &reqwest::Error) -> RegistryError {
    let cause = chain(e);
    let lower = cause.to_ascii_lowercase();
    let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        "; it answers plain HTTP, not HTTPS: pass --insecure-registry (or insecure_registry: true) to push to it over plain HTTP, or give it a TLS certificate"
    } else if is_tls_trust_error(e) {
        "; the registry's TLS certificate is not trusted: give the CA certificate that signed it as the CA file option"
    } else if lower.contains("tls") || lower.contains("handshake") {
        "; TLS failed: check that the registry speaks HTTPS on this port (plain HTTP is only used for loopback hosts or with the insecure option)"
    } else if lower.contains("refused") {
        "; is the registry running, and are the host and port right?"
    } else if e.is_timeout() || lower.contains("timed out") {
        "; check the host name, port and network (firewall, proxy)"
    } else if lower.contains("reset")
        || lower.contains("broken pipe")
        || lower.contains("closed")
        || lower.contains("incomplete")
    {
        "; the connection broke during the request: retry, and check the registry's or proxy's upload size limit"
    } else if lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup") {
        "; check the host name"
    } else {
        ""
    };
    RegistryError::Connection {
        host: host.to_string(),
        cause,
        hint,
    }
}

fn is_tls_trust_error(e: &reqwest::Error) -> bool {
    let lower = chain(e).to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("unknownissuer")
}

/// `e` and its sources, joined with `: `, without repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

// ---------------------------------------------------------------------------------------------
// Pulling (base images, see `crate::base`): the transport and authentication of a push.

/// A read-only session with one registry host.
pub(crate) struct Puller {
    reg: Registry,
}

impl Puller {
    /// Connect to `host` (`GET /v2/`) with the transport and credentials of `opts`.
    pub(crate) async fn connect(host: &str, opts: &PushOptions) -> Result<Puller, RegistryError> {
        let http = client(opts)?;
        let store = Arc::new(store_of(opts));
        Ok(Puller {
            reg: Registry::connect(http, host, opts, store, Arc::new(AtomicU64::new(0))).await?,
        })
    }

    /// `GET /v2/<path>/<rest>` with `Accept: accept`: the response when it succeeded, else the
    /// error its status means (404 is [`RegistryError::NotFound`]).
    pub(crate) async fn get(
        &mut self,
        path: &str,
        rest: &str,
        accept: &str,
    ) -> Result<Response, RegistryError> {
        let url = self.reg.url(path, rest);
        let resp = self
            .reg
            .send(path, Method::GET, &url, |req| {
                Ok(req.header(reqwest::header::ACCEPT, accept))
            })
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(failure(&self.reg.host, path, &url, resp).await)
        }
    }

    /// The body of an answer of [`Puller::get`], each chunk within the stall timeout.
    pub(crate) fn body(
        &self,
        resp: Response,
        step: &str,
    ) -> impl futures_util::Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
        body_stream(resp, self.reg.stall, &self.reg.host, step)
    }

    /// The scheme and host the registry answers at (`http://127.0.0.1:5000/`).
    pub(crate) fn base_url(&self) -> &Url {
        &self.reg.base
    }
}
