//! Shared test helpers: an independent invariant checker for image archives
//! ([`validate_archive`], in the spirit of go-containerregistry's `validate.Image`), a small
//! sample image, lookups for external tools, gcc, and a filesystem that hides some of its
//! files ([`Hiding`]).
//!
//! The checker reads archives with `tar`, `flate2`, `sha2` and `serde_json` directly and never
//! calls `image_core`, so it does not share bugs with the code it checks. It is included by
//! `image_core`'s and `image_io`'s integration tests (`#[path]`), so every helper is not used by
//! every test crate.
#![allow(dead_code)]

pub mod builders;
pub mod prereq;

use flate2::read::GzDecoder;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a layer tar, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path in the image, without a leading `/` or trailing `/`.
    pub path: String,
    /// `'f'` regular file, `'d'` directory, `'l'` symlink.
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Symlink target.
    pub link: Option<String>,
    /// File contents.
    pub data: Vec<u8>,
}

/// A layer as read back from an archive.
#[derive(Debug, Clone)]
pub struct CheckedLayer {
    /// Blob digest (compressed).
    pub digest: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// Entries in archive order.
    pub entries: Vec<TarEntry>,
}

impl CheckedLayer {
    /// The entry at image path `path` (leading `/` optional).
    pub fn get(&self, path: &str) -> Option<&TarEntry> {
        let path = path.trim_start_matches('/');
        self.entries.iter().find(|e| e.path == path)
    }
}

/// What [`validate_archive`] found, once every invariant held.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The OCI manifest's digest.
    pub manifest_digest: String,
    /// The config's digest (the engine's image ID).
    pub config_digest: String,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// The config bytes.
    pub config_bytes: Vec<u8>,
    /// The config, parsed.
    pub config: Value,
    /// `created`, in seconds since the epoch.
    pub created: u64,
    /// `RepoTags` of `manifest.json`.
    pub repo_tags: Vec<String>,
    /// `org.opencontainers.image.ref.name` of each index entry, if any.
    pub ref_names: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<CheckedLayer>,
}

impl Checked {
    /// The topmost entry for `path` across all layers (what a container sees), if any.
    pub fn file(&self, path: &str) -> Option<&TarEntry> {
        self.layers.iter().rev().find_map(|l| l.get(path))
    }
}

/// Open the archive at `path` and check every invariant; see [`validate_archive_bytes`].
pub fn validate_archive(path: &Path) -> Result<Checked, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    validate_archive_bytes(&bytes)
}

/// Check an archive written by `image_core::archive::write_archive` from scratch:
///
/// - the outer tar holds only `oci-layout`, `index.json`, `manifest.json`, `blobs/`,
///   `blobs/sha256/` and blobs, each once, with mtime = the image's `created`;
/// - every blob's sha256 equals its file name and every blob is referenced;
/// - `oci-layout` is version 1.0.0; `index.json` → manifest digest, size and media type;
///   manifest → config and layer digests, sizes and media types;
/// - config `rootfs.diff_ids` = sha256 of each gunzipped layer, one history entry per layer;
/// - Docker `manifest.json` points at the same config and layers in the same order, and its
///   `RepoTags` agree with the index's `org.opencontainers.image.ref.name` annotations;
/// - every layer is gzip with header mtime 0, holds a readable tar of regular files,
///   directories and symlinks only, sorted by path bytes, with each parent directory before its
///   children, no absolute, `.` or `..` paths, every mtime = `created`, numeric uid/gid and empty
///   owner names.
pub fn validate_archive_bytes(bytes: &[u8]) -> Result<Checked, String> {
    let Outer {
        files,
        outer_mtimes,
    } = read_outer(bytes)?;
    let (blobs, mut unreferenced) = blob_map(&files)?;

    // index.json → manifest.
    let (manifest_digest, ref_names) = index_json(&files, &blobs, MANIFEST, "manifest")?;
    let ImagePart {
        manifest_bytes,
        config_digest,
        config_bytes,
        config,
        created,
        layers,
    } = check_image(&blobs, &mut unreferenced, &manifest_digest, &outer_mtimes)?;
    if !unreferenced.is_empty() {
        return Err(format!("blobs nothing refers to: {unreferenced:?}"));
    }

    // Docker manifest.json → the same blobs.
    let d = docker_manifest(&files)?;
    let want_config = format!("blobs/sha256/{}", hex_of(&config_digest));
    expect(
        &d["Config"],
        &Value::from(want_config),
        "manifest.json Config",
    )?;
    expect_docker_layers(&d, &layers)?;
    let repo_tags = repo_tags(&d, &ref_names)?;

    Ok(Checked {
        manifest_digest,
        config_digest,
        manifest: manifest_bytes,
        config_bytes,
        config,
        created,
        repo_tags,
        ref_names,
        layers,
    })
}

/// One platform's image in a multi-platform archive, as read back.
#[derive(Debug, Clone)]
pub struct IndexedImage {
    /// `os/architecture[/variant]` of its index entry (equal to its config's).
    pub platform: String,
    /// Its manifest's digest.
    pub manifest_digest: String,
    /// Its config's digest (the engine's image ID).
    pub config_digest: String,
    /// Its layers, bottom first.
    pub layers: Vec<CheckedLayer>,
}

/// What [`validate_index_archive_bytes`] found, once every invariant held.
#[derive(Debug, Clone)]
pub struct CheckedIndex {
    /// The digest of the image index `index.json` names.
    pub index_digest: String,
    /// The image index's bytes.
    pub index: Vec<u8>,
    /// Its images, in its order.
    pub images: Vec<IndexedImage>,
    /// The config digest of the one image Docker's `manifest.json` lists.
    pub loaded_config: String,
    /// `RepoTags` of `manifest.json`.
    pub repo_tags: Vec<String>,
    /// `org.opencontainers.image.ref.name` of each `index.json` entry.
    pub ref_names: Vec<String>,
}

/// Check a multi-platform archive (`image_core::archive::write_index_archive`) from scratch:
/// the outer tar and blobs as [`validate_archive_bytes`] checks them; `index.json` names one
/// image index (nested), once per tag; that index lists image manifests, each with a
/// `platform` equal to its config's, in (os, architecture, variant) order, each platform once;
/// every image checked as [`validate_archive_bytes`] checks its one image; every blob
/// referenced; Docker's `manifest.json` lists exactly one of the images (its config and layers)
/// with `RepoTags` agreeing with the ref names.
pub fn validate_index_archive_bytes(bytes: &[u8]) -> Result<CheckedIndex, String> {
    let Outer {
        files,
        outer_mtimes,
    } = read_outer(bytes)?;
    let (blobs, mut unreferenced) = blob_map(&files)?;

    // index.json → the image index (nested), once per tag.
    let (index_digest, ref_names) = index_json(&files, &blobs, INDEX, "nested index")?;
    unreferenced.remove(&index_digest);
    let index_bytes = blobs[&index_digest].to_vec();
    let index: Value =
        serde_json::from_slice(&index_bytes).map_err(|e| format!("index is not JSON: {e}"))?;
    let descs = index_entries(&index, "index")?;
    let mut images: Vec<IndexedImage> = Vec::new();
    let mut keys = Vec::new();
    for d in descs {
        let digest = descriptor(&blobs, d, MANIFEST, "index entry", "manifest")?;
        let part = check_image(&blobs, &mut unreferenced, &digest, &outer_mtimes)?;
        let p = &d["platform"];
        for key in ["architecture", "os", "variant"] {
            expect(
                &p[key],
                &part.config[key],
                &format!("platform.{key} of {digest}"),
            )?;
        }
        let key = (
            str_of(&p["os"], "platform.os")?.to_string(),
            str_of(&p["architecture"], "platform.architecture")?.to_string(),
            p["variant"].as_str().map(str::to_string),
        );
        if keys.contains(&key) {
            return Err(format!("the index lists {key:?} twice"));
        }
        keys.push(key.clone());
        let platform = match &key.2 {
            Some(v) => format!("{}/{}/{v}", key.0, key.1),
            None => format!("{}/{}", key.0, key.1),
        };
        images.push(IndexedImage {
            platform,
            manifest_digest: digest,
            config_digest: part.config_digest,
            layers: part.layers,
        });
    }
    let mut sorted = keys.clone();
    sorted.sort();
    if sorted != keys {
        return Err(format!(
            "the index's entries are not in (os, architecture, variant) order: {keys:?}"
        ));
    }
    if !unreferenced.is_empty() {
        return Err(format!("blobs nothing refers to: {unreferenced:?}"));
    }

    let d = docker_manifest(&files)?;
    let config = str_of(&d["Config"], "manifest.json Config")?;
    let loaded = images
        .iter()
        .find(|i| format!("blobs/sha256/{}", hex_of(&i.config_digest)) == config)
        .ok_or_else(|| format!("manifest.json Config {config} is none of the index's images"))?;
    expect_docker_layers(&d, &loaded.layers)?;
    let repo_tags = repo_tags(&d, &ref_names)?;
    Ok(CheckedIndex {
        index_digest,
        index: index_bytes,
        loaded_config: loaded.config_digest.clone(),
        images,
        repo_tags,
        ref_names,
    })
}

/// The outer tar of an archive: its files by path, and every entry's mtime.
struct Outer {
    files: BTreeMap<String, Vec<u8>>,
    outer_mtimes: Vec<(String, u64)>,
}

/// Read the outer tar: only `oci-layout` (version 1.0.0), `index.json`, `manifest.json`,
/// `blobs/`, `blobs/sha256/` and blobs, each once.
fn read_outer(bytes: &[u8]) -> Result<Outer, String> {
    // The outer tar.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut outer_mtimes: Vec<(String, u64)> = Vec::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().map_err(|e| format!("outer tar: {e}"))? {
        let mut e = e.map_err(|e| format!("outer tar entry: {e}"))?;
        let path = String::from_utf8(e.path_bytes().into_owned())
            .map_err(|_| "outer tar: non-UTF-8 path".to_string())?;
        let path = path.trim_end_matches('/').to_string();
        let mtime = e
            .header()
            .mtime()
            .map_err(|e| format!("{path}: mtime: {e}"))?;
        outer_mtimes.push((path.clone(), mtime));
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                if !dirs.insert(path.clone()) {
                    return Err(format!("outer tar: {path} appears twice"));
                }
            }
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                e.read_to_end(&mut data)
                    .map_err(|e| format!("outer tar: reading {path}: {e}"))?;
                if files.insert(path.clone(), data).is_some() {
                    return Err(format!("outer tar: {path} appears twice"));
                }
            }
            other => return Err(format!("outer tar: {path} has entry type {other:?}")),
        }
    }
    for d in ["blobs", "blobs/sha256"] {
        if !dirs.contains(d) {
            return Err(format!("outer tar: directory {d}/ is missing"));
        }
    }
    if dirs.len() != 2 {
        return Err(format!("outer tar: unexpected directories {dirs:?}"));
    }

    // oci-layout.
    let layout = json(&files, "oci-layout")?;
    if layout != serde_json::json!({"imageLayoutVersion": "1.0.0"}) {
        return Err(format!("oci-layout is {layout}"));
    }

    Ok(Outer {
        files,
        outer_mtimes,
    })
}

/// An archive's blobs by digest.
type Blobs<'a> = BTreeMap<String, &'a Vec<u8>>;

/// The blobs of an archive by digest, each checked to have the digest its name says, and the
/// set of their digests (for the caller to take each referenced one out of).
fn blob_map(files: &BTreeMap<String, Vec<u8>>) -> Result<(Blobs<'_>, BTreeSet<String>), String> {
    // Blobs: name = digest.
    let mut blobs: BTreeMap<String, &Vec<u8>> = BTreeMap::new();
    for (path, data) in files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = sha256(data);
            if digest != format!("sha256:{hex}") {
                return Err(format!("blob {path} has digest {digest}"));
            }
            blobs.insert(digest, data);
        } else if !["oci-layout", "index.json", "manifest.json"].contains(&path.as_str()) {
            return Err(format!("outer tar: unexpected file {path}"));
        }
    }
    let digests = blobs.keys().cloned().collect();
    Ok((blobs, digests))
}

/// One image of an archive, checked from its manifest down.
struct ImagePart {
    manifest_bytes: Vec<u8>,
    config_digest: String,
    config_bytes: Vec<u8>,
    config: Value,
    created: u64,
    layers: Vec<CheckedLayer>,
}

/// Check the image whose manifest is `manifest_digest`: manifest → config → layers (digests,
/// sizes, media types, `diff_id`s, history, every layer tar), and the outer tar's mtimes
/// against its `created`. Removes every blob it reads from `unreferenced`.
fn check_image(
    blobs: &BTreeMap<String, &Vec<u8>>,
    unreferenced: &mut BTreeSet<String>,
    manifest_digest: &str,
    outer_mtimes: &[(String, u64)],
) -> Result<ImagePart, String> {
    let blob = |d: &str, size: Option<u64>, what: &str| blob_of(blobs, d, size, what);
    let manifest_bytes = blob(manifest_digest, None, "manifest")?;
    unreferenced.remove(manifest_digest);
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| format!("manifest is not JSON: {e}"))?;
    expect(
        &manifest["schemaVersion"],
        &Value::from(2),
        "manifest schemaVersion",
    )?;
    expect(
        &manifest["mediaType"],
        &Value::from("application/vnd.oci.image.manifest.v1+json"),
        "manifest mediaType",
    )?;

    // manifest → config.
    let c = &manifest["config"];
    expect(
        &c["mediaType"],
        &Value::from("application/vnd.oci.image.config.v1+json"),
        "config mediaType",
    )?;
    let config_digest = str_of(&c["digest"], "config digest")?.to_string();
    let config_bytes = blob(
        &config_digest,
        Some(u64_of(&c["size"], "config size")?),
        "config",
    )?;
    unreferenced.remove(&config_digest);
    let config: Value =
        serde_json::from_slice(&config_bytes).map_err(|e| format!("config is not JSON: {e}"))?;
    let created_str = str_of(&config["created"], "config created")?;
    let created = parse_rfc3339(created_str)?;
    for key in ["architecture", "os"] {
        str_of(&config[key], key)?;
    }
    for (path, mtime) in outer_mtimes {
        if *mtime != created {
            return Err(format!(
                "outer tar: {path} has mtime {mtime}, the image was created at {created}"
            ));
        }
    }
    expect(
        &config["rootfs"]["type"],
        &Value::from("layers"),
        "rootfs.type",
    )?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("config has no rootfs.diff_ids")?;
    let history_layers = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .count()
        })
        .unwrap_or(0);

    // manifest → layers.
    let layer_descs = manifest["layers"]
        .as_array()
        .ok_or("manifest has no layers array")?;
    if layer_descs.len() != diff_ids.len() {
        return Err(format!(
            "manifest has {} layers, config {} diff_ids",
            layer_descs.len(),
            diff_ids.len()
        ));
    }
    if history_layers != diff_ids.len() {
        return Err(format!(
            "config history describes {history_layers} layers, rootfs has {}",
            diff_ids.len()
        ));
    }
    let mut layers = Vec::new();
    for (i, (desc, diff_id)) in layer_descs.iter().zip(diff_ids).enumerate() {
        expect(
            &desc["mediaType"],
            &Value::from("application/vnd.oci.image.layer.v1.tar+gzip"),
            "layer mediaType",
        )?;
        let digest = str_of(&desc["digest"], "layer digest")?.to_string();
        let gz = blob(&digest, Some(u64_of(&desc["size"], "layer size")?), "layer")?;
        unreferenced.remove(&digest);
        if gz.len() < 10 || gz[..2] != [0x1f, 0x8b] {
            return Err(format!("layer {i} ({digest}) is not gzip"));
        }
        if gz[4..8] != [0, 0, 0, 0] {
            return Err(format!("layer {i} ({digest}): gzip header mtime is not 0"));
        }
        let mut tar_bytes = Vec::new();
        GzDecoder::new(gz.as_slice())
            .read_to_end(&mut tar_bytes)
            .map_err(|e| format!("layer {i} ({digest}): gunzip: {e}"))?;
        let want = str_of(diff_id, "diff_id")?;
        let got = sha256(&tar_bytes);
        if got != want {
            return Err(format!(
                "layer {i}: diff_id {want} in config, gunzipped layer is {got}"
            ));
        }
        let entries =
            check_layer_tar(&tar_bytes, created).map_err(|e| format!("layer {i}: {e}"))?;
        layers.push(CheckedLayer {
            digest,
            diff_id: got,
            entries,
        });
    }
    Ok(ImagePart {
        manifest_bytes,
        config_digest,
        config_bytes,
        config,
        created,
        layers,
    })
}

/// Check one uncompressed layer tar; returns its entries.
pub fn check_layer_tar(tar_bytes: &[u8], created: u64) -> Result<Vec<TarEntry>, String> {
    let mut out: Vec<TarEntry> = Vec::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().map_err(|e| format!("tar: {e}"))? {
        let mut e = e.map_err(|e| format!("tar entry: {e}"))?;
        let raw = e.path_bytes().into_owned();
        let path = String::from_utf8(raw).map_err(|_| "non-UTF-8 path".to_string())?;
        if path.starts_with('/') {
            return Err(format!("{path}: absolute path"));
        }
        let trimmed = path.trim_end_matches('/').to_string();
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("{path:?}: empty, `.` or `..` component"));
        }
        if let Some(prev) = out.last() {
            if prev.path.as_bytes() >= trimmed.as_bytes() {
                return Err(format!(
                    "{trimmed} comes after {}: entries are not sorted by path bytes (or repeat)",
                    prev.path
                ));
            }
        }
        if let Some((parent, _)) = trimmed.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(format!(
                    "{trimmed} comes before its parent directory {parent}"
                ));
            }
        }
        let h = e.header();
        let mtime = h.mtime().map_err(|e| format!("{trimmed}: mtime: {e}"))?;
        if mtime != created {
            return Err(format!(
                "{trimmed}: mtime {mtime}, image created at {created}"
            ));
        }
        let uid = h
            .uid()
            .map_err(|e| format!("{trimmed}: uid is not numeric: {e}"))?;
        let gid = h
            .gid()
            .map_err(|e| format!("{trimmed}: gid is not numeric: {e}"))?;
        for (what, name) in [("user", h.username_bytes()), ("group", h.groupname_bytes())] {
            if name.is_some_and(|n| !n.is_empty()) {
                return Err(format!(
                    "{trimmed}: {what} name {:?} (must be empty)",
                    String::from_utf8_lossy(name.unwrap_or_default())
                ));
            }
        }
        let mode = h.mode().map_err(|e| format!("{trimmed}: mode: {e}"))?;
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            other => return Err(format!("{trimmed}: entry type {other:?}")),
        };
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        if kind == 'l' && link.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{trimmed}: symlink without a target"));
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .map_err(|e| format!("{trimmed}: reading: {e}"))?;
        if kind == 'd' {
            dirs.insert(trimmed.clone());
        }
        out.push(TarEntry {
            path: trimmed,
            kind,
            mode,
            uid,
            gid,
            link,
            data,
        });
    }
    Ok(out)
}

/// The media type of an image manifest.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an image index.
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The blob `d`, checked to be stored with the `size` recorded for it (when one is).
fn blob_of(
    blobs: &BTreeMap<String, &Vec<u8>>,
    d: &str,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>, String> {
    let b = blobs
        .get(d)
        .ok_or_else(|| format!("{what} {d} is not in blobs/sha256"))?;
    if let Some(size) = size {
        if b.len() as u64 != size {
            return Err(format!(
                "{what} {d}: size {size} recorded, {} stored",
                b.len()
            ));
        }
    }
    Ok(b.to_vec())
}

/// The entries of the image index `index` (`what`: where it is): schema version 2, the index
/// media type, at least one entry.
fn index_entries<'a>(index: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    expect(
        &index["schemaVersion"],
        &Value::from(2),
        &format!("{what} schemaVersion"),
    )?;
    expect(
        &index["mediaType"],
        &Value::from(INDEX),
        &format!("{what} mediaType"),
    )?;
    index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("{what} lists no manifests"))
}

/// The digest a descriptor of an index (`what`) names: of media type `media_type`, a blob
/// (`blob_what`) stored with the size the descriptor records.
fn descriptor(
    blobs: &BTreeMap<String, &Vec<u8>>,
    d: &Value,
    media_type: &str,
    what: &str,
    blob_what: &str,
) -> Result<String, String> {
    expect(
        &d["mediaType"],
        &Value::from(media_type),
        &format!("{what} mediaType"),
    )?;
    let digest = str_of(&d["digest"], &format!("{what} digest"))?;
    let size = u64_of(&d["size"], &format!("{what} size"))?;
    blob_of(blobs, digest, Some(size), blob_what)?;
    Ok(digest.to_string())
}

/// `index.json`: every entry names the same blob of media type `media_type` (`what`), once
/// per tag. Returns that digest and the entries' `org.opencontainers.image.ref.name`s.
fn index_json(
    files: &BTreeMap<String, Vec<u8>>,
    blobs: &BTreeMap<String, &Vec<u8>>,
    media_type: &str,
    what: &str,
) -> Result<(String, Vec<String>), String> {
    let index = json(files, "index.json")?;
    let mut named: Option<String> = None;
    let mut ref_names = Vec::new();
    for e in index_entries(&index, "index.json")? {
        let digest = descriptor(
            blobs,
            e,
            media_type,
            &format!("index.json entry (a {what})"),
            what,
        )?;
        match &named {
            None => named = Some(digest),
            Some(d) if *d == digest => {}
            Some(d) => {
                return Err(format!(
                    "index.json names two different {what} blobs: {d} and {digest}"
                ))
            }
        }
        if let Some(name) = e["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            ref_names.push(name.to_string());
        }
    }
    Ok((named.expect("checked non-empty"), ref_names))
}

/// The one image Docker's `manifest.json` lists.
fn docker_manifest(files: &BTreeMap<String, Vec<u8>>) -> Result<Value, String> {
    match json(files, "manifest.json")? {
        Value::Array(mut a) if a.len() == 1 => Ok(a.remove(0)),
        _ => Err("manifest.json is not an array of one image".into()),
    }
}

/// `Layers` of a `manifest.json` image `d`: the blobs of `layers`, in order.
fn expect_docker_layers(d: &Value, layers: &[CheckedLayer]) -> Result<(), String> {
    let want: Vec<Value> = layers
        .iter()
        .map(|l| Value::from(format!("blobs/sha256/{}", hex_of(&l.digest))))
        .collect();
    expect(&d["Layers"], &Value::from(want), "manifest.json Layers")
}

/// `RepoTags` of a `manifest.json` image `d`, which must agree with the index's `ref_names`
/// (their tags, in order) when there are any.
fn repo_tags(d: &Value, ref_names: &[String]) -> Result<Vec<String>, String> {
    let repo_tags: Vec<String> = match &d["RepoTags"] {
        Value::Null => vec![],
        v => v
            .as_array()
            .ok_or("manifest.json RepoTags is not an array")?
            .iter()
            .map(|t| str_of(t, "RepoTags entry").map(str::to_string))
            .collect::<Result<_, _>>()?,
    };
    let tags: Vec<&str> = repo_tags
        .iter()
        .map(|t| t.rsplit_once(':').map_or("latest", |(_, tag)| tag))
        .collect();
    if !repo_tags.is_empty() && tags != ref_names {
        return Err(format!(
            "manifest.json RepoTags {repo_tags:?} disagree with index.json ref names {ref_names:?}"
        ));
    }
    Ok(repo_tags)
}

fn json(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Value, String> {
    let bytes = files
        .get(name)
        .ok_or_else(|| format!("{name} is missing"))?;
    serde_json::from_slice(bytes).map_err(|e| format!("{name} is not JSON: {e}"))
}

fn expect(got: &Value, want: &Value, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want}, found {got}"))
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what}: expected a string, found {v}"))
}

fn u64_of(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{what}: expected a size, found {v}"))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Parse `YYYY-MM-DDTHH:MM:SSZ` (the only form the writer produces) to seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("created {s:?} is not YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s[r].parse::<i64>().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (proleptic Gregorian), independent of the writer's inverse.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).map_err(|_| bad())
}

/// The path of an external tool, or `None` when it is not installed (see [`prereq::missing`]:
/// in CI that fails the test).
pub fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    prereq::missing(format!("{name} is not installed"));
    None
}

/// Run gcc with `args`, panicking with its output when it fails.
pub fn gcc(args: &[&str]) {
    cc("gcc", args)
}

/// Run the C compiler `compiler` (`gcc`, `musl-gcc`) with `args`, panicking with its output
/// when it fails.
pub fn cc(compiler: &str, args: &[&str]) {
    let out = std::process::Command::new(compiler)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem with some paths hidden (a base that lacks a package, a tree without some
/// files): each answers `NotFound` and is left out of its directory's listing.
pub struct Hiding<'a> {
    inner: &'a dyn image_core::fs::Fs,
    hide: Box<dyn Fn(&Path) -> bool + Send + Sync + 'a>,
}

impl<'a> Hiding<'a> {
    /// Hides every file whose name starts with one of `prefixes`, wherever it is.
    pub fn names(inner: &'a dyn image_core::fs::Fs, prefixes: &'a [&'a str]) -> Hiding<'a> {
        Hiding {
            inner,
            hide: Box::new(move |p: &Path| {
                p.file_name()
                    .is_some_and(|n| prefixes.iter().any(|h| n.to_string_lossy().starts_with(h)))
            }),
        }
    }

    /// Hides `paths` and everything under them.
    pub fn under(inner: &'a dyn image_core::fs::Fs, paths: Vec<PathBuf>) -> Hiding<'a> {
        Hiding {
            inner,
            hide: Box::new(move |p: &Path| paths.iter().any(|h| p.starts_with(h))),
        }
    }

    fn check(&self, p: &Path) -> std::io::Result<()> {
        if (self.hide)(p) {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "hidden"));
        }
        Ok(())
    }
}

impl image_core::fs::Fs for Hiding<'_> {
    fn lstat(&self, p: &Path) -> std::io::Result<image_core::fs::Meta> {
        self.check(p)?;
        self.inner.lstat(p)
    }
    fn read_link(&self, p: &Path) -> std::io::Result<PathBuf> {
        self.check(p)?;
        self.inner.read_link(p)
    }
    fn read_dir(&self, p: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        self.check(p)?;
        let mut names = self.inner.read_dir(p)?;
        names.retain(|n| self.check(&p.join(n)).is_ok());
        Ok(names)
    }
    fn open(&self, p: &Path) -> std::io::Result<Box<dyn Read + Send>> {
        self.check(p)?;
        self.inner.open(p)
    }
}

/// Run `cmd`, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The image's timestamp in every sample: 2023-11-14T22:13:20Z.
pub const CREATED: u64 = 1_700_000_000;

/// A path longer than a tar header's name field.
pub const LONG_PATH: &str = "/app/lib/a_dependency_with_a_rather_long_name-10.20.30/priv/static/assets/some-fingerprinted-file-0123456789abcdef.js";

/// Write a small source tree into `dir`: an executable script, a text file and a data file,
/// with the given permission bits for the text file.
pub fn sample_tree(dir: &Path, text_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("bin/hello.sh"), b"#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(dir.join("bin/hello.sh"), PermissionsExt::from_mode(0o775)).unwrap();
    std::fs::write(dir.join("etc/greeting.txt"), b"hello, world\n").unwrap();
    std::fs::set_permissions(
        dir.join("etc/greeting.txt"),
        PermissionsExt::from_mode(text_mode),
    )
    .unwrap();
    let data: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("etc/data.bin"), data).unwrap();
}

/// A two-layer plan over [`sample_tree`] at `dir`.
pub fn sample_plan(dir: &Path) -> image_core::plan::Plan {
    use image_core::layer::{Entry, LayerSpec, Source};
    let base = LayerSpec {
        name: "runtime".into(),
        entries: vec![
            Entry::new("/bin/hello", Source::File(dir.join("bin/hello.sh")), 0o775),
            Entry::new("/tmp", Source::Dir, 0).owned(0o1777, 0, 0),
            Entry::new(
                "/etc/passwd",
                Source::Bytes(
                    b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n".to_vec(),
                ),
                0o644,
            ),
        ],
    };
    let app = LayerSpec {
        name: "app".into(),
        entries: vec![
            Entry::new(
                "/app/etc/greeting.txt",
                Source::File(dir.join("etc/greeting.txt")),
                0o664,
            ),
            Entry::new(
                "/app/etc/data.bin",
                Source::File(dir.join("etc/data.bin")),
                0o644,
            ),
            Entry::new(
                "/app/etc/greeting",
                Source::Symlink("greeting.txt".into()),
                0o777,
            ),
            Entry::new("/app/tmp", Source::Dir, 0).owned(0o755, 1000, 1000),
            Entry::new("/app/secret", Source::Bytes(b"s3cret\n".to_vec()), 0)
                .owned(0o600, 1000, 1000),
            // Longer than a tar header's 100-byte name field: GNU long-name entries.
            Entry::new(LONG_PATH, Source::Bytes(b"long\n".to_vec()), 0o644),
            Entry::new("/app/long-link", Source::Symlink(LONG_PATH.into()), 0o777),
        ],
    };
    image_core::plan::Plan {
        platform: image_core::elf::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        layers: vec![base, app],
        run_config: image_core::image::RunConfig {
            entrypoint: vec!["/bin/hello".into()],
            cmd: vec!["start".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/app".into(),
            user: "1000:1000".into(),
            labels: [(
                "org.opencontainers.image.title".to_string(),
                "hello".to_string(),
            )]
            .into(),
            exposed_ports: vec!["4000/tcp".into()],
            stop_signal: None,
        },
        runtime_files: vec![],
        notices: vec![],
        annotations: Default::default(),
        sbom: None,
    }
}

/// Build [`sample_plan`] over a fresh [`sample_tree`] in `dir/src`, blobs in `dir/blobs`.
pub fn sample_image(dir: &Path) -> (image_core::image::Image, image_core::archive::BlobDir) {
    let src = dir.join("src");
    sample_tree(&src, 0o664);
    let blobs = image_core::archive::BlobDir {
        root: dir.join("blobs"),
    };
    let image = image_core::build::build(
        &image_core::fs::HostFs::new("/"),
        &sample_plan(&src),
        CREATED,
        6,
        &blobs,
        &mut |_| true,
    )
    .expect("build the sample image");
    (image, blobs)
}

/// The virtualenv with the independent SBOM validators (`pyspdxtools`, cyclonedx-python-lib)
/// that `scripts/setup.sh` installs: `DOCKER_RELEASE_SBOMCHECK`, else
/// `/var/cache/docker_release/sbomcheck`. `None` (after [`prereq::missing`]) when absent.
pub fn sbomcheck() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_RELEASE_SBOMCHECK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/docker_release/sbomcheck"));
    if dir.join("bin/pyspdxtools").is_file() && dir.join("bin/python").is_file() {
        return Some(dir);
    }
    prereq::missing(format!(
        "the SBOM validators' virtualenv {} (scripts/setup.sh makes it)",
        dir.display()
    ));
    None
}

/// Validate an SPDX JSON document with `pyspdxtools -i` (spdx-tools): `Err(its report)` when
/// it finds problems.
pub fn validate_spdx(venv: &Path, doc: &Path) -> Result<(), String> {
    let out = std::process::Command::new(venv.join("bin/pyspdxtools"))
        .arg("-i")
        .arg(doc)
        .output()
        .map_err(|e| format!("cannot run pyspdxtools: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Validate a CycloneDX 1.5 JSON document against the schema (cyclonedx-python-lib's strict
/// validator, schemas bundled: no network).
pub fn validate_cyclonedx(venv: &Path, doc: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read(), all_errors=True)
errors = [] if errors is None else list(errors)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
"#;
    let out = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", SCRIPT])
        .arg(doc)
        .output()
        .map_err(|e| format!("cannot run the CycloneDX validator: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`sample_plan`] built twice into one blob directory, as `linux/amd64` and as
/// `linux/arm64/v8`: two images with the same layers (a project without native code) and
/// different configs. Returns `[amd64, arm64]`.
pub fn sample_platform_images(
    dir: &Path,
) -> (Vec<image_core::image::Image>, image_core::archive::BlobDir) {
    let src = dir.join("src");
    sample_tree(&src, 0o664);
    let blobs = image_core::archive::BlobDir {
        root: dir.join("blobs"),
    };
    let images = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| {
            let mut plan = sample_plan(&src);
            plan.platform = image_core::platform::parse(p).expect("a platform");
            image_core::build::build(
                &image_core::fs::HostFs::new("/"),
                &plan,
                CREATED,
                6,
                &blobs,
                &mut |_| true,
            )
            .expect("build a sample image")
        })
        .collect();
    (images, blobs)
}
