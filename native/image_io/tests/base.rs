//! `--base IMAGE` against the real engine and a real `docker-registry`, with base images made
//! locally (nothing can be pulled here) by `test/support/make-builder-image.sh`:
//!
//! - `docker-release-test/minbase:bookworm` (Debian 12 minbase: no libssl3) → refused, naming
//!   `libcrypto.so.3` and the package;
//! - `docker-release-test/minbase-ssl:bookworm` (with libssl3) → accepted: the image is built,
//!   archived, `docker load`ed and run (`IO.puts(:ok)`, `:crypto`);
//! - `docker-release-test/minbase:bullseye` (glibc 2.31) → refused for its glibc;
//! - the ssl base pushed to a local registry with skopeo (plain HTTP, and TLS with basic auth),
//!   then loaded from there, by tag, by digest and through an index.
//!
//! The release is `examples/hello` (built with `MIX_ENV=prod mix release` when absent). Tests
//! skip with a message when the engine, `mix` or the image script cannot run.

mod registry_support;

use flate2::read::GzDecoder;
use image_core::archive::write_archive;
use image_core::build::build;
use image_core::fs::HostFs;
use image_core::glibc::Problem;
use image_core::plan::{release_platform, BasePlanError, Settings};
use image_core::reference::Reference;
use image_io::base::{load_base, BaseError, LoadedBase, BASE_LAYER_NAME};
use image_io::engine::{resolve_endpoint, DockerEngine, Endpoint};
use image_io::registry::credentials::{Credential, CredentialStore};
use image_io::registry::RegistryOptions;
use registry_support::{blob_dir, need, run, Registry, TlsRegistry};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

const MINBASE: &str = "docker-release-test/minbase:bookworm";
const SSL_BASE: &str = "docker-release-test/minbase-ssl:bookworm";
const BULLSEYE: &str = "docker-release-test/minbase:bullseye";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Image making and the release build happen once, whichever test asks first.
static SETUP: Mutex<()> = Mutex::new(());

/// Make `tag` with the repository's script unless it exists.
fn ensure_image(tag: &str, suite: &str, include: &str) -> bool {
    let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let inspect = Command::new("docker")
        .args(["image", "inspect", tag])
        .output();
    if inspect.is_ok_and(|o| o.status.success()) {
        return true;
    }
    let out = Command::new(repo_root().join("test/support/make-builder-image.sh"))
        .args([suite, tag])
        .env("BUILDER_INCLUDE", include)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            registry_support::prereq::missing(format!(
                "cannot make {tag}: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            false
        }
        Err(e) => {
            registry_support::prereq::missing(format!("cannot run make-builder-image.sh: {e}"));
            false
        }
    }
}

/// `examples/hello`'s prod release, built when absent.
fn hello_release() -> Option<PathBuf> {
    let _guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("examples/hello");
    let rel = dir.join("_build/prod/rel/hello");
    if rel.join("releases/start_erl.data").is_file() {
        return Some(rel.canonicalize().unwrap());
    }
    let out = Command::new("mix")
        .args(["release", "--overwrite"])
        .env("MIX_ENV", "prod")
        .current_dir(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(rel.canonicalize().unwrap()),
        Ok(o) => {
            registry_support::prereq::missing(format!(
                "mix release of examples/hello failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            None
        }
        Err(e) => {
            registry_support::prereq::missing(format!("cannot run mix: {e}"));
            None
        }
    }
}

async fn engine() -> Option<DockerEngine> {
    match resolve_endpoint(&|k| std::env::var(k).ok()) {
        Ok(Endpoint::Missing(p)) => {
            registry_support::prereq::missing(format!("no engine socket at {}", p.display()));
            None
        }
        Ok(ep) => match DockerEngine::connect(&ep).await {
            Ok(e) => Some(e),
            Err(e) => {
                registry_support::prereq::missing(format!("engine: {e}"));
                None
            }
        },
        Err(e) => {
            registry_support::prereq::missing(format!("engine: {e}"));
            None
        }
    }
}

fn settings(rel: &Path) -> Settings {
    let otp_apps = std::fs::read_dir(rel.join("lib"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let name = n.split('-').next().unwrap().to_string();
            (name != "hello").then_some(name)
        })
        .collect();
    Settings {
        release_dir: rel.to_path_buf(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        otp_apps,
        uid: 65532,
        gid: 65532,
        labels: [("org.opencontainers.image.title".into(), "hello".into())].into(),
        ..Settings::default()
    }
}

async fn load(
    reference: &str,
    engine: Option<&DockerEngine>,
    opts: &RegistryOptions,
    dir: &Path,
) -> Result<LoadedBase, BaseError> {
    let t = Instant::now();
    let platform = release_platform(&HostFs::new("/"), &settings(&hello_release().unwrap())).ok();
    let r = load_base(
        reference,
        engine,
        opts,
        &blob_dir(dir),
        platform.as_ref(),
        1,
    )
    .await;
    println!("load_base({reference}): {:.2?}", t.elapsed());
    r
}

fn incompatible(base: &LoadedBase, rel: &Path) -> image_core::glibc::Incompatible {
    match base.plan(&HostFs::new("/"), &settings(rel)) {
        Err(BasePlanError::Incompatible(i)) => i,
        Err(BasePlanError::Plan(e)) => panic!("plan error, expected an incompatible base: {e}"),
        Ok(_) => panic!("{} was accepted", base.reference),
    }
}

/// What every loaded base must satisfy: blobs whose digest is their name and whose gunzipped
/// bytes are their diff_id, the config's diff_ids, a history entry per layer, an unpacked tree.
fn check_loaded(base: &LoadedBase, dir: &Path) {
    assert!(!base.layers.is_empty());
    assert_eq!(
        base.diff_ids,
        base.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    );
    for l in &base.layers {
        assert_eq!(l.name, BASE_LAYER_NAME);
        let bytes = std::fs::read(blob_dir(dir).path(&l.digest)).unwrap();
        assert_eq!(bytes.len() as u64, l.size);
        assert_eq!(registry_support::sha256(&bytes), l.digest.to_string());
        let mut tar = Vec::new();
        GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(registry_support::sha256(&tar), l.diff_id.to_string());
        assert!(l.entries > 1000, "{} entries", l.entries);
    }
    let non_empty = base
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .count();
    assert_eq!(non_empty, base.layers.len());
    assert!(base.rootfs().join("bin/sh").exists());
    assert!(base.rootfs().join("etc/os-release").exists());
    assert_eq!(base.platform.to_string(), "linux/amd64");
    // The make script sets these.
    assert!(
        base.config.env.iter().any(|e| e == "LANG=C.UTF-8"),
        "{:?}",
        base.config.env
    );
}

/// What the engine tests start from: the engine, the release, and the base `tag` (made from
/// Debian `suite` with the packages `include` when absent) loaded from the engine into `tmp`
/// and checked ([`check_loaded`]). `None` when a prerequisite is missing (said by
/// `prereq::missing`).
struct EngineBase {
    base: LoadedBase,
    rel: PathBuf,
    tmp: tempfile::TempDir,
}

async fn engine_base(tag: &str, suite: &str, include: &str) -> Option<EngineBase> {
    let engine = engine().await?;
    let (Some(rel), true) = (hello_release(), ensure_image(tag, suite, include)) else {
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = load(tag, Some(&engine), &RegistryOptions::default(), tmp.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        base.source.starts_with("the Docker engine at "),
        "{}",
        base.source
    );
    check_loaded(&base, tmp.path());
    Some(EngineBase { base, rel, tmp })
}

/// `PUT /v2/<repo>/manifests/<tag>` over plain HTTP (what no CLI here does).
fn put_manifest(host: &str, repo: &str, tag: &str, media_type: &str, body: &[u8]) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn minbase_without_libssl_is_refused_naming_the_library_and_package() {
    let Some(EngineBase {
        base,
        rel,
        tmp: _tmp,
    }) = engine_base(MINBASE, "bookworm", "base-files").await
    else {
        return;
    };
    let t = Instant::now();
    let err = incompatible(&base, &rel);
    println!("check: {:.2?}\n{err}", t.elapsed());
    assert_eq!(
        err.to_string(),
        format!("the base image {MINBASE} has no libcrypto.so.3, needed by lib/crypto-5.1.2/priv/lib/crypto.so and 1 other file: install it in the base (Debian: libssl3) or use no base")
    );
    assert_eq!(BaseError::from(err).reason(), "base_incompatible");
    let rootfs = base.rootfs().to_path_buf();
    drop(base);
    assert!(!rootfs.exists(), "the unpacked tree goes with the value");
}

#[tokio::test(flavor = "multi_thread")]
async fn bullseye_is_refused_for_its_old_glibc() {
    let Some(EngineBase {
        base,
        rel,
        tmp: _tmp,
    }) = engine_base(BULLSEYE, "bullseye", "base-files").await
    else {
        return;
    };
    let err = incompatible(&base, &rel);
    println!("{err}");
    assert!(
        matches!(&err.problems[0], Problem::OldGlibc { needed, provided, .. }
            if needed == "GLIBC_2.34" && provided.as_deref() == Some("GLIBC_2.31")),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("the release needs GLIBC_2.34 (erts-13.1.5/bin/beam.smp and "),
        "{text}"
    );
    assert!(
        text.contains(&format!("but the glibc of the base image {BULLSEYE} provides up to GLIBC_2.31 (glibc 2.31, Debian GNU/Linux 11 (bullseye)): use a base at least as new as the system that built the release, or no base")),
        "{text}"
    );
    // Debian 11 has no libssl3 either: said after the glibc.
    assert!(text.contains("; also, the base image"), "{text}");
    assert!(text.contains("has no libcrypto.so.3"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssl_base_is_accepted_and_the_image_runs() {
    let Some(EngineBase { tmp, rel, base }) =
        engine_base(SSL_BASE, "bookworm", "libssl3,ca-certificates").await
    else {
        return;
    };
    let host = HostFs::new("/");
    let t = Instant::now();
    let plan = base
        .plan(&host, &settings(&rel))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("check + plan: {:.2?}", t.elapsed());
    let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["dirs", "erts", "app"]);
    assert!(plan.run_config.env.contains(&"LANG=C.UTF-8".to_string()));
    assert!(plan.run_config.env.contains(&"HOME=/tmp".to_string()));

    let t = Instant::now();
    let image = build(
        &host,
        &plan,
        1_700_000_000,
        1,
        &blob_dir(tmp.path()),
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let image = base.apply(image);
    println!("build: {:.2?}", t.elapsed());
    assert_eq!(image.layers.len(), base.layers.len() + 3);
    assert_eq!(image.layers[0], base.layers[0]);

    // The config: base diff_ids first, the base's history first, one entry per layer.
    let config: Value = serde_json::from_slice(&image.config_json()).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids[0], base.diff_ids[0].to_string());
    let history = config["history"].as_array().unwrap();
    let non_empty = history
        .iter()
        .filter(|h| h.get("empty_layer") != Some(&Value::Bool(true)))
        .count();
    assert_eq!(non_empty, diff_ids.len());
    assert_eq!(
        history.last().unwrap()["created_by"],
        "docker_release: app layer"
    );
    assert_eq!(config["config"]["User"], "65532:65532");

    // Archive → docker load → run.
    let tag = "docker-release-test/hello-on-base:ssl";
    let path = tmp.path().join("image.tar");
    let file = std::fs::File::create(&path).unwrap();
    let t = Instant::now();
    write_archive(
        &image,
        &[Reference::parse(tag).unwrap()],
        &blob_dir(tmp.path()),
        std::io::BufWriter::new(file),
        &mut |_| {},
    )
    .unwrap();
    // An independent reader: skopeo reads it as an OCI archive.
    let raw = run(Command::new(need("skopeo", "skopeo")).args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}", path.display()),
    ]));
    assert_eq!(
        registry_support::sha256(&raw),
        image.manifest_digest().to_string()
    );
    run(Command::new("docker").args(["load", "-i"]).arg(&path));
    println!("archive + docker load: {:.2?}", t.elapsed());
    let inspect = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", tag]));
    assert_eq!(
        String::from_utf8_lossy(&inspect).trim(),
        image.id().to_string()
    );
    let t = Instant::now();
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        tag,
        "eval",
        r#"IO.puts(:ok); IO.puts(Base.encode16(:crypto.hash(:sha256, "abc"))); IO.puts(System.get_env("HOME")); IO.puts(:file.native_name_encoding())"#,
    ]));
    println!("docker run: {:.2?}", t.elapsed());
    let out = String::from_utf8_lossy(&out);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "ok",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "/tmp",
            "utf8"
        ],
        "{out}"
    );
    // The distribution's files are the base's: our numeric user has no passwd entry.
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        tag,
        "-c",
        "id -u; grep -c 65532 /etc/passwd || true; ls -ld /app/tmp /run/release | awk '{print $1, $3}'",
    ]));
    let out = String::from_utf8_lossy(&out);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["65532", "0", "drwxr-xr-x 65532", "drwx------ 65532"],
        "{out}"
    );
    let _ = Command::new("docker").args(["rmi", tag]).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_in_a_registry_is_pulled_by_tag_digest_and_index() {
    let Some(bin) = registry_support::registry_binary() else {
        return;
    };
    let Some(engine) = engine().await else { return };
    let (Some(rel), true) = (
        hello_release(),
        ensure_image(SSL_BASE, "bookworm", "libssl3,ca-certificates"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&bin, tmp.path(), "");
    let t = Instant::now();
    run(Command::new(need("skopeo", "skopeo")).args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("docker-daemon:{SSL_BASE}"),
        &format!("docker://{}/base:1", reg.host),
    ]));
    println!("skopeo copy: {:.2?}", t.elapsed());
    let opts = RegistryOptions {
        credentials: Some(CredentialStore::default()),
        ..RegistryOptions::default()
    };

    // By tag (the reference names a registry host: the engine is not asked).
    let by_tag = tmp.path().join("by-tag");
    let reference = format!("{}/base:1", reg.host);
    let base = load(&reference, Some(&engine), &opts, &by_tag)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(base.source, format!("registry {}", reg.host));
    check_loaded(&base, &by_tag);
    base.plan(&HostFs::new("/"), &settings(&rel))
        .unwrap_or_else(|e| panic!("{e}"));
    // The same filesystem as the engine's copy.
    let from_engine = load(SSL_BASE, Some(&engine), &opts, &tmp.path().join("engine"))
        .await
        .unwrap();
    assert_eq!(base.diff_ids, from_engine.diff_ids);
    assert_eq!(base.config.env, from_engine.config.env);

    // By digest, and through an index listing another platform first.
    let raw = run(Command::new(need("skopeo", "skopeo")).args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let digest = registry_support::sha256(&raw);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    let by_digest = load(
        &format!("{}/base@{digest}", reg.host),
        None,
        &opts,
        &tmp.path().join("by-digest"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(by_digest.diff_ids, base.diff_ids);

    // Another manifest (the same blobs, annotated) stands for the arm64 image.
    let mut other = manifest.clone();
    other["annotations"] = serde_json::json!({"test": "arm64 stand-in"});
    let other = serde_json::to_vec(&other).unwrap();
    let media_type = manifest["mediaType"].as_str().unwrap();
    put_manifest(&reg.host, "base", "arm", media_type, &other);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": media_type, "digest": registry_support::sha256(&other), "size": other.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": manifest["mediaType"], "digest": digest, "size": raw.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    put_manifest(
        &reg.host,
        "base",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    );
    let multi = load(
        &format!("{}/base:multi", reg.host),
        None,
        &opts,
        &tmp.path().join("multi"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(multi.diff_ids, base.diff_ids);
    let s390 = image_core::elf::Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let err = load_base(
        &format!("{}/base:multi", reg.host),
        None,
        &opts,
        &blob_dir(&tmp.path().join("s390")),
        Some(&s390),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "base_incompatible", "{err}");
    assert!(
        err.to_string()
            .contains("has no image for linux/s390x (it has: linux/arm64/v8, linux/amd64)"),
        "{err}"
    );

    // A tag the registry lacks.
    let err = load(
        &format!("{}/base:nope", reg.host),
        Some(&engine),
        &opts,
        &tmp.path().join("nope"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "base_not_found", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("not in the registry {}", reg.host)),
        "{err}"
    );
    // A local name the engine lacks: then Docker Hub, unreachable here.
    let err = load(
        "docker-release-test/no-such-base:1",
        Some(&engine),
        &opts,
        &tmp.path().join("hub"),
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert_eq!(err.reason(), "base_not_found", "{err}");
    assert!(
        err.to_string().contains("not in the Docker engine at"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_behind_tls_and_basic_auth_is_pulled_with_credentials() {
    let Some(bin) = registry_support::registry_binary() else {
        return;
    };
    if engine().await.is_none() || !ensure_image(SSL_BASE, "bookworm", "libssl3,ca-certificates") {
        return;
    }
    let TlsRegistry { dir, reg } = registry_support::tls_registry(&bin);
    let d = dir.path();
    run(Command::new(need("skopeo", "skopeo")).args([
        "copy",
        "--quiet",
        "--dest-creds=user:pass",
        "--dest-tls-verify=false",
        &format!("docker-daemon:{SSL_BASE}"),
        &format!("docker://{}/private/base:1", reg.host),
    ]));
    let reference = format!("{}/private/base:1", reg.host);
    let anonymous = RegistryOptions {
        ca_file: Some(d.join("ca.crt")),
        credentials: Some(CredentialStore::default()),
        ..RegistryOptions::default()
    };
    let err = load_base(
        &reference,
        None,
        &anonymous,
        &blob_dir(&d.join("a")),
        None,
        1,
    )
    .await
    .unwrap_err();
    println!("{err}");
    assert_eq!(err.reason(), "base_error");
    assert!(err.to_string().contains("none are configured"), "{err}");
    let with_creds = RegistryOptions {
        credentials: Some(CredentialStore {
            fixed: Some(Credential {
                username: "user".into(),
                password: "pass".into(),
            }),
            ..CredentialStore::default()
        }),
        ..anonymous
    };
    let base = load_base(
        &reference,
        None,
        &with_creds,
        &blob_dir(&d.join("b")),
        None,
        1,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    check_loaded(&base, &d.join("b"));
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "musl's x86-64 loader: an x86-64 host"
)]
async fn a_musl_base_is_refused_for_its_c_library() {
    let musl = Path::new("/lib/ld-musl-x86_64.so.1");
    let busybox = Path::new("/bin/busybox");
    if !musl.exists() || !busybox.exists() {
        registry_support::prereq::missing(format!(
            "{} (apt-get install musl) and {} (apt-get install busybox-static)",
            musl.display(),
            busybox.display()
        ));
        return;
    }
    let Some(engine) = engine().await else { return };
    let Some(rel) = hello_release() else { return };
    // An Alpine-like image: musl's loader, a static busybox as the shell and its tools.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["lib", "bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(musl, root.join("lib/ld-musl-x86_64.so.1")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink(
        "ld-musl-x86_64.so.1",
        root.join("lib/libc.musl-x86_64.so.1"),
    )
    .unwrap();
    for tool in [
        "sh", "awk", "cat", "dd", "od", "sed", "grep", "cut", "date", "mkdir", "readlink",
        "dirname", "basename",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.join("etc/os-release"), "PRETTY_NAME=\"Tiny musl\"\n").unwrap();
    let tag = "docker-release-test/musl-tiny:test";
    let tar = tmp.path().join("root.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("docker").args(["import"]).arg(&tar).arg(tag));
    let base = load(tag, Some(&engine), &RegistryOptions::default(), tmp.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = Command::new("docker").args(["rmi", tag]).output();
    let err = incompatible(&base, &rel);
    println!("{err}");
    assert!(
        matches!(
            &err.problems[0],
            Problem::MissingInterpreter {
                base_is_musl: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!("the base image {tag} has no /lib64/ld-linux-x86-64.so.2, the program interpreter erts-13.1.5/bin/beam.smp needs: the base uses musl (Alpine?) and the release was built against glibc; use a glibc-based base (Debian, Ubuntu) or no base")),
        "{err}"
    );
}
