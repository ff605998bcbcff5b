//! Registry push against a real `docker-registry` (CNCF distribution 2.8) on 127.0.0.1 — plain
//! HTTP, TLS with basic auth, token auth with our own token service — and against fake servers
//! for the failure cases. Every service is started and stopped by its test, on its own port.

mod registry_support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use image_core::archive::BlobDir;
use image_core::image::Image;
use image_core::reference::Reference;
use image_io::registry::credentials::{Credential, CredentialError, CredentialStore};
use image_io::registry::{
    push, push_undoable, PushOutcome, PushedTags, RegistryError, RegistryOptions,
};
use image_io::sink::{Built, Progress};
use registry_support as rs;
use registry_support::{count, FakeServer, Registry, Reply};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn built(image: Image, blobs: &BlobDir, tags: &[String]) -> Arc<Built> {
    Arc::new(Built::single(
        image,
        blobs.clone(),
        tags.iter().map(|t| Reference::parse(t).unwrap()).collect(),
    ))
}

/// Options that never read this machine's credentials.
fn no_credentials() -> RegistryOptions {
    RegistryOptions {
        credentials: Some(CredentialStore::default()),
        ..RegistryOptions::default()
    }
}

fn recording() -> (Progress, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |n| s.lock().unwrap().push(n)), seen)
}

fn quiet() -> Progress {
    Arc::new(|_| {})
}

async fn push_ok(b: &Arc<Built>, opts: &RegistryOptions) -> PushOutcome {
    match push(b.clone(), opts, quiet()).await {
        Ok(o) => o,
        Err(e) => panic!("push failed ({}): {e}", e.reason()),
    }
}

async fn push_err(b: &Arc<Built>, opts: &RegistryOptions) -> RegistryError {
    match push(b.clone(), opts, quiet()).await {
        Ok(o) => panic!("push succeeded, expected an error: {o:?}"),
        Err(e) => e,
    }
}

fn skopeo_raw_digest(reference: &str) -> String {
    let raw = rs::run(Command::new(rs::need("skopeo", "skopeo")).args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    rs::sha256(&raw)
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP.

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_push_keeps_digests_uploads_once_and_skips_known_blobs() {
    let Some((tmp, reg, blobs)) = rs::plain_registry() else {
        return;
    };
    let image = rs::three_layer_image(&blobs, 1);
    let want = image.manifest_digest();
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    let config_len = image.config_json().len() as u64;
    let tags = [
        format!("{}/team/app:t1", reg.host),
        format!("{}/team/app:t2", reg.host),
    ];
    let b = built(image, &blobs, &tags);

    // First push: every blob uploaded once for two tags.
    let (progress, seen) = recording();
    let first = push(b.clone(), &no_credentials(), progress).await.unwrap();
    assert_eq!(first.manifest_digest, want);
    assert_eq!(first.uploaded_blobs, 4, "3 layers + config");
    assert_eq!(first.skipped_blobs, 0);
    assert_eq!(first.uploaded_bytes, layer_bytes + config_len);
    assert_eq!(first.tags, tags.to_vec());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress is cumulative"
    );
    assert_eq!(seen.last().copied(), Some(first.uploaded_bytes));
    let reqs = reg.our_requests(2);
    assert_eq!(count(&reqs, "HEAD", "/blobs/sha256:"), 4, "{reqs:#?}");
    assert_eq!(count(&reqs, "POST", "/blobs/uploads/"), 4, "{reqs:#?}");
    assert_eq!(count(&reqs, "PUT", "/blobs/uploads/"), 4, "{reqs:#?}");
    assert_eq!(count(&reqs, "PUT", "/manifests/"), 2, "{reqs:#?}");
    println!(
        "full push: {} bytes in {} blobs ({} layer bytes, {} config bytes)",
        first.uploaded_bytes, first.uploaded_blobs, layer_bytes, config_len
    );

    // An independent client sees our exact manifest under both tags, and can pull it.
    for t in &tags {
        assert_eq!(skopeo_raw_digest(t), want.to_string(), "{t}");
    }
    let oci = tmp.path().join("oci");
    rs::run(Command::new(rs::need("skopeo", "skopeo")).args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", tags[0]),
        &format!("oci:{}:t1", oci.display()),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], want.to_string());

    // Second push of the same image: one HEAD per blob, no upload; each tag is read and,
    // already naming this manifest, not written again.
    reg.clear_log();
    let second = push_ok(&b, &no_credentials()).await;
    assert_eq!(second.manifest_digest, want);
    assert_eq!((second.uploaded_blobs, second.skipped_blobs), (0, 4));
    assert_eq!(second.uploaded_bytes, 0);
    assert_eq!(second.tags, tags.to_vec());
    let reqs = reg.our_requests(0);
    let heads: Vec<&String> = reqs.iter().filter(|r| r.starts_with("HEAD ")).collect();
    assert_eq!(heads.len(), 4, "{reqs:#?}");
    let distinct: std::collections::BTreeSet<&&String> = heads.iter().collect();
    assert_eq!(distinct.len(), 4, "exactly one HEAD per blob: {reqs:#?}");
    assert_eq!(count(&reqs, "POST", "/blobs/"), 0, "{reqs:#?}");
    assert_eq!(count(&reqs, "PUT", "/blobs/"), 0, "{reqs:#?}");
    assert_eq!(count(&reqs, "GET", "/manifests/"), 2, "{reqs:#?}");
    assert_eq!(count(&reqs, "PUT", "/manifests/"), 0, "{reqs:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn incremental_push_uploads_only_the_changed_layer_and_config() {
    let Some((_tmp, reg, blobs)) = rs::plain_registry() else {
        return;
    };
    let tag = [format!("{}/team/app:1", reg.host)];
    let v1 = rs::three_layer_image(&blobs, 1);
    let full = push_ok(&built(v1.clone(), &blobs, &tag), &no_credentials()).await;

    let v2 = rs::three_layer_image(&blobs, 2);
    assert_eq!(v1.layers[..2], v2.layers[..2]);
    assert_ne!(v1.layers[2].digest, v2.layers[2].digest);
    reg.clear_log();
    let tag2 = [format!("{}/team/app:2", reg.host)];
    let (progress, seen) = recording();
    let inc = push(
        built(v2.clone(), &blobs, &tag2),
        &no_credentials(),
        progress,
    )
    .await
    .unwrap();
    let expected = v2.layers[2].size + v2.config_json().len() as u64;
    assert_eq!((inc.uploaded_blobs, inc.skipped_blobs), (2, 2));
    assert_eq!(inc.uploaded_bytes, expected);
    assert_eq!(seen.lock().unwrap().last().copied(), Some(expected));
    let reqs = reg.our_requests(1);
    assert_eq!(count(&reqs, "POST", "/blobs/uploads/"), 2, "{reqs:#?}");
    assert_eq!(
        count(
            &reqs,
            "PUT",
            &format!("digest={}", v2.layers[2].digest).replace(':', "%3A")
        ),
        1,
        "{reqs:#?}"
    );
    assert_eq!(
        skopeo_raw_digest(&tag2[0]),
        v2.manifest_digest().to_string()
    );
    println!(
        "incremental push: {} bytes in {} blobs, full push: {} bytes in {} blobs",
        inc.uploaded_bytes, inc.uploaded_blobs, full.uploaded_bytes, full.uploaded_blobs
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_in_several_repositories_upload_blobs_per_repository() {
    let Some((_tmp, reg, blobs)) = rs::plain_registry() else {
        return;
    };
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app", b"x".to_vec())]);
    let tags = [
        format!("{}/one/app:a", reg.host),
        format!("{}/two/app:b", reg.host),
        format!("{}/one/app:c", reg.host),
    ];
    let out = push_ok(&built(image.clone(), &blobs, &tags), &no_credentials()).await;
    // Each repository checks (and here uploads) every blob itself: the registry may keep
    // repositories apart.
    assert_eq!(out.uploaded_blobs, 4);
    let reqs = reg.our_requests(3);
    assert_eq!(count(&reqs, "POST", "/v2/one/app/blobs/uploads/"), 2);
    assert_eq!(count(&reqs, "POST", "/v2/two/app/blobs/uploads/"), 2);
    for t in &tags {
        assert_eq!(skopeo_raw_digest(t), image.manifest_digest().to_string());
    }
}

#[tokio::test]
async fn a_tag_without_a_registry_host_is_refused_before_any_request() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = rs::blob_dir(tmp.path());
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app", b"x".to_vec())]);
    let tags = ["localhost:1/ok:1".to_string(), "team/app:1".to_string()];
    let err = push_err(&built(image, &blobs, &tags), &no_credentials()).await;
    assert!(matches!(err, RegistryError::NoRegistry { .. }), "{err:?}");
    assert_eq!(err.reason(), "registry_no_host");
    let msg = err.to_string();
    assert!(
        msg.contains("team/app:1") && msg.contains("--tag registry.example.com/"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS and basic auth; credential helpers.

fn docker_config(dir: &Path, json: serde_json::Value) -> std::path::PathBuf {
    let cfg = dir.join("docker-config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("config.json"), json.to_string()).unwrap();
    cfg
}

fn store_for(config_dir: &Path, path: Option<&Path>) -> CredentialStore {
    let (config_dir, path) = (
        config_dir.display().to_string(),
        path.map(|p| p.display().to_string()),
    );
    CredentialStore::from_env(&move |k| match k {
        "DOCKER_CONFIG" => Some(config_dir.clone()),
        "PATH" => path.clone(),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_with_basic_auth() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    let t = rs::tls_registry(&bin);
    let host = t.reg.host.clone();
    let blobs = rs::blob_dir(t.dir.path());
    let image = rs::image(vec![
        rs::layer(&blobs, "runtime", "/lib/x", rs::noise(7, 300_000)),
        rs::layer(&blobs, "app", "/app/y", b"app".to_vec()),
    ]);
    let b = built(image.clone(), &blobs, &[format!("{host}/team/app:tls")]);
    let ca = Some(t.dir.path().join("ca.crt"));
    let auth = |user: &str, pass: &str| {
        let key = format!("https://{host}");
        let cfg = docker_config(
            &t.dir.path().join(user).join(pass),
            serde_json::json!({"auths": {key: {"auth": STANDARD.encode(format!("{user}:{pass}"))}}}),
        );
        store_for(&cfg, None)
    };

    // Right credentials (from an `auths` entry keyed `https://host`) and the CA: pushed.
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        credentials: Some(auth("user", "pass")),
        ..RegistryOptions::default()
    };
    let out = push_ok(&b, &opts).await;
    assert_eq!(out.manifest_digest, image.manifest_digest());
    assert_eq!(out.uploaded_blobs, 3);

    // Wrong password: Unauthorized, naming the host and what to do.
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        credentials: Some(auth("user", "wrong")),
        ..RegistryOptions::default()
    };
    let err = push_err(&b, &opts).await;
    println!("wrong password: {err}");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.reason(), "registry_unauthorized");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "the registry at {host} refused the credentials for team/app"
        )) && msg.contains(&format!("docker login {host}"))
            && msg.contains("DOCKER_RELEASE_REGISTRY_USERNAME"),
        "{msg}"
    );

    // No credentials at all.
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        ..no_credentials()
    };
    let err = push_err(&b, &opts).await;
    println!("no credentials: {err}");
    assert!(err.to_string().contains("none are configured"), "{err}");

    // Without the CA: a connection error about the certificate.
    let opts = RegistryOptions {
        credentials: Some(auth("user", "pass")),
        ..RegistryOptions::default()
    };
    let err = push_err(&b, &opts).await;
    assert!(matches!(err, RegistryError::Connection { .. }), "{err:?}");
    assert_eq!(err.reason(), "registry_unreachable");
    let msg = err.to_string();
    assert!(msg.contains(&host) && msg.contains("certificate"), "{msg}");
    println!("without the CA: {msg}");

    // A CA file that is not PEM.
    std::fs::write(t.dir.path().join("bad.pem"), "not a certificate").unwrap();
    let opts = RegistryOptions {
        ca_file: Some(t.dir.path().join("bad.pem")),
        ..no_credentials()
    };
    let err = push_err(&b, &opts).await;
    assert_eq!(err.reason(), "registry_ca_file", "{err}");
}

/// A `docker-credential-fake` helper in a new directory; it logs every host it is asked about.
fn fake_helper(dir: &Path, known_host: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("docker-credential-fake");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nhost=$(cat)\necho \"$host\" >> {log}\n\
             if [ \"$host\" = \"{known_host}\" ]; then\n\
               printf '{{\"ServerURL\":\"%s\",\"Username\":\"user\",\"Secret\":\"pass\"}}' \"$host\"\n\
             else\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
            log = dir.join("helper.log").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helper_supplies_the_tls_registry_credentials() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    let t = rs::tls_registry(&bin);
    let host = t.reg.host.clone();
    let helper_bin = fake_helper(t.dir.path(), &host);
    let blobs = rs::blob_dir(t.dir.path());
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app/y", b"app".to_vec())]);
    let b = built(image.clone(), &blobs, &[format!("{host}/team/app:helper")]);
    let ca = Some(t.dir.path().join("ca.crt"));

    // credHelpers[host] (with a wrong `auths` entry that must not be used).
    let cfg = docker_config(
        &t.dir.path().join("helpers"),
        serde_json::json!({
            "credHelpers": {host.clone(): "fake"},
            "auths": {host.clone(): {"auth": STANDARD.encode("user:wrong")}},
        }),
    );
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        credentials: Some(store_for(&cfg, Some(&helper_bin))),
        ..RegistryOptions::default()
    };
    let out = push_ok(&b, &opts).await;
    assert_eq!(out.manifest_digest, image.manifest_digest());
    let log = std::fs::read_to_string(t.dir.path().join("helper.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![host.as_str()],
        "asked once"
    );

    // credsStore, the same way.
    let cfg = docker_config(
        &t.dir.path().join("store"),
        serde_json::json!({"credsStore": "fake"}),
    );
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        credentials: Some(store_for(&cfg, Some(&helper_bin))),
        ..RegistryOptions::default()
    };
    push_ok(&b, &opts).await;

    // A helper that is not installed: a credentials error naming it.
    let opts = RegistryOptions {
        ca_file: ca.clone(),
        credentials: Some(store_for(&cfg, Some(&t.dir.path().join("empty")))),
        ..RegistryOptions::default()
    };
    let err = push_err(&b, &opts).await;
    println!("missing helper: {err}");
    assert_eq!(err.reason(), "registry_credentials", "{err}");
    assert!(
        err.to_string()
            .contains("docker-credential-fake is not on PATH"),
        "{err}"
    );
}

#[test]
fn credential_lookup_order_and_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let helper_bin = fake_helper(tmp.path(), "helped.example.com");
    let cfg = docker_config(
        tmp.path(),
        serde_json::json!({
            "credHelpers": {"helped.example.com": "fake", "other.example.com": "fake"},
            "auths": {
                "http://plain.example.com:5000": {"auth": STANDARD.encode("u1:p:1")},
                "https://fields.example.com/v1/": {"username": "u2", "password": "p2"},
            },
        }),
    );
    let store = store_for(&cfg, Some(&helper_bin));
    let get = |h: &str| store.get(h).unwrap();
    let cred = |u: &str, p: &str| {
        Some(Credential {
            username: u.into(),
            password: p.into(),
        })
    };
    assert_eq!(get("helped.example.com"), cred("user", "pass"));
    assert_eq!(get("other.example.com"), None, "helper says not found");
    assert_eq!(get("plain.example.com:5000"), cred("u1", "p:1"));
    assert_eq!(get("fields.example.com"), cred("u2", "p2"));
    assert_eq!(get("unknown.example.com"), None);
    assert!(
        !format!("{:?}", get("fields.example.com")).contains("p2"),
        "Debug hides it"
    );

    // The environment variables win for every registry.
    let (c, p) = (cfg.display().to_string(), helper_bin.display().to_string());
    let env_store = CredentialStore::from_env(&move |k| match k {
        "DOCKER_RELEASE_REGISTRY_USERNAME" => Some("ci".into()),
        "DOCKER_RELEASE_REGISTRY_PASSWORD" => Some("secret".into()),
        "DOCKER_CONFIG" => Some(c.clone()),
        "PATH" => Some(p.clone()),
        _ => None,
    });
    assert_eq!(
        env_store.get("helped.example.com").unwrap(),
        cred("ci", "secret")
    );
    assert_eq!(env_store.get("anything:1").unwrap(), cred("ci", "secret"));

    // No config file: nothing, no error. A broken one: an error naming it.
    let none = store_for(&tmp.path().join("absent"), None);
    assert_eq!(none.get("x").unwrap(), None);
    std::fs::write(cfg.join("config.json"), "{not json").unwrap();
    let err = store.get("x").unwrap_err();
    assert!(matches!(err, CredentialError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens: the real registry with `auth.token`, and our own token service.

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_against_the_real_registry() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    rs::make_token_key(&d);
    let key_dir = d.clone();
    let tokens = FakeServer::start(move |req| {
        let want = format!("Basic {}", STANDARD.encode("user:pass"));
        if req.header("authorization") != Some(want.as_str()) {
            return Reply::new(401, &[], b"{\"details\":\"bad credentials\"}");
        }
        let q = rs::query(&req.target);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let scope = get("scope").unwrap_or_default();
        let token = rs::sign_token(&key_dir, "test-issuer", "test-registry", &scope);
        let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
        Reply::new(
            200,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    });
    let extra = rs::token_auth(&tokens.host(), &d);
    let reg = Registry::start(&bin, &d, &extra);
    let blobs = rs::blob_dir(&d);
    let image = rs::image(vec![
        rs::layer(&blobs, "runtime", "/lib/x", rs::noise(9, 200_000)),
        rs::layer(&blobs, "app", "/app/y", b"app".to_vec()),
    ]);
    let tags = [
        format!("{}/team/app:1", reg.host),
        format!("{}/team/app:2", reg.host),
        format!("{}/other/app:1", reg.host),
    ];
    let b = built(image.clone(), &blobs, &tags);
    let opts = RegistryOptions {
        credentials: Some(CredentialStore {
            fixed: Some(Credential {
                username: "user".into(),
                password: "pass".into(),
            }),
            ..CredentialStore::default()
        }),
        ..RegistryOptions::default()
    };
    let out = push_ok(&b, &opts).await;
    assert_eq!(out.manifest_digest, image.manifest_digest());
    assert_eq!(out.uploaded_blobs, 6);

    // One token per repository, for pull and push, with the registry's service name.
    let token_requests: Vec<Vec<(String, String)>> = tokens
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| rs::query(&r.target))
        .collect();
    let scopes: Vec<&str> = token_requests
        .iter()
        .flat_map(|q| {
            q.iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(
        scopes,
        [
            "repository:team/app:pull,push",
            "repository:other/app:pull,push"
        ]
    );
    assert!(token_requests
        .iter()
        .all(|q| q.contains(&("service".into(), "test-registry".into()))));
    // With the token up front, still exactly one HEAD per blob and repository.
    let reqs = reg.our_requests(3);
    assert_eq!(count(&reqs, "HEAD", "/blobs/"), 6, "{reqs:#?}");

    // The registry really checks: an anonymous push gets no usable token.
    let err = push_err(&b, &no_credentials()).await;
    println!("anonymous, token auth: {err}");
    assert_eq!(err.reason(), "registry_unauthorized", "{err}");
    assert!(err.to_string().contains("token service"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Failures, against fake registries.

/// A fake registry: `/v2/` answers 200, blobs are unknown, and `on` decides the rest.
fn fake_registry(on: impl Fn(&rs::Request) -> Option<Reply> + Send + Sync + 'static) -> FakeServer {
    FakeServer::start(move |req| {
        if let Some(r) = on(req) {
            return r;
        }
        match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/v2/") => Reply::new(200, &[], b"{}"),
            ("HEAD", t) if t.contains("/blobs/") => Reply::new(404, &[], b""),
            ("POST", t) if t.ends_with("/blobs/uploads/") => Reply::new(
                202,
                // Relative, with a query: the digest must be appended with `&`.
                &[("Location", "/v2/team/app/blobs/uploads/u-1?_state=abc")],
                b"",
            ),
            _ => Reply::new(400, &[], b"unexpected"),
        }
    })
}

/// An image of one layer holding `size` bytes of noise at `/app`, its blobs in `dir`, to be
/// pushed to `tags`.
fn noise_built(dir: &Path, size: usize, tags: &[String]) -> Arc<Built> {
    let blobs = rs::blob_dir(dir);
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app", rs::noise(3, size))]);
    built(image, &blobs, tags)
}

fn small_built(dir: &Path, host: &str) -> Arc<Built> {
    noise_built(dir, 8 << 20, &[format!("{host}/team/app:1")])
}

#[tokio::test]
async fn not_found_names_the_url() {
    let fake = fake_registry(|req| {
        (req.method == "POST").then(|| {
            Reply::new(
                404,
                &[("Content-Type", "application/json")],
                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            )
        })
    });
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let started = Instant::now();
    let err = push_err(&b, &no_credentials()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    println!("404: {err}");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert_eq!(err.reason(), "registry_not_found");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "http://{}/v2/team/app/blobs/uploads/",
            fake.host()
        )) && msg.contains("NAME_UNKNOWN"),
        "{msg}"
    );
}

#[tokio::test]
async fn server_error_on_blob_upload() {
    let fake = fake_registry(|req| {
        (req.method == "PUT").then(|| Reply::new(500, &[], b"storage backend exploded"))
    });
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let digest = b.image.layers[0].digest.to_string();
    let started = Instant::now();
    let err = push_err(&b, &no_credentials()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    println!("500: {err}");
    assert!(
        matches!(err, RegistryError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "registry_error");
    let msg = err.to_string();
    assert!(
        msg.contains(&fake.host()) && msg.contains("500") && msg.contains("exploded"),
        "{msg}"
    );
    // The PUT went to the Location with the digest appended to its query, with the body size.
    let put = fake.first("PUT");
    assert_eq!(
        put.target,
        format!(
            "/v2/team/app/blobs/uploads/u-1?_state=abc&digest={}",
            digest.replace(':', "%3A")
        )
    );
    assert_eq!(put.content_length as u64, b.image.layers[0].size);
    assert_eq!(put.header("content-type"), Some("application/octet-stream"));
}

#[tokio::test]
async fn connection_reset_during_a_blob_upload_fails_fast() {
    let fake = fake_registry(|req| (req.method == "PUT").then_some(Reply::ReadThenClose(64 << 10)));
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let started = Instant::now();
    let err = push_err(&b, &no_credentials()).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(matches!(err, RegistryError::Connection { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&fake.host()), "{msg}");
    println!("reset after {took:?}: {msg}");
}

/// `opts` with a stall timeout of one second.
fn impatient(opts: RegistryOptions) -> RegistryOptions {
    RegistryOptions {
        stall_timeout: Some(Duration::from_secs(1)),
        ..opts
    }
}

#[tokio::test]
async fn a_registry_that_stops_reading_an_upload_fails_after_the_stall_timeout() {
    let fake = fake_registry(|req| {
        (req.method == "PUT").then_some(Reply::ReadThenHang(64 << 10, Duration::from_secs(30)))
    });
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let started = Instant::now();
    let err = push_err(&b, &impatient(no_credentials())).await;
    let took = started.elapsed();
    // One second without progress, checked every 100 ms; far from the 30 s hang.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(err.reason(), "registry_stalled", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("neither took nor sent a byte for 1 s"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("the registry at {}", fake.host())),
        "{msg}"
    );
    assert!(msg.contains("during PUT http://"), "{msg}");
    assert!(msg.contains("--stall-timeout"), "{msg}");
    println!("stalled upload after {took:?}: {msg}");
}

#[tokio::test]
async fn a_registry_that_never_answers_fails_after_the_stall_timeout() {
    let fake = fake_registry(|req| {
        (req.target == "/v2/").then_some(Reply::ReadThenHang(0, Duration::from_secs(30)))
    });
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let started = Instant::now();
    let err = push_err(&b, &impatient(no_credentials())).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(err.reason(), "registry_stalled", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("for 1 s during GET http://{}/v2/", fake.host())),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_answer_that_stops_half_way_fails_after_the_stall_timeout() {
    let tokens = FakeServer::start(|_| Reply::Partial {
        status: 200,
        declared: 4096,
        sent: br#"{"token":"ab"#.to_vec(),
        hold: Duration::from_secs(30),
    });
    let realm = format!("http://{}/token", tokens.host());
    let fake = fake_registry(move |req| {
        (req.target == "/v2/").then(|| {
            Reply::new(
                401,
                &[(
                    "WWW-Authenticate",
                    &format!(r#"Bearer realm="{realm}",service="fake""#),
                )],
                b"",
            )
        })
    });
    let tmp = tempfile::tempdir().unwrap();
    let b = small_built(tmp.path(), &fake.host());
    let started = Instant::now();
    let err = push_err(&b, &impatient(no_credentials())).await;
    println!("stalled token answer: {err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(err.reason(), "registry_stalled", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("the registry at {}", tokens.host())),
        "{msg}"
    );
    assert!(msg.contains("for 1 s during GET http://"), "{msg}");
    assert!(msg.contains("/token?"), "{msg}");
}

#[tokio::test]
async fn unreachable_registry() {
    let port = rs::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let err = push_err(
        &small_built(tmp.path(), &format!("127.0.0.1:{port}")),
        &no_credentials(),
    )
    .await;
    println!("unreachable: {err}");
    assert_eq!(err.reason(), "registry_unreachable", "{err}");
    assert!(err.to_string().contains("is the registry running"), "{err}");
}

#[tokio::test]
async fn a_manifest_digest_the_registry_disagrees_with_is_an_error() {
    let fake = fake_registry(|req| match req.method.as_str() {
        "HEAD" => Some(Reply::new(200, &[], b"")),
        "PUT" => Some(Reply::new(
            201,
            &[("Docker-Content-Digest", "sha256:0000")],
            b"",
        )),
        _ => None,
    });
    let tmp = tempfile::tempdir().unwrap();
    let err = push_err(&small_built(tmp.path(), &fake.host()), &no_credentials()).await;
    assert_eq!(err.reason(), "registry_protocol", "{err}");
    assert!(err.to_string().contains("sha256:0000"), "{err}");
    let put = fake.first("PUT");
    assert_eq!(
        put.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
}

// ---------------------------------------------------------------------------------------------
// Docker Hub's credential keys and identity tokens.

#[test]
fn docker_hub_credentials_are_found_under_the_key_docker_login_writes() {
    use image_io::registry::credentials::HUB_KEY;
    let tmp = tempfile::tempdir().unwrap();
    // `docker login` (no helper) writes auths["https://index.docker.io/v1/"].
    let cfg = docker_config(
        &tmp.path().join("auths"),
        serde_json::json!({"auths": {HUB_KEY: {"auth": STANDARD.encode("hubuser:hubpass")}}}),
    );
    let store = store_for(&cfg, None);
    let hub = Some(Credential {
        username: "hubuser".into(),
        password: "hubpass".into(),
    });
    for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        assert_eq!(store.get(host).unwrap(), hub, "{host}");
    }
    assert_eq!(store.get("ghcr.io").unwrap(), None);

    // A helper (credHelpers under the Hub key, or credsStore) is asked for the Hub key, which
    // is what `docker login` stored through it.
    let helper_bin = fake_helper(tmp.path(), HUB_KEY);
    for (name, json) in [
        (
            "helpers",
            serde_json::json!({"credHelpers": {HUB_KEY: "fake"}}),
        ),
        ("store", serde_json::json!({"credsStore": "fake"})),
    ] {
        let cfg = docker_config(&tmp.path().join(name), json);
        let store = store_for(&cfg, Some(&helper_bin));
        assert_eq!(
            store.get("registry-1.docker.io").unwrap(),
            Some(Credential {
                username: "user".into(),
                password: "pass".into(),
            }),
            "{name}"
        );
    }
    let log = std::fs::read_to_string(tmp.path().join("helper.log")).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), vec![HUB_KEY, HUB_KEY]);
}

#[test]
fn identity_tokens_are_read_from_auths_and_from_helpers() {
    use image_io::registry::credentials::IDENTITY_TOKEN_USER;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-tokens");
    std::fs::write(
        &helper,
        "#!/bin/sh\ncat >/dev/null\nprintf '{\"Username\":\"<token>\",\"Secret\":\"refresh-from-helper\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = docker_config(
        tmp.path(),
        serde_json::json!({
            "credHelpers": {"helped.example.com": "tokens"},
            "auths": {
                "registry.example.com": {"identitytoken": "refresh-from-auths", "auth": STANDARD.encode("u:p")},
            },
        }),
    );
    let store = store_for(&cfg, Some(&bin));
    let c = store.get("registry.example.com").unwrap().unwrap();
    assert_eq!(c.username, IDENTITY_TOKEN_USER);
    assert_eq!(c.identity_token(), Some("refresh-from-auths"));
    let c = store.get("helped.example.com").unwrap().unwrap();
    assert_eq!(c.identity_token(), Some("refresh-from-helper"));
}

/// A token service for identity tokens: takes only the OAuth2 refresh-token grant (a POST of
/// a form) with `refresh`, and answers with a token the registry accepts. Every request is
/// recorded as `(method, target, body)`.
struct RefreshTokenService {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl RefreshTokenService {
    fn start(key_dir: std::path::PathBuf, refresh: &'static str) -> RefreshTokenService {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                let body = String::from_utf8_lossy(&body).into_owned();
                let mut parts = line.split_whitespace();
                let (method, target) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                log.lock()
                    .unwrap()
                    .push((method.clone(), target.clone(), body.clone()));
                let form: Vec<(String, String)> = rs::query(&format!("/?{body}"));
                let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let (status, answer) = if method == "POST"
                    && field("grant_type").as_deref() == Some("refresh_token")
                    && field("refresh_token").as_deref() == Some(refresh)
                {
                    let scope = field("scope").unwrap_or_default();
                    let token = rs::sign_token(&key_dir, "test-issuer", "test-registry", &scope);
                    (
                        "200 OK",
                        serde_json::json!({"access_token": token, "expires_in": 600}).to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        "{\"error\":\"invalid_grant\"}".to_string(),
                    )
                };
                let mut out = conn;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        RefreshTokenService { addr, seen }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_token_is_exchanged_for_a_token_the_real_registry_accepts() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    rs::make_token_key(&d);
    let tokens = RefreshTokenService::start(d.clone(), "the-refresh-token");
    let extra = rs::token_auth(&tokens.addr.to_string(), &d);
    let reg = Registry::start(&bin, &d, &extra);
    let blobs = rs::blob_dir(&d);
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app/y", b"app".to_vec())]);
    let b = built(
        image.clone(),
        &blobs,
        &[format!("{}/team/app:idtoken", reg.host)],
    );
    // As `docker login` writes it for an OAuth login: no password, an identity token.
    let cfg = docker_config(
        &d,
        serde_json::json!({"auths": {reg.host.clone(): {"identitytoken": "the-refresh-token"}}}),
    );
    let opts = RegistryOptions {
        credentials: Some(store_for(&cfg, None)),
        ..RegistryOptions::default()
    };
    let out = push_ok(&b, &opts).await;
    assert_eq!(out.manifest_digest, image.manifest_digest());
    let reqs = reg.our_requests(1);
    assert_eq!(count(&reqs, "PUT", "/manifests/idtoken"), 1, "{reqs:#?}");
    // The token came from the refresh-token grant, for pull and push of the repository, and
    // the identity token was never sent as a password.
    let seen = tokens.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (method, target, body) = &seen[0];
    assert_eq!((method.as_str(), target.as_str()), ("POST", "/token"));
    let form = rs::query(&format!("/?{body}"));
    for pair in [
        ("grant_type", "refresh_token"),
        ("refresh_token", "the-refresh-token"),
        ("service", "test-registry"),
        ("scope", "repository:team/app:pull,push"),
        ("client_id", "docker_release"),
    ] {
        assert!(
            form.contains(&(pair.0.to_string(), pair.1.to_string())),
            "{pair:?} in {form:?}"
        );
    }

    // A refresh token the service refuses: a clear refusal, naming the identity token.
    let cfg = docker_config(
        &d.join("bad"),
        serde_json::json!({"auths": {reg.host.clone(): {"identitytoken": "revoked"}}}),
    );
    let opts = RegistryOptions {
        credentials: Some(store_for(&cfg, None)),
        ..RegistryOptions::default()
    };
    let err = push_err(&b, &opts).await;
    println!("revoked identity token: {err}");
    assert_eq!(err.reason(), "registry_unauthorized", "{err}");
    assert!(
        err.to_string().contains("refused the identity token"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tags move together or not at all.

#[tokio::test]
async fn a_refused_second_tag_puts_the_first_back_on_its_previous_manifest() {
    const OLD: &[u8] = br#"{"schemaVersion":2,"old":true}"#;
    const OLD_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
    let fake = fake_registry(|req| match (req.method.as_str(), req.target.as_str()) {
        ("HEAD", _) => Some(Reply::new(200, &[], b"")),
        ("GET", "/v2/team/app/manifests/1") => {
            Some(Reply::new(200, &[("Content-Type", OLD_TYPE)], OLD))
        }
        ("GET", t) if t.contains("/manifests/") => Some(Reply::new(404, &[], b"")),
        ("PUT", "/v2/team/app/manifests/1") => Some(Reply::new(201, &[], b"")),
        ("PUT", "/v2/team/app/manifests/2") => Some(Reply::new(500, &[], b"tag storage exploded")),
        _ => None,
    });
    let tmp = tempfile::tempdir().unwrap();
    let tags = [
        format!("{}/team/app:1", fake.host()),
        format!("{}/team/app:2", fake.host()),
    ];
    let b = noise_built(tmp.path(), 1 << 16, &tags);
    let err = push_err(&b, &no_credentials()).await;
    assert!(err.to_string().contains("exploded"), "{err}");
    assert!(
        !err.to_string().contains("Not put back"),
        "everything was put back: {err}"
    );
    let puts: Vec<(String, Option<String>)> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("/manifests/"))
        .map(|r| {
            (
                r.target.clone(),
                r.header("content-type").map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        puts,
        vec![
            (
                "/v2/team/app/manifests/1".to_string(),
                Some("application/vnd.oci.image.manifest.v1+json".to_string())
            ),
            (
                "/v2/team/app/manifests/2".to_string(),
                Some("application/vnd.oci.image.manifest.v1+json".to_string())
            ),
            // Tag 1 put back on what it named before, with that manifest's media type.
            (
                "/v2/team/app/manifests/1".to_string(),
                Some(OLD_TYPE.to_string())
            ),
        ]
    );
}

#[tokio::test]
async fn blobs_go_to_every_registry_before_any_tag_moves() {
    let fake = fake_registry(|req| match req.method.as_str() {
        "HEAD" => Some(Reply::new(200, &[], b"")),
        "GET" if req.target.contains("/manifests/") => Some(Reply::new(404, &[], b"")),
        "PUT" => Some(Reply::new(201, &[], b"")),
        _ => None,
    });
    let tmp = tempfile::tempdir().unwrap();
    let unreachable = format!("127.0.0.1:{}", rs::free_port());
    let tags = [
        format!("{}/team/app:1", fake.host()),
        format!("{unreachable}/team/app:1"),
    ];
    let b = noise_built(tmp.path(), 1 << 16, &tags);
    let err = push_err(&b, &no_credentials()).await;
    assert_eq!(err.reason(), "registry_unreachable", "{err}");
    assert_eq!(
        fake.lines().iter().filter(|l| l.starts_with("PUT")).count(),
        0,
        "no tag moved on the first registry: {:?}",
        fake.lines()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_after_a_push_puts_tags_back_and_names_the_new_ones() {
    let Some((_dir, reg, blobs)) = rs::plain_registry() else {
        return;
    };
    let old = rs::three_layer_image(&blobs, 1);
    let new = rs::three_layer_image(&blobs, 2);
    let stable = format!("{}/team/app:stable", reg.host);
    let fresh = format!("{}/team/app:fresh", reg.host);
    push_ok(
        &built(old, &blobs, std::slice::from_ref(&stable)),
        &no_credentials(),
    )
    .await;
    let before = skopeo_raw_digest(&stable);

    let b = built(new, &blobs, &[stable.clone(), fresh.clone()]);
    let mut pushed = PushedTags::default();
    push_undoable(b, &no_credentials(), quiet(), &mut pushed)
        .await
        .unwrap();
    assert_ne!(skopeo_raw_digest(&stable), before);
    assert_eq!(pushed.moved(), 2);

    let left = pushed.undo().await;
    assert_eq!(
        skopeo_raw_digest(&stable),
        before,
        "stable is back on the old manifest"
    );
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].contains(&fresh) && left[0].contains("skopeo delete"),
        "{left:?}"
    );
}
