//! Helpers for the registry tests: a real `docker-registry` process, a scriptable fake HTTP
//! server (for error cases and the token service), certificates made with `openssl`, and small
//! images built with `image_core`.
#![allow(dead_code)]

/// image_core's test helpers: the independent archive checker, `prereq`, `run`, `sha256`.
#[path = "../../../image_core/tests/support/mod.rs"]
pub mod core_support;

#[allow(unused_imports)]
pub use core_support::{prereq, run, sha256};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use image_core::archive::BlobDir;
use image_core::elf::Platform;
use image_core::image::{Image, RunConfig};
use image_core::layer::{write_layer, Entry, LayerInfo, LayerSpec, Source};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The image timestamp of every sample.
pub const CREATED: u64 = 1_700_000_000;

/// `n` incompressible bytes from `seed`.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write one layer holding a single file into `blobs`.
pub fn layer(blobs: &BlobDir, name: &str, file: &str, content: Vec<u8>) -> LayerInfo {
    std::fs::create_dir_all(&blobs.root).unwrap();
    let spec = LayerSpec {
        name: name.into(),
        entries: vec![Entry::new(file, Source::Bytes(content), 0o644)],
    };
    let tmp = blobs.root.join(format!("{name}.partial"));
    let out = std::fs::File::create(&tmp).unwrap();
    let fs = image_core::fs::HostFs::new("/");
    let (info, mut out) = write_layer(&fs, &spec, CREATED, 1, out, &mut |_| true).unwrap();
    out.flush().unwrap();
    std::fs::rename(&tmp, blobs.path(&info.digest)).unwrap();
    info
}

/// An image over `layers`.
pub fn image(layers: Vec<LayerInfo>) -> Image {
    Image {
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        created: CREATED,
        config: RunConfig {
            entrypoint: vec!["/app/bin/hello".into()],
            cmd: vec!["start".into()],
            env: vec!["LANG=C.UTF-8".into()],
            working_dir: "/app".into(),
            user: "65534:65534".into(),
            ..RunConfig::default()
        },
        layers,
        base_history: Vec::new(),
        annotations: Default::default(),
    }
}

/// Three layers: 2 MiB "runtime", 512 KiB "deps", a small "app" whose content depends on
/// `app_version` (so two versions differ only in the last layer).
pub fn three_layer_image(blobs: &BlobDir, app_version: u64) -> Image {
    image(vec![
        layer(blobs, "runtime", "/usr/lib/runtime.so", noise(1, 2 << 20)),
        layer(blobs, "deps", "/app/lib/deps.beam", noise(2, 512 << 10)),
        layer(
            blobs,
            &format!("app{app_version}"),
            "/app/lib/app.beam",
            noise(100 + app_version, 16 << 10),
        ),
    ])
}

/// A free TCP port on 127.0.0.1 (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/usr/bin/docker-registry`, or `None` when it is not installed (in CI that fails the test:
/// see [`prereq::missing`]).
pub fn registry_binary() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/docker-registry");
    if p.is_file() {
        Some(p)
    } else {
        prereq::missing(
            "/usr/bin/docker-registry is not installed (apt-get install docker-registry)",
        );
        None
    }
}

/// A path to a required tool; panics with the package to install.
pub fn need(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is needed for this test: apt-get install -y {package}");
}

/// A `docker-registry serve` process on 127.0.0.1, killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its stdout, where the access log goes.
    pub access_log: PathBuf,
    child: Child,
}

impl Registry {
    /// Start a registry storing under `dir`, with `extra` YAML appended (auth, TLS).
    pub fn start(binary: &Path, dir: &Path, extra: &str) -> Registry {
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        yaml.push_str(extra);
        std::fs::write(&config, yaml).unwrap();
        let access_log = dir.join("registry.stdout");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&access_log).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut reg = Registry {
            host,
            access_log,
            child,
        };
        reg.wait_ready(dir);
        reg
    }

    /// Wait until the port answers anything to `GET /v2/` (a TLS port answers 400).
    fn wait_ready(&mut self, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("registry.stderr")).unwrap_or_default()
                );
            }
            if let Ok(mut s) = TcpStream::connect(&self.host) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n").is_ok() {
                    let mut buf = [0u8; 12];
                    if s.read(&mut buf).is_ok_and(|n| n > 0) {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not answer on {} within 10 s",
            self.host
        );
    }

    /// Requests made by docker_release (its User-Agent), as `METHOD /path`, once the access log
    /// holds at least `manifest_puts` manifest PUTs (the last requests of a push; the registry
    /// logs a request before the client sees its answer, but the wait makes this explicit).
    pub fn our_requests(&self, manifest_puts: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let ours: Vec<String> = log
                .lines()
                .filter(|l| l.contains("docker_release/"))
                .filter_map(|l| {
                    let req = l.split('"').nth(1)?;
                    let mut parts = req.split(' ');
                    Some(format!("{} {}", parts.next()?, parts.next()?))
                })
                .collect();
            let puts = ours
                .iter()
                .filter(|r| r.starts_with("PUT ") && r.contains("/manifests/"))
                .count();
            if puts >= manifest_puts || Instant::now() > deadline {
                return ours;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Truncate the access log (to count the requests of the next push alone).
    pub fn clear_log(&self) {
        std::fs::File::create(&self.access_log).unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The blob directory of a test's temporary directory `dir` (`dir/blobs`).
pub fn blob_dir(dir: &Path) -> BlobDir {
    BlobDir {
        root: dir.join("blobs"),
    }
}

/// A temporary directory (removed on drop), a plain-HTTP registry storing in it, and a blob
/// directory there; `None` when `docker-registry` is not installed (said by
/// [`registry_binary`]). The directory comes first: the bindings of a `let` pattern are dropped
/// last to first, so the registry stops before its directory is removed.
pub fn plain_registry() -> Option<(tempfile::TempDir, Registry, BlobDir)> {
    let bin = registry_binary()?;
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(&bin, dir.path(), "");
    let blobs = blob_dir(dir.path());
    Some((dir, reg, blobs))
}

/// A registry over TLS (`ca.crt` of its directory signs its certificate) with basic auth
/// (`user`/`pass`).
pub struct TlsRegistry {
    /// The registry.
    pub reg: Registry,
    /// Its directory: `ca.crt`, `htpasswd`, its storage (removed on drop).
    pub dir: tempfile::TempDir,
}

/// Start a [`TlsRegistry`] with the `docker-registry` at `bin`.
pub fn tls_registry(bin: &Path) -> TlsRegistry {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tls(d);
    make_htpasswd(&d.join("htpasswd"), "user", "pass");
    let extra = format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        d.join("server.crt").display(),
        d.join("server.key").display(),
        d.join("htpasswd").display()
    );
    let reg = Registry::start(bin, d, &extra);
    TlsRegistry { reg, dir }
}

/// The registry configuration (YAML to append, see [`Registry::start`]) for bearer tokens from
/// the token service at `realm_host` (`HOST:PORT`), signed with the key [`make_token_key`] left
/// in `dir` (issuer `test-issuer`, service `test-registry`).
pub fn token_auth(realm_host: &str, dir: &Path) -> String {
    format!(
        "auth:\n  token:\n    realm: http://{realm_host}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        dir.join("token.crt").display()
    )
}

/// Count requests like `METHOD` whose path contains `part`.
pub fn count(requests: &[String], method: &str, part: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(part))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: `ca.crt`, `server.crt`,
/// `server.key`.
pub fn make_tls(dir: &Path) {
    let openssl = need("openssl", "openssl");
    let d = |name: &str| dir.join(name);
    run(Command::new(&openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=docker_release test CA", "-keyout"])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.crt")));
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(d("server.key"))
        .arg("-out")
        .arg(d("server.csr")));
    std::fs::write(
        d("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(d("server.csr"))
        .arg("-CA")
        .arg(d("ca.crt"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("server.crt"))
        .arg("-extfile")
        .arg(d("ext.cnf")));
}

/// An htpasswd file (bcrypt, as the registry requires) for one user.
pub fn make_htpasswd(path: &Path, user: &str, password: &str) {
    let htpasswd = need("htpasswd", "apache2-utils");
    let out = run(Command::new(htpasswd).args(["-Bbn", user, password]));
    std::fs::write(path, out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A fake HTTP/1.1 server.

/// A request as the fake server saw it (the body is not kept).
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The `Content-Length`.
    pub content_length: usize,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake server does with a request.
pub enum Reply {
    /// Read the whole body, then answer.
    Respond {
        /// Status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// Read this many body bytes, then close the connection without answering.
    ReadThenClose(usize),
    /// Read this many body bytes, then hold the connection for this long without reading
    /// more or answering (a stalled registry or proxy).
    ReadThenHang(usize, Duration),
    /// Read the body, answer with a head that declares `declared` body bytes, send only
    /// `sent`, then hold the connection for `hold` (an answer that stops half-way).
    Partial {
        /// Status code.
        status: u16,
        /// The `Content-Length` announced.
        declared: usize,
        /// The bytes actually sent.
        sent: Vec<u8>,
        /// How long to hold the connection afterwards.
        hold: Duration,
    },
}

impl Reply {
    /// A reply with a status, headers and body.
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A threaded HTTP/1.1 server on 127.0.0.1 answering with a handler; stops accepting on drop.
pub struct FakeServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    /// Start serving with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (handler, reqs) = (handler.clone(), reqs.clone());
                std::thread::spawn(move || serve(conn, &*handler, &reqs));
            }
        });
        FakeServer {
            addr,
            requests,
            stop,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The first request received with `method`; panics when there is none.
    pub fn first(&self, method: &str) -> Request {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.method == method)
            .cloned()
            .unwrap_or_else(|| panic!("no {method} request among {:?}", self.lines()))
    }

    /// The requests received so far, as `METHOD target`.
    pub fn lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut req = Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            content_length: 0,
        };
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                req.headers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        req.content_length = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        log.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::ReadThenHang(n, hold) => {
                let mut buf = vec![0u8; n.min(req.content_length)];
                let _ = reader.read_exact(&mut buf);
                std::thread::sleep(hold);
                return;
            }
            Reply::Partial {
                status,
                declared,
                sent,
                hold,
            } => {
                let _ = std::io::copy(
                    &mut (&mut reader).take(req.content_length as u64),
                    &mut std::io::sink(),
                );
                let head = format!("HTTP/1.1 {status} Fake\r\nContent-Length: {declared}\r\n\r\n");
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&sent);
                let _ = out.flush();
                std::thread::sleep(hold);
                return;
            }
            Reply::ReadThenClose(n) => {
                let mut buf = vec![0u8; n.min(req.content_length)];
                let _ = reader.read_exact(&mut buf);
                // Unread data left in the socket makes the kernel answer with a reset.
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Respond {
                status,
                headers,
                body,
            } => {
                if std::io::copy(
                    &mut (&mut reader).take(req.content_length as u64),
                    &mut std::io::sink(),
                )
                .is_err()
                {
                    return;
                }
                let mut head = format!(
                    "HTTP/1.1 {status} Fake\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let mut bytes = head.into_bytes();
                if req.method != "HEAD" {
                    bytes.extend_from_slice(&body);
                }
                if out.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    }
}

/// The query parameters of a request target.
pub fn query(target: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x{target}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A token service for the registry's `auth.token`.

/// Files for token signing in `dir`: `token.key` (RSA) and `token.crt` (self-signed), which the
/// registry trusts through `rootcertbundle`.
pub fn make_token_key(dir: &Path) {
    let openssl = need("openssl", "openssl");
    run(Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=docker_release test token issuer", "-keyout"])
        .arg(dir.join("token.key"))
        .arg("-out")
        .arg(dir.join("token.crt")));
}

/// A JWT for distribution 2.8: RS256, the signing certificate in `x5c`, `access` for `scope`
/// (`repository:NAME:ACTIONS`), signed with `openssl dgst`.
pub fn sign_token(dir: &Path, issuer: &str, service: &str, scope: &str) -> String {
    let openssl = need("openssl", "openssl");
    let der = run(Command::new(&openssl)
        .args(["x509", "-outform", "DER", "-in"])
        .arg(dir.join("token.crt")));
    let mut access = Vec::new();
    let parts: Vec<&str> = scope.splitn(3, ':').collect();
    if parts.len() == 3 {
        access.push(serde_json::json!({
            "type": parts[0], "name": parts[1],
            "actions": parts[2].split(',').collect::<Vec<_>>(),
        }));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(der)]});
    let claims = serde_json::json!({
        "iss": issuer, "sub": "user", "aud": service,
        "exp": now + 600, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", scope.len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new(&openssl)
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("token.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst failed");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}
