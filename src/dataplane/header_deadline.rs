//! A deadline for the whole of a client's HTTP/1 request header.
//!
//! Pingora bounds each read of a request header (by the keep-alive idle time, 60 s), not the
//! header as a whole: a client that sends a line every few seconds holds its connection, and
//! the memory of the header read so far, for as long as it keeps sending. Many such clients
//! are the slow-header attack. [`HeaderDeadline`] sits between Pingora's HTTP code and a client
//! connection (cleartext or decrypted TLS) and gives each request header, from its first byte
//! to the empty line that ends it, one deadline; past it the client gets `408 Request Timeout`
//! and the connection closes.
//!
//! Pingora serves the requests of a keep-alive connection in a loop of its own, so the wrapper
//! tells where each header starts and ends from the bytes that pass through it:
//!
//! - a header starts with the connection, and again with the first bytes read after a response
//!   is written (anything Pingora writes but an informational `1xx` header);
//! - it ends at a line feed, an optional carriage return and a second line feed; what follows
//!   (the body) is passed through unchecked until the next response;
//! - a connection that opens with the HTTP/2 preface, or switched protocols (`101`, a
//!   WebSocket), is left alone from then on: its bytes are not HTTP/1 headers. One that
//!   negotiated HTTP/2 by ALPN has the deadline for its preface, counted from the handshake
//!   (Pingora waits for it without one), and is closed without a 408 when it misses it.
//!
//! A header that arrives in one read, as nearly all do, costs a scan of its bytes and no timer;
//! the timer is set only when a read leaves the header unfinished.
//!
//! Known shortcoming: request body a client sends after a response (a body Pingora drains
//! after answering early, or the body of a pipelined request whose header came with the one
//! before it) is held to the deadline as if it were a header: such a body slower than the
//! deadline, with no empty line in it, is cut off.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a read gives when the header is not in by the deadline.
pub const TIMED_OUT: &str = "the request header did not arrive in time";

/// What the client gets when its header is not in by the deadline.
pub const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How an HTTP/2 connection with prior knowledge opens.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2";

/// The length of HTTP/2's connection preface (RFC 9113, section 3.4).
const H2_PREFACE_LEN: usize = 24;

/// Where the wrapper is in the requests it passes up.
enum State {
    /// Reading a header: how much of a blank line the last bytes were (0: none, 1: a line
    /// feed, 2: a line feed and a carriage return, [`START`]: nothing else yet), and when the
    /// header began, once it has taken more than one read; `stray` counts the line ends read
    /// before the request line, of which a few do not start the clock.
    Header {
        blank: u8,
        began: Option<Instant>,
        stray: usize,
    },
    /// Past the end of the header: nothing is checked until a response is written.
    Past,
    /// Not HTTP/1 (HTTP/2, or switched protocols), or no deadline: nothing is checked.
    Off,
}

/// A client connection whose request headers have a deadline; see the module doc.
pub struct HeaderDeadline<S> {
    inner: S,
    timeout: Duration,
    state: State,
    /// Nothing has been read yet: the first bytes may be the HTTP/2 preface.
    opening: bool,
    /// HTTP/2 by ALPN: a missed deadline closes the connection without an HTTP/1 answer.
    h2: bool,
    /// HTTP/2 by ALPN: how many bytes of the 24-byte preface are still owed. They may come in
    /// any number of reads; scanned as an HTTP/1 header, the frames after a preface split so
    /// would be held to the deadline, and a working connection cut.
    preface_owed: usize,
    /// The timer, set when a header takes more than one read, and kept for the next.
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: IntCounter,
}

impl<S: Ssl> HeaderDeadline<S> {
    /// Wraps `inner`, whose request headers each get `timeout` (zero: no limit); `timed_out`
    /// counts the headers that missed it.
    pub fn new(inner: S, timeout: Duration, timed_out: IntCounter) -> Self {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        HeaderDeadline {
            inner,
            timeout,
            state: if timeout.is_zero() {
                State::Off
            } else {
                State::Header {
                    blank: START,
                    // The preface is owed from the handshake on.
                    began: h2.then(Instant::now),
                    stray: 0,
                }
            },
            opening: true,
            h2,
            preface_owed: if h2 { H2_PREFACE_LEN } else { 0 },
            timer: None,
            timed_out,
        }
    }
}

impl<S> HeaderDeadline<S> {
    /// Counts the first request header's deadline from `began`, when its first bytes were
    /// read before the stream was wrapped.
    pub fn began_at(&mut self, began: Instant) {
        if let State::Header { began: at, .. } = &mut self.state {
            at.get_or_insert(began);
        }
    }

    /// Pingora writes `buf`: a final response header or body means the next bytes read start
    /// the next request; a `101` means they are not HTTP/1 any more.
    fn wrote(&mut self, buf: &[u8]) {
        if matches!(self.state, State::Off) || buf.is_empty() {
            return;
        }
        let status = buf
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| buf.strip_prefix(b"HTTP/1.0 "));
        match status {
            Some(code) if code.starts_with(b"101") => self.state = State::Off,
            Some(code) if code.starts_with(b"1") => {}
            _ => {
                if matches!(self.state, State::Past) {
                    self.state = State::Header {
                        blank: START,
                        began: None,
                        stray: 0,
                    };
                }
            }
        }
    }
}

/// How many line ends before a request line are let be without starting the header's clock:
/// two empty lines.
const MAX_STRAY: usize = 4;

/// Where [`scan`] starts a header: nothing but line ends seen yet, which a client may send
/// before its request line (RFC 9112, section 2.2) and which end nothing.
const START: u8 = 3;

/// Scans `bytes` for the blank line that ends a header, from the scanner state `blank`:
/// `Ok(())` when found, else the state to go on from.
///
/// Most reads hold a whole header ended by `\r\n\r\n`, which a vectorised search finds
/// (past any empty lines before the request line) at a fraction of the cost of the byte loop
/// of [`scan_bytes`]; that loop answers the rest: bare `\n` line ends, and a blank line split
/// across reads.
fn scan(blank: u8, bytes: &[u8]) -> Result<(), u8> {
    let rest = match blank {
        START => match bytes.iter().position(|&b| b != b'\r' && b != b'\n') {
            Some(start) => &bytes[start..],
            None => return Err(START),
        },
        _ => bytes,
    };
    if HEADER_END.find(rest).is_some() {
        return Ok(());
    }
    scan_bytes(blank, bytes)
}

/// The searcher for a header's end, built once: building one per read cost more than the
/// search itself on a request of a few hundred bytes.
static HEADER_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// [`scan`], a byte at a time.
fn scan_bytes(mut blank: u8, bytes: &[u8]) -> Result<(), u8> {
    for &b in bytes {
        blank = match (blank, b) {
            (START, b'\r' | b'\n') => START,
            (1 | 2, b'\n') => return Ok(()),
            (_, b'\n') => 1,
            (1, b'\r') => 2,
            _ => 0,
        };
    }
    Err(blank)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let State::Header {
            blank,
            began,
            stray,
        } = &mut this.state
        else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.h2 {
                    this.preface_owed = this.preface_owed.saturating_sub(read.len());
                    if this.preface_owed == 0 {
                        this.state = State::Off;
                    }
                    return Poll::Ready(Ok(()));
                }
                if std::mem::take(&mut this.opening) && read.starts_with(H2_PREFACE_START) {
                    this.state = State::Off;
                    return Poll::Ready(Ok(()));
                }
                match scan(*blank, read) {
                    Ok(()) => this.state = State::Past,
                    Err(state) => {
                        *blank = state;
                        // Empty lines before a request line are ignored (RFC 9112, section
                        // 2.2), and some clients send one after a request body: a few of them
                        // are no header begun, and would otherwise have an idle keep-alive
                        // connection answered 408. More start the clock, or a client could
                        // hold its connection by dripping line ends.
                        if state == START {
                            *stray += read.len();
                        }
                        if state != START || *stray > MAX_STRAY {
                            began.get_or_insert_with(Instant::now);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(began) = *began else {
                    return Poll::Pending;
                };
                let deadline = began + this.timeout;
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timed_out.inc();
                this.state = State::Off;
                // Best effort: the socket has room for a line this short, and the connection
                // closes whether or not it went.
                if !this.h2 {
                    let _ = Pin::new(&mut this.inner).poll_write(cx, REQUEST_TIMEOUT);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, TIMED_OUT)))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(&buf[..n]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&polled, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                self.wrote(&first[..first.len().min(*n)]);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: fmt::Debug> fmt::Debug for HeaderDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HeaderDeadline").field(&self.inner).finish()
    }
}

#[async_trait]
impl<S: Shutdown + Send> Shutdown for HeaderDeadline<S> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl<S: UniqueID> UniqueID for HeaderDeadline<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for HeaderDeadline<S> {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

#[async_trait]
impl<S: Peek + Send> Peek for HeaderDeadline<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl<S: GetTimingDigest> GetTimingDigest for HeaderDeadline<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for HeaderDeadline<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: GetSocketDigest> GetSocketDigest for HeaderDeadline<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::{scan, scan_bytes, START};

    #[test]
    fn a_header_ends_at_its_blank_line_however_the_reads_split_it() {
        let header = b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody";
        let end = header.len() - 4;
        for split in 0..=header.len() {
            let (a, b) = header.split_at(split);
            let found = match scan(START, a) {
                Ok(()) => split >= end,
                Err(state) => scan(state, b).is_ok(),
            };
            assert!(found, "split at {split}");
        }
        assert_eq!(scan(START, b"GET / HTTP/1.1\nhost: a\n\n"), Ok(()));
        assert!(scan(START, b"GET / HTTP/1.1\r\nhost: a\r\n").is_err());
        assert!(scan(START, b"GET / HTTP/1.1\r\nhost: a\r\nx: \r\r\n").is_err());
        // Empty lines before the request line (RFC 9112, section 2.2) do not end it.
        assert!(scan(START, b"\r\n\r\nGET / HTTP/1.1\r\n").is_err());
        assert_eq!(scan(START, b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Ok(()));
    }

    #[test]
    fn the_fast_scan_answers_as_the_byte_loop_does() {
        // Every string of up to 8 bytes over `\r`, `\n` and a letter, from every state.
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=8u32 {
            for code in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| alphabet[code / 3usize.pow(i) % 3])
                    .collect();
                for state in [0, 1, 2, START] {
                    assert_eq!(
                        scan(state, &bytes),
                        scan_bytes(state, &bytes),
                        "state {state}, {bytes:?}"
                    );
                }
            }
        }
    }
}
