//! The registry client both directions share: TLS, finding the registry's scheme, sending a
//! request with its authorization (`auth.rs`), bounds on silence, and errors from answers.

use super::{is_loopback, RegistryError, RegistryOptions};
use crate::error::chain;
use crate::registry::credentials::{Credential, CredentialStore};
use crate::stall::{Stalled, DEFAULT_STALL};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The HTTP client: rustls with the ring provider, HTTP/1.1, 15 s to connect, no total timeout
/// (an upload takes as long as it takes; a broken connection fails the request at once).
pub(super) fn client(opts: &RegistryOptions) -> Result<reqwest::Client, RegistryError> {
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

/// One registry host: where it answers, how it challenged us, and the credentials and tokens
/// obtained so far.
pub(super) struct Registry {
    pub(super) http: reqwest::Client,
    pub(super) host: String,
    pub(super) base: Url,
    /// The challenge of `GET /v2/`, if it asked for authentication.
    pub(super) challenge: Option<String>,
    pub(super) store: Arc<CredentialStore>,
    /// Looked up once, on the first challenge.
    pub(super) credential: Option<Option<Credential>>,
    /// `Authorization` values by repository path.
    pub(super) auth: HashMap<String, HeaderValue>,
    /// Upload bytes taken so far (the progress the stall watch looks at).
    pub(super) activity: Arc<AtomicU64>,
    /// How long a request may make no progress.
    pub(super) stall: Duration,
}

impl Registry {
    /// Find the registry's scheme with `GET /v2/` (the API version check).
    pub(super) async fn connect(
        http: reqwest::Client,
        host: &str,
        opts: &RegistryOptions,
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

    pub(super) fn url(&self, path: &str, rest: &str) -> Url {
        // The path and rest come from validated references and digests: always a valid URL.
        self.base
            .join(&format!("v2/{path}/{rest}"))
            .expect("repository paths are valid URL paths")
    }

    /// Send a request for repository `path`, with its authorization; on 401, answer the
    /// challenge once and send again (`build` is called again, so bodies are rebuilt).
    pub(super) async fn send(
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
}

/// Run `request` until it ends, or fail when `activity` (upload bytes taken) has not moved for
/// `stall` (checked every tenth of it, at most every second): a registry or proxy that stopped
/// reading the upload or never answers. The time from the last byte sent to the answer counts
/// too, so a registry gets `stall` to verify a blob. `host` and `step` (`PUT https://…`) name
/// the request in the error.
pub(super) async fn watch_stall<F: std::future::Future>(
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
pub(super) fn body_stream(
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
pub(super) async fn read_body(
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

pub(super) fn header_text(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The error for a response that is not what the protocol expects at this step.
pub(super) async fn failure(host: &str, path: &str, url: &Url, resp: Response) -> RegistryError {
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
pub(super) fn connection(host: &str, e: &reqwest::Error) -> RegistryError {
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
