//! Image documents as others write them, read into types: OCI and Docker v2 manifests and
//! indexes (one [`Document`], since a registry answers either for a tag), image configs
//! ([`ImageConfig`]), and the `manifest.json` of a docker-archive ([`ArchiveEntry`]).
//!
//! Reading is lenient where real documents vary and nothing depends on it: a missing or `null`
//! field reads as empty, a label or environment entry that is not a string is left out. The
//! shapes follow the OCI image specification (and oci-spec-rs's names); only the fields
//! docker_release reads are here. Our own documents are written by [`crate::image`].

use crate::elf::Platform;
use crate::image::History;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// A `null` or missing value as the type's default.
fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The strings of a list, other items left out.
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items: Option<Vec<Value>> = Option::deserialize(d)?;
    Ok(items
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// The entries of an object whose values are strings, others left out.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
        .collect())
}

/// The keys of an object (`ExposedPorts`: `{"4000/tcp": {}}`).
fn keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let map: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    Ok(map.unwrap_or_default().into_keys().collect())
}

/// A reference to a blob or manifest: what it is, its digest and size, and for an index entry
/// the platform it is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// `mediaType` (empty when not given).
    #[serde(default, deserialize_with = "or_default")]
    pub media_type: String,
    /// `digest` (empty when not given).
    #[serde(default, deserialize_with = "or_default")]
    pub digest: String,
    /// `size` in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// `platform` (index entries).
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

/// The `platform` of an index entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DescriptorPlatform {
    /// `os` (empty or `unknown` for entries that are not images: attestations).
    #[serde(default, deserialize_with = "or_default")]
    pub os: String,
    /// `architecture`.
    #[serde(default, deserialize_with = "or_default")]
    pub architecture: String,
    /// `variant` (empty when not given).
    #[serde(default, deserialize_with = "or_default")]
    pub variant: String,
}

impl DescriptorPlatform {
    /// `os/arch[/variant]`.
    pub fn name(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.architecture)
        } else {
            format!("{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }

    /// Whether an image of this platform runs on `want` (a variant is only compared when both
    /// name one).
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (self.variant.is_empty()
                || want.variant.as_deref().is_none_or(|v| v == self.variant))
    }

    /// Whether the entry is an image at all (attestations have an `unknown` or no OS).
    pub fn is_image(&self) -> bool {
        !self.os.is_empty() && self.os != "unknown"
    }
}

/// What a registry answers for a tag or digest: an image manifest (`config`, `layers`) or an
/// index / manifest list (`manifests`), OCI or Docker v2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// `schemaVersion` (1 is Docker's obsolete format).
    #[serde(default)]
    pub schema_version: Option<u64>,
    /// `mediaType`, when the document names its own.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob (a manifest).
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// The layer blobs, bottom first (a manifest).
    #[serde(default, deserialize_with = "or_default")]
    pub layers: Vec<Descriptor>,
    /// One entry per platform (an index).
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl Document {
    /// Whether it is an index (or a Docker manifest list): by its entries, its own media type,
    /// else `content_type` (the registry's `Content-Type`).
    pub fn is_index(&self, content_type: &str) -> bool {
        let kind = self.media_type.as_deref().unwrap_or(content_type);
        self.manifests.is_some() || kind.contains("index") || kind.contains("list")
    }

    /// The digest of the entry for `want` and the platforms the index lists (for a message
    /// when none matches).
    ///
    /// ```
    /// use image_core::oci::Document;
    /// let index: Document = serde_json::from_str(r#"{"manifests": [
    ///   {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
    ///   {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}}]}"#).unwrap();
    /// let amd64 = image_core::elf::Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
    /// assert_eq!(index.pick(&amd64), Ok("sha256:amd".to_string()));
    /// ```
    pub fn pick(&self, want: &Platform) -> Result<String, Vec<String>> {
        let mut available = Vec::new();
        for m in self.manifests.iter().flatten() {
            let p = m.platform.clone().unwrap_or_default();
            if !p.is_image() {
                continue;
            }
            if p.matches(want) && !m.digest.is_empty() {
                return Ok(m.digest.clone());
            }
            available.push(p.name());
        }
        Err(available)
    }
}

/// An image config: the parts a base image passes on, its platform, layers and history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `os` (`linux` when not given).
    #[serde(default)]
    pub os: Option<String>,
    /// `architecture` (`amd64` when not given).
    #[serde(default)]
    pub architecture: Option<String>,
    /// `variant`.
    #[serde(default)]
    pub variant: Option<String>,
    /// `config`: how a container runs.
    #[serde(default, deserialize_with = "or_default")]
    pub config: ContainerConfig,
    /// `rootfs`.
    #[serde(default, deserialize_with = "or_default")]
    pub rootfs: RootFs,
    /// `history`.
    #[serde(default, deserialize_with = "or_default")]
    pub history: Vec<HistoryEntry>,
}

impl ImageConfig {
    /// The platform, with Docker's defaults for what is not given.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone().unwrap_or_else(|| "linux".into()),
            architecture: self.architecture.clone().unwrap_or_else(|| "amd64".into()),
            variant: self.variant.clone(),
        }
    }
}

/// The `config` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerConfig {
    /// `Env`.
    #[serde(rename = "Env", default, deserialize_with = "strings")]
    pub env: Vec<String>,
    /// `User`.
    #[serde(rename = "User", default, deserialize_with = "or_default")]
    pub user: String,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default, deserialize_with = "or_default")]
    pub working_dir: String,
    /// `Labels`.
    #[serde(rename = "Labels", default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    /// The keys of `ExposedPorts`.
    #[serde(rename = "ExposedPorts", default, deserialize_with = "keys")]
    pub exposed_ports: Vec<String>,
    /// `StopSignal`.
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

/// The `rootfs` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// `diff_ids`: the sha256 of each layer's uncompressed tar, bottom first.
    #[serde(default, deserialize_with = "strings")]
    pub diff_ids: Vec<String>,
}

/// One entry of an image config's `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HistoryEntry {
    /// `created`.
    #[serde(default)]
    pub created: Option<String>,
    /// `created_by`.
    #[serde(default)]
    pub created_by: Option<String>,
    /// `author`.
    #[serde(default)]
    pub author: Option<String>,
    /// `comment`.
    #[serde(default)]
    pub comment: Option<String>,
    /// `empty_layer`.
    #[serde(default, deserialize_with = "or_default")]
    pub empty_layer: bool,
}

impl From<HistoryEntry> for History {
    fn from(h: HistoryEntry) -> History {
        History {
            created: h.created,
            created_by: h.created_by,
            author: h.author,
            comment: h.comment,
            empty_layer: h.empty_layer,
        }
    }
}

/// One image of a docker-archive's `manifest.json` (a list of these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ArchiveEntry {
    /// The config file's path in the archive (empty when not given).
    #[serde(rename = "Config", default, deserialize_with = "or_default")]
    pub config: String,
    /// The layer files' paths, bottom first.
    #[serde(rename = "Layers", default, deserialize_with = "strings")]
    pub layers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_missing_fields_and_odd_values_read_as_empty() {
        let c: ImageConfig = serde_json::from_str(
            r#"{"config": {"Env": null, "Labels": {"a": "b", "n": 1, "z": null},
                "ExposedPorts": {"4000/tcp": {}}, "User": null},
               "rootfs": {"type": "layers", "diff_ids": ["sha256:x"]},
               "history": [{"created_by": "ENV A=b", "empty_layer": true}, {}]}"#,
        )
        .unwrap();
        assert!(c.config.env.is_empty());
        assert_eq!(c.config.user, "");
        assert_eq!(c.config.labels, BTreeMap::from([("a".into(), "b".into())]));
        assert_eq!(c.config.exposed_ports, ["4000/tcp"]);
        assert_eq!(c.rootfs.diff_ids, ["sha256:x"]);
        assert!(c.history[0].empty_layer && !c.history[1].empty_layer);
        assert_eq!(c.platform().to_string(), "linux/amd64");
        let empty: ImageConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, ImageConfig::default());
    }

    #[test]
    fn an_index_is_known_by_its_entries_or_media_type() {
        let m: Document = serde_json::from_str(
            r#"{"schemaVersion": 2, "config": {"digest": "sha256:c"}, "layers": [{"mediaType": "x", "digest": "sha256:l", "size": 3}]}"#,
        )
        .unwrap();
        assert!(!m.is_index("application/vnd.oci.image.manifest.v1+json"));
        assert_eq!(m.layers[0].size, Some(3));
        assert!(m.is_index("application/vnd.docker.distribution.manifest.list.v2+json"));
        let i: Document = serde_json::from_str(r#"{"manifests": []}"#).unwrap();
        assert!(i.is_index(""));
    }
}
