//! The image's software bill of materials, as SPDX 2.3 JSON or CycloneDX 1.5 JSON.
//!
//! An [`Sbom`] lists what the image is made of:
//!
//! - the image itself (a container, named and versioned as the release);
//! - the distribution of the build environment (os-release), when it has one;
//! - every OS package that contributed a file ([`crate::supply::pkgdb`]), with its purl
//!   (`pkg:deb/debian/NAME@VERSION?arch=…&distro=debian-12.11&upstream=SOURCE`, or `pkg:apk/…`)
//!   and its source package (`sourceInfo: built package from: glibc 2.36-9`, the form Trivy
//!   reads back);
//! - ERTS and every application of the release, with its version and where it came from:
//!   ERTS and OTP/Elixir applications as `pkg:otp/NAME@VSN` (and the OS package they were copied
//!   from), Hex packages as `pkg:hex/NAME@VSN` with the tarball's SHA-256 from `mix.lock`, git
//!   dependencies with their revision (`pkg:github/…`, `git+https://…@REV`), path dependencies
//!   and the project's own applications (with the project's git source and revision when known).
//!
//! Relationships: the document describes the image; the image contains every package; an
//! application depends on the ones `mix.lock` lists for it.
//!
//! **Deterministic**: the same inputs give the same bytes. Packages are sorted; JSON objects
//! are written with sorted keys; identifiers are derived from names; the SPDX namespace and
//! the CycloneDX serial number are derived from a SHA-256 of the rest of the document (a
//! conscious choice: the spec asks for a *unique* URI and says a serial number *should* be
//! random; a content hash is unique per content and reproducible). No image digest is in the
//! document: it is embedded in the image, whose digest it would change.

use crate::digest::Digest;
use crate::image::rfc3339;
use crate::supply::pkgdb::{DbKind, Distro};
use crate::supply::purl::{encode, Purl};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// Which document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SbomFormat {
    /// SPDX 2.3 JSON (the default).
    #[default]
    Spdx,
    /// CycloneDX 1.5 JSON.
    CycloneDx,
}

impl SbomFormat {
    /// The format named `spdx` or `cyclonedx`.
    pub fn parse(name: &str) -> Option<SbomFormat> {
        match name {
            "spdx" => Some(SbomFormat::Spdx),
            "cyclonedx" => Some(SbomFormat::CycloneDx),
            _ => None,
        }
    }

    /// The IANA media type, also the referrer's `artifactType`.
    pub fn media_type(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "application/spdx+json",
            SbomFormat::CycloneDx => "application/vnd.cyclonedx+json",
        }
    }

    /// Where the document goes in the image (file names scanners recognise).
    pub fn image_path(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "/sbom.spdx.json",
            SbomFormat::CycloneDx => "/sbom.cdx.json",
        }
    }

    /// For people: `SPDX 2.3`, `CycloneDX 1.5`.
    pub fn describe(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "SPDX 2.3",
            SbomFormat::CycloneDx => "CycloneDX 1.5",
        }
    }
}

/// Where a dependency of the release came from (`mix.lock`, `mix.exs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepSource {
    /// A Hex package.
    Hex {
        /// The package's name on Hex (may differ from the application's).
        package: String,
        /// The repository (`hexpm`, `hexpm:ORG`).
        repo: String,
        /// SHA-256 of the package tarball (`mix.lock`'s outer checksum), hex.
        checksum: Option<String>,
    },
    /// A git repository.
    Git {
        /// The repository URL as `mix.lock` has it.
        url: String,
        /// The commit.
        rev: String,
    },
    /// A directory (`path:` or `in_umbrella:`).
    Path {
        /// The path relative to the project, when inside it.
        path: Option<String>,
    },
}

/// A dependency of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// The application name.
    pub app: String,
    /// Where it came from.
    pub source: DepSource,
    /// Applications it depends on (from `mix.lock`).
    pub depends_on: Vec<String>,
}

/// What the caller knows that the image's files do not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbomSpec {
    /// Document format.
    pub format: SbomFormat,
    /// The image's name (the app, or an umbrella's release).
    pub name: String,
    /// The image's version (the release's).
    pub version: String,
    /// The project's source URL (`org.opencontainers.image.source`), if known.
    pub source: Option<String>,
    /// The project's commit (`org.opencontainers.image.revision`), if known.
    pub revision: Option<String>,
    /// The creating tool's version (`docker_release-VERSION`).
    pub tool_version: String,
    /// The image's timestamp (`SOURCE_DATE_EPOCH`): the document's creation time.
    pub created: u64,
    /// The project's dependencies and where each came from.
    pub deps: Vec<Dep>,
}

/// An OS package in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OsPackage {
    /// dpkg or apk.
    pub kind: OsKind,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Source package name, when it differs.
    pub source: Option<String>,
    /// Source package version, when it differs.
    pub source_version: Option<String>,
}

/// The package type of an [`OsPackage`] (`deb` or `apk` purls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OsKind {
    /// Debian package.
    Deb,
    /// Alpine package.
    Apk,
}

impl From<DbKind> for OsKind {
    fn from(k: DbKind) -> OsKind {
        match k {
            DbKind::Dpkg => OsKind::Deb,
            DbKind::Apk => OsKind::Apk,
        }
    }
}

/// Where a part of the release came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// ERTS or an OTP/Elixir application, copied from this OS package (`name version`) when
    /// known.
    Otp {
        /// The OS package its files came from.
        from_package: Option<(String, String)>,
    },
    /// One of the project's own applications.
    Own,
    /// A dependency.
    Dep(DepSource),
    /// A dependency of unknown source (neither in `mix.lock` nor a known path dependency).
    Unknown,
}

/// ERTS or an application of the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// `erts` or the application's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where it came from.
    pub origin: Origin,
    /// Applications it depends on.
    pub depends_on: Vec<String>,
}

/// Everything the document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sbom {
    /// What the caller supplied.
    pub spec: SbomSpec,
    /// The build environment's distribution.
    pub distro: Option<Distro>,
    /// OS packages.
    pub os_packages: Vec<OsPackage>,
    /// ERTS and the release's applications.
    pub apps: Vec<App>,
    /// The base image's reference, for images on a base.
    pub base: Option<String>,
    /// Files copied from the build environment that no OS package lists (the CA bundle that
    /// `update-ca-certificates` generates, alternatives symlinks), said on the image.
    pub unpackaged: Vec<String>,
}

/// An SPDX identifier body: letters, digits, `.` and `-` only (pyspdxtools checks
/// `^SPDXRef-[\da-zA-Z.-]+$`).
///
/// ```
/// assert_eq!(image_core::supply::sbom::spdx_id_part("libstdc++6:amd64"), "libstdc--6-amd64");
/// ```
pub fn spdx_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Unique ids: a second use of the same id gets `-2`, a third `-3`, ….
#[derive(Default)]
struct Ids(HashSet<String>);

impl Ids {
    fn take(&mut self, base: String) -> String {
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }
}

/// A git URL without credentials, query or fragment: `(host, path without .git)` and the
/// https URL, for `https://`, `ssh://` and scp-like `git@host:path` URLs.
fn git_parts(url: &str) -> Option<(String, String, String)> {
    let rest = if let Some(r) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("ssh://"))
        .or_else(|| url.strip_prefix("git://"))
    {
        r.to_string()
    } else {
        // scp-like: [user@]host:path
        let (host, path) = url.split_once(':')?;
        if host.contains('/') || path.starts_with("//") {
            return None;
        }
        format!("{host}/{path}")
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/')?;
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = path.trim_matches('/');
    if host.is_empty() || path.is_empty() {
        return None;
    }
    let https = format!("https://{host}/{path}");
    let bare = path.strip_suffix(".git").unwrap_or(path).to_string();
    Some((host, bare, https))
}

/// A package in the document, format-neutral.
struct Pkg {
    id: String,
    name: String,
    version: String,
    purl: Option<String>,
    download: Option<String>,
    sha256: Option<String>,
    source_info: Option<String>,
    comment: Option<String>,
    /// SPDX `primaryPackagePurpose`.
    purpose: Option<&'static str>,
    /// CycloneDX component type.
    cdx_type: &'static str,
    /// CycloneDX external references: `(type, url)`.
    refs: Vec<(&'static str, String)>,
    depends_on: Vec<String>,
}

impl Sbom {
    fn distro_qualifier(&self) -> Option<String> {
        self.distro
            .as_ref()
            .map(|d| format!("{}-{}", d.id, d.version_id))
    }

    /// The packages of the document, image first, then the distribution, OS packages and the
    /// release's parts, each group sorted.
    fn packages(&self) -> Vec<Pkg> {
        let mut ids = Ids::default();
        let mut out = Vec::new();
        let s = &self.spec;
        out.push(Pkg {
            id: ids.take("Image".into()),
            name: s.name.clone(),
            version: s.version.clone(),
            purl: None,
            download: None,
            sha256: None,
            source_info: None,
            comment: {
                let mut parts = Vec::new();
                if let Some(b) = &self.base {
                    parts.push(format!("built on the base image {b}"));
                }
                if !self.unpackaged.is_empty() {
                    let mut files = self.unpackaged.clone();
                    files.sort();
                    parts.push(format!(
                        "files copied from the build environment that no OS package lists: {}",
                        files.join(", ")
                    ));
                }
                Some(parts.join("; ")).filter(|c| !c.is_empty())
            },
            purpose: Some("CONTAINER"),
            cdx_type: "container",
            refs: Vec::new(),
            depends_on: Vec::new(),
        });
        if let Some(d) = &self.distro {
            out.push(Pkg {
                id: ids.take(format!("OperatingSystem-{}", spdx_id_part(&d.id))),
                name: d.id.clone(),
                version: d.version_id.clone(),
                purl: None,
                download: None,
                sha256: None,
                source_info: None,
                comment: Some(d.pretty_name.clone()).filter(|p| !p.is_empty()),
                purpose: Some("OPERATING_SYSTEM"),
                cdx_type: "operating-system",
                refs: Vec::new(),
                depends_on: Vec::new(),
            });
        }
        let vendor = self
            .distro
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_default();
        let mut os = self.os_packages.clone();
        os.sort();
        for p in &os {
            let (ty, kind) = match p.kind {
                OsKind::Deb => ("deb", "deb"),
                OsKind::Apk => ("apk", "apk"),
            };
            let mut purl = Purl::new(ty, &p.name)
                .namespace(if vendor.is_empty() {
                    if p.kind == OsKind::Deb {
                        "debian"
                    } else {
                        "alpine"
                    }
                } else {
                    &vendor
                })
                .version(&p.version)
                .qualifier("arch", &p.arch);
            if let Some(d) = self.distro_qualifier() {
                purl = purl.qualifier("distro", &d);
            }
            let source_name = p.source.clone().unwrap_or_else(|| p.name.clone());
            let source_version = p
                .source_version
                .clone()
                .unwrap_or_else(|| p.version.clone());
            if p.source.is_some() || p.source_version.is_some() {
                // Syft's `upstream` qualifier, from which Grype matches source-package advisories.
                let upstream = match &p.source_version {
                    Some(v) => format!("{source_name}@{v}"),
                    None => source_name.clone(),
                };
                purl = purl.qualifier("upstream", &upstream);
            }
            out.push(Pkg {
                id: ids.take(format!(
                    "{kind}-{}-{}",
                    spdx_id_part(&p.name),
                    spdx_id_part(&p.arch)
                )),
                name: p.name.clone(),
                version: p.version.clone(),
                purl: Some(purl.to_string()),
                download: None,
                sha256: None,
                source_info: Some(format!(
                    "built package from: {source_name} {source_version}"
                )),
                comment: None,
                purpose: None,
                cdx_type: "library",
                refs: Vec::new(),
                depends_on: Vec::new(),
            });
        }
        let mut apps = self.apps.clone();
        apps.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        let app_ids: BTreeMap<&str, String> = apps
            .iter()
            .map(|a| (a.name.as_str(), format!("App-{}", spdx_id_part(&a.name))))
            .collect();
        let mut taken_ids: BTreeMap<&str, String> = BTreeMap::new();
        for a in &apps {
            let id = ids.take(app_ids[a.name.as_str()].clone());
            taken_ids.insert(a.name.as_str(), id.clone());
            let mut pkg = Pkg {
                id,
                name: a.name.clone(),
                version: a.version.clone(),
                purl: None,
                download: None,
                sha256: None,
                source_info: None,
                comment: None,
                purpose: Some("LIBRARY"),
                cdx_type: "library",
                refs: Vec::new(),
                depends_on: a.depends_on.clone(),
            };
            match &a.origin {
                Origin::Otp { from_package } => {
                    pkg.purl = Some(Purl::new("otp", &a.name).version(&a.version).to_string());
                    pkg.purpose = Some("FRAMEWORK");
                    pkg.cdx_type = "framework";
                    pkg.source_info = from_package
                        .as_ref()
                        .map(|(n, v)| format!("copied from the OS package {n} {v}"));
                }
                Origin::Own => {
                    pkg.purpose = Some("APPLICATION");
                    pkg.cdx_type = "application";
                    pkg.purl = Some(Purl::new("otp", &a.name).version(&a.version).to_string());
                    pkg.comment = Some("an application of the project".into());
                    if let (Some(src), Some(rev)) = (&s.source, &s.revision) {
                        if let Some((_, _, https)) = git_parts(src) {
                            pkg.download = Some(format!("git+{https}@{rev}"));
                            pkg.refs.push(("vcs", https));
                        }
                    }
                }
                Origin::Dep(DepSource::Hex {
                    package,
                    repo,
                    checksum,
                }) => {
                    let org = repo.strip_prefix("hexpm:");
                    pkg.purl = Some(
                        Purl::new("hex", &package.to_ascii_lowercase())
                            .namespace(org.unwrap_or_default())
                            .version(&a.version)
                            .to_string(),
                    );
                    if repo == "hexpm" {
                        let url = format!(
                            "https://repo.hex.pm/tarballs/{}-{}.tar",
                            encode(package),
                            encode(&a.version)
                        );
                        pkg.download = Some(url.clone());
                        pkg.refs.push(("distribution", url));
                    } else {
                        pkg.comment = Some(format!("from the Hex repository {repo}"));
                    }
                    pkg.sha256 = checksum
                        .clone()
                        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                        .map(|c| c.to_ascii_lowercase());
                }
                Origin::Dep(DepSource::Git { url, rev }) => {
                    match git_parts(url) {
                        Some((host, path, https)) => {
                            let ty = match host.as_str() {
                                "github.com" => Some("github"),
                                "gitlab.com" => Some("gitlab"),
                                "bitbucket.org" => Some("bitbucket"),
                                _ => None,
                            };
                            let purl = match (ty, path.rsplit_once('/')) {
                                (Some(ty), Some((ns, name))) => {
                                    Purl::new(ty, &name.to_ascii_lowercase())
                                        .namespace(&ns.to_ascii_lowercase())
                                        .version(rev)
                                }
                                _ => Purl::new("generic", &a.name)
                                    .version(&a.version)
                                    .qualifier("vcs_url", &format!("git+{https}@{rev}")),
                            };
                            pkg.purl = Some(purl.to_string());
                            pkg.download = Some(format!("git+{https}@{rev}"));
                            pkg.refs.push(("vcs", https));
                        }
                        None => {
                            pkg.purl = Some(
                                Purl::new("generic", &a.name)
                                    .version(&a.version)
                                    .to_string(),
                            );
                        }
                    }
                    pkg.comment = Some(format!("git dependency at revision {rev}"));
                }
                Origin::Dep(DepSource::Path { path }) => {
                    pkg.purl = Some(
                        Purl::new("generic", &a.name)
                            .version(&a.version)
                            .to_string(),
                    );
                    pkg.comment = Some(match path {
                        Some(p) => format!("path dependency ({p})"),
                        None => "path dependency".into(),
                    });
                }
                Origin::Unknown => {
                    pkg.purl = Some(
                        Purl::new("generic", &a.name)
                            .version(&a.version)
                            .to_string(),
                    );
                    pkg.comment = Some(
                        "source unknown: not in mix.lock nor a path dependency of the project"
                            .into(),
                    );
                }
            }
            out.push(pkg);
        }
        // Dependencies by id, only between packages of the document.
        for p in out.iter_mut() {
            let mut deps: Vec<String> = p
                .depends_on
                .iter()
                .filter_map(|d| taken_ids.get(d.as_str()).cloned())
                .collect();
            deps.sort();
            deps.dedup();
            p.depends_on = deps;
        }
        out
    }

    /// The SPDX 2.3 JSON document.
    pub fn spdx_json(&self) -> Vec<u8> {
        let pkgs = self.packages();
        let image_id = format!("SPDXRef-{}", pkgs[0].id);
        let packages: Vec<Value> = pkgs
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("SPDXID".into(), json!(format!("SPDXRef-{}", p.id)));
                m.insert("name".into(), json!(p.name));
                if !p.version.is_empty() {
                    m.insert("versionInfo".into(), json!(p.version));
                }
                m.insert(
                    "downloadLocation".into(),
                    json!(p.download.as_deref().unwrap_or("NOASSERTION")),
                );
                m.insert("filesAnalyzed".into(), json!(false));
                if let Some(purpose) = p.purpose {
                    m.insert("primaryPackagePurpose".into(), json!(purpose));
                }
                if let Some(purl) = &p.purl {
                    m.insert(
                        "externalRefs".into(),
                        json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}]),
                    );
                }
                if let Some(sum) = &p.sha256 {
                    m.insert(
                        "checksums".into(),
                        json!([{"algorithm": "SHA256", "checksumValue": sum}]),
                    );
                }
                if let Some(s) = &p.source_info {
                    m.insert("sourceInfo".into(), json!(s));
                }
                if let Some(c) = &p.comment {
                    m.insert("comment".into(), json!(c));
                }
                Value::Object(m)
            })
            .collect();
        let mut relationships = vec![json!({
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": image_id,
        })];
        for p in &pkgs[1..] {
            relationships.push(json!({
                "spdxElementId": image_id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": format!("SPDXRef-{}", p.id),
            }));
        }
        for p in &pkgs {
            for d in &p.depends_on {
                relationships.push(json!({
                    "spdxElementId": format!("SPDXRef-{}", p.id),
                    "relationshipType": "DEPENDS_ON",
                    "relatedSpdxElement": format!("SPDXRef-{d}"),
                }));
            }
        }
        let s = &self.spec;
        let mut doc = json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": format!("{}-{}", s.name, s.version),
            "documentNamespace": "",
            "creationInfo": {
                "created": rfc3339(self.spec.created),
                "creators": [format!("Tool: docker_release-{}", s.tool_version)],
            },
            "packages": packages,
            "relationships": relationships,
        });
        let hash = Digest::of(&to_bytes(&doc)).hex();
        doc["documentNamespace"] = json!(format!(
            "https://spdx.org/spdxdocs/docker_release/{}-{}-{hash}",
            encode(&s.name),
            encode(&s.version)
        ));
        to_bytes(&doc)
    }

    /// The CycloneDX 1.5 JSON document.
    pub fn cyclonedx_json(&self) -> Vec<u8> {
        let pkgs = self.packages();
        let component = |p: &Pkg| {
            let mut m = Map::new();
            m.insert("type".into(), json!(p.cdx_type));
            m.insert("bom-ref".into(), json!(p.id));
            m.insert("name".into(), json!(p.name));
            if !p.version.is_empty() {
                m.insert("version".into(), json!(p.version));
            }
            if let Some(purl) = &p.purl {
                m.insert("purl".into(), json!(purl));
            }
            if let Some(sum) = &p.sha256 {
                m.insert("hashes".into(), json!([{"alg": "SHA-256", "content": sum}]));
            }
            if !p.refs.is_empty() {
                let refs: Vec<Value> = p
                    .refs
                    .iter()
                    .map(|(t, u)| json!({"type": t, "url": u}))
                    .collect();
                m.insert("externalReferences".into(), json!(refs));
            }
            let mut props = Vec::new();
            if let Some(s) = &p.source_info {
                props.push(json!({"name": "docker_release:source", "value": s}));
            }
            if let Some(c) = &p.comment {
                props.push(json!({"name": "docker_release:comment", "value": c}));
            }
            if !props.is_empty() {
                m.insert("properties".into(), json!(props));
            }
            Value::Object(m)
        };
        let image = &pkgs[0];
        let mut dependencies = vec![json!({
            "ref": image.id,
            "dependsOn": pkgs[1..].iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        })];
        for p in &pkgs[1..] {
            if !p.depends_on.is_empty() {
                dependencies.push(json!({"ref": p.id, "dependsOn": p.depends_on}));
            }
        }
        let s = &self.spec;
        let mut doc = json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "metadata": {
                "timestamp": rfc3339(self.spec.created),
                "tools": {"components": [{"type": "application", "name": "docker_release", "version": s.tool_version}]},
                "component": component(image),
            },
            "components": pkgs[1..].iter().map(component).collect::<Vec<_>>(),
            "dependencies": dependencies,
        });
        let h = Digest::of(&to_bytes(&doc)).hex();
        // A name-based UUID (version 5 and RFC 4122 variant bits) from the content's SHA-256.
        let variant = ["8", "9", "a", "b"][usize::from_str_radix(&h[16..17], 16).unwrap_or(0) % 4];
        let uuid = format!(
            "{}-{}-5{}-{variant}{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        );
        doc["serialNumber"] = json!(format!("urn:uuid:{uuid}"));
        to_bytes(&doc)
    }

    /// The document in the spec's format.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.spec.format {
            SbomFormat::Spdx => self.spdx_json(),
            SbomFormat::CycloneDx => self.cyclonedx_json(),
        }
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // serde_json without `preserve_order`: keys sorted. Pretty-printed: people read SBOMs.
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(format: SbomFormat) -> Sbom {
        Sbom {
            spec: SbomSpec {
                format,
                name: "hello".into(),
                version: "0.1.0".into(),
                source: Some("https://github.com/acme/hello.git".into()),
                revision: Some("0123abcd".into()),
                tool_version: "0.1.0".into(),
                created: 1_700_000_000,
                deps: Vec::new(),
            },
            distro: Some(Distro {
                id: "debian".into(),
                version_id: "12.11".into(),
                pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
            }),
            os_packages: vec![
                OsPackage {
                    kind: OsKind::Deb,
                    name: "libstdc++6".into(),
                    version: "12.2.0-14+deb12u1".into(),
                    arch: "amd64".into(),
                    source: Some("gcc-12".into()),
                    source_version: None,
                },
                OsPackage {
                    kind: OsKind::Deb,
                    name: "bash".into(),
                    version: "5.2.15-2+b8".into(),
                    arch: "amd64".into(),
                    source: None,
                    source_version: Some("5.2.15-2".into()),
                },
            ],
            apps: vec![
                App {
                    name: "hello".into(),
                    version: "0.1.0".into(),
                    origin: Origin::Own,
                    depends_on: vec!["jason".into()],
                },
                App {
                    name: "erts".into(),
                    version: "13.1.5".into(),
                    origin: Origin::Otp {
                        from_package: Some(("erlang-base".into(), "1:25.2.3+dfsg-1".into())),
                    },
                    depends_on: vec![],
                },
                App {
                    name: "jason".into(),
                    version: "1.4.1".into(),
                    origin: Origin::Dep(DepSource::Hex {
                        package: "jason".into(),
                        repo: "hexpm".into(),
                        checksum: Some(
                            "FBD8A8DC0C9A0D1A4B7D2C7F3E1E0A1D2C3B4A5968778695A4B3C2D1E0F1A2B3"
                                .into(),
                        ),
                    }),
                    depends_on: vec!["decimal".into()],
                },
                App {
                    name: "my_dep".into(),
                    version: "0.2.0".into(),
                    origin: Origin::Dep(DepSource::Git {
                        url: "https://user:secret@github.com/Acme/My_Dep.git".into(),
                        rev: "deadbeef".into(),
                    }),
                    depends_on: vec![],
                },
                App {
                    name: "local".into(),
                    version: "0.0.1".into(),
                    origin: Origin::Dep(DepSource::Path {
                        path: Some("local_deps/local".into()),
                    }),
                    depends_on: vec![],
                },
            ],
            base: None,
            unpackaged: vec!["/etc/ssl/certs/ca-certificates.crt".into()],
        }
    }

    #[test]
    fn spdx_document_lists_everything_with_purls_and_relationships() {
        let doc: Value = serde_json::from_slice(&sample(SbomFormat::Spdx).spdx_json()).unwrap();
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let ns = doc["documentNamespace"].as_str().unwrap();
        assert!(
            ns.starts_with("https://spdx.org/spdxdocs/docker_release/hello-0.1.0-"),
            "{ns}"
        );
        let pkgs = doc["packages"].as_array().unwrap();
        // The image is named like its application: look past it.
        let by_name = |n: &str| pkgs[1..].iter().find(|p| p["name"] == n).unwrap();
        let purl = |n: &str| by_name(n)["externalRefs"][0]["referenceLocator"].clone();
        assert_eq!(
            purl("libstdc++6"),
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12.11&upstream=gcc-12"
        );
        assert_eq!(
            by_name("libstdc++6")["SPDXID"],
            "SPDXRef-deb-libstdc--6-amd64"
        );
        assert_eq!(
            purl("bash"),
            "pkg:deb/debian/bash@5.2.15-2%2Bb8?arch=amd64&distro=debian-12.11&upstream=bash%405.2.15-2"
        );
        assert_eq!(
            by_name("bash")["sourceInfo"],
            "built package from: bash 5.2.15-2"
        );
        assert_eq!(purl("erts"), "pkg:otp/erts@13.1.5");
        assert_eq!(
            by_name("erts")["sourceInfo"],
            "copied from the OS package erlang-base 1:25.2.3+dfsg-1"
        );
        assert_eq!(purl("jason"), "pkg:hex/jason@1.4.1");
        assert_eq!(
            by_name("jason")["downloadLocation"],
            "https://repo.hex.pm/tarballs/jason-1.4.1.tar"
        );
        assert_eq!(
            by_name("jason")["checksums"][0]["checksumValue"],
            "fbd8a8dc0c9a0d1a4b7d2c7f3e1e0a1d2c3b4a5968778695a4b3c2d1e0f1a2b3"
        );
        // Credentials never reach the document; GitHub names are lower-cased in purls.
        assert_eq!(purl("my_dep"), "pkg:github/acme/my_dep@deadbeef");
        assert_eq!(
            by_name("my_dep")["downloadLocation"],
            "git+https://github.com/Acme/My_Dep.git@deadbeef"
        );
        assert!(!String::from_utf8(sample(SbomFormat::Spdx).spdx_json())
            .unwrap()
            .contains("secret"));
        assert_eq!(
            by_name("hello")["downloadLocation"],
            "git+https://github.com/acme/hello.git@0123abcd"
        );
        assert_eq!(
            by_name("debian")["primaryPackagePurpose"],
            "OPERATING_SYSTEM"
        );
        assert_eq!(by_name("hello")["primaryPackagePurpose"], "APPLICATION");
        let rels = doc["relationships"].as_array().unwrap();
        assert_eq!(rels[0]["relationshipType"], "DESCRIBES");
        assert_eq!(
            rels.iter()
                .filter(|r| r["relationshipType"] == "CONTAINS")
                .count(),
            pkgs.len() - 1
        );
        // jason depends on decimal, which is not in the image: no dangling relationship.
        let depends: Vec<_> = rels
            .iter()
            .filter(|r| r["relationshipType"] == "DEPENDS_ON")
            .map(|r| {
                (
                    r["spdxElementId"].as_str().unwrap(),
                    r["relatedSpdxElement"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(depends, [("SPDXRef-App-hello", "SPDXRef-App-jason")]);
    }

    #[test]
    fn ids_are_valid_and_unique() {
        let mut s = sample(SbomFormat::Spdx);
        s.os_packages.push(OsPackage {
            kind: OsKind::Deb,
            name: "libstdc--6".into(),
            version: "1".into(),
            arch: "amd64".into(),
            source: None,
            source_version: None,
        });
        let doc: Value = serde_json::from_slice(&s.spdx_json()).unwrap();
        let ids: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in &ids {
            let body = id.strip_prefix("SPDXRef-").unwrap();
            assert!(
                body.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
    }

    #[test]
    fn same_inputs_same_bytes_and_the_order_of_inputs_does_not_matter() {
        for f in [SbomFormat::Spdx, SbomFormat::CycloneDx] {
            let a = sample(f);
            let mut b = sample(f);
            b.os_packages.reverse();
            b.apps.reverse();
            assert_eq!(a.to_bytes(), b.to_bytes());
            let mut c = sample(f);
            c.spec.created += 1;
            assert_ne!(a.to_bytes(), c.to_bytes());
        }
    }

    #[test]
    fn cyclonedx_document_with_a_valid_serial_number() {
        let doc: Value =
            serde_json::from_slice(&sample(SbomFormat::CycloneDx).cyclonedx_json()).unwrap();
        assert_eq!(doc["specVersion"], "1.5");
        let serial = doc["serialNumber"].as_str().unwrap();
        let uuid = serial.strip_prefix("urn:uuid:").unwrap();
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'));
        assert!("89ab".contains(&parts[3][..1]));
        assert_eq!(doc["metadata"]["component"]["type"], "container");
        let comps = doc["components"].as_array().unwrap();
        assert!(comps.iter().any(|c| c["type"] == "operating-system"));
        let jason = comps.iter().find(|c| c["name"] == "jason").unwrap();
        assert_eq!(jason["hashes"][0]["alg"], "SHA-256");
        assert_eq!(doc["dependencies"][0]["ref"], "Image");
    }

    #[test]
    fn git_urls_in_every_spelling() {
        for url in [
            "https://github.com/acme/x.git",
            "git@github.com:acme/x.git",
            "ssh://git@github.com/acme/x",
            "https://tok:en@github.com/acme/x.git?x=1#y",
        ] {
            let (host, path, _) = git_parts(url).unwrap();
            assert_eq!(
                (host.as_str(), path.as_str()),
                ("github.com", "acme/x"),
                "{url}"
            );
        }
        assert!(git_parts("/local/path").is_none());
    }
}
