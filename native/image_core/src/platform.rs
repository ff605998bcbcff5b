//! Which platforms an image is built for: `--platform`, `--platform-image` and `--emulate`,
//! parsed and checked before anything is built.
//!
//! A platform is written `OS/ARCH[/VARIANT]` as Docker writes it (`linux/amd64`,
//! `linux/arm64`, `linux/arm64/v8`). docker_release packs Linux ELF files, so the OS is always
//! `linux` and the architectures are those an ELF header names ([`crate::elf::Header::platform`]).
//! A variant is the one that header implies (`v8` for arm64, `v7` for arm): it may be left out,
//! and is always written in the normal form, so `linux/arm64` and `linux/arm64/v8` are one
//! platform. `x86_64` and `aarch64` are accepted for `amd64` and `arm64`, as Docker accepts them.
//!
//! ```
//! use image_core::platform::parse;
//! assert_eq!(parse("linux/arm64").unwrap().to_string(), "linux/arm64/v8");
//! assert_eq!(parse("linux/x86_64").unwrap().to_string(), "linux/amd64");
//! assert!(parse("linux/arm64/v9").unwrap_err().to_string().contains("v8"));
//! ```

use crate::elf::Platform;
use crate::reference::Reference;
use std::collections::BTreeMap;

/// The architectures docker_release can pack (those [`crate::elf::Header::platform`] names),
/// each with the variant its ELF header implies.
pub const ARCHITECTURES: &[(&str, Option<&str>)] = &[
    ("amd64", None),
    ("arm64", Some("v8")),
    ("arm", Some("v7")),
    ("386", None),
    ("ppc64le", None),
    ("ppc64", None),
    ("s390x", None),
    ("riscv64", None),
    ("loong64", None),
    ("mips64le", None),
    ("mips64", None),
    ("mipsle", None),
    ("mips", None),
];

/// Other names Docker accepts for an architecture.
const ALIASES: &[(&str, &str)] = &[
    ("x86_64", "amd64"),
    ("x86-64", "amd64"),
    ("aarch64", "arm64"),
];

/// A value of `--platform`, `--platform-image` or `--emulate` that cannot be used. The message
/// states the rule and what was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPlatforms(pub String);

/// Parse one platform, `OS/ARCH[/VARIANT]`, into its normal form.
pub fn parse(text: &str) -> Result<Platform, InvalidPlatforms> {
    let known = || {
        ARCHITECTURES
            .iter()
            .map(|(a, _)| *a)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bad = |why: String| {
        InvalidPlatforms(format!(
            "invalid platform {text:?}: {why}. A platform is OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64"
        ))
    };
    let parts: Vec<&str> = text.trim().split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return Err(bad("expected two or three parts separated by /".into())),
    };
    if !os.eq_ignore_ascii_case("linux") {
        return Err(bad(format!(
            "the OS must be linux (images of Elixir releases run Linux ELF files), got {os:?}"
        )));
    }
    let arch = arch.to_ascii_lowercase();
    let arch = ALIASES
        .iter()
        .find(|(alias, _)| *alias == arch)
        .map_or(arch.as_str(), |(_, name)| *name);
    let Some((arch, implied)) = ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
        return Err(bad(format!(
            "unknown architecture {arch:?}; known: {}",
            known()
        )));
    };
    match (variant.map(str::to_ascii_lowercase), implied) {
        (None, _) => {}
        (Some(v), Some(implied)) if v == *implied => {}
        (Some(v), Some(implied)) => {
            return Err(bad(format!(
                "{arch} is packed as variant {implied} (what its ELF files say), got variant {v:?}"
            )))
        }
        (Some(v), None) => return Err(bad(format!("{arch} has no variants, got {v:?}"))),
    }
    Ok(Platform {
        os: "linux".into(),
        architecture: arch.to_string(),
        variant: implied.map(str::to_string),
    })
}

/// `--platform`, `--platform-image` and `--emulate` as given (the NIF request carries them so);
/// [`PlatformOptions::check`] turns them into a [`Selection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformOptions {
    /// `--platform` values (each one platform; the Mix task splits `a,b`).
    pub platforms: Vec<String>,
    /// `--platform-image PLATFORM=IMAGE` values, as `(PLATFORM, IMAGE)`.
    pub images: Vec<(String, String)>,
    /// `--emulate`: build the release for each other platform in a builder of that platform run
    /// under emulation, instead of taking that platform's native files from an image of it.
    pub emulate: bool,
}

/// The platforms to build for, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The platforms in the order given, each once; empty: the release's own platform only, as
    /// without `--platform`.
    pub platforms: Vec<Platform>,
    /// The image each platform's files come from, where `--platform-image` names one.
    pub images: BTreeMap<Platform, String>,
    /// `--emulate`.
    pub emulate: bool,
}

impl Selection {
    /// `true` when no `--platform` was given: one image, for the release's own platform.
    pub fn is_empty(&self) -> bool {
        self.platforms.is_empty()
    }
}

impl PlatformOptions {
    /// Check the options and normalise them.
    ///
    /// Refused, saying which value and why: a platform that does not parse ([`parse`]), one
    /// given twice (also as `linux/arm64` and `linux/arm64/v8`), a `--platform-image` for a
    /// platform `--platform` does not list or given twice, an image that is not a reference
    /// (`NAME[:TAG][@sha256:…]`), and `--platform-image` or `--emulate` without `--platform`.
    ///
    /// ```
    /// use image_core::platform::PlatformOptions;
    /// let opts = PlatformOptions {
    ///     platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
    ///     images: vec![("linux/arm64/v8".into(), "builder:arm64".into())],
    ///     emulate: false,
    /// };
    /// let s = opts.check().unwrap();
    /// assert_eq!(s.platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64/v8"]);
    /// assert_eq!(s.images[&s.platforms[1]], "builder:arm64");
    /// ```
    pub fn check(&self) -> Result<Selection, InvalidPlatforms> {
        let mut platforms: Vec<(Platform, &str)> = Vec::new();
        for given in &self.platforms {
            let p = parse(given)?;
            if let Some((_, first)) = platforms.iter().find(|(q, _)| *q == p) {
                return Err(InvalidPlatforms(format!(
                    "--platform lists {p} twice (as {first:?} and {given:?}): give each platform once"
                )));
            }
            platforms.push((p, given));
        }
        if platforms.is_empty() {
            if let Some((p, i)) = self.images.first() {
                return Err(InvalidPlatforms(format!(
                    "--platform-image {p}={i} needs --platform: it says where the files of one of the platforms --platform lists come from"
                )));
            }
            if self.emulate {
                return Err(InvalidPlatforms(
                    "--emulate needs --platform: it builds the release for each listed platform other than the build's own under emulation".into(),
                ));
            }
        }
        let listed = || {
            platforms
                .iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut images = BTreeMap::new();
        for (given, image) in &self.images {
            let p = parse(given)?;
            if !platforms.iter().any(|(q, _)| *q == p) {
                return Err(InvalidPlatforms(format!(
                    "--platform-image {given}={image} names a platform --platform does not list ({}): add it to --platform or drop the --platform-image",
                    listed()
                )));
            }
            check_image(given, image)?;
            if let Some(first) = images.insert(p.clone(), image.clone()) {
                return Err(InvalidPlatforms(format!(
                    "--platform-image gives {p} twice ({first} and {image}): give one image per platform"
                )));
            }
        }
        Ok(Selection {
            platforms: platforms.into_iter().map(|(p, _)| p).collect(),
            images,
            emulate: self.emulate,
        })
    }
}

/// `NAME[:TAG][@sha256:<64 hex digits>]`, as `--base` takes it.
fn check_image(platform: &str, image: &str) -> Result<(), InvalidPlatforms> {
    let bad = |why: String| {
        InvalidPlatforms(format!(
            "invalid --platform-image {platform}={image}: {why}. Give PLATFORM=IMAGE, IMAGE as NAME[:TAG] or NAME@sha256:DIGEST"
        ))
    };
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "a digest must be sha256: followed by 64 hex digits".into()
            ));
        }
    }
    Reference::parse(name).map_err(|e| bad(e.rule.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{Header, ELF_MAGIC};

    fn opts(platforms: &[&str], images: &[(&str, &str)], emulate: bool) -> PlatformOptions {
        PlatformOptions {
            platforms: platforms.iter().map(|s| s.to_string()).collect(),
            images: images
                .iter()
                .map(|(p, i)| (p.to_string(), i.to_string()))
                .collect(),
            emulate,
        }
    }

    #[test]
    fn platforms_parse_into_their_normal_form() {
        for (given, normal) in [
            ("linux/amd64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/aarch64", "linux/arm64/v8"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/s390x", "linux/s390x"),
            (" linux/riscv64 ", "linux/riscv64"),
        ] {
            assert_eq!(parse(given).unwrap().to_string(), normal, "{given}");
        }
        for (given, says) in [
            ("darwin/arm64", "the OS must be linux"),
            ("linux", "two or three parts"),
            ("linux/arm64/v8/x", "two or three parts"),
            (
                "linux/sparc",
                "unknown architecture \"sparc\"; known: amd64, arm64",
            ),
            ("linux/arm64/v9", "variant v8"),
            ("linux/arm/v6", "variant v7"),
            ("linux/amd64/v3", "amd64 has no variants"),
            ("", "two or three parts"),
        ] {
            let e = parse(given).unwrap_err().to_string();
            assert!(e.contains(says), "{given:?}: {e}");
            assert!(e.contains(&format!("{given:?}")), "{given:?}: {e}");
            assert!(e.contains("e.g. linux/amd64"), "{e}");
        }
    }

    #[test]
    fn every_platform_an_elf_header_names_parses_to_itself() {
        let header = |is_64: bool, le: bool, machine: u16| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&ELF_MAGIC);
            h[4] = if is_64 { 2 } else { 1 };
            h[5] = if le { 1 } else { 2 };
            let m = if le {
                machine.to_le_bytes()
            } else {
                machine.to_be_bytes()
            };
            h[18..20].copy_from_slice(&m);
            Header::parse(&h).unwrap()
        };
        let mut seen = 0;
        for machine in 0..300u16 {
            for (is_64, le) in [(true, true), (true, false), (false, true), (false, false)] {
                if let Some(p) = header(is_64, le, machine).platform() {
                    assert_eq!(parse(&p.to_string()).unwrap(), p);
                    seen += 1;
                }
            }
        }
        assert_eq!(
            seen,
            ARCHITECTURES.len(),
            "the table lists every ELF platform"
        );
    }

    #[test]
    fn options_are_checked_and_normalised() {
        assert_eq!(opts(&[], &[], false).check().unwrap(), Selection::default());
        assert!(opts(&[], &[], false).check().unwrap().is_empty());

        let s = opts(
            &["linux/arm64", "linux/amd64"],
            &[("linux/aarch64", "127.0.0.1:5000/b@sha256:12")],
            true,
        )
        .check();
        assert!(s.unwrap_err().0.contains("64 hex digits"));

        let digest = format!("b@sha256:{}", "a".repeat(64));
        let s = opts(
            &["linux/arm64", "linux/amd64"],
            &[("linux/aarch64", &digest)],
            true,
        )
        .check()
        .unwrap();
        let names: Vec<String> = s.platforms.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["linux/arm64/v8", "linux/amd64"], "the order given");
        assert_eq!(s.images.len(), 1);
        assert_eq!(s.images[&parse("linux/arm64").unwrap()], digest);
        assert!(s.emulate);
    }

    #[test]
    fn bad_options_are_refused_with_the_value_and_the_rule() {
        for (o, says) in [
            (
                opts(&["linux/arm64", "linux/arm64/v8"], &[], false),
                "--platform lists linux/arm64/v8 twice (as \"linux/arm64\" and \"linux/arm64/v8\")",
            ),
            (
                opts(&[], &[("linux/arm64", "b:1")], false),
                "--platform-image linux/arm64=b:1 needs --platform",
            ),
            (opts(&[], &[], true), "--emulate needs --platform"),
            (
                opts(&["linux/amd64"], &[("linux/arm64", "b:1")], false),
                "names a platform --platform does not list (linux/amd64)",
            ),
            (
                opts(
                    &["linux/arm64"],
                    &[("linux/arm64", "b:1"), ("linux/arm64/v8", "c:2")],
                    false,
                ),
                "--platform-image gives linux/arm64/v8 twice (b:1 and c:2)",
            ),
            (
                opts(&["linux/arm64"], &[("linux/arm64", "Bad:1")], false),
                "invalid --platform-image linux/arm64=Bad:1: the repository path must be lower-case",
            ),
            (
                opts(&["linux/arm64"], &[("linux/arm64", "")], false),
                "invalid --platform-image linux/arm64=: it is empty",
            ),
            (
                opts(&["linux/arm64"], &[("arm64", "b:1")], false),
                "invalid platform \"arm64\"",
            ),
        ] {
            let e = o.check().unwrap_err().to_string();
            assert!(e.contains(says), "{o:?}: {e}");
        }
    }
}
