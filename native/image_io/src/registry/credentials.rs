//! Registry credentials, found the way the docker CLI finds them.
//!
//! For a registry host, in this order:
//!
//! 1. `DOCKER_RELEASE_REGISTRY_USERNAME` and `DOCKER_RELEASE_REGISTRY_PASSWORD`, when both are
//!    set: they apply to every registry (meant for CI, where `docker login` is awkward);
//! 2. `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`):
//!    - `credHelpers[host]`: run `docker-credential-<helper> get` with the host on stdin;
//!    - else `credsStore`, the same way;
//!    - else `auths[host]`: `auth` (base64 of `user:password`) or `username` and `password`.
//!      Keys written as `https://host` or `http://host/v1/` match too.
//!
//! Nothing is read until a registry asks for credentials, so a broken helper only matters for
//! registries that need one.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable holding a user name for every registry.
pub const USERNAME_VAR: &str = "DOCKER_RELEASE_REGISTRY_USERNAME";
/// Environment variable holding the password (or token) that goes with [`USERNAME_VAR`].
pub const PASSWORD_VAR: &str = "DOCKER_RELEASE_REGISTRY_PASSWORD";

/// The key `docker login` stores Docker Hub's credentials under.
pub const HUB_KEY: &str = "https://index.docker.io/v1/";

/// The user name that marks a [`Credential`] as an identity token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

/// Whether `host` is Docker Hub (`docker.io`, `index.docker.io`, `registry-1.docker.io`).
///
/// ```
/// use image_io::registry::credentials::is_docker_hub;
/// assert!(is_docker_hub("docker.io"));
/// assert!(is_docker_hub("registry-1.docker.io"));
/// assert!(!is_docker_hub("ghcr.io"));
/// ```
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// A user name and password (or token). `Debug` never shows the password.
///
/// A user name of [`IDENTITY_TOKEN_USER`] makes the password an identity token (an OAuth2
/// refresh token): it is exchanged at the registry's token service, never sent as a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl Credential {
    /// The identity token this credential holds, if it is one.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where credentials come from; see the module documentation for the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialStore {
    /// Credentials for every registry (from the `DOCKER_RELEASE_REGISTRY_*` variables).
    pub fixed: Option<Credential>,
    /// The Docker CLI configuration file, if one is known.
    pub config_file: Option<PathBuf>,
    /// The search path for `docker-credential-*` helpers (a `PATH` value).
    pub helper_path: Option<OsString>,
    /// How long a credential helper may take (`None`: [`crate::stall::DEFAULT_STALL`]); one
    /// that waits longer (a keychain prompt nobody answers) is ended and reported.
    pub helper_timeout: Option<std::time::Duration>,
}

/// Why credentials could not be read. Finding none is not an error.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The configuration file exists but is unusable.
    #[error("{path} cannot be used: {problem}; fix it or run `docker login` again")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A credential helper is configured but failed.
    #[error("the credential helper docker-credential-{helper} (configured in {config}) failed for {host}: {problem}")]
    Helper {
        /// The helper's name (`desktop`, `pass`, `ecr-login`, ...).
        helper: String,
        /// The configuration file that names it.
        config: PathBuf,
        /// The registry host asked about.
        host: String,
        /// What happened.
        problem: String,
    },
}

impl CredentialStore {
    /// [`CredentialStore::get`] off the async worker threads (a credential helper is a process).
    pub(crate) async fn lookup(
        &self,
        host: &str,
    ) -> Result<Option<Credential>, super::RegistryError> {
        let (store, host) = (self.clone(), host.to_string());
        tokio::task::spawn_blocking(move || store.get(&host))
            .await
            .map_err(|e| super::RegistryError::Internal(format!("credential lookup failed: {e}")))?
            .map_err(super::RegistryError::from)
    }

    /// The store described by the environment: `env` looks up a variable (production passes
    /// `std::env::var`; tests pass a map). Reads `DOCKER_RELEASE_REGISTRY_USERNAME`,
    /// `DOCKER_RELEASE_REGISTRY_PASSWORD`, `DOCKER_CONFIG`, `HOME` and `PATH`.
    ///
    /// ```
    /// use image_io::registry::credentials::CredentialStore;
    /// let store = CredentialStore::from_env(&|name| match name {
    ///     "HOME" => Some("/home/me".to_string()),
    ///     _ => None,
    /// });
    /// assert_eq!(store.config_file.unwrap().to_str(), Some("/home/me/.docker/config.json"));
    /// assert!(store.fixed.is_none());
    /// ```
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> CredentialStore {
        let set = |name| env(name).filter(|v: &String| !v.is_empty());
        let fixed = match (set(USERNAME_VAR), set(PASSWORD_VAR)) {
            (Some(username), Some(password)) => Some(Credential { username, password }),
            _ => None,
        };
        let dir = match set("DOCKER_CONFIG") {
            Some(d) => Some(PathBuf::from(d)),
            None => set("HOME").map(|h| Path::new(&h).join(".docker")),
        };
        CredentialStore {
            fixed,
            config_file: dir.map(|d| d.join("config.json")),
            helper_path: set("PATH").map(OsString::from),
            helper_timeout: None,
        }
    }

    /// The credentials for registry `host` (`host[:port]`), or `None` when none are configured.
    ///
    /// Runs a credential helper when the configuration names one; call it off the async
    /// runtime's worker threads (`spawn_blocking`).
    pub fn get(&self, host: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some(c) = &self.fixed {
            return Ok(Some(c.clone()));
        }
        let Some(path) = &self.config_file else {
            return Ok(None);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(config_error(path, e.to_string())),
        };
        let config: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| config_error(path, format!("it is not valid JSON ({e})")))?;
        // The names this registry may be stored under, in the order the Docker CLI asks.
        let keys: Vec<&str> = if is_docker_hub(host) {
            vec![
                HUB_KEY,
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
            ]
        } else {
            vec![host]
        };
        let helpers = config.get("credHelpers");
        let named = keys.iter().find_map(|k| {
            helpers
                .and_then(|h| h.get(*k))
                .and_then(|h| h.as_str())
                .filter(|h| !h.is_empty())
                .map(|h| (h, *k))
        });
        let store = config
            .get("credsStore")
            .and_then(|h| h.as_str())
            .filter(|h| !h.is_empty())
            .map(|h| (h, keys[0]));
        if let Some((helper, key)) = named.or(store) {
            return self.run_helper(helper, path, key);
        }
        let Some(entry) = config
            .get("auths")
            .and_then(|a| a.as_object())
            .and_then(|a| {
                keys.iter().find_map(|k| {
                    a.get(*k).or_else(|| {
                        a.iter()
                            .find(|(key, _)| auths_key_host(key) == auths_key_host(k))
                            .map(|(_, v)| v)
                    })
                })
            })
        else {
            return Ok(None);
        };
        let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        if !text("identitytoken").is_empty() {
            return Ok(Some(Credential {
                username: IDENTITY_TOKEN_USER.to_string(),
                password: text("identitytoken").to_string(),
            }));
        }
        if !text("auth").is_empty() {
            let bad = |why: &str| config_error(path, format!("auths[{host:?}].auth {why}"));
            let decoded = BASE64
                .decode(text("auth").trim())
                .map_err(|_| bad("is not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad("does not decode to user:password"))?;
            return Ok(Some(Credential {
                username: user.to_string(),
                password: pass.to_string(),
            }));
        }
        if !text("username").is_empty() {
            return Ok(Some(Credential {
                username: text("username").to_string(),
                password: text("password").to_string(),
            }));
        }
        Ok(None)
    }

    /// `docker-credential-<helper> get`, host on stdin, `{"Username","Secret"}` on stdout.
    fn run_helper(
        &self,
        helper: &str,
        config: &Path,
        host: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let err = |problem: String| CredentialError::Helper {
            helper: helper.to_string(),
            config: config.to_path_buf(),
            host: host.to_string(),
            problem,
        };
        let name = format!("docker-credential-{helper}");
        let program = self.find_program(&name).ok_or_else(|| {
            err(format!(
                "{name} is not on PATH; install it or remove the helper from the configuration"
            ))
        })?;
        let limit = self.helper_timeout.unwrap_or(crate::stall::DEFAULT_STALL);
        let out = crate::process::run(&program, &["get"], host.as_bytes(), limit)
            .map_err(|e| err(format!("cannot run {}: {e}", program.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status != 0 {
            let said = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            // The helpers' protocol: this message means "no credentials stored for this host".
            if said.contains("credentials not found") {
                return Ok(None);
            }
            return Err(err(format!(
                "it exited with status {}: {}",
                out.status,
                said.trim()
            )));
        }
        // The output is not quoted in the error: it may hold the secret.
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .map_err(|e| err(format!("its output is not the expected JSON ({e})")))?;
        let field = |k| json.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        if field("Secret").is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential {
            username: field("Username").to_string(),
            password: field("Secret").to_string(),
        }))
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.helper_path.as_ref()?;
        std::env::split_paths(path)
            .map(|dir| dir.join(name))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }
}

/// The host an `auths` key names: `https://host/v1/` → `host`.
///
/// ```
/// use image_io::registry::credentials::auths_key_host;
/// assert_eq!(auths_key_host("https://registry.example.com/v1/"), "registry.example.com");
/// assert_eq!(auths_key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
/// assert_eq!(auths_key_host("localhost:5000"), "localhost:5000");
/// ```
pub fn auths_key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn config_error(path: &Path, problem: String) -> CredentialError {
    CredentialError::Config {
        path: path.to_path_buf(),
        problem,
    }
}
