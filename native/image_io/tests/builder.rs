//! The builder container against the real engine: examples/hello built in a Debian builder
//! image, the cache, a failing build, a killed build, the sweep.
//!
//! Needs a running Docker engine and root (debootstrap) the first time: the builder image
//! `docker-release-test/builder:bookworm` is made once by `test/support/make-builder-image.sh`
//! and cached by tag. The heavy tests take a lock so their timings mean something.

use image_core::context::Excludes;
use image_core::fs::{Fs as _, Kind};
use image_core::plan::{plan, Plan, Settings};
use image_io::builder::{
    build_release, BuilderError, BuilderSpec, BuiltRelease, LABEL_CACHE_PROJECT,
};
use image_io::engine::{
    owner, resolve_endpoint, sweep_leftovers, ContainerEngine, ContainerSpec, Containers,
    DockerEngine, LABEL_OWNER, LABEL_TEMPORARY,
};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BUILDER: &str = "docker-release-test/builder:bookworm";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn hello_dir() -> PathBuf {
    repo().join("examples/hello").canonicalize().unwrap()
}

/// The builder image, made once per machine.
fn builder_image() -> &'static str {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        let script = repo().join("test/support/make-builder-image.sh");
        let out = Command::new(&script)
            .args(["bookworm", BUILDER])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
    });
    BUILDER
}

/// Serialises the tests that build, so that timings compare like with like.
async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn engine() -> DockerEngine {
    let endpoint = resolve_endpoint(&|k| std::env::var(k).ok()).unwrap();
    DockerEngine::connect(&endpoint).await.unwrap()
}

fn spec(project: &Path, cache: bool) -> BuilderSpec {
    BuilderSpec {
        image: builder_image().into(),
        project_dir: project.to_path_buf(),
        mix_env: "prod".into(),
        release_name: "hello".into(),
        named_release: true,
        cache,
        excludes: Excludes::for_project(project).unwrap(),
        env: vec![],
    }
}

/// Everything a build reported: `("step", text)` and `(step, line)`, with the time seen.
type Log = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// Build, then remove the container (the release read out of it stays in `fs`).
async fn build<'a>(
    engine: &'a DockerEngine,
    spec: &BuilderSpec,
) -> (Result<BuiltRelease<'a, DockerEngine>, BuilderError>, Log) {
    let (mut r, log) = build_live(engine, spec).await;
    if let Ok(built) = &mut r {
        assert_eq!(built.finish().await, None);
    }
    (r, log)
}

/// Build and leave the container running, as the pipeline does while it plans.
async fn build_live<'a>(
    engine: &'a DockerEngine,
    spec: &BuilderSpec,
) -> (Result<BuiltRelease<'a, DockerEngine>, BuilderError>, Log) {
    let log: Log = Arc::new(Mutex::new(vec![]));
    let (l1, l2) = (log.clone(), log.clone());
    let r = build_release(
        engine,
        spec,
        Arc::new(move |s: &str| {
            eprintln!("==> {s}");
            l1.lock()
                .unwrap()
                .push((Instant::now(), "step".into(), s.into()))
        }),
        Arc::new(move |step: &str, line: &str| {
            eprintln!("    [{step}] {line}");
            l2.lock()
                .unwrap()
                .push((Instant::now(), step.into(), line.into()))
        }),
        CancellationToken::new(),
    )
    .await;
    log.lock()
        .unwrap()
        .push((Instant::now(), "end".into(), String::new()));
    (r, log)
}

fn lines(log: &Log, step: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(_, s, _)| s == step)
        .map(|(_, _, l)| l.clone())
        .collect()
}

/// The `Compiling …` lines of the build's `mix release` step: what Mix recompiled.
fn compiled(log: &Log) -> Vec<String> {
    lines(log, "release")
        .into_iter()
        .filter(|l| l.starts_with("Compiling"))
        .collect()
}

/// When the step starting with `prefix` (or, for `end`, the build) was reported.
fn at(log: &Log, prefix: &str) -> Instant {
    let log = log.lock().unwrap();
    log.iter()
        .find(|(_, s, l)| (s == "step" && l.starts_with(prefix)) || (s == prefix))
        .map(|(t, _, _)| *t)
        .unwrap_or_else(|| panic!("no step {prefix:?}"))
}

/// Time from the first `mix` step to reading the release: the part the cache speeds up.
fn mix_time(log: &Log) -> Duration {
    at(log, "reading the release") - at(log, "running `mix deps.get")
}

/// Time to read the release out of the builder.
fn read_time(log: &Log) -> Duration {
    at(log, "end") - at(log, "reading the release")
}

/// The plan over the builder's filesystem, fetching what it asks for until it asks nothing.
async fn plan_in_builder(built: &mut BuiltRelease<'_, DockerEngine>, settings: &Settings) -> Plan {
    loop {
        let p = plan(&*built.fs, settings);
        if built.fetch_wants().await.unwrap_or_else(|e| panic!("{e}")) == 0 {
            return p.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// `path` is a regular file in the builder's filesystem (as fetched so far).
fn is_file(built: &BuiltRelease<'_, DockerEngine>, path: &str) -> bool {
    built
        .fs
        .lstat(Path::new(path))
        .is_ok_and(|m| m.kind == Kind::File)
}

/// Temporary containers owned by `owner`, as the docker CLI sees them.
fn labelled_containers(owner: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label={LABEL_TEMPORARY}"),
            "--filter",
            &format!("label={LABEL_OWNER}={owner}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A copy of examples/hello (without its build output) in a temporary directory.
fn hello_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", hello_dir().display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(dir.path().join("_build"));
    dir
}

/// [`hello_copy`] with a module `Hello.Slow` (`lib/hello/slow.ex`) whose compilation sleeps
/// `ms` milliseconds: long enough to measure what the cache saves, or to kill a build in it.
fn hello_copy_slow(ms: u64) -> tempfile::TempDir {
    let copy = hello_copy();
    std::fs::write(
        copy.path().join("lib/hello/slow.ex"),
        format!("defmodule Hello.Slow do\n  Process.sleep({ms})\nend\n"),
    )
    .unwrap();
    copy
}

/// Remove the cache volumes of a throw-away project.
async fn drop_cache(engine: &DockerEngine, project: &Path) {
    let project = project.canonicalize().unwrap().display().to_string();
    for v in engine
        .list_volumes(LABEL_CACHE_PROJECT, &project)
        .await
        .unwrap()
    {
        engine.remove_volume(&v).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_hello_in_the_builder_and_reuses_the_cache() {
    let _heavy = heavy().await;
    let engine = engine().await;
    let project = hello_dir();

    // Cold: fresh cache volumes.
    let t = Instant::now();
    let (built, cold_log) = build_live(&engine, &spec(&project, false)).await;
    let cold = t.elapsed();
    let mut built = built.unwrap_or_else(|e| panic!("{e}"));
    assert!(is_file(&built, "/app/bin/hello"));
    let erts: Vec<_> = built
        .fs
        .read_dir(Path::new("/app"))
        .unwrap()
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("erts-"))
        .collect();
    assert_eq!(erts.len(), 1, "{erts:?}");
    assert!(is_file(&built, &format!("/app/{}/bin/beam.smp", erts[0])));
    assert_eq!(built.release_dir, Path::new("/app"));
    assert_eq!(built.otp_release, "25");
    assert!(built.context.files >= 5, "{:?}", built.context);
    assert!(
        !compiled(&cold_log).is_empty(),
        "a cold build compiles hello"
    );
    // The runtime files are read from the builder's filesystem.
    let settings = Settings {
        release_dir: built.release_dir.clone(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        uid: 65532,
        gid: 65532,
        ..Default::default()
    };
    let p = plan_in_builder(&mut built, &settings).await;
    assert!(p
        .runtime_files
        .iter()
        .any(|f| f.path.to_string_lossy().contains("libc.so")));
    // Only what the plan needs was read: a few dozen files, not the builder's thousands.
    let (bytes, entries) = built.fs.fetched();
    assert!(
        entries < 2_000 && bytes < 60_000_000,
        "{entries} entries, {bytes} bytes"
    );
    // The container lives until the plan is made; dropping the value removes it.
    assert_eq!(labelled_containers(&owner()).len(), 1);
    drop(built);
    let t = Instant::now();
    while !labelled_containers(&owner()).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the container outlived its value"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Warm: the cache volumes hold _build, and mtimes tell Mix nothing changed.
    let t = Instant::now();
    let (built, warm_log) = build(&engine, &spec(&project, true)).await;
    let warm = t.elapsed();
    let mut built = built.unwrap_or_else(|e| panic!("{e}"));
    assert!(is_file(&built, "/app/bin/hello"));
    assert_eq!(built.finish().await, None);
    let recompiled = compiled(&warm_log);
    assert!(
        recompiled.is_empty(),
        "the warm build recompiled: {recompiled:?}"
    );
    eprintln!(
        "TIMING hello: cold {:.1}s (mix {:.1}s, reading the release {:.1}s), warm {:.1}s (mix {:.1}s, reading the release {:.1}s)",
        cold.as_secs_f64(),
        mix_time(&cold_log).as_secs_f64(),
        read_time(&cold_log).as_secs_f64(),
        warm.as_secs_f64(),
        mix_time(&warm_log).as_secs_f64(),
        read_time(&warm_log).as_secs_f64(),
    );
    assert!(labelled_containers(&owner()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_saves_the_compilation_time() {
    let _heavy = heavy().await;
    let engine = engine().await;
    // hello compiles in a fraction of a second, less than the noise of a build: give the
    // project a module that takes 3 s to compile, so the saving is measurable.
    let copy = hello_copy_slow(3_000);
    let (cold, cold_log) = build(&engine, &spec(copy.path(), true)).await;
    let (warm, warm_log) = build(&engine, &spec(copy.path(), true)).await;
    cold.unwrap_or_else(|e| panic!("{e}"));
    warm.unwrap_or_else(|e| panic!("{e}"));
    assert!(compiled(&cold_log)
        .iter()
        .any(|l| l.starts_with("Compiling 3 files")));
    assert_eq!(compiled(&warm_log), Vec::<String>::new());
    let (cold_mix, warm_mix) = (mix_time(&cold_log), mix_time(&warm_log));
    eprintln!(
        "TIMING slow copy: mix cold {:.1}s, warm {:.1}s",
        cold_mix.as_secs_f64(),
        warm_mix.as_secs_f64()
    );
    assert!(cold_mix >= Duration::from_secs(3));
    assert!(
        warm_mix + Duration::from_secs(2) < cold_mix,
        "warm {warm_mix:?} vs cold {cold_mix:?}"
    );
    // Changing a source recompiles it, and only it (Mix looks at mtimes, then contents).
    let app = copy.path().join("lib/hello/application.ex");
    let mut text = std::fs::read_to_string(&app).unwrap();
    text.push_str("\n# changed\n");
    std::fs::write(&app, text).unwrap();
    let (touched, touched_log) = build(&engine, &spec(copy.path(), true)).await;
    drop_cache(&engine, copy.path()).await;
    touched.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        compiled(&touched_log),
        vec!["Compiling 1 file (.ex)".to_string()]
    );
    assert!(labelled_containers(&owner()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_sharing_a_cache_take_turns() {
    let _heavy = heavy().await;
    let engine = engine().await;
    let copy = hello_copy_slow(3_000);
    let s = spec(copy.path(), true);
    let ((a, a_log), (b, b_log)) = tokio::join!(build(&engine, &s), build(&engine, &s));
    drop_cache(&engine, copy.path()).await;
    a.unwrap_or_else(|e| panic!("{e}"));
    b.unwrap_or_else(|e| panic!("{e}"));
    let waited = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .any(|(_, s, l)| s == "step" && l.starts_with("waiting for another build"))
    };
    // One compiled while the other waited for the lock, then found nothing to compile.
    assert!(waited(&a_log) != waited(&b_log), "exactly one build waits");
    let (first, second) = if waited(&b_log) {
        (&a_log, &b_log)
    } else {
        (&b_log, &a_log)
    };
    assert!(!compiled(first).is_empty());
    assert_eq!(compiled(second), Vec::<String>::new());
    assert!(labelled_containers(&owner()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_fails_with_the_compilers_message_and_leaves_no_container() {
    let _heavy = heavy().await;
    let engine = engine().await;
    let copy = hello_copy();
    std::fs::write(
        copy.path().join("lib/hello/broken.ex"),
        "defmodule Hello.Broken do\n  def oops( do\nend\n",
    )
    .unwrap();
    let (r, log) = build(&engine, &spec(copy.path(), true)).await;
    drop_cache(&engine, copy.path()).await;
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "release_build_failed");
    let BuilderError::BuildFailed {
        step,
        status,
        last_lines,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(step, "release");
    assert_ne!(*status, 0);
    assert!(
        last_lines.iter().any(|l| l.contains("broken.ex")),
        "{last_lines:#?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("`mix release hello --overwrite --path /app` failed"),
        "{msg}"
    );
    assert!(
        msg.contains("broken.ex") && msg.contains("exit status"),
        "{msg}"
    );
    assert!(!lines(&log, "release").is_empty());
    assert!(labelled_containers(&owner()).is_empty());
}

/// The builder image with `USER nobody`, derived once (no registry: `docker commit`).
fn non_root_builder() -> &'static str {
    const TAG: &str = "docker-release-test/builder:bookworm-nobody";
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        let base = builder_image();
        let have = Command::new("docker")
            .args(["image", "inspect", TAG])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if have.success() {
            return;
        }
        let out = Command::new("docker")
            .args(["create", base, "true"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ok = Command::new("docker")
            .args(["commit", "-c", "USER nobody", &id, TAG])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let _ = Command::new("docker")
            .args(["rm", "-f", &id])
            .stdout(Stdio::null())
            .status();
        assert!(ok.success());
    });
    TAG
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_image_with_a_non_root_user_builds() {
    let _heavy = heavy().await;
    let engine = engine().await;
    let copy = hello_copy();
    let mut s = spec(copy.path(), true);
    s.image = non_root_builder().into();
    let (r, _) = build(&engine, &s).await;
    drop_cache(&engine, copy.path()).await;
    // As nobody, mix could not write /src/_build (a root-owned volume) nor create /release
    // without the chown step: success is the check.
    let mut built = r.unwrap_or_else(|e| panic!("{e}"));
    assert!(is_file(&built, "/app/bin/hello"));
    assert_eq!(built.finish().await, None);
    assert!(labelled_containers(&owner()).is_empty());
}

#[tokio::test]
async fn a_missing_builder_image_says_what_to_do() {
    let engine = engine().await;
    let mut s = spec(&hello_dir(), true);
    s.image = "docker-release-test/no-such-builder:1".into();
    let (r, _) = build(&engine, &s).await;
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "builder_image_missing");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-builder") && msg.contains("docker image ls"),
        "{msg}"
    );
}

#[tokio::test]
async fn sweep_removes_containers_of_dead_owners_only() {
    let _heavy = heavy().await; // the other tests check that no container of ours is left
    let engine = engine().await;
    let host = owner().rsplit_once(':').unwrap().0.to_string();
    // A pid that existed and is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let make = |owner: String| ContainerSpec {
        image: builder_image().into(),
        entrypoint: vec!["true".into()],
        labels: BTreeMap::from([
            (LABEL_TEMPORARY.to_string(), "true".to_string()),
            (LABEL_OWNER.to_string(), owner),
        ]),
        volumes: vec![],
        working_dir: "/".into(),
        name: None,
        lifeline: true,
    };
    let dead = engine
        .create_container(&make(format!("{host}:{dead_pid}")))
        .await
        .unwrap();
    let mine = engine.create_container(&make(owner())).await.unwrap();
    let removed = sweep_leftovers(&engine).await.unwrap();
    assert!(removed >= 1);
    assert!(labelled_containers(&format!("{host}:{dead_pid}")).is_empty());
    let left = labelled_containers(&owner());
    assert!(
        left.iter().any(|id| mine.starts_with(id.as_str())),
        "{left:?} {mine}"
    );
    engine.remove_container(&mine).await.unwrap();
    engine.remove_container(&dead).await.unwrap(); // already gone: not an error
    assert!(labelled_containers(&owner()).is_empty());
}

/// Kills the child process it holds when dropped (a failing test leaves nothing running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ENV: &str = "DOCKER_RELEASE_TEST_CHILD_PROJECT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_build_leaves_no_container() {
    let _heavy = heavy().await;
    let engine = engine().await;
    // A module whose compilation takes long enough to be killed in the middle of it.
    let copy = hello_copy_slow(60_000);
    let _ = builder_image();
    // The child is this test binary running only `child_build`, which builds `copy`.
    let mut child = Child(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_build",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, copy.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let child_owner = format!("{}:{pid}", owner().rsplit_once(':').unwrap().0);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until mix is compiling.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the child never started compiling");
        if line.starts_with("CHILD [release] Compiling") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        labelled_containers(&child_owner).len(),
        1,
        "the build's container runs"
    );

    // SIGKILL: no handler runs in the child.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    let mut gone = None;
    while killed.elapsed() < Duration::from_secs(15) {
        if labelled_containers(&child_owner).is_empty() {
            gone = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop_cache(&engine, copy.path()).await;
    let gone = gone.expect("the killed build's container is still there after 15 s");
    eprintln!(
        "TIMING container gone {:.1}s after SIGKILL",
        gone.as_secs_f64()
    );
}

/// Not a test by itself: the child process of `a_sigkilled_build_leaves_no_container`.
#[tokio::test]
#[ignore = "run by a_sigkilled_build_leaves_no_container as a separate process"]
async fn child_build() {
    let Some(project) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let engine = engine().await;
    let s = spec(Path::new(&project), true);
    let r = build_release(
        &engine,
        &s,
        Arc::new(|s: &str| println!("CHILD ==> {s}")),
        Arc::new(|step: &str, line: &str| println!("CHILD [{step}] {line}")),
        CancellationToken::new(),
    )
    .await;
    println!("CHILD done: {:?}", r.map(|_| ()));
}

/// The lifecycle against a fake engine: order of calls, errors, cancellation, the sweep's rules.
/// Cheap: no engine needed.
mod fake_engine {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use image_core::context::Excludes;
    use image_core::fs::Fs as _;
    use image_io::builder::container_fs::FETCH_SCRIPT;
    use image_io::builder::*;
    use image_io::engine::*;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn hostname() -> String {
        owner().rsplit_once(':').unwrap().0.to_string()
    }

    /// What the fake engine was asked, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Inspect(String),
        RemoveVolume(String),
        CreateVolume(String),
        Create(ContainerSpec),
        Attach(String),
        Start(String),
        Upload(String, Vec<String>),
        Exec(Vec<String>),
        Fetch(Vec<String>),
        Remove(String),
        RemoveDetached(String),
    }

    struct Fake {
        calls: Mutex<Vec<Call>>,
        image: Option<ImageInfo>,
        /// Output and status of the build exec.
        build_output: Vec<&'static str>,
        build_status: i64,
        /// Block the build exec until cancelled.
        hang: bool,
        /// Exit status and stderr of the fetch exec.
        fetch_status: i64,
        fetch_stderr: &'static str,
        export: Vec<u8>,
        /// The engine's command (`docker`, `podman`).
        cli: &'static str,
        /// Removing a container fails (the engine refuses).
        fail_remove: bool,
    }

    impl Fake {
        fn new() -> Fake {
            let mut t = tar::Builder::new(Vec::new());
            let mut d = tar::Header::new_gnu();
            d.set_entry_type(tar::EntryType::Directory);
            d.set_mode(0o755);
            d.set_size(0);
            t.append_data(&mut d, "app/", &b""[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o755);
            h.set_size(3);
            t.append_data(&mut h, "app/bin/hello", &b"#!x"[..]).unwrap();
            Fake {
                calls: Mutex::new(vec![]),
                image: Some(ImageInfo {
                    id: "sha256:img".into(),
                    user: String::new(),
                }),
                build_output: vec![],
                build_status: 0,
                hang: false,
                fetch_status: 0,
                fetch_stderr: "",
                export: t.into_inner().unwrap(),
                cli: "docker",
                fail_remove: false,
            }
        }

        fn log(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Containers for Fake {
        async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
            self.log(Call::Create(spec.clone()));
            Ok("c1".into())
        }
        async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
            self.log(Call::Remove(id.into()));
            if self.fail_remove {
                return Err(EngineError::Api {
                    action: "removing the container".into(),
                    message: "device or resource busy".into(),
                });
            }
            Ok(())
        }
        fn remove_container_detached(&self, id: String) {
            self.log(Call::RemoveDetached(id));
        }
        async fn cli(&self) -> &'static str {
            self.cli
        }
        async fn list_containers(
            &self,
            _k: &str,
            _v: &str,
        ) -> Result<Vec<LabelledContainer>, EngineError> {
            let label = |owner: &str| {
                BTreeMap::from([
                    (LABEL_TEMPORARY.to_string(), "true".to_string()),
                    (LABEL_OWNER.to_string(), owner.to_string()),
                ])
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            Ok(vec![
                // Ours, alive: kept.
                LabelledContainer {
                    id: "mine".into(),
                    labels: label(&owner()),
                    running: true,
                    created: now,
                },
                // Same host, dead pid: removed.
                LabelledContainer {
                    id: "dead".into(),
                    labels: label(&format!("{}:{}", hostname(), i32::MAX)),
                    running: true,
                    created: now,
                },
                // Another host, running: kept.
                LabelledContainer {
                    id: "remote".into(),
                    labels: label("elsewhere:1"),
                    running: true,
                    created: now,
                },
                // Another host, stopped for an hour: removed.
                LabelledContainer {
                    id: "stale".into(),
                    labels: label("elsewhere:1"),
                    running: false,
                    created: now - 3600,
                },
            ])
        }
    }

    impl ContainerEngine for Fake {
        async fn inspect_image(&self, r: &str) -> Result<Result<ImageInfo, String>, EngineError> {
            self.log(Call::Inspect(r.into()));
            Ok(self
                .image
                .clone()
                .ok_or_else(|| format!("No such image: {r}")))
        }
        async fn attach_stdin(&self, id: &str) -> Result<StdinHold, EngineError> {
            self.log(Call::Attach(id.into()));
            Ok(StdinHold::new(()))
        }
        async fn start_container(&self, id: &str) -> Result<(), EngineError> {
            self.log(Call::Start(id.into()));
            Ok(())
        }
        async fn upload(&self, id: &str, dir: &str, tar: Body) -> Result<(), EngineError> {
            let chunks: Vec<_> = tar.collect().await;
            let bytes: Vec<u8> = chunks
                .into_iter()
                .flat_map(|c| c.unwrap().to_vec())
                .collect();
            let mut ar = tar::Archive::new(bytes.as_slice());
            let names = ar
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
            self.log(Call::Upload(format!("{id}:{dir}"), names));
            Ok(())
        }
        async fn exec(
            &self,
            _id: &str,
            spec: &ExecSpec,
        ) -> Result<(String, OutputStream), EngineError> {
            if spec.cmd.get(2).map(String::as_str) == Some(FETCH_SCRIPT) {
                self.log(Call::Fetch(spec.cmd[4..].to_vec()));
                let items = if self.fetch_status > 2 {
                    vec![Ok(Output::Stderr(Bytes::from(self.fetch_stderr)))]
                } else {
                    vec![Ok(Output::Stdout(Bytes::from(self.export.clone())))]
                };
                return Ok(("fetch".into(), Box::pin(futures_util::stream::iter(items))));
            }
            self.log(Call::Exec(spec.cmd.clone()));
            if spec.cmd.get(4).map(String::as_str) == Some(RELEASE_DIR) {
                // The preparing exec (empty /app, hand it over): no output.
                return Ok((
                    "prepare".into(),
                    Box::pin(futures_util::stream::iter(vec![])),
                ));
            }
            if spec.cmd[0] == "erl" {
                let s = futures_util::stream::iter(vec![Ok(Output::Stdout(Bytes::from("25")))]);
                return Ok(("otp".into(), Box::pin(s)));
            }
            let marker = spec.cmd[5].clone();
            let text: String = self
                .build_output
                .iter()
                .map(|l| format!("{}\n", l.replace("@M", &marker)))
                .collect();
            let items = vec![Ok(Output::Stdout(Bytes::from(text)))];
            let s = futures_util::stream::iter(items);
            if self.hang {
                return Ok((
                    "build".into(),
                    Box::pin(s.chain(futures_util::stream::pending())),
                ));
            }
            Ok(("build".into(), Box::pin(s)))
        }
        async fn exec_status(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
            Ok(Some(match exec_id {
                "build" => self.build_status,
                "fetch" => self.fetch_status,
                _ => 0,
            }))
        }
        async fn create_volume(
            &self,
            name: &str,
            labels: &BTreeMap<String, String>,
        ) -> Result<(), EngineError> {
            assert_eq!(labels.get(LABEL_CACHE).map(String::as_str), Some("true"));
            self.log(Call::CreateVolume(name.into()));
            Ok(())
        }
        async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
            self.log(Call::RemoveVolume(name.into()));
            Ok(())
        }
        async fn list_volumes(&self, _k: &str, _v: &str) -> Result<Vec<String>, EngineError> {
            Ok(vec![])
        }
    }

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("_build/prod")).unwrap();
        std::fs::write(dir.path().join("mix.exs"), "x").unwrap();
        std::fs::write(dir.path().join("lib/a.ex"), "y").unwrap();
        dir
    }

    fn spec(dir: &Path) -> BuilderSpec {
        BuilderSpec {
            image: "builder:1".into(),
            project_dir: dir.to_path_buf(),
            mix_env: "prod".into(),
            release_name: "hello".into(),
            named_release: true,
            cache: true,
            excludes: Excludes::for_project(dir).unwrap(),
            env: vec![],
        }
    }

    /// `build_release` on `fake` for the project `dir`, its reports dropped.
    async fn build_with<'a>(
        fake: &'a Fake,
        dir: &Path,
    ) -> Result<BuiltRelease<'a, Fake>, BuilderError> {
        build_seen(fake, dir).await.0
    }

    /// A build of the fake with `dir`'s spec, and what its callbacks saw.
    async fn build_seen<'a>(
        fake: &'a Fake,
        dir: &Path,
    ) -> (Result<BuiltRelease<'a, Fake>, BuilderError>, Seen) {
        let (on_step, on_line, seen) = callbacks();
        let built =
            build_release(fake, &spec(dir), on_step, on_line, CancellationToken::new()).await;
        (built, seen)
    }

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    fn callbacks() -> (OnStep, OnLine, Seen) {
        let seen: Seen = Arc::new(Mutex::new(vec![]));
        let s1 = seen.clone();
        let s2 = seen.clone();
        (
            Arc::new(move |s: &str| s1.lock().unwrap().push(("step".into(), s.into()))),
            Arc::new(move |step: &str, l: &str| s2.lock().unwrap().push((step.into(), l.into()))),
            seen,
        )
    }

    #[tokio::test]
    async fn runs_the_lifecycle_in_order() {
        let dir = project();
        let mut fake = Fake::new();
        fake.build_output = vec![
            "@M deps.get",
            "All dependencies are up to date",
            "@M release",
            "Compiling 1 file (.ex)",
        ];
        let (built, seen) = build_seen(&fake, dir.path()).await;
        let mut built = built.unwrap();
        assert_eq!(built.otp_release, "25");
        assert_eq!(built.release_dir, Path::new("/app"));
        let hello = built.fs.read(Path::new("/app/bin/hello")).unwrap();
        assert_eq!(hello, b"#!x");
        // The container lives on until `finish`.
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::Remove(_))));
        assert_eq!(built.finish().await, None);
        let calls = fake.calls();
        let vols = cache_volumes(&dir.path().canonicalize().unwrap(), "prod", "sha256:img");
        assert_eq!(calls[0], Call::Inspect("builder:1".into()));
        assert_eq!(calls[1], Call::CreateVolume(vols[0].0.clone()));
        assert_eq!(calls[2], Call::CreateVolume(vols[1].0.clone()));
        let Call::Create(c) = &calls[3] else {
            panic!("{calls:?}")
        };
        assert_eq!(
            c.labels.get(LABEL_TEMPORARY).map(String::as_str),
            Some("true")
        );
        assert_eq!(c.labels.get(LABEL_OWNER), Some(&owner()));
        assert_eq!(c.volumes, vols.to_vec());
        // Attach strictly before start.
        assert_eq!(calls[4], Call::Attach("c1".into()));
        assert_eq!(calls[5], Call::Start("c1".into()));
        assert_eq!(
            calls[6],
            Call::Upload(
                "c1:/src".into(),
                vec!["lib".into(), "lib/a.ex".into(), "mix.exs".into()]
            )
        );
        // /app is emptied as root; a root image's user gets nothing handed over.
        assert!(
            matches!(&calls[7], Call::Exec(cmd) if cmd[..2] == ["sh", "-c"] && cmd[4..] == ["/app", ""])
        );
        assert!(
            matches!(&calls[8], Call::Exec(cmd) if cmd[..2] == ["sh", "-c"] && cmd[4] == "hello")
        );
        // The build named no OTP release: `erl` is asked.
        assert!(matches!(&calls[9], Call::Exec(cmd) if cmd[0] == "erl"));
        assert_eq!(calls[10], Call::Fetch(vec!["L:app".into()]));
        assert_eq!(calls[11], Call::Remove("c1".into()));
        assert_eq!(calls.len(), 12);
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&("deps.get".into(), "All dependencies are up to date".into())));
        assert!(seen.contains(&("release".into(), "Compiling 1 file (.ex)".into())));
        assert!(seen.contains(&(
            "step".into(),
            "running `mix release hello --overwrite --path /app` in the builder".into()
        )));
        assert!(!seen.iter().any(|(_, l)| l.contains("@@docker_release")));
    }

    #[tokio::test]
    async fn the_otp_release_named_by_the_build_needs_no_erl() {
        let dir = project();
        let mut fake = Fake::new();
        fake.build_output = vec!["@M deps.get", "@M release", "@M otp 27"];
        let mut built = build_with(&fake, dir.path()).await.unwrap();
        assert_eq!(built.otp_release, "27");
        built.finish().await;
        assert!(!fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Exec(cmd) if cmd[0] == "erl")));
    }

    #[tokio::test]
    async fn a_builder_without_tar_is_refused_with_what_it_needs_and_removed() {
        let dir = project();
        let mut fake = Fake::new();
        fake.build_output = vec!["@M deps.get", "@M release", "@M otp 25"];
        fake.fetch_status = 127;
        fake.fetch_stderr = "sh: 1: exec: tar: not found\n";
        let err = build_with(&fake, dir.path()).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 127"), "{msg}");
        assert!(msg.contains("GNU or BusyBox tar"), "{msg}");
        assert!(msg.contains("tar: not found"), "{msg}");
        assert_eq!(fake.calls().last(), Some(&Call::Remove("c1".into())));
    }

    #[tokio::test]
    async fn a_release_missing_after_mix_release_is_an_error_and_the_container_is_removed() {
        let dir = project();
        let mut fake = Fake::new();
        fake.build_output = vec!["@M deps.get", "@M release", "@M otp 25"];
        fake.export = vec![0u8; 1024]; // an empty archive: /release is not there
        let err = build_with(&fake, dir.path()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("/app is not in the builder container"),
            "{err}"
        );
        assert_eq!(fake.calls().last(), Some(&Call::Remove("c1".into())));
    }

    #[tokio::test]
    async fn a_failing_step_says_which_command_failed_and_removes_the_container() {
        let dir = project();
        let mut fake = Fake::new();
        let mut out = vec!["@M deps.get", "ok", "@M release"];
        let many: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
        let many: Vec<&'static str> = many
            .into_iter()
            .map(|s| &*Box::leak(s.into_boxed_str()))
            .collect();
        out.extend(many);
        out.push("** (SyntaxError) lib/a.ex:1:5: syntax error before: end");
        fake.build_output = out;
        fake.build_status = 1;
        let err = build_with(&fake, dir.path()).await.unwrap_err();
        assert_eq!(err.reason(), "release_build_failed");
        let BuilderError::BuildFailed {
            step,
            status,
            last_lines,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((step.as_str(), *status), ("release", 1));
        assert_eq!(last_lines.len(), LAST_LINES);
        assert!(last_lines.last().unwrap().contains("SyntaxError"));
        let msg = err.to_string();
        assert!(
            msg.contains("`mix release hello --overwrite --path /app` failed"),
            "{msg}"
        );
        assert!(
            msg.contains("exit status 1") && msg.contains("    ** (SyntaxError)"),
            "{msg}"
        );
        assert_eq!(fake.calls().last(), Some(&Call::Remove("c1".into())));
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::Fetch(_))));
    }

    #[tokio::test]
    async fn a_container_that_cannot_be_removed_is_named_with_the_engines_command() {
        let dir = project();
        for cli in ["docker", "podman"] {
            let hint = format!("remove it with `{cli} rm -f c1`");
            // The build fails, then the removal: a warning line, the build's error returned.
            let mut fake = Fake::new();
            (fake.cli, fake.fail_remove, fake.build_status) = (cli, true, 1);
            fake.build_output = vec!["@M deps.get", "@M release", "boom"];
            let (built, seen) = build_seen(&fake, dir.path()).await;
            let err = built.unwrap_err();
            assert_eq!(err.reason(), "release_build_failed");
            let seen = seen.lock().unwrap().clone();
            let warning = seen
                .iter()
                .find(|(_, l)| l.contains("could not be removed"))
                .unwrap_or_else(|| panic!("no removal warning in {seen:?}"));
            assert!(
                warning.1.starts_with("warning: the builder container c1 could not be removed (the Docker engine refused removing the container: device or resource busy)"),
                "{warning:?}"
            );
            assert!(warning.1.ends_with(&hint), "{warning:?}");

            // The build succeeds, the removal at the end fails: `finish` says so.
            let mut fake = Fake::new();
            (fake.cli, fake.fail_remove) = (cli, true);
            let mut built = build_with(&fake, dir.path()).await.unwrap();
            let warning = built.finish().await.expect("a warning");
            assert!(warning.ends_with(&hint), "{warning}");
            assert_eq!(fake.calls().last(), Some(&Call::Remove("c1".into())));
        }
    }

    #[tokio::test]
    async fn a_missing_image_is_reported_with_what_to_do() {
        for cli in ["docker", "podman"] {
            let dir = project();
            let mut fake = Fake::new();
            (fake.image, fake.cli) = (None, cli);
            let err = build_with(&fake, dir.path()).await.unwrap_err();
            assert_eq!(err.reason(), "builder_image_missing");
            assert!(
                err.to_string().contains(&format!("`{cli} image ls`")),
                "{err}"
            );
            assert_eq!(fake.calls().len(), 1);
        }
    }

    #[tokio::test]
    async fn no_cache_recreates_the_volumes() {
        let dir = project();
        let fake = Fake::new();
        let mut s = spec(dir.path());
        s.cache = false;
        let (on_step, on_line, _) = callbacks();
        build_release(&fake, &s, on_step, on_line, CancellationToken::new())
            .await
            .unwrap();
        let calls = fake.calls();
        assert!(matches!(&calls[1], Call::RemoveVolume(n) if n.ends_with("-build")));
        assert!(matches!(&calls[2], Call::RemoveVolume(n) if n.ends_with("-deps")));
        assert!(matches!(&calls[3], Call::CreateVolume(n) if n.ends_with("-build")));
    }

    #[tokio::test]
    async fn cancelling_stops_the_build_and_removes_the_container() {
        let dir = project();
        let mut fake = Fake::new();
        fake.build_output = vec!["@M release", "Compiling"];
        fake.hang = true;
        let (on_step, on_line, _) = callbacks();
        let flag = CancellationToken::new();
        let f2 = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            f2.cancel();
        });
        let err = build_release(&fake, &spec(dir.path()), on_step, on_line, flag)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "cancelled");
        assert_eq!(fake.calls().last(), Some(&Call::Remove("c1".into())));
    }

    #[tokio::test]
    async fn a_dropped_build_still_removes_its_container() {
        let dir = project();
        let mut fake = Fake::new();
        fake.hang = true;
        let (on_step, on_line, _) = callbacks();
        let s = spec(dir.path());
        let fut = build_release(&fake, &s, on_step, on_line, CancellationToken::new());
        let _ = tokio::time::timeout(Duration::from_millis(300), fut).await;
        assert_eq!(
            fake.calls().last(),
            Some(&Call::RemoveDetached("c1".into()))
        );
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_any_engine_call() {
        let dir = project();
        let fake = Fake::new();
        let mut s = spec(dir.path());
        s.release_name = "hello; rm -rf /".into();
        let (on_step, on_line, _) = callbacks();
        let err = build_release(&fake, &s, on_step, on_line, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "builder_error");
        assert!(
            err.to_string().contains("got: \"hello; rm -rf /\""),
            "{err}"
        );
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn sweep_removes_only_what_nobody_will() {
        let fake = Fake::new();
        assert_eq!(sweep_leftovers(&fake).await.unwrap(), 2);
        assert_eq!(
            fake.calls(),
            vec![Call::Remove("dead".into()), Call::Remove("stale".into())]
        );
    }
}
