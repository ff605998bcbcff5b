//! The IO edge of docker_release: the Docker Engine API, registries, archive files, and the
//! pipeline that runs one build through them. Image logic lives in `image_core`; this crate
//! moves bytes.
//!
//! A folder per concern:
//!
//! - [`pipeline`]: one build as its stages (destinations, release, base, plan, layers,
//!   publish), called by the NIF;
//! - [`builder`]: the release built in a builder container, and that container's filesystem
//!   read lazily;
//! - [`base`]: a base image read from the engine or its registry;
//! - [`sink`]: the outputs (engine, archive file, registry, metadata file), one interface,
//!   committed together;
//! - [`engine`]: every call to the Docker engine, its address and transport;
//! - [`registry`]: the distribution API both ways, credentials;
//! - [`dockerfiles`]: the article's two-Dockerfile flow;
//! - [`error`]: every reason a run fails with, and the failure that crosses the NIF boundary.
#![deny(missing_docs)]
pub mod base;
pub mod builder;
mod channel;
pub mod clean;
pub mod dockerfiles;
pub mod engine;
pub mod error;
mod lines;
pub mod lock;
pub mod outcome;
pub mod pipeline;
mod process;
pub mod registry;
pub mod sink;
pub mod stall;
