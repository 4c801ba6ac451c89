//! A write buffer under plaintext client connections, so that a response's header and a small
//! body leave in one `sendto` rather than two.
//!
//! Pingora's own listeners give each accepted stream a small write buffer, but the call that
//! sizes it is private to Pingora, and a `Stream` made from a tokio `TcpStream` (as our accept
//! loops make them, see [`super::listeners`]) writes straight to the socket. Its HTTP/1 server
//! writes the response header and then the body, so a small keep-alive response cost two system
//! calls, and the client saw two TCP segments. [`Coalescing`] puts a [`BufWriter`] between the
//! HTTP code and the socket. Pingora flushes whenever it needs the bytes to go (the end of a
//! response, a header with no body, each chunk of a streamed or upgraded body), so nothing waits
//! in the buffer; a write larger than the buffer goes straight through.
//!
//! TLS connections are not wrapped: the rustls layer above the socket already gathers a record
//! before it writes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// The size of the write buffer: a typical response header plus a small body, about one
/// Ethernet-sized TCP segment.
pub const WRITE_BUFFER: usize = 1460;

/// A plaintext client stream with a write buffer; see the module doc.
pub struct Coalescing(BufWriter<Stream>);

impl Coalescing {
    /// Wraps an accepted stream.
    pub fn new(stream: Stream) -> Self {
        Coalescing(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

impl fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Coalescing").field(self.0.get_ref()).finish()
    }
}

impl Drop for Coalescing {
    fn drop(&mut self) {
        // Pingora flushes before it lets a connection go; should anything be left, the socket
        // is writable in the common case, so a non-blocking attempt is enough.
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut self.0).poll_flush(&mut cx);
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Coalescing {
    async fn shutdown(&mut self) {
        if let Err(err) = AsyncWriteExt::shutdown(&mut self.0).await {
            tracing::debug!(error = %err, "closing a client connection");
        }
    }
}

impl UniqueID for Coalescing {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().id()
    }
}

impl Ssl for Coalescing {}

#[async_trait]
impl Peek for Coalescing {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.0.get_mut().try_peek(buf).await
    }
}

impl GetTimingDigest for Coalescing {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.0.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.0.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for Coalescing {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.0.get_ref().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Coalescing {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}
