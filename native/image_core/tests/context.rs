//! The build context: what goes in, in which order, with which metadata.

use image_core::context::{write_context, ContextStats, Excludes};
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Seen {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
    link: Option<String>,
    data: Vec<u8>,
}

fn read_tar(bytes: &[u8]) -> Vec<Seen> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Seen {
                path: e.path().unwrap().to_string_lossy().into_owned(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                data,
            }
        })
        .collect()
}

fn write(path: &Path, data: &str, mode: u32, mtime: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// A small Mix project with build output, deps, a .git dir, symlinks and a socket.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        &r.join("mix.exs"),
        "defmodule M.MixProject do end\n",
        0o644,
        1_600_000_000,
    );
    write(
        &r.join("lib/m.ex"),
        "defmodule M do end\n",
        0o644,
        1_600_000_100,
    );
    write(
        &r.join("lib/m/b.ex"),
        "defmodule M.B do end\n",
        0o600,
        1_600_000_200,
    );
    write(&r.join("bin/run"), "#!/bin/sh\n", 0o755, 1_600_000_300);
    write(&r.join("_build/prod/lib/m/ebin/M.beam"), "beam", 0o644, 1);
    write(&r.join("deps/x/mix.exs"), "x", 0o644, 1);
    write(&r.join(".git/HEAD"), "ref", 0o644, 1);
    write(&r.join("priv/static/app.js"), "js", 0o644, 1_600_000_400);
    write(
        &r.join("priv/static/keep.txt"),
        "keep",
        0o644,
        1_600_000_500,
    );
    write(&r.join("debug.log"), "log", 0o644, 1);
    write(
        &r.join(".dockerignore"),
        "# ours\n*.log\n/priv/static/\n!priv/static/keep.txt\n",
        0o644,
        1_600_000_600,
    );
    // Symlinks are kept as links: to a file, to a directory outside, dangling.
    symlink("m.ex", r.join("lib/alias.ex")).unwrap();
    symlink("/etc", r.join("etc_link")).unwrap();
    symlink("nowhere", r.join("dangling")).unwrap();
    // A socket: neither file, dir nor link.
    let _sock = std::os::unix::net::UnixListener::bind(r.join("app.sock")).unwrap();
    dir
}

fn context(root: &Path) -> (Vec<u8>, ContextStats) {
    let ex = Excludes::for_project(root).unwrap();
    let mut out = Vec::new();
    let stats = write_context(root, &ex, &mut out).unwrap();
    (out, stats)
}

#[test]
fn writes_what_the_excludes_let_through_sorted_with_real_metadata() {
    let dir = project();
    let (bytes, stats) = context(dir.path());
    let seen = read_tar(&bytes);
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            ".dockerignore",
            "bin",
            "bin/run",
            "dangling",
            "etc_link",
            "lib",
            "lib/alias.ex",
            "lib/m",
            "lib/m.ex",
            "lib/m/b.ex",
            "mix.exs",
            "priv",
            "priv/static",
            "priv/static/keep.txt",
        ]
    );
    assert_eq!(stats.files, 6);
    assert_eq!(stats.dirs, 5);
    assert_eq!(stats.symlinks, 3);
    assert_eq!(stats.skipped_special, 1);
    // _build, deps, .git, debug.log, priv/static/app.js
    assert_eq!(stats.excluded, 5);

    let get = |p: &str| seen.iter().find(|s| s.path == p).unwrap();
    let b = get("lib/m/b.ex");
    assert_eq!((b.mode, b.mtime), (0o600, 1_600_000_200));
    assert_eq!(b.data, b"defmodule M.B do end\n");
    assert_eq!(get("bin/run").mode, 0o755);
    assert_eq!(get("mix.exs").mtime, 1_600_000_000);
    assert_eq!(get("priv/static/keep.txt").mtime, 1_600_000_500);
    for s in &seen {
        assert_eq!((s.uid, s.gid), (0, 0), "{}", s.path);
    }
    let link = get("etc_link");
    assert_eq!(link.kind, tar::EntryType::Symlink);
    assert_eq!(link.link.as_deref(), Some("/etc"));
    assert_eq!(get("lib/alias.ex").link.as_deref(), Some("m.ex"));
    assert_eq!(get("dangling").link.as_deref(), Some("nowhere"));
    assert_eq!(get("lib").kind, tar::EntryType::Directory);
}

#[test]
fn the_same_tree_gives_the_same_bytes() {
    let dir = project();
    let (a, _) = context(dir.path());
    let (b, _) = context(dir.path());
    assert_eq!(a, b);
    // A touched source changes its mtime in the context, which is what Mix looks at.
    let f = std::fs::File::options()
        .write(true)
        .open(dir.path().join("lib/m.ex"))
        .unwrap();
    f.set_modified(SystemTime::now()).unwrap();
    let (c, _) = context(dir.path());
    assert_ne!(a, c);
}

#[test]
fn long_and_non_utf8_names_survive() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let long = "d".repeat(120);
    write(&dir.path().join(&long).join("f".repeat(120)), "x", 0o644, 5);
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.ex");
    std::fs::write(dir.path().join(odd), "y").unwrap();
    let (bytes, stats) = context(dir.path());
    assert_eq!(stats.files, 2);
    let mut ar = tar::Archive::new(bytes.as_slice());
    let names: Vec<Vec<u8>> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    assert!(names.contains(&b"caf\xe9.ex".to_vec()));
    assert!(names.contains(&format!("{long}/{}", "f".repeat(120)).into_bytes()));
}

#[test]
fn an_unreadable_dockerignore_pattern_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "ok\n\n[broken\n").unwrap();
    let err = Excludes::for_project(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("[broken") && msg.contains("line 3"), "{msg}");
}
