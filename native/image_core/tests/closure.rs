//! Closure resolution checked against the real loader (`ldd`, running programs) on this machine.
//!
//! These tests assume a glibc Linux with gcc; the ERTS tests need `/usr/lib/erlang`. A missing
//! prerequisite skips a test with a message, and fails it in CI (see `support/prereq.rs`).

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use image_core::closure::{ClosureError, How, Resolver};
use image_core::elf::{find_elf_files, is_elf};
use image_core::fs::{HostFs, Kind};
use support::{cc, gcc, prereq};

fn erlang_present() -> bool {
    if Path::new("/usr/lib/erlang").is_dir() {
        true
    } else {
        prereq::missing("/usr/lib/erlang is absent (apt-get install erlang-dev)");
        false
    }
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        prereq::missing(format!("{tool} is not available"));
    }
    ok
}

/// Libraries `ldd` reports for `path` (canonical), with "NOTFOUND:name" for missing ones.
fn ldd(path: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd")
        .arg(path)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("linux-vdso") || line.starts_with("linux-gate") {
            continue;
        }
        let p = if let Some((name, rest)) = line.split_once(" => ") {
            if rest.starts_with("not found") {
                set.insert(format!("NOTFOUND:{name}"));
                continue;
            }
            rest.split(" (").next().unwrap_or("").trim().to_string()
        } else if line.starts_with('/') {
            line.split(" (").next().unwrap_or("").trim().to_string()
        } else {
            continue; // "statically linked", "not a dynamic executable"
        };
        set.insert(canon(Path::new(&p)));
    }
    set
}

fn canon(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
        .display()
        .to_string()
}

fn ours(r: &mut Resolver, path: &Path) -> BTreeSet<String> {
    let objs = r
        .load_order(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    objs.iter()
        .skip(1)
        .map(|o| canon(&o.path))
        .inspect(|c| {
            // `canonical` must agree with the kernel's realpath.
            assert!(objs.iter().any(|o| o.canonical.display().to_string() == *c));
        })
        .collect()
}

fn erts_elf_files() -> Vec<PathBuf> {
    let fs = HostFs::new("/");
    let mut files = Vec::new();
    let lib = Path::new("/usr/lib/erlang");
    for entry in std::fs::read_dir(lib).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("erts-") {
            files.extend(find_elf_files(&fs, &p.join("bin")).unwrap());
        }
    }
    for app in std::fs::read_dir(lib.join("lib")).unwrap() {
        let priv_dir = app.unwrap().path().join("priv");
        for sub in ["lib", "bin"] {
            let d = priv_dir.join(sub);
            if d.is_dir() {
                files.extend(find_elf_files(&fs, &d).unwrap());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_erts_elf_matches_ldd() {
    if !erlang_present() {
        return;
    }
    let fs = HostFs::new("/");
    let mut r = Resolver::new(&fs, vec![]);
    let files = erts_elf_files();
    assert!(files.len() > 10, "found only {files:?}");
    for f in &files {
        let want = ldd(f);
        let got = ours(&mut r, f);
        assert_eq!(got, want, "libraries of {}", f.display());
    }
    // And `add` succeeds for all of them together.
    for f in &files {
        r.add(f, "release ELF").unwrap();
    }
    let c = r.finish();
    assert!(c.extra_links.is_empty(), "{:?}", c.extra_links);
}

#[test]
fn beam_symlinks_are_kept_and_parents_are_canonical() {
    if !erlang_present() {
        return;
    }
    let fs = HostFs::new("/");
    let beam = erts_elf_files()
        .into_iter()
        .find(|p| p.ends_with("beam.smp"))
        .expect("beam.smp");
    let mut r = Resolver::new(&fs, vec![PathBuf::from("/usr/lib/erlang")]);
    r.add(&beam, "release ELF").unwrap();
    let c = r.finish();
    let kind = |p: &str| c.entries.get(Path::new(p)).map(|e| e.kind);
    assert!(!c.entries.keys().any(|k| k.starts_with("/usr/lib/erlang")));
    if std::fs::symlink_metadata("/lib64").unwrap().is_symlink() {
        assert_eq!(kind("/lib64"), Some(Kind::Symlink));
    }
    if std::fs::symlink_metadata("/lib").unwrap().is_symlink() {
        assert_eq!(kind("/lib"), Some(Kind::Symlink));
    }
    let ld = canon(Path::new("/lib64/ld-linux-x86-64.so.2"));
    assert!(ld.starts_with("/usr/lib/"), "{ld}");
    assert_eq!(kind(&ld), Some(Kind::File));
    let libc = canon(Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
    assert_eq!(kind(&libc), Some(Kind::File));
    for (k, e) in &c.entries {
        let mut parent = k.parent();
        while let Some(p) = parent {
            let md = std::fs::symlink_metadata(p).unwrap();
            assert!(
                !md.is_symlink(),
                "{} has symlink parent {}",
                k.display(),
                p.display()
            );
            parent = p.parent();
        }
        let md = std::fs::symlink_metadata(k).unwrap();
        match e.kind {
            Kind::Symlink => assert!(md.is_symlink(), "{}", k.display()),
            Kind::File => assert!(md.is_file(), "{}", k.display()),
            other => panic!("{} is {other:?}", k.display()),
        }
    }
}

#[test]
fn crypto_nif_brings_ossl_modules() {
    if !erlang_present() {
        return;
    }
    let fs = HostFs::new("/");
    let nif = erts_elf_files()
        .into_iter()
        .find(|p| p.ends_with("priv/lib/crypto.so"))
        .expect("crypto.so");
    let mut r = Resolver::new(&fs, vec![]);
    r.add(&nif, "release ELF").unwrap();
    let c = r.finish();
    let legacy = c
        .entries
        .iter()
        .find(|(k, _)| k.ends_with("ossl-modules/legacy.so"))
        .expect("legacy.so in the closure");
    assert_eq!(legacy.1.reason, "dlopen'ed by libcrypto");
    assert!(c
        .entries
        .keys()
        .any(|k| k.file_name().is_some_and(|n| n == "libcrypto.so.3")));
    assert!(c
        .entries
        .contains_key(&nif.with_file_name("crypto_callback.so")));
}

// ---------------------------------------------------------------------------------------------
// gcc fixtures

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// An ELF32 i386 header padded to 1 KiB: a library of the wrong class.
fn fake_elf32(p: &Path) {
    let mut h = vec![0u8; 1024];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 1; // ELFCLASS32
    h[5] = 1; // little endian
    h[6] = 1; // EV_CURRENT
    h[16] = 3; // ET_DYN
    h[18] = 3; // EM_386
    h[20] = 1;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, h).unwrap();
}

fn run(exe: &Path) -> std::process::Output {
    Command::new(exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run fixture")
}

/// exe -> liba (no search path) -> libb, with libb only in a directory the exe names.
struct Chain {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

/// In a fresh directory, with the C compiler `compiler`: `b/libb.so`, and `a/liba.so` which
/// needs it (with no search path of its own); `src/main.c` calls liba and prints 42. Returns
/// the directory and a function that links `src/main.c` into `out` with `-rpath` `search` and
/// the linker flag `tags` (`--enable-new-dtags` makes it a RUNPATH).
fn chain_libs(compiler: &'static str) -> (Chain, impl Fn(&str, &str, &str)) {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let s = {
        let root = root.clone();
        move |p: &str| root.join(p).display().to_string()
    };
    write(&root.join("src/b.c"), "int b(void) { return 42; }\n");
    write(
        &root.join("src/a.c"),
        "int b(void); int a(void) { return b(); }\n",
    );
    write(
        &root.join("src/main.c"),
        "#include <stdio.h>\nint a(void);\nint main(void) { printf(\"%d\\n\", a()); return 0; }\n",
    );
    for dir in ["a", "b", "bin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    cc(
        compiler,
        &["-shared", "-fPIC", "-o", &s("b/libb.so"), &s("src/b.c")],
    );
    cc(
        compiler,
        &[
            "-shared",
            "-fPIC",
            "-o",
            &s("a/liba.so"),
            &s("src/a.c"),
            &format!("-L{}", s("b")),
            "-lb",
        ],
    );
    let link = move |out: &str, search: &str, tags: &str| {
        cc(
            compiler,
            &[
                "-o",
                &s(out),
                &s("src/main.c"),
                &format!("-L{}", s("a")),
                "-la",
                &format!("-Wl,-rpath-link,{}", s("b")),
                &format!("-Wl,-rpath,{search}"),
                tags,
            ],
        )
    };
    (Chain { _tmp: tmp, root }, link)
}

fn build_chain() -> Chain {
    let (chain, link) = chain_libs("gcc");
    let s = |p: &str| chain.root.join(p).display().to_string();
    let dirs = format!("{}:{}", s("a"), s("b"));
    link("bin/rpath", &dirs, "-Wl,--disable-new-dtags");
    link("bin/runpath", &dirs, "-Wl,--enable-new-dtags");
    link(
        "bin/origin",
        "$ORIGIN/../a:$ORIGIN/../b",
        "-Wl,--disable-new-dtags",
    );
    fake_elf32(&chain.root.join("w/libb.so"));
    link(
        "bin/wrongclass",
        &format!("{}:{dirs}", s("w")),
        "-Wl,--disable-new-dtags",
    );
    chain
}

#[test]
fn rpath_is_inherited_runpath_is_not() {
    if !have("gcc") {
        return;
    }
    let c = build_chain();
    let fs = HostFs::new("/");
    let libb = c.root.join("b/libb.so").display().to_string();

    // RPATH: liba's lookup of libb inherits the exe's RPATH.
    let exe = c.root.join("bin/rpath");
    let out = run(&exe);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let mut r = Resolver::new(&fs, vec![]);
    let objs = r.load_order(&exe).unwrap();
    let b = objs
        .iter()
        .find(|o| o.needed_as == "libb.so")
        .expect("libb found");
    assert_eq!(b.how, How::Rpath);
    assert_eq!(b.path.display().to_string(), libb);
    assert_eq!(
        objs[b.loaded_by.unwrap()].needed_as,
        "liba.so",
        "libb is loaded by liba"
    );
    assert_eq!(ours(&mut r, &exe), ldd(&exe));
    r.add(&exe, "release ELF").unwrap();
    let closure = r.finish();
    assert!(closure.entries.contains_key(Path::new(&libb)));

    // RUNPATH: not inherited, so liba cannot find libb.
    let exe = c.root.join("bin/runpath");
    assert!(!run(&exe).status.success());
    assert!(ldd(&exe).contains("NOTFOUND:libb.so"));
    let mut r = Resolver::new(&fs, vec![]);
    match r.add(&exe, "release ELF") {
        Err(ClosureError::NotFound {
            soname, needed_by, ..
        }) => {
            assert_eq!(soname, "libb.so");
            assert_eq!(needed_by, c.root.join("a/liba.so"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let msg = r.load_order(&exe).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "libb.so, needed by {}, was not found in ",
            c.root.join("a/liba.so").display()
        )) && msg.ends_with("; install it or add it with extra_files"),
        "{msg}"
    );
}

#[test]
fn origin_and_wrong_class_candidates() {
    if !have("gcc") {
        return;
    }
    let c = build_chain();
    let fs = HostFs::new("/");
    let mut r = Resolver::new(&fs, vec![]);

    let exe = c.root.join("bin/origin");
    assert!(run(&exe).status.success());
    let objs = r.load_order(&exe).unwrap();
    let a = objs.iter().find(|o| o.needed_as == "liba.so").unwrap();
    assert_eq!(a.path, c.root.join("bin/../a/liba.so"));
    assert_eq!(a.canonical, c.root.join("a/liba.so"));
    assert_eq!(ours(&mut r, &exe), ldd(&exe));

    // w/libb.so (ELF32) comes first on the RPATH but is skipped, like ld.so does.
    let exe = c.root.join("bin/wrongclass");
    let out = run(&exe);
    assert!(out.status.success(), "{out:?}");
    let objs = r.load_order(&exe).unwrap();
    let b = objs.iter().find(|o| o.needed_as == "libb.so").unwrap();
    assert_eq!(b.canonical, c.root.join("b/libb.so"));
    assert_eq!(ours(&mut r, &exe), ldd(&exe));
}

/// A tree used as the Fs root, with its own etc/ld.so.conf.
#[test]
fn ld_so_conf_include_dir_gets_extra_link() {
    if !have("gcc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let s = |p: &str| t.join(p).display().to_string();
    write(
        &t.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n",
    );
    write(
        &t.join("etc/ld.so.conf.d/foo.conf"),
        "# foo\n/opt/foo/lib\n/usr/lib/x86_64-linux-gnu\n",
    );
    write(&t.join("etc/ld.so.conf.d/ignored.txt"), "/opt/nope\n");
    std::fs::create_dir_all(t.join("usr/lib/x86_64-linux-gnu")).unwrap();
    symlink("usr/lib", t.join("lib")).unwrap();
    std::fs::create_dir_all(t.join("opt/foo/lib")).unwrap();
    std::fs::create_dir_all(t.join("app")).unwrap();
    write(&t.join("src/foo.c"), "int foo(void) { return 1; }\n");
    write(&t.join("src/bar.c"), "int bar(void) { return 2; }\n");
    write(
        &t.join("src/app.c"),
        "int foo(void); int bar(void); int app(void) { return foo() + bar(); }\n",
    );
    // -nostdlib: the tree holds no libc, and these need none.
    gcc(&[
        "-shared",
        "-fPIC",
        "-nostdlib",
        "-Wl,-soname,libfoo.so.1",
        "-o",
        &s("opt/foo/lib/libfoo.so.1.0.0"),
        &s("src/foo.c"),
    ]);
    symlink("libfoo.so.1.0.0", t.join("opt/foo/lib/libfoo.so.1")).unwrap();
    gcc(&[
        "-shared",
        "-fPIC",
        "-nostdlib",
        "-Wl,-soname,libbar.so.2",
        "-o",
        &s("usr/lib/x86_64-linux-gnu/libbar.so.2"),
        &s("src/bar.c"),
    ]);
    gcc(&[
        "-shared",
        "-fPIC",
        "-nostdlib",
        "-o",
        &s("app/libapp.so"),
        &s("src/app.c"),
        &format!("-L{}", s("opt/foo/lib")),
        &format!("-L{}", s("usr/lib/x86_64-linux-gnu")),
        "-l:libfoo.so.1",
        "-l:libbar.so.2",
    ]);

    let fs = HostFs::new(t);
    let mut r = Resolver::new(&fs, vec![PathBuf::from("/app")]);
    let objs = r.load_order(Path::new("/app/libapp.so")).unwrap();
    let hows: Vec<(String, How)> = objs
        .iter()
        .skip(1)
        .map(|o| (o.needed_as.clone(), o.how))
        .collect();
    assert_eq!(
        hows,
        vec![
            ("libfoo.so.1".to_string(), How::LdSoConf),
            ("libbar.so.2".to_string(), How::LdSoConf),
        ]
    );
    r.add(Path::new("/app"), "release").unwrap();
    let c = r.finish();
    let keys: Vec<(String, Kind)> = c
        .entries
        .iter()
        .map(|(k, e)| (k.display().to_string(), e.kind))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("/opt/foo/lib/libfoo.so.1".to_string(), Kind::Symlink),
            ("/opt/foo/lib/libfoo.so.1.0.0".to_string(), Kind::File),
            (
                "/usr/lib/x86_64-linux-gnu/libbar.so.2".to_string(),
                Kind::File
            ),
        ],
        "the excluded /app is not copied"
    );
    assert_eq!(
        c.extra_links.into_iter().collect::<Vec<_>>(),
        vec![(
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libfoo.so.1"),
            PathBuf::from("/opt/foo/lib/libfoo.so.1")
        )],
        "only the non-system ld.so.conf dir needs a link"
    );

    // Without the include, libfoo is not found and the error says where it looked.
    std::fs::remove_file(t.join("etc/ld.so.conf.d/foo.conf")).unwrap();
    let mut r = Resolver::new(&fs, vec![]);
    let e = r.add(Path::new("/app/libapp.so"), "release").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("libfoo.so.1, needed by /app/libapp.so, was not found in /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib"),
        "{msg}"
    );
}

#[test]
fn unreadable_paths_and_elf_detection() {
    let fs = HostFs::new("/");
    let mut r = Resolver::new(&fs, vec![]);
    let e = r
        .add(Path::new("/definitely/not/here"), "extra_files")
        .unwrap_err();
    assert!(matches!(e, ClosureError::Unreadable { .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with("cannot read /definitely/not/here"));
    let head = std::fs::read("/bin/sh").unwrap();
    assert!(is_elf(&head) || head.starts_with(b"#!"));
}

/// musl: RUNPATH is inherited along the chain and `libc.so` is the loader itself; checked
/// against musl's own `--list`.
#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "musl's x86-64 loader: an x86-64 host"
)]
fn musl_rules_match_musl_loader() {
    let ldso = Path::new("/lib/ld-musl-x86_64.so.1");
    if !have("musl-gcc") {
        return;
    }
    if !ldso.exists() {
        prereq::missing(format!("{} (apt-get install musl)", ldso.display()));
        return;
    }
    let (chain, link) = chain_libs("musl-gcc");
    let root = chain.root.clone();
    link(
        "bin/exe",
        "$ORIGIN/../a:$ORIGIN/../b",
        "-Wl,--enable-new-dtags",
    );
    let exe = root.join("bin/exe");
    let out = run(&exe);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let listed = Command::new(ldso).arg("--list").arg(&exe).output().unwrap();
    let mut want = BTreeSet::new();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let line = line.trim();
        let p = match line.split_once(" => ") {
            Some((_, rest)) => rest,
            None => line,
        };
        want.insert(canon(Path::new(p.split(" (").next().unwrap().trim())));
    }

    let fs = HostFs::new("/");
    let mut r = Resolver::new(&fs, vec![root.clone()]);
    let objs = r.load_order(&exe).unwrap();
    assert_eq!(objs[1].how, How::Interpreter);
    let b = objs.iter().find(|o| o.needed_as == "libb.so").unwrap();
    assert_eq!(b.how, How::MuslRpath, "RUNPATH is inherited under musl");
    assert_eq!(ours(&mut r, &exe), want);

    r.add(&exe, "release ELF").unwrap();
    let c = r.finish();
    // The loader's link, at its canonical parent (/usr/lib on merged-/usr).
    let link = Path::new(&canon(ldso.parent().unwrap())).join(ldso.file_name().unwrap());
    assert_eq!(c.entries.get(&link).map(|e| e.kind), Some(Kind::Symlink));
    assert!(c.entries.contains_key(Path::new(&canon(ldso))));
    if Path::new("/etc/ld-musl-x86_64.path").exists() {
        assert!(c
            .entries
            .contains_key(Path::new("/etc/ld-musl-x86_64.path")));
    }
    assert!(!c.entries.keys().any(|k| k.starts_with(&root)));
}
