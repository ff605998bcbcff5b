//! The image calls: what the engine sink and base images need.

use super::{bollard_chain, stalled_in, status_of, Body, DockerEngine, EngineError, EngineKind};
use bollard::query_parameters::{ImportImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use std::future::Future;

/// The engine calls docker_release makes.
pub trait Engine: Send + Sync {
    /// `os/arch` of the engine, e.g. `linux/amd64`.
    fn platform(&self) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Which engine this is (Docker unless it says otherwise).
    fn kind(&self) -> impl Future<Output = Result<EngineKind, EngineError>> + Send {
        async { Ok(EngineKind::Docker) }
    }
    /// The command people use with this engine ([`EngineKind::cli`]), for the commands a
    /// message tells them to type; Docker's when the engine cannot say.
    fn cli(&self) -> impl Future<Output = &'static str> + Send {
        async {
            self.kind()
                .await
                .map_or(EngineKind::Docker.cli(), EngineKind::cli)
        }
    }
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
    /// The `diff_id`s of the layers of the image `reference` names (`RootFS.Layers`), bottom
    /// first; `None` when the engine has no such image. An engine that cannot say answers
    /// `None`: the caller then assumes it has no layer.
    fn layers(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>, EngineError>> + Send {
        let _ = reference;
        async { Ok(None) }
    }
}

impl Engine for DockerEngine {
    async fn platform(&self) -> Result<String, EngineError> {
        Ok(self.version().await?.0)
    }

    async fn kind(&self) -> Result<EngineKind, EngineError> {
        Ok(self.version().await?.1)
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
                        "the engine closed the connection during the upload ({}); check the engine's log ({}) and its free disk space",
                        bollard_chain(&e),
                        super::hints(&self.endpoint).log
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
            Err(e) if status_of(&e) == Some(404) => Ok(None),
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

    async fn layers(&self, reference: &str) -> Result<Option<Vec<String>>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(i.root_fs.and_then(|r| r.layers).unwrap_or_default())),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failure(&format!("looking up {reference}"), e)),
        }
    }
}

impl DockerEngine {
    /// The engine's `os/arch` and kind, from one `GET /version` (asked once).
    async fn version(&self) -> Result<(String, EngineKind), EngineError> {
        let version = self
            .version
            .get_or_try_init(|| async {
                let v = self
                    .docker
                    .version()
                    .await
                    .map_err(|e| self.failure("the version query", e))?;
                let kind = EngineKind::of_version(&v);
                Ok::<_, EngineError>((
                    format!(
                        "{}/{}",
                        v.os.unwrap_or_else(|| "linux".into()),
                        v.arch.unwrap_or_else(|| "amd64".into())
                    ),
                    kind,
                ))
            })
            .await?;
        Ok(version.clone())
    }

    /// Whether the engine has an image `reference` names.
    pub async fn has_image(&self, reference: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.failure("the image inspection", e)),
        }
    }

    /// The ID and platform (`os/arch[/variant]`) of the image `reference` names; `None` when the
    /// engine has no such image.
    pub async fn image_platform(
        &self,
        reference: &str,
    ) -> Result<Option<(String, String)>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => {
                let mut platform = format!(
                    "{}/{}",
                    i.os.unwrap_or_else(|| "linux".into()),
                    i.architecture.unwrap_or_default()
                );
                if let Some(v) = i.variant.filter(|v| !v.is_empty()) {
                    platform = format!("{platform}/{v}");
                }
                Ok(Some((i.id.unwrap_or_default(), platform)))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failure("the image inspection", e)),
        }
    }

    /// Pull `reference` (`NAME@sha256:…`, a manifest of `platform`) from its registry into the
    /// engine. Pulled by digest, the image gets no tag: no name the user has moves. `credential`
    /// goes to the engine as the registry's login (`X-Registry-Auth`).
    pub async fn pull_by_digest(
        &self,
        reference: &str,
        platform: &str,
        credential: Option<(String, String)>,
    ) -> Result<(), EngineError> {
        let opts = bollard::query_parameters::CreateImageOptions {
            from_image: Some(reference.to_string()),
            platform: platform.to_string(),
            ..Default::default()
        };
        let credentials = credential.map(|(username, password)| bollard::auth::DockerCredentials {
            username: Some(username),
            password: Some(password),
            ..Default::default()
        });
        let action = format!("pulling {reference}");
        let mut stream = self.docker.create_image(Some(opts), None, credentials);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(EngineError::Api {
                        action,
                        message: error,
                    })
                }
                Err(e) => return Err(self.failure(&action, e)),
            }
        }
        Ok(())
    }

    /// The image `reference` names as a docker-archive stream (`GET /images/{name}/get`).
    pub fn export(&self, reference: &str) -> Body {
        let endpoint = self.endpoint().to_string();
        Box::pin(self.docker.export_image(reference).map(move |chunk| {
            chunk.map_err(|e| {
                std::io::Error::other(
                    super::failure(&endpoint, "the export of the image", e).to_string(),
                )
            })
        }))
    }
}
