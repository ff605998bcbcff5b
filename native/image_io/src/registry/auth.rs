//! Answering a registry's `WWW-Authenticate` challenge: `Basic` with the credentials found
//! ([`super::credentials`]), `Bearer` with a token from the realm (an identity token exchanged
//! with the OAuth2 refresh-token grant).

use super::client::{connection, failure, read_body, watch_stall, Registry};
use super::RegistryError;
use crate::registry::credentials::Credential;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use std::collections::HashMap;

impl Registry {
    /// Turn a `WWW-Authenticate` challenge into an `Authorization` value for `path`.
    pub(super) async fn authorize(
        &mut self,
        path: &str,
        challenge: &str,
    ) -> Result<(), RegistryError> {
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
        let found = self.store.lookup(&self.host).await?;
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

    pub(super) fn refused(&self, path: &str, status: StatusCode) -> RegistryError {
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

fn basic(c: &Credential) -> String {
    BASE64.encode(format!("{}:{}", c.username, c.password))
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
