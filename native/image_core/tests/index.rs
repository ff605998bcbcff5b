//! Multi-platform images: the image index value and the archive that holds it, checked by the
//! tests' own checker, read by skopeo (`oci-archive:` with the nested index) and loaded by the
//! Docker engine (`manifest.json`: one platform).

mod support;

use image_core::archive::{write_index_archive, ArchiveError, BlobDir};
use image_core::elf::Platform;
use image_core::image::Image;
use image_core::index::{ImageIndex, IndexError};
use image_core::platform::parse;
use image_core::reference::Reference;
use std::path::Path;
use std::process::Command;
use support::{
    prereq, run, sample_platform_images, tool, validate_index_archive_bytes, CheckedIndex,
};

fn tags(names: &[&str]) -> Vec<Reference> {
    names.iter().map(|n| Reference::parse(n).unwrap()).collect()
}

fn archive(index: &ImageIndex, load: &Platform, tags: &[Reference], blobs: &BlobDir) -> Vec<u8> {
    let mut last = 0;
    let bytes = write_index_archive(index, load, tags, blobs, Vec::new(), &mut |n| last = n)
        .unwrap_or_else(|e| panic!("write the index archive: {e}"));
    assert_eq!(
        last,
        bytes.len() as u64,
        "the last progress report is the total"
    );
    bytes
}

fn checked(bytes: &[u8]) -> CheckedIndex {
    validate_index_archive_bytes(bytes).unwrap_or_else(|e| panic!("invalid index archive: {e}"))
}

#[test]
fn the_index_is_one_value_whatever_the_order_of_its_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, _) = sample_platform_images(tmp.path());
    let index = ImageIndex::new(images.clone()).unwrap();
    let reversed = ImageIndex::new(images.iter().rev().cloned().collect()).unwrap();
    assert_eq!(index, reversed);
    assert_eq!(index.json(), reversed.json());
    assert_eq!(index.digest(), reversed.digest());

    let doc: serde_json::Value = serde_json::from_slice(&index.json()).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": images[0].manifest_digest().to_string(),
                    "size": images[0].manifest_json().len(),
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": images[1].manifest_digest().to_string(),
                    "size": images[1].manifest_json().len(),
                    "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
                },
            ],
        })
    );
    // Keys sorted, no whitespace: the bytes are a function of the value.
    assert!(String::from_utf8(index.json())
        .unwrap()
        .starts_with(r#"{"manifests":[{"digest":"sha256:"#));
    assert_eq!(
        index.image(&parse("linux/arm64").unwrap()),
        Some(&images[1])
    );
    assert_eq!(index.image(&parse("linux/s390x").unwrap()), None);

    assert_eq!(ImageIndex::new(vec![]).unwrap_err(), IndexError::Empty);
    let twice = ImageIndex::new(vec![images[1].clone(), images[1].clone()]).unwrap_err();
    assert_eq!(twice, IndexError::Duplicate("linux/arm64/v8".into()));
    assert!(twice.to_string().contains("one image per platform"));
}

#[test]
fn the_index_archive_is_deterministic_and_valid_and_holds_shared_layers_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, blobs) = sample_platform_images(&tmp.path().join("a"));
    let index = ImageIndex::new(images.clone()).unwrap();
    let (amd64, arm64) = (parse("linux/amd64").unwrap(), parse("linux/arm64").unwrap());
    let t = tags(&["example.com/team/hello:1.0", "hello"]);

    let first = archive(&index, &amd64, &t, &blobs);
    assert!(
        first == archive(&index, &amd64, &t, &blobs),
        "two writes differ"
    );
    // Built again elsewhere, in the other order: the same bytes.
    let (again, blobs_again) = sample_platform_images(&tmp.path().join("b"));
    let again = ImageIndex::new(again.into_iter().rev().collect()).unwrap();
    assert!(archive(&again, &amd64, &t, &blobs_again) == first);

    let c = checked(&first);
    assert_eq!(c.index_digest, index.digest().to_string());
    assert_eq!(c.index, index.json());
    let platforms: Vec<&str> = c.images.iter().map(|i| i.platform.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    for (got, want) in c.images.iter().zip(&images) {
        assert_eq!(got.manifest_digest, want.manifest_digest().to_string());
        assert_eq!(got.config_digest, want.id().to_string());
    }
    // The sample has no native code: both images have the very same layers (stored once: the
    // checker refuses an archive with a path twice).
    let digests = |i: &Image| {
        i.layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&images[0]), digests(&images[1]));
    assert_ne!(images[0].id(), images[1].id());
    assert_eq!(
        c.loaded_config,
        images[0].id().to_string(),
        "docker load gets amd64"
    );
    assert_eq!(c.repo_tags, ["example.com/team/hello:1.0", "hello:latest"]);
    assert_eq!(c.ref_names, ["1.0", "latest"]);

    let arm = checked(&archive(&index, &arm64, &t, &blobs));
    assert_eq!(
        arm.loaded_config,
        images[1].id().to_string(),
        "docker load gets arm64"
    );
    assert_eq!(arm.index_digest, c.index_digest);

    let untagged = checked(&archive(&index, &amd64, &[], &blobs));
    assert!(untagged.ref_names.is_empty() && untagged.repo_tags.is_empty());

    let s390x = parse("linux/s390x").unwrap();
    let e = write_index_archive(&index, &s390x, &t, &blobs, Vec::new(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, ArchiveError::NoImage(ref p) if p == "linux/s390x"),
        "{e}"
    );
}

#[test]
fn the_checker_refuses_a_flat_index_and_a_second_docker_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, blobs) = sample_platform_images(tmp.path());
    let index = ImageIndex::new(images).unwrap();
    let bytes = archive(
        &index,
        &parse("linux/amd64").unwrap(),
        &tags(&["hello:1"]),
        &blobs,
    );
    let rewrite = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut out = tar::Builder::new(Vec::new());
        let mut ar = tar::Archive::new(bytes.as_slice());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            let mut h = e.header().clone();
            if e.path().unwrap() == Path::new(name) {
                let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                f(&mut v);
                data = serde_json::to_vec(&v).unwrap();
                h.set_size(data.len() as u64);
                h.set_cksum();
            }
            out.append(&h, data.as_slice()).unwrap();
        }
        out.into_inner().unwrap()
    };
    let flat = rewrite("index.json", &|v| {
        v["manifests"] =
            serde_json::from_slice::<serde_json::Value>(&index.json()).unwrap()["manifests"].clone()
    });
    assert!(validate_index_archive_bytes(&flat)
        .unwrap_err()
        .contains("a nested index"));
    let two = rewrite("manifest.json", &|v| {
        let first = v[0].clone();
        v.as_array_mut().unwrap().push(first);
    });
    assert!(validate_index_archive_bytes(&two)
        .unwrap_err()
        .contains("array of one image"));
}

#[test]
fn skopeo_reads_the_index_and_each_platform() {
    let Some(skopeo) = tool("skopeo") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (images, blobs) = sample_platform_images(&tmp.path().join("build"));
    let index = ImageIndex::new(images.clone()).unwrap();
    let path = tmp.path().join("multi.tar");
    std::fs::write(
        &path,
        archive(
            &index,
            &parse("linux/amd64").unwrap(),
            &tags(&["hello:1.0"]),
            &blobs,
        ),
    )
    .unwrap();
    let skopeo_cmd = || {
        let mut c = Command::new(&skopeo);
        c.env("TMPDIR", tmp.path());
        c
    };
    let oci = format!("oci-archive:{}:1.0", path.display());
    // The tag names the index; skopeo picks the machine's platform, or the one asked for.
    assert_eq!(
        run(skopeo_cmd().args(["inspect", "--raw", &oci])),
        index.json()
    );
    for (arch, image) in [("amd64", &images[0]), ("arm64", &images[1])] {
        let config = run(skopeo_cmd().args([
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            "inspect",
            "--raw",
            "--config",
            &oci,
        ]));
        assert_eq!(config, image.config_json(), "{arch}");
    }
    // Copying every platform reads every blob and checks it against its digest.
    let copied = tmp.path().join("copied");
    run(skopeo_cmd().args([
        "--insecure-policy",
        "copy",
        "--all",
        "--quiet",
        &oci,
        &format!("oci:{}:t", copied.display()),
    ]));
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("index.json")).unwrap()).unwrap();
    assert_eq!(layout["manifests"][0]["digest"], index.digest().to_string());
}

/// `docker load` of Engine 20.10 reads only `manifest.json`: it loads the image of the platform
/// the archive was written for, whichever that is, under the archive's tags.
#[test]
fn the_engine_loads_the_one_platform_manifest_json_lists() {
    let Some(docker) = tool("docker") else {
        return;
    };
    if !Command::new(&docker)
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        prereq::missing("a Docker engine (`docker info` fails)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (images, blobs) = sample_platform_images(&tmp.path().join("build"));
    let index = ImageIndex::new(images.clone()).unwrap();
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    for (platform, image) in [("linux/amd64", &images[0]), ("linux/arm64", &images[1])] {
        let tag = format!(
            "docker-release-test/index-archive:{}-{unique}",
            platform.replace('/', "-")
        );
        let path = tmp.path().join("load.tar");
        std::fs::write(
            &path,
            archive(&index, &parse(platform).unwrap(), &tags(&[&tag]), &blobs),
        )
        .unwrap();
        let out = run(Command::new(&docker).args(["load", "-q", "-i"]).arg(&path));
        let inspect = Command::new(&docker)
            .args(["image", "inspect", "-f", "{{.Id}} {{.Architecture}}", &tag])
            .output()
            .expect("docker image inspect");
        // Our own tag, on our own image: removed before anything is asserted.
        let _ = Command::new(&docker).args(["rmi", &tag]).output();
        assert!(
            String::from_utf8_lossy(&out).contains(&tag),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let got = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
        assert_eq!(
            got,
            format!("{} {}", image.id(), image.platform.architecture),
            "{platform}"
        );
    }
}

#[test]
fn the_index_carries_the_annotations_its_images_share() {
    let image = |platform: &str, extra: &str| {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            "2023-11-14T22:13:20Z".to_string(),
        );
        annotations.insert("com.example.platform".to_string(), extra.to_string());
        Image {
            platform: parse(platform).unwrap(),
            created: 0,
            config: Default::default(),
            layers: vec![],
            base_history: vec![],
            annotations,
        }
    };
    let index =
        ImageIndex::new(vec![image("linux/amd64", "a"), image("linux/arm64", "b")]).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&index.json()).unwrap();
    assert_eq!(
        doc["annotations"],
        serde_json::json!({"org.opencontainers.image.created": "2023-11-14T22:13:20Z"})
    );
    // Without annotations the index has no such field (its bytes as before).
    let bare = |platform: &str| Image {
        annotations: Default::default(),
        ..image(platform, "")
    };
    let plain = ImageIndex::new(vec![bare("linux/amd64"), bare("linux/arm64")]).unwrap();
    assert!(!String::from_utf8(plain.json())
        .unwrap()
        .contains("annotations"));
}
