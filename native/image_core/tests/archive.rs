//! Archives: byte-for-byte determinism, the invariant checker, and independent clients
//! (skopeo, umoci) reading what we write.

mod support;

use image_core::archive::{write_archive, BlobDir};
use image_core::digest::Digest;
use image_core::image::Image;
use image_core::layer::LayerInfo;
use image_core::reference::Reference;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{run, sample_image, tool, validate_archive, validate_archive_bytes, CREATED};

fn tags(names: &[&str]) -> Vec<Reference> {
    names.iter().map(|n| Reference::parse(n).unwrap()).collect()
}

fn archive_bytes(image: &Image, tags: &[Reference], blobs: &BlobDir) -> Vec<u8> {
    let mut last = 0;
    let bytes = write_archive(image, tags, blobs, Vec::new(), &mut |n| last = n).unwrap();
    assert_eq!(
        last,
        bytes.len() as u64,
        "the last progress report is the total"
    );
    bytes
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn archive_is_deterministic_and_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(&tmp.path().join("a"));
    let t = tags(&["example.com/team/hello:1.0", "hello"]);
    let first = archive_bytes(&image, &t, &blobs);
    let second = archive_bytes(&image, &t, &blobs);
    assert!(first == second, "two writes of one image differ");

    // A second, independent build of the same inputs gives the same image and the same bytes.
    let (again, blobs_again) = sample_image(&tmp.path().join("b"));
    assert_eq!(image, again);
    assert!(archive_bytes(&again, &t, &blobs_again) == first);

    let path = tmp.path().join("image.tar");
    write_file(&path, &first);
    let checked = validate_archive(&path).unwrap_or_else(|e| panic!("invalid archive: {e}"));
    assert_eq!(checked.manifest_digest, image.manifest_digest().to_string());
    assert_eq!(checked.config_digest, image.id().to_string());
    assert_eq!(checked.manifest, image.manifest_json());
    assert_eq!(checked.config_bytes, image.config_json());
    assert_eq!(checked.created, CREATED);
    assert_eq!(
        checked.repo_tags,
        vec!["example.com/team/hello:1.0", "hello:latest"]
    );
    assert_eq!(checked.ref_names, vec!["1.0", "latest"]);
    assert_eq!(checked.layers.len(), 2);
    for (c, l) in checked.layers.iter().zip(&image.layers) {
        assert_eq!(c.digest, l.digest.to_string());
        assert_eq!(c.diff_id, l.diff_id.to_string());
        assert_eq!(c.entries.len(), l.entries, "{} layer entry count", l.name);
    }

    // What the layers hold, as written.
    let f = |p: &str| {
        checked
            .file(p)
            .unwrap_or_else(|| panic!("{p} not in the image"))
    };
    assert_eq!((f("/tmp").kind, f("/tmp").mode), ('d', 0o1777));
    assert_eq!((f("/bin/hello").mode, f("/bin/hello").uid), (0o755, 0));
    assert_eq!(f("/app/etc/greeting.txt").mode, 0o644, "0664 is normalised");
    assert_eq!(f("/app/etc/greeting.txt").data, b"hello, world\n");
    assert_eq!(f("/app/etc/greeting").link.as_deref(), Some("greeting.txt"));
    let tmp_dir = f("/app/tmp");
    assert_eq!(
        (tmp_dir.mode, tmp_dir.uid, tmp_dir.gid),
        (0o755, 1000, 1000)
    );
    let secret = f("/app/secret");
    assert_eq!((secret.mode, secret.uid, secret.gid), (0o600, 1000, 1000));
    assert!(support::LONG_PATH.len() > 100);
    assert_eq!(f(support::LONG_PATH).data, b"long\n");
    assert_eq!(
        f("/app/long-link").link.as_deref(),
        Some(support::LONG_PATH)
    );

    // The config says how to run it.
    let c = &checked.config["config"];
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/hello"]));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"4000/tcp": {}}));
    assert_eq!(checked.config["architecture"], "amd64");
    assert_eq!(checked.config["os"], "linux");
}

#[test]
fn archive_without_tags_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(tmp.path());
    let checked = validate_archive_bytes(&archive_bytes(&image, &[], &blobs)).unwrap();
    assert!(checked.repo_tags.is_empty());
    assert!(checked.ref_names.is_empty());
    assert_eq!(checked.manifest_digest, image.manifest_digest().to_string());
}

#[test]
fn two_identical_layers_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut image, blobs) = sample_image(tmp.path());
    let dup = LayerInfo {
        name: "again".into(),
        ..image.layers[1].clone()
    };
    image.layers.push(dup);
    let checked = validate_archive_bytes(&archive_bytes(&image, &[], &blobs)).unwrap();
    assert_eq!(checked.layers.len(), 3);
    assert_eq!(checked.layers[1].digest, checked.layers[2].digest);
}

#[test]
fn missing_or_resized_blob_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(tmp.path());
    let top = &image.layers[1].digest;
    let mut bytes = std::fs::read(blobs.path(top)).unwrap();
    bytes.push(0);
    write_file(&blobs.path(top), &bytes);
    let err = write_archive(&image, &[], &blobs, Vec::new(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, image_core::archive::ArchiveError::BlobSize { .. }),
        "{err}"
    );
    std::fs::remove_file(blobs.path(top)).unwrap();
    let err = write_archive(&image, &[], &blobs, Vec::new(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, image_core::archive::ArchiveError::Blob { .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The checker itself must reject broken archives, or the tests above prove nothing.

/// Rebuild the outer tar of `bytes`, letting `edit` change or drop (return `None`) each file.
fn rewrite(bytes: &[u8], mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let mut h = e.header().clone();
        let data = if h.entry_type().is_dir() {
            data
        } else {
            match edit(&path, data) {
                Some(d) => d,
                None => continue,
            }
        };
        h.set_size(data.len() as u64);
        out.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

fn edit_json(data: Vec<u8>, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn checker_rejects_tampered_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(tmp.path());
    let good = archive_bytes(&image, &tags(&["hello:1"]), &blobs);
    validate_archive_bytes(&good).unwrap();
    let top = image.layers[1].digest.hex();

    type Edit = Box<dyn Fn(&str, Vec<u8>) -> Option<Vec<u8>>>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "digest",
            Box::new(move |p, mut d| {
                if p.ends_with(&top) {
                    let n = d.len() - 20;
                    d[n] ^= 1;
                }
                Some(d)
            }),
        ),
        (
            "oci-layout is missing",
            Box::new(|p, d| (p != "oci-layout").then_some(d)),
        ),
        (
            "size",
            Box::new(|p, d| {
                Some(if p == "index.json" {
                    edit_json(d, |v| v["manifests"][0]["size"] = 1.into())
                } else {
                    d
                })
            }),
        ),
        (
            "manifest.json Layers",
            Box::new(|p, d| {
                Some(if p == "manifest.json" {
                    edit_json(d, |v| {
                        let layers = v[0]["Layers"].as_array_mut().unwrap();
                        layers.reverse();
                    })
                } else {
                    d
                })
            }),
        ),
        (
            "manifest.json Config",
            Box::new(|p, d| {
                Some(if p == "manifest.json" {
                    edit_json(d, |v| v[0]["Config"] = "blobs/sha256/00".into())
                } else {
                    d
                })
            }),
        ),
        (
            "disagree",
            Box::new(|p, d| {
                Some(if p == "manifest.json" {
                    edit_json(d, |v| v[0]["RepoTags"] = serde_json::json!(["hello:2"]))
                } else {
                    d
                })
            }),
        ),
    ];
    for (want, edit) in cases {
        let bad = rewrite(&good, edit);
        let err = validate_archive_bytes(&bad)
            .err()
            .unwrap_or_else(|| panic!("tampering ({want}) went unnoticed"));
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
    // An extra blob nobody refers to.
    let mut extra = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(good.as_slice());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let mut h = e.header().clone();
        let path = e.path().unwrap().into_owned();
        extra.append_data(&mut h, path, e).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(CREATED);
    h.set_size(1);
    let orphan = format!("blobs/sha256/{}", Digest::of(b"x").hex());
    extra.append_data(&mut h, orphan, &b"x"[..]).unwrap();
    let err = validate_archive_bytes(&extra.into_inner().unwrap()).unwrap_err();
    assert!(err.contains("nothing refers to"), "{err}");
}

/// An archive whose only layer is `tar_bytes` (gzipped here), with digests made consistent, so
/// that only the layer's contents can be wrong.
fn archive_of_layer(tmp: &Path, tar_bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    let blobs = BlobDir {
        root: tmp.to_path_buf(),
    };
    let digest = Digest::of(&gz);
    write_file(&blobs.path(&digest), &gz);
    let (mut image, _) = sample_image(&tmp.join("sample"));
    image.layers = vec![LayerInfo {
        name: "hand-made".into(),
        digest,
        diff_id: Digest::of(tar_bytes),
        size: gz.len() as u64,
        uncompressed_size: tar_bytes.len() as u64,
        entries: 0,
    }];
    archive_bytes(&image, &[], &blobs)
}

struct RawEntry {
    path: &'static str,
    kind: tar::EntryType,
    mtime: u64,
    uname: &'static str,
    /// Leave the uid/gid fields blank (not a number).
    no_ids: bool,
}

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: `set_path` refuses absolute and `..` paths.
        let name = &mut h.as_old_mut().name;
        name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        h.set_entry_type(e.kind);
        h.set_mode(if e.kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(e.mtime);
        h.set_size(0);
        h.set_username(e.uname).unwrap();
        if !e.no_ids {
            h.set_uid(0);
            h.set_gid(0);
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn checker_rejects_bad_layer_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tar::EntryType::Directory;
    let file = tar::EntryType::Regular;
    let e = |path, kind| RawEntry {
        path,
        kind,
        mtime: CREATED,
        uname: "",
        no_ids: false,
    };
    let ok = raw_tar(&[e("etc", dir), e("etc/passwd", file)]);
    validate_archive_bytes(&archive_of_layer(tmp.path(), &ok)).unwrap();

    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        ("absolute", vec![e("/etc", dir)]),
        ("`..`", vec![e("etc", dir), e("etc/../x", file)]),
        ("parent", vec![e("etc/passwd", file)]),
        ("sorted", vec![e("b", dir), e("a", dir)]),
        ("sorted", vec![e("a", dir), e("a", dir)]),
        (
            "mtime",
            vec![RawEntry {
                mtime: 0,
                ..e("etc", dir)
            }],
        ),
        (
            "user name",
            vec![RawEntry {
                uname: "root",
                ..e("etc", dir)
            }],
        ),
        ("entry type", vec![e("dev", tar::EntryType::Char)]),
        (
            "not numeric",
            vec![RawEntry {
                no_ids: true,
                ..e("etc", dir)
            }],
        ),
    ];
    for (i, (want, entries)) in cases.into_iter().enumerate() {
        let sub = tmp.path().join(i.to_string());
        std::fs::create_dir(&sub).unwrap();
        let err = validate_archive_bytes(&archive_of_layer(&sub, &raw_tar(&entries)))
            .err()
            .unwrap_or_else(|| panic!("bad layer ({want}) went unnoticed"));
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }

    // A config whose diff_id is not the layer's.
    let gz = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&ok).unwrap();
        gz.finish().unwrap()
    };
    let sub = tmp.path().join("diff_id");
    std::fs::create_dir(&sub).unwrap();
    let blobs = BlobDir { root: sub.clone() };
    let digest = Digest::of(&gz);
    write_file(&blobs.path(&digest), &gz);
    let (mut image, _) = sample_image(&sub.join("sample"));
    image.layers = vec![LayerInfo {
        name: "hand-made".into(),
        digest,
        diff_id: Digest::of(&gz),
        size: gz.len() as u64,
        uncompressed_size: 0,
        entries: 0,
    }];
    let err = validate_archive_bytes(&archive_bytes(&image, &[], &blobs)).unwrap_err();
    assert!(err.contains("diff_id"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Independent clients.

#[test]
fn skopeo_reads_the_archive_as_oci_and_docker() {
    let Some(skopeo) = tool("skopeo") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(&tmp.path().join("build"));
    let path = tmp.path().join("one-tag.tar");
    write_file(&path, &archive_bytes(&image, &tags(&["hello:1.0"]), &blobs));
    validate_archive(&path).unwrap();
    let skopeo_cmd = || {
        let mut c = Command::new(&skopeo);
        // skopeo extracts oci-archives into a temporary directory.
        c.env("TMPDIR", tmp.path());
        c
    };

    let oci = format!("oci-archive:{}", path.display());
    let out = run(skopeo_cmd().args(["inspect", &oci]));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["Digest"], image.manifest_digest().to_string());
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(
        v["Layers"],
        serde_json::json!(image
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect::<Vec<_>>())
    );
    let raw = run(skopeo_cmd().args(["inspect", "--raw", &oci]));
    assert_eq!(raw, image.manifest_json());
    let raw_config = run(skopeo_cmd().args(["inspect", "--raw", "--config", &oci]));
    assert_eq!(raw_config, image.config_json());

    let docker = format!("docker-archive:{}", path.display());
    let raw = run(skopeo_cmd().args(["inspect", "--raw", &docker]));
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["config"]["digest"], image.id().to_string());
    assert_eq!(
        m["layers"].as_array().map(Vec::len),
        Some(image.layers.len())
    );
    let raw_config = run(skopeo_cmd().args(["inspect", "--raw", "--config", &docker]));
    assert_eq!(raw_config, image.config_json());
    // Copying out of the docker-archive reads every layer and checks it against the config.
    let copied = tmp.path().join("from-docker");
    run(skopeo_cmd().args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &docker,
        &format!("oci:{}:d", copied.display()),
    ]));

    // With several tags the OCI index has one entry per tag: pick one by its ref name.
    let path2 = tmp.path().join("two-tags.tar");
    write_file(
        &path2,
        &archive_bytes(
            &image,
            &tags(&["example.com/hello:1.0", "hello:latest"]),
            &blobs,
        ),
    );
    for tag in ["1.0", "latest"] {
        let out =
            run(skopeo_cmd().args(["inspect", &format!("oci-archive:{}:{tag}", path2.display())]));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Digest"], image.manifest_digest().to_string());
    }
    let out = run(skopeo_cmd().args([
        "inspect",
        "--raw",
        &format!("docker-archive:{}", path2.display()),
    ]));
    assert!(!out.is_empty());
}

#[test]
fn umoci_unpacks_the_image_with_the_right_files_and_modes() {
    let (Some(skopeo), Some(umoci)) = (tool("skopeo"), tool("umoci")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (image, blobs) = sample_image(&tmp.path().join("build"));
    let path = tmp.path().join("image.tar");
    write_file(&path, &archive_bytes(&image, &tags(&["hello:1.0"]), &blobs));
    let layout = tmp.path().join("layout");
    run(Command::new(&skopeo).env("TMPDIR", tmp.path()).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &format!("oci-archive:{}", path.display()),
        &format!("oci:{}:t", layout.display()),
    ]));
    let bundle = tmp.path().join("bundle");
    let root = is_root();
    let mut cmd = Command::new(&umoci);
    cmd.arg("unpack");
    if !root {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle);
    run(&mut cmd);

    let rootfs = bundle.join("rootfs");
    let meta = |p: &str| {
        std::fs::symlink_metadata(rootfs.join(p))
            .unwrap_or_else(|e| panic!("{p} is not in the unpacked image: {e}"))
    };
    let mode = |p: &str| meta(p).mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("bin/hello"), 0o755);
    assert_eq!(mode("app/etc/greeting.txt"), 0o644);
    assert_eq!(mode("app/secret"), 0o600);
    assert_eq!(
        std::fs::read(rootfs.join("app/etc/greeting.txt")).unwrap(),
        b"hello, world\n"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("app/etc/greeting")).unwrap(),
        PathBuf::from("greeting.txt")
    );
    assert_eq!(
        std::fs::read(rootfs.join("app/etc/data.bin")).unwrap(),
        std::fs::read(tmp.path().join("build/src/etc/data.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(rootfs.join(support::LONG_PATH.trim_start_matches('/'))).unwrap(),
        b"long\n"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("app/long-link")).unwrap(),
        PathBuf::from(support::LONG_PATH)
    );
    if root {
        assert_eq!((meta("app/tmp").uid(), meta("app/tmp").gid()), (1000, 1000));
        assert_eq!(meta("app/secret").uid(), 1000);
        assert_eq!(meta("bin/hello").uid(), 0);
    }
    // umoci's runtime config carries the image's run configuration.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(config["process"]["cwd"], "/app");
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/bin/hello", "start"])
    );
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Reproducibility across hosts: paths, mtimes and umask of the sources do not matter.

#[test]
fn same_tree_in_other_places_with_other_mtimes_and_modes_gives_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let build = |name: &str, text_mode: u32, exec_mode: u32, mtime_secs: u64| {
        let dir = tmp.path().join(name);
        let src = dir.join("some/deeper/src");
        support::sample_tree(&src, text_mode);
        std::fs::set_permissions(
            src.join("bin/hello.sh"),
            PermissionsExt::from_mode(exec_mode),
        )
        .unwrap();
        std::fs::set_permissions(src.join("etc"), PermissionsExt::from_mode(0o775)).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs);
        for f in ["bin/hello.sh", "etc/greeting.txt", "etc/data.bin"] {
            let file = std::fs::File::options()
                .write(true)
                .open(src.join(f))
                .unwrap();
            file.set_times(
                std::fs::FileTimes::new()
                    .set_modified(when)
                    .set_accessed(when),
            )
            .unwrap();
        }
        let blobs = BlobDir {
            root: dir.join("blobs"),
        };
        let image = image_core::build::build(
            &image_core::fs::HostFs::new("/"),
            &support::sample_plan(&src),
            CREATED,
            6,
            &blobs,
            &mut |_| true,
        )
        .unwrap();
        (image, blobs)
    };
    let (a, blobs_a) = build("first", 0o664, 0o775, 946_684_800); // 2000-01-01
    let (b, blobs_b) = build("second-host", 0o644, 0o755, 1_600_000_000); // 2020-09-13
    assert_eq!(
        a.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
        b.layers.iter().map(|l| &l.digest).collect::<Vec<_>>()
    );
    assert_eq!(a.id(), b.id());
    assert_eq!(a.manifest_digest(), b.manifest_digest());
    let bytes_a = archive_bytes(&a, &tags(&["hello:1"]), &blobs_a);
    let bytes_b = archive_bytes(&b, &tags(&["hello:1"]), &blobs_b);
    assert!(bytes_a == bytes_b, "archives differ");

    // Another creation time changes every mtime, hence every digest.
    let src = tmp.path().join("first/some/deeper/src");
    let later = image_core::build::build(
        &image_core::fs::HostFs::new("/"),
        &support::sample_plan(&src),
        CREATED + 1,
        6,
        &BlobDir {
            root: tmp.path().join("later"),
        },
        &mut |_| true,
    )
    .unwrap();
    assert_ne!(later.layers[0].diff_id, a.layers[0].diff_id);
    assert_ne!(later.id(), a.id());
}

#[test]
fn a_layer_spec_with_a_non_directory_parent_is_refused() {
    use image_core::layer::{write_layer, Entry, LayerSpec, Source};
    let fs = image_core::fs::HostFs::new("/");
    for parent in [
        Entry::new("/a", Source::Bytes(b"a file".to_vec()), 0o644),
        Entry::new("/a", Source::Symlink("usr/lib".into()), 0o777),
    ] {
        let spec = LayerSpec {
            name: "bad".into(),
            entries: vec![
                parent.clone(),
                Entry::new("/a/b", Source::Bytes(b"child".to_vec()), 0o644),
            ],
        };
        let written = write_layer(&fs, &spec, CREATED, 1, Vec::new(), &mut |_| true);
        if let Ok((_, gz)) = &written {
            let mut tar_bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(gz.as_slice()),
                &mut tar_bytes,
            )
            .unwrap();
            let why = support::check_layer_tar(&tar_bytes, CREATED).unwrap_err();
            panic!(
                "{:?} as a parent was accepted; the layer is invalid: {why}",
                parent.source
            );
        }
    }
}

/// The layer cache tests' bench: the sample tree in a temporary directory and a layer cache
/// beside it.
struct CacheBench {
    tmp: tempfile::TempDir,
    src: PathBuf,
    cache: image_core::build::LayerCache,
    runs: usize,
}

impl CacheBench {
    fn new() -> CacheBench {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        support::sample_tree(&src, 0o644);
        let cache = image_core::build::LayerCache {
            dir: tmp.path().join("layers"),
        };
        CacheBench {
            tmp,
            src,
            cache,
            runs: 0,
        }
    }

    /// Build the sample plan over `fs` at level 6, into blobs of this run's own, with the cache
    /// or without it. Returns the image, its blobs and the names of the layers the cache served.
    fn build(
        &mut self,
        fs: &dyn image_core::fs::Fs,
        cached: bool,
    ) -> (Image, BlobDir, Vec<String>) {
        use image_core::build::{build_cached, Progress};
        self.runs += 1;
        let blobs = BlobDir {
            root: self.tmp.path().join(format!("blobs-{}", self.runs)),
        };
        let mut reused = Vec::new();
        let image = build_cached(
            fs,
            &support::sample_plan(&self.src),
            CREATED,
            6,
            &blobs,
            cached.then_some(&self.cache),
            &mut |p| {
                if let Progress::Reused { name, .. } = p {
                    reused.push(name);
                }
                true
            },
        )
        .unwrap();
        (image, blobs, reused)
    }
}

#[test]
fn the_layer_cache_reuses_identical_layers_and_never_changes_the_image() {
    let mut bench = CacheBench::new();
    let fs = image_core::fs::HostFs::new("/");

    let (plain, plain_blobs, none) = bench.build(&fs, false);
    assert!(none.is_empty());
    let (first, _, reused) = bench.build(&fs, true);
    assert!(
        reused.is_empty(),
        "an empty cache reuses nothing: {reused:?}"
    );
    assert_eq!(first.manifest_digest(), plain.manifest_digest());

    // Same inputs: every layer comes from the cache, and the image is the same.
    let (second, second_blobs, reused) = bench.build(&fs, true);
    assert_eq!(reused, vec!["runtime", "app"]);
    assert_eq!(second.manifest_digest(), plain.manifest_digest());
    assert!(
        archive_bytes(&second, &tags(&["hello:1"]), &second_blobs)
            == archive_bytes(&plain, &tags(&["hello:1"]), &plain_blobs),
        "archives differ"
    );

    // One file of the app changes: only the runtime layer is reused.
    std::fs::write(bench.src.join("etc/greeting.txt"), b"howdy\n").unwrap();
    let (changed, _, reused) = bench.build(&fs, true);
    assert_eq!(reused, vec!["runtime"]);
    assert_eq!(changed.layers[0].digest, plain.layers[0].digest);
    assert_ne!(changed.layers[1].diff_id, plain.layers[1].diff_id);

    // A damaged entry is not used (and is removed): the layer is compressed again, the image
    // is unchanged.
    let entries: Vec<_> = std::fs::read_dir(&bench.cache.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let runtime_entry = bench
        .cache
        .entry(&plain.layers[0].diff_id, 6, &plain.layers[0].digest);
    assert!(runtime_entry.exists(), "{runtime_entry:?} in {entries:?}");
    let mut bytes = std::fs::read(&runtime_entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::remove_file(&runtime_entry).unwrap(); // break the hard link to a run's blob
    std::fs::write(&runtime_entry, &bytes).unwrap();
    let (repaired, _, reused) = bench.build(&fs, true);
    assert_eq!(reused, vec!["app"]);
    assert_eq!(repaired.manifest_digest(), changed.manifest_digest());

    // Pruning keeps the most recently used entries, and removes the temporary files of runs
    // killed while putting an entry in (not those of live ones).
    let dead = bench.cache.dir.join(".abc.999999999.partial");
    let live = bench
        .cache
        .dir
        .join(format!(".abc.{}.partial", std::process::id()));
    std::fs::write(&dead, b"x").unwrap();
    std::fs::write(&live, b"x").unwrap();
    bench.cache.prune(2).unwrap();
    assert!(!dead.exists() && live.exists());
    std::fs::remove_file(&live).unwrap();
    let left: Vec<_> = std::fs::read_dir(&bench.cache.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let app_entry = bench
        .cache
        .entry(&changed.layers[1].diff_id, 6, &changed.layers[1].digest);
    assert!(app_entry.exists(), "{left:?}");
}

/// Another gzip encoding of the right tar (another level, another encoder version, a damaged
/// or hand-made entry) decompresses to the same `diff_id`, but a cache hit must give the bytes a
/// fresh compression gives, or the manifest digest would change while the image ID does not.
#[test]
fn the_layer_cache_never_serves_another_encoding_of_the_right_tar() {
    use image_core::build::encoder_fingerprint;
    let mut bench = CacheBench::new();
    let fs = image_core::fs::HostFs::new("/");
    let (plain, plain_blobs, _) = bench.build(&fs, false);
    bench.build(&fs, true);
    let cache = bench.cache.clone();
    let layer = &plain.layers[0];
    let tar = {
        let gz = std::fs::read(plain_blobs.path(&layer.digest)).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut tar)
            .unwrap();
        tar
    };
    let foreign = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    };
    assert_ne!(Digest::of(&foreign), layer.digest, "a different encoding");
    let ours = cache.entry(&layer.diff_id, 6, &layer.digest);
    let put = |name: &Path| {
        for e in std::fs::read_dir(&cache.dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&layer.diff_id.hex())
            {
                std::fs::remove_file(p).unwrap();
            }
        }
        std::fs::write(name, &foreign).unwrap();
    };

    // 1. The foreign bytes under our entry's name (a damaged or replaced entry).
    // 2. Under a name that records their own digest, with another encoder's fingerprint.
    // 3. Under the name of an older cache layout (diff_id and level only).
    let other_encoder = cache.dir.join(format!(
        "{}.gz6-{}.{}",
        layer.diff_id.hex(),
        "0".repeat(encoder_fingerprint(6).len()),
        Digest::of(&foreign).hex()
    ));
    let old_layout = cache.dir.join(format!("{}.gz6", layer.diff_id.hex()));
    for name in [&ours, &other_encoder, &old_layout] {
        put(name);
        let (image, _, reused) = bench.build(&fs, true);
        assert!(
            !reused.contains(&"runtime".to_string()),
            "{name:?} was served: {reused:?}"
        );
        assert_eq!(image.layers[0].digest, layer.digest, "{name:?}");
        assert_eq!(image.manifest_digest(), plain.manifest_digest(), "{name:?}");
        assert!(ours.exists(), "a fresh entry replaces {name:?}");
        let (_, _, reused) = bench.build(&fs, true);
        assert!(reused.contains(&"runtime".to_string()));
    }
}

/// A layer whose files settled is recognised by their identities, without reading them; a file
/// written since (even with the same size) is read again; a layer with a file written less
/// than `SETTLED` ago is read in full every time and no fingerprint is recorded for it.
#[test]
fn the_layer_cache_recognises_settled_files_without_reading_them() {
    use image_core::build::SETTLED;
    use image_core::fs::{Fs, HostFs, Identity, Meta};
    use std::io::Read;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// The host, counting the files opened.
    struct Counting(HostFs, Mutex<Vec<PathBuf>>);
    impl Fs for Counting {
        fn lstat(&self, p: &Path) -> std::io::Result<Meta> {
            self.0.lstat(p)
        }
        fn read_link(&self, p: &Path) -> std::io::Result<PathBuf> {
            self.0.read_link(p)
        }
        fn read_dir(&self, p: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
            self.0.read_dir(p)
        }
        fn open(&self, p: &Path) -> std::io::Result<Box<dyn Read + Send>> {
            self.1.lock().unwrap().push(p.to_path_buf());
            self.0.open(p)
        }
        fn identity(&self, p: &Path) -> Option<Vec<Identity>> {
            self.0.identity(p)
        }
    }

    let mut bench = CacheBench::new();
    let (cache, src) = (bench.cache.clone(), bench.src.clone());
    let fs = Counting(HostFs::new("/"), Mutex::new(Vec::new()));
    let mut build = || {
        fs.1.lock().unwrap().clear();
        let (image, _, reused) = bench.build(&fs, true);
        let opened = fs.1.lock().unwrap().len();
        (image, reused, opened)
    };
    let inputs = || {
        std::fs::read_dir(cache.inputs_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // Just written: the files are read (compressed once, then hashed), nothing is recorded.
    let (first, _, opened) = build();
    assert!(opened > 0);
    let (again, reused, opened) = build();
    assert_eq!(reused, vec!["runtime", "app"]);
    assert!(opened > 0, "unsettled files are read");
    assert_eq!(inputs(), 0, "no fingerprint of unsettled files");
    assert_eq!(again.manifest_digest(), first.manifest_digest());

    // Settled: read once more (and recorded), then recognised without opening a file.
    std::thread::sleep(SETTLED + std::time::Duration::from_millis(100));
    let (_, reused, _) = build();
    assert_eq!(reused, vec!["runtime", "app"]);
    assert_eq!(inputs(), 2);
    let (settled, reused, opened) = build();
    assert_eq!(reused, vec!["runtime", "app"]);
    assert_eq!(opened, 0, "every layer recognised by its files' identities");
    assert_eq!(settled.manifest_digest(), first.manifest_digest());

    // The same size, other bytes: the app layer is read again and is another layer.
    std::fs::write(src.join("etc/greeting.txt"), b"howdy, world\n").unwrap();
    assert_eq!(
        std::fs::metadata(src.join("etc/greeting.txt"))
            .unwrap()
            .len(),
        "hello, world\n".len() as u64
    );
    let (changed, reused, opened) = build();
    assert_eq!(reused, vec!["runtime"]);
    assert!(opened > 0);
    assert_eq!(changed.layers[0].digest, first.layers[0].digest);
    assert_ne!(changed.layers[1].diff_id, first.layers[1].diff_id);
    let (plain, _, _) = bench.build(&HostFs::new("/"), false);
    assert_eq!(changed.manifest_digest(), plain.manifest_digest());
}
