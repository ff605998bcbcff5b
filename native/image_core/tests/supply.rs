//! Supply chain over this machine (a Debian host with Erlang and Elixir from Debian, as
//! `scripts/setup.sh` installs them): package records checked with dpkg's own tools, SBOMs
//! checked with independent validators (pyspdxtools, CycloneDX's JSON schema), signatures
//! checked with openssl.
//!
//! The fixture is a release-shaped tree whose ERTS and OTP/Elixir application files are copies
//! of the host's (`/usr/lib/erlang`, `/usr/lib/elixir`), planned through `HostFs::new("/")`.

mod support;

use image_core::digest::Digest;
use image_core::fs::HostFs;
use image_core::layer::Source;
use image_core::plan::{plan, Plan, Settings};
use image_core::supply::artifact::{add_signature, SIGNATURE_ANNOTATION};
use image_core::supply::sbom::{Dep, DepSource, SbomFormat, SbomSpec};
use image_core::supply::signing::{payload, SigningKey};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::prereq;

/// The host's ERTS directory (`/usr/lib/erlang/erts-V`), or `None` (a missing prerequisite).
fn host_erts() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib/erlang")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("erts-")
        })
        .min();
    if found.is_none() || !Path::new("/var/lib/dpkg/status").is_file() {
        prereq::missing("a Debian host with Erlang from Debian (/usr/lib/erlang, dpkg)");
        return None;
    }
    found
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

fn write(to: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::write(to, bytes).unwrap();
}

/// The `{vsn, "…"}` of an `.app` file.
fn app_vsn(app_file: &Path) -> String {
    let text = std::fs::read_to_string(app_file).unwrap();
    let i = text.find("{vsn,").unwrap();
    let rest = &text[i..];
    let start = rest.find('"').unwrap() + 1;
    let end = rest[start..].find('"').unwrap() + start;
    rest[start..end].to_string()
}

/// A release `hello` under `dir`: the host's ERTS, kernel, crypto (its NIF pulls libcrypto)
/// and elixir; the project's app; a Hex, a git, a path and an unknown dependency.
fn fixture(dir: &Path, erts: &Path) -> (PathBuf, String, Vec<String>) {
    let rel = dir.join("rel");
    let erts_vsn = erts
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("erts-")
        .to_string();
    for bin in ["beam.smp", "erl_child_setup", "epmd"] {
        copy(
            &erts.join("bin").join(bin),
            &rel.join(format!("erts-{erts_vsn}/bin/{bin}")),
        );
    }
    let mut otp = Vec::new();
    for app in ["kernel", "crypto"] {
        let dir = std::fs::read_dir("/usr/lib/erlang/lib")
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{app}-"))
            })
            .unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        copy(
            &dir.join(format!("ebin/{app}.app")),
            &rel.join(format!("lib/{name}/ebin/{app}.app")),
        );
        otp.push(app.to_string());
    }
    let crypto_nif = std::fs::read_dir("/usr/lib/erlang/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("priv/lib/crypto.so"))
        .find(|p| p.is_file())
        .unwrap();
    let crypto_dir = crypto_nif
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    copy(
        &crypto_nif,
        &rel.join(format!(
            "lib/{}/priv/lib/crypto.so",
            crypto_dir.file_name().unwrap().to_string_lossy()
        )),
    );
    let elixir_app = Path::new("/usr/lib/elixir/lib/elixir/ebin/elixir.app");
    if elixir_app.is_file() {
        copy(
            elixir_app,
            &rel.join(format!(
                "lib/elixir-{}/ebin/elixir.app",
                app_vsn(elixir_app)
            )),
        );
        otp.push("elixir".into());
    }
    write(&rel.join("bin/hello"), b"#!/bin/sh\necho hello\n");
    write(
        &rel.join("releases/start_erl.data"),
        format!("{erts_vsn} 0.1.0").as_bytes(),
    );
    write(&rel.join("releases/0.1.0/env.sh"), b"#!/bin/sh\n");
    for app in ["hello-0.1.0", "jason-1.4.1", "local-0.0.1", "mystery-2.0.0"] {
        let name = app.split('-').next().unwrap();
        write(
            &rel.join(format!("lib/{app}/ebin/{name}.app")),
            format!("{{application,{name},[]}}.\n").as_bytes(),
        );
    }
    (rel, erts_vsn, otp)
}

fn spec(format: SbomFormat) -> SbomSpec {
    SbomSpec {
        format,
        name: "hello".into(),
        version: "0.1.0".into(),
        source: Some("https://github.com/acme/hello.git".into()),
        revision: Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904".into()),
        tool_version: "0.1.0".into(),
        created: support::CREATED,
        deps: vec![
            Dep {
                app: "jason".into(),
                source: DepSource::Hex {
                    package: "jason".into(),
                    repo: "hexpm".into(),
                    checksum: Some(
                        "c5eb0cab91f094599f94d55bc63409236a8ec69a21a67814529e8d5f6cc90b3b".into(),
                    ),
                },
                depends_on: vec!["decimal".into()],
            },
            Dep {
                app: "local".into(),
                source: DepSource::Path {
                    path: Some("local_deps/local".into()),
                },
                depends_on: vec![],
            },
        ],
    }
}

fn make(rel: &Path, otp: &[String], format: SbomFormat) -> Plan {
    let settings = Settings {
        release_dir: rel.to_path_buf(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        otp_apps: otp.to_vec(),
        uid: 65532,
        gid: 65532,
        sbom: Some(spec(format)),
        ..Settings::default()
    };
    plan(&HostFs::new("/"), &settings).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

/// The records the plan put in the runtime layer: `(path, content)`.
fn records(p: &Plan) -> BTreeMap<PathBuf, Vec<u8>> {
    p.layers
        .iter()
        .find(|l| l.name == "runtime")
        .unwrap()
        .entries
        .iter()
        .filter(|e| e.path.starts_with("/var/lib/dpkg/status.d"))
        .map(|e| match &e.source {
            Source::Bytes(b) => (e.path.clone(), b.clone()),
            other => panic!("{}: {other:?}", e.path.display()),
        })
        .collect()
}

const QUERY: &str = "${Package} ${Version} ${Architecture} ${source:Package} ${source:Version}\n";

fn dpkg_query(admindir: Option<&Path>, names: &[String]) -> BTreeSet<String> {
    let mut cmd = Command::new("dpkg-query");
    if let Some(d) = admindir {
        cmd.arg(format!("--admindir={}", d.display()));
    }
    cmd.args(["-W", "-f", QUERY]).args(names);
    let out = String::from_utf8(support::run(&mut cmd)).unwrap();
    out.lines().map(str::to_string).collect()
}

/// The packages `dpkg -S` names for `paths`, asked under each spelling (merged /usr: a
/// package lists `/lib/…` or `/usr/lib/…`), and the paths it names no package for.
fn dpkg_search(paths: &[PathBuf]) -> (BTreeSet<String>, BTreeSet<PathBuf>) {
    let alias = |p: &Path| -> Option<PathBuf> {
        let s = p.to_str()?;
        for d in ["/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/", "/libx32/"] {
            if let Some(rest) = s.strip_prefix(&format!("/usr{d}")) {
                return Some(PathBuf::from(format!("{d}{rest}")));
            }
            if let Some(rest) = s.strip_prefix(d) {
                return Some(PathBuf::from(format!("/usr{d}{rest}")));
            }
        }
        None
    };
    let mut asked: Vec<PathBuf> = paths.to_vec();
    asked.extend(paths.iter().filter_map(|p| alias(p)));
    let out = Command::new("dpkg")
        .arg("-S")
        .args(&asked)
        .output()
        .unwrap();
    let mut packages = BTreeSet::new();
    let mut found = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("diversion by") {
            continue;
        }
        let Some((pkgs, path)) = line.split_once(": ") else {
            continue;
        };
        found.insert(PathBuf::from(path));
        for p in pkgs.split(", ") {
            packages.insert(p.split(':').next().unwrap().to_string());
        }
    }
    let unowned = paths
        .iter()
        .filter(|p| !found.contains(*p) && !alias(p).is_some_and(|a| found.contains(&a)))
        .cloned()
        .collect();
    (packages, unowned)
}

#[test]
fn package_records_are_the_build_environments_for_exactly_the_packages_that_contributed() {
    let Some(erts) = host_erts() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rel, _, otp) = fixture(tmp.path(), &erts);
    let p = make(&rel, &otp, SbomFormat::Spdx);
    let recs = records(&p);
    assert!(!recs.is_empty());

    // dpkg's own reader takes the records as a database, and says what the host's says.
    let admin = tmp.path().join("admin");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    let status: Vec<u8> = recs
        .values()
        .flat_map(|r| [r.as_slice(), b"\n"].concat())
        .collect();
    std::fs::write(admin.join("status"), status).unwrap();
    let names: Vec<String> = recs
        .keys()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let ours = dpkg_query(Some(&admin), &[]);
    assert_eq!(ours, dpkg_query(None, &names));
    assert_eq!(ours.len(), names.len());

    // Exactly the packages that contributed: every copied file and symlink (not directory
    // links) asked of `dpkg -S` under each spelling, plus the files ERTS and the OTP and
    // Elixir applications were copied from.
    let runtime = p.layers.iter().find(|l| l.name == "runtime").unwrap();
    let copied: Vec<PathBuf> = runtime
        .entries
        .iter()
        .filter(|e| match &e.source {
            Source::File(src) => *src == e.path,
            Source::Symlink(_) => !std::fs::metadata(&e.path).is_ok_and(|m| m.is_dir()),
            _ => false,
        })
        .map(|e| e.path.clone())
        .collect();
    let mut probes = vec![erts.join("bin/erl_child_setup")];
    for app in &otp {
        let from = if app == "elixir" {
            PathBuf::from("/usr/lib/elixir/lib/elixir/ebin/elixir.app")
        } else {
            let dir = std::fs::read_dir(rel.join("lib"))
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|n| n.starts_with(&format!("{app}-")))
                .unwrap();
            PathBuf::from(format!("/usr/lib/erlang/lib/{dir}/ebin/{app}.app"))
        };
        probes.push(from);
    }
    let (expected, unowned) = dpkg_search(&[copied.clone(), probes].concat());
    let got: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(
        got, expected,
        "records vs dpkg -S; paths no package owns: {unowned:?}"
    );
    for must in [
        "libc6",
        "base-files",
        "erlang-base",
        "erlang-crypto",
        "libssl3",
    ] {
        assert!(got.contains(must), "{must} missing from {got:?}");
    }
    if otp.contains(&"elixir".to_string()) {
        assert!(got.contains("elixir"));
    }

    // Scanners find the distribution: Trivy reads /etc/debian_version, Syft /etc/os-release.
    let paths: BTreeSet<&Path> = runtime.entries.iter().map(|e| e.path.as_path()).collect();
    for must in ["/etc/os-release", "/etc/debian_version"] {
        assert!(
            paths.contains(Path::new(must)),
            "{must} not in the runtime layer"
        );
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap();
    assert!(os_release.contains("ID=debian"));
}

#[test]
fn the_sbom_validates_and_lists_every_part_of_the_release() {
    let Some(erts) = host_erts() else { return };
    let Some(venv) = support::sbomcheck() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (rel, erts_vsn, otp) = fixture(tmp.path(), &erts);

    let p = make(&rel, &otp, SbomFormat::Spdx);
    let sbom = p.sbom.as_ref().unwrap();
    let app = p.layers.iter().find(|l| l.name == "app").unwrap();
    let embedded = app
        .entries
        .iter()
        .find(|e| e.path == Path::new("/sbom.spdx.json"))
        .unwrap();
    assert_eq!(embedded.source, Source::Bytes(sbom.bytes.clone()));
    let file = tmp.path().join("sbom.spdx.json");
    std::fs::write(&file, &sbom.bytes).unwrap();
    if let Err(report) = support::validate_spdx(&venv, &file) {
        panic!("pyspdxtools rejects the SBOM:\n{report}");
    }
    let doc: Value = serde_json::from_slice(&sbom.bytes).unwrap();
    let pkgs = doc["packages"].as_array().unwrap();
    let has = |name: &str, version: &str| {
        pkgs.iter()
            .any(|p| p["name"] == name && p["versionInfo"] == version)
    };
    assert!(has("erts", &erts_vsn));
    for dir in std::fs::read_dir(rel.join("lib")).unwrap() {
        let n = dir.unwrap().file_name().to_string_lossy().to_string();
        let (name, vsn) = n.split_once('-').unwrap();
        assert!(has(name, vsn), "{name} {vsn} is not in the SBOM");
    }
    // Every OS package of the records is in the SBOM with its version.
    for r in records(&p).values() {
        let text = String::from_utf8_lossy(r);
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap()
                .to_string()
        };
        assert!(has(&field("Package"), &field("Version")), "{text}");
    }
    let erts_pkg = pkgs.iter().find(|p| p["name"] == "erts").unwrap();
    assert!(
        erts_pkg["sourceInfo"]
            .as_str()
            .unwrap()
            .starts_with("copied from the OS package erlang-base "),
        "{erts_pkg}"
    );

    let p = make(&rel, &otp, SbomFormat::CycloneDx);
    let sbom = p.sbom.as_ref().unwrap();
    assert!(p.layers.iter().any(|l| l
        .entries
        .iter()
        .any(|e| e.path == Path::new("/sbom.cdx.json"))));
    let file = tmp.path().join("sbom.cdx.json");
    std::fs::write(&file, &sbom.bytes).unwrap();
    if let Err(report) = support::validate_cyclonedx(&venv, &file) {
        panic!("the CycloneDX 1.5 schema rejects the SBOM:\n{report}");
    }
}

#[test]
fn the_validators_do_reject_a_broken_document() {
    // The checks above can fail: a document with an invalid SPDX id and one with an unknown
    // component type are refused.
    let Some(venv) = support::sbomcheck() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spdx = tmp.path().join("bad.spdx.json");
    std::fs::write(
        &spdx,
        br#"{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"x","documentNamespace":"https://example.com/x","creationInfo":{"created":"2023-11-14T22:13:20Z","creators":["Tool: x"]},"packages":[{"SPDXID":"SPDXRef-hex_jason","name":"jason","downloadLocation":"NOASSERTION","filesAnalyzed":false}]}"#,
    )
    .unwrap();
    assert!(support::validate_spdx(&venv, &spdx).is_err());
    let cdx = tmp.path().join("bad.cdx.json");
    std::fs::write(
        &cdx,
        br#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"type":"bogus","name":"x"}]}"#,
    )
    .unwrap();
    assert!(support::validate_cyclonedx(&venv, &cdx).is_err());
}

#[test]
fn the_same_inputs_give_the_same_records_and_sbom() {
    let Some(erts) = host_erts() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rel, _, otp) = fixture(tmp.path(), &erts);
    let a = make(&rel, &otp, SbomFormat::Spdx);
    let b = make(&rel, &otp, SbomFormat::Spdx);
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.sbom, b.sbom);
}

#[test]
fn a_signature_verifies_with_openssl_and_a_changed_payload_does_not() {
    let Some(openssl) = support::tool("openssl") else {
        return;
    };
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    let tmp = tempfile::tempdir().unwrap();
    for key_file in ["p256-sec1.pem", "p256-pkcs8.pem"] {
        let key =
            SigningKey::from_pem(&std::fs::read_to_string(keys.join(key_file)).unwrap()).unwrap();
        let manifest_digest = Digest::of(b"an image manifest");
        let p = payload("127.0.0.1:5000/demo/hello", &manifest_digest);
        // As a registry reader finds it: the layer of the `.sig` manifest.
        let sig = add_signature(None, &p, &key.sign_base64(&p))
            .unwrap()
            .unwrap();
        let m: Value = serde_json::from_slice(&sig.manifest).unwrap();
        let layer = &m["layers"][0];
        let (desc, blob) = &sig.blobs[1];
        assert_eq!(layer["digest"], desc.digest.to_string());
        assert_eq!(support::sha256(blob), desc.digest.to_string());
        let claims: Value = serde_json::from_slice(blob).unwrap();
        assert_eq!(
            claims["critical"]["image"]["docker-manifest-digest"],
            manifest_digest.to_string()
        );
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap())
            .unwrap();
        std::fs::write(tmp.path().join("payload.json"), blob).unwrap();
        std::fs::write(tmp.path().join("sig.der"), &der).unwrap();
        std::fs::write(tmp.path().join("pub.pem"), key.public_key_pem()).unwrap();
        let verify = |file: &str| {
            Command::new(&openssl)
                .current_dir(tmp.path())
                .args([
                    "dgst",
                    "-sha256",
                    "-verify",
                    "pub.pem",
                    "-signature",
                    "sig.der",
                    file,
                ])
                .output()
                .unwrap()
        };
        let ok = verify("payload.json");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stdout)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "Verified OK");
        let mut changed = blob.clone();
        changed[20] ^= 1;
        std::fs::write(tmp.path().join("changed.json"), changed).unwrap();
        let bad = verify("changed.json");
        assert!(!bad.status.success());
        // openssl's own idea of the public key is the one we wrote.
        let public = support::run(
            Command::new(&openssl)
                .args(["pkey", "-pubout", "-in"])
                .arg(keys.join(key_file)),
        );
        assert_eq!(String::from_utf8(public).unwrap(), key.public_key_pem());
    }
}

#[test]
fn on_a_base_only_the_records_of_what_we_add_go_in_the_dirs_layer() {
    let Some(erts) = host_erts() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rel, _, otp) = fixture(tmp.path(), &erts);
    let host = HostFs::new("/");
    let settings = Settings {
        release_dir: rel.clone(),
        release_name: "hello".into(),
        own_apps: vec!["hello".into()],
        otp_apps: otp,
        uid: 65532,
        gid: 65532,
        sbom: Some(spec(SbomFormat::Spdx)),
        ..Settings::default()
    };
    // This machine is the base: it runs its own programs.
    let base = image_core::plan::Base {
        reference: "debian:local".into(),
        fs: &host,
        platform: image_core::plan::release_platform(&host, &settings).unwrap(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        labels: Default::default(),
        exposed_ports: vec![],
        stop_signal: None,
    };
    let p =
        image_core::plan::plan_on_base(&host, &settings, &base).unwrap_or_else(|e| panic!("{e}"));
    let dirs = p.layers.iter().find(|l| l.name == "dirs").unwrap();
    let recorded: BTreeSet<String> = dirs
        .entries
        .iter()
        .filter_map(|e| {
            e.path
                .strip_prefix("/var/lib/dpkg/status.d")
                .ok()
                .map(|n| n.display().to_string())
        })
        .collect();
    // ERTS and the OTP applications came from the build environment's packages; the libraries
    // and the shell are the base's, and so are its records and its /etc.
    assert!(recorded.contains("erlang-base"), "{recorded:?}");
    assert!(recorded.contains("erlang-crypto"), "{recorded:?}");
    assert!(!recorded.contains("libc6"), "{recorded:?}");
    assert!(!dirs.entries.iter().any(|e| e.path.starts_with("/etc")));
    let sbom: Value = serde_json::from_slice(&p.sbom.unwrap().bytes).unwrap();
    assert_eq!(
        sbom["packages"][0]["comment"],
        "built on the base image debian:local"
    );
}
