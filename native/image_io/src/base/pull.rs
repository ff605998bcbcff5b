//! A base image from its registry: the manifest (an index resolved to the release's
//! platform), the config, the layers, each checked against the digest that named it.

use super::store::{pump, store_layer};
use super::{finish, invalid, parse_config, BaseError, BaseRef, Fetched};
use crate::registry::{Puller, RegistryError, RegistryOptions};
use futures_util::StreamExt;
use image_core::archive::BlobDir;
use image_core::digest::Digest;
use image_core::elf::Platform;
use image_core::oci::Document;
use std::io;

/// Manifests and configs larger than this are refused (real ones are a few KB).
const MAX_DOCUMENT: usize = 4 << 20;

/// Manifest media types we accept, best first.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

pub(super) async fn from_registry(
    r: &BaseRef,
    opts: &RegistryOptions,
    blobs: &BlobDir,
    want: &Platform,
    level: u32,
) -> Result<Fetched, BaseError> {
    let reference = r.given.as_str();
    let host = r.registry_host();
    let path = r.registry_path();
    let reg_err = |source| BaseError::Registry {
        reference: reference.to_string(),
        source,
    };
    let Top {
        mut puller,
        media,
        document: mut doc,
        ..
    } = top_document(r, opts).await?;
    if doc.is_index(&media) {
        let digest = pick_platform(reference, &doc, want)?;
        let (bytes, _) = get_document(
            &mut puller,
            reference,
            &path,
            &format!("manifests/{digest}"),
            ACCEPT_MANIFESTS,
            Some(&digest),
        )
        .await?;
        doc = parse_document(reference, &bytes)?;
    }
    let config_digest = doc
        .config
        .as_ref()
        .map(|c| c.digest.clone())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid(reference, "its manifest has no config"))?;
    let (config_bytes, _) = get_document(
        &mut puller,
        reference,
        &path,
        &format!("blobs/{config_digest}"),
        "*/*",
        Some(&config_digest),
    )
    .await?;
    let parsed = parse_config(reference, &config_bytes)?;

    let mut layers = Vec::new();
    for (i, d) in doc.layers.iter().enumerate() {
        let (media, digest, size) = (d.media_type.as_str(), d.digest.as_str(), d.size);
        if media.contains("zstd") {
            return Err(invalid(
                reference,
                format!("layer {} is zstd-compressed ({media}), which Docker 20.10 cannot load: use a gzip copy of the base (skopeo copy --dest-compress-format gzip)", i + 1),
            ));
        }
        if media.contains("nondistributable") || media.contains("foreign") {
            return Err(invalid(
                reference,
                format!("layer {} is a non-distributable layer ({media}): use a Linux base image whose layers the registry holds", i + 1),
            ));
        }
        let resp = puller
            .get(&path, &format!("blobs/{digest}"), "*/*")
            .await
            .map_err(reg_err)?;
        let step = format!("GET {}v2/{path}/blobs/{digest}", puller.base_url());
        let stream = puller
            .body(resp, &step)
            .map(|c| c.map_err(io::Error::other));
        let blobs2 = blobs.clone();
        let s = pump(stream, move |reader| store_layer(reader, &blobs2, level))
            .await
            .map_err(|e| BaseError::Registry {
                reference: reference.to_string(),
                source: download_error(&host, e),
            })?;
        if s.input_digest.to_string() != digest || size.is_some_and(|n| n != s.input_size) {
            return Err(invalid(
                reference,
                format!(
                    "layer {} arrived as {} ({} bytes) but the manifest says {digest} ({} bytes): the registry or a proxy changed it",
                    i + 1,
                    s.input_digest,
                    s.input_size,
                    size.unwrap_or(0)
                ),
            ));
        }
        layers.push(s.info);
    }
    finish(reference, format!("registry {host}"), parsed, layers)
}

/// The document `r` names in its registry (a manifest, or an index), read over a connection
/// the caller goes on using.
struct Top {
    puller: Puller,
    bytes: Vec<u8>,
    media: String,
    document: Document,
}

/// Connect to `r`'s registry and read the manifest or index `r` names (a Docker schema 1
/// manifest is refused).
async fn top_document(r: &BaseRef, opts: &RegistryOptions) -> Result<Top, BaseError> {
    let reference = r.given.as_str();
    let mut puller = Puller::connect(&r.registry_host(), opts)
        .await
        .map_err(|source| BaseError::Registry {
            reference: reference.to_string(),
            source,
        })?;
    let first = r.digest.clone().unwrap_or_else(|| r.tag.clone());
    let (bytes, media) = get_document(
        &mut puller,
        reference,
        &r.registry_path(),
        &format!("manifests/{first}"),
        ACCEPT_MANIFESTS,
        r.digest.as_deref(),
    )
    .await?;
    let document = parse_document(reference, &bytes)?;
    if document.schema_version == Some(1) {
        return Err(invalid(
            reference,
            "it has a Docker schema 1 manifest, which is obsolete: push it again with a current tool",
        ));
    }
    Ok(Top {
        puller,
        bytes,
        media,
        document,
    })
}

/// A manifest or index document of `reference`.
fn parse_document(reference: &str, bytes: &[u8]) -> Result<Document, BaseError> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid(reference, format!("its manifest is not JSON ({e})")))
}

/// The digest of `r`'s manifest for `want` in its registry: the entry of its index for `want`,
/// or the manifest itself when `r` names a single image (whoever uses it checks that image's
/// platform).
pub(super) async fn manifest_digest(
    r: &BaseRef,
    opts: &RegistryOptions,
    want: &Platform,
) -> Result<String, BaseError> {
    let top = top_document(r, opts).await?;
    if top.document.is_index(&top.media) {
        pick_platform(&r.given, &top.document, want)
    } else {
        Ok(Digest::of(&top.bytes).to_string())
    }
}

/// The registry's own error when the download stream failed (a stall), else a broken download.
fn download_error(host: &str, e: io::Error) -> RegistryError {
    let cause = e.to_string();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<RegistryError>())
    {
        Some(Ok(own)) => *own,
        _ => RegistryError::Connection {
            host: host.to_string(),
            cause,
            hint: "; the download of a layer broke: retry",
        },
    }
}

/// GET a manifest or config (small, read whole), checking its digest when one is expected.
/// Returns the bytes and the `Content-Type`.
async fn get_document(
    puller: &mut Puller,
    reference: &str,
    path: &str,
    rest: &str,
    accept: &str,
    digest: Option<&str>,
) -> Result<(Vec<u8>, String), BaseError> {
    let resp = puller
        .get(path, rest, accept)
        .await
        .map_err(|source| BaseError::Registry {
            reference: reference.to_string(),
            source,
        })?;
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = format!("{}v2/{path}/{rest}", puller.base_url());
    let mut body = Vec::new();
    let stream = puller.body(resp, &format!("GET {url}"));
    tokio::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| BaseError::Registry {
            reference: reference.to_string(),
            source,
        })?;
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(invalid(
                reference,
                format!("{url} is larger than {MAX_DOCUMENT} bytes: not a manifest or config"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if let Some(want) = digest {
        let got = Digest::of(&body).to_string();
        if got != want {
            return Err(invalid(
                reference,
                format!(
                    "{url} has digest {got}, expected {want}: the registry or a proxy changed it"
                ),
            ));
        }
    }
    Ok((body, media))
}

/// The digest of the index entry for `want`.
pub(super) fn pick_platform(
    reference: &str,
    index: &Document,
    want: &Platform,
) -> Result<String, BaseError> {
    index.pick(want).map_err(|available| BaseError::NoPlatform {
        reference: reference.to_string(),
        want: want.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}
