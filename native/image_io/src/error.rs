//! Every way a run can fail, in one place: the [`Reason`]s the Elixir side matches on (each an
//! atom in `lib/docker_release/error.ex`, which a test here keeps in step with this list), and
//! the [`Failure`] that crosses the NIF boundary (a reason plus a message a person can act on).
//!
//! Each module's error type says which reason each of its variants is (`EngineError::reason`,
//! `RegistryError::reason`, …); the errors of `image_core`, which knows nothing of reasons,
//! are mapped here.

use image_core::build::BuildError;
use image_core::layer::LayerError;
use image_core::plan::{BasePlanError, PlanError};
use image_core::reference::ReferenceError;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Why a run failed, as the Elixir side matches on it (the atom [`Reason::as_str`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order of `lib/docker_release/error.ex`.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The atom's name.
            ///
            /// ```
            /// use image_io::error::Reason;
            /// assert_eq!(Reason::EngineStalled.as_str(), "engine_stalled");
            /// ```
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    // Input.
    /// A setting has a value that cannot be used.
    InvalidConfig = "invalid_config",
    /// A tag or image reference is not valid.
    InvalidReference = "invalid_reference",
    /// The release directory is not an assembled release.
    NotARelease = "not_a_release",
    /// A Dockerfile of the two-Dockerfile flow does not exist.
    DockerfileMissing = "dockerfile_missing",
    // Building.
    /// `mix release` failed (on the host or in a builder container).
    ReleaseBuildFailed = "release_build_failed",
    /// The release is not for Linux.
    NotLinux = "not_linux",
    /// A library, tool or extra file the image needs is missing.
    MissingRuntimeFile = "missing_runtime_file",
    /// A file could not be read.
    ReadError = "read_error",
    /// The builder image is not in the engine.
    BuilderImageMissing = "builder_image_missing",
    /// Something in the builder container did not behave.
    BuilderError = "builder_error",
    /// A `docker build` of the two-Dockerfile flow failed.
    BuildFailed = "build_failed",
    /// The build image of the two-Dockerfile flow has no usable release tarball.
    TarballMissing = "tarball_missing",
    // Base images.
    /// Neither the engine nor the registry has the base image.
    BaseNotFound = "base_not_found",
    /// The base image cannot run the release.
    BaseIncompatible = "base_incompatible",
    /// The base image could not be read.
    BaseError = "base_error",
    /// An image of another platform (`--platform`) cannot provide that platform's files.
    PlatformIncompatible = "platform_incompatible",
    // The engine.
    /// The engine's address is not usable.
    EngineConfig = "engine_config",
    /// The engine cannot be reached.
    EngineUnreachable = "engine_unreachable",
    /// The engine refused or failed a request.
    EngineError = "engine_error",
    /// A request to the engine moved no byte and got no answer for the stall timeout.
    EngineStalled = "engine_stalled",
    /// The engine did not load the image we sent.
    LoadFailed = "load_failed",
    /// The engine runs another platform than the image's.
    PlatformMismatch = "platform_mismatch",
    // Registries.
    /// A tag to push names no registry.
    RegistryNoHost = "registry_no_host",
    /// The registry refused access.
    RegistryUnauthorized = "registry_unauthorized",
    /// The registry answered 404 for something that must exist.
    RegistryNotFound = "registry_not_found",
    /// The registry failed (5xx).
    RegistryError = "registry_error",
    /// The registry cannot be reached.
    RegistryUnreachable = "registry_unreachable",
    /// A request to the registry made no progress for the stall timeout.
    RegistryStalled = "registry_stalled",
    /// The registry answered something the protocol does not allow.
    RegistryProtocol = "registry_protocol",
    /// A layer blob could not be read for the push.
    RegistryBlobUnreadable = "registry_blob_unreadable",
    /// The CA file is unusable.
    RegistryCaFile = "registry_ca_file",
    /// Credentials could not be read.
    RegistryCredentials = "registry_credentials",
    /// The registry client could not be set up.
    RegistryInternal = "registry_internal",
    // Other.
    /// An output file could not be written.
    OutputError = "output_error",
    /// The run was cancelled (its caller died).
    Cancelled = "cancelled",
    /// A bug.
    Internal = "internal",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A failed run: a reason the caller can match on and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Machine-readable reason (an atom on the Elixir side).
    pub reason: Reason,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    /// A failure for `reason` with `message`.
    pub fn new(reason: Reason, message: impl ToString) -> Failure {
        Failure {
            reason,
            message: message.to_string(),
        }
    }

    /// A bug: something that should not happen did.
    pub fn internal(message: impl ToString) -> Failure {
        Failure::new(Reason::Internal, message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// Errors that know their reason become failures with their message.
macro_rules! failure_from {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Failure {
            fn from(e: $t) -> Failure {
                Failure::new(e.reason(), e)
            }
        })*
    };
}

failure_from!(
    crate::engine::EngineError,
    crate::registry::RegistryError,
    crate::builder::BuilderError,
    crate::dockerfiles::FlowError,
    crate::base::BaseError,
    crate::sink::SinkError,
);

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Failure {
        let reason = match &e {
            PlanError::NotARelease { .. } => Reason::NotARelease,
            PlanError::NotLinux { .. } => Reason::NotLinux,
            PlanError::Read { .. } => Reason::ReadError,
            PlanError::Closure(_) | PlanError::MissingTool(_) => Reason::MissingRuntimeFile,
            PlanError::ExtraFile { .. } => Reason::InvalidConfig,
        };
        Failure::new(reason, e)
    }
}

impl From<BasePlanError> for Failure {
    fn from(e: BasePlanError) -> Failure {
        match e {
            BasePlanError::Plan(e) => e.into(),
            BasePlanError::Incompatible(e) => Failure::new(Reason::BaseIncompatible, e),
        }
    }
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Failure {
        let reason = match &e {
            BuildError::Layer {
                source: LayerError::Cancelled,
                ..
            } => Reason::Cancelled,
            BuildError::Layer { .. } => Reason::ReadError,
            BuildError::Blobs { .. } => Reason::OutputError,
        };
        Failure::new(reason, e)
    }
}

impl From<ReferenceError> for Failure {
    fn from(e: ReferenceError) -> Failure {
        Failure::new(Reason::InvalidReference, e)
    }
}

/// `e` and its sources, joined with `: `, without repeats: an error as one line of text.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// The `name: :origin` pairs of `@reasons` in `lib/docker_release/error.ex`.
    fn elixir_reasons() -> Vec<(String, String)> {
        let text = std::fs::read_to_string(repo().join("lib/docker_release/error.ex")).unwrap();
        let start = text.find("@reasons [").expect("error.ex defines @reasons");
        let end = start + text[start..].find("\n  ]").expect("@reasons ends");
        text[start..end]
            .split([',', '[', '\n'])
            .filter_map(|item| {
                let (name, origin) = item.trim().split_once(": :")?;
                let name = name.trim();
                let origin: String = origin
                    .chars()
                    .take_while(char::is_ascii_lowercase)
                    .collect();
                (name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !name.is_empty())
                    .then(|| (name.to_string(), origin))
            })
            .collect()
    }

    #[test]
    fn the_elixir_list_and_the_rust_list_agree() {
        let elixir = elixir_reasons();
        for (name, origin) in &elixir {
            assert!(
                ["native", "elixir", "both"].contains(&origin.as_str()),
                "{name}: {origin}"
            );
        }
        let from_nif: Vec<&str> = elixir
            .iter()
            .filter(|(_, o)| o != "elixir")
            .map(|(n, _)| n.as_str())
            .collect();
        let rust: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            from_nif, rust,
            "lib/docker_release/error.ex's reasons marked :native or :both must be Reason::ALL, in order"
        );
        let unique: BTreeSet<&str> = rust.iter().copied().collect();
        assert_eq!(unique.len(), rust.len(), "a reason is listed twice");
    }

    #[test]
    fn every_reason_the_elixir_code_raises_is_listed_as_raised_there() {
        let listed: BTreeSet<String> = elixir_reasons()
            .into_iter()
            .filter(|(_, o)| o != "native")
            .map(|(n, _)| n)
            .collect();
        let mut raised = BTreeSet::new();
        let mut dirs = vec![repo().join("lib")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "ex") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (i, _) in text.match_indices("reason: :") {
                        let name: String = text[i + "reason: :".len()..]
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        raised.insert(name);
                    }
                }
            }
        }
        let missing: Vec<&String> = raised.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "raised in lib/ but not listed as :elixir or :both in error.ex: {missing:?}"
        );
    }
}
