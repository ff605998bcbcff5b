//! Connecting to the engine at an [`Endpoint`]: the transport, TLS, and the API version.

use super::transport::{Dial, Transport};
use super::{bollard_chain, failure, stalled_in, DockerEngine, Endpoint, EngineError};
use crate::error::chain;
use crate::stall::DEFAULT_STALL;
use bollard::{Docker, API_DEFAULT_VERSION};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
            version: tokio::sync::OnceCell::new(),
        })
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
