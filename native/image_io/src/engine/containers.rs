//! Temporary containers and cache volumes: the calls of the builder ([`crate::builder`]) and the
//! Dockerfile flow ([`crate::dockerfiles`]), and the lifecycle they share.
//!
//! Every temporary container carries [`LABEL_TEMPORARY`]`=true` and [`LABEL_OWNER`]`=HOST:PID`
//! ([`ContainerSpec::temporary`]). It is removed by its user on success, failure and
//! cancellation; when the user's future is dropped instead, the [`Temporary`] guard hands the
//! removal to the runtime; when the process is killed outright nothing runs, and the next run's
//! [`sweep_leftovers`] removes containers whose owner process on this host is gone. Cleanup
//! never depends on code running at exit.

use super::{status_of, Body, DockerEngine, Engine, EngineError, EngineKind};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptions, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

/// Label on every temporary container docker_release creates (value `true`).
pub const LABEL_TEMPORARY: &str = "docker_release.temporary";
/// Label naming the process that owns a temporary container: `HOSTNAME:PID`.
pub const LABEL_OWNER: &str = "docker_release.owner";

/// A container that has been stopped for this long without being removed is swept even when
/// its owner still runs (it was created and then abandoned).
const ABANDONED_AFTER_SECS: i64 = 600;

/// An image, as the engine describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image ID (`sha256:…`).
    pub id: String,
    /// The image's configured user (`""` for root).
    pub user: String,
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// Image reference.
    pub image: String,
    /// PID 1, replacing the image's entrypoint and command (`[]`: the image's, with `cmd`).
    pub entrypoint: Vec<String>,
    /// Labels ([`ContainerSpec::temporary`] adds ours).
    pub labels: BTreeMap<String, String>,
    /// Named volumes: `(volume, mount path)`.
    pub volumes: Vec<(String, String)>,
    /// Working directory (`""`: the image's).
    pub working_dir: String,
    /// The container's name (`None`: the engine picks one).
    pub name: Option<String>,
    /// How the container is used:
    ///
    /// - `true`, a *lifeline* container (the builder's): stdin open for one attach and closed
    ///   with it (`OpenStdin`, `StdinOnce`, `AttachStdin`), `AutoRemove`. PID 1 reads stdin, so
    ///   when the attach connection closes (this process dies, however it dies) PID 1 exits and
    ///   the engine removes the container;
    /// - `false`: never started (the Dockerfile flow reads a file out of it): a command that
    ///   exists everywhere (`true`) and no network.
    pub lifeline: bool,
}

impl ContainerSpec {
    /// A temporary container of `image`: labelled [`LABEL_TEMPORARY`] and [`LABEL_OWNER`] (this
    /// process), so that [`sweep_leftovers`] finds it if this process dies before removing it.
    pub fn temporary(image: impl Into<String>) -> ContainerSpec {
        ContainerSpec {
            image: image.into(),
            labels: BTreeMap::from([
                (LABEL_TEMPORARY.to_string(), "true".to_string()),
                (LABEL_OWNER.to_string(), owner()),
            ]),
            ..ContainerSpec::default()
        }
    }
}

/// One command to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// User (`None`: the container's).
    pub user: Option<String>,
    /// Working directory.
    pub working_dir: String,
}

/// A chunk of exec output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// From stdout.
    Stdout(Bytes),
    /// From stderr.
    Stderr(Bytes),
}

/// Exec output, as it arrives.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, EngineError>> + Send>>;

/// An open attach connection to a container's stdin: the container lives while it is held.
/// Dropping it closes the connection.
pub struct StdinHold(#[allow(dead_code)] std::sync::Mutex<Box<dyn std::any::Any + Send>>);

impl StdinHold {
    /// Wrap whatever keeps the connection open.
    pub fn new(conn: impl std::any::Any + Send) -> StdinHold {
        StdinHold(std::sync::Mutex::new(Box::new(conn)))
    }
}

impl std::fmt::Debug for StdinHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdinHold")
    }
}

/// A labelled container, as [`Containers::list_containers`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledContainer {
    /// Container ID.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `true` while running (or paused, restarting).
    pub running: bool,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// The lifecycle every temporary container shares: create, remove, list by label (for
/// [`sweep_leftovers`]). [`DockerEngine`] implements it with bollard, tests with fakes.
pub trait Containers: Send + Sync {
    /// Create a container (not started); returns its ID.
    fn create_container(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Remove the container (forced, with anonymous volumes) and wait until it is gone. A
    /// container that is already gone is not an error.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Start removing a container in the background, without waiting (used when the future
    /// that would have removed it is dropped).
    fn remove_container_detached(&self, id: String);
    /// Containers, running or not, carrying label `key=value`.
    fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<LabelledContainer>, EngineError>> + Send;
    /// The command-line tool people use with this engine (`docker`, `podman`: see
    /// [`EngineKind::cli`]), for the commands a message tells them to type. Never fails: an
    /// engine that cannot say is taken for Docker.
    fn cli(&self) -> impl Future<Output = &'static str> + Send {
        async { EngineKind::Docker.cli() }
    }
}

/// What a builder container needs beyond the lifecycle: the image, a held stdin, uploads,
/// execs, cache volumes.
pub trait ContainerEngine: Containers {
    /// The image's ID and user, or `None` when the engine has no such image (the `String` is
    /// the engine's message).
    fn inspect_image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Result<ImageInfo, String>, EngineError>> + Send;
    /// Attach to the container's stdin (stream mode, nothing else) and hold the connection.
    fn attach_stdin(&self, id: &str)
        -> impl Future<Output = Result<StdinHold, EngineError>> + Send;
    /// Start the container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Extract the tar stream `tar` into directory `dir` of the container (`PUT …/archive`).
    fn upload(
        &self,
        id: &str,
        dir: &str,
        tar: Body,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Start a command; returns the exec ID and its stdout/stderr.
    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> impl Future<Output = Result<(String, OutputStream), EngineError>> + Send;
    /// The exit status of a finished exec (`None` while it runs).
    fn exec_status(
        &self,
        exec_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, EngineError>> + Send;
    /// Create a named volume (an existing one is kept).
    fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Remove a named volume; a missing one is not an error.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Names of the volumes carrying label `key=value`.
    fn list_volumes(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
}

/// The list filter for label `key=value`.
fn label_filter(key: &str, value: &str) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![format!("{key}={value}")])])
}

fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build()
}

impl Containers for DockerEngine {
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let mounts = spec
            .volumes
            .iter()
            .map(|(name, target)| Mount {
                typ: Some(MountType::VOLUME),
                source: Some(name.clone()),
                target: Some(target.clone()),
                ..Default::default()
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
            working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
            labels: Some(spec.labels.clone().into_iter().collect::<HashMap<_, _>>()),
            // The lifeline: stdin open for one attach; EOF on it ends PID 1.
            open_stdin: spec.lifeline.then_some(true),
            stdin_once: spec.lifeline.then_some(true),
            attach_stdin: spec.lifeline.then_some(true),
            attach_stdout: spec.lifeline.then_some(false),
            attach_stderr: spec.lifeline.then_some(false),
            tty: spec.lifeline.then_some(false),
            // Never started: a command makes creation work for images without CMD/ENTRYPOINT.
            cmd: (!spec.lifeline && spec.entrypoint.is_empty()).then(|| vec!["true".to_string()]),
            network_disabled: (!spec.lifeline).then_some(true),
            host_config: Some(HostConfig {
                auto_remove: spec.lifeline.then_some(true),
                mounts: Some(mounts),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut opts = CreateContainerOptionsBuilder::default();
        if let Some(name) = &spec.name {
            opts = opts.name(name);
        }
        match self.docker.create_container(Some(opts.build()), body).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self.failure(&format!("creating a container of {}", spec.image), e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        match self
            .docker
            .remove_container(id, Some(remove_options()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if already_gone(&e) => return Ok(()),
            // 409 "removal already in progress": AutoRemove raced us. Wait for it below.
            Err(e) if status_of(&e) == Some(409) => {}
            Err(e) => return Err(self.failure("removing the container", e)),
        }
        for _ in 0..100 {
            match self.docker.inspect_container(id, None).await {
                Err(e) if already_gone(&e) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(EngineError::Api {
            action: "removing the container".into(),
            message: format!("container {id} is still there after 10 s"),
        })
    }

    fn remove_container_detached(&self, id: String) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            rt.spawn(async move {
                let _ = docker.remove_container(&id, Some(remove_options())).await;
            });
        }
    }

    async fn list_containers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<LabelledContainer>, EngineError> {
        use bollard::models::ContainerSummaryStateEnum as S;
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&label_filter(key, value))
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.failure("listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(LabelledContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    running: matches!(c.state, Some(S::RUNNING | S::PAUSED | S::RESTARTING)),
                    created: c.created.unwrap_or(0),
                })
            })
            .collect())
    }

    async fn cli(&self) -> &'static str {
        // `GET /version`, asked once per connection (the engine sink asks it too).
        Engine::cli(self).await
    }
}

impl ContainerEngine for DockerEngine {
    async fn inspect_image(
        &self,
        reference: &str,
    ) -> Result<Result<ImageInfo, String>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Ok(ImageInfo {
                id: i.id.unwrap_or_default(),
                user: i.config.and_then(|c| c.user).unwrap_or_default(),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Ok(Err(message)),
            Err(e) => Err(self.failure("the image inspection", e)),
        }
    }

    async fn attach_stdin(&self, id: &str) -> Result<StdinHold, EngineError> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(false)
            .stderr(false)
            .stream(true)
            .logs(false)
            .build();
        let conn = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| self.failure("attaching to the builder container", e))?;
        Ok(StdinHold::new(conn))
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| self.failure("starting the builder container", e))
    }

    async fn upload(&self, id: &str, dir: &str, tar: Body) -> Result<(), EngineError> {
        let opts = UploadToContainerOptionsBuilder::default().path(dir).build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_try_stream(tar))
            .await
            .map_err(|e| self.failure("the upload of the project", e))
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<(String, OutputStream), EngineError> {
        let config = bollard::exec::CreateExecOptions::<String> {
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            working_dir: Some(spec.working_dir.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| self.failure("creating an exec in the builder", e))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.failure("starting an exec in the builder", e))?;
        match started {
            bollard::exec::StartExecResults::Attached { output, .. } => {
                let endpoint = self.endpoint().to_string();
                let stream = output.filter_map(move |item| {
                    let endpoint = endpoint.clone();
                    async move {
                        use bollard::container::LogOutput;
                        match item {
                            Ok(LogOutput::StdOut { message })
                            | Ok(LogOutput::Console { message }) => {
                                Some(Ok(Output::Stdout(message)))
                            }
                            Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
                            Ok(LogOutput::StdIn { .. }) => None,
                            Err(e) => {
                                Some(Err(super::failure(&endpoint, "reading exec output", e)))
                            }
                        }
                    }
                });
                Ok((created.id, Box::pin(stream)))
            }
            bollard::exec::StartExecResults::Detached => Err(EngineError::Api {
                action: "starting an exec in the builder".into(),
                message: "the engine started the exec detached: no output to read".into(),
            }),
        }
    }

    async fn exec_status(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        let i = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| self.failure("inspecting an exec", e))?;
        if i.running == Some(true) {
            return Ok(None);
        }
        Ok(i.exit_code)
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let req = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("creating the cache volume {name}"), e))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let opts = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self.docker.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failure(
                &format!("removing the cache volume {name} (is another build using it?)"),
                e,
            )),
        }
    }

    async fn list_volumes(&self, key: &str, value: &str) -> Result<Vec<String>, EngineError> {
        let opts = ListVolumesOptionsBuilder::default()
            .filters(&label_filter(key, value))
            .build();
        let r = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| self.failure("listing volumes", e))?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }
}

/// A container that is removed in the background if dropped before [`Temporary::remove`] or
/// [`Temporary::forget`]: the guard of every temporary container.
pub struct Temporary<'a, E: Containers> {
    engine: &'a E,
    id: Option<String>,
    cli: &'static str,
}

impl<'a, E: Containers> Temporary<'a, E> {
    /// Create the container `spec` describes and guard it. The engine's kind is asked first,
    /// while it answers: a container that cannot be removed later is named with its engine's
    /// command ([`Temporary::cli`]).
    pub async fn create(engine: &'a E, spec: &ContainerSpec) -> Result<Self, EngineError> {
        let cli = engine.cli().await;
        let id = engine.create_container(spec).await?;
        Ok(Temporary {
            engine,
            id: Some(id),
            cli,
        })
    }

    /// The container's ID (empty once removed or forgotten).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The command people use with the container's engine (`docker`, `podman`): what a
    /// message about a container left behind tells them to type (`{cli} rm -f {id}`).
    pub fn cli(&self) -> &'static str {
        self.cli
    }

    /// The engine it lives in.
    pub fn engine(&self) -> &'a E {
        self.engine
    }

    /// Remove the container and wait until it is gone.
    pub async fn remove(mut self) -> Result<(), EngineError> {
        match self.id.clone() {
            Some(id) => {
                // Forgotten even when the removal fails: the caller reports it.
                let result = self.engine.remove_container(&id).await;
                self.id = None;
                result
            }
            None => Ok(()),
        }
    }

    /// Stop guarding the container (someone else removes it now); returns its ID.
    pub fn forget(mut self) -> String {
        self.id.take().unwrap_or_default()
    }
}

impl<E: Containers> Drop for Temporary<'_, E> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.engine.remove_container_detached(id);
        }
    }
}

/// Whether the engine's answer says the container is gone already: 404 (Docker; Podman's
/// compatible API for a container it removed itself, e.g. with AutoRemove), or a Podman answer
/// with another status whose message names it ("no such container", "container has already
/// been removed"). Either way there is nothing left to remove.
fn already_gone(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => {
            let m = message.to_ascii_lowercase();
            *status_code == 404
                || m.contains("no such container")
                || m.contains("already been removed")
        }
        _ => false,
    }
}

/// This process as [`LABEL_OWNER`] names it: `HOSTNAME:PID`.
pub fn owner() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether `pid` names a live process on this host.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove temporary containers (labelled [`LABEL_TEMPORARY`]`=true`) that nobody will remove:
/// those whose [`LABEL_OWNER`] is a process of this host that is gone, and those that are not
/// running and were created more than ten minutes ago. Running containers of live processes or
/// of other hosts are left alone. Returns how many were removed.
///
/// ```no_run
/// # async fn f(engine: &image_io::engine::DockerEngine) {
/// let removed = image_io::engine::sweep_leftovers(engine).await.unwrap_or(0);
/// # }
/// ```
pub async fn sweep_leftovers(engine: &impl Containers) -> Result<usize, EngineError> {
    let host = hostname();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut removed = 0;
    for c in engine.list_containers(LABEL_TEMPORARY, "true").await? {
        let owner_gone = c
            .labels
            .get(LABEL_OWNER)
            .and_then(|o| o.rsplit_once(':'))
            .is_some_and(|(h, pid)| h == host && !pid.parse().is_ok_and(alive));
        let abandoned = !c.running && now - c.created > ABANDONED_AFTER_SECS;
        if owner_gone || abandoned {
            engine.remove_container(&c.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::already_gone;
    use bollard::errors::Error;

    fn answer(status_code: u16, message: &str) -> Error {
        Error::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn a_container_the_engine_removed_already_is_gone() {
        // Docker 20.10 and Podman 4.3's compatible API (checked: DELETE of an unknown ID).
        assert!(already_gone(&answer(404, "No such container: 1234")));
        assert!(already_gone(&answer(
            404,
            "no container with name or ID \"1234\" found: no such container"
        )));
        // Podman's libpod error for a container removed while we asked.
        assert!(already_gone(&answer(
            500,
            "container has already been removed"
        )));
        assert!(!already_gone(&answer(500, "device or resource busy")));
        assert!(!already_gone(&answer(
            409,
            "removal of container 1234 is already in progress"
        )));
    }
}
