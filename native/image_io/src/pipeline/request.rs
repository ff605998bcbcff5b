//! What one build is asked to do, and the checks of its values before any work.

use crate::error::{Failure, Reason};
use crate::registry::RegistryOptions;
use image_core::image::MAX_CREATED;
use image_core::plan::Settings;
use image_core::platform::PlatformOptions;
use image_core::reference::Reference;
use std::path::PathBuf;
use std::time::Duration;

/// How the engine is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineOutput {
    /// Not at all.
    Off,
    /// Load the image; no engine is an error.
    Load,
    /// Load the image; when no engine socket exists, write the archive at this path instead.
    LoadOrArchive(PathBuf),
}

/// Where the image goes: any combination, each output taking the same image.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The local engine.
    pub engine: EngineOutput,
    /// An archive file.
    pub archive: Option<PathBuf>,
    /// A registry (the tags name it).
    pub push: Option<RegistryOptions>,
}

impl Outputs {
    /// The outputs a user asked for: the engine is the default output (used when there is no
    /// `--output` and no `--push`, writing the archive at `fallback` when no engine socket
    /// exists); asked for explicitly (`--load`), it must be there.
    pub fn choose(
        load: bool,
        archive: Option<PathBuf>,
        push: Option<RegistryOptions>,
        fallback: PathBuf,
    ) -> Outputs {
        let engine = if load {
            EngineOutput::Load
        } else if archive.is_none() && push.is_none() {
            EngineOutput::LoadOrArchive(fallback)
        } else {
            EngineOutput::Off
        };
        Outputs {
            engine,
            archive,
            push,
        }
    }
}

/// Where the release comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Already assembled on the host at `settings.release_dir`; runtime files from the host.
    Host,
    /// Built in a container of this builder image; runtime files from that container.
    Builder {
        /// The builder image.
        image: String,
        /// `true`: `releases:` defines the release (`mix release NAME`); `false`: the default
        /// release of a project without `releases:` (a plain `mix release`).
        named_release: bool,
        /// The project on the host.
        project_dir: PathBuf,
        /// `MIX_ENV` of the build.
        mix_env: String,
        /// `false` for `--no-cache`.
        cache: bool,
    },
}

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where the release comes from.
    pub source: Source,
    /// What goes into the image (`release_dir` is ignored for builder builds).
    pub settings: Settings,
    /// A base image to put the release on, instead of the runtime files.
    pub base: Option<String>,
    /// `--platform`, `--platform-image`, `--emulate` as given: one image per platform and an
    /// index over them ([`super::plan_platforms`]; with `--emulate`, built in each platform's
    /// builder, [`super::find_emulators`]).
    pub platforms: PlatformOptions,
    /// Timestamp of the image and of every file in it.
    pub created: u64,
    /// gzip level 1–9.
    pub compression_level: u32,
    /// Tags (`NAME[:TAG]`).
    pub tags: Vec<String>,
    /// Scratch directory for layer blobs.
    pub work_dir: PathBuf,
    /// Where compressed layers are kept between builds (`None`: compress every layer).
    pub layer_cache: Option<PathBuf>,
    /// Destinations.
    pub outputs: Outputs,
    /// Where to write the JSON summary, if anywhere.
    pub metadata_file: Option<PathBuf>,
    /// The bound on silence of every engine request ([`crate::stall`]); registry requests
    /// take theirs from `outputs.push`.
    pub stall_timeout: Duration,
    /// The SBOM file (`--sbom`) and the key that signs a pushed image (`--sign-key`).
    pub supply: image_core::supply::Outputs,
}

impl Request {
    /// Where the run's layer blobs go (its own scratch directory).
    pub fn blobs(&self) -> image_core::archive::BlobDir {
        image_core::archive::BlobDir {
            root: self.work_dir.join("blobs"),
        }
    }
}

/// The bound on silence from the seconds the Elixir side gives (it validates them; 0 would mean
/// "fail at once").
pub fn stall_from_secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}

/// Check `req`'s values that would make a broken image or a confusing failure later (the
/// Elixir side checks them first, with the same rules; this is the second line for any other
/// caller), and parse its tags.
pub fn check_request(req: &Request) -> Result<Vec<Reference>, Failure> {
    let invalid = |m: String| Err(Failure::new(Reason::InvalidConfig, m));
    if req.created > MAX_CREATED {
        return invalid(format!(
            "invalid image timestamp (SOURCE_DATE_EPOCH): it must be from 0 to {MAX_CREATED} (9999-12-31T23:59:59Z), got: {}",
            req.created
        ));
    }
    for e in &req.settings.env {
        let name = e.split('=').next().unwrap_or_default();
        if !e.contains('=') || name.is_empty() || e.contains('\0') {
            return invalid(format!(
                "invalid container_env entry: expected NAME=value with a non-empty NAME and no NUL byte, got: {e:?}"
            ));
        }
    }
    for (k, v) in &req.settings.labels {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return invalid(format!(
                "invalid label: expected a non-empty key, and no NUL byte in key or value, got: {k:?} = {v:?}"
            ));
        }
    }
    if req.supply.sbom_file.is_some() && req.settings.sbom.is_none() {
        return invalid(
            "--sbom writes the image's SBOM, and this image has none (--no-sbom): drop one of them"
                .into(),
        );
    }
    if let Some(pem) = &req.supply.sign_key {
        if let Err(e) = image_core::supply::signing::SigningKey::from_pem(pem) {
            return invalid(format!("invalid signing key: the key {e}"));
        }
    }
    let paths = [
        Some(&req.settings.release_dir),
        Some(&req.work_dir),
        req.layer_cache.as_ref(),
        req.outputs.archive.as_ref(),
        req.metadata_file.as_ref(),
        req.supply.sbom_file.as_ref(),
    ];
    let extra = req.settings.extra_files.iter().map(Some);
    for p in paths.into_iter().chain(extra).flatten() {
        if p.as_os_str().as_encoded_bytes().contains(&0) {
            return invalid(format!("invalid path: it contains a NUL byte, got: {p:?}"));
        }
    }
    Ok(req
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            source: Source::Host,
            settings: Settings::default(),
            base: None,
            platforms: PlatformOptions::default(),
            created: 0,
            compression_level: 1,
            tags: vec!["hello:1".into()],
            work_dir: "/tmp/work".into(),
            layer_cache: None,
            outputs: Outputs {
                engine: EngineOutput::Off,
                archive: None,
                push: None,
            },
            metadata_file: None,
            stall_timeout: crate::stall::DEFAULT_STALL,
            supply: Default::default(),
        }
    }

    #[test]
    fn an_sbom_file_needs_an_sbom_and_a_key_must_sign_without_being_shown() {
        let mut r = request();
        r.supply.sbom_file = Some("/tmp/sbom.json".into());
        let f = check_request(&r).unwrap_err();
        assert!(f.message.contains("--no-sbom"), "{}", f.message);
        let mut r = request();
        r.supply.sign_key = Some(String::from("secret-not-a-key").into());
        let f = check_request(&r).unwrap_err();
        assert_eq!(f.reason, "invalid_config");
        assert!(f.message.contains("invalid signing key"), "{}", f.message);
        assert!(!f.message.contains("secret-not-a-key"), "{}", f.message);
    }

    #[test]
    fn values_that_would_break_the_image_are_refused_with_the_rule() {
        assert!(check_request(&request()).is_ok());
        let mut r = request();
        r.created = MAX_CREATED;
        assert!(check_request(&r).is_ok());
        r.created = MAX_CREATED + 1;
        let f = check_request(&r).unwrap_err();
        assert_eq!(f.reason, "invalid_config");
        assert!(f.message.contains("9999-12-31T23:59:59Z"), "{}", f.message);
        assert!(f.message.contains("253402300800"), "{}", f.message);

        for bad in ["A\0B=x", "A=x\0", "=x", "NOEQUALS"] {
            let mut r = request();
            r.settings.env = vec![bad.into()];
            let f = check_request(&r).unwrap_err();
            assert!(f.message.contains("NAME=value"), "{bad:?}: {}", f.message);
        }
        let mut r = request();
        r.settings.labels.insert("k".into(), "v\0".into());
        assert!(check_request(&r).is_err());
        let mut r = request();
        r.settings.extra_files = vec!["/etc/a\0b".into()];
        assert!(check_request(&r).unwrap_err().message.contains("NUL byte"));
    }
}
