//! The project's source as a tar stream: what a builder container compiles.
//!
//! [`write_context`] walks the project root and writes every entry that [`Excludes`] lets
//! through. Unlike the image layers (see `layer.rs`), a context keeps the **real** modification
//! times and modes, as `docker build` sends them (a Dockerfile's `RUN mix compile` sees what
//! the host has). A builder container does not rely on them: its build script re-times the
//! files by content before Mix runs (`image_io`'s `builder::sources`). Only the owner is
//! normalised (uid/gid 0, no names): the builder runs as root and host uids mean nothing
//! inside it.
//!
//! # Excludes
//!
//! [`Excludes::for_project`] is [`DEFAULT_EXCLUDES`] followed by the project's `.dockerignore`,
//! read with Docker's rules:
//!
//! - one pattern a line; lines starting with `#` are comments; surrounding blanks are trimmed;
//! - patterns are relative to the root: a leading `/` is dropped and the pattern is cleaned like
//!   Go's `filepath.Clean` (`a//b/../c/` is `a/c`);
//! - `*` matches any run of characters except `/`, `?` one character except `/`, `[...]` a class
//!   (`[^...]` negated, ranges `a-z`), `\` escapes the next character;
//! - `**` matches any number of path components, none included: `**/x` matches `x` and `a/b/x`,
//!   a trailing `**` matches everything below;
//! - a path is excluded when a pattern matches it **or one of its parent directories**; the last
//!   pattern that decides wins, and a pattern starting with `!` re-includes what it matches;
//! - an excluded directory is skipped whole, unless a `!` pattern could match something below
//!   it; then it is walked and each entry is decided on its own (the directory itself is
//!   written when something below it is).
//!
//! Defaults come first, so a `.dockerignore` line `!doc` brings `doc/` back.
//!
//! ```
//! use image_core::context::Excludes;
//! let ex = Excludes::new(["/_build", "**/*.log", "!keep.log"]).unwrap();
//! assert!(ex.is_excluded("_build/prod/lib"));
//! assert!(ex.is_excluded("a/b/x.log"));
//! assert!(!ex.is_excluded("keep.log"));
//! assert!(!ex.is_excluded("lib/_build"));
//! ```

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a Mix project never needs in its build context: build output, fetched dependencies
/// (the builder has its own, in cache volumes), VCS data, editor and tool caches, archives and
/// crash dumps. Root-anchored where the directory only means that at the root (`doc/`,
/// `tmp/`, `cover/` elsewhere may be sources); anywhere for the rest.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "/_build",
    "/deps",
    "**/.git",
    "**/.elixir_ls",
    "/cover",
    "/doc",
    "**/node_modules",
    "**/*.ez",
    "**/erl_crash.dump",
    "/.fetch",
    "/tmp",
];

/// The file holding the project's own patterns.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// Why a context could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A pattern is malformed.
    #[error("invalid exclude pattern {pattern:?}{}: {why}", line.map(|l| format!(" (.dockerignore line {l})")).unwrap_or_default())]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// Its line in `.dockerignore`, if it came from there.
        line: Option<usize>,
        /// What is wrong.
        why: String,
    },
    /// A file or directory of the project could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path on the host.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file changed size while it was being read.
    #[error("{path} changed while it was being read (expected {expected} bytes); run again when nothing is writing to the project")]
    Changed {
        /// The path on the host.
        path: PathBuf,
        /// The size seen before reading.
        expected: u64,
    },
    /// The output could not be written (for a stream into the engine: the engine hung up).
    #[error("cannot write the build context: {0}")]
    Write(#[source] io::Error),
}

/// What [`write_context`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Regular files written.
    pub files: u64,
    /// Directories written.
    pub dirs: u64,
    /// Symbolic links written.
    pub symlinks: u64,
    /// Bytes of file content written (not counting tar headers).
    pub bytes: u64,
    /// Entries left out by a pattern (a skipped directory counts once).
    pub excluded: u64,
    /// Entries left out because they are neither file, directory nor symlink (sockets, fifos).
    pub skipped_special: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// One literal character.
    Char(char),
    /// `*`: any run of characters except `/`.
    Star,
    /// `?`: one character except `/`.
    Any,
    /// `[...]`: one character (never `/`) in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` followed by more pattern: `(.*/)?` — nothing, or anything ending in `/`.
    DirsPrefix,
    /// `**` at the end: anything.
    Rest,
}

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// The cleaned pattern text, without `!`.
    text: String,
    exclusion: bool,
    tokens: Vec<Token>,
}

/// An ordered list of exclude patterns with Docker's `.dockerignore` semantics (see the module
/// docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excludes {
    patterns: Vec<Pattern>,
}

impl Excludes {
    /// Compile `patterns` (each as one `.dockerignore` line, `!` allowed). Blank lines and
    /// comments are ignored.
    pub fn new<I, S>(patterns: I) -> Result<Excludes, ContextError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ex = Excludes::default();
        for p in patterns {
            ex.push_line(p.as_ref(), None)?;
        }
        Ok(ex)
    }

    /// [`DEFAULT_EXCLUDES`] followed by the patterns of `root/.dockerignore` (when it exists).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// std::fs::write(dir.path().join(".dockerignore"), "# build output\n*.log\n!doc\n").unwrap();
    /// let ex = image_core::context::Excludes::for_project(dir.path()).unwrap();
    /// assert!(ex.is_excluded("_build"));
    /// assert!(ex.is_excluded("debug.log"));
    /// assert!(!ex.is_excluded("doc/index.html"));
    /// ```
    pub fn for_project(root: &Path) -> Result<Excludes, ContextError> {
        let mut ex = Excludes::new(DEFAULT_EXCLUDES)?;
        let path = root.join(DOCKERIGNORE);
        match std::fs::read(&path) {
            Ok(bytes) => ex.extend_dockerignore(&bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ContextError::Read { path, source }),
        }
        Ok(ex)
    }

    /// Append the patterns of a `.dockerignore` file's contents.
    pub fn extend_dockerignore(&mut self, contents: &[u8]) -> Result<(), ContextError> {
        let text = String::from_utf8_lossy(contents);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        for (i, line) in text.lines().enumerate() {
            self.push_line(line, Some(i + 1))?;
        }
        Ok(())
    }

    fn push_line(&mut self, line: &str, line_no: Option<usize>) -> Result<(), ContextError> {
        // Docker: comments are recognised before trimming, then the line is trimmed.
        if line.starts_with('#') {
            return Ok(());
        }
        let mut p = line.trim();
        if p.is_empty() {
            return Ok(());
        }
        let exclusion = p.starts_with('!');
        if exclusion {
            p = p[1..].trim();
        }
        let mut text = clean(p);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        let tokens = compile(&text).map_err(|why| ContextError::Pattern {
            pattern: line.to_string(),
            line: line_no,
            why,
        })?;
        self.patterns.push(Pattern {
            text,
            exclusion,
            tokens,
        });
        Ok(())
    }

    /// The patterns, as cleaned (`!` kept), in order.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exclusion {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// `true` when `rel` (a path relative to the root, `/`-separated) is left out: the last
    /// pattern matching it or one of its parent directories decides (Docker's
    /// `MatchesOrParentMatches`).
    pub fn is_excluded(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches("./").trim_matches('/');
        let comps: Vec<&str> = rel.split('/').collect();
        let parents: Vec<String> = (1..comps.len()).map(|i| comps[..i].join("/")).collect();
        let mut matched = false;
        for p in &self.patterns {
            // An inclusion only matters once something matched; an exclusion only before.
            if p.exclusion != matched {
                continue;
            }
            let hit = matches(&p.tokens, rel) || parents.iter().any(|d| matches(&p.tokens, d));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// `true` when some `!` pattern could match an entry strictly below directory `dir`, so an
    /// excluded `dir` must still be walked. Errs on the side of walking.
    fn may_include_below(&self, dir: &str) -> bool {
        let dir_comps: Vec<&str> = dir.split('/').collect();
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| could_match_below(&p.text, &dir_comps))
    }

    fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

/// Whether pattern `text` could match something below the directory with components `dir`:
/// each of the pattern's first components must match the directory's, and the pattern must be
/// longer, unless a `**` appears on the way (then anything deeper may match).
fn could_match_below(text: &str, dir: &[&str]) -> bool {
    let pcomps: Vec<&str> = text.split('/').collect();
    for (i, d) in dir.iter().enumerate() {
        let Some(pc) = pcomps.get(i) else {
            return false;
        };
        if pc.contains("**") {
            return true;
        }
        match compile(pc) {
            Ok(tokens) if matches(&tokens, d) => {}
            _ => return false,
        }
    }
    pcomps.len() > dir.len()
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// Compile a cleaned pattern into tokens, the way Docker's patternmatcher builds its regexp.
fn compile(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                // `**/` is `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                out.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::DirsPrefix
                });
            }
            '*' => {
                out.push(Token::Star);
                i += 1;
            }
            '?' => {
                out.push(Token::Any);
                i += 1;
            }
            '\\' => {
                match chars.get(i + 1) {
                    Some(c) => out.push(Token::Char(*c)),
                    None => out.push(Token::Char('\\')),
                }
                i += 2;
            }
            '[' => {
                let (tok, next) = class(&chars, i + 1)?;
                out.push(tok);
                i = next;
            }
            c => {
                out.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Parse a character class whose body starts at `i` (after `[`); returns it and the index after
/// the closing `]`.
fn class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let lo = match chars.get(i) {
            None => return Err("unterminated character class `[`".into()),
            Some(']') if !first => return Ok((Token::Class { negated, ranges }, i + 1)),
            Some('\\') => {
                i += 1;
                *chars
                    .get(i)
                    .ok_or("unterminated escape in a character class")?
            }
            Some(c) => *c,
        };
        i += 1;
        first = false;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            hi = match chars[i] {
                '\\' => {
                    i += 1;
                    *chars
                        .get(i)
                        .ok_or("unterminated escape in a character class")?
                }
                c => c,
            };
            i += 1;
            if hi < lo {
                return Err(format!("bad range {lo}-{hi} in a character class"));
            }
        }
        ranges.push((lo, hi));
    }
}

/// Match the whole of `s` against `tokens` (memoised backtracking: O(tokens × chars)).
fn matches(tokens: &[Token], s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut memo = vec![None; (tokens.len() + 1) * (chars.len() + 1)];
    match_at(tokens, &chars, 0, 0, &mut memo)
}

fn match_at(t: &[Token], s: &[char], ti: usize, si: usize, memo: &mut [Option<bool>]) -> bool {
    let key = ti * (s.len() + 1) + si;
    if let Some(v) = memo[key] {
        return v;
    }
    let result = match t.get(ti) {
        None => si == s.len(),
        Some(Token::Char(c)) => s.get(si) == Some(c) && match_at(t, s, ti + 1, si + 1, memo),
        Some(Token::Any) => {
            s.get(si).is_some_and(|c| *c != '/') && match_at(t, s, ti + 1, si + 1, memo)
        }
        Some(Token::Class { negated, ranges }) => {
            s.get(si).is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated
            }) && match_at(t, s, ti + 1, si + 1, memo)
        }
        Some(Token::Star) => {
            let mut j = si;
            loop {
                if match_at(t, s, ti + 1, j, memo) {
                    break true;
                }
                if j >= s.len() || s[j] == '/' {
                    break false;
                }
                j += 1;
            }
        }
        Some(Token::Rest) => true,
        Some(Token::DirsPrefix) => {
            // Nothing, or any prefix ending with `/`.
            match_at(t, s, ti + 1, si, memo)
                || (si..s.len()).any(|j| s[j] == '/' && match_at(t, s, ti + 1, j + 1, memo))
        }
    };
    memo[key] = Some(result);
    result
}

/// One entry to write, relative to the root.
struct Item {
    rel: Vec<u8>,
    kind: ItemKind,
    mode: u32,
    mtime: u64,
    size: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    File,
    Dir,
    Symlink,
}

/// Write the build context of `root` as a tar stream into `out`.
///
/// Entries are the paths below `root` that `excludes` lets through, relative to `root`
/// (directories as `lib/`, no `./` prefix), sorted by path bytes, parents before children.
/// Symlinks are stored as symlinks and never followed; sockets, fifos and devices are left out.
/// Each entry keeps its real mtime (seconds) and permission bits; owners are uid/gid 0 with no
/// names. Hard links are stored as separate files. The same tree gives the same bytes.
///
/// ```
/// use image_core::context::{write_context, Excludes};
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir_all(dir.path().join("lib")).unwrap();
/// std::fs::write(dir.path().join("lib/a.ex"), "defmodule A, do: nil\n").unwrap();
/// std::fs::create_dir_all(dir.path().join("_build/dev")).unwrap();
/// let mut tar = Vec::new();
/// let stats = write_context(dir.path(), &Excludes::for_project(dir.path()).unwrap(), &mut tar).unwrap();
/// assert_eq!((stats.files, stats.dirs, stats.excluded), (1, 1, 1));
/// ```
pub fn write_context<W: Write>(
    root: &Path,
    excludes: &Excludes,
    out: W,
) -> Result<ContextStats, ContextError> {
    let mut stats = ContextStats::default();
    let mut items = Vec::new();
    walk(root, &mut Vec::new(), excludes, &mut items, &mut stats)?;
    items.sort_by(|a, b| a.rel.cmp(&b.rel));

    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let w = ContextError::Write;
    for item in &items {
        let host = root.join(std::ffi::OsStr::from_bytes(&item.rel));
        let rel = Path::new(std::ffi::OsStr::from_bytes(&item.rel));
        let mut h = tar::Header::new_gnu();
        h.set_mode(item.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(item.mtime);
        let _ = h.set_username("");
        let _ = h.set_groupname("");
        match item.kind {
            ItemKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, rel, io::empty()).map_err(w)?;
                stats.dirs += 1;
            }
            ItemKind::Symlink => {
                let target = std::fs::read_link(&host).map_err(|source| ContextError::Read {
                    path: host.clone(),
                    source,
                })?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, rel, &target).map_err(w)?;
                stats.symlinks += 1;
            }
            ItemKind::File => {
                let file = std::fs::File::open(&host).map_err(|source| ContextError::Read {
                    path: host.clone(),
                    source,
                })?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(item.size);
                let mut exact = Exact {
                    inner: file.take(item.size),
                    left: item.size,
                };
                match tar.append_data(&mut h, rel, &mut exact) {
                    Ok(()) if exact.left == 0 => {}
                    Ok(()) => {
                        return Err(ContextError::Changed {
                            path: host,
                            expected: item.size,
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(ContextError::Changed {
                            path: host,
                            expected: item.size,
                        })
                    }
                    Err(e) => return Err(w(e)),
                }
                stats.files += 1;
                stats.bytes += item.size;
            }
        }
    }
    tar.into_inner().map_err(w)?.flush().map_err(w)?;
    Ok(stats)
}

/// Walk directory `root/rel` (rel as components), collecting what to write. Returns whether
/// anything below was kept.
fn walk(
    root: &Path,
    rel: &mut Vec<Vec<u8>>,
    excludes: &Excludes,
    items: &mut Vec<Item>,
    stats: &mut ContextStats,
) -> Result<bool, ContextError> {
    let dir = rel_path(root, rel);
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Read { path, source }
    };
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map_err(read_err(&dir))?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(read_err(&dir))?;
    names.sort();
    let mut kept_any = false;
    for name in names {
        rel.push(name);
        let rel_bytes = rel.join(&b'/');
        let rel_str = String::from_utf8_lossy(&rel_bytes).into_owned();
        let host = rel_path(root, rel);
        let md = std::fs::symlink_metadata(&host).map_err(read_err(&host))?;
        let ft = md.file_type();
        let excluded = excludes.is_excluded(&rel_str);
        let item = |kind, size| Item {
            rel: rel_bytes.clone(),
            kind,
            mode: md.mode() & 0o7777,
            mtime: md.mtime().max(0) as u64,
            size,
        };
        if ft.is_dir() {
            if excluded {
                if excludes.has_exclusions() && excludes.may_include_below(&rel_str) {
                    if walk(root, rel, excludes, items, stats)? {
                        items.push(item(ItemKind::Dir, 0));
                        kept_any = true;
                    } else {
                        stats.excluded += 1;
                    }
                } else {
                    stats.excluded += 1;
                }
            } else {
                walk(root, rel, excludes, items, stats)?;
                items.push(item(ItemKind::Dir, 0));
                kept_any = true;
            }
        } else if excluded {
            stats.excluded += 1;
        } else if ft.is_file() {
            items.push(item(ItemKind::File, md.len()));
            kept_any = true;
        } else if ft.is_symlink() {
            items.push(item(ItemKind::Symlink, 0));
            kept_any = true;
        } else {
            stats.skipped_special += 1;
        }
        rel.pop();
    }
    Ok(kept_any)
}

fn rel_path(root: &Path, rel: &[Vec<u8>]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in rel {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

/// Reads at most `left` bytes and counts down, so a file that shrank is detected.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str]) -> Excludes {
        Excludes::new(p).unwrap()
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        assert_eq!(clean("a//b/./c/"), "a/b/c");
        assert_eq!(clean("a/b/../c"), "a/c");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../a"), "../a");
        assert_eq!(clean("./"), ".");
        assert_eq!(clean("/"), "/");
    }

    #[test]
    fn star_question_and_classes_stay_in_one_component() {
        let m = |p: &str, s: &str| matches(&compile(p).unwrap(), s);
        assert!(m("*.ex", "a.ex"));
        assert!(!m("*.ex", "lib/a.ex"));
        assert!(m("lib/*.ex", "lib/a.ex"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(!m("[^a-c]x", "/x"));
        assert!(m("[]]", "]"));
        assert!(m(r"\*", "*"));
        assert!(!m(r"\*", "a"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "axb"));
        assert!(compile("[ab").is_err());
    }

    #[test]
    fn double_star_spans_components() {
        let m = |p: &str, s: &str| matches(&compile(p).unwrap(), s);
        assert!(m("**/x", "x"));
        assert!(m("**/x", "a/b/x"));
        assert!(!m("**/x", "a/bx"));
        assert!(m("a/**/x", "a/x"));
        assert!(m("a/**/x", "a/b/c/x"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("**", "anything/at/all"));
        assert!(m("**/*.ez", "deps/x/y.ez"));
        // Docker's quirk, kept: `**` not followed by `/` still means `(.*/)?`.
        assert!(m("**.txt", "a/.txt"));
        assert!(!m("**.txt", "a/b.txt"));
    }

    #[test]
    fn parents_decide_and_last_pattern_wins() {
        let e = ex(&["docs", "!docs/keep.md", "*.md"]);
        assert!(e.is_excluded("docs/a.txt"));
        assert!(!e.is_excluded("docs/keep.md")); // `*.md` only matches at the root
        assert!(e.is_excluded("README.md"));
        let e = ex(&["docs", "!docs/keep.md"]);
        assert!(!e.is_excluded("docs/keep.md"));
        assert!(e.is_excluded("docs/sub/keep.md"));
        let e = ex(&["*", "!lib"]);
        assert!(e.is_excluded("mix.exs"));
        assert!(!e.is_excluded("lib/a/b.ex"));
        // Re-including then excluding again.
        let e = ex(&["a", "!a/b", "a/b/c"]);
        assert!(e.is_excluded("a/x"));
        assert!(!e.is_excluded("a/b/y"));
        assert!(e.is_excluded("a/b/c/z"));
    }

    #[test]
    fn dockerignore_lines_are_read_like_docker() {
        let mut e = Excludes::default();
        e.extend_dockerignore(
            b"\xef\xbb\xbf# comment\n\n  /assets/node_modules/  \n! keep\n  # not a comment\nx//y/../z\n",
        )
        .unwrap();
        assert_eq!(
            e.patterns(),
            vec!["assets/node_modules", "!keep", "# not a comment", "x/z"]
        );
        let err = Excludes::new(["ok", "bad["]).unwrap_err();
        assert!(err.to_string().contains("bad["), "{err}");
        let mut e = Excludes::default();
        let err = e.extend_dockerignore(b"a\n[z-a]\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn defaults_are_root_anchored_where_sensible() {
        let e = ex(DEFAULT_EXCLUDES);
        for p in [
            "_build",
            "_build/prod/lib",
            "deps/jason",
            ".git",
            "apps/a/.git",
            "assets/node_modules/x",
            "doc/index.html",
            "tmp",
            "cover",
            "x/y.ez",
            "erl_crash.dump",
            ".fetch",
            ".elixir_ls",
        ] {
            assert!(e.is_excluded(p), "{p}");
        }
        for p in [
            "lib/deps.ex",
            "lib/doc/a.ex",
            "priv/tmp/x",
            "apps/a/deps_helper.ex",
            "mix.exs",
        ] {
            assert!(!e.is_excluded(p), "{p}");
        }
    }

    #[test]
    fn excluded_dirs_are_walked_only_for_a_possible_reinclude() {
        let e = ex(&["priv", "!priv/static/keep.txt"]);
        assert!(e.may_include_below("priv"));
        assert!(e.may_include_below("priv/static"));
        assert!(!e.may_include_below("priv/other"));
        let e = ex(&["priv", "!**/keep.txt"]);
        assert!(e.may_include_below("priv/deep/er"));
        let e = ex(&["priv", "!priv"]);
        assert!(!e.may_include_below("priv"));
        let e = ex(&["p*", "!p*/x"]);
        assert!(e.may_include_below("priv"));
    }
}
