//! Pure image logic for docker_release: no tokio, no Docker.
//!
//! The data flow is `plan` (release + build environment → layer specs, via `closure` and `elf`)
//! → `build` (layer specs → blobs + [`image::Image`]) → `archive` (image → archive bytes).
//! `oci` reads the documents of others' images (base images) into types.
//!
//! For several platforms (`platform`: which ones), each other platform's plan is made by
//! `foreign` (the release's ELF files and the runtime files from an image of that platform),
//! and `index` holds the images, one per platform, that `archive` writes together.
#![deny(missing_docs)]
pub mod archive;
pub mod build;
pub mod closure;
pub mod context;
pub mod digest;
pub mod elf;
pub mod foreign;
pub mod fs;
pub mod glibc;
pub mod image;
pub mod index;
pub mod layer;
pub mod oci;
pub mod plan;
pub mod platform;
pub mod reference;
pub mod supply;
