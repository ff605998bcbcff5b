//! Outputs: the atomic archive file and the engine loader, the latter against a fake [`Engine`].

#[path = "../../image_core/tests/support/mod.rs"]
mod support;

use futures_util::StreamExt;
use image_core::archive::ArchiveError;
use image_core::image::Image;
use image_core::layer::{write_layer, Entry, LayerSpec, Source};
use image_core::reference::Reference;
use image_io::engine::{Body, Engine, EngineError, EngineKind};
use image_io::sink::{self, Built, Progress, SinkError};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

fn built(dir: &Path, tags: &[&str]) -> Arc<Built> {
    let (image, blobs) = support::sample_image(dir);
    Arc::new(Built::single(
        image,
        blobs,
        tags.iter().map(|t| Reference::parse(t).unwrap()).collect(),
    ))
}

/// An image whose archive is several MiB, more than the loader buffers, so a failing load
/// really stops the writer part-way.
fn big_built(dir: &Path) -> Arc<Built> {
    let (mut image, blobs) = support::sample_image(dir);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let spec = LayerSpec {
        name: "noise".into(),
        entries: vec![Entry::new("/noise", Source::Bytes(noise), 0o644)],
    };
    let tmp = blobs.root.join("noise.partial");
    let file = std::fs::File::create(&tmp).unwrap();
    let fs = image_core::fs::HostFs::new("/");
    let (info, mut file) =
        write_layer(&fs, &spec, support::CREATED, 0, file, &mut |_| true).unwrap();
    file.flush().unwrap();
    std::fs::rename(&tmp, blobs.path(&info.digest)).unwrap();
    image.layers.push(info);
    Arc::new(Built::single(
        image,
        blobs,
        vec![Reference::parse("hello:big").unwrap()],
    ))
}

fn recording_progress() -> (Progress, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |n| s.lock().unwrap().push(n)), seen)
}

// ---------------------------------------------------------------------------------------------
// Archive files.

#[test]
fn write_atomically_keeps_the_old_file_when_the_writer_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.tar");
    std::fs::write(&path, b"the previous archive").unwrap();
    let err = sink::write_atomically(&path, |w| -> Result<(), SinkError> {
        w.write_all(&vec![7u8; 3 << 20]).unwrap(); // past the buffer: bytes reach the temp file
        Err(SinkError::Internal("boom".into()))
    })
    .unwrap_err();
    assert!(
        matches!(err, SinkError::Internal(ref m) if m == "boom"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous archive");
    assert_eq!(partial_files(tmp.path()), Vec::<String>::new());
}

#[test]
fn write_atomically_replaces_the_file_on_success() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.tar");
    std::fs::write(&path, b"old").unwrap();
    let n = sink::write_atomically(&path, |w| {
        w.write_all(b"new").unwrap();
        Ok(3)
    })
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(partial_files(tmp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn archive_file_writes_a_valid_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(
        &tmp.path().join("build"),
        &["example.com/hello:1.0", "hello"],
    );
    let path = tmp.path().join("out/hello.tar");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let (progress, seen) = recording_progress();
    let size = sink::archive_file(b.clone(), path.clone(), progress)
        .await
        .unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(seen.lock().unwrap().last(), Some(&size));
    let checked = support::validate_archive(&path).unwrap_or_else(|e| panic!("invalid: {e}"));
    assert_eq!(
        checked.manifest_digest,
        b.image.manifest_digest().to_string()
    );
    assert_eq!(checked.repo_tags, ["example.com/hello:1.0", "hello:latest"]);
    assert_eq!(partial_files(&tmp.path().join("out")), Vec::<String>::new());
}

#[tokio::test]
async fn archive_file_in_a_missing_directory_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello"]);
    let path = tmp.path().join("no/such/dir/hello.tar");
    let err = sink::archive_file(b, path.clone(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::File { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&*path.to_string_lossy()),
        "the message should name {}: {err}",
        path.display()
    );
}

#[tokio::test]
async fn archive_file_with_a_missing_blob_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(&tmp.path().join("build"), &["hello"]);
    std::fs::remove_file(b.blobs.path(&b.image.layers[0].digest)).unwrap();
    let path = tmp.path().join("hello.tar");
    std::fs::write(&path, b"old").unwrap();
    let err = sink::archive_file(b, path.clone(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Archive(ArchiveError::Blob { .. })),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(partial_files(tmp.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The engine, faked.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Platform,
    Load,
    Inspect(String),
    Tag(String, String, String),
    Tagged(String),
    Untag(String),
}

#[derive(Clone, Copy)]
enum LoadBehaviour {
    /// Read the whole body, then succeed.
    Ok,
    /// Read one chunk, then fail as if the engine reported an error part-way.
    FailAfterFirstChunk,
    /// Read nothing, then claim success.
    HangUpAndSayOk,
    /// Read the whole body, then fail when a layer it names is not in it (an engine that
    /// lost a layer it had).
    RefuseMissingLayers,
}

struct FakeEngine {
    platform: String,
    load: LoadBehaviour,
    /// The ID `inspect` reports; `None` to echo what was asked.
    inspect_id: Option<String>,
    calls: Mutex<Vec<Call>>,
    /// `repo:tag` → image ID, as the engine has them.
    tag_map: Mutex<std::collections::BTreeMap<String, String>>,
    /// A `repo:tag` the engine refuses to set.
    refuse_tag: Option<String>,
    received: Mutex<Vec<u8>>,
    /// Whether the body stream carried an error item (the writer aborting the upload).
    body_error: Mutex<Option<String>>,
    /// The layers (`diff_id`s) the engine says the image `hello:latest` has.
    held: Option<Vec<String>>,
    /// Which engine it says it is.
    kind: EngineKind,
}

impl FakeEngine {
    fn new(load: LoadBehaviour) -> FakeEngine {
        FakeEngine {
            platform: "linux/amd64".into(),
            load,
            inspect_id: None,
            calls: Mutex::new(vec![]),
            tag_map: Mutex::new(Default::default()),
            refuse_tag: None,
            kind: EngineKind::Docker,
            received: Mutex::new(vec![]),
            body_error: Mutex::new(None),
            held: None,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn tags(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Tag(..)))
            .collect()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl Engine for FakeEngine {
    async fn platform(&self) -> Result<String, EngineError> {
        self.record(Call::Platform);
        Ok(self.platform.clone())
    }

    async fn kind(&self) -> Result<EngineKind, EngineError> {
        Ok(self.kind)
    }

    async fn load(&self, mut body: Body) -> Result<String, EngineError> {
        self.record(Call::Load);
        self.received.lock().unwrap().clear();
        match self.load {
            LoadBehaviour::HangUpAndSayOk => return Ok(String::new()),
            LoadBehaviour::FailAfterFirstChunk => {
                if let Some(Ok(chunk)) = body.next().await {
                    self.received.lock().unwrap().extend_from_slice(&chunk);
                }
                return Err(EngineError::Load("no space left on device".into()));
            }
            LoadBehaviour::Ok | LoadBehaviour::RefuseMissingLayers => {}
        }
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => self.received.lock().unwrap().extend_from_slice(&chunk),
                Err(e) => {
                    *self.body_error.lock().unwrap() = Some(e.to_string());
                    return Err(EngineError::Load(format!("unexpected EOF: {e}")));
                }
            }
        }
        if matches!(self.load, LoadBehaviour::RefuseMissingLayers) {
            let (names, listed) = archive_layers(&self.received.lock().unwrap());
            if let Some(missing) = listed.iter().find(|l| !names.contains(*l)) {
                return Err(EngineError::Load(format!(
                    "open /var/lib/docker/tmp/docker-import-1/{missing}: no such file or directory"
                )));
            }
        }
        Ok("Loaded image ID: sha256:...\n".into())
    }

    async fn layers(&self, reference: &str) -> Result<Option<Vec<String>>, EngineError> {
        Ok(self.held.clone().filter(|_| reference == "hello:latest"))
    }

    async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.record(Call::Tag(id.into(), repo.into(), tag.into()));
        let name = format!("{repo}:{tag}");
        if self.refuse_tag.as_deref() == Some(name.as_str()) {
            return Err(EngineError::Api {
                action: format!("tagging {name}"),
                message: "refused on purpose".into(),
            });
        }
        self.tag_map.lock().unwrap().insert(name, id.into());
        Ok(())
    }

    async fn tagged(&self, repo: &str, tag: &str) -> Result<Option<String>, EngineError> {
        let name = format!("{repo}:{tag}");
        self.record(Call::Tagged(name.clone()));
        Ok(self.tag_map.lock().unwrap().get(&name).cloned())
    }

    async fn untag(&self, repo: &str, tag: &str) -> Result<(), EngineError> {
        let name = format!("{repo}:{tag}");
        self.record(Call::Untag(name.clone()));
        self.tag_map.lock().unwrap().remove(&name);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<(String, u64), EngineError> {
        self.record(Call::Inspect(id.into()));
        let reported = self.inspect_id.clone().unwrap_or_else(|| id.to_string());
        Ok((reported, 4242))
    }
}

fn image_id(image: &Image) -> String {
    image.id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_load_tags_once_per_tag_after_a_complete_load() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(
        tmp.path(),
        &[
            "example.com/team/hello:1.0",
            "hello",
            "localhost:5000/hello:dev",
        ],
    );
    let fake = FakeEngine::new(LoadBehaviour::Ok);
    let (progress, seen) = recording_progress();
    let loaded = sink::engine(&fake, b.clone(), progress).await.unwrap();
    let id = image_id(&b.image);
    assert_eq!(loaded.id, id);
    assert_eq!(loaded.size, 4242);
    assert_eq!(
        fake.calls(),
        vec![
            Call::Platform,
            Call::Load,
            Call::Inspect(id.clone()),
            Call::Tagged("example.com/team/hello:1.0".into()),
            Call::Tag(id.clone(), "example.com/team/hello".into(), "1.0".into()),
            Call::Tagged("hello:latest".into()),
            Call::Tag(id.clone(), "hello".into(), "latest".into()),
            Call::Tagged("localhost:5000/hello:dev".into()),
            Call::Tag(id.clone(), "localhost:5000/hello".into(), "dev".into()),
        ]
    );
    // What the engine received is a complete, valid archive without tags (tags are set after
    // the load, by the tag calls).
    let received = fake.received.lock().unwrap().clone();
    assert_eq!(seen.lock().unwrap().last(), Some(&(received.len() as u64)));
    let checked = support::validate_archive_bytes(&received)
        .unwrap_or_else(|e| panic!("the engine received an invalid archive: {e}"));
    assert_eq!(checked.config_digest, id);
    assert!(checked.repo_tags.is_empty(), "{:?}", checked.repo_tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_of_another_platform_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello"]);
    let mut fake = FakeEngine::new(LoadBehaviour::Ok);
    fake.platform = "linux/arm64".into();
    let err = sink::engine(&fake, b, Arc::new(|_| {})).await.unwrap_err();
    match &err {
        SinkError::Engine(EngineError::Platform { image, engine }) => {
            assert_eq!(image, "linux/amd64");
            assert_eq!(engine, "linux/arm64");
        }
        other => panic!("expected a platform error, got {other:?}"),
    }
    assert_eq!(fake.calls(), vec![Call::Platform], "nothing is loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_load_failing_mid_stream_is_an_error_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = big_built(tmp.path());
    let fake = FakeEngine::new(LoadBehaviour::FailAfterFirstChunk);
    let err = sink::engine(&fake, b.clone(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::Engine(EngineError::Load(m)) if m.contains("no space left")),
        "the engine's own reason is reported: {err:?}"
    );
    assert_eq!(fake.calls(), vec![Call::Platform, Call::Load]);
    let received = fake.received.lock().unwrap().len() as u64;
    let layer_bytes: u64 = b.image.layers.iter().map(|l| l.size).sum();
    assert!(
        received > 0 && received < layer_bytes,
        "the load stopped part-way ({received} of more than {layer_bytes} bytes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_that_stops_reading_but_reports_success_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let b = big_built(tmp.path());
    let fake = FakeEngine::new(LoadBehaviour::HangUpAndSayOk);
    let err = sink::engine(&fake, b, Arc::new(|_| {})).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Archive(ArchiveError::Write(_))),
        "{err:?}"
    );
    assert!(fake.tags().is_empty());
    assert_eq!(fake.calls(), vec![Call::Platform, Call::Load]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reporting_another_id_is_a_mismatch_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello:1", "hello:2"]);
    let mut fake = FakeEngine::new(LoadBehaviour::Ok);
    let other = format!("sha256:{}", "0".repeat(64));
    fake.inspect_id = Some(other.clone());
    let err = sink::engine(&fake, b.clone(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    match &err {
        SinkError::IdMismatch { want, got } => {
            assert_eq!(*want, image_id(&b.image));
            assert_eq!(*got, other);
        }
        other => panic!("expected IdMismatch, got {other:?}"),
    }
    assert!(fake.tags().is_empty(), "{:?}", fake.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_missing_during_load_aborts_the_upload_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello"]);
    std::fs::remove_file(b.blobs.path(&b.image.layers[1].digest)).unwrap();
    let fake = FakeEngine::new(LoadBehaviour::Ok);
    let err = sink::engine(&fake, b, Arc::new(|_| {})).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Archive(ArchiveError::Blob { .. })),
        "the writer's error wins over the engine's: {err:?}"
    );
    assert!(
        fake.body_error.lock().unwrap().is_some(),
        "the request body ends with an error, so the engine discards the partial upload"
    );
    assert!(fake.tags().is_empty());
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Inspect(_))));
}

// ---------------------------------------------------------------------------------------------
// Tags move together or not at all.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_second_tag_puts_the_first_back() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello:1", "hello:2", "hello:3"]);
    let mut fake = FakeEngine::new(LoadBehaviour::Ok);
    let old = format!("sha256:{}", "1".repeat(64));
    fake.tag_map
        .lock()
        .unwrap()
        .insert("hello:1".into(), old.clone());
    fake.refuse_tag = Some("hello:3".into());
    let err = sink::engine(&fake, b.clone(), Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused on purpose"), "{err}");
    // hello:1 points at the image it pointed at before, hello:2 (new) is gone again.
    let tags = fake.tag_map.lock().unwrap().clone();
    assert_eq!(
        tags.into_iter().collect::<Vec<_>>(),
        vec![("hello:1".to_string(), old.clone())]
    );
    let id = image_id(&b.image);
    let calls = fake.calls();
    let undo = &calls[calls.len() - 4..];
    assert_eq!(
        undo,
        [
            Call::Tagged("hello:2".into()),
            Call::Untag("hello:2".into()),
            Call::Tagged("hello:1".into()),
            Call::Tag(old, "hello".into(), "1".into()),
        ],
        "the last moved tag is put back first; all calls: {calls:?} (image {id})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untag_leaves_a_tag_someone_else_moved_since() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello:1"]);
    let fake = FakeEngine::new(LoadBehaviour::Ok);
    let id = image_id(&b.image);
    let mut moves = Vec::new();
    sink::tag(&fake, &id, &b.tags, &mut moves).await.unwrap();
    assert_eq!(moves.len(), 1);
    let theirs = format!("sha256:{}", "2".repeat(64));
    fake.tag_map
        .lock()
        .unwrap()
        .insert("hello:1".into(), theirs.clone());
    let left = sink::untag(&fake, &id, moves).await;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        fake.tag_map.lock().unwrap().get("hello:1"),
        Some(&theirs),
        "another run's tag is not touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_cannot_be_put_back_is_named_with_the_engines_command() {
    for (kind, cli) in [
        (EngineKind::Docker, "docker"),
        (EngineKind::Podman, "podman"),
    ] {
        let mut fake = FakeEngine::new(LoadBehaviour::Ok);
        let (id, prev) = (
            format!("sha256:{}", "1".repeat(64)),
            "sha256:old".to_string(),
        );
        fake.tag_map.lock().unwrap().extend([
            ("hello:1".to_string(), id.clone()),
            ("hello:2".into(), id.clone()),
        ]);
        (fake.kind, fake.refuse_tag) = (kind, Some("hello:1".into()));
        let moves = vec![sink::TagMove {
            reference: Reference::parse("hello:1").unwrap(),
            previous: Some(prev.clone()),
        }];
        let left = sink::untag(&fake, &id, moves).await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            left[0].ends_with(&format!("put it back with `{cli} tag {prev} hello:1`")),
            "{left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_already_on_the_image_is_not_moved_and_not_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello:1"]);
    let fake = FakeEngine::new(LoadBehaviour::Ok);
    let id = image_id(&b.image);
    fake.tag_map
        .lock()
        .unwrap()
        .insert("hello:1".into(), id.clone());
    let mut moves = Vec::new();
    sink::tag(&fake, &id, &b.tags, &mut moves).await.unwrap();
    assert!(moves.is_empty());
    assert!(sink::untag(&fake, &id, moves).await.is_empty());
    assert_eq!(fake.tag_map.lock().unwrap().get("hello:1"), Some(&id));
}

/// The entries of an archive and the layer files its `manifest.json` names.
fn archive_layers(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    use std::io::Read;
    let mut names = Vec::new();
    let mut listed = Vec::new();
    for e in tar::Archive::new(bytes).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "manifest.json" {
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            let m: serde_json::Value = serde_json::from_str(&text).unwrap();
            for l in m[0]["Layers"].as_array().unwrap() {
                listed.push(l.as_str().unwrap().to_string());
            }
        }
        names.push(name);
    }
    (names, listed)
}

// ---------------------------------------------------------------------------------------------
// Layers the engine holds are not sent again.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_the_engine_holds_are_left_out_of_the_load() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello"]);
    let mut fake = FakeEngine::new(LoadBehaviour::Ok);
    // The previous image under our tag shares our first layer, then differs.
    fake.held = Some(vec![
        b.image.layers[0].diff_id.to_string(),
        format!("sha256:{}", "9".repeat(64)),
    ]);
    let loaded = sink::engine(&fake, b.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(loaded.id, image_id(&b.image));
    let (names, listed) = archive_layers(&fake.received.lock().unwrap());
    let first = format!("blobs/sha256/{}", b.image.layers[0].digest.hex());
    let second = format!("blobs/sha256/{}", b.image.layers[1].digest.hex());
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "both still named"
    );
    assert!(
        !names.contains(&first),
        "the held layer is left out: {names:?}"
    );
    assert!(names.contains(&second), "{names:?}");
    assert_eq!(
        fake.calls(),
        vec![
            Call::Platform,
            Call::Load,
            Call::Inspect(image_id(&b.image)),
            Call::Tagged("hello:latest".into()),
            Call::Tag(image_id(&b.image), "hello".into(), "latest".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_refused_without_the_held_layers_is_sent_again_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let b = built(tmp.path(), &["hello"]);
    let mut fake = FakeEngine::new(LoadBehaviour::RefuseMissingLayers);
    fake.held = Some(vec![b.image.layers[0].diff_id.to_string()]);
    let loaded = sink::engine(&fake, b.clone(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(loaded.id, image_id(&b.image));
    let calls = fake.calls();
    assert_eq!(
        calls[..3],
        [Call::Platform, Call::Load, Call::Load],
        "{calls:?}"
    );
    let received = fake.received.lock().unwrap().clone();
    let checked = support::validate_archive_bytes(&received)
        .unwrap_or_else(|e| panic!("the second load is a whole archive: {e}"));
    assert_eq!(checked.config_digest, image_id(&b.image));
}

/// A real engine, counting the loads it is asked for.
struct CountingEngine {
    inner: image_io::engine::DockerEngine,
    loads: std::sync::atomic::AtomicUsize,
}

impl Engine for CountingEngine {
    async fn platform(&self) -> Result<String, EngineError> {
        self.inner.platform().await
    }
    async fn load(&self, body: Body) -> Result<String, EngineError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load(body).await
    }
    async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.inner.tag(id, repo, tag).await
    }
    async fn inspect(&self, id: &str) -> Result<(String, u64), EngineError> {
        self.inner.inspect(id).await
    }
    async fn tagged(&self, repo: &str, tag: &str) -> Result<Option<String>, EngineError> {
        self.inner.tagged(repo, tag).await
    }
    async fn untag(&self, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.inner.untag(repo, tag).await
    }
    async fn layers(&self, reference: &str) -> Result<Option<Vec<String>>, EngineError> {
        self.inner.layers(reference).await
    }
}

/// Against the real engine: the previous image under our tag holds our first layers, so the
/// archive sent leaves their blobs out, and the engine takes it at the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_engine_takes_an_archive_without_the_layers_it_holds() {
    use image_io::engine::{resolve_endpoint, DockerEngine};
    let endpoint = resolve_endpoint(&|k| std::env::var(k).ok()).expect("an engine endpoint");
    let real = DockerEngine::connect(&endpoint)
        .await
        .expect("a running Docker engine (scripts/setup.sh starts one)");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let (repo, tag) = (format!("dr-sink-held-{}-{nanos}", std::process::id()), "t");
    let reference = format!("{repo}:{tag}");

    let t1 = tempfile::tempdir().unwrap();
    let first = built(t1.path(), &[&reference]);
    sink::engine(&real, first.clone(), Arc::new(|_| {}))
        .await
        .unwrap();

    // The same layers and one more on top: a rebuild whose last layer changed.
    let t2 = tempfile::tempdir().unwrap();
    let (mut image, blobs) = support::sample_image(t2.path());
    let spec = LayerSpec {
        name: "changed".into(),
        entries: vec![Entry::new(
            "/changed",
            Source::Bytes(format!("{nanos}").into_bytes()),
            0o644,
        )],
    };
    let tmp = blobs.root.join("changed.partial");
    let fs = image_core::fs::HostFs::new("/");
    let (info, mut file) = write_layer(
        &fs,
        &spec,
        support::CREATED,
        6,
        std::fs::File::create(&tmp).unwrap(),
        &mut |_| true,
    )
    .unwrap();
    file.flush().unwrap();
    std::fs::rename(&tmp, blobs.path(&info.digest)).unwrap();
    image.layers.push(info);
    let second = Arc::new(Built::single(
        image,
        blobs,
        vec![Reference::parse(&reference).unwrap()],
    ));
    let whole = image_core::archive::write_archive(
        &second.image,
        &[],
        &second.blobs,
        Vec::new(),
        &mut |_| {},
    )
    .unwrap()
    .len() as u64;

    let counting = CountingEngine {
        inner: real,
        loads: Default::default(),
    };
    let (progress, seen) = recording_progress();
    let result = sink::engine(&counting, second.clone(), progress).await;
    let _ = counting.untag(&repo, tag).await;
    let loaded = result.unwrap();
    assert_eq!(loaded.id, image_id(&second.image));
    assert_eq!(
        counting.loads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the engine took the archive without the held layers at the first try"
    );
    let sent = seen.lock().unwrap().last().copied().unwrap_or(0);
    let held: u64 = first.image.layers.iter().map(|l| l.size).sum();
    assert!(
        sent + held <= whole,
        "sent {sent} bytes; the whole archive is {whole}, the held layers {held}"
    );
}
