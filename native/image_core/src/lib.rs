//! Pure image logic for docker_release: no tokio, no Docker.
//!
//! The data flow is `plan` (release + build environment → layer specs, via `closure` and `elf`)
//! → `build` (layer specs → blobs + [`image::Image`]) → `archive` (image → archive bytes).
#![deny(missing_docs)]
pub mod archive;
pub mod build;
pub mod closure;
pub mod context;
pub mod digest;
pub mod elf;
pub mod fs;
pub mod glibc;
pub mod image;
pub mod layer;
pub mod plan;
pub mod reference;
pub mod supply;
