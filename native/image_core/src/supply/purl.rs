//! Package URLs (purl) in canonical form.
//!
//! `pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS#SUBPATH` as the purl specification builds it
//! (package-url/purl-spec, "how to build"):
//!
//! - the type is lower case; namespace segments, the name and the version are percent-encoded;
//! - qualifiers are sorted by key (keys lower case), empty values are left out, values are
//!   percent-encoded;
//! - what stays unencoded: ASCII letters and digits, `.`, `-`, `_`, `~` and `:` (so Debian's
//!   epochs read `1:2.36`, while `+` becomes `%2B` and `/` in a qualifier value `%2F`).
//!
//! ```
//! use image_core::supply::purl::Purl;
//! let p = Purl::new("deb", "libstdc++6")
//!     .namespace("debian")
//!     .version("12.2.0-14+deb12u1")
//!     .qualifier("distro", "debian-12")
//!     .qualifier("arch", "amd64");
//! assert_eq!(
//!     p.to_string(),
//!     "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
//! );
//! ```

use std::collections::BTreeMap;
use std::fmt;

/// A package URL under construction; [`fmt::Display`] writes its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Purl {
    ty: String,
    namespace: Vec<String>,
    name: String,
    version: Option<String>,
    qualifiers: BTreeMap<String, String>,
}

impl Purl {
    /// A purl of type `ty` (`deb`, `apk`, `hex`, `otp`, `github`, `generic`, …) for `name`.
    pub fn new(ty: &str, name: &str) -> Purl {
        Purl {
            ty: ty.to_ascii_lowercase(),
            namespace: Vec::new(),
            name: name.to_string(),
            version: None,
            qualifiers: BTreeMap::new(),
        }
    }

    /// Set the namespace; `/` separates its segments (`acme/tools`). Empty segments are dropped.
    pub fn namespace(mut self, ns: &str) -> Purl {
        self.namespace = ns
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        self
    }

    /// Set the version.
    pub fn version(mut self, v: &str) -> Purl {
        self.version = Some(v.to_string()).filter(|v| !v.is_empty());
        self
    }

    /// Add a qualifier (the key is lower-cased; an empty value is left out).
    pub fn qualifier(mut self, key: &str, value: &str) -> Purl {
        if !value.is_empty() {
            self.qualifiers
                .insert(key.to_ascii_lowercase(), value.to_string());
        }
        self
    }
}

impl fmt::Display for Purl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pkg:{}/", self.ty)?;
        for seg in &self.namespace {
            write!(f, "{}/", encode(seg))?;
        }
        write!(f, "{}", encode(&self.name))?;
        if let Some(v) = &self.version {
            write!(f, "@{}", encode(v))?;
        }
        let mut sep = '?';
        for (k, v) in &self.qualifiers {
            write!(f, "{sep}{k}={}", encode(v))?;
            sep = '&';
        }
        Ok(())
    }
}

/// Percent-encode everything but `A-Za-z0-9 . - _ ~ :` (upper-case hex digits).
///
/// ```
/// use image_core::supply::purl::encode;
/// assert_eq!(encode("1:2.4.47-2+b1"), "1:2.4.47-2%2Bb1");
/// assert_eq!(encode("https://repo.example.com/x y"), "https:%2F%2Frepo.example.com%2Fx%20y");
/// ```
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_examples() {
        // docs/types/definitions (deb, apk, hex, github, generic, otp).
        assert_eq!(
            Purl::new("deb", "attr")
                .namespace("debian")
                .version("1:2.4.47-2+b1")
                .qualifier("arch", "amd64")
                .to_string(),
            "pkg:deb/debian/attr@1:2.4.47-2%2Bb1?arch=amd64"
        );
        assert_eq!(
            Purl::new("apk", "curl")
                .namespace("alpine")
                .version("7.83.0-r0")
                .qualifier("arch", "x86")
                .to_string(),
            "pkg:apk/alpine/curl@7.83.0-r0?arch=x86"
        );
        assert_eq!(
            Purl::new("hex", "jason").version("1.1.2").to_string(),
            "pkg:hex/jason@1.1.2"
        );
        assert_eq!(
            Purl::new("hex", "phoenix")
                .version("1.4.0")
                .qualifier("repository_url", "https://myrepo.example.com")
                .to_string(),
            "pkg:hex/phoenix@1.4.0?repository_url=https:%2F%2Fmyrepo.example.com"
        );
        assert_eq!(
            Purl::new("github", "purl-spec")
                .namespace("package-url")
                .version("244fd47e07d1004f0aed9c")
                .to_string(),
            "pkg:github/package-url/purl-spec@244fd47e07d1004f0aed9c"
        );
        assert_eq!(
            Purl::new("otp", "erts")
                .version("10.6.3")
                .qualifier("platform", "linux")
                .qualifier("arch", "amd64")
                .to_string(),
            "pkg:otp/erts@10.6.3?arch=amd64&platform=linux"
        );
    }

    #[test]
    fn empty_parts_are_left_out_and_keys_lowered() {
        assert_eq!(
            Purl::new("Generic", "x")
                .namespace("/a//b/")
                .version("")
                .qualifier("Arch", "")
                .qualifier("K", "v")
                .to_string(),
            "pkg:generic/a/b/x?k=v"
        );
    }
}
