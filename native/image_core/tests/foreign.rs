//! A release built natively for amd64, planned for arm64 with the arm64 builder's files: real
//! releases (examples built in the Debian 13 amd64 builder) and the real arm64 filesystem of
//! `docker-release-test/builder:trixie-arm64-dpkgdb` (made without emulation, read, never run;
//! see `support/builders.rs`).
//!
//! The proof, at the level of plans and layers: every ELF file of the arm64 image is aarch64
//! (ERTS, OTP's NIFs, the library closure, the loader), the `app` and `deps` layers are byte
//! for byte the amd64 image's, and every kind of target that cannot provide arm64's files is
//! refused with what to do.

mod support;

use image_core::archive::BlobDir;
use image_core::build::build;
use image_core::elf::{Header, EM_AARCH64, EM_X86_64};
use image_core::foreign::{check, plan_for, ForeignError, Owner, Problem, Refusal, Target};
use image_core::fs::{Fs, HostFs};
use image_core::glibc::{self, ReleaseOnBase};
use image_core::image::Image;
use image_core::layer::{LayerSpec, Source};
use image_core::plan::{plan, Plan, Settings};
use image_core::platform::parse;
use std::path::{Path, PathBuf};
use support::builders::{builders, otp_apps, release, rootfs};
use support::Hiding;

const CREATED: u64 = 1_700_000_000;

/// Everything one test needs: the release, both roots, the settings.
struct Setup {
    release: PathBuf,
    amd64: PathBuf,
    arm64: PathBuf,
    settings: Settings,
}

fn setup(example: &str) -> Option<Setup> {
    let (amd64_builder, arm64_builder) = builders()?;
    let amd64 = rootfs(amd64_builder)?;
    let arm64 = rootfs(arm64_builder)?;
    let release = release(example, amd64_builder)?;
    let settings = Settings {
        release_dir: release.clone(),
        release_name: example.into(),
        own_apps: vec![example.into()],
        otp_apps: otp_apps(&amd64),
        uid: 65532,
        gid: 65532,
        ..Settings::default()
    };
    Some(Setup {
        release,
        amd64,
        arm64,
        settings,
    })
}

fn arm64_target(fs: &dyn Fs) -> Target<'_> {
    Target {
        platform: parse("linux/arm64").unwrap(),
        image: "docker-release-test/builder:trixie-arm64-dpkgdb".into(),
        fs,
        otp_roots: vec![PathBuf::from("/usr/lib/erlang")],
    }
}

/// The plan a builder build makes today: the release over the amd64 builder's filesystem.
fn amd64_plan(s: &Setup, host: &dyn Fs, amd64: &dyn Fs) -> Plan {
    let union = ReleaseOnBase::new(host, &s.release, amd64).unwrap();
    plan(&union, &s.settings).unwrap_or_else(|e| panic!("the amd64 plan: {e}"))
}

fn build_over(fs: &dyn Fs, plan: &Plan, blobs: &Path) -> Image {
    build(
        fs,
        plan,
        CREATED,
        1,
        &BlobDir {
            root: blobs.to_path_buf(),
        },
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("build: {e}"))
}

fn layer<'p>(plan: &'p Plan, name: &str) -> &'p LayerSpec {
    plan.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no {name} layer"))
}

/// The machine of every ELF file the plan copies (read through `fs`, as the layers are).
fn elf_machines(fs: &dyn Fs, plan: &Plan) -> Vec<(PathBuf, u16)> {
    let mut out = Vec::new();
    for l in &plan.layers {
        for e in &l.entries {
            if let Source::File(src) = &e.source {
                let head = fs.read_head(src, 64).unwrap();
                if let Some(h) = Header::parse(&head) {
                    out.push((e.path.clone(), h.machine));
                }
            }
        }
    }
    out
}

#[test]
fn with_deps_for_arm64_has_aarch64_native_files_and_the_amd64_app_and_deps_layers() {
    let Some(s) = setup("with_deps") else {
        return;
    };
    let host = HostFs::new("/");
    let (amd64_fs, arm64_fs) = (HostFs::new(&s.amd64), HostFs::new(&s.arm64));
    let target = arm64_target(&arm64_fs);

    let native = amd64_plan(&s, &host, &amd64_fs);
    let foreign = plan_for(&host, &s.settings, &target).unwrap_or_else(|e| panic!("{e}"));
    let arm_fs = foreign.substitution.fs(&host, &arm64_fs);
    assert_eq!(foreign.plan.platform.to_string(), "linux/arm64/v8");
    assert_eq!(native.platform.to_string(), "linux/amd64");
    assert_eq!(
        foreign.substitution.otp_root,
        Path::new("/usr/lib/erlang"),
        "Debian's OTP root"
    );

    // Every ELF file of the arm64 image is aarch64 and every one of the amd64 image x86-64;
    // the loader and libc are among them.
    let arm = elf_machines(&arm_fs, &foreign.plan);
    let x86 = elf_machines(
        &ReleaseOnBase::new(&host, &s.release, &amd64_fs).unwrap(),
        &native,
    );
    assert!(arm.len() > 20, "{arm:?}");
    for (path, machine) in &arm {
        assert_eq!(*machine, EM_AARCH64, "{} is not aarch64", path.display());
    }
    for (path, machine) in &x86 {
        assert_eq!(*machine, EM_X86_64, "{} is not x86-64", path.display());
    }
    assert_eq!(arm.len(), x86.len(), "as many ELF files on each platform");
    let names = |v: &[(PathBuf, u16)]| -> Vec<String> {
        v.iter()
            .filter_map(|(p, _)| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect()
    };
    assert!(names(&arm).iter().any(|n| n == "ld-linux-aarch64.so.1"));
    assert!(names(&arm).iter().any(|n| n == "libc.so.6"));
    assert!(names(&arm).iter().any(|n| n == "beam.smp"));
    // Every release ELF file is substituted, from the arm64 root's OTP.
    assert_eq!(
        foreign.substitution.files.len(),
        13,
        "ERTS's 13 executables"
    );
    for (rel, from) in &foreign.substitution.files {
        assert!(rel.starts_with(&foreign.substitution.release_dir));
        assert!(
            from.to_string_lossy()
                .starts_with("/usr/lib/erlang/erts-15.2.7/bin/"),
            "{}",
            from.display()
        );
    }

    // The same paths in each layer of both plans (ERTS, OTP apps: only bytes differ).
    for name in ["erts", "deps", "app"] {
        let paths = |p: &Plan| -> Vec<PathBuf> {
            layer(p, name)
                .entries
                .iter()
                .map(|e| e.path.clone())
                .collect()
        };
        assert_eq!(paths(&native), paths(&foreign.plan), "{name} layer paths");
    }

    let tmp = tempfile::tempdir().unwrap();
    let native_fs = ReleaseOnBase::new(&host, &s.release, &amd64_fs).unwrap();
    let amd64_image = build_over(&native_fs, &native, &tmp.path().join("blobs"));
    let arm64_image = build_over(&arm_fs, &foreign.plan, &tmp.path().join("blobs"));
    let info = |image: &Image, name: &str| {
        image
            .layers
            .iter()
            .find(|l| l.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} layer"))
    };
    for name in ["deps", "app"] {
        assert_eq!(
            info(&amd64_image, name),
            info(&arm64_image, name),
            "the {name} layer is the same blob on both platforms"
        );
    }
    for name in ["runtime", "erts"] {
        assert_ne!(
            info(&amd64_image, name).diff_id,
            info(&arm64_image, name).diff_id,
            "the {name} layer differs"
        );
    }
    let config: serde_json::Value = serde_json::from_slice(&arm64_image.config_json()).unwrap();
    assert_eq!(
        (&config["architecture"], &config["variant"], &config["os"]),
        (
            &serde_json::json!("arm64"),
            &serde_json::json!("v8"),
            &serde_json::json!("linux")
        )
    );
    assert_eq!(
        arm64_image.config.entrypoint, amd64_image.config.entrypoint,
        "the same run configuration"
    );
    assert_eq!(arm64_image.config.env, amd64_image.config.env);
}

#[test]
fn hello_for_arm64_takes_the_crypto_nifs_and_openssl_from_the_arm64_root() {
    let Some(s) = setup("hello") else {
        return;
    };
    let host = HostFs::new("/");
    let arm64_fs = HostFs::new(&s.arm64);
    let foreign =
        plan_for(&host, &s.settings, &arm64_target(&arm64_fs)).unwrap_or_else(|e| panic!("{e}"));
    let fs = foreign.substitution.fs(&host, &arm64_fs);

    let crypto = Path::new("lib/crypto-5.5.3/priv/lib/crypto.so");
    let entry = layer(&foreign.plan, "erts")
        .entries
        .iter()
        .find(|e| e.path == Path::new("/app").join(crypto))
        .expect("crypto.so in the erts layer");
    let Source::File(src) = &entry.source else {
        panic!("{:?}", entry.source)
    };
    assert_eq!(
        fs.read(src).unwrap(),
        std::fs::read(s.arm64.join("usr/lib/erlang").join(crypto)).unwrap(),
        "the arm64 root's crypto.so, byte for byte"
    );
    assert_ne!(
        fs.read(src).unwrap(),
        std::fs::read(s.release.join(crypto)).unwrap()
    );
    let runtime: Vec<&Path> = layer(&foreign.plan, "runtime")
        .entries
        .iter()
        .map(|e| e.path.as_path())
        .collect();
    for want in [
        "/usr/lib/aarch64-linux-gnu/libcrypto.so.3",
        "/usr/lib/aarch64-linux-gnu/ossl-modules/legacy.so",
        "/usr/lib/locale/C.utf8/LC_CTYPE",
        "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/bin/awk",
    ] {
        assert!(
            runtime.contains(&Path::new(want)),
            "{want} is not in {runtime:?}"
        );
    }
    assert!(
        !runtime
            .iter()
            .any(|p| p.to_string_lossy().contains("x86_64")),
        "nothing of amd64 in the runtime layer"
    );
    // 13 of ERTS and crypto's three.
    assert_eq!(foreign.substitution.files.len(), 16);
}

/// A copy of the release to modify.
fn release_copy(s: &Setup, dir: &Path) -> PathBuf {
    let copy = dir.join("rel");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(&s.release)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    copy
}

fn refusal(e: ForeignError) -> Refusal {
    match e {
        ForeignError::Refused(r) => r,
        other => panic!("not a refusal: {other}"),
    }
}

fn refused(s: &Setup, release: &Path, target: &Target<'_>) -> Refusal {
    let settings = Settings {
        release_dir: release.to_path_buf(),
        ..s.settings.clone()
    };
    refusal(check(&HostFs::new("/"), &settings, target).unwrap_err())
}

#[test]
fn native_files_built_with_the_project_are_refused_naming_each_file_and_its_owner() {
    let Some(s) = setup("hello") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let rel = release_copy(&s, tmp.path());
    let put = |to: &str, from: &str| {
        std::fs::create_dir_all(rel.join(to).parent().unwrap()).unwrap();
        std::fs::copy(rel.join(from), rel.join(to)).unwrap();
    };
    // An amd64 NIF of a dependency, and a port program of the project.
    put(
        "lib/my_nif-0.3.0/priv/native/libmy_nif.so",
        "lib/crypto-5.5.3/priv/lib/crypto.so",
    );
    put("lib/hello-0.1.0/priv/port", "erts-15.2.7/bin/epmd");
    let arm64_fs = HostFs::new(&s.arm64);
    let r = refused(&s, &rel, &arm64_target(&arm64_fs));
    assert_eq!(
        r.problems,
        vec![Problem::NotReplaceable {
            files: vec![
                image_core::foreign::NativeFile {
                    path: "lib/hello-0.1.0/priv/port".into(),
                    owner: Owner::Project("hello".into()),
                },
                image_core::foreign::NativeFile {
                    path: "lib/my_nif-0.3.0/priv/native/libmy_nif.so".into(),
                    owner: Owner::Dependency("my_nif".into()),
                },
            ]
        }],
        "nothing else: the left-out files make no noise about libraries"
    );
    let m = r.to_string();
    for says in [
        "cannot make the linux/arm64/v8 image from docker-release-test/builder:trixie-arm64-dpkgdb:",
        "lib/hello-0.1.0/priv/port (the project's :hello)",
        "lib/my_nif-0.3.0/priv/native/libmy_nif.so (dependency :my_nif)",
        "build the release for linux/arm64/v8 with --emulate",
        "qemu-user-static and binfmt_misc with the F flag",
        "or leave linux/arm64/v8 out of --platform",
    ] {
        assert!(m.contains(says), "{says:?} is not in: {m}");
    }
}

#[test]
fn another_erts_and_other_otp_application_versions_are_refused_with_both_versions() {
    let Some(s) = setup("hello") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let rel = release_copy(&s, tmp.path());
    std::fs::rename(rel.join("erts-15.2.7"), rel.join("erts-15.2.6")).unwrap();
    std::fs::write(rel.join("releases/start_erl.data"), "15.2.6 0.1.0").unwrap();
    std::fs::rename(rel.join("lib/crypto-5.5.3"), rel.join("lib/crypto-5.5.2")).unwrap();
    let arm64_fs = HostFs::new(&s.arm64);
    let r = refused(&s, &rel, &arm64_target(&arm64_fs));
    assert_eq!(
        r.problems,
        vec![
            Problem::Erts {
                needed: "15.2.6".into(),
                root: "/usr/lib/erlang".into(),
                found: vec!["15.2.7".into()],
                otp: Some("27.3.4.1".into()),
            },
            Problem::OtpApps {
                root: "/usr/lib/erlang".into(),
                otp: Some("27.3.4.1".into()),
                apps: vec![("crypto-5.5.2".into(), vec!["crypto-5.5.3".into()])],
            },
        ]
    );
    let m = r.to_string();
    for says in [
        "the release was built with ERTS 15.2.6, and docker-release-test/builder:trixie-arm64-dpkgdb has ERTS 15.2.7 in /usr/lib/erlang, OTP 27.3.4.1",
        "crypto-5.5.2 (it has crypto-5.5.3)",
        "--platform-image linux/arm64/v8=IMAGE",
    ] {
        assert!(m.contains(says), "{says:?} is not in: {m}");
    }
}

#[test]
fn an_image_of_another_platform_is_refused_for_its_files() {
    let Some(s) = setup("hello") else {
        return;
    };
    // The amd64 builder given as the arm64 image.
    let amd64_fs = HostFs::new(&s.amd64);
    let r = refused(&s, &s.release, &arm64_target(&amd64_fs));
    let [Problem::Machine { files }] = r.problems.as_slice() else {
        panic!("{:?}", r.problems)
    };
    assert_eq!(files.len(), 16);
    assert!(files.contains(&("erts-15.2.7/bin/beam.smp".into(), "for linux/amd64".into())));
    assert!(r.to_string().contains(
        "files of docker-release-test/builder:trixie-arm64-dpkgdb are not for linux/arm64/v8: erts-15.2.7/bin/beam.smp is for linux/amd64"
    ));
}

#[test]
fn a_target_missing_a_library_a_tool_or_an_otp_file_is_refused_with_each() {
    let Some(s) = setup("hello") else {
        return;
    };
    let arm64_fs = HostFs::new(&s.arm64);
    let without = Hiding::under(
        &arm64_fs,
        vec![
            "/usr/lib/aarch64-linux-gnu/libcrypto.so.3".into(),
            "/usr/bin/awk".into(),
            "/usr/lib/erlang/lib/crypto-5.5.3/priv/lib/otp_test_engine.so".into(),
        ],
    );
    let r = refused(&s, &s.release, &arm64_target(&without));
    assert_eq!(
        r.problems[0],
        Problem::Missing {
            root: "/usr/lib/erlang".into(),
            files: vec![image_core::foreign::NativeFile {
                path: "lib/crypto-5.5.3/priv/lib/otp_test_engine.so".into(),
                owner: Owner::Otp("crypto".into()),
            }],
        }
    );
    assert!(
        r.problems.iter().any(|p| matches!(p,
            Problem::Runtime(glibc::Problem::MissingLibrary { soname, needed_by, .. })
                if soname == "libcrypto.so.3" && needed_by == Path::new("lib/crypto-5.5.3/priv/lib/crypto.so"))),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| matches!(p,
            Problem::Runtime(glibc::Problem::MissingTools { tools, .. }) if tools == &["awk"])),
        "{:?}",
        r.problems
    );
    let m = r.to_string();
    for says in [
        "lacks native files of the release's ERTS or OTP applications under /usr/lib/erlang: lib/crypto-5.5.3/priv/lib/otp_test_engine.so (OTP's :crypto)",
        "the linux/arm64/v8 image docker-release-test/builder:trixie-arm64-dpkgdb has no libcrypto.so.3, needed by lib/crypto-5.5.3/priv/lib/crypto.so",
        "install it in that image (Debian: libssl3), or give another with --platform-image linux/arm64/v8=IMAGE",
        "has no awk (looked in",
    ] {
        assert!(m.contains(says), "{says:?} is not in: {m}");
    }
    assert!(!m.contains("no base"), "{m}");
}

#[test]
fn a_target_without_erlang_is_refused_once() {
    let Some(s) = setup("hello") else {
        return;
    };
    let arm64_fs = HostFs::new(&s.arm64);
    let without = Hiding::under(
        &arm64_fs,
        vec!["/usr/lib/erlang".into(), "/usr/bin/erl".into()],
    );
    let r = refused(&s, &s.release, &arm64_target(&without));
    let [Problem::NoOtp { looked }] = r.problems.as_slice() else {
        panic!("{:?}", r.problems)
    };
    assert_eq!(
        looked,
        &[
            PathBuf::from("/usr/lib/erlang"),
            PathBuf::from("/usr/local/lib/erlang")
        ]
    );
    assert!(r.to_string().contains(
        "docker-release-test/builder:trixie-arm64-dpkgdb has no Erlang/OTP installation"
    ));
}

#[test]
fn the_otp_root_is_found_through_erl_on_the_path() {
    let Some(s) = setup("hello") else {
        return;
    };
    let arm64_fs = HostFs::new(&s.arm64);
    let mut target = arm64_target(&arm64_fs);
    target.otp_roots = vec![PathBuf::from("/opt/none")];
    let sub = check(&HostFs::new("/"), &s.settings, &target).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sub.otp_root, Path::new("/usr/lib/erlang"));
}
