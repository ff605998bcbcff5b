//! How requests reach the Docker engine: one connection per request, over a Unix socket, TCP,
//! TLS (rustls with the ring provider, client certificates) or the stdin/stdout of a command
//! (`ssh … docker system dial-stdio`, as the Docker CLI does for `ssh://` endpoints), and every
//! connection watched for silence ([`crate::stall`]).
//!
//! bollard takes this transport through `Docker::connect_with_custom_transport`; bollard's own
//! total timeout is set out of reach, because the bound that matters is on silence, not on
//! length: a load of a large image may take many minutes and stay healthy.
//!
//! The watch counts bytes in both directions. A request stalls when, for the bound, the engine
//! took no byte of the request and sent no byte of its answer while we were waiting on it. Two
//! kinds of answers are the output of a workload rather than of the engine, and may be silent
//! for as long as the workload is (a compiler that prints nothing for ten minutes): an exec's
//! output, a build's output, and an attached container's streams. For those, silence for the
//! bound makes the watch ask the engine itself (`GET /_ping` on a new connection); the request
//! goes on as long as the engine answers within the bound, and fails when it does not.

use crate::error::chain;
use crate::stall::{seconds, Stalled};
use bollard::BollardRequest;
use http::header::{HeaderValue, HOST};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How to open a connection to the engine.
pub(crate) enum Dial {
    /// A Unix socket.
    Unix(PathBuf),
    /// Plain TCP to `host:port`.
    Tcp(String),
    /// TLS over TCP to `addr` (`host:port`), checking the engine's certificate for `name`.
    Tls {
        /// `host:port`.
        addr: String,
        /// The name the certificate must carry.
        name: rustls::pki_types::ServerName<'static>,
        /// Roots and client certificate.
        config: Arc<rustls::ClientConfig>,
    },
    /// A command whose stdin and stdout carry the connection (`ssh HOST docker system dial-stdio`).
    Command {
        /// The program, looked up on `PATH`.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// A connection: any byte stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Dial {
    async fn connect(&self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            Dial::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Dial::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Dial::Tls { addr, name, config } => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), s)
                    .await
                    .map_err(|e| tls_error(addr, e))?;
                Box::new(tls)
            }
            Dial::Command { program, args } => Box::new(CommandIo::spawn(program, args)?),
        })
    }
}

/// A TLS handshake failure, with what to check.
fn tls_error(addr: &str, e: io::Error) -> io::Error {
    let text = chain(&e);
    let hint = if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "the engine at this address does not speak TLS: unset DOCKER_TLS_VERIFY, or use the engine's TLS port (2376)"
    } else if text.contains("certificate") || text.contains("UnknownIssuer") {
        "the engine's certificate is not signed by ca.pem of DOCKER_CERT_PATH, or does not name this host"
    } else {
        "check DOCKER_CERT_PATH's ca.pem, cert.pem and key.pem (the engine may require a client certificate)"
    };
    io::Error::new(
        e.kind(),
        format!("the TLS handshake with {addr} failed ({text}): {hint}"),
    )
}

/// The engine behind a [`Dial`], as bollard's custom transport.
pub(crate) struct Transport {
    dial: Arc<Dial>,
    /// `the Docker engine at unix:///var/run/docker.sock`.
    peer: Arc<str>,
    /// The `Host` header (the TCP host; `docker` for sockets and commands, as the CLI sends).
    host: HeaderValue,
    stall: Duration,
}

impl Transport {
    pub(crate) fn new(dial: Dial, peer: String, host: &str, stall: Duration) -> Transport {
        Transport {
            dial: Arc::new(dial),
            peer: peer.into(),
            host: HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("docker")),
            stall,
        }
    }

    /// Send one request on a new connection and return the engine's answer (its body streams
    /// from the connection, which lives until the body is read or dropped).
    pub(crate) async fn send(
        self: Arc<Self>,
        req: BollardRequest,
    ) -> Result<Response<Incoming>, bollard::errors::Error> {
        let (mut parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let request = format!("{} {}", parts.method, without_version(parts.uri.path()));
        let policy = if answers_with_workload_output(&request) {
            Policy::Ping
        } else {
            Policy::Strict
        };
        parts.uri = target.parse()?;
        parts.headers.insert(HOST, self.host.clone());
        let req = hyper::Request::from_parts(parts, body);

        let stalled = |waited| Stalled {
            peer: self.peer.to_string(),
            request: format!("connecting for {request}"),
            waited,
            detail: String::new(),
        };
        let io = match tokio::time::timeout(self.stall, self.dial.connect()).await {
            Ok(io) => io?,
            Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, stalled(self.stall)).into())
            }
        };
        let io = Watched::new(io, self.clone(), request, policy);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        // The connection runs beside the caller; if the caller gives up before the answer (a
        // cancelled build), the guard drops it, so the engine sees the connection close.
        let conn = AbortOnDrop(Some(tokio::spawn(conn.with_upgrades())));
        let resp = sender.send_request(req).await?;
        conn.disarm();
        Ok(resp)
    }
}

/// Aborts a spawned task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::JoinHandle<Result<(), hyper::Error>>>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0.take();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// `/v1.41/images/load` → `/images/load`.
fn without_version(path: &str) -> &str {
    match path.strip_prefix("/v") {
        Some(rest) => match rest.find('/') {
            Some(i) if rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.') => &rest[i..],
            _ => path,
        },
        None => path,
    }
}

/// Requests whose answer is a workload's output (or a held attachment), silent as long as the
/// workload is.
///
/// ```text
/// POST /exec/ID/start, POST /build, POST /containers/ID/attach, POST /containers/ID/wait
/// ```
fn answers_with_workload_output(request: &str) -> bool {
    let path = request.split(' ').nth(1).unwrap_or("");
    (path.starts_with("/exec/") && path.ends_with("/start"))
        || path == "/build"
        || (path.starts_with("/containers/")
            && (path.ends_with("/attach") || path.ends_with("/wait")))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    /// Silence for the bound fails the request.
    Strict,
    /// Silence for the bound asks the engine for a ping; the request fails only when the
    /// engine does not answer it within the bound.
    Ping,
}

type Ping = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A connection whose silence is bounded (see the module docs).
///
/// A poll that finds nothing to read or no room to write starts (or continues) a silent
/// period; any byte read or written ends it. Reads and writes are polled by one task (hyper's
/// connection task), so one timer serves both.
struct Watched {
    inner: Box<dyn Io>,
    transport: Arc<Transport>,
    request: String,
    policy: Policy,
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    ping: Option<Ping>,
}

impl Watched {
    fn new(inner: Box<dyn Io>, transport: Arc<Transport>, request: String, policy: Policy) -> Self {
        let timer = Box::pin(tokio::time::sleep(transport.stall));
        Watched {
            inner,
            transport,
            request,
            policy,
            since: None,
            timer,
            ping: None,
        }
    }

    fn progressed(&mut self) {
        self.since = None;
    }

    /// The error after `waited` of silence.
    fn stalled(&self, waited: Duration, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            Stalled {
                peer: self.transport.peer.to_string(),
                request: self.request.clone(),
                waited,
                detail,
            },
        )
    }

    /// The inner stream is not ready: keep waiting, or fail after the bound.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let bound = self.transport.stall;
        let since = match self.since {
            Some(s) => s,
            None => {
                let now = Instant::now();
                self.since = Some(now);
                self.timer.as_mut().reset(now + bound);
                now
            }
        };
        loop {
            if let Some(ping) = self.ping.as_mut() {
                match ping.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        // The engine is alive: the silence is the workload's. Wait again.
                        self.ping = None;
                        self.timer.as_mut().reset(Instant::now() + bound);
                    }
                    Poll::Ready(Err(e)) => {
                        self.ping = None;
                        let detail = format!(", and did not answer a ping either ({e})");
                        return Poll::Ready(Err(self.stalled(since.elapsed(), detail)));
                    }
                }
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => match self.policy {
                    Policy::Strict => {
                        return Poll::Ready(Err(self.stalled(bound, String::new())));
                    }
                    Policy::Ping => {
                        let (dial, host) =
                            (self.transport.dial.clone(), self.transport.host.clone());
                        self.ping = Some(Box::pin(ping(dial, host, bound)));
                    }
                },
            }
        }
    }
}

/// `GET /_ping` on a new connection, answered `200` within `bound`.
async fn ping(dial: Arc<Dial>, host: HeaderValue, bound: Duration) -> io::Result<()> {
    let asked = async {
        let mut io = dial.connect().await?;
        let host = host.to_str().unwrap_or("docker");
        io.write_all(
            format!("GET /_ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = [0u8; 12];
        io.read_exact(&mut head).await?;
        if head.starts_with(b"HTTP/1.") && &head[9..12] == b"200" {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "it answered {:?}",
                String::from_utf8_lossy(&head)
            )))
        }
    };
    tokio::time::timeout(bound, asked)
        .await
        .map_err(|_| io::Error::other(format!("no answer in {}", seconds(bound))))?
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.waiting(cx),
            // Bytes, the end of the stream or an error: in every case not silence.
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending => self.waiting(cx),
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.waiting(cx),
            Poll::Ready(r) => Poll::Ready(r),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.waiting(cx),
            Poll::Ready(r) => Poll::Ready(r),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A command's stdin and stdout as a connection.

/// `ssh … docker system dial-stdio`: writes go to its stdin, reads come from its stdout. Its
/// stderr goes to an anonymous file, read to explain an early end (an ssh login failure).
struct CommandIo {
    program: String,
    pid: i32,
    stdin: tokio::net::unix::pipe::Sender,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: std::fs::File,
    read_any: bool,
}

impl CommandIo {
    fn spawn(program: &str, args: &[String]) -> io::Result<CommandIo> {
        use std::os::fd::OwnedFd;
        let stderr = tempfile::tempfile()?;
        let mut child = crate::process::command(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.try_clone()?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{program}`: {e}")))?;
        let missing = || io::Error::other("the command's pipes were not set up");
        let stdin = OwnedFd::from(child.stdin.take().ok_or_else(missing)?);
        let stdout = OwnedFd::from(child.stdout.take().ok_or_else(missing)?);
        let pid = child.id() as i32;
        // The exit status is not needed (and cannot be had where SIGCHLD is ignored, as in the
        // BEAM); a thread reaps the process where it can be reaped.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(CommandIo {
            program: program.to_string(),
            pid,
            stdin: tokio::net::unix::pipe::Sender::from_owned_fd(stdin)?,
            stdout: tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?,
            stderr,
            read_any: false,
        })
    }

    /// The start of what the command printed on stderr.
    fn said(&self) -> String {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        let n = self.stderr.read_at(&mut buf, 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    }
}

impl Drop for CommandIo {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child; at worst it no longer exists.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

impl AsyncRead for CommandIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stdout).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && !self.read_any => {
                let said = self.said();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "`{}` ended without a connection to the engine{}",
                        self.program,
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {said}")
                        }
                    ),
                )))
            }
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read_any = true;
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for CommandIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        assert_eq!(without_version("/v1.41/images/load"), "/images/load");
        assert_eq!(without_version("/_ping"), "/_ping");
        assert_eq!(without_version("/volumes/x"), "/volumes/x");
        assert!(answers_with_workload_output("POST /exec/abc/start"));
        assert!(answers_with_workload_output("POST /build"));
        assert!(answers_with_workload_output("POST /containers/abc/attach"));
        assert!(!answers_with_workload_output("POST /images/load"));
        assert!(!answers_with_workload_output("GET /exec/abc/json"));
    }
}
