//! Planning a release: which files go into which layer, what is generated, what is refused.
//!
//! The fixture is a fake release in a temporary directory, read through `HostFs::new("/")` so the
//! runtime closure is resolved from this machine. Its ERTS executables are copies of the host's
//! `beam.smp` and `epmd` when Erlang is installed, else of `/bin/true`.

mod support;

use image_core::fs::HostFs;
use image_core::layer::{Entry, LayerSpec, Source};
use image_core::plan::{plan, Plan, PlanError, Settings, COOKIE_SNIPPET};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const UID: u32 = 1234;
const GID: u32 = 5678;
const COOKIE: &str = "BUILD_TIME_COOKIE_MUST_NOT_SHIP";
const ENV_SH: &str = "#!/bin/sh\n# the project's env.sh\nexport FROM_ENV_SH=1\n";

/// A copy source for `erts-*/bin/NAME`: the host's ERTS file, else `/bin/true`.
fn erts_binary(name: &str) -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/erlang")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file() && p.to_string_lossy().contains("/erts-"))
        .min();
    found.unwrap_or_else(|| {
        println!("NOTE: no host ERTS {name}; using /bin/true");
        PathBuf::from("/bin/true")
    })
}

fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
}

/// A fake assembled release named `hello` (ERTS 13.1.5, release 0.1.0) under `dir/rel`.
fn fixture(dir: &Path) -> PathBuf {
    let rel = dir.join("rel");
    put(
        &rel,
        "bin/hello",
        b"#!/bin/sh\necho release script\n",
        0o755,
    );
    put(&rel, "releases/start_erl.data", b"13.1.5 0.1.0", 0o644);
    put(&rel, "releases/COOKIE", COOKIE.as_bytes(), 0o400);
    put(&rel, "releases/0.1.0/env.sh", ENV_SH.as_bytes(), 0o755);
    put(&rel, "releases/0.1.0/vm.args", b"-kernel x\n", 0o644);
    for name in ["beam.smp", "epmd"] {
        let bytes = std::fs::read(erts_binary(name)).unwrap();
        put(&rel, &format!("erts-13.1.5/bin/{name}"), &bytes, 0o755);
    }
    put(&rel, "lib/hello-0.1.0/ebin/x.beam", b"FOR1 hello", 0o644);
    put(&rel, "lib/dep-1.0.0/ebin/y.beam", b"FOR1 dep", 0o644);
    put(&rel, "lib/kernel-8.5/ebin/z.beam", b"FOR1 kernel", 0o644);
    rel
}

fn settings(rel: &Path) -> Settings {
    Settings {
        release_dir: rel.to_path_buf(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        otp_apps: vec!["kernel".into()],
        extra_files: vec![],
        uid: UID,
        gid: GID,
        env: vec!["FOO=bar".into()],
        labels: [("org.opencontainers.image.version".into(), "0.1.0".into())].into(),
        exposed_ports: vec!["4000/tcp".into()],
        annotations: Default::default(),
        sbom: None,
    }
}

fn make(rel: &Path) -> Plan {
    plan(&HostFs::new("/"), &settings(rel)).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

fn layer<'a>(p: &'a Plan, name: &str) -> &'a LayerSpec {
    p.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no {name} layer"))
}

fn entry<'a>(l: &'a LayerSpec, path: &str) -> Option<&'a Entry> {
    l.entries.iter().find(|e| e.path == Path::new(path))
}

fn expect_entry<'a>(p: &'a Plan, layer_name: &str, path: &str) -> &'a Entry {
    let l = layer(p, layer_name);
    entry(l, path).unwrap_or_else(|| panic!("{path} is not in the {layer_name} layer"))
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => panic!("add the GOARCH name of {other}"),
    }
}

#[test]
fn release_files_go_to_erts_deps_and_app_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let p = make(&rel);
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["runtime", "erts", "deps", "app"]);

    for (layer_name, path) in [
        ("erts", "/app/erts-13.1.5/bin/beam.smp"),
        ("erts", "/app/erts-13.1.5/bin/epmd"),
        ("erts", "/app/lib/kernel-8.5/ebin/z.beam"),
        ("deps", "/app/lib/dep-1.0.0/ebin/y.beam"),
        ("app", "/app/lib/hello-0.1.0/ebin/x.beam"),
        ("app", "/app/bin/hello"),
        ("app", "/app/releases/start_erl.data"),
        ("app", "/app/releases/0.1.0/vm.args"),
        ("app", "/app/releases/0.1.0/env.sh"),
    ] {
        expect_entry(&p, layer_name, path);
        for other in p.layers.iter().filter(|l| l.name != layer_name) {
            assert!(
                entry(other, path).is_none(),
                "{path} is also in the {} layer",
                other.name
            );
        }
    }
    // Release files are read from the release directory itself.
    let x = expect_entry(&p, "app", "/app/lib/hello-0.1.0/ebin/x.beam");
    assert_eq!(
        x.source,
        Source::File(rel.join("lib/hello-0.1.0/ebin/x.beam"))
    );
    // The release's own ELF files are not copied a second time as runtime files, and no host
    // temporary path leaks into the image.
    for l in &p.layers {
        for e in &l.entries {
            assert!(
                !e.path.starts_with(tmp.path()),
                "{} in the {} layer",
                e.path.display(),
                l.name
            );
        }
    }
}

#[test]
fn the_build_time_cookie_never_ships_and_env_sh_gets_the_snippet() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let p = make(&rel);
    for l in &p.layers {
        for e in &l.entries {
            assert!(
                !e.path.ends_with("releases/COOKIE"),
                "{} is in the {} layer",
                e.path.display(),
                l.name
            );
            assert_ne!(e.source, Source::File(rel.join("releases/COOKIE")));
            if let Source::Bytes(b) = &e.source {
                assert!(
                    !String::from_utf8_lossy(b).contains(COOKIE),
                    "{} carries the cookie",
                    e.path.display()
                );
            }
        }
    }
    let env_sh = expect_entry(&p, "app", "/app/releases/0.1.0/env.sh");
    let Source::Bytes(bytes) = &env_sh.source else {
        panic!("env.sh is not generated: {:?}", env_sh.source);
    };
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with(ENV_SH), "the project's env.sh is kept");
    assert!(
        text.ends_with(COOKIE_SNIPPET),
        "env.sh ends with the snippet"
    );
    assert_eq!(env_sh.mode & 0o111, 0o111, "env.sh keeps its execute bits");
}

#[test]
fn runtime_layer_has_users_dirs_and_the_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let p = make(&rel);

    let t = expect_entry(&p, "runtime", "/tmp");
    assert_eq!(t.source, Source::Dir);
    assert!(t.exact_mode);
    assert_eq!((t.mode, t.uid, t.gid), (0o1777, 0, 0));
    for dir in ["/app/tmp", "/run/release", "/home/app"] {
        let d = expect_entry(&p, "runtime", dir);
        assert_eq!(d.source, Source::Dir, "{dir}");
        assert!(d.exact_mode, "{dir}");
        assert_eq!((d.uid, d.gid), (UID, GID), "{dir} is owned by the app user");
    }
    assert_eq!(expect_entry(&p, "runtime", "/run/release").mode, 0o700);

    let passwd = expect_entry(&p, "runtime", "/etc/passwd");
    let Source::Bytes(passwd) = &passwd.source else {
        panic!("/etc/passwd is not generated");
    };
    let passwd = String::from_utf8_lossy(passwd);
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some("1234") && l.split(':').nth(3) == Some("5678")),
        "/etc/passwd has no user {UID}:{GID}:\n{passwd}"
    );
    let Source::Bytes(group) = &expect_entry(&p, "runtime", "/etc/group").source else {
        panic!("/etc/group is not generated");
    };
    assert!(String::from_utf8_lossy(group).contains(":5678:"));

    // The shell and the tools the scripts call resolve to files inside the layer (through the
    // same symlinks as on the host: /bin -> usr/bin on merged-/usr), and so does the program
    // interpreter of the release's ERTS.
    let runtime = layer(&p, "runtime");
    for path in ["/bin/sh", "/usr/bin/awk", "/bin/cat"] {
        let (canon, e) = resolve_in(runtime, path);
        assert!(
            matches!(e.source, Source::File(_)),
            "{path} -> {} is not a file in the runtime layer",
            canon.display()
        );
    }
    let beam = std::fs::read(rel.join("erts-13.1.5/bin/beam.smp")).unwrap();
    if let Some(interp) = image_core::elf::ElfInfo::parse(&beam).unwrap().interpreter {
        resolve_in(runtime, &interp);
    }
    assert!(!p.runtime_files.is_empty());
    assert!(p.runtime_files.iter().all(|f| !f.reason.is_empty()));
    assert!(p.runtime_files.iter().any(|f| f.reason.contains("shell")));
}

/// Follow `path` through the directories and symlinks of one layer spec, as the kernel would in
/// a container of that layer alone; panics when a component is missing.
fn resolve_in<'a>(l: &'a LayerSpec, path: &str) -> (PathBuf, &'a Entry) {
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    let mut last = None;
    while let Some(name) = pending.pop() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&name);
        let Some(e) = entry(l, &next.to_string_lossy()) else {
            // Parent directories are implicit in a spec (the layer writer adds them).
            assert!(
                !pending.is_empty() && l.entries.iter().any(|e| e.path.starts_with(&next)),
                "{path}: {} is not in the {} layer",
                next.display(),
                l.name
            );
            cur = next;
            continue;
        };
        match &e.source {
            Source::Symlink(target) => {
                hops += 1;
                assert!(hops < 40, "{path}: symlink loop");
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                let t = target.to_string_lossy();
                pending.extend(t.split('/').rev().map(str::to_string));
            }
            _ => {
                cur = next;
                last = Some(e);
            }
        }
    }
    (cur, last.expect("a path with at least one component"))
}

#[test]
fn run_config_and_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let p = make(&rel);
    let c = &p.run_config;
    assert_eq!(c.entrypoint, ["/app/bin/hello"]);
    assert_eq!(c.cmd, ["start"]);
    assert_eq!(c.user, "1234:5678");
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.exposed_ports, ["4000/tcp"]);
    assert_eq!(c.labels["org.opencontainers.image.version"], "0.1.0");
    assert!(c.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(
        c.env.last().map(String::as_str),
        Some("FOO=bar"),
        "user env comes last, so it overrides the defaults"
    );
    assert_eq!(p.platform.os, "linux");
    assert_eq!(p.platform.architecture, host_architecture());
}

#[test]
fn planned_image_builds_into_a_valid_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let p = make(&rel);
    let blobs = image_core::archive::BlobDir {
        root: tmp.path().join("blobs"),
    };
    let image = image_core::build::build(
        &HostFs::new("/"),
        &p,
        support::CREATED,
        1,
        &blobs,
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("build failed: {e}"));
    let tags = [image_core::reference::Reference::parse("hello:0.1.0").unwrap()];
    let path = tmp.path().join("hello.tar");
    let file = std::fs::File::create(&path).unwrap();
    image_core::archive::write_archive(&image, &tags, &blobs, file, &mut |_| {}).unwrap();
    let checked = support::validate_archive(&path).unwrap_or_else(|e| panic!("invalid: {e}"));
    assert_eq!(checked.manifest_digest, image.manifest_digest().to_string());
    assert_eq!(checked.layers.len(), 4);

    // The container's view.
    let f = |path: &str| {
        checked
            .file(path)
            .unwrap_or_else(|| panic!("{path} is not in the image"))
    };
    for l in &checked.layers {
        assert!(l.get("/app/releases/COOKIE").is_none());
    }
    assert!(f("/app/releases/0.1.0/env.sh")
        .data
        .ends_with(COOKIE_SNIPPET.as_bytes()));
    assert_eq!((f("/tmp").mode, f("/tmp").uid), (0o1777, 0));
    let app_tmp = f("/app/tmp");
    assert_eq!((app_tmp.uid, app_tmp.gid), (UID as u64, GID as u64));
    let run_release = f("/run/release");
    assert_eq!((run_release.uid, run_release.mode), (UID as u64, 0o700));
    assert_eq!(f("/app/erts-13.1.5/bin/beam.smp").mode, 0o755);
    assert_eq!(f("/app/lib/dep-1.0.0/ebin/y.beam").data, b"FOR1 dep");
    assert_eq!(checked.config["config"]["User"], "1234:5678");
    assert_eq!(
        checked.config["config"]["Entrypoint"],
        serde_json::json!(["/app/bin/hello"])
    );
    assert_eq!(checked.config["architecture"], host_architecture());
    // A directory the runtime layer owns keeps its owner in the layers above (they only add
    // `/app` itself as a parent).
    for l in &checked.layers[1..] {
        for path in ["/tmp", "/app/tmp", "/run/release", "/home/app"] {
            assert!(
                l.get(path).is_none(),
                "{path} is overridden by a later layer"
            );
        }
    }
}

#[test]
fn a_directory_without_start_erl_data_is_not_a_release() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    std::fs::remove_file(rel.join("releases/start_erl.data")).unwrap();
    let err = plan(&HostFs::new("/"), &settings(&rel)).unwrap_err();
    assert!(
        matches!(&err, PlanError::NotARelease { path, .. } if *path == rel),
        "{err:?}"
    );
    assert!(err.to_string().contains("start_erl.data"), "{err}");

    let missing = tmp.path().join("no-such-dir");
    let err = plan(&HostFs::new("/"), &settings(&missing)).unwrap_err();
    assert!(matches!(err, PlanError::NotARelease { .. }), "{err:?}");
}

#[test]
fn a_release_without_its_start_script_is_not_a_release() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    std::fs::remove_file(rel.join("bin/hello")).unwrap();
    let err = plan(&HostFs::new("/"), &settings(&rel)).unwrap_err();
    assert!(matches!(err, PlanError::NotARelease { .. }), "{err:?}");
    assert!(err.to_string().contains("bin/hello"), "{err}");
}

#[test]
fn a_non_elf_erts_is_not_linux() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    // A Mach-O 64-bit header, as in a release built on macOS.
    let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe, 0x07, 0x00, 0x00, 0x01];
    macho.resize(4096, 0);
    let beam = rel.join("erts-13.1.5/bin/beam.smp");
    put(&rel, "erts-13.1.5/bin/beam.smp", &macho, 0o755);
    let err = plan(&HostFs::new("/"), &settings(&rel)).unwrap_err();
    assert!(
        matches!(&err, PlanError::NotLinux { path } if *path == beam),
        "{err:?}"
    );
}

#[test]
fn a_missing_erts_is_not_a_release() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    std::fs::remove_file(rel.join("erts-13.1.5/bin/beam.smp")).unwrap();
    let err = plan(&HostFs::new("/"), &settings(&rel)).unwrap_err();
    assert!(matches!(err, PlanError::NotARelease { .. }), "{err:?}");
    assert!(err.to_string().contains("include_erts"), "{err}");
}

#[test]
fn a_missing_extra_file_is_an_error_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let missing = tmp.path().join("not/there.so");
    let mut s = settings(&rel);
    s.extra_files = vec![missing.clone()];
    let err = plan(&HostFs::new("/"), &s).unwrap_err();
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "the error should name {}: {err}",
        missing.display()
    );
}

#[test]
fn an_extra_file_is_copied_at_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let extra = tmp.path().join("extra/data.txt");
    put(tmp.path(), "extra/data.txt", b"extra", 0o600);
    let mut s = settings(&rel);
    s.extra_files = vec![extra.clone()];
    let p = plan(&HostFs::new("/"), &s).unwrap();
    let e = expect_entry(&p, "runtime", &extra.to_string_lossy());
    assert_eq!(e.source, Source::File(extra.clone()));
}

#[test]
fn extra_files_of_the_runtime_mounts_are_refused_with_why() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    // A link to /proc counts as /proc.
    let link = tmp.path().join("cpuinfo");
    std::os::unix::fs::symlink("/proc/cpuinfo", &link).unwrap();
    for extra in [
        PathBuf::from("/proc/cpuinfo"),
        PathBuf::from("/dev/null"),
        PathBuf::from("/sys/kernel"),
        link,
    ] {
        let mut s = settings(&rel);
        s.extra_files = vec![extra.clone()];
        let err = plan(&HostFs::new("/"), &s).unwrap_err();
        assert!(
            matches!(err, PlanError::ExtraFile { .. }),
            "{extra:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&*extra.to_string_lossy()), "{msg}");
        assert!(
            msg.contains("the container runtime mounts its own"),
            "{msg}"
        );
        assert!(!msg.contains("retry"), "{msg}");
    }
}

#[test]
fn a_fifo_as_extra_file_is_refused_and_inside_a_directory_left_out_with_a_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    let dir = tmp.path().join("extra");
    put(tmp.path(), "extra/data.txt", b"x", 0o644);
    let fifo = dir.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());

    let mut s = settings(&rel);
    s.extra_files = vec![fifo.clone()];
    let err = plan(&HostFs::new("/"), &s).unwrap_err();
    assert!(matches!(err, PlanError::ExtraFile { .. }), "{err:?}");
    assert!(err.to_string().contains("device, FIFO or socket"), "{err}");

    s.extra_files = vec![dir.clone()];
    let p = plan(&HostFs::new("/"), &s).unwrap();
    expect_entry(&p, "runtime", &dir.join("data.txt").to_string_lossy());
    assert!(entry(layer(&p, "runtime"), &fifo.to_string_lossy()).is_none());
    assert!(
        p.notices
            .iter()
            .any(|n| n.contains("left out") && n.contains(&*fifo.to_string_lossy())),
        "{:?}",
        p.notices
    );
}

#[test]
fn extra_files_others_cannot_read_stay_private_and_the_plan_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    put(tmp.path(), "extra/shadow", b"root:secret", 0o640);
    put(tmp.path(), "extra/tool", b"#!/bin/sh\n", 0o750);
    put(tmp.path(), "extra/public.txt", b"x", 0o664);
    let mut s = settings(&rel);
    s.extra_files = vec![tmp.path().join("extra")];
    let p = plan(&HostFs::new("/"), &s).unwrap();
    let path = |n: &str| {
        tmp.path()
            .join("extra")
            .join(n)
            .to_string_lossy()
            .into_owned()
    };
    let shadow = expect_entry(&p, "runtime", &path("shadow"));
    assert_eq!(
        (shadow.mode, shadow.exact_mode, shadow.uid, shadow.gid),
        (0o600, true, 0, 0)
    );
    let tool = expect_entry(&p, "runtime", &path("tool"));
    assert_eq!((tool.mode, tool.exact_mode), (0o700, true));
    let public = expect_entry(&p, "runtime", &path("public.txt"));
    assert!(!public.exact_mode, "a readable file gets the normal mode");
    let notice = p
        .notices
        .iter()
        .find(|n| n.contains("private"))
        .unwrap_or_else(|| panic!("no notice: {:?}", p.notices));
    assert!(
        notice.contains(&path("shadow")) && notice.contains(&path("tool")),
        "{notice}"
    );
    assert!(!notice.contains("public.txt"), "{notice}");
    assert!(notice.contains(&UID.to_string()), "{notice}");
}

#[test]
fn apps_with_pre_release_versions_go_to_their_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let rel = fixture(tmp.path());
    std::fs::rename(
        rel.join("lib/hello-0.1.0"),
        rel.join("lib/hello-0.1.0-rc.1"),
    )
    .unwrap();
    let p = make(&rel);
    expect_entry(&p, "app", "/app/lib/hello-0.1.0-rc.1/ebin/x.beam");
}
