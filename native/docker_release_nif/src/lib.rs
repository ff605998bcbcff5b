//! The NIF: decodes terms, starts jobs on one shared tokio runtime, forwards messages back.
//! Everything else (which outputs, the engine's address, locks) is `image_io`'s.
//!
//! A job's messages to its caller are `{:docker_release, id, payload}` with payload one of
//! `{:step, text}`, `{:notice, text}`, `{:output, step, line}`, `{:bytes, step, done}`
//! (throttled), and finally exactly one of `{:ok, outcome}` or `{:error, reason, message}` —
//! also when the job panics. Outcomes are encoded from their `Serialize` form ([`term`]).

mod term;

use image_core::plan::Settings;
use image_core::platform::PlatformOptions;
use image_core::reference::Reference;
use image_core::supply::sbom::{Dep, DepSource, SbomFormat, SbomSpec};
use image_core::supply::signing::SigningKey;
use image_io::dockerfiles::DockerfileFlow;
use image_io::error::{Failure, Reason};
use image_io::lock::{FileLock, Taken};
use image_io::pipeline::{self, stall_from_secs, Event, Outputs, Request, Source};
use image_io::registry::RegistryOptions;
use rustler::{
    Atom, Encoder, Env, LocalPid, Monitor, NifStruct, OwnedEnv, Resource, ResourceArc, Term,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

mod atoms {
    rustler::atoms! { ok, error, busy, docker_release, step, notice, bytes, output }
}

/// Mirrors `DockerRelease.Native.Request` (all keys always present).
#[derive(NifStruct)]
#[module = "DockerRelease.Native.Request"]
struct NifRequest {
    release_dir: String,
    release_name: String,
    own_apps: Vec<String>,
    otp_apps: Vec<String>,
    extra_files: Vec<String>,
    uid: u32,
    gid: u32,
    env: Vec<String>,
    labels: Vec<(String, String)>,
    exposed_ports: Vec<String>,
    created: u64,
    compression_level: u32,
    tags: Vec<String>,
    work_dir: String,
    layer_cache: Option<String>,
    output: Option<String>,
    fallback_output: String,
    load: bool,
    push: bool,
    insecure_registry: bool,
    registry_ca: Option<String>,
    metadata_file: Option<String>,
    builder: Option<String>,
    named_release: bool,
    project_dir: String,
    mix_env: String,
    no_cache: bool,
    base: Option<String>,
    platforms: Vec<String>,
    platform_images: Vec<(String, String)>,
    emulate: bool,
    stall_timeout: u64,
    annotations: Vec<(String, String)>,
    sbom: Option<NifSbom>,
    sbom_file: Option<String>,
    sign_key: Option<String>,
    await_host_build: bool,
}

/// Mirrors `DockerRelease.Native.Sbom`.
#[derive(NifStruct)]
#[module = "DockerRelease.Native.Sbom"]
struct NifSbom {
    format: String,
    name: String,
    version: String,
    source: Option<String>,
    revision: Option<String>,
    tool_version: String,
    deps: Vec<NifDep>,
}

/// Mirrors `DockerRelease.Native.Dep`: `kind` is `"hex"`, `"git"` or `"path"`.
#[derive(NifStruct)]
#[module = "DockerRelease.Native.Dep"]
struct NifDep {
    app: String,
    kind: String,
    package: Option<String>,
    repo: Option<String>,
    checksum: Option<String>,
    url: Option<String>,
    rev: Option<String>,
    path: Option<String>,
    depends_on: Vec<String>,
}

impl NifSbom {
    fn into_spec(self, created: u64) -> SbomSpec {
        SbomSpec {
            format: SbomFormat::parse(&self.format).unwrap_or_default(),
            name: self.name,
            version: self.version,
            source: self.source,
            revision: self.revision,
            tool_version: self.tool_version,
            created,
            deps: self
                .deps
                .into_iter()
                .map(|d| Dep {
                    source: match d.kind.as_str() {
                        "hex" => DepSource::Hex {
                            package: d.package.unwrap_or_else(|| d.app.clone()),
                            repo: d.repo.unwrap_or_else(|| "hexpm".into()),
                            checksum: d.checksum,
                        },
                        "git" => DepSource::Git {
                            url: d.url.unwrap_or_default(),
                            rev: d.rev.unwrap_or_default(),
                        },
                        _ => DepSource::Path { path: d.path },
                    },
                    app: d.app,
                    depends_on: d.depends_on,
                })
                .collect(),
        }
    }
}

impl From<NifRequest> for Request {
    fn from(r: NifRequest) -> Request {
        let stall_timeout = stall_from_secs(r.stall_timeout);
        Request {
            source: match r.builder {
                Some(image) => Source::Builder {
                    image,
                    named_release: r.named_release,
                    project_dir: r.project_dir.into(),
                    mix_env: r.mix_env,
                    cache: !r.no_cache,
                },
                None => Source::Host,
            },
            base: r.base,
            platforms: PlatformOptions {
                platforms: r.platforms,
                images: r.platform_images,
                emulate: r.emulate,
            },
            settings: Settings {
                release_dir: r.release_dir.into(),
                release_name: r.release_name,
                own_apps: r.own_apps,
                otp_apps: r.otp_apps,
                extra_files: r.extra_files.into_iter().map(PathBuf::from).collect(),
                uid: r.uid,
                gid: r.gid,
                env: r.env,
                labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
                exposed_ports: r.exposed_ports,
                annotations: r.annotations.into_iter().collect::<BTreeMap<_, _>>(),
                sbom: r.sbom.map(|s| s.into_spec(r.created)),
            },
            created: r.created,
            compression_level: r.compression_level.clamp(1, 9),
            tags: r.tags,
            work_dir: r.work_dir.into(),
            layer_cache: r.layer_cache.map(PathBuf::from),
            outputs: Outputs::choose(
                r.load,
                r.output.map(PathBuf::from),
                r.push.then(|| RegistryOptions {
                    insecure: r.insecure_registry,
                    ca_file: r.registry_ca.map(PathBuf::from),
                    stall_timeout: Some(stall_timeout),
                    ..Default::default()
                }),
                r.fallback_output.into(),
            ),
            metadata_file: r.metadata_file.map(PathBuf::from),
            stall_timeout,
            supply: image_core::supply::Outputs {
                sbom_file: r.sbom_file.map(PathBuf::from),
                sign_key: r.sign_key.map(zeroize::Zeroizing::new),
            },
        }
    }
}

/// A running job. The job itself holds a reference to its handle until its final message is
/// sent, so the handle lives as long as the work whatever the caller does with its copy (a
/// caller that drops it, or whose compiler no longer keeps it live, must not cancel the build
/// when the garbage collector runs). The job is cancelled when the caller dies (monitored).
struct Job {
    cancel: CancellationToken,
    /// Resumes a job that waits for the host's release build (`job_resume`).
    resume: Mutex<Option<oneshot::Sender<()>>>,
}

#[rustler::resource_impl]
impl Resource for Job {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        self.cancel.cancel();
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("docker_release")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the docker_release runtime: {e}"))
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Sends `{:docker_release, id, payload}` to the caller from runtime threads.
#[derive(Clone)]
struct Reply {
    pid: LocalPid,
    id: u64,
}

impl Reply {
    fn send<F>(&self, payload: F)
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        let mut env = OwnedEnv::new();
        let id = self.id;
        // A dead caller is not an error: the job is being cancelled.
        let _ = env.send_and_clear(&self.pid, |env| {
            (atoms::docker_release(), id, payload(env)).encode(env)
        });
    }

    fn failure(&self, f: Failure) {
        self.send(move |env| error_term(env, &f));
    }

    fn success<T: Serialize>(&self, value: T) {
        self.send(move |env| match term::to_term(env, &value) {
            Ok(t) => (atoms::ok(), t).encode(env),
            Err(e) => error_term(
                env,
                &Failure::internal(format!(
                    "the result could not be sent ({e}); please report this as a bug"
                )),
            ),
        });
    }
}

/// `{:error, reason, message}`.
fn error_term<'a>(env: Env<'a>, f: &Failure) -> Term<'a> {
    let reason = Atom::from_str(env, f.reason.as_str()).unwrap_or_else(|_| atoms::error());
    (atoms::error(), reason, f.message.as_str()).encode(env)
}

/// Start a build; returns `{:ok, job, id}` at once. Messages follow as described above. With
/// `await_host_build`, the job waits at its release stage for [`job_resume`].
#[rustler::nif]
fn image_build(env: Env, request: NifRequest) -> (Atom, ResourceArc<Job>, u64) {
    let (resume, host_build) = if request.await_host_build {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let request: Request = request.into();
    start_job(env, resume, move |events, cancel| {
        pipeline::run(request, events, cancel, host_build)
    })
}

/// The host's release is built: the job goes on. Resuming twice, or a job that does not wait,
/// is harmless.
#[rustler::nif]
fn job_resume(job: ResourceArc<Job>) -> Atom {
    if let Some(tx) = job.resume.lock().ok().and_then(|mut r| r.take()) {
        let _ = tx.send(());
    }
    atoms::ok()
}

/// Cancel a job: it ends with `{:error, :cancelled, message}`.
#[rustler::nif]
fn job_cancel(job: ResourceArc<Job>) -> Atom {
    job.cancel.cancel();
    atoms::ok()
}

/// Mirrors `DockerRelease.Native.DockerfilesRequest`.
#[derive(NifStruct)]
#[module = "DockerRelease.Native.DockerfilesRequest"]
struct NifDockerfiles {
    project_dir: String,
    build_dockerfile: String,
    dockerfile: String,
    build_tag: String,
    version: String,
    release_tarball: String,
    final_tags: Vec<String>,
    no_cache: bool,
    stall_timeout: u64,
}

/// Start the two-Dockerfile flow; returns `{:ok, job, id}` at once, then messages as above.
#[rustler::nif]
fn image_dockerfiles(env: Env, request: NifDockerfiles) -> (Atom, ResourceArc<Job>, u64) {
    let flow = DockerfileFlow {
        project_dir: request.project_dir.into(),
        build_dockerfile: request.build_dockerfile.into(),
        dockerfile: request.dockerfile.into(),
        build_tag: request.build_tag,
        version: request.version,
        release_tarball: request.release_tarball,
        final_tags: request.final_tags,
        no_cache: request.no_cache,
    };
    let stall_timeout = stall_from_secs(request.stall_timeout);
    start_job(env, None, move |events, cancel| {
        pipeline::run_dockerfiles(flow, stall_timeout, events, cancel)
    })
}

/// Start `work` on the shared runtime for the calling process: events become messages, the
/// result becomes the one final message (also on panic), the caller's death cancels it.
fn start_job<W, F, T>(
    env: Env,
    resume: Option<oneshot::Sender<()>>,
    work: W,
) -> (Atom, ResourceArc<Job>, u64)
where
    W: FnOnce(pipeline::Events, CancellationToken) -> F,
    F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let cancel = CancellationToken::new();
    let job = ResourceArc::new(Job {
        cancel: cancel.clone(),
        resume: Mutex::new(resume),
    });
    let pid = env.pid();
    let _ = env.monitor(&job, &pid);
    let reply = Reply { pid, id };

    let events_reply = reply.clone();
    let last_bytes = Mutex::new(Instant::now() - Duration::from_secs(1));
    let events: pipeline::Events = Arc::new(move |event| match event {
        Event::Step(s) => events_reply.send(move |env| (atoms::step(), s).encode(env)),
        Event::Notice(s) => events_reply.send(move |env| (atoms::notice(), s).encode(env)),
        Event::Output { step, line } => {
            events_reply.send(move |env| (atoms::output(), step, line).encode(env))
        }
        Event::Bytes { step, done } => {
            // At most ten progress messages a second.
            let due = match last_bytes.lock() {
                Ok(mut last) if last.elapsed() >= Duration::from_millis(100) => {
                    *last = Instant::now();
                    true
                }
                _ => false,
            };
            if due {
                events_reply.send(move |env| (atoms::bytes(), step, done).encode(env));
            }
        }
    });

    let rt = runtime();
    let work = rt.spawn(work(events, cancel.clone()));
    // Keeps the handle (and so the monitor of the caller) alive until the final message.
    let held = job.clone();
    rt.spawn(async move {
        let _held = held;
        let abort = work.abort_handle();
        let result = tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => {
                // Dropping the work closes any engine connection: the engine discards a partial load.
                abort.abort();
                return reply.failure(Failure::new(Reason::Cancelled, "the build was cancelled"));
            }
        };
        match result {
            Ok(Ok(value)) => reply.success(value),
            Ok(Err(failure)) => reply.failure(failure),
            Err(e) => reply.failure(Failure::internal(format!(
                "the build crashed: {e}; please report this as a bug"
            ))),
        }
    });
    (atoms::ok(), job, id)
}

/// Where the engine is, from the environment (`DOCKER_HOST`, the Docker context, the default
/// socket), checked without connecting: `{:ok, address}`, `{:ok, nil}` when there is no engine
/// socket at the default address (and nothing else is configured), or `{:error, reason,
/// message}` for an explicit address that cannot be used. Lets a run fail before the release
/// build.
#[rustler::nif(schedule = "DirtyIo")]
fn engine_endpoint(env: Env) -> Term {
    match image_io::engine::check_endpoint() {
        Ok(address) => (atoms::ok(), address).encode(env),
        Err(e) => error_term(env, &Failure::from(e)),
    }
}

/// A lock taken by [`lock_try`], held until [`lock_release`] or until the handle is
/// garbage-collected.
struct Lock(Mutex<Option<FileLock>>);

#[rustler::resource_impl]
impl Resource for Lock {}

/// Try to take the lock at `path` ([`FileLock::try_take`]): `{:ok, lock}`, or `{:busy,
/// holder}` with what the holder wrote (its pid), or `{:error, message}`. Never blocks.
#[rustler::nif(schedule = "DirtyIo")]
fn lock_try(env: Env, path: String) -> Term {
    match FileLock::try_take(std::path::Path::new(&path)) {
        Ok(Taken::Held(lock)) => {
            (atoms::ok(), ResourceArc::new(Lock(Mutex::new(Some(lock))))).encode(env)
        }
        Ok(Taken::Busy(holder)) => (atoms::busy(), holder).encode(env),
        Err(message) => (atoms::error(), message).encode(env),
    }
}

/// Release a lock taken by [`lock_try`]. Releasing twice is harmless.
#[rustler::nif]
fn lock_release(lock: ResourceArc<Lock>) -> Atom {
    if let Ok(mut held) = lock.0.lock() {
        held.take();
    }
    atoms::ok()
}

/// What `image_clean` takes: the project directory, or nil for every project.
#[derive(NifStruct)]
#[module = "DockerRelease.Native.CleanRequest"]
struct NifCleanRequest {
    project_dir: Option<String>,
    stall_timeout: u64,
}

/// Remove the builder cache volumes of a project (or of all); `{:ok, job, id}` at once, then
/// messages as for a build.
#[rustler::nif]
fn image_clean(env: Env, request: NifCleanRequest) -> (Atom, ResourceArc<Job>, u64) {
    let project = request.project_dir.map(PathBuf::from);
    let stall_timeout = stall_from_secs(request.stall_timeout);
    start_job(env, None, move |events, _cancel| {
        image_io::clean::run_clean(project, stall_timeout, events)
    })
}

/// Check a signing key (the PEM text of `--sign-key` or `DOCKER_RELEASE_SIGN_KEY`) before any
/// image work: `{:ok, public_key_pem}` or `{:error, why}` (never containing the key).
#[rustler::nif]
fn signing_check_key(env: Env, pem: String) -> Term {
    let pem = zeroize::Zeroizing::new(pem);
    match SigningKey::from_pem(&pem) {
        Ok(key) => (atoms::ok(), key.public_key_pem()).encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

/// Parse an image reference: `{:ok, {repository, tag}}` or `{:error, message}`.
#[rustler::nif]
fn reference_parse(env: Env, input: String) -> Term {
    match Reference::parse(&input) {
        Ok(r) => (atoms::ok(), (r.repository(), r.tag)).encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

/// Check `--platform`, `--platform-image` and `--emulate` (see
/// `image_core::platform::PlatformOptions::check`): `{:ok, platforms, images}` in their normal
/// form (`"linux/arm64/v8"`, `[{platform, image}]`), or `{:error, message}`.
#[rustler::nif]
fn platform_check(
    env: Env,
    platforms: Vec<String>,
    images: Vec<(String, String)>,
    emulate: bool,
) -> Term {
    let options = PlatformOptions {
        platforms,
        images,
        emulate,
    };
    match options.check() {
        Ok(s) => {
            let platforms: Vec<String> = s.platforms.iter().map(|p| p.to_string()).collect();
            let images: Vec<(String, String)> = s
                .images
                .iter()
                .map(|(p, i)| (p.to_string(), i.clone()))
                .collect();
            (atoms::ok(), platforms, images).encode(env)
        }
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

/// A job whose work panics after one step: proves, from Elixir, that a panic inside a job still
/// ends in exactly one final error message and leaves the VM running. Used by the tests only.
#[rustler::nif]
fn job_panic_probe(env: Env) -> (Atom, ResourceArc<Job>, u64) {
    start_job(env, None, |events, _cancel| async move {
        events(Event::Step("about to panic on purpose".into()));
        if std::hint::black_box(true) {
            panic!("job_panic_probe: a deliberate panic inside a job");
        }
        Ok(true)
    })
}

rustler::init!("Elixir.DockerRelease.Native");
