//! Listening sockets that come and go with the configuration.
//!
//! Pingora's own services fix their listeners when the server starts, but Gateway listeners are
//! added and removed at runtime. So the gateway runs its own accept loop per socket: it accepts a
//! tokio `TcpStream`, sets `TCP_NODELAY` (without it, Nagle's algorithm meets delayed ACKs and
//! every keep-alive response waits about 40 ms), turns it into a Pingora `Stream` whose socket
//! digest already knows both addresses (so no request pays a `getsockname` call), gives it a
//! write buffer ([`super::coalesce`]: header and body in one `sendto`, or in one TLS record
//! above the TLS layer) and a plaintext one the opening bytes read while waiting for the client
//! to speak (`opening`), and hands it to the shared proxy through `ServerApp::process_new`,
//! looping while the connection is reusable.
//!
//! A connection's task is spawned for every accepted connection, and its future is copied
//! whole on the way: the cleartext path keeps it small (1 KiB in a debug build, 32 KiB before),
//! and a TLS connection's larger state (the ClientHello peek, the handshake, the TLS stream)
//! lives in a box.
//!
//! On a TLS socket the connection's task first peeks at the ClientHello: an SNI taken by a TLS
//! passthrough listener is forwarded raw to its TLSRoute's backend ([`super::passthrough`]);
//! otherwise the task runs the rustls handshake, with a
//! certificate resolver that reads the live table (see [`crate::tls`]), and Pingora speaks
//! HTTP/2 or HTTP/1.1 as ALPN negotiated. The ClientHello and the rest of the handshake share
//! one deadline, [`HANDSHAKE_TIMEOUT`] from the accept, and both end at the drain's grace once
//! the process is stopping: a client stalled in its handshake holds neither a socket nor a stop.
//!
//! Removing a socket (its port no longer served, or reopened in the other mode) stops its
//! accept loop and winds down the connections it accepted as the process's shutdown does:
//! requests in flight finish, an HTTP/2 client gets GOAWAY, an HTTP/1.1 answer says
//! `Connection: close`. Each socket's connections watch a signal of the socket's own for this,
//! which costs a request nothing. A TLS connection is wound down as well when its port, still
//! TLS, stops serving it HTTPS (passed through instead) or changes the client certificate
//! validation its handshake passed (`serve_while`). Adding a socket never touches the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::coalesce::{preface_undecided, Coalescing};
use super::header_deadline::{HeaderDeadline, REQUEST_TIMEOUT};
use super::metrics::Metrics;
use super::passthrough;
use super::proxy::Proxy;
use crate::routing::RoutingTable;
use crate::tls::client_hello::Hello;
use crate::tls::SniResolver;

/// How long a client may take, from the accept, to complete the TLS handshake (its ClientHello
/// included).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection task needs.
#[derive(Clone)]
struct ConnectionContext {
    app: Arc<HttpProxy<Proxy>>,
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
    /// How long a client may take to send a whole HTTP/1 request header (zero: no limit).
    header_timeout: Duration,
    /// Changes with each routing table swapped in.
    swaps: watch::Receiver<u64>,
}

/// A running accept loop: whether its socket terminates TLS, its task, and the signal that
/// winds down the connections accepted on it (raised when the socket closes, and at the
/// process's shutdown).
struct Running {
    tls: bool,
    task: JoinHandle<()>,
    ending: watch::Sender<bool>,
}

/// The running accept loops, by socket address.
pub struct Listeners {
    context: ConnectionContext,
    table: Arc<ArcSwap<RoutingTable>>,
    running: HashMap<SocketAddr, Running>,
    /// Sockets that could not be bound, with the error; retried on the next reconcile.
    pub failed: HashMap<SocketAddr, String>,
}

impl Listeners {
    /// No sockets yet.
    pub fn new(
        app: Arc<HttpProxy<Proxy>>,
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Arc<Metrics>,
        shutdown: ShutdownWatch,
        header_timeout: Duration,
        swaps: watch::Receiver<u64>,
    ) -> Self {
        Listeners {
            context: ConnectionContext {
                app,
                table: table.clone(),
                metrics,
                shutdown,
                header_timeout,
                swaps,
            },
            table,
            running: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Binds the sockets in `wanted` (address, terminates TLS) that are not bound yet and stops
    /// the ones not wanted; a socket that switches between cleartext and TLS is reopened.
    pub async fn reconcile(&mut self, wanted: &[(SocketAddr, bool)]) {
        let unwanted: Vec<SocketAddr> = self
            .running
            .iter()
            .filter(|(addr, running)| !wanted.contains(&(**addr, running.tls)))
            .map(|(addr, _)| *addr)
            .collect();
        // An aborted accept loop drops its socket only when the runtime next gets to it; its
        // handle resolves after that. Wait for it, or a socket reopened on the same address (a
        // port switching between cleartext and TLS) would find it still bound and wait for the
        // bind retry.
        for addr in unwanted {
            if let Some(running) = self.running.remove(&addr) {
                running.task.abort();
                let _ = running.task.await;
                // Its connections are this socket's no more: wound down, as at shutdown.
                running.ending.send_replace(true);
                tracing::info!(%addr, "listener socket closed");
            }
        }
        let before = std::mem::take(&mut self.failed);
        for &(addr, tls) in wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            let listener = match bind(addr) {
                Ok(listener) => listener,
                Err(err) => {
                    let error = err.to_string();
                    // Said once, and again only if the reason changes: the retries go on
                    // every few seconds for as long as the port is held.
                    if before.get(&addr) == Some(&error) {
                        tracing::debug!(%addr, %error, "listener socket still cannot be bound");
                    } else {
                        tracing::warn!(%addr, %error, "cannot bind listener socket; check that the address exists and the port is free (retrying)");
                    }
                    self.failed.insert(addr, error);
                    continue;
                }
            };
            tracing::info!(%addr, tls, "listener socket open");
            let acceptor = tls.then(|| {
                let resolver = Arc::new(SniResolver::new(self.table.clone(), addr));
                let clients = Arc::new(crate::tls::ClientVerifier::new(self.table.clone(), addr));
                Arc::new(crate::tls::acceptors(resolver, clients))
            });
            // The connections of this socket watch a signal of its own, which the process's
            // shutdown raises too: a socket closed (its port no longer served, or served in
            // the other mode) winds down the connections it accepted, and no others.
            let process = self.context.shutdown.clone();
            let (ending, watched) = watch::channel(*process.borrow());
            tokio::spawn(forward_shutdown(process, ending.clone()));
            let mut cx = self.context.clone();
            cx.shutdown = watched;
            let task = tokio::spawn(accept_loop(listener, acceptor, cx));
            self.running.insert(addr, Running { tls, task, ending });
        }
    }

    /// Stops accepting on every socket (shutdown); open connections go on.
    pub fn stop_accepting(&mut self) {
        for (_, running) in self.running.drain() {
            running.task.abort();
        }
    }

    /// Closes keep-alive connections that are waiting for their next request.
    pub async fn close_idle(&self) {
        self.context.app.http_cleanup().await;
    }
}

/// Raises a socket's `ending` signal when the process stops; done once no connection of the
/// socket (nor its accept loop) watches it any more.
async fn forward_shutdown(mut process: ShutdownWatch, ending: watch::Sender<bool>) {
    tokio::select! {
        stopping = process.wait_for(|stopping| *stopping) => {
            if stopping.is_ok() {
                ending.send_replace(true);
            }
        }
        () = ending.closed() => {}
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<Arc<crate::tls::Acceptors>>,
    cx: ConnectionContext,
) {
    let local = listener.local_addr().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        cx.metrics.connections_accepted.inc();
        cx.metrics.connections_open.inc();
        tokio::spawn(serve_connection(
            tcp,
            peer,
            local,
            acceptor.clone(),
            cx.clone(),
        ));
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    acceptor: Option<Arc<crate::tls::Acceptors>>,
    cx: ConnectionContext,
) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    match acceptor {
        None => serve_cleartext(tcp, peer, local, &cx).await,
        // Boxed: a TLS connection's state (the ClientHello peek, the handshake, the TLS stream)
        // is several KiB, and inline it would be part of every connection's task, cleartext
        // ones too, copied whole each time a task is spawned: that was a third of the
        // instructions of a proxied request on a new cleartext connection.
        Some(acceptors) => Box::pin(serve_tls_socket(tcp, peer, local, &acceptors, &cx)).await,
    }
    cx.metrics.connections_open.dec();
}

/// A Pingora stream over `tcp` whose socket digest knows both addresses already.
fn pingora_stream(tcp: TcpStream, peer: SocketAddr, local: Option<SocketAddr>) -> Stream {
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    let _ = digest.local_addr.set(local.map(PingoraAddr::Inet));
    let mut stream = Stream::from(tcp);
    stream.set_socket_digest(digest);
    stream
}

/// Serves a connection to a cleartext socket: HTTP/1.1, or HTTP/2 with prior knowledge.
async fn serve_cleartext(
    mut tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    cx: &ConnectionContext,
) {
    let Some((opening, first_bytes)) = opening(&mut tcp, cx).await else {
        return;
    };
    let mut stream = pingora_stream(tcp, peer, local);
    stream.rewind(&opening);
    let mut stream = HeaderDeadline::new(
        Coalescing::new(stream, &opening),
        cx.header_timeout,
        cx.metrics.request_header_timeouts.clone(),
    );
    // The first request's header began with the opening, which may have taken more than one
    // read (`P`, the start of both HTTP/2's preface and `POST`): its deadline counts from then,
    // not from when the opening was handed on. Line ends alone are no header begun.
    if !opening.starts_with(b"\r") && !opening.starts_with(b"\n") {
        stream.began_at(first_bytes);
    }
    // Watching the socket's own signal: a cleartext connection is served as it came for as
    // long as its socket is open (a port served over TLS is another socket).
    serve_http(Box::new(stream), &cx.shutdown, cx).await;
}

/// Hands `stream` to the proxy, and again for each request while the connection is reusable.
async fn serve_http(
    stream: pingora_core::protocols::Stream,
    shutdown: &ShutdownWatch,
    cx: &ConnectionContext,
) {
    let mut next = Some(stream);
    while let Some(stream) = next.take() {
        next = cx.app.process_new(stream, shutdown).await;
    }
}

/// Serves a connection to a TLS socket: forwarded by its SNI (passthrough), refused, or
/// terminated and served as HTTP or forwarded decrypted (TLSRoute, Terminate mode).
async fn serve_tls_socket(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    acceptors: &crate::tls::Acceptors,
    cx: &ConnectionContext,
) {
    let until = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut forward_to = None;
    let tcp = match local {
        Some(local) => match route_tls(tcp, local, until, cx).await {
            TlsNext::Http(tcp) => tcp,
            TlsNext::Tcp(tcp, endpoint) => {
                forward_to = Some(endpoint);
                tcp
            }
            TlsNext::Done => return,
        },
        None => tcp,
    };
    // The client certificate validation in force for this handshake, read before it: if it
    // changes while the connection is open, the connection ends (`serve_while`).
    let policy = local.map(|local| client_policy(&cx.table, local));
    let tls_result = |r: &str| cx.metrics.tls_handshakes.with_label_values(&[r]).inc();
    let acceptor = match forward_to {
        Some(_) => &acceptors.tcp,
        None => &acceptors.http,
    };
    let stream = pingora_stream(tcp, peer, local);
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(until, acceptor.tls_handshake(stream)) => done.ok(),
        () = drained(&cx.shutdown) => None,
    };
    let tls = match handshake {
        Some(Ok(tls)) => {
            tls_result("ok");
            tls
        }
        Some(Err(err)) => {
            tls_result("failed");
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        None => {
            tls_result("timeout");
            tracing::debug!(%peer, "TLS handshake timed out (or the process is stopping)");
            return;
        }
    };
    if let Some(endpoint) = forward_to {
        passthrough::forward_stream(tls, endpoint).await;
        return;
    }
    let stream: pingora_core::protocols::Stream = Box::new(HeaderDeadline::new(
        Coalescing::tls(tls),
        cx.header_timeout,
        cx.metrics.request_header_timeouts.clone(),
    ));
    match (local, policy) {
        // The client certificate validation this handshake passed must stay the socket's:
        // when it changes (CAs added or taken away, the mode, validation turned on), what the
        // handshake proved no longer answers the question asked.
        (Some(bind), Some(policy)) => {
            let served = move |table: &RoutingTable| {
                table.serves_http(&bind, true) && crate::tls::client_policy(table, &bind) == policy
            };
            serve_while(stream, served, cx).await;
        }
        _ => serve_http(stream, &cx.shutdown, cx).await,
    }
}

/// The client certificate validation of socket `bind` in the live table (`None`: none).
fn client_policy(table: &ArcSwap<RoutingTable>, bind: SocketAddr) -> Option<u64> {
    crate::tls::client_policy(&table.load(), &bind)
}

/// Serves a connection while the live table still serves it as it came (`served`: its
/// socket's mode, and for TLS the client certificate validation its handshake passed). When
/// a swapped-in table no longer does, the connection is wound down as at shutdown: its
/// requests in flight finish, an HTTP/2 client gets GOAWAY, an HTTP/1.1 response says
/// `Connection: close`. A request that comes on it all the same is refused by the proxy (421,
/// see `Proxy::decide`), and the client's next connection is made afresh.
async fn serve_while(
    stream: pingora_core::protocols::Stream,
    served: impl Fn(&RoutingTable) -> bool,
    cx: &ConnectionContext,
) {
    // The connection's own shutdown signal: the process's, or a table that no longer serves
    // it. It starts at `false` and is raised at once when the process is stopping already:
    // Pingora's HTTP/2 loop waits for a change of the value, and one it was made with is none.
    let (ending, ended) = watch::channel(false);
    if *cx.shutdown.borrow() {
        ending.send_replace(true);
    }
    let mut shutdown = cx.shutdown.clone();
    let mut swaps = cx.swaps.clone();
    let serve = serve_http(stream, &ended, cx);
    tokio::pin!(serve);
    loop {
        tokio::select! {
            () = &mut serve => return,
            () = changed(&mut shutdown), if !*ending.borrow() => {
                if *shutdown.borrow() {
                    ending.send_replace(true);
                }
            }
            () = changed(&mut swaps), if !*ending.borrow() => {
                if !served(&cx.table.load()) {
                    tracing::debug!("the socket no longer serves this connection as it came; ending it");
                    ending.send_replace(true);
                }
            }
        }
    }
}

/// Resolves when `rx` sees a new value; never, once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for a new cleartext connection to send something, and reads what it sent. Pingora's
/// first read on it (the HTTP/2 preface check) has no deadline and does not see shutdown, so a
/// connection that never sends a byte would otherwise be held for good, and hold a shutdown for
/// its whole drain timeout. It gets [`FIRST_BYTE_TIMEOUT`], and during shutdown the drain's
/// grace period, as an idle keep-alive connection does. `None` when the connection is to be
/// closed.
///
/// Reading goes on until the bytes tell HTTP/2's preface from an HTTP/1 request, within the
/// request header's deadline (a client past it gets 408): the preface check after this one
/// is bounded by neither that deadline nor shutdown.
///
/// The bytes are read, not peeked at, and handed back to the stream (`Stream::rewind`): the
/// request read and the preface check then find them without a system call of their own, two
/// fewer per connection than a peek followed by Pingora's reads.
async fn opening(
    tcp: &mut TcpStream,
    cx: &ConnectionContext,
) -> Option<(Vec<u8>, tokio::time::Instant)> {
    let read = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // `read_buf` rather than `readable` and `try_read`: a read that leaves room in the
        // buffer tells tokio the socket is drained, so Pingora's next read on it (the probe for
        // a client gone while the backend answers) waits for readiness instead of making a
        // system call that finds nothing.
        let mut opening = Vec::with_capacity(OPENING_READ);
        if tcp.read_buf(&mut opening).await? == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        let first_bytes = tokio::time::Instant::now();
        // Too few bytes to tell HTTP/2's preface from a request line (`P`): the rest is read
        // here, where the request header's deadline applies, as it would to the request.
        if preface_undecided(&opening) {
            let rest = async {
                while preface_undecided(&opening) {
                    if tcp.read_buf(&mut opening).await? == 0 {
                        return Ok(false);
                    }
                }
                Ok::<_, std::io::Error>(true)
            };
            // With the deadline off, only the wait for a first byte bounds it (below).
            let limit = match cx.header_timeout {
                Duration::ZERO => FIRST_BYTE_TIMEOUT,
                limit => limit,
            };
            match tokio::time::timeout(limit, rest).await {
                Ok(Ok(true)) => {}
                // Broken off within what may be the HTTP/2 preface: a header failure, as one
                // broken off within a request header is.
                Ok(Ok(false)) => {
                    cx.metrics.client_header_failures.inc();
                    return Ok(None);
                }
                Ok(Err(err)) => {
                    cx.metrics.client_header_failures.inc();
                    return Err(err);
                }
                Err(_) if cx.header_timeout.is_zero() => return Ok(None),
                Err(_) => {
                    cx.metrics.request_header_timeouts.inc();
                    let _ = tcp.write_all(REQUEST_TIMEOUT).await;
                    return Ok(None);
                }
            }
        }
        Ok(Some((opening, first_bytes)))
    };
    tokio::select! {
        read = tokio::time::timeout(FIRST_BYTE_TIMEOUT, read) => read.ok().and_then(Result::ok).flatten(),
        () = drained(&cx.shutdown) => None,
    }
}

/// Resolves once the process has been stopping for the drain's grace period: a connection
/// that has not yet sent a request by then is closed, as an idle keep-alive one is. Never,
/// when no shutdown can come any more.
async fn drained(shutdown: &ShutdownWatch) {
    let mut shutdown = shutdown.clone();
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(super::DRAIN_GRACE).await;
}

/// How much of a new cleartext connection's opening is read at once: Pingora's first read of
/// a request header takes as much, so the opening goes to it whole.
const OPENING_READ: usize = 4096;

/// How long a new cleartext connection may stay silent before it is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a TLS socket does with a connection after its ClientHello.
enum TlsNext {
    /// Handled already (forwarded, refused or failed).
    Done,
    /// Terminate, then serve HTTP.
    Http(TcpStream),
    /// Terminate, then forward the decrypted stream to this endpoint (TLSRoute, Terminate mode).
    Tcp(TcpStream, SocketAddr),
}

/// Reads the ClientHello of a connection to a TLS socket and either forwards the connection
/// (TLS passthrough), refuses it, or hands it back for termination.
async fn route_tls(
    tcp: TcpStream,
    local: SocketAddr,
    until: tokio::time::Instant,
    cx: &ConnectionContext,
) -> TlsNext {
    let count = |r: &str| cx.metrics.tls_handshakes.with_label_values(&[r]).inc();
    let hello = tokio::select! {
        hello = passthrough::peek_client_hello(&tcp, until) => hello,
        () = drained(&cx.shutdown) => Err(passthrough::Unheard::TimedOut),
    };
    match hello {
        Err(passthrough::Unheard::Closed) => {
            count("closed");
            TlsNext::Done
        }
        Err(passthrough::Unheard::TimedOut) => {
            count("timeout");
            TlsNext::Done
        }
        Ok(Hello::Parsed(sni)) => {
            match passthrough::choose(&cx.table.load(), &local, sni.as_deref()) {
                passthrough::Route::Terminate => TlsNext::Http(tcp),
                passthrough::Route::TerminateTcp(endpoint) => TlsNext::Tcp(tcp, endpoint),
                passthrough::Route::Forward(endpoint) => {
                    count("passthrough");
                    passthrough::forward(tcp, endpoint).await;
                    TlsNext::Done
                }
                passthrough::Route::Reject => {
                    count("rejected");
                    tracing::debug!(
                        sni = sni.as_deref().unwrap_or(""),
                        "no listener or route serves this SNI"
                    );
                    let alert = match sni {
                        Some(_) => passthrough::UNRECOGNIZED_NAME,
                        None => passthrough::HANDSHAKE_FAILURE,
                    };
                    passthrough::refuse(tcp, alert).await;
                    TlsNext::Done
                }
            }
        }
        Ok(_) => {
            // A client that opens with a request line has forgotten https://: tell it so.
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.is_ok() && first[0].is_ascii_uppercase() {
                count("plaintext");
                refuse_plain_http(tcp).await;
            } else {
                count("failed");
            }
            TlsNext::Done
        }
    }
}

/// Answers a cleartext request on a TLS socket with a 400 that says why, then closes.
async fn refuse_plain_http(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "This port expects TLS: use https://\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Creates the shutdown signal Pingora's apps watch.
pub fn shutdown_channel() -> (watch::Sender<bool>, ShutdownWatch) {
    watch::channel(false)
}
