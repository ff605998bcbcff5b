//! Image references (`[host[:port]/]path[:tag]`), following the distribution grammar.

use std::fmt;

/// A parsed, tagged image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), if the reference names one.
    pub domain: Option<String>,
    /// Repository path, lower case, e.g. `library/hello` is written `hello`.
    pub path: String,
    /// Tag (`latest` when the reference has none).
    pub tag: String,
}

/// Why a reference was refused; the message says the rule and what was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {rule}")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// The rule it broke.
    pub rule: &'static str,
}

impl Reference {
    /// Parse `input`.
    ///
    /// ```
    /// use image_core::reference::Reference;
    /// let r = Reference::parse("localhost:5000/team/hello:1.0.0_rc1").unwrap();
    /// assert_eq!(r.domain.as_deref(), Some("localhost:5000"));
    /// assert_eq!(r.path, "team/hello");
    /// assert_eq!(r.tag, "1.0.0_rc1");
    /// assert_eq!(Reference::parse("hello").unwrap().tag, "latest");
    /// assert!(Reference::parse("Hello:1").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |rule| ReferenceError {
            input: input.to_string(),
            rule,
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.contains('@') {
            return Err(err(
                "digest references (@sha256:...) cannot be used as tags; give NAME[:TAG]",
            ));
        }
        let (name, tag) = match input.rfind(':') {
            Some(i) if !input[i + 1..].contains('/') => (&input[..i], Some(&input[i + 1..])),
            _ => (input, None),
        };
        let tag = match tag {
            Some(t) if valid_tag(t) => t.to_string(),
            Some(_) => return Err(err("a tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")),
            None => "latest".to_string(),
        };
        if name.len() > 255 {
            return Err(err("the name is longer than 255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_domain(first) {
                    return Err(err(
                        "the registry host must be host[:port] with letters, digits, '.' and '-'",
                    ));
                }
                (Some(first.to_string()), rest)
            }
            _ => (None, name),
        };
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(err("the repository path must be lower-case letters and digits, separated by '/', and inside a component by '.', '_', '__' or dashes"));
        }
        Ok(Reference {
            domain,
            path: path.to_string(),
            tag,
        })
    }

    /// The fully qualified name (`docker.io/library/hello:1.0`), as containerd names images.
    pub fn full_name(&self) -> String {
        let domain = self.domain.as_deref().unwrap_or("docker.io");
        let path = if self.domain.is_none() && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        format!("{domain}/{path}:{}", self.tag)
    }

    /// The repository part (`[domain/]path`), as the engine's tag API takes it.
    pub fn repository(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository(), self.tag)
    }
}

/// Turn a version into a valid tag: `+` (build metadata) becomes `_`.
///
/// ```
/// assert_eq!(image_core::reference::tag_for_version("1.2.0+build.5"), "1.2.0_build.5");
/// ```
pub fn tag_for_version(version: &str) -> String {
    version.replace('+', "_")
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && !c.starts_with('-')
                && !c.ends_with('-')
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn valid_path_component(c: &str) -> bool {
    // alnum (separator alnum)*, separator = '.' | '_' | '__' | '-'+
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        for good in [
            "hello",
            "hello:0.1.0",
            "my-org/my_app__x:v1",
            "registry.example.com/a/b:tag-1.2",
            "127.0.0.1:5000/hello",
            "localhost/hello:latest",
            "a.b-c/d",
        ] {
            assert!(Reference::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "hello:",
            "hello:-x",
            "hello:a+b",
            "-hello",
            "hello/",
            "hello//x",
            "hello@sha256:00",
            "ex ample",
            "a_-b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        let long_tag = format!("hello:{}", "a".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }

    #[test]
    fn names() {
        let r = Reference::parse("hello:1").unwrap();
        assert_eq!(r.full_name(), "docker.io/library/hello:1");
        assert_eq!(r.to_string(), "hello:1");
        let r = Reference::parse("localhost:5000/x/y").unwrap();
        assert_eq!(r.full_name(), "localhost:5000/x/y:latest");
        assert_eq!(r.repository(), "localhost:5000/x/y");
    }
}
