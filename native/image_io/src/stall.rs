//! The bound on silence: no request to the engine or a registry waits for ever.
//!
//! A request *stalls* when, for the run's stall timeout ([`DEFAULT_STALL`] unless the user set
//! `--stall-timeout` or `DOCKER_RELEASE_STALL_TIMEOUT`), none of its bytes moved in either
//! direction and no answer came: a peer that accepted the connection and never answers, one that
//! stopped reading an upload, one that stopped sending a download half-way. Slowness is not
//! silence: a long upload or download that keeps moving is never cut.
//!
//! The engine's connections are watched byte by byte (`transport`); registry requests by the
//! upload bytes taken and by each chunk of their answers (`registry`). Both report a [`Stalled`]
//! that names the peer, the request and the seconds waited.

use std::error::Error;
use std::time::Duration;

/// The default bound on silence. A healthy engine or registry answers every request, or moves
/// bytes, far more often: the slowest silent step seen is a registry checking a large blob
/// after its upload, or an engine preparing `docker save` of a large base (seconds to tens of
/// seconds on a slow CI disk). Five minutes stays well clear of both and still ends a hung job
/// long before a CI job's own timeout.
pub const DEFAULT_STALL: Duration = Duration::from_secs(300);

/// The environment variable the Elixir side reads the stall timeout from (seconds).
pub const STALL_VAR: &str = "DOCKER_RELEASE_STALL_TIMEOUT";

/// A request that made no progress for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Who went silent: `the Docker engine at unix:///var/run/docker.sock`, `registry.example.com`.
    pub peer: String,
    /// The request: `POST /images/load`, `PUT https://host/v2/…`, `connecting`.
    pub request: String,
    /// How long nothing moved.
    pub waited: Duration,
    /// What else was tried before giving up (a liveness ping), or empty.
    pub detail: String,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} neither took nor sent a byte for {} during {}{}",
            self.peer,
            seconds(self.waited),
            self.request,
            self.detail
        )
    }
}

impl Error for Stalled {}

/// `300 s`, `1.5 s`: whole seconds from ten seconds up or when the fraction is tiny.
///
/// ```
/// use image_io::stall::seconds;
/// use std::time::Duration;
/// assert_eq!(seconds(Duration::from_secs(300)), "300 s");
/// assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
/// assert_eq!(seconds(Duration::from_millis(2004)), "2 s");
/// assert_eq!(seconds(Duration::from_millis(12_600)), "13 s");
/// ```
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 || (s - s.round()).abs() < 0.05 {
        format!("{:.0} s", s.round())
    } else {
        format!("{s:.1} s")
    }
}

/// What the user can change, for the end of a message.
pub const HOW_TO_CHANGE: &str =
    "the limit is --stall-timeout SECONDS or DOCKER_RELEASE_STALL_TIMEOUT";

/// The [`Stalled`] somewhere in `e`'s chain of sources, also inside an `io::Error`.
///
/// ```
/// use image_io::stall::{find_stalled, Stalled};
/// use std::time::Duration;
/// let s = Stalled { peer: "p".into(), request: "GET /x".into(), waited: Duration::from_secs(1), detail: String::new() };
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, s.clone());
/// let wrapped = std::io::Error::other(io);
/// assert_eq!(find_stalled(&wrapped), Some(&s));
/// assert_eq!(find_stalled(&std::io::Error::other("no")), None);
/// ```
pub fn find_stalled<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a Stalled> {
    let mut cur: Option<&'a (dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<Stalled>() {
            return Some(s);
        }
        // An io::Error's `source()` skips its own payload: look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(s) = find_stalled(inner) {
                return Some(s);
            }
        }
        cur = err.source();
    }
    None
}
