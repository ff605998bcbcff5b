//! Supply chain: what the image is made of, said so that scanners and people can check it.
//!
//! The plan knows, for every file outside `/app`, why it is there; the build environment's
//! package database ([`pkgdb`]) says which package and version it came from; the release says
//! which applications and versions are in `/app`, and `mix.lock` (read on the Elixir side)
//! where each came from. [`survey`] puts these together:
//!
//! 1. the package records the image carries for its OS packages ([`pkgdb::records`]), so that
//!    vulnerability scanners (Trivy, Grype) see them;
//! 2. the SBOM ([`sbom::Sbom`], SPDX 2.3 or CycloneDX 1.5 JSON), embedded in the image.
//!
//! ERTS and the OTP and Elixir applications in `/app` were copied from the build environment
//! too (`/usr/lib/erlang`, `/usr/lib/elixir` on Debian): each is traced back to the file it
//! was copied from (a *probe*, matched by content: `erts-VSN/bin/erl_child_setup`,
//! `lib/APP-VSN/ebin/APP.app`) and so to its package (`erlang-base`, `erlang-crypto`,
//! `elixir`): OTP's own advisories are filed against those.
//!
//! The registry side (pure values here, sent by `image_io`): the SBOM as an OCI referrer and
//! cosign signatures ([`artifact`], [`signing`]). Package URLs: [`purl`].

pub mod artifact;
pub mod pkgdb;
pub mod purl;
pub mod sbom;
pub mod signing;

use crate::fs::Fs;
use pkgdb::{Owners, PackageDb, Probe};
use sbom::{App, Origin, OsPackage, Sbom, SbomFormat, SbomSpec};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

/// What [`survey`] reads.
pub struct SurveyInput<'a> {
    /// The build environment (and the release, at `release_dir`).
    pub fs: &'a dyn Fs,
    /// The assembled release.
    pub release_dir: &'a Path,
    /// The release's ERTS version.
    pub erts_vsn: &'a str,
    /// The project's own applications.
    pub own_apps: &'a [String],
    /// OTP's and Elixir's applications.
    pub otp_apps: &'a [String],
    /// Files and symlinks of the build environment copied into the image at the same path
    /// (canonical parents; no directories).
    pub copied: Vec<PathBuf>,
    /// What the SBOM needs besides; `None`: no SBOM.
    pub sbom: Option<&'a SbomSpec>,
    /// The base image, when the image has one.
    pub base: Option<&'a str>,
}

/// An SBOM document, ready to embed, write or attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomFile {
    /// Its format.
    pub format: SbomFormat,
    /// The document.
    pub bytes: Vec<u8>,
}

impl SbomFile {
    /// Where it goes in the image.
    pub fn image_path(&self) -> &'static str {
        self.format.image_path()
    }

    /// Its media type (the referrer's `artifactType`).
    pub fn media_type(&self) -> &'static str {
        self.format.media_type()
    }
}

/// What [`survey`] found.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Package records: `(path in the image, content, why)`.
    pub records: Vec<(PathBuf, Vec<u8>, String)>,
    /// The SBOM, if one was asked for.
    pub sbom: Option<SbomFile>,
    /// What the user should know.
    pub notices: Vec<String>,
}

/// The release's parts: ERTS and `lib/NAME-VSN` directories, sorted.
fn release_parts(fs: &dyn Fs, release_dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = fs
        .read_dir(&release_dir.join("lib"))?
        .iter()
        .filter_map(|n| {
            let n = n.to_string_lossy();
            // Application names cannot contain '-'; versions can.
            n.split_once('-')
                .map(|(a, v)| (a.to_string(), v.to_string()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The file of the build environment a release file was copied from: the first of
/// `candidates` (listed by a package) with the same content.
fn copied_from(fs: &dyn Fs, release_file: &Path, candidates: Vec<PathBuf>) -> Option<PathBuf> {
    let ours = fs.read(release_file).ok()?;
    let mut candidates = candidates;
    candidates.sort();
    candidates
        .into_iter()
        .find(|c| fs.read(c).is_ok_and(|b| b == ours))
}

/// Probes for ERTS and the OTP/Elixir applications of the release (see the module docs).
fn probes(
    fs: &dyn Fs,
    input: &SurveyInput<'_>,
    parts: &[(String, String)],
    listed: &pkgdb::Listed,
) -> Vec<Probe> {
    let mut out = Vec::new();
    let erts_bin = input
        .release_dir
        .join(format!("erts-{}", input.erts_vsn))
        .join("bin");
    if let Some(name) = ERTS_PROBES.iter().find(|n| fs.exists(&erts_bin.join(n))) {
        let suffix = format!("erts-{}/bin/{name}", input.erts_vsn);
        let candidates = listed
            .named(OsStr::new(name))
            .iter()
            .filter(|(p, _)| p.ends_with(&suffix))
            .map(|(p, _)| p.clone())
            .collect();
        if let Some(path) = copied_from(fs, &erts_bin.join(name), candidates) {
            out.push(Probe {
                path,
                part: format!("erts-{}", input.erts_vsn),
            });
        }
    }
    for (app, vsn) in parts {
        if !input.otp_apps.contains(app) {
            continue;
        }
        let file = format!("{app}.app");
        let with_vsn = format!("{app}-{vsn}/ebin/{file}");
        let without = format!("lib/{app}/ebin/{file}");
        let candidates = listed
            .named(OsStr::new(&file))
            .iter()
            .filter(|(p, _)| p.ends_with(&with_vsn) || p.ends_with(&without))
            .map(|(p, _)| p.clone())
            .collect();
        let ours = input
            .release_dir
            .join(format!("lib/{app}-{vsn}/ebin/{file}"));
        if let Some(path) = copied_from(fs, &ours, candidates) {
            out.push(Probe {
                path,
                part: format!("{app}-{vsn}"),
            });
        }
    }
    out
}

/// Files of ERTS's `bin/` compared to find where ERTS came from: the first one the release has
/// (`erl_child_setup` is small; `erl` and `start` are rewritten by `mix release`).
const ERTS_PROBES: &[&str] = &["erl_child_setup", "beam.smp"];

/// The package records and the SBOM of an image (see the module docs). Reading errors other
/// than "not found" are returned; a build environment without a package database gives no
/// records and a notice.
pub fn survey(input: &SurveyInput<'_>) -> io::Result<Findings> {
    let fs = input.fs;
    let mut findings = Findings::default();
    let db = PackageDb::read(fs)?;
    let distro = pkgdb::Distro::read(fs)?;
    let parts = release_parts(fs, input.release_dir)?;
    let mut owners = Owners::default();
    match &db {
        None => findings.notices.push(
            "the build environment has no dpkg or apk package database: the image carries no package records, so vulnerability scanners will not see its OS packages".into(),
        ),
        Some(db) => {
            findings.notices.extend(db.notices.iter().cloned());
            let mut names: HashSet<OsString> = input
                .copied
                .iter()
                .filter_map(|p| p.file_name())
                .map(OsStr::to_os_string)
                .collect();
            names.extend(ERTS_PROBES.iter().map(OsString::from));
            for (app, _) in &parts {
                if input.otp_apps.contains(app) {
                    names.insert(format!("{app}.app").into());
                }
            }
            let listed = db.listed(fs, &names)?;
            let probes = probes(fs, input, &parts, &listed);
            owners = db.owners(fs, &listed, &input.copied, &probes);
            for (path, bytes) in pkgdb::records(db, &owners) {
                let why = match db.kind {
                    pkgdb::DbKind::Dpkg => {
                        let name = path.file_name().map(OsStr::to_string_lossy).unwrap_or_default();
                        format!("record of the OS package {name}, for vulnerability scanners")
                    }
                    pkgdb::DbKind::Apk => {
                        "records of the OS packages, for vulnerability scanners".into()
                    }
                };
                findings.records.push((path, bytes, why));
            }
        }
    }
    let Some(spec) = input.sbom else {
        return Ok(findings);
    };
    let package = |i: usize| db.as_ref().map(|db| &db.packages[i]);
    let os_packages = owners
        .packages
        .keys()
        .filter_map(|&i| {
            let p = package(i)?;
            Some(OsPackage {
                kind: db.as_ref()?.kind.into(),
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                source: p.source.clone(),
                source_version: p.source_version.clone(),
            })
        })
        .collect();
    let from_package = |part: &str| {
        owners
            .probes
            .get(part)
            .and_then(|&i| package(i))
            .map(|p| (p.name.clone(), p.version.clone()))
    };
    let deps: BTreeMap<&str, &sbom::Dep> = spec.deps.iter().map(|d| (d.app.as_str(), d)).collect();
    let mut apps = vec![App {
        name: "erts".into(),
        version: input.erts_vsn.to_string(),
        origin: Origin::Otp {
            from_package: from_package(&format!("erts-{}", input.erts_vsn)),
        },
        depends_on: Vec::new(),
    }];
    for (name, vsn) in &parts {
        let (origin, depends_on) = if input.own_apps.contains(name) {
            (Origin::Own, Vec::new())
        } else if input.otp_apps.contains(name) {
            (
                Origin::Otp {
                    from_package: from_package(&format!("{name}-{vsn}")),
                },
                Vec::new(),
            )
        } else if let Some(d) = deps.get(name.as_str()) {
            (Origin::Dep(d.source.clone()), d.depends_on.clone())
        } else {
            (Origin::Unknown, Vec::new())
        };
        apps.push(App {
            name: name.clone(),
            version: vsn.clone(),
            origin,
            depends_on,
        });
    }
    let doc = Sbom {
        spec: spec.clone(),
        distro,
        os_packages,
        apps,
        base: input.base.map(str::to_string),
        unpackaged: owners
            .unowned
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    findings.sbom = Some(SbomFile {
        format: spec.format,
        bytes: doc.to_bytes(),
    });
    Ok(findings)
}

/// What a run does with the SBOM and a signing key besides the image itself: written as a file
/// (`--sbom PATH`) and, on a push, the signature made with the key (`--sign-key`). Carried by
/// the pipeline's request; its `Debug` shows no key.
#[derive(Clone, Default)]
pub struct Outputs {
    /// Where to write the SBOM.
    pub sbom_file: Option<PathBuf>,
    /// The PEM text of the signing key, checked by the caller ([`signing::SigningKey::from_pem`]).
    pub sign_key: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("sbom_file", &self.sbom_file)
            .field("sign_key", &self.sign_key.as_ref().map(|_| "(not shown)"))
            .finish()
    }
}
