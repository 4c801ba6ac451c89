//! A write buffer under plaintext client connections, so that a response's header and a small
//! body leave in one `sendto` rather than two.
//!
//! Pingora's own listeners give each accepted stream a small write buffer, but the call that
//! sizes it is private to Pingora, and a `Stream` made from a tokio `TcpStream` (as our accept
//! loops make them, see [`super::listeners`]) writes straight to the socket. Its HTTP/1 server
//! writes the response header and then the body, so a small keep-alive response cost two system
//! calls, and the client saw two TCP segments. [`Coalescing`] puts a [`BufWriter`] between the
//! HTTP code and the socket, and holds one write only: the first since Pingora last flushed
//! (a response's header). The next write goes out with it at once (a small response's body,
//! or the first piece of a long one), and so does every write after it until Pingora flushes
//! again: a body that a backend sends slowly, in small writes, reaches the client as it comes,
//! not a buffer at a time. Pingora flushes whenever it needs the bytes to go (the end of a
//! response, a header with no body, each chunk of a streamed or upgraded body); a write larger
//! than the buffer goes straight through.
//!
//! TLS connections get the buffer too, above the TLS layer: rustls seals each write into a
//! record of its own and writes it out, so a response's header and body went out as two
//! records in two `writev` calls; buffered, they are one record and one call.
//!
//! The wrapper also answers Pingora's question, asked before every request on a cleartext
//! connection, whether the connection opens with the HTTP/2 preface (h2c with prior knowledge);
//! see [`Coalescing::try_peek`](Peek::try_peek).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// The size of the write buffer: a typical response header plus a small body, about one
/// Ethernet-sized TCP segment.
pub const WRITE_BUFFER: usize = 1460;

/// How long a connection may take to send the bytes that tell HTTP/2's preface from an
/// HTTP/1 request line, once it has sent its first.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection opens with when it speaks HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's opening bytes are too few to tell the HTTP/2 preface from an HTTP/1
/// request: they are the start of the preface, and shorter than it (as `P` is, the start of
/// `POST` too).
pub fn preface_undecided(opening: &[u8]) -> bool {
    opening.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(opening)
}

/// A client stream (plaintext, or decrypted TLS) with a write buffer; see the module doc.
pub struct Coalescing<S: AsyncWrite + Unpin = Stream> {
    inner: BufWriter<S>,
    /// Whether a write was held since Pingora last flushed: the writes after it are sent at
    /// once.
    holding: bool,
    /// Whether the opening bytes were looked at already.
    opened: bool,
    /// Whether the connection opens with the HTTP/2 preface, when its opening bytes (read
    /// before it was wrapped) tell; `None` when they are too few to.
    preface: Option<bool>,
}

impl Coalescing {
    /// Wraps an accepted plaintext stream. `opening` is what the connection sent first, if it was read
    /// already and put back (`Stream::rewind`): enough of it answers the HTTP/2 preface
    /// question without another read.
    pub fn new(stream: Stream, opening: &[u8]) -> Self {
        let seen = opening.len().min(H2_PREFACE.len());
        let preface = if opening[..seen] != H2_PREFACE[..seen] {
            Some(false)
        } else if seen == H2_PREFACE.len() {
            Some(true)
        } else {
            None
        };
        Coalescing {
            inner: BufWriter::with_capacity(WRITE_BUFFER, stream),
            holding: false,
            opened: false,
            preface,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
    /// Wraps a stream whose protocol the TLS handshake settled (ALPN): there is no preface to
    /// look for.
    pub fn tls(stream: S) -> Self {
        Coalescing {
            inner: BufWriter::with_capacity(WRITE_BUFFER, stream),
            holding: false,
            opened: true,
            preface: Some(false),
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
    /// After a write: holds the first since the last flush, sends what is buffered on any
    /// later one. A send that cannot go at once (the client is not reading) is left to the next
    /// write or flush, as the buffer would leave it anyway.
    fn wrote(&mut self, cx: &mut Context<'_>) {
        if !self.holding {
            self.holding = true;
        } else if !self.inner.buffer().is_empty() {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }
}

impl<S: AsyncWrite + Unpin + fmt::Debug> fmt::Debug for Coalescing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Coalescing")
            .field(self.inner.get_ref())
            .finish()
    }
}

impl<S: AsyncWrite + Unpin> Drop for Coalescing<S> {
    fn drop(&mut self) {
        // Pingora flushes before it lets a connection go; should anything be left, the socket
        // is writable in the common case, so a non-blocking attempt is enough.
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.wrote(cx);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.wrote(cx);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.holding = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: AsyncWrite + Unpin + Send> Shutdown for Coalescing<S> {
    async fn shutdown(&mut self) {
        if let Err(err) = AsyncWriteExt::shutdown(&mut self.inner).await {
            tracing::debug!(error = %err, "closing a client connection");
        }
    }
}

impl<S: AsyncWrite + Unpin + UniqueID> UniqueID for Coalescing<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl<S: AsyncWrite + Unpin + Ssl> Ssl for Coalescing<S> {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ref().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ref().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.get_ref().selected_alpn_proto()
    }
}

/// Pingora reads 24 bytes and puts them back before every request, to see whether they are the
/// HTTP/2 preface. Read that way, a request shorter than the preface (`GET / HTTP/1.0` and an
/// empty line is 18 bytes) waits forever for bytes that never come, and every keep-alive request
/// pays a copy and an allocation for the bytes put back. Here only the opening bytes of the
/// connection are looked at, as far as they can still be the preface; later requests are
/// answered "not the preface" at once.
#[async_trait]
impl Peek for Coalescing {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        buf.fill(0);
        if std::mem::replace(&mut self.opened, true) {
            return Ok(true);
        }
        if let Some(preface) = self.preface {
            if preface {
                let n = buf.len().min(H2_PREFACE.len());
                buf[..n].copy_from_slice(&H2_PREFACE[..n]);
            }
            return Ok(true);
        }
        let stream = self.inner.get_mut();
        let wanted = buf.len().min(H2_PREFACE.len());
        let mut read = 0;
        let opening = tokio::time::timeout(PREFACE_TIMEOUT, async {
            while read < wanted {
                let n = stream.read(&mut buf[read..wanted]).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                read += n;
                if buf[..read] != H2_PREFACE[..read] {
                    break;
                }
            }
            Ok::<(), io::Error>(())
        })
        .await;
        stream.rewind(&buf[..read]);
        opening.unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))?;
        Ok(true)
    }
}

/// A TLS stream is never asked: Pingora looks for the HTTP/2 preface on plaintext connections
/// only, ALPN having settled the protocol of a TLS one.
#[async_trait]
impl<S: Send> Peek for Coalescing<TlsStream<S>> where TlsStream<S>: AsyncWrite + Unpin {}

impl<S: AsyncWrite + Unpin + GetTimingDigest> GetTimingDigest for Coalescing<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_ref().get_write_pending_time()
    }
}

impl<S: AsyncWrite + Unpin + GetProxyDigest> GetProxyDigest for Coalescing<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest)
    }
}

impl<S: AsyncWrite + Unpin + GetSocketDigest> GetSocketDigest for Coalescing<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest)
    }
}
