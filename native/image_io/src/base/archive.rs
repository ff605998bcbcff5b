//! A base image from the local engine: its `docker save` stream (a docker-archive) read as it
//! arrives, layers stored as blobs on the way.

use super::store::{pump, store_layer, Stored};
use super::{finish, invalid, parse_config, BaseError, BaseRef, Fetched};
use crate::engine::DockerEngine;
use image_core::archive::BlobDir;
use image_core::oci::ArchiveEntry;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Entries of a docker-archive up to this size are kept in memory until `manifest.json` says
/// what they are (configs, small layers); larger ones are stored as layer blobs as they stream.
const SMALL_ENTRY: u64 = 1 << 20;

pub(super) async fn from_engine(
    r: &BaseRef,
    engine: &DockerEngine,
    blobs: &BlobDir,
    level: u32,
) -> Result<Fetched, BaseError> {
    let reference = r.given.clone();
    let stream = engine.export(&r.given);
    let blobs2 = blobs.clone();
    let archive = pump(stream, move |reader| {
        read_docker_archive(reader, &blobs2, level)
    })
    .await
    .map_err(|e| BaseError::Engine {
        reference: reference.clone(),
        message: e.to_string(),
    })?;
    let DockerArchive {
        mut small,
        mut stored,
        links,
    } = archive;
    let manifest = small
        .get("manifest.json")
        .ok_or_else(|| invalid(&reference, "the engine's export has no manifest.json"))?;
    let manifest: Vec<ArchiveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| invalid(&reference, format!("the engine's manifest.json: {e}")))?;
    let entry = manifest
        .into_iter()
        .next()
        .ok_or_else(|| invalid(&reference, "the engine's manifest.json lists no image"))?;
    let config_path = entry.config.as_str();
    if config_path.is_empty() {
        return Err(invalid(
            &reference,
            "the engine's manifest.json names no Config",
        ));
    }
    let config_bytes = small
        .get(&resolve_link(&links, config_path))
        .ok_or_else(|| invalid(&reference, format!("the export has no {config_path}")))?;
    let parsed = parse_config(&reference, config_bytes)?;
    let mut layers = Vec::new();
    for p in &entry.layers {
        let p = resolve_link(&links, p);
        let info = match stored.get(&p) {
            Some(s) => s.info.clone(),
            None => {
                let bytes = small
                    .remove(&p)
                    .ok_or_else(|| invalid(&reference, format!("the export has no layer {p}")))?;
                let s = store_layer(&mut bytes.as_slice(), blobs, level).map_err(|source| {
                    BaseError::Io {
                        reference: reference.clone(),
                        path: blobs.root.clone(),
                        source,
                    }
                })?;
                let info = s.info.clone();
                stored.insert(p.clone(), s);
                info
            }
        };
        layers.push(info);
    }
    finish(
        &reference,
        format!("the Docker engine at {}", engine.endpoint()),
        parsed,
        layers,
    )
}

/// A docker-archive read from a stream: small entries in memory, large ones stored as layer
/// blobs (keyed by their path in the archive), symlink entries (identical layers) as aliases.
struct DockerArchive {
    small: HashMap<String, Vec<u8>>,
    stored: HashMap<String, Stored>,
    links: HashMap<String, String>,
}

fn read_docker_archive(
    reader: &mut dyn Read,
    blobs: &BlobDir,
    level: u32,
) -> io::Result<DockerArchive> {
    let mut out = DockerArchive {
        small: HashMap::new(),
        stored: HashMap::new(),
        links: HashMap::new(),
    };
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = clean(&entry.path_bytes());
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if entry.size() <= SMALL_ENTRY {
                    let mut buf = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut buf)?;
                    out.small.insert(path, buf);
                } else {
                    let s = store_layer(&mut entry, blobs, level)?;
                    out.stored.insert(path, s);
                }
            }
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name_bytes() {
                    let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                    let joined = dir.join(OsStr::from_bytes(&target));
                    out.links.insert(path, clean(joined.as_os_str().as_bytes()));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A relative archive path with `.` and `..` applied and no leading `./` or `/`.
fn clean(path: &[u8]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    String::from_utf8_lossy(&parts.join(&b'/')).into_owned()
}

fn resolve_link(links: &HashMap<String, String>, path: &str) -> String {
    let mut p = clean(path.as_bytes());
    for _ in 0..8 {
        match links.get(&p) {
            Some(t) => p = t.clone(),
            None => break,
        }
    }
    p
}
