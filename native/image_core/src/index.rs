//! The OCI image index over one image per platform (a multi-platform image).
//!
//! Like an [`Image`], an [`ImageIndex`] is an immutable value; its document is written with
//! sorted keys, and its entries are in one canonical order (by os, architecture, variant), so
//! `--platform linux/arm64,linux/amd64` and `--platform linux/amd64,linux/arm64` give the same
//! index digest. Each entry's `platform` is its image config's (`arm64` has variant `v8`, the
//! OCI image spec's value for it).

use crate::digest::Digest;
use crate::elf::Platform;
use crate::image::{media_type, to_bytes, Image};
use serde_json::{json, Value};

/// One image per platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    images: Vec<Image>,
}

/// Why images cannot form an index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// No image.
    #[error("an image index needs at least one image")]
    Empty,
    /// Two images of one platform.
    #[error("two images for {0}: an image index holds one image per platform")]
    Duplicate(String),
}

impl ImageIndex {
    /// The index of `images`, put in canonical order.
    ///
    /// ```
    /// use image_core::image::{Image, RunConfig};
    /// use image_core::index::ImageIndex;
    /// let image = |platform: &str| Image {
    ///     platform: image_core::platform::parse(platform).unwrap(),
    ///     created: 0, config: RunConfig::default(), layers: vec![], base_history: vec![],
    ///     annotations: Default::default(),
    /// };
    /// let a = ImageIndex::new(vec![image("linux/arm64"), image("linux/amd64")]).unwrap();
    /// let b = ImageIndex::new(vec![image("linux/amd64"), image("linux/arm64")]).unwrap();
    /// assert_eq!(a.digest(), b.digest());
    /// let doc: serde_json::Value = serde_json::from_slice(&a.json()).unwrap();
    /// assert_eq!(doc["manifests"][1]["platform"]["variant"], "v8");
    /// ```
    pub fn new(mut images: Vec<Image>) -> Result<ImageIndex, IndexError> {
        if images.is_empty() {
            return Err(IndexError::Empty);
        }
        images.sort_by(|a, b| a.platform.cmp(&b.platform));
        if let Some(w) = images.windows(2).find(|w| w[0].platform == w[1].platform) {
            return Err(IndexError::Duplicate(w[0].platform.to_string()));
        }
        Ok(ImageIndex { images })
    }

    /// The images, in the index's order.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// The image of `platform`, if the index has one.
    pub fn image(&self, platform: &Platform) -> Option<&Image> {
        self.images.iter().find(|i| i.platform == *platform)
    }

    /// The index document (`application/vnd.oci.image.index.v1+json`), deterministic bytes.
    pub fn json(&self) -> Vec<u8> {
        let manifests: Vec<Value> = self
            .images
            .iter()
            .map(|image| {
                let mut platform = json!({
                    "architecture": image.platform.architecture,
                    "os": image.platform.os,
                });
                if let Some(v) = &image.platform.variant {
                    platform["variant"] = json!(v);
                }
                json!({
                    "mediaType": media_type::MANIFEST,
                    "digest": image.manifest_digest().to_string(),
                    "size": image.manifest_json().len(),
                    "platform": platform,
                })
            })
            .collect();
        to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::INDEX,
            "manifests": manifests,
        }))
    }

    /// The index's digest: what a registry reports for a tag that names it, and what
    /// `REPO@sha256:…` deploys.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.json())
    }
}
