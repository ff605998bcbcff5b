//! The NIF: decodes terms, starts jobs on one shared tokio runtime, sends messages back.
//!
//! A job's messages to its caller are `{:docker_release, id, payload}` with payload one of
//! `{:step, text}`, `{:notice, text}`, `{:bytes, step, done}` (throttled), and finally exactly one
//! of `{:ok, outcome}` or `{:error, reason, message}` — also when the job panics.

use image_core::plan::Settings;
use image_core::reference::Reference;
use image_core::supply::sbom::{Dep, DepSource, SbomFormat, SbomSpec};
use image_core::supply::signing::SigningKey;
use image_io::dockerfiles::DockerfileFlow;
use image_io::pipeline::{self, EngineOutput, Event, Failure, Outcome, Outputs, Request, Source};
use image_io::registry::PushOptions;
use rustler::{
    Atom, Encoder, Env, LocalPid, Monitor, NifMap, NifStruct, OwnedEnv, Resource, ResourceArc, Term,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    stall_timeout: u64,
    annotations: Vec<(String, String)>,
    sbom: Option<NifSbom>,
    sbom_file: Option<String>,
    sign_key: Option<String>,
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
            outputs: Outputs {
                // The engine is the default output; asked for explicitly, it must be there.
                engine: if r.load {
                    EngineOutput::Load
                } else if r.output.is_none() && !r.push {
                    EngineOutput::LoadOrArchive(r.fallback_output.into())
                } else {
                    EngineOutput::Off
                },
                archive: r.output.map(PathBuf::from),
                push: r.push.then(|| PushOptions {
                    insecure: r.insecure_registry,
                    ca_file: r.registry_ca.map(PathBuf::from),
                    stall_timeout: Some(stall(r.stall_timeout)),
                    ..Default::default()
                }),
            },
            metadata_file: r.metadata_file.map(PathBuf::from),
            stall_timeout: stall(r.stall_timeout),
            supply: image_core::supply::Outputs {
                sbom_file: r.sbom_file.map(PathBuf::from),
                sign_key: r.sign_key.map(zeroize::Zeroizing::new),
            },
        }
    }
}

/// The bound on silence, from seconds (the Elixir side validates it; 0 would mean "fail at once").
fn stall(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}

#[derive(NifMap)]
struct NifLayer {
    name: String,
    digest: String,
    diff_id: String,
    size: u64,
    uncompressed_size: u64,
    entries: usize,
}

#[derive(NifMap)]
struct NifOutcome {
    image_id: String,
    manifest_digest: String,
    platform: String,
    tags: Vec<String>,
    created: String,
    layers: Vec<NifLayer>,
    compressed_size: u64,
    uncompressed_size: u64,
    engine: Option<String>,
    engine_size: Option<u64>,
    archive: Option<String>,
    archive_size: Option<u64>,
    pushed: Option<NifPushed>,
    runtime_files: Vec<(String, String)>,
}

#[derive(NifMap)]
struct NifPushed {
    manifest_digest: String,
    uploaded_bytes: u64,
    uploaded_blobs: usize,
    skipped_blobs: usize,
    tags: Vec<String>,
    references: Vec<String>,
}

impl From<Outcome> for NifOutcome {
    fn from(o: Outcome) -> NifOutcome {
        let s = o.summary;
        NifOutcome {
            image_id: s.image_id.to_string(),
            manifest_digest: s.manifest_digest.to_string(),
            platform: s.platform,
            tags: s.tags,
            created: s.created,
            layers: s
                .layers
                .into_iter()
                .map(|l| NifLayer {
                    name: l.name,
                    digest: l.digest.to_string(),
                    diff_id: l.diff_id.to_string(),
                    size: l.size,
                    uncompressed_size: l.uncompressed_size,
                    entries: l.entries,
                })
                .collect(),
            compressed_size: s.compressed_size,
            uncompressed_size: s.uncompressed_size,
            engine: o.engine,
            engine_size: o.engine_size,
            archive: o.archive.map(|p| p.display().to_string()),
            archive_size: o.archive_size,
            pushed: o.pushed.map(|p| NifPushed {
                manifest_digest: p.manifest_digest.to_string(),
                uploaded_bytes: p.uploaded_bytes,
                uploaded_blobs: p.uploaded_blobs,
                skipped_blobs: p.skipped_blobs,
                tags: p.tags,
                references: p.references,
            }),
            runtime_files: o
                .runtime_files
                .into_iter()
                .map(|f| (f.path.display().to_string(), f.reason))
                .collect(),
        }
    }
}

/// A running job. The job itself holds a reference to its handle until its final message is
/// sent, so the handle lives as long as the work whatever the caller does with its copy (a
/// caller that drops it, or whose compiler no longer keeps it live, must not cancel the build
/// when the garbage collector runs). The job is cancelled when the caller dies (monitored).
struct Job {
    cancelled: Arc<AtomicBool>,
}

#[rustler::resource_impl]
impl Resource for Job {
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        self.cancelled.store(true, Ordering::Relaxed);
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
        self.send(move |env| {
            let reason = Atom::from_str(env, f.reason).unwrap_or_else(|_| atoms::error());
            (atoms::error(), reason, f.message).encode(env)
        });
    }
}

/// Start a build; returns `{:ok, job, id}` at once. Messages follow as described above.
#[rustler::nif]
fn image_build(env: Env, request: NifRequest) -> (Atom, ResourceArc<Job>, u64) {
    let request: Request = request.into();
    start_job(env, move |events, cancelled| async move {
        pipeline::run(request, events, cancelled)
            .await
            .map(NifOutcome::from)
    })
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

#[derive(NifMap)]
struct NifFlowOutcome {
    image_id: String,
    tags: Vec<String>,
    size: u64,
    tarball_bytes: u64,
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
    let stall_timeout = stall(request.stall_timeout);
    start_job(env, move |events, cancelled| async move {
        pipeline::run_dockerfiles(flow, stall_timeout, events, cancelled)
            .await
            .map(|o| NifFlowOutcome {
                image_id: o.final_image_id,
                tags: o.tags,
                size: o.size,
                tarball_bytes: o.tarball_bytes,
            })
    })
}

type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// Start `work` on the shared runtime for the calling process: events become messages, the
/// result becomes the one final message (also on panic), the caller's death cancels it.
fn start_job<W, F, T>(env: Env, work: W) -> (Atom, ResourceArc<Job>, u64)
where
    W: FnOnce(Events, Arc<AtomicBool>) -> F,
    F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    T: Encoder + Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let cancelled = Arc::new(AtomicBool::new(false));
    let job = ResourceArc::new(Job {
        cancelled: cancelled.clone(),
    });
    let pid = env.pid();
    let _ = env.monitor(&job, &pid);
    let reply = Reply { pid, id };

    let events_reply = reply.clone();
    let last_bytes = Mutex::new(Instant::now() - Duration::from_secs(1));
    let events: Events = Arc::new(move |event| match event {
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
    let work = rt.spawn(work(events, cancelled.clone()));
    // Keeps the handle (and so the monitor of the caller) alive until the final message.
    let held = job.clone();
    rt.spawn(async move {
        let _held = held;
        let abort = work.abort_handle();
        let watch = async {
            while !cancelled.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = watch => {
                // Dropping the work closes any engine connection: the engine discards a partial load.
                abort.abort();
                return reply.failure(Failure { reason: "cancelled", message: "the build was cancelled".into() });
            }
        };
        match result {
            Ok(Ok(value)) => reply.send(move |env| (atoms::ok(), value).encode(env)),
            Ok(Err(failure)) => reply.failure(failure),
            Err(e) => reply.failure(Failure {
                reason: "internal",
                message: format!("the build crashed: {e}; please report this as a bug"),
            }),
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
    match image_io::engine::resolve_endpoint(&|k| std::env::var(k).ok()) {
        Ok(image_io::engine::Endpoint::Missing(_)) => (atoms::ok(), None::<String>).encode(env),
        Ok(ep) => (atoms::ok(), Some(ep.to_string())).encode(env),
        Err(e) => {
            let f = Failure::from(e);
            let reason = Atom::from_str(env, f.reason).unwrap_or_else(|_| atoms::error());
            (atoms::error(), reason, f.message).encode(env)
        }
    }
}

/// An exclusive lock on a file (`flock`), held until [`lock_release`] or until the handle is
/// garbage-collected; the kernel releases it when the OS process dies, however it dies.
struct Lock {
    file: Mutex<Option<std::fs::File>>,
}

#[rustler::resource_impl]
impl Resource for Lock {}

/// Try to take the lock at `path` (created if missing): `{:ok, lock}` and this OS process's pid
/// written into the file, or `{:busy, holder}` with what the holder wrote (its pid), or
/// `{:error, message}`. Never blocks.
#[rustler::nif(schedule = "DirtyIo")]
fn lock_try(env: Env, path: String) -> Term {
    use std::io::{Read, Seek, Write};
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let mut file = match open {
        Ok(f) => f,
        Err(e) => {
            return (
                atoms::error(),
                format!("cannot open the lock file {path}: {e}"),
            )
                .encode(env)
        }
    };
    match file.try_lock() {
        Ok(()) => {
            let pid = std::process::id().to_string();
            let written = file
                .set_len(0)
                .and_then(|_| file.seek(std::io::SeekFrom::Start(0)))
                .and_then(|_| file.write_all(pid.as_bytes()))
                .and_then(|_| file.flush());
            if let Err(e) = written {
                return (
                    atoms::error(),
                    format!("cannot write the lock file {path}: {e}"),
                )
                    .encode(env);
            }
            let lock = ResourceArc::new(Lock {
                file: Mutex::new(Some(file)),
            });
            (atoms::ok(), lock).encode(env)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            (atoms::busy(), holder.trim().to_string()).encode(env)
        }
        Err(std::fs::TryLockError::Error(e)) => {
            (atoms::error(), format!("cannot lock {path}: {e}")).encode(env)
        }
    }
}

/// Release a lock taken by [`lock_try`] (closing its file). Releasing twice is harmless.
#[rustler::nif]
fn lock_release(lock: ResourceArc<Lock>) -> Atom {
    if let Ok(mut f) = lock.file.lock() {
        f.take();
    }
    atoms::ok()
}

/// What `image_clean` takes: the project directory, or nil for every project.
#[derive(NifStruct)]
#[module = "DockerRelease.Native.CleanRequest"]
struct NifCleanRequest {
    project_dir: Option<String>,
}

/// What `image_clean` did.
#[derive(NifMap)]
struct NifCleaned {
    removed: Vec<String>,
    kept: Vec<(String, String)>,
}

/// Remove the builder cache volumes of a project (or of all); `{:ok, job, id}` at once, then
/// messages as for a build.
#[rustler::nif]
fn image_clean(env: Env, request: NifCleanRequest) -> (Atom, ResourceArc<Job>, u64) {
    let project = request.project_dir.map(std::path::PathBuf::from);
    start_job(env, move |events, _cancelled| async move {
        image_io::clean::run_clean(project, events)
            .await
            .map(|c| NifCleaned {
                removed: c.removed,
                kept: c.kept,
            })
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

/// A job whose work panics after one step: proves, from Elixir, that a panic inside a job still
/// ends in exactly one final error message and leaves the VM running. Used by the tests only.
#[rustler::nif]
fn job_panic_probe(env: Env) -> (Atom, ResourceArc<Job>, u64) {
    start_job(env, |events, _cancelled| async move {
        events(Event::Step("about to panic on purpose".into()));
        if std::hint::black_box(true) {
            panic!("job_panic_probe: a deliberate panic inside a job");
        }
        Ok(true)
    })
}

rustler::init!("Elixir.DockerRelease.Native");
