//! The image value: platform, run configuration and layers, and the JSON documents derived from it.
//!
//! An [`Image`] is immutable once built; every output (archive file, engine, registry) takes the
//! same value and reads layer blobs through a [`crate::archive::BlobSource`].

use crate::digest::Digest;
use crate::elf::Platform;
use crate::layer::LayerInfo;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// OCI media types used in manifests and indexes.
pub mod media_type {
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// gzip-compressed layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// How a container of the image runs (the `config` object of an OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (the default arguments).
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`, numeric `UID:GID`.
    pub user: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts`, as `4000/tcp`.
    pub exposed_ports: Vec<String>,
    /// `StopSignal`, if not the default SIGTERM.
    pub stop_signal: Option<String>,
}

/// An assembled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Platform, from the ERTS executable's ELF header.
    pub platform: Platform,
    /// Creation time in seconds since the epoch (from `SOURCE_DATE_EPOCH` or the last commit).
    pub created: u64,
    /// Run configuration.
    pub config: RunConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The history of the base image, when the image has one (see [`Image::on_base`]); empty
    /// otherwise. Its entries that are not [`History::empty_layer`] describe the first layers.
    pub base_history: Vec<History>,
    /// The manifest's `annotations` (`org.opencontainers.image.created`, …). Empty: the
    /// manifest has no `annotations` field, byte for byte what images without them always
    /// had. Annotations change the manifest digest, not the image ID (the config's digest);
    /// `docker load` ignores them, registries and `skopeo` keep them.
    pub annotations: BTreeMap<String, String>,
}

/// One entry of a base image's `history`, kept as the base's config has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// `created` (RFC 3339), if given.
    pub created: Option<String>,
    /// `created_by`: the build step.
    pub created_by: Option<String>,
    /// `author`.
    pub author: Option<String>,
    /// `comment`.
    pub comment: Option<String>,
    /// The step made no layer (`ENV`, `CMD`, ...).
    pub empty_layer: bool,
}

impl History {
    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("created", &self.created),
            ("created_by", &self.created_by),
            ("author", &self.author),
            ("comment", &self.comment),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if self.empty_layer {
            m.insert("empty_layer".into(), json!(true));
        }
        Value::Object(m)
    }
}

impl Image {
    /// The same image on top of a base image: `layers` (the base's, bottom first, blobs in the
    /// same blob source) go below this image's layers, and the base's `history` before ours.
    ///
    /// `history`'s non-empty entries must be as many as `layers` (one per layer, in order).
    ///
    /// ```
    /// use image_core::image::{History, Image, RunConfig};
    /// # let platform = image_core::elf::Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
    /// let ours = Image { platform, created: 0, config: RunConfig::default(), layers: vec![], base_history: vec![], annotations: Default::default() };
    /// let history = vec![History { created_by: Some("ENV A=b".into()), empty_layer: true, ..History::default() }];
    /// let img = ours.on_base(vec![], history);
    /// let config: serde_json::Value = serde_json::from_slice(&img.config_json()).unwrap();
    /// assert_eq!(config["history"][0]["empty_layer"], true);
    /// ```
    pub fn on_base(mut self, layers: Vec<LayerInfo>, history: Vec<History>) -> Image {
        let mut all = layers;
        all.append(&mut self.layers);
        self.layers = all;
        self.base_history = history;
        self
    }

    /// The OCI image config, serialised deterministically (fixed key order, no whitespace).
    pub fn config_json(&self) -> Vec<u8> {
        let c = &self.config;
        let mut config = serde_json::Map::new();
        config.insert("User".into(), json!(c.user));
        if !c.exposed_ports.is_empty() {
            let ports: BTreeMap<&str, Value> = c
                .exposed_ports
                .iter()
                .map(|p| (p.as_str(), json!({})))
                .collect();
            config.insert("ExposedPorts".into(), json!(ports));
        }
        config.insert("Env".into(), json!(c.env));
        config.insert("Entrypoint".into(), json!(c.entrypoint));
        config.insert("Cmd".into(), json!(c.cmd));
        config.insert("WorkingDir".into(), json!(c.working_dir));
        config.insert("Labels".into(), json!(c.labels));
        if let Some(sig) = &c.stop_signal {
            config.insert("StopSignal".into(), json!(sig));
        }
        let created = rfc3339(self.created);
        // The base's history describes its layers (the first ones); ours describes the rest.
        let base_layers = self.base_history.iter().filter(|h| !h.empty_layer).count();
        let history: Vec<Value> = self
            .base_history
            .iter()
            .map(History::to_json)
            .chain(self.layers.iter().skip(base_layers).map(|l| {
                json!({"created": created, "created_by": format!("docker_release: {} layer", l.name)})
            }))
            .collect();
        let mut doc = serde_json::Map::new();
        doc.insert("created".into(), json!(created));
        doc.insert("architecture".into(), json!(self.platform.architecture));
        if let Some(v) = &self.platform.variant {
            doc.insert("variant".into(), json!(v));
        }
        doc.insert("os".into(), json!(self.platform.os));
        doc.insert("config".into(), Value::Object(config));
        doc.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": self.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()}),
        );
        doc.insert("history".into(), json!(history));
        to_bytes(&Value::Object(doc))
    }

    /// The image ID as the engine reports it: the digest of the config bytes.
    pub fn id(&self) -> Digest {
        Digest::of(&self.config_json())
    }

    /// The OCI image manifest bytes.
    pub fn manifest_json(&self) -> Vec<u8> {
        let config = self.config_json();
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({"mediaType": media_type::LAYER_GZIP, "digest": l.digest.to_string(), "size": l.size})
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::MANIFEST,
            "config": {
                "mediaType": media_type::CONFIG,
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": layers,
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        to_bytes(&manifest)
    }

    /// The manifest's digest (what a registry and `skopeo inspect --raw | sha256sum` report).
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest_json())
    }

    /// Sum of the compressed layer sizes plus config and manifest: the bytes a push uploads.
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum::<u64>()
            + self.config_json().len() as u64
            + self.manifest_json().len() as u64
    }
}

pub(crate) fn to_bytes(v: &Value) -> Vec<u8> {
    // serde_json without `preserve_order` keeps object keys sorted: deterministic by construction.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The latest image timestamp: the last second of year 9999. RFC 3339 has four-digit years, and
/// `docker load` and skopeo refuse an image whose `created` has more.
pub const MAX_CREATED: u64 = 253_402_300_799;

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
///
/// ```
/// assert_eq!(image_core::image::rfc3339(0), "1970-01-01T00:00:00Z");
/// assert_eq!(image_core::image::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
/// ```
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            created: 1_700_000_000,
            config: RunConfig {
                entrypoint: vec!["/app/bin/hello".into()],
                cmd: vec!["start".into()],
                env: vec!["LANG=C.UTF-8".into()],
                working_dir: "/app".into(),
                user: "65532:65532".into(),
                labels: BTreeMap::from([(
                    "org.opencontainers.image.version".into(),
                    "0.1.0".into(),
                )]),
                ..RunConfig::default()
            },
            layers: vec![LayerInfo {
                name: "app".into(),
                digest: Digest::of(b"blob"),
                diff_id: Digest::of(b"tar"),
                size: 4,
                uncompressed_size: 3,
                entries: 1,
            }],
            base_history: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn without_annotations_the_manifest_is_byte_for_byte_as_before() {
        // The bytes this image's manifest had before manifests could carry annotations.
        assert_eq!(
            String::from_utf8(image().manifest_json()).unwrap(),
            r#"{"config":{"digest":"sha256:5dab20c41855dd57ae71146a571b425f427bacd807c42a981d596eb34a9a38eb","mediaType":"application/vnd.oci.image.config.v1+json","size":449},"layers":[{"digest":"sha256:fa2c8cc4f28176bbeed4b736df569a34c79cd3723e9ec42f9674b4d46ac6b8b8","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":4}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#
        );
        assert_eq!(
            image().manifest_digest().to_string(),
            "sha256:625dec44f6976ac9b9deb6fe48ed7d0b7c079dd7bd4a5b2c09b2f74f54b22964"
        );
    }

    #[test]
    fn annotations_change_the_manifest_digest_not_the_image_id() {
        let mut annotated = image();
        annotated.annotations = BTreeMap::from([
            (
                "org.opencontainers.image.created".into(),
                "2023-11-14T22:13:20Z".into(),
            ),
            ("com.example.team".into(), "core".into()),
        ]);
        let m: Value = serde_json::from_slice(&annotated.manifest_json()).unwrap();
        assert_eq!(m["annotations"]["com.example.team"], "core");
        assert_eq!(annotated.id(), image().id());
        assert_ne!(annotated.manifest_digest(), image().manifest_digest());
    }
}
