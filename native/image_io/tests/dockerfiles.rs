//! The article's two-Dockerfile flow against the real engine, with the fixture project
//! `test/fixtures/article_app` (Dockerfile.build builds the release in a local builder image,
//! Dockerfile unpacks it onto a local Debian minbase).
//!
//! Nothing can be pulled, so both base images are made locally by
//! `test/support/make-builder-image.sh` (debootstrap + `docker import`, cached by tag). The tests
//! run one at a time and check that no container labelled `docker_release.temporary=true` (and
//! owned by this test process, so other test binaries' builder containers don't blur the check)
//! is left behind.

use image_io::dockerfiles::{run, DockerfileFlow, FlowError, FlowOutcome, Step};
use image_io::engine::{owner, sweep_leftovers, LABEL_OWNER, LABEL_TEMPORARY};
use image_io::engine::{resolve_endpoint, DockerEngine};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BUILDER: &str = "docker-release-test/builder:bookworm";
const MINBASE: &str = "docker-release-test/minbase:bookworm";

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Make the two base images once per test binary (the script returns at once when cached).
fn ensure_base_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("test/support/make-builder-image.sh");
        // The builder: Debian bookworm minbase with elixir, erlang-dev and ca-certificates.
        make_image(&script, BUILDER, None);
        // The runtime base: minbase with no extra package. The script always passes --include;
        // base-files is part of every minbase, so including it adds nothing.
        make_image(&script, MINBASE, Some("base-files"));
    });
}

fn make_image(script: &Path, tag: &str, include: Option<&str>) {
    let t = Instant::now();
    let mut cmd = Command::new(script);
    cmd.args(["bookworm", tag]);
    if let Some(i) = include {
        cmd.env("BUILDER_INCLUDE", i);
    }
    let out = cmd.output().expect("run make-builder-image.sh");
    assert!(
        out.status.success(),
        "making {tag} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("base image {tag} ready in {:.1?}", t.elapsed());
}

async fn engine() -> DockerEngine {
    let ep = resolve_endpoint(&|k| std::env::var(k).ok()).expect("engine endpoint");
    DockerEngine::connect(&ep)
        .await
        .expect("these tests need a running Docker engine")
}

fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `docker ps -a --filter label=docker_release.temporary=true -q`, narrowed to containers this
/// test process owns.
fn labelled_containers() -> BTreeSet<String> {
    let temporary = format!("label={LABEL_TEMPORARY}=true");
    let mine = format!("label={LABEL_OWNER}={}", owner());
    let (ok, out, err) = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &temporary,
        "--filter",
        &mine,
        "-q",
    ]);
    assert!(ok, "docker ps failed: {err}");
    out.lines().map(str::to_string).collect()
}

fn assert_none_left(before: &BTreeSet<String>) {
    let after = labelled_containers();
    let new: Vec<_> = after.difference(before).collect();
    assert!(new.is_empty(), "temporary containers left behind: {new:?}");
}

/// A copy of the fixture (mtimes kept) in a temporary directory, optionally with another
/// `Dockerfile.build`.
fn fixture_copy(build_dockerfile: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_root().join("test/fixtures/article_app/.");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    if let Some(text) = build_dockerfile {
        std::fs::write(dir.path().join("Dockerfile.build"), text).unwrap();
    }
    dir
}

fn flow(dir: &Path, build_tag: &str, final_tags: &[&str]) -> DockerfileFlow {
    DockerfileFlow {
        project_dir: dir.to_path_buf(),
        build_dockerfile: "Dockerfile.build".into(),
        dockerfile: "Dockerfile".into(),
        build_tag: build_tag.into(),
        version: "0.1.0".into(),
        release_tarball: "article_app.tar.gz".into(),
        final_tags: final_tags.iter().map(|t| t.to_string()).collect(),
        no_cache: false,
    }
}

/// What a run printed.
#[derive(Default)]
struct Seen {
    steps: Mutex<Vec<String>>,
    lines: Mutex<Vec<(String, String)>>,
}

impl Seen {
    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
    fn lines_of(&self, step: Step) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == step.key())
            .map(|(_, l)| l.clone())
            .collect()
    }
}

async fn run_flow(
    flow: &DockerfileFlow,
    cancelled: CancellationToken,
) -> (Result<FlowOutcome, FlowError>, Arc<Seen>, Duration) {
    let engine = engine().await;
    let seen = Arc::new(Seen::default());
    let (s1, s2) = (seen.clone(), seen.clone());
    let t = Instant::now();
    let r = run(
        &engine,
        flow,
        Arc::new(move |step| {
            eprintln!("==> {step}");
            s1.steps.lock().unwrap().push(step.to_string());
        }),
        Arc::new(move |step, line| {
            s2.lines
                .lock()
                .unwrap()
                .push((step.to_string(), line.to_string()))
        }),
        cancelled,
    )
    .await;
    (r, seen, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_article_flow_builds_a_final_image_that_runs_the_release() {
    let _serial = SERIAL.lock().await;
    ensure_base_images();
    let dir = fixture_copy(None);
    // Ignored by the fixture's .dockerignore: must not reach the build image.
    std::fs::create_dir_all(dir.path().join("_build")).unwrap();
    std::fs::write(dir.path().join("_build/marker"), "host build output").unwrap();
    let build_tag = "docker-release-test/article_app-build:0.1.0";
    let tags = [
        "docker-release-test/article_app:0.1.0",
        "docker-release-test/article_app:latest",
    ];
    // The previous run's images (and with them their untagged layers) go first: the builds
    // below use no cache, so they would otherwise pile up as dangling images.
    for t in [build_tag, tags[0], tags[1]] {
        docker(&["image", "rm", t]);
    }
    let before = labelled_containers();

    // No cache: the release is really built, and the flag reaches the engine in both builds.
    let mut f = flow(dir.path(), build_tag, &tags);
    f.no_cache = true;
    let (r, seen, took) = run_flow(&f, Default::default()).await;
    eprintln!("full flow: {took:.1?}");
    let out = r.unwrap_or_else(|e| panic!("{} ({})", e, e.reason()));

    assert_none_left(&before);
    let steps = seen.steps();
    assert_eq!(steps.len(), 5, "{steps:?}");
    for (line, start) in steps.iter().zip([
        "building the release in docker-release-test/article_app-build:0.1.0 from Dockerfile.build (version 0.1.0)",
        "creating a temporary container from docker-release-test/article_app-build:0.1.0",
        "copying /tmp/article_app.tar.gz from the build image",
        "removing the temporary container docker_release-tmp-",
        "building the final image docker-release-test/article_app:0.1.0 from Dockerfile (also tagged docker-release-test/article_app:latest)",
    ]) {
        assert!(line.starts_with(start), "{line:?} should start with {start:?}");
    }
    // Each build's output was streamed.
    let release = seen.lines_of(Step::BuildRelease);
    assert!(
        release.iter().any(|l| l.contains("RUN mix release")),
        "{release:?}"
    );
    assert!(
        release
            .iter()
            .any(|l| l.contains("Successfully tagged docker-release-test/article_app-build:0.1.0")),
        "{release:?}"
    );
    let fin = seen.lines_of(Step::BuildFinal);
    for l in release.iter().chain(&fin) {
        assert!(!l.contains("Using cache"), "--no-cache was not passed: {l}");
    }
    assert!(
        fin.iter().any(|l| l.contains("ADD article_app.tar.gz")),
        "{fin:?}"
    );

    assert_eq!(out.tags, tags);
    assert!(out.final_image_id.starts_with("sha256:"), "{out:?}");
    assert!(out.size > 0 && out.tarball_bytes > 1_000_000, "{out:?}");
    for t in tags {
        let (ok, id, err) = docker(&["image", "inspect", "-f", "{{.Id}}", t]);
        assert!(ok, "{t}: {err}");
        assert_eq!(id.trim(), out.final_image_id);
    }
    let (ok, _, err) = docker(&["image", "inspect", build_tag]);
    assert!(ok, "the build image is tagged: {err}");
    // .dockerignore was honoured, and the build image holds the tarball where the flow took it.
    let (ok, _, err) = docker(&[
        "run",
        "--rm",
        build_tag,
        "sh",
        "-c",
        "test ! -e /src/_build/marker && test -s /tmp/article_app.tar.gz",
    ]);
    assert!(ok, "{err}");

    // The final image runs the release.
    let t = Instant::now();
    let (ok, stdout, err) = docker(&[
        "run",
        "--rm",
        tags[1],
        "/opt/article_app/bin/article_app",
        "eval",
        "IO.puts(:ok)",
    ]);
    assert!(ok, "{err}");
    assert_eq!(stdout.trim(), "ok");
    // Its CMD starts the release: it answers an rpc.
    let (ok, cid, err) = docker(&["run", "-d", tags[0]]);
    assert!(ok, "{err}");
    let cid = cid.trim().to_string();
    let mut answered = String::new();
    for _ in 0..40 {
        let (ok, out, _) = docker(&[
            "exec",
            &cid,
            "/opt/article_app/bin/article_app",
            "rpc",
            "IO.puts(ArticleApp.hello())",
        ]);
        if ok {
            answered = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, logs, _) = docker(&["logs", &cid]);
    docker(&["rm", "-f", &cid]);
    assert_eq!(
        answered.trim(),
        "world",
        "the started release did not answer; logs:\n{logs}"
    );
    eprintln!("final image checks: {:.1?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_dockerfile_names_the_step_and_shows_the_engines_error() {
    let _serial = SERIAL.lock().await;
    ensure_base_images();
    let dir = fixture_copy(Some(&format!(
        "FROM {BUILDER}\nARG version\nRUN echo \"building $version, about to fail\"\nRUN false\n"
    )));
    let before = labelled_containers();
    let mut f = flow(
        dir.path(),
        "docker-release-test/article_app-build:failing",
        &["docker-release-test/article_app:failing"],
    );
    // So the echo runs (and is streamed) every time, not only on the first run.
    f.no_cache = true;
    let (r, seen, took) = run_flow(&f, Default::default()).await;
    eprintln!("failing build: {took:.1?}");
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "build_failed");
    assert_eq!(err.step(), Some(Step::BuildRelease));
    let msg = err.to_string();
    assert!(
        msg.starts_with("building the release image docker-release-test/article_app-build:failing from Dockerfile.build failed: "),
        "{msg}"
    );
    // The engine's own words (an errorDetail inside the 200 stream).
    assert!(
        msg.contains("The command '/bin/sh -c false' returned a non-zero code: 1"),
        "{msg}"
    );
    assert!(
        seen.lines_of(Step::BuildRelease)
            .iter()
            .any(|l| l == "building 0.1.0, about to fail"),
        "build output is streamed"
    );
    assert_eq!(seen.steps().len(), 1, "{:?}", seen.steps());
    assert_none_left(&before);

    // A Dockerfile the engine cannot parse: refused with its message, also named as the step.
    std::fs::write(
        dir.path().join("Dockerfile.build"),
        format!("FROM {BUILDER}\nRUNN true\n"),
    )
    .unwrap();
    let (r, _, _) = run_flow(
        &flow(
            dir.path(),
            "docker-release-test/article_app-build:failing",
            &["docker-release-test/article_app:failing"],
        ),
        Default::default(),
    )
    .await;
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "build_failed");
    let msg = err.to_string();
    assert!(msg.starts_with("building the release image "), "{msg}");
    assert!(
        msg.to_lowercase().contains("unknown instruction: runn"),
        "{msg}"
    );
    assert_none_left(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_image_without_the_tarball_is_explained_and_its_container_removed() {
    let _serial = SERIAL.lock().await;
    ensure_base_images();
    let dir = fixture_copy(Some(&format!(
        "FROM {BUILDER}\nARG version\nRUN echo \"forgot to copy the release of $version\"\n"
    )));
    let before = labelled_containers();
    let build_tag = "docker-release-test/article_app-build:no-tarball";
    let (r, seen, took) = run_flow(
        &flow(
            dir.path(),
            build_tag,
            &["docker-release-test/article_app:no-tarball"],
        ),
        Default::default(),
    )
    .await;
    eprintln!("missing tarball: {took:.1?}");
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "tarball_missing");
    match &err {
        FlowError::TarballMissing {
            path, build_tag: b, ..
        } => {
            assert_eq!(path, "/tmp/article_app.tar.gz");
            assert_eq!(b, build_tag);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "copying the release out of the build image failed: the build image docker-release-test/article_app-build:no-tarball has no /tmp/article_app.tar.gz: Dockerfile.build must leave the release tarball there (the article copies _build/prod/<app>-$version.tar.gz to /tmp/<app>.tar.gz)"
    );
    // The container was made and removed.
    let steps = seen.steps();
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert!(steps[3].starts_with("removing the temporary container"));
    assert_none_left(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dockerfile_is_refused_before_anything_is_built() {
    let _serial = SERIAL.lock().await;
    let dir = fixture_copy(None);
    let build_tag = "docker-release-test/article_app-build:never-built";
    let mut f = flow(
        dir.path(),
        build_tag,
        &["docker-release-test/article_app:never-built"],
    );
    f.dockerfile = "Dockerfile.prod".into();
    let (r, seen, _) = run_flow(&f, Default::default()).await;
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "dockerfile_missing");
    assert_eq!(
        err.to_string(),
        format!(
            "the Dockerfile {} does not exist: give a path relative to the project directory of an existing file",
            dir.path().join("Dockerfile.prod").display()
        )
    );
    assert!(seen.steps().is_empty());
    let (ok, _, _) = docker(&["image", "inspect", build_tag]);
    assert!(!ok, "nothing was built");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_build_stops_it_and_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    ensure_base_images();
    let dir = fixture_copy(Some(&format!(
        "FROM {BUILDER}\nARG version\nRUN echo started && sleep 60\n"
    )));
    let before = labelled_containers();
    let cancelled = CancellationToken::new();
    let c = cancelled.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.cancel();
    });
    let f = flow(
        dir.path(),
        "docker-release-test/article_app-build:cancelled",
        &["docker-release-test/article_app:cancelled"],
    );
    let (r, _, took) = run_flow(&f, cancelled).await;
    eprintln!("cancelled build: {took:.1?}");
    let err = r.unwrap_err();
    assert_eq!(err.reason(), "cancelled");
    assert_eq!(err.step(), Some(Step::BuildRelease));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_none_left(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_leftovers_of_killed_runs_only() {
    let _serial = SERIAL.lock().await;
    ensure_base_images();
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let me = owner();
    let host = me.rsplit_once(':').unwrap().0.to_string();
    let create = |owner: &str| {
        let (ok, id, err) = docker(&[
            "create",
            "--label",
            &format!("{LABEL_TEMPORARY}=true"),
            "--label",
            &format!("{LABEL_OWNER}={owner}"),
            MINBASE,
            "true",
        ]);
        assert!(ok, "{err}");
        id.trim().to_string()
    };
    let killed = create(&format!("{host}:{dead_pid}"));
    let alive = create(&me);
    let elsewhere = create(&format!("another-host:{dead_pid}"));

    let removed = sweep_leftovers(&engine().await).await.unwrap();
    let (_, all, _) = docker(&["ps", "-a", "--no-trunc", "-q"]);
    for id in [&alive, &elsewhere] {
        docker(&["rm", "-f", id]);
    }
    assert!(removed >= 1, "{removed}");
    assert!(
        !all.contains(&killed),
        "the killed run's container was swept"
    );
    assert!(
        all.contains(&alive) && all.contains(&elsewhere),
        "others are kept"
    );
}
