//! What a push attaches (`image_io::registry::attach`): the SBOM referrer through the referrers
//! API (fake registries that announce it in the two ways the spec allows) or through the
//! tag-schema fallback (the real `docker-registry` 2.8, which has no referrers API), and the
//! cosign signature; what a second run adds (nothing) and what the undo puts back.

mod registry_support;

use image_core::archive::BlobDir;
use image_core::digest::Digest;
use image_core::image::media_type;
use image_core::reference::Reference;
use image_core::supply::artifact::{fallback_tag, signature_tag};
use image_core::supply::sbom::SbomFormat;
use image_core::supply::signing::SigningKey;
use image_core::supply::SbomFile;
use image_io::registry::credentials::CredentialStore;
use image_io::registry::{attach, push_undoable, AttachedTo, PushedTags, RegistryOptions};
use image_io::sink::{Built, ImageSbom};
use registry_support as rs;
use registry_support::{FakeServer, Registry, Reply};

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

const SBOM: &[u8] = br#"{"spdxVersion":"SPDX-2.3","name":"test"}"#;

fn no_credentials() -> RegistryOptions {
    RegistryOptions {
        credentials: Some(CredentialStore::default()),
        ..RegistryOptions::default()
    }
}

/// A one-layer image tagged `tag`, embedding `sbom` (SPDX when `None`).
fn small_built(dir: &Path, tag: &str, sbom: Option<SbomFile>) -> Arc<Built> {
    let blobs = BlobDir {
        root: dir.join("blobs"),
    };
    let image = rs::image(vec![rs::layer(&blobs, "app", "/app/a", rs::noise(5, 4096))]);
    let sbom = ImageSbom {
        manifest: image.manifest_digest(),
        sbom: sbom.unwrap_or(SbomFile {
            format: SbomFormat::Spdx,
            bytes: SBOM.to_vec(),
        }),
    };
    Arc::new(
        Built::single(image, blobs, vec![Reference::parse(tag).unwrap()]).with_sboms(vec![sbom]),
    )
}

fn key() -> SigningKey {
    SigningKey::from_pem(include_str!(
        "../../image_core/tests/fixtures/keys/p256-sec1.pem"
    ))
    .unwrap()
}

/// Push `built` and attach its SBOM and, with `key`, a signature; what was attached to the
/// image, and the push's record of moved tags.
async fn push_and_attach(
    built: &Arc<Built>,
    key: Option<&SigningKey>,
    pushed: &mut PushedTags,
) -> AttachedTo {
    let quiet = Arc::new(|_| {});
    push_undoable(built.clone(), &no_credentials(), quiet, pushed)
        .await
        .unwrap();
    let mut attached = attach(built, "2023-11-14T22:13:20Z", key, pushed)
        .await
        .unwrap();
    assert_eq!(attached.subjects.len(), 1);
    let to = attached.subjects.remove(0);
    assert_eq!(to.subject, built.image.manifest_digest());
    to
}

/// A registry that stores nothing and answers as one with the referrers API would:
/// `OCI-Subject` on manifest `PUT`s by digest (when `header`), an index at `referrers/`
/// (when `listing`).
fn api_registry(header: bool, listing: bool) -> FakeServer {
    FakeServer::start(move |req| {
        let t = req.target.as_str();
        match req.method.as_str() {
            "GET" if t == "/v2/" => Reply::new(200, &[], b"{}"),
            "HEAD" => Reply::new(404, &[], b""),
            "POST" if t.ends_with("/blobs/uploads/") => Reply::new(
                202,
                &[("Location", "/v2/team/app/blobs/uploads/u-1?_state=abc")],
                b"",
            ),
            "PUT" if t.contains("/blobs/uploads/") => Reply::new(201, &[], b""),
            "GET" if t.contains("/referrers/") && listing => Reply::new(
                200,
                &[("Content-Type", media_type::INDEX)],
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            ),
            "GET" => Reply::new(404, &[], b""),
            "PUT" if t.contains("/manifests/sha256:") && header => {
                Reply::new(201, &[("OCI-Subject", "sha256:whatever")], b"")
            }
            "PUT" if t.contains("/manifests/") => Reply::new(201, &[], b""),
            _ => Reply::new(400, &[], b"unexpected"),
        }
    })
}

#[tokio::test]
async fn a_registry_with_the_referrers_api_gets_no_fallback_tag() {
    for (header, listing) in [(true, false), (false, true)] {
        let fake = api_registry(header, listing);
        let dir = tempfile::tempdir().unwrap();
        let built = small_built(dir.path(), &format!("{}/team/app:1", fake.host()), None);
        let mut pushed = PushedTags::default();
        let attached = push_and_attach(&built, None, &mut pushed).await;
        let referrer = attached.sbom.expect("an SBOM referrer");
        assert_eq!(referrer.fallback_tags, Vec::<String>::new());
        assert_eq!(referrer.subject, built.image.manifest_digest());
        let lines = fake.lines();
        let fallback = fallback_tag(&built.image.manifest_digest());
        assert!(
            !lines.iter().any(|l| l.contains(&fallback)),
            "header {header}, listing {listing}: {lines:#?}"
        );
        // The referrer itself was put by digest, after its blobs.
        let put = format!("PUT /v2/team/app/manifests/{}", referrer.digest);
        assert!(lines.contains(&put), "{lines:#?}");
        // With the header, the registry is not asked again.
        assert_eq!(
            lines.iter().any(|l| l.contains("/referrers/")),
            !header,
            "{lines:#?}"
        );
    }
}

fn get(host: &str, path: &str, accept: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-H", &format!("Accept: {accept}")])
        .arg(format!("http://{host}/v2/{path}"))
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_api_the_fallback_index_is_merged_and_put_back_on_undo() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    rs::need("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&bin, tmp.path(), "");
    let built = small_built(tmp.path(), &format!("{}/team/app:1", reg.host), None);
    let digest = built.image.manifest_digest();
    let tag = fallback_tag(&digest);

    // Another referrer is listed already (a CycloneDX SBOM, as another tool might attach).
    let cyclonedx = SbomFile {
        format: SbomFormat::CycloneDx,
        bytes: br#"{"bomFormat":"CycloneDX"}"#.to_vec(),
    };
    let other_built = small_built(
        tmp.path(),
        &format!("{}/team/app:1", reg.host),
        Some(cyclonedx),
    );
    let mut first = PushedTags::default();
    let other = push_and_attach(&other_built, None, &mut first)
        .await
        .sbom
        .unwrap();
    assert_eq!(first.moved(), 2, "the image's tag and the fallback index");
    let index_path = format!("team/app/manifests/{tag}");
    let before = get(&reg.host, &index_path, media_type::INDEX).unwrap();

    let mut pushed = PushedTags::default();
    let attached = push_and_attach(&built, Some(&key()), &mut pushed).await;
    let referrer = attached.sbom.unwrap();
    assert_eq!(
        referrer.fallback_tags,
        vec![format!("{}/team/app:{tag}", reg.host)]
    );
    let index: Value =
        serde_json::from_slice(&get(&reg.host, &index_path, media_type::INDEX).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[0]["digest"], other.digest.to_string());
    assert_eq!(entries[0]["artifactType"], "application/vnd.cyclonedx+json");
    assert_eq!(entries[1]["digest"], referrer.digest.to_string());
    assert_eq!(entries[1]["artifactType"], "application/spdx+json");
    assert_ne!(other.digest, referrer.digest);

    // The signature, in cosign's place.
    let [signed] = &attached.signatures[..] else {
        panic!("{:?}", attached.signatures)
    };
    assert_eq!(
        signed.tag,
        format!("{}/team/app:{}", reg.host, signature_tag(&digest))
    );
    let sig = get(
        &reg.host,
        &format!("team/app/manifests/{}", signature_tag(&digest)),
        media_type::MANIFEST,
    )
    .unwrap();
    assert_eq!(Digest::of(&sig), signed.digest);
    // The fallback index and the signature (the image's tag named it already).
    assert_eq!(pushed.moved(), 2);

    // The same again: every document is there already, no tag moves but the image's own check.
    let mut again = PushedTags::default();
    let second = push_and_attach(&built, Some(&key()), &mut again).await;
    assert_eq!(again.moved(), 0);
    assert_eq!(second.signatures, attached.signatures);

    // A failure later in the run: the index is put back as it was; the new `.sig` tag cannot
    // be removed, and the undo says so.
    let left = pushed.undo().await;
    assert_eq!(
        get(&reg.host, &index_path, media_type::INDEX).unwrap(),
        before
    );
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left[0].contains(".sig was created"), "{left:#?}");
    assert!(left[0].contains(&signed.digest.to_string()), "{left:#?}");
}

/// Two platforms' images (amd64, arm64/v8) and their index, tagged `tag`, each embedding an
/// SBOM of its own.
fn two_platforms(dir: &Path, tag: &str) -> Arc<Built> {
    let blobs = BlobDir {
        root: dir.join("blobs"),
    };
    let amd = rs::image(vec![rs::layer(&blobs, "app", "/app/a", rs::noise(6, 4096))]);
    let mut arm = rs::image(vec![rs::layer(&blobs, "app", "/app/a", rs::noise(7, 4096))]);
    arm.platform = image_core::platform::parse("linux/arm64").unwrap();
    let sboms = [&amd, &arm]
        .iter()
        .map(|i| ImageSbom {
            manifest: i.manifest_digest(),
            sbom: SbomFile {
                format: SbomFormat::Spdx,
                bytes: format!(r#"{{"spdxVersion":"SPDX-2.3","name":"{}"}}"#, i.platform)
                    .into_bytes(),
            },
        })
        .collect();
    let index = image_core::index::ImageIndex::new(vec![amd.clone(), arm]).unwrap();
    let mut built =
        Built::single(amd, blobs, vec![Reference::parse(tag).unwrap()]).with_sboms(sboms);
    built.index = Some(index);
    built.named_platform = true;
    Arc::new(built)
}

#[tokio::test(flavor = "multi_thread")]
async fn several_platforms_each_manifest_has_its_sbom_and_every_document_a_signature() {
    let Some(bin) = rs::registry_binary() else {
        return;
    };
    rs::need("curl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&bin, tmp.path(), "");
    let built = two_platforms(tmp.path(), &format!("{}/team/multi:1", reg.host));
    let index = built.index.clone().unwrap();

    let mut pushed = PushedTags::default();
    push_undoable(
        built.clone(),
        &no_credentials(),
        Arc::new(|_| {}),
        &mut pushed,
    )
    .await
    .unwrap();
    let key = key();
    let attached = attach(&built, "2023-11-14T22:13:20Z", Some(&key), &mut pushed)
        .await
        .unwrap();

    // The index first: signed, no SBOM (and no fallback index of its own).
    let digests: Vec<Digest> = attached
        .subjects
        .iter()
        .map(|a| a.subject.clone())
        .collect();
    let mut want = vec![index.digest()];
    want.extend(index.images().iter().map(|i| i.manifest_digest()));
    assert_eq!(digests, want);
    assert!(attached.subjects[0].sbom.is_none());
    assert!(get(
        &reg.host,
        &format!("team/multi/manifests/{}", fallback_tag(&index.digest())),
        media_type::INDEX
    )
    .is_none());

    for (to, image) in attached.subjects[1..].iter().zip(index.images()) {
        let digest = image.manifest_digest();
        // The platform's SBOM, listed in its manifest's fallback index, its blob that SBOM.
        let referrer = to.sbom.as_ref().expect("each platform's SBOM");
        assert_eq!(referrer.subject, digest);
        assert_eq!(
            referrer.fallback_tags,
            vec![format!("{}/team/multi:{}", reg.host, fallback_tag(&digest))]
        );
        let listed: Value = serde_json::from_slice(
            &get(
                &reg.host,
                &format!("team/multi/manifests/{}", fallback_tag(&digest)),
                media_type::INDEX,
            )
            .unwrap(),
        )
        .unwrap();
        let entries = listed["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{listed}");
        assert_eq!(entries[0]["digest"], referrer.digest.to_string());
        let manifest: Value = serde_json::from_slice(
            &get(
                &reg.host,
                &format!("team/multi/manifests/{}", referrer.digest),
                media_type::MANIFEST,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["subject"]["digest"], digest.to_string());
        let blob = get(
            &reg.host,
            &format!(
                "team/multi/blobs/{}",
                manifest["layers"][0]["digest"].as_str().unwrap()
            ),
            "*/*",
        )
        .unwrap();
        assert_eq!(blob, built.sbom_of(image).unwrap().bytes);
        assert!(String::from_utf8_lossy(&blob).contains(&image.platform.to_string()));
    }

    // Every document signed, each under its own `.sig` tag, the payload naming it.
    for (to, digest) in attached.subjects.iter().zip(&want) {
        let [signed] = &to.signatures[..] else {
            panic!("{:?}", to.signatures)
        };
        assert_eq!(
            signed.tag,
            format!("{}/team/multi:{}", reg.host, signature_tag(digest))
        );
        let sig: Value = serde_json::from_slice(
            &get(
                &reg.host,
                &format!("team/multi/manifests/{}", signature_tag(digest)),
                media_type::MANIFEST,
            )
            .unwrap(),
        )
        .unwrap();
        let layers = sig["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{sig}");
        let payload = get(
            &reg.host,
            &format!("team/multi/blobs/{}", layers[0]["digest"].as_str().unwrap()),
            "*/*",
        )
        .unwrap();
        assert_eq!(Digest::of(&payload), signed.payload_digest);
        let payload: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            payload["critical"]["image"]["docker-manifest-digest"],
            digest.to_string()
        );
    }
    // The index's tag, two fallback indexes, three signatures.
    assert_eq!(pushed.moved(), 6);

    // Again: nothing moves.
    let mut again = PushedTags::default();
    push_undoable(
        built.clone(),
        &no_credentials(),
        Arc::new(|_| {}),
        &mut again,
    )
    .await
    .unwrap();
    let second = attach(&built, "2023-11-14T22:13:20Z", Some(&key), &mut again)
        .await
        .unwrap();
    assert_eq!(again.moved(), 0);
    assert_eq!(second, attached);

    // A failure later in the run: every tag this push made is named, none can be removed.
    let left = pushed.undo().await;
    assert_eq!(left.len(), 6, "{left:#?}");
    for digest in &want {
        assert!(
            left.iter().any(|l| l.contains(&signature_tag(digest))),
            "{left:#?}"
        );
    }
}
