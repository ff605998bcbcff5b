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

use super::EngineError;
use std::path::{Path, PathBuf};

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

/// The engine the process environment names, checked without connecting: `Some(address)`, or
/// `None` when there is no engine socket at the default address and nothing names another.
/// Lets a run fail on a wrong `DOCKER_HOST` before a long release build.
pub fn check_endpoint() -> Result<Option<String>, EngineError> {
    match resolve_endpoint(&|k| std::env::var(k).ok())? {
        Endpoint::Missing(_) => Ok(None),
        endpoint => Ok(Some(endpoint.to_string())),
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
