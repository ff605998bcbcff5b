//! What hangs off a pushed image, in every repository it was pushed to: its SBOM as an OCI 1.1
//! referrer and its cosign signature (the documents are made by
//! [`image_core::supply::artifact`] and [`image_core::supply::signing`]; this file sends them).
//! With several platforms ([`subjects`]) each platform's manifest gets its own SBOM referrer,
//! and the index the tags name and every platform manifest get a signature (what cosign's
//! `sign --recursive` signs), so a reader that resolves a tag to one platform's image finds
//! that image's SBOM and signature.
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
//!   document's digest, signed with the key; the manifest tagged `sha256-<hex>.sig` gains it as
//!   a layer (signatures there are kept, as cosign keeps them; the same signature is not added
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
use image_core::image::{media_type, Image};
use image_core::supply::artifact::{
    add_referrer, add_signature, fallback_tag, referrer_manifest, signature_tag, Artifact,
    Descriptor,
};
use image_core::supply::signing::{payload, SigningKey};
use image_core::supply::SbomFile;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use std::sync::Arc;

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

/// A document of a push that things hang off: what the tags name, or with several platforms
/// also each platform's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'b> {
    /// The document (an image manifest, or the image index).
    pub descriptor: Descriptor,
    /// The SBOM to attach to it as a referrer: its image's ([`Built::sboms`]; an index has
    /// none).
    pub sbom: Option<&'b SbomFile>,
}

/// What a push attaches to, in order: what the tags name (the image with its SBOM, or the
/// image index), then with several platforms each platform's manifest with its SBOM, in the
/// index's order. Each is signed when a key is given (cosign's `sign --recursive`: the index
/// and every image it lists).
pub fn subjects(built: &Built) -> Vec<Subject<'_>> {
    let image = |i: &Image| Subject {
        descriptor: Descriptor::of(media_type::MANIFEST, &i.manifest_json()),
        sbom: built.sbom_of(i),
    };
    match &built.index {
        None => vec![image(&built.image)],
        Some(index) => {
            let mut all = vec![Subject {
                descriptor: Descriptor::of(media_type::INDEX, &index.json()),
                sbom: None,
            }];
            all.extend(index.images().iter().map(image));
            all
        }
    }
}

/// What [`attach`] did to one [`Subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedTo {
    /// The subject's digest.
    pub subject: Digest,
    /// Its SBOM referrer, when it has an SBOM.
    pub sbom: Option<SbomReferrer>,
    /// Its signatures, one per repository, when a key was given.
    pub signatures: Vec<Signed>,
}

/// What [`attach`] did, per subject in the order of [`subjects`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// Each subject's referrer and signatures.
    pub subjects: Vec<AttachedTo>,
}

/// Attach to each of `built`'s [`subjects`], in every repository `built`'s tags name, its SBOM
/// as a referrer and, with `key`, a signature; after [`super::upload`] and [`super::move_tags`]
/// with the same `pushed`, whose sessions it uses and in which it records each tag it moves.
/// `created` (RFC 3339) annotates the SBOM referrers.
pub async fn attach(
    built: &Built,
    created: &str,
    key: Option<&SigningKey>,
    pushed: &mut PushedTags,
) -> Result<Attached, RegistryError> {
    let subjects = subjects(built);
    let referrers: Vec<Option<Artifact>> = subjects
        .iter()
        .map(|s| {
            s.sbom.map(|sbom| {
                let title = sbom.image_path().trim_start_matches('/');
                referrer_manifest(
                    sbom.media_type(),
                    &sbom.bytes,
                    title,
                    &s.descriptor,
                    created,
                )
            })
        })
        .collect();
    let mut attached = Attached {
        subjects: subjects
            .iter()
            .zip(&referrers)
            .map(|(s, r)| AttachedTo {
                subject: s.descriptor.digest.clone(),
                sbom: r.as_ref().zip(s.sbom).map(|(r, sbom)| SbomReferrer {
                    digest: r.descriptor().digest,
                    artifact_type: sbom.media_type().to_string(),
                    subject: s.descriptor.digest.clone(),
                    references: Vec::new(),
                    fallback_tags: Vec::new(),
                }),
                signatures: Vec::new(),
            })
            .collect(),
    };
    for (session, (host, repos)) in group_tags(&built.tags)?.iter().enumerate() {
        if session >= pushed.sessions.len() {
            return Err(RegistryError::Internal(
                "the SBOM and signature were to be attached before the image was pushed".into(),
            ));
        }
        for (path, _) in repos {
            for ((subject, referrer), out) in
                subjects.iter().zip(&referrers).zip(&mut attached.subjects)
            {
                let subject = &subject.descriptor;
                if let (Some(referrer), Some(out)) = (referrer, out.sbom.as_mut()) {
                    let via_api = put_referrer(pushed, session, path, referrer, subject).await?;
                    out.references
                        .push(format!("{host}/{path}@{}", referrer.descriptor().digest));
                    if !via_api {
                        out.fallback_tags
                            .push(format!("{host}/{path}:{}", fallback_tag(&subject.digest)));
                    }
                }
                if let Some(key) = key {
                    let signed = sign(pushed, session, host, path, key, subject).await?;
                    out.signatures.push(signed);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ImageSbom;
    use image_core::archive::BlobDir;
    use image_core::image::RunConfig;
    use image_core::index::ImageIndex;
    use image_core::supply::sbom::SbomFormat;

    fn image(arch: &str) -> Image {
        Image {
            platform: image_core::platform::parse(&format!("linux/{arch}")).unwrap(),
            created: 0,
            config: RunConfig::default(),
            layers: vec![],
            base_history: vec![],
            annotations: Default::default(),
        }
    }

    fn sbom_of(image: &Image) -> ImageSbom {
        ImageSbom {
            manifest: image.manifest_digest(),
            sbom: SbomFile {
                format: SbomFormat::Spdx,
                bytes: image.platform.to_string().into_bytes(),
            },
        }
    }

    fn built(images: Vec<Image>, sboms: bool) -> Built {
        let blobs = BlobDir {
            root: "/nowhere".into(),
        };
        let first = images[0].clone();
        let with = images.iter().filter(|_| sboms).map(sbom_of).collect();
        let mut built = Built::single(first, blobs, vec![]).with_sboms(with);
        if images.len() > 1 {
            built.index = Some(ImageIndex::new(images).unwrap());
        }
        built
    }

    #[test]
    fn one_image_is_the_one_subject_with_its_sbom() {
        let b = built(vec![image("amd64")], true);
        let s = subjects(&b);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].descriptor.digest, b.image.manifest_digest());
        assert_eq!(s[0].descriptor.media_type, media_type::MANIFEST);
        assert_eq!(s[0].sbom.unwrap().bytes, b"linux/amd64");
    }

    #[test]
    fn with_several_platforms_the_index_comes_first_then_each_manifest_with_its_own_sbom() {
        // Given in another order than the index's: each SBOM still goes to its own image.
        let b = built(vec![image("arm64"), image("amd64")], true);
        let index = b.index.as_ref().unwrap();
        let s = subjects(&b);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].descriptor.digest, index.digest());
        assert_eq!(s[0].descriptor.media_type, media_type::INDEX);
        assert_eq!(s[0].descriptor.size, index.json().len() as u64);
        assert!(s[0].sbom.is_none(), "an index has no SBOM of its own");
        for (subject, image) in s[1..].iter().zip(index.images()) {
            assert_eq!(subject.descriptor.digest, image.manifest_digest());
            assert_eq!(subject.descriptor.media_type, media_type::MANIFEST);
            assert_eq!(
                subject.sbom.unwrap().bytes,
                image.platform.to_string().into_bytes()
            );
        }
        assert_eq!(s[2].sbom.unwrap().bytes, b"linux/arm64/v8");
    }

    #[test]
    fn without_sboms_every_subject_is_still_there_to_be_signed() {
        let b = built(vec![image("amd64"), image("arm64")], false);
        let s = subjects(&b);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|s| s.sbom.is_none()));
    }
}
