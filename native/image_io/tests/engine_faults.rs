//! The bound on silence of engine requests, against the real engine behind a fault proxy of our
//! own: a Unix socket in front of /var/run/docker.sock that passes requests through, or, for the
//! requests a rule names, answers with an error, swallows the request and never answers, stops
//! reading it, holds the engine's answer back, or throttles it.
//!
//! Every test uses a short bound (1 s), so a hang is found in seconds; none of them may take
//! longer than a few bounds.

mod registry_support;

use bytes::Bytes;
use image_core::reference::Reference;
use image_io::engine::{Body, DockerEngine, Endpoint, Engine, EngineError};
use image_io::engine::{BuildEngine, BuildSpec};
use image_io::sink::{self, Built};
use registry_support as rs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const ENGINE: &str = "/var/run/docker.sock";
const BOUND: Duration = Duration::from_secs(1);

/// The engine these tests need; its absence fails the test (it must not pass unnoticed).
fn engine_socket() -> PathBuf {
    let p = PathBuf::from(ENGINE);
    assert!(
        p.exists(),
        "these tests need a Docker engine at {ENGINE} (start dockerd)"
    );
    p
}

/// What the proxy does with a request whose request line contains the rule's text.
#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this status and a JSON message, without asking the engine.
    Status(u16),
    /// Read the whole request (and anything after it), never answer.
    SwallowAndHang,
    /// Read this many bytes of the request, then stop reading (and never answer).
    StopReadingAfter(usize),
    /// Pass the request on, hold the engine's answer back for this long, then pass it on.
    HoldAnswer(Duration),
    /// Pass the request on; pass the answer on in pieces of this size with this pause between.
    Throttle(usize, Duration),
    /// Close the connection right after the request's head.
    Cut,
}

struct FaultProxy {
    path: PathBuf,
    /// The request line of every connection, in order.
    seen: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    fn start(rules: Vec<(&'static str, Fault)>) -> FaultProxy {
        let upstream = engine_socket();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let rules = Arc::new(rules);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (rules, log, upstream) = (rules.clone(), log.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &rules, &log).await;
                });
            }
        });
        FaultProxy {
            path,
            seen,
            _dir: dir,
            task,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.path.clone())
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut client: UnixStream,
    upstream: &Path,
    rules: &[(&'static str, Fault)],
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // The request's head.
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    log.lock().unwrap().push(line.clone());
    let fault = rules
        .iter()
        .find(|(text, _)| line.contains(text))
        .map(|(_, f)| f.clone());
    match fault {
        Some(Fault::Status(code)) => {
            let body = format!("{{\"message\":\"fault proxy: {code} on purpose\"}}");
            let resp = format!(
                "HTTP/1.1 {code} Fault\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        Some(Fault::SwallowAndHang) => {
            while client.read(&mut buf).await? > 0 {}
            return Ok(());
        }
        Some(Fault::StopReadingAfter(n)) => {
            let mut got = head.len();
            while got < n {
                let k = client.read(&mut buf).await?;
                if k == 0 {
                    return Ok(());
                }
                got += k;
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
            return Ok(());
        }
        Some(Fault::Cut) => return Ok(()),
        _ => {}
    }
    let mut engine = UnixStream::connect(upstream).await?;
    engine.write_all(&head).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut er, mut ew) = engine.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut ew).await;
        let _ = ew.shutdown().await;
    };
    let down = async move {
        match fault {
            Some(Fault::HoldAnswer(d)) => {
                tokio::time::sleep(d).await;
                let _ = tokio::io::copy(&mut er, &mut cw).await;
            }
            Some(Fault::Throttle(size, pause)) => {
                let mut piece = vec![0u8; size];
                loop {
                    match er.read(&mut piece).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if cw.write_all(&piece[..n]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            }
            _ => {
                let _ = tokio::io::copy(&mut er, &mut cw).await;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}

async fn connect(proxy: &FaultProxy) -> DockerEngine {
    match DockerEngine::connect_with(&proxy.endpoint(), BOUND).await {
        Ok(e) => e,
        Err(e) => panic!("cannot connect through the proxy: {e}"),
    }
}

/// Asserts a stall error names the endpoint, the request and the seconds, and came in time.
fn assert_stalled(e: &EngineError, proxy: &FaultProxy, request: &str, started: Instant) {
    let text = e.to_string();
    assert_eq!(e.reason(), "engine_stalled", "{text}");
    assert!(
        text.contains(&format!("unix://{}", proxy.path.display())),
        "names the endpoint: {text}"
    );
    assert!(
        text.contains(request),
        "names the request {request}: {text}"
    );
    assert!(
        text.contains("for 1 s") || text.contains("for 1."),
        "names the seconds: {text}"
    );
    assert!(
        text.contains("--stall-timeout"),
        "says how to change it: {text}"
    );
    let took = started.elapsed();
    assert!(took < BOUND * 5, "took {took:?} for a bound of {BOUND:?}");
}

/// A small image with content of its own (no other test or helper has the same image).
fn unique_built(dir: &Path, tag: &str) -> Arc<Built> {
    let blobs = rs::blob_dir(dir);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id());
    let image = rs::image(vec![rs::layer(
        &blobs,
        "app",
        "/app/noise",
        rs::noise(seed, 3 << 20),
    )]);
    Arc::new(Built::single(
        image,
        blobs,
        vec![Reference::parse(tag).unwrap()],
    ))
}

fn unique_tag(name: &str) -> String {
    format!(
        "dr-engine-faults-{name}:{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

fn image_exists(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inspect_that_is_never_answered_fails_after_the_bound() {
    let proxy = FaultProxy::start(vec![("/json", Fault::SwallowAndHang)]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let e = engine.inspect("sha256:0123").await.unwrap_err();
    println!("{e}");
    assert_stalled(&e, &proxy, "GET /images/sha256:0123/json", started);
}

/// Load a fresh image (tagged `dr-engine-faults-NAME:…`) through a proxy that applies `fault`
/// to the load: it must fail as stalled after the bound, and tag nothing.
async fn assert_load_stalls(name: &str, fault: Fault) {
    let tmp = tempfile::tempdir().unwrap();
    let tag = unique_tag(name);
    let built = unique_built(tmp.path(), &tag);
    let proxy = FaultProxy::start(vec![("/images/load", fault)]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let e = sink::engine(&engine, built, Arc::new(|_| {}))
        .await
        .unwrap_err();
    let sink::SinkError::Engine(e) = e else {
        panic!("expected an engine error, got {e}");
    };
    println!("{e}");
    assert_stalled(&e, &proxy, "POST /images/load", started);
    assert!(!image_exists(&tag), "no tag after a failed load");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_the_engine_stops_reading_fails_after_the_bound_and_tags_nothing() {
    assert_load_stalls("stop-reading", Fault::StopReadingAfter(256 << 10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_that_is_taken_whole_and_never_answered_fails_after_the_bound() {
    assert_load_stalls("swallow", Fault::SwallowAndHang).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_engine_is_found_at_connect() {
    let proxy = FaultProxy::start(vec![("/version", Fault::SwallowAndHang)]);
    let started = Instant::now();
    let e = DockerEngine::connect_with(&proxy.endpoint(), BOUND)
        .await
        .err()
        .expect("connect must fail");
    println!("{e}");
    assert_stalled(&e, &proxy, "GET /version", started);
    assert!(e.to_string().contains("while connecting"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_answers_500_is_reported_as_failing_not_as_absent() {
    let proxy = FaultProxy::start(vec![("/version", Fault::Status(500))]);
    let e = DockerEngine::connect_with(&proxy.endpoint(), BOUND)
        .await
        .err()
        .expect("connect must fail");
    let text = e.to_string();
    println!("{text}");
    assert_eq!(e.reason(), "engine_error", "{text}");
    assert!(text.contains("answered 500"), "{text}");
    assert!(text.contains("fault proxy: 500 on purpose"), "{text}");
    assert!(!text.contains("did not answer"), "{text}");
    assert!(!text.contains("start it"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_fails_at_once_not_after_the_bound() {
    let proxy = FaultProxy::start(vec![("/json", Fault::Cut)]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let e = engine.inspect("sha256:0123").await.unwrap_err();
    println!("{e}");
    assert_ne!(e.reason(), "engine_stalled", "{e}");
    assert!(
        e.to_string().contains("broke during the image inspection"),
        "{e}"
    );
    assert!(started.elapsed() < BOUND * 3, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_that_keeps_moving_is_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = unique_tag("slow");
    let built = unique_built(tmp.path(), &tag);
    // The load's answer, and the inspect's, trickle in 16-byte pieces, 300 ms apart: longer in
    // total than the bound, never silent for the bound.
    let proxy = FaultProxy::start(vec![
        (
            "/images/load",
            Fault::Throttle(64, Duration::from_millis(300)),
        ),
        ("/json", Fault::Throttle(256, Duration::from_millis(300))),
    ]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let loaded = sink::engine(&engine, built.clone(), Arc::new(|_| {})).await;
    let took = started.elapsed();
    let cleanup = docker(&["image", "rm", &tag]);
    let loaded = loaded.unwrap_or_else(|e| panic!("the slow load failed: {e}"));
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(loaded.size > 0);
    assert!(
        took > BOUND * 2,
        "the answers were slower than the bound: {took:?}"
    );
    println!("loaded {} in {took:?} through a throttled proxy", loaded.id);
}

/// A build of `FROM scratch` (no base image needed): its answer is a workload's output.
async fn build_scratch(engine: &DockerEngine, tag: &str) -> Result<Option<String>, String> {
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = b"FROM scratch\nLABEL docker_release.test=engine_faults\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", &dockerfile[..])
        .unwrap();
    let bytes = Bytes::from(tar.into_inner().unwrap());
    let body: Body = Box::pin(futures_util::stream::once(async move { Ok(bytes) }));
    let spec = BuildSpec {
        dockerfile: "Dockerfile".into(),
        tag: tag.into(),
        build_args: vec![],
        no_cache: true,
    };
    engine
        .build(&spec, body, &|_| {})
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_build_goes_on_while_the_engine_answers_pings_and_fails_when_it_does_not() {
    // The build's answer is held back for three bounds: the engine answers pings meanwhile,
    // so the silence is the workload's and the build completes.
    let tag = unique_tag("silent-build");
    let proxy = FaultProxy::start(vec![("/build", Fault::HoldAnswer(BOUND * 3))]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let built = build_scratch(&engine, &tag).await;
    let took = started.elapsed();
    let cleanup = docker(&["image", "rm", &tag]);
    built.unwrap_or_else(|e| panic!("the held-back build failed: {e}"));
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(took >= BOUND * 3, "{took:?}");
    // Silent for three bounds and not failed: the watch asked the engine (how often depends
    // on how the pings and the held answer fall; at least once).
    let pings = proxy.seen().iter().filter(|l| l.contains("/_ping")).count();
    assert!(pings >= 1, "the watch asked the engine: {:?}", proxy.seen());

    // The same, but the engine answers no ping either: the build fails after about two
    // bounds (the silence, then the unanswered ping).
    let tag = unique_tag("silent-build-dead");
    let proxy = FaultProxy::start(vec![
        ("/build", Fault::HoldAnswer(Duration::from_secs(600))),
        ("/_ping", Fault::SwallowAndHang),
    ]);
    let engine = connect(&proxy).await;
    let started = Instant::now();
    let e = build_scratch(&engine, &tag).await.unwrap_err();
    println!("{e}");
    assert!(e.contains("did not answer a ping either"), "{e}");
    assert!(e.contains("POST /build"), "{e}");
    assert!(started.elapsed() < BOUND * 5, "{:?}", started.elapsed());
    // The engine itself got the build and may have finished it: remove what it made.
    if image_exists(&tag) {
        docker(&["image", "rm", &tag]);
    }
}
