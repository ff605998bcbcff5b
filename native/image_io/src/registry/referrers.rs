//! What hangs off a pushed image, in every repository it was pushed to: its SBOM as an OCI 1.1
//! referrer and its cosign signature (the documents are made by
//! [`image_core::supply::artifact`] and [`image_core::supply::signing`]; this file sends them).
//!
//! - **The SBOM**: its blob and the empty config are uploaded, then the referrer manifest
//!   (`artifactType` the SBOM's media type, `subject` the image manifest) is put by digest. A
//!   registry with the referrers API answers that `PUT` with `OCI-Subject`, or answers
//!   `GET /v2/NAME/referrers/DIGEST` with an index: it lists the referrer itself, and nothing
//!   more is done. Otherwise (the CNCF distribution registry 2.8) the referrers *tag schema
//!   fallback*: the index tagged `sha256-<hex of the image manifest digest>` is read (a missing
//!   tag is an empty index), the referrer's descriptor is added unless it is there, and the
//!   index is put back under that tag.
//! - **The signature**: cosign's simple-signing payload for `REGISTRY/REPOSITORY` and the
//!   manifest digest, signed with the key; the manifest tagged `sha256-<hex>.sig` gains it as a
//!   layer (signatures there are kept, as cosign keeps them; the same signature is not added
//!   twice, and signatures are deterministic, so pushing the same image again changes nothing).
//!
//! It runs after the push's tags moved, on the push's own sessions (the credentials and tokens
//! it got: a credential helper is asked once per run), and every tag it moves (the fallback
//! index, the `.sig` manifest) is recorded in the push's [`PushedTags`] with what it named
//! before, so that a later failure puts it back with the image's tags.

use super::client::{failure, header_text, read_body, Registry};
use super::push::{group_tags, Blob, Content, MovedTag, Previous, PushedTags};
use super::RegistryError;
use crate::sink::{Built, Progress};
use bytes::Bytes;
use image_core::digest::Digest;
use image_core::image::media_type;
use image_core::supply::artifact::{
    add_referrer, add_signature, fallback_tag, referrer_manifest, signature_tag, Artifact,
    Descriptor,
};
use image_core::supply::signing::{payload, SigningKey};
use image_core::supply::SbomFile;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use std::sync::Arc;

/// What to attach to a pushed image.
#[derive(Clone, Default)]
pub struct Attachments {
    /// The SBOM the image embeds, attached as a referrer.
    pub sbom: Option<SbomFile>,
    /// The key that signs the image.
    pub key: Option<Arc<SigningKey>>,
}

/// The SBOM attached to a pushed image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SbomReferrer {
    /// The referrer manifest's digest (the same in every repository).
    pub digest: Digest,
    /// Its `artifactType`: the SBOM's media type.
    pub artifact_type: String,
    /// The image manifest it refers to.
    pub subject: Digest,
    /// The referrer by digest in each repository, `host/path@sha256:…`.
    pub references: Vec<String>,
    /// The fallback index tags that list it, `host/path:sha256-<hex>`, for registries without
    /// the referrers API (empty when every registry has it).
    pub fallback_tags: Vec<String>,
}

/// The cosign signature of a pushed image in one repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Signed {
    /// The tag cosign reads, `host/path:sha256-<hex>.sig`.
    pub tag: String,
    /// The digest of the signature manifest it names.
    pub digest: Digest,
    /// The digest of the signed payload (the simple-signing JSON, a layer of that manifest).
    pub payload_digest: Digest,
}

/// What [`attach`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// The SBOM referrer, when an SBOM was attached.
    pub sbom: Option<SbomReferrer>,
    /// The signatures, one per repository, when a key was given.
    pub signatures: Vec<Signed>,
}

/// Attach `what` to the image manifest `subject` in every repository `built`'s tags name,
/// after [`super::upload`] and [`super::move_tags`] with the same `pushed`, whose sessions it
/// uses and in which it records each tag it moves. `created` (RFC 3339) annotates the SBOM
/// referrer.
pub async fn attach(
    built: &Built,
    subject: &Descriptor,
    created: &str,
    what: &Attachments,
    pushed: &mut PushedTags,
) -> Result<Attached, RegistryError> {
    let referrer = what.sbom.as_ref().map(|sbom| {
        let title = sbom.image_path().trim_start_matches('/');
        referrer_manifest(sbom.media_type(), &sbom.bytes, title, subject, created)
    });
    let mut attached = Attached {
        sbom: referrer.as_ref().map(|r| SbomReferrer {
            digest: r.descriptor().digest,
            artifact_type: what
                .sbom
                .as_ref()
                .map(|s| s.media_type().to_string())
                .unwrap_or_default(),
            subject: subject.digest.clone(),
            references: Vec::new(),
            fallback_tags: Vec::new(),
        }),
        signatures: Vec::new(),
    };
    for (session, (host, repos)) in group_tags(&built.tags)?.iter().enumerate() {
        if session >= pushed.sessions.len() {
            return Err(RegistryError::Internal(
                "the SBOM and signature were to be attached before the image was pushed".into(),
            ));
        }
        for (path, _) in repos {
            if let (Some(referrer), Some(out)) = (&referrer, attached.sbom.as_mut()) {
                let via_api = put_referrer(pushed, session, path, referrer, subject).await?;
                out.references
                    .push(format!("{host}/{path}@{}", referrer.descriptor().digest));
                if !via_api {
                    out.fallback_tags
                        .push(format!("{host}/{path}:{}", fallback_tag(&subject.digest)));
                }
            }
            if let Some(key) = &what.key {
                let signed = sign(pushed, session, host, path, key, subject).await?;
                attached.signatures.push(signed);
            }
        }
    }
    Ok(attached)
}

/// Record that `path:tag` of `session` names `manifest` now, and named `before` (to put back).
fn record(
    pushed: &mut PushedTags,
    session: usize,
    path: &str,
    tag: &str,
    before: Option<(Bytes, String)>,
    manifest: Digest,
) {
    pushed.moved.push(MovedTag {
        session,
        path: path.to_string(),
        tag: tag.to_string(),
        previous: match before {
            Some((bytes, media)) => Previous::Manifest(bytes, media),
            None => Previous::Nothing,
        },
        manifest: Some(manifest),
    });
}

/// Push the SBOM referrer into `path`; with no referrers API, update the fallback index.
/// Returns whether the registry has the referrers API.
async fn put_referrer(
    pushed: &mut PushedTags,
    session: usize,
    path: &str,
    referrer: &Artifact,
    subject: &Descriptor,
) -> Result<bool, RegistryError> {
    let reg = &mut pushed.sessions[session];
    upload_all(reg, path, &referrer.blobs).await?;
    let digest = referrer.descriptor().digest;
    let manifest = Bytes::from(referrer.manifest.clone());
    let answer = put_manifest(
        reg,
        path,
        &digest.to_string(),
        &manifest,
        referrer.media_type,
    )
    .await?;
    if answer.subject.is_some() || has_referrers_api(reg, path, &subject.digest).await? {
        return Ok(true);
    }
    let tag = fallback_tag(&subject.digest);
    let before = get_manifest(reg, path, &tag, media_type::INDEX).await?;
    let url = reg.url(path, &format!("manifests/{tag}"));
    let index = add_referrer(before.as_ref().map(|(b, _)| &b[..]), referrer).map_err(|e| {
        RegistryError::Protocol {
            url: url.to_string(),
            problem: e.to_string(),
        }
    })?;
    if let Some(index) = index {
        let digest = Digest::of(&index);
        let reg = &mut pushed.sessions[session];
        put_manifest(reg, path, &tag, &Bytes::from(index), media_type::INDEX).await?;
        record(pushed, session, path, &tag, before, digest);
    }
    Ok(false)
}

/// Sign the image in `host/path` and add the signature to its `.sig` manifest.
async fn sign(
    pushed: &mut PushedTags,
    session: usize,
    host: &str,
    path: &str,
    key: &SigningKey,
    subject: &Descriptor,
) -> Result<Signed, RegistryError> {
    let reg = &mut pushed.sessions[session];
    let payload = payload(&format!("{host}/{path}"), &subject.digest);
    let signature = key.sign_base64(&payload);
    let tag = signature_tag(&subject.digest);
    let before = get_manifest(reg, path, &tag, media_type::MANIFEST).await?;
    let url = reg.url(path, &format!("manifests/{tag}"));
    let added =
        add_signature(before.as_ref().map(|(b, _)| &b[..]), &payload, &signature).map_err(|e| {
            RegistryError::Protocol {
                url: url.to_string(),
                problem: e.to_string(),
            }
        })?;
    let digest = match added {
        // This very signature is there already.
        None => Digest::of(before.as_ref().map(|(b, _)| &b[..]).unwrap_or_default()),
        Some(manifest) => {
            upload_all(reg, path, &manifest.blobs).await?;
            let digest = manifest.descriptor().digest;
            let bytes = Bytes::from(manifest.manifest.clone());
            put_manifest(reg, path, &tag, &bytes, manifest.media_type).await?;
            record(pushed, session, path, &tag, before, digest.clone());
            digest
        }
    };
    Ok(Signed {
        tag: format!("{host}/{path}:{tag}"),
        digest,
        payload_digest: Digest::of(&payload),
    })
}

/// Upload the blobs a document refers to (those the repository lacks).
async fn upload_all(
    reg: &mut Registry,
    path: &str,
    blobs: &[(Descriptor, Vec<u8>)],
) -> Result<(), RegistryError> {
    let sent = reg.activity.clone();
    let progress: Progress = Arc::new(|_| {});
    for (desc, bytes) in blobs {
        let blob = Blob {
            digest: desc.digest.clone(),
            size: desc.size,
            content: Content::Bytes(Bytes::from(bytes.clone())),
        };
        reg.upload_blob(path, &blob, &sent, &progress).await?;
    }
    Ok(())
}

/// What a registry said to a manifest `PUT`.
struct PutAnswer {
    /// `OCI-Subject`: the registry has the referrers API and took the manifest's subject.
    subject: Option<String>,
}

/// `PUT` manifest `bytes` of type `media` as `reference` (a tag or its digest), checking the
/// digest the registry says it stored.
async fn put_manifest(
    reg: &mut Registry,
    path: &str,
    reference: &str,
    bytes: &Bytes,
    media: &str,
) -> Result<PutAnswer, RegistryError> {
    let url = reg.url(path, &format!("manifests/{reference}"));
    let resp = reg
        .send(path, Method::PUT, &url, |req| {
            Ok(req.header(CONTENT_TYPE, media).body(bytes.clone()))
        })
        .await?;
    if !resp.status().is_success() {
        return Err(failure(&reg.host, path, &url, resp).await);
    }
    let digest = Digest::of(bytes).to_string();
    if let Some(got) = header_text(&resp, "docker-content-digest") {
        if got != digest {
            return Err(RegistryError::Protocol {
                url: url.to_string(),
                problem: format!(
                    "stored the manifest as {got}, but its digest is {digest}: a proxy or the registry rewrote it"
                ),
            });
        }
    }
    Ok(PutAnswer {
        subject: header_text(&resp, "oci-subject"),
    })
}

/// The manifest (or index) `path:tag` names, with its media type; `None` when the tag does not
/// exist.
async fn get_manifest(
    reg: &mut Registry,
    path: &str,
    tag: &str,
    accept: &str,
) -> Result<Option<(Bytes, String)>, RegistryError> {
    let url = reg.url(path, &format!("manifests/{tag}"));
    let resp = reg
        .send(
            path,
            Method::GET,
            &url,
            |req| Ok(req.header(ACCEPT, accept)),
        )
        .await?;
    match resp.status() {
        StatusCode::NOT_FOUND => return Ok(None),
        s if !s.is_success() => return Err(failure(&reg.host, path, &url, resp).await),
        _ => {}
    }
    let media = header_text(&resp, CONTENT_TYPE.as_str()).unwrap_or_default();
    let body = read_body(resp, reg.stall, &reg.host, &format!("GET {url}")).await?;
    Ok(Some((body, media)))
}

/// Whether `GET /v2/PATH/referrers/DIGEST` answers with an image index (the referrers API). Any
/// other answer (404 from a registry that has no such route) means the fallback is needed.
async fn has_referrers_api(
    reg: &mut Registry,
    path: &str,
    subject: &Digest,
) -> Result<bool, RegistryError> {
    let url = reg.url(path, &format!("referrers/{subject}"));
    let resp = reg
        .send(path, Method::GET, &url, |req| {
            Ok(req.header(ACCEPT, media_type::INDEX))
        })
        .await?;
    let media = header_text(&resp, CONTENT_TYPE.as_str()).unwrap_or_default();
    Ok(resp.status() == StatusCode::OK && media.starts_with(media_type::INDEX))
}
