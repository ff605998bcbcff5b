//! The IO edge of docker_release: the Docker Engine API, registries, archive files and the
//! end-to-end pipeline. Image logic lives in `image_core`; this crate only moves bytes.
#![deny(missing_docs)]
pub mod base;
pub mod builder;
mod channel;
pub mod clean;
pub mod container_fs;
pub mod credentials;
pub mod dockerfiles;
pub mod engine;
pub mod pending;
pub mod pipeline;
mod process;
pub mod registry;
pub mod sink;
pub mod stall;
mod transport;
