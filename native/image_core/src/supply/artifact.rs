//! Registry documents that hang off an image: the SBOM as an OCI 1.1 referrer, the referrers
//! fallback index, and cosign's signature manifest. Values only: digests are computed here,
//! nothing is sent.
//!
//! # Referrers (OCI image-spec and distribution-spec v1.1.0)
//!
//! An artifact is an image manifest whose `config` is the *empty descriptor* (the 2-byte blob
//! `{}`) and whose `artifactType` says what it is; its content is in `layers`; its `subject` is
//! the image's manifest descriptor ([`referrer_manifest`]). A registry with the referrers API
//! answers `OCI-Subject` to the `PUT` of such a manifest. One without it (the CNCF distribution
//! registry 2.8 answers `201` and ignores `subject`) needs the *tag schema fallback*: the client
//! reads the index tagged `sha256-<hex of the subject digest>` ([`fallback_tag`]; a missing tag
//! is an empty index), adds the artifact's descriptor with its `artifactType` and annotations
//! unless it is there already, and puts the index back ([`add_referrer`]).
//!
//! # cosign signatures (`cosign verify --key`)
//!
//! The signed payload is the "simple signing" JSON ([`crate::supply::signing::payload`]); its
//! ECDSA signature, base64, is the annotation `dev.cosignproject.cosign/signature` of a layer
//! whose blob is the payload (media type [`SIMPLESIGNING`]). The layers live in an OCI image
//! manifest tagged `sha256-<hex>.sig` ([`signature_tag`]); several signatures are several
//! layers of that one manifest, so a new signature is appended ([`add_signature`]).

use crate::digest::Digest;
use crate::image::media_type;
use serde_json::{json, Map, Value};

/// The empty JSON blob every artifact's config points to.
pub const EMPTY_JSON: &[u8] = b"{}";
/// Media type of [`EMPTY_JSON`] as a config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Media type of a cosign signature layer (the payload blob).
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds a cosign signature (base64 DER).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest of the bytes.
    pub digest: Digest,
    /// Size of the bytes.
    pub size: u64,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mediaType".into(), json!(self.media_type));
        m.insert("digest".into(), json!(self.digest.to_string()));
        m.insert("size".into(), json!(self.size));
        m
    }
}

/// A document to put in a registry: its bytes and the blobs it refers to that the registry
/// must have first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The manifest (or index) bytes.
    pub manifest: Vec<u8>,
    /// Its media type (the `Content-Type` of the `PUT`).
    pub media_type: &'static str,
    /// Blobs to upload before the manifest: `(descriptor, bytes)`.
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
}

impl Artifact {
    /// The manifest's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::of(self.media_type, &self.manifest)
    }
}

/// The tag of the referrers fallback index of `subject`: `sha256-<hex>`.
///
/// ```
/// # use image_core::{digest::Digest, supply::artifact::fallback_tag};
/// assert_eq!(fallback_tag(&Digest::of(b"")), "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
/// ```
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// The tag cosign reads signatures of `subject` from: `sha256-<hex>.sig`.
pub fn signature_tag(subject: &Digest) -> String {
    format!("{}.sig", fallback_tag(subject))
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The referrer manifest of `content` (e.g. the SBOM, `artifact_type` its media type) for the
/// image manifest `subject`: empty config, one layer titled `title`, annotated with `created`
/// (RFC 3339) as `org.opencontainers.image.created`.
pub fn referrer_manifest(
    artifact_type: &str,
    content: &[u8],
    title: &str,
    subject: &Descriptor,
    created: &str,
) -> Artifact {
    let config = Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_JSON);
    let layer = Descriptor::of(artifact_type, content);
    let mut layer_json = layer.to_json();
    layer_json.insert(
        "annotations".into(),
        json!({"org.opencontainers.image.title": title}),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::MANIFEST,
        "artifactType": artifact_type,
        "config": config.to_json(),
        "layers": [layer_json],
        "subject": subject.to_json(),
        "annotations": {"org.opencontainers.image.created": created},
    });
    Artifact {
        manifest: to_bytes(&manifest),
        media_type: media_type::MANIFEST,
        blobs: vec![(config, EMPTY_JSON.to_vec()), (layer, content.to_vec())],
    }
}

/// Why a document found in the registry cannot be extended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    /// The fallback tag names something that is not an OCI image index.
    #[error("the referrers fallback tag holds no OCI image index ({0}); the distribution spec says to stop here: remove that tag or use a registry with the referrers API")]
    NotAnIndex(String),
    /// The `.sig` tag names something that is not an OCI image manifest.
    #[error("the signature tag holds no OCI image manifest ({0}); remove that tag to sign again")]
    NotAManifest(String),
}

/// The fallback index of the referrers of a subject with `referrer` (the referrer manifest)
/// added: `existing` is the index the fallback tag holds (`None` when the tag does not exist).
/// `Ok(None)` when the descriptor is there already (nothing to put). Other entries are kept.
pub fn add_referrer(
    existing: Option<&[u8]>,
    referrer: &Artifact,
) -> Result<Option<Vec<u8>>, ArtifactError> {
    let manifest: Value = serde_json::from_slice(&referrer.manifest).unwrap_or(Value::Null);
    let mut index = match existing {
        None => json!({"schemaVersion": 2, "mediaType": media_type::INDEX, "manifests": []}),
        Some(bytes) => {
            let v: Value = serde_json::from_slice(bytes)
                .map_err(|e| ArtifactError::NotAnIndex(format!("not JSON: {e}")))?;
            let is_index = v["schemaVersion"] == 2
                && v["manifests"].is_array()
                && (v["mediaType"].is_null() || v["mediaType"] == media_type::INDEX);
            if !is_index {
                return Err(ArtifactError::NotAnIndex(format!(
                    "mediaType {}",
                    v["mediaType"]
                )));
            }
            v
        }
    };
    let desc = referrer.descriptor();
    let digest = desc.digest.to_string();
    let entries = index["manifests"].as_array_mut().expect("checked above");
    if entries.iter().any(|e| e["digest"] == digest.as_str()) {
        return Ok(None);
    }
    let mut entry = desc.to_json();
    let artifact_type = manifest
        .get("artifactType")
        .or_else(|| manifest.pointer("/config/mediaType"))
        .cloned()
        .unwrap_or(Value::Null);
    entry.insert("artifactType".into(), artifact_type);
    if let Some(a) = manifest.get("annotations").filter(|a| a.is_object()) {
        entry.insert("annotations".into(), a.clone());
    }
    entries.push(Value::Object(entry));
    Ok(Some(to_bytes(&index)))
}

/// cosign's signature manifest with the signature `signature_b64` of `payload` added:
/// `existing` is the manifest the `.sig` tag holds (`None` when there is none). Its layers
/// are kept; a layer with the same payload and signature is not added twice (`Ok(None)`:
/// nothing to put). The config is an OCI image config whose `rootfs.diff_ids` are the layers'
/// digests, as cosign writes it.
pub fn add_signature(
    existing: Option<&[u8]>,
    payload: &[u8],
    signature_b64: &str,
) -> Result<Option<Artifact>, ArtifactError> {
    let mut layers: Vec<Value> = match existing {
        None => Vec::new(),
        Some(bytes) => {
            let v: Value = serde_json::from_slice(bytes)
                .map_err(|e| ArtifactError::NotAManifest(format!("not JSON: {e}")))?;
            let ok = v["schemaVersion"] == 2
                && v["layers"].is_array()
                && (v["mediaType"].is_null() || v["mediaType"] == media_type::MANIFEST);
            if !ok {
                return Err(ArtifactError::NotAManifest(format!(
                    "mediaType {}",
                    v["mediaType"]
                )));
            }
            v["layers"].as_array().cloned().unwrap_or_default()
        }
    };
    let layer = Descriptor::of(SIMPLESIGNING, payload);
    let digest = layer.digest.to_string();
    if layers.iter().any(|l| {
        l["digest"] == digest.as_str() && l["annotations"][SIGNATURE_ANNOTATION] == signature_b64
    }) {
        return Ok(None);
    }
    let mut layer_json = layer.to_json();
    layer_json.insert(
        "annotations".into(),
        json!({ SIGNATURE_ANNOTATION: signature_b64 }),
    );
    layers.push(Value::Object(layer_json));
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let zero_time = "0001-01-01T00:00:00Z";
    let history: Vec<Value> = layers
        .iter()
        .map(|_| json!({"created": zero_time}))
        .collect();
    let config = to_bytes(&json!({
        "architecture": "",
        "created": zero_time,
        "history": history,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }));
    let config_desc = Descriptor::of(media_type::CONFIG, &config);
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::MANIFEST,
        "config": config_desc.to_json(),
        "layers": layers,
    }));
    Ok(Some(Artifact {
        manifest,
        media_type: media_type::MANIFEST,
        blobs: vec![(config_desc, config), (layer, payload.to_vec())],
    }))
}

/// The referrers of a subject as a spec-following reader finds them in a fallback index:
/// `(artifactType, manifest digest)` of each entry (for tests and diagnostics).
pub fn referrers_in_index(index: &[u8]) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(index).unwrap_or(Value::Null);
    let mut out: Vec<(String, String)> = v["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["artifactType"].as_str().unwrap_or_default().to_string(),
                        e["digest"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Descriptor {
        Descriptor::of(media_type::MANIFEST, b"{\"schemaVersion\":2}")
    }

    #[test]
    fn the_empty_descriptor_is_the_specs() {
        let d = Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_JSON);
        assert_eq!(
            d.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(d.size, 2);
    }

    #[test]
    fn a_referrer_is_an_artifact_manifest_with_a_subject() {
        let a = referrer_manifest(
            "application/spdx+json",
            b"{\"spdxVersion\":\"SPDX-2.3\"}",
            "sbom.spdx.json",
            &subject(),
            "2023-11-14T22:13:20Z",
        );
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(m["subject"]["digest"], subject().digest.to_string());
        assert_eq!(m["layers"][0]["mediaType"], "application/spdx+json");
        assert_eq!(
            m["layers"][0]["annotations"]["org.opencontainers.image.title"],
            "sbom.spdx.json"
        );
        // Every blob the manifest names is among the blobs to upload, with matching digests.
        for (d, bytes) in &a.blobs {
            assert_eq!(Digest::of(bytes), d.digest);
        }
        assert_eq!(a.blobs[1].0.digest.to_string(), m["layers"][0]["digest"]);
    }

    #[test]
    fn the_fallback_index_gains_each_referrer_once_and_keeps_others() {
        let a = referrer_manifest("application/spdx+json", b"1", "s", &subject(), "t");
        let b = referrer_manifest("application/vnd.cyclonedx+json", b"2", "c", &subject(), "t");
        let first = add_referrer(None, &a).unwrap().unwrap();
        assert_eq!(add_referrer(Some(&first), &a).unwrap(), None);
        let second = add_referrer(Some(&first), &b).unwrap().unwrap();
        let found = referrers_in_index(&second);
        assert_eq!(found.len(), 2);
        assert!(found.contains(&(
            "application/spdx+json".into(),
            a.descriptor().digest.to_string()
        )));
        let v: Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(v["mediaType"], media_type::INDEX);
        assert_eq!(
            v["manifests"][0]["annotations"]["org.opencontainers.image.created"],
            "t"
        );
        // Not an index: refused, as the spec says.
        let err = add_referrer(Some(b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"layers\":[]}"), &a).unwrap_err();
        assert!(matches!(err, ArtifactError::NotAnIndex(_)));
    }

    #[test]
    fn signatures_are_appended_as_layers_once() {
        let first = add_signature(None, b"payload-1", "c2lnMQ==")
            .unwrap()
            .unwrap();
        let m: Value = serde_json::from_slice(&first.manifest).unwrap();
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], SIMPLESIGNING);
        assert_eq!(
            m["layers"][0]["annotations"][SIGNATURE_ANNOTATION],
            "c2lnMQ=="
        );
        assert_eq!(m["config"]["mediaType"], media_type::CONFIG);
        assert_eq!(
            add_signature(Some(&first.manifest), b"payload-1", "c2lnMQ==").unwrap(),
            None
        );
        let second = add_signature(Some(&first.manifest), b"payload-1", "c2lnMg==")
            .unwrap()
            .unwrap();
        let m: Value = serde_json::from_slice(&second.manifest).unwrap();
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
        let (config_desc, config) = &second.blobs[0];
        assert_eq!(m["config"]["digest"], config_desc.digest.to_string());
        let c: Value = serde_json::from_slice(config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    }
}
