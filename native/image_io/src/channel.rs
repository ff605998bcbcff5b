//! Bridges between blocking code (tar and gzip writers and readers) and async byte streams,
//! through a bounded channel, so at most a few chunks are in memory at a time.

use bytes::Bytes;
use std::io::{self, Read, Write};
use tokio::sync::mpsc;

/// A blocking writer that sends fixed-size chunks into a channel (an HTTP request body).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    /// A writer sending chunks of `chunk` bytes (the last may be shorter; call `flush`).
    pub(crate) fn new(tx: mpsc::Sender<Result<Bytes, io::Error>>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = Vec::with_capacity(self.chunk);
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, next));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine closed the upload"))
    }
}

/// A blocking reader over a channel of chunks; the sender's end is EOF, an error item an error.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    /// A reader over `rx`.
    pub(crate) fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// A request body written by blocking code: `write` runs on the blocking pool into a
/// [`ChannelWriter`] of `chunk`-byte chunks (it must flush it at the end), so at most a few
/// chunks are in memory. When `write` fails, the body ends with that error, so the receiver (the engine)
/// discards what it got instead of using a partial body. The handle gives `write`'s result once
/// the body is consumed or dropped.
pub(crate) fn body_from_writer<T, E, F>(
    chunk: usize,
    write: F,
) -> (crate::engine::Body, tokio::task::JoinHandle<Result<T, E>>)
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: FnOnce(&mut ChannelWriter) -> Result<T, E> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone(), chunk);
        let res = write(&mut out);
        if let Err(e) = &res {
            // Abort the request body so the receiver discards the partial upload.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        res
    });
    let body: crate::engine::Body =
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
    (body, writer)
}
