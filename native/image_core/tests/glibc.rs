//! Checking a release against a base image's libraries, over real ELF files of this machine and
//! gcc-made fixtures: a fake `libc.so.6` whose version definitions stop at `GLIBC_2.31`, a musl
//! base, a base that hides `libcrypto.so.3`. Then base-mode plans over such bases.
//!
//! These tests need an x86-64 glibc Linux with gcc (as the closure tests do): on other hosts
//! they are ignored. The ones that need Erlang or musl skip with a message when it is absent,
//! and fail in CI (see `support/prereq.rs`).

mod support;

use image_core::fs::{Fs, HostFs};
use image_core::glibc::{
    check_release, highest_glibc, version_defs, version_key, version_needs, Incompatible, Problem,
    ReleaseOnBase,
};
use image_core::layer::Source;
use image_core::plan::{
    plan_on_base, Base, BasePlanError, Settings, BASE_HOME, COOKIE_DIR, CRASH_DUMP,
};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::{gcc, prereq, Hiding};

fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
}

fn copy(from: &Path, root: &Path, rel: &str) {
    put(root, rel, &std::fs::read(from).unwrap(), 0o755);
}

/// A dynamically linked "hello" program built by gcc on this machine (glibc 2.34+ makes every
/// program need `GLIBC_2.34` for `__libc_start_main`).
fn hello_program(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n",
    )
    .unwrap();
    let exe = dir.join("hello");
    gcc(&["-o", exe.to_str().unwrap(), src.to_str().unwrap()]);
    exe
}

/// A release-like directory holding `prog` at `erts-13.1.5/bin/beam.smp`, with the files a plan
/// needs.
fn release_with(dir: &Path, prog: &Path) -> PathBuf {
    let rel = dir.join("rel");
    copy(prog, &rel, "erts-13.1.5/bin/beam.smp");
    put(&rel, "bin/hello", b"#!/bin/sh\necho hi\n", 0o755);
    put(&rel, "releases/start_erl.data", b"13.1.5 0.1.0", 0o644);
    put(&rel, "releases/0.1.0/env.sh", b"#!/bin/sh\n", 0o755);
    put(&rel, "releases/COOKIE", b"SECRET", 0o400);
    put(&rel, "lib/hello-0.1.0/ebin/x.beam", b"FOR1", 0o644);
    rel
}

fn host_libc() -> PathBuf {
    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
}

fn x86_64_glibc() -> bool {
    cfg!(all(target_arch = "x86_64", target_env = "gnu")) && host_libc().exists()
}

/// What most tests start from: a gcc-built "hello" program and a release holding it as
/// `beam.smp` ([`release_with`]), in a temporary directory.
struct Hello {
    tmp: tempfile::TempDir,
    prog: PathBuf,
    rel: PathBuf,
}

/// [`Hello`], or `None` on a host without x86-64 glibc (said by [`prereq::missing`]).
fn hello_release() -> Option<Hello> {
    if !x86_64_glibc() {
        prereq::missing(format!("{} (the host's glibc)", host_libc().display()));
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let prog = hello_program(&tmp.path().join("src"));
    let rel = release_with(tmp.path(), &prog);
    Some(Hello { tmp, prog, rel })
}

/// A base rootfs with the host's loader and a fake `libc.so.6` defining `GLIBC_2.2.5` up to
/// `GLIBC_2.31` only (as Debian 11's does), plus an `os-release`.
fn old_glibc_base(dir: &Path) -> PathBuf {
    let root = dir.join("base");
    let src = dir.join("fakelibc");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("libc.c"),
        "int fake_a(void) { return 1; }\nint fake_b(void) { return 2; }\nint fake_c(void) { return 3; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("libc.map"),
        "GLIBC_2.2.5 { global: fake_a; local: *; };\nGLIBC_2.30 { global: fake_b; } GLIBC_2.2.5;\nGLIBC_2.31 { global: fake_c; } GLIBC_2.30;\n",
    )
    .unwrap();
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    gcc(&[
        "-shared",
        "-fPIC",
        "-nostdlib",
        "-Wl,-soname,libc.so.6",
        &format!("-Wl,--version-script={}", src.join("libc.map").display()),
        "-o",
        lib.join("libc.so.6").to_str().unwrap(),
        src.join("libc.c").to_str().unwrap(),
    ]);
    copy(
        Path::new("/lib64/ld-linux-x86-64.so.2"),
        &root,
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    );
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::fs::create_dir_all(root.join("lib64")).unwrap();
    std::os::unix::fs::symlink(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        root.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    put(
        &root,
        "etc/os-release",
        b"NAME=\"Fake\"\nPRETTY_NAME=\"Fake GNU/Linux 11 (old)\"\n",
        0o644,
    );
    root
}

fn settings(rel: &Path) -> Settings {
    Settings {
        release_dir: rel.to_path_buf(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        uid: 1234,
        gid: 5678,
        env: vec!["FOO=bar".into()],
        labels: [("org.opencontainers.image.title".into(), "hello".into())].into(),
        ..Settings::default()
    }
}

fn amd64() -> image_core::elf::Platform {
    image_core::elf::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn base<'a>(fs: &'a dyn Fs, env: &[&str]) -> Base<'a> {
    Base {
        reference: "example/base:1".into(),
        fs,
        platform: amd64(),
        env: env.iter().map(|s| s.to_string()).collect(),
        labels: [
            ("org.opencontainers.image.title".into(), "base".into()),
            ("vendor".into(), "distro".into()),
        ]
        .into(),
        exposed_ports: vec![],
        stop_signal: Some("SIGQUIT".into()),
    }
}

fn incompatible(e: BasePlanError) -> Incompatible {
    match e {
        BasePlanError::Incompatible(i) => i,
        BasePlanError::Plan(e) => panic!("expected an incompatible base, got: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn versions_of_this_machine() {
    if !x86_64_glibc() {
        prereq::missing(format!("{} (the host's glibc)", host_libc().display()));
        return;
    }
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let needs = version_needs(&me).unwrap();
    assert!(needs
        .iter()
        .any(|n| n.file == "libc.so.6" && n.version == "GLIBC_2.2.5"));
    let libc = version_defs(&std::fs::read(host_libc()).unwrap()).unwrap();
    assert!(
        !libc.iter().any(|d| d == "libc.so.6"),
        "the file's own name is not a version"
    );
    for n in needs.iter().filter(|n| n.file == "libc.so.6") {
        assert!(libc.contains(&n.version), "{} missing from libc", n.version);
    }
    let highest = highest_glibc(libc.iter().map(String::as_str)).unwrap();
    assert!(
        version_key(highest) >= version_key("GLIBC_2.34"),
        "{highest}"
    );
    // A program has no version definitions.
    assert!(version_defs(&me).unwrap().is_empty());
}

#[test]
fn messages_state_the_rule_and_what_to_do() {
    let p = Problem::MissingLibrary {
        soname: "libcrypto.so.3".into(),
        needed_by: "lib/crypto-5.1.2/priv/lib/crypto.so".into(),
        others: 0,
        package: Some("Debian: libssl3".into()),
    };
    assert_eq!(
        p.message("IMAGE"),
        "the base image IMAGE has no libcrypto.so.3, needed by lib/crypto-5.1.2/priv/lib/crypto.so: install it in the base (Debian: libssl3) or use no base"
    );
    let p = Problem::OldGlibc {
        needed: "GLIBC_2.34".into(),
        used_by: "erts-13.1.5/bin/beam.smp".into(),
        others: 2,
        provided: Some("GLIBC_2.30".into()),
        release: Some("2.31".into()),
        system: Some("Debian GNU/Linux 11 (bullseye)".into()),
    };
    assert_eq!(
        p.message("IMAGE"),
        "the release needs GLIBC_2.34 (erts-13.1.5/bin/beam.smp and 2 other files use it) but the glibc of the base image IMAGE provides up to GLIBC_2.30 (glibc 2.31, Debian GNU/Linux 11 (bullseye)): use a base at least as new as the system that built the release, or no base"
    );
    let both = Incompatible {
        base: "IMAGE".into(),
        problems: vec![
            p.clone(),
            Problem::MissingTools {
                tools: vec!["awk".into()],
                path: "/bin".into(),
            },
        ],
    };
    let text = both.to_string();
    assert!(text.starts_with("the release needs GLIBC_2.34"), "{text}");
    assert!(
        text.contains("; also, the base image IMAGE has no awk"),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn an_old_glibc_is_refused_with_the_highest_version_needed() {
    let Some(Hello { tmp, prog, rel }) = hello_release() else {
        return;
    };
    let base_root = old_glibc_base(tmp.path());
    // The fabricated libc defines exactly these.
    let defs =
        version_defs(&std::fs::read(base_root.join("usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap())
            .unwrap();
    assert_eq!(defs, vec!["GLIBC_2.2.5", "GLIBC_2.30", "GLIBC_2.31"]);

    let host = HostFs::new("/");
    let base_fs = HostFs::new(&base_root);
    let union = ReleaseOnBase::new(&host, &rel, &base_fs).unwrap();
    let problems = check_release(&union).unwrap();
    let needed = version_needs(&std::fs::read(&prog).unwrap()).unwrap();
    let want = highest_glibc(
        needed
            .iter()
            .filter(|n| n.file == "libc.so.6")
            .map(|n| n.version.as_str()),
    )
    .unwrap()
    .to_string();
    assert_eq!(
        problems,
        vec![Problem::OldGlibc {
            needed: want.clone(),
            used_by: "erts-13.1.5/bin/beam.smp".into(),
            others: 0,
            provided: Some("GLIBC_2.31".into()),
            release: None,
            system: Some("Fake GNU/Linux 11 (old)".into()),
        }]
    );

    // The plan refuses the base with the same problem, named after the base.
    let b = base(&base_fs, &["PATH=/usr/bin:/bin"]);
    let err = incompatible(plan_on_base(&host, &settings(&rel), &b).unwrap_err());
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("the release needs {want} (erts-13.1.5/bin/beam.smp uses it) but the glibc of the base image example/base:1 provides up to GLIBC_2.31 (Fake GNU/Linux 11 (old))")),
        "{text}"
    );
    // The fake base has no shell either: reported too.
    assert!(text.contains("has no /bin/sh, readlink"), "{text}");
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn a_missing_library_names_the_release_file_and_the_package() {
    let crypto = std::fs::read_dir("/usr/lib/erlang/lib")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("priv/lib/crypto.so"))
        .find(|p| p.is_file());
    let Some(crypto) = crypto else {
        prereq::missing("the host's Erlang crypto NIF (apt-get install erlang-dev)");
        return;
    };
    let Some(Hello { tmp: _tmp, rel, .. }) = hello_release() else {
        return;
    };
    copy(&crypto, &rel, "lib/crypto-5.1.2/priv/lib/crypto.so");
    copy(
        &crypto,
        &rel,
        "lib/crypto-5.1.2/priv/lib/otp_test_engine.so",
    );
    let host = HostFs::new("/");
    let base_fs = Hiding::names(&host, &["libcrypto.so.3"]);
    let union = ReleaseOnBase::new(&host, &rel, &base_fs).unwrap();
    assert_eq!(
        check_release(&union).unwrap(),
        vec![Problem::MissingLibrary {
            soname: "libcrypto.so.3".into(),
            needed_by: "lib/crypto-5.1.2/priv/lib/crypto.so".into(),
            others: 1,
            package: Some("Debian: libssl3".into()),
        }]
    );
    // Without the hiding, this machine runs it.
    let union = ReleaseOnBase::new(&host, &rel, &host).unwrap();
    assert_eq!(check_release(&union).unwrap(), vec![]);
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn a_glibc_release_on_a_musl_base_misses_its_interpreter() {
    let musl = Path::new("/lib/ld-musl-x86_64.so.1");
    if !musl.exists() {
        prereq::missing(format!("{} (apt-get install musl)", musl.display()));
        return;
    }
    let Some(Hello { tmp, rel, .. }) = hello_release() else {
        return;
    };
    let root = tmp.path().join("alpine");
    copy(musl, &root, "lib/ld-musl-x86_64.so.1");
    std::os::unix::fs::symlink(
        "ld-musl-x86_64.so.1",
        root.join("lib/libc.musl-x86_64.so.1"),
    )
    .unwrap();
    let host = HostFs::new("/");
    let base_fs = HostFs::new(&root);
    let union = ReleaseOnBase::new(&host, &rel, &base_fs).unwrap();
    let problems = check_release(&union).unwrap();
    assert_eq!(
        problems,
        vec![Problem::MissingInterpreter {
            interpreter: "/lib64/ld-linux-x86-64.so.2".into(),
            needed_by: "erts-13.1.5/bin/beam.smp".into(),
            base_is_musl: true,
        }]
    );
    let text = problems[0].message("alpine:3");
    assert!(
        text.starts_with("the base image alpine:3 has no /lib64/ld-linux-x86-64.so.2, the program interpreter erts-13.1.5/bin/beam.smp needs: the base uses musl"),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn a_plan_on_a_compatible_base_has_no_runtime_layer_and_inherits_the_base_config() {
    let Some(Hello { tmp: _tmp, rel, .. }) = hello_release() else {
        return;
    };
    let host = HostFs::new("/");
    // This machine is the base: it runs its own programs.
    let b = base(
        &host,
        &["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C", "HOME=/root"],
    );
    let p = plan_on_base(&host, &settings(&rel), &b).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["dirs", "erts", "app"]);
    let dirs = &p.layers[0];
    let owned: BTreeMap<String, (u32, u32, u32)> = dirs
        .entries
        .iter()
        .map(|e| {
            assert_eq!(e.source, Source::Dir);
            (e.path.display().to_string(), (e.mode, e.uid, e.gid))
        })
        .collect();
    assert_eq!(owned["/app/tmp"], (0o755, 1234, 5678));
    assert_eq!(owned[COOKIE_DIR], (0o700, 1234, 5678));
    assert!(!owned.contains_key("/tmp"), "this base has /tmp: {owned:?}");
    // Nothing of the distribution's is overwritten.
    for l in &p.layers {
        for e in &l.entries {
            assert!(
                e.path.starts_with("/app") || e.path.starts_with(COOKIE_DIR),
                "{} in {}",
                e.path.display(),
                l.name
            );
        }
    }
    // The cookie rules hold as without a base.
    let app = p.layers.iter().find(|l| l.name == "app").unwrap();
    assert!(!app
        .entries
        .iter()
        .any(|e| e.path.ends_with("releases/COOKIE")));
    let env_sh = app
        .entries
        .iter()
        .find(|e| e.path == Path::new("/app/releases/0.1.0/env.sh"))
        .unwrap();
    assert!(
        matches!(&env_sh.source, Source::Bytes(b) if String::from_utf8_lossy(b).contains("RELEASE_COOKIE"))
    );

    let c = &p.run_config;
    let locale = Path::new("/usr/lib/locale/C.utf8").exists();
    let mut want = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("LANG={}", if locale { "C.UTF-8" } else { "C" }),
        format!("HOME={BASE_HOME}"),
    ];
    if !locale {
        want.push("ELIXIR_ERL_OPTIONS=+fnu".into());
    }
    want.push(CRASH_DUMP.into());
    want.push("FOO=bar".into());
    assert_eq!(c.env, want);
    assert_eq!(c.user, "1234:5678");
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.entrypoint, vec!["/app/bin/hello"]);
    assert_eq!(
        c.labels["org.opencontainers.image.title"], "hello",
        "ours win"
    );
    assert_eq!(c.labels["vendor"], "distro", "the base's are kept");
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(p.platform, amd64());
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn a_base_of_another_platform_is_refused_before_anything_else() {
    let Some(Hello { tmp: _tmp, rel, .. }) = hello_release() else {
        return;
    };
    let host = HostFs::new("/");
    let mut b = base(&host, &[]);
    b.platform.architecture = "arm64".into();
    b.platform.variant = Some("v8".into());
    let err = incompatible(plan_on_base(&host, &settings(&rel), &b).unwrap_err());
    assert_eq!(
        err.problems,
        vec![Problem::Platform {
            base: "linux/arm64/v8".into(),
            release: "linux/amd64".into()
        }]
    );
}

#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_env = "gnu")),
    ignore = "x86-64 glibc fixtures: an x86-64 glibc host"
)]
fn a_base_without_tmp_or_tools_gets_tmp_or_is_refused() {
    let Some(Hello { tmp: _tmp, rel, .. }) = hello_release() else {
        return;
    };
    let host = HostFs::new("/");
    let no_awk = Hiding::names(&host, &["awk", "mawk", "gawk"]);
    let err = incompatible(plan_on_base(&host, &settings(&rel), &base(&no_awk, &[])).unwrap_err());
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        matches!(&err.problems[0], Problem::MissingTools { tools, .. } if tools == &["awk"]),
        "{err}"
    );
    let no_tmp = Hiding::names(&host, &["tmp"]);
    let p =
        plan_on_base(&host, &settings(&rel), &base(&no_tmp, &[])).unwrap_or_else(|e| panic!("{e}"));
    let t = p.layers[0]
        .entries
        .iter()
        .find(|e| e.path == Path::new("/tmp"))
        .expect("/tmp is added");
    assert_eq!((t.mode, t.uid, t.exact_mode), (0o1777, 0, true));
    // No PATH in the base: ours.
    assert!(p.run_config.env[0].starts_with("PATH=/usr/local/sbin"));
}
